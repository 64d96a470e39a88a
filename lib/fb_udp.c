/* fb_udp: the UDP socket layer shared by udpd and fbcp: setup, GSO/GRO batching, errno policy (fb_udp.h). */
#include "fb_udp.h"

#include "fb_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

/* ---- addresses ------------------------------------------------------------------------------ */

int fb_udp_addr_equal(const fb_udp_addr *a, const fb_udp_addr *b)
{
    if (a->ss.ss_family != b->ss.ss_family)
        return 0;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)&a->ss,
                                 *y = (const struct sockaddr_in *)&b->ss;

        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&a->ss,
                                  *y = (const struct sockaddr_in6 *)&b->ss;

        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return 0;
}

void fb_udp_addr_format(char *out, size_t outlen, const fb_udp_addr *a)
{
    char host[INET6_ADDRSTRLEN] = "?";

    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)&a->ss;

        inet_ntop(AF_INET, &x->sin_addr, host, sizeof(host));
        snprintf(out, outlen, "%s:%u", host, ntohs(x->sin_port));
    } else if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)&a->ss;

        inet_ntop(AF_INET6, &x->sin6_addr, host, sizeof(host));
        snprintf(out, outlen, "[%s]:%u", host, ntohs(x->sin6_port));
    } else {
        snprintf(out, outlen, "(unknown address family %d)", a->ss.ss_family);
    }
}

fb_err fb_udp_addr_parse(fb_udp_addr *out, const char *host, int port)
{
    memset(out, 0, sizeof(*out));
    if (port < 0 || port > 65535)
        return FB_ERR_CONFIG;
    if (host == NULL || host[0] == '\0')
        host = "::";
    if (strchr(host, ':') != NULL) {
        struct sockaddr_in6 *x = (struct sockaddr_in6 *)&out->ss;

        if (inet_pton(AF_INET6, host, &x->sin6_addr) != 1)
            return FB_ERR_CONFIG;
        x->sin6_family = AF_INET6;
        x->sin6_port = htons((uint16_t)port);
        out->len = sizeof(*x);
    } else {
        struct sockaddr_in *x = (struct sockaddr_in *)&out->ss;

        if (inet_pton(AF_INET, host, &x->sin_addr) != 1)
            return FB_ERR_CONFIG;
        x->sin_family = AF_INET;
        x->sin_port = htons((uint16_t)port);
        out->len = sizeof(*x);
    }
    return FB_OK;
}

/* ---- socket --------------------------------------------------------------------------------- */

static int set_buf(int fd, int force_opt, int opt, size_t want)
{
    int v = want > (size_t)(INT32_MAX / 2) ? INT32_MAX / 2 : (int)want, got = 0;
    socklen_t gl = sizeof(got);

    /* The FORCE variant ignores rmem_max/wmem_max but needs CAP_NET_ADMIN. */
    if (setsockopt(fd, SOL_SOCKET, force_opt, &v, sizeof(v)) != 0)
        (void)setsockopt(fd, SOL_SOCKET, opt, &v, sizeof(v));
    if (getsockopt(fd, SOL_SOCKET, opt, &got, &gl) != 0)
        return 0;
    return got / 2; /* the kernel reports twice the usable size */
}

/* What both kinds of socket get once bound or connected: buffers, offload, timestamps. */
static void sock_setup(fb_udp_sock *s, int fd, int family, size_t bufsize, int use_offload)
{
    int one = 1;

    if (bufsize > 0) {
        s->rcvbuf = set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF, bufsize);
        s->sndbuf = set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF, bufsize);
    }
    if (use_offload) {
        int seg = 1200;

        s->gro = setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0;
        /* Setting a default segment size tells whether the kernel knows GSO; reset it to 0 so
         * plain sends stay plain (each GSO send carries its own size). */
        if (setsockopt(fd, SOL_UDP, UDP_SEGMENT, &seg, sizeof(seg)) == 0) {
            seg = 0;
            s->gso = setsockopt(fd, SOL_UDP, UDP_SEGMENT, &seg, sizeof(seg)) == 0;
        }
    }
    (void)fb_sock_rx_timestamps(fd); /* arrival times for rate and delay; without: when read */
    s->fd = fd;
    s->family = family;
}

fb_err fb_udp_sock_open(fb_udp_sock *s, const char *host, int port, size_t bufsize, int use_offload,
                        char *errbuf, size_t errlen)
{
    fb_udp_addr a;
    int fd, one = 1, zero = 0;

    memset(s, 0, sizeof(*s));
    s->fd = -1;
    if (fb_udp_addr_parse(&a, host, port) != FB_OK) {
        snprintf(errbuf, errlen, "'%s' is not a numeric IPv4 or IPv6 address", host ? host : "");
        return FB_ERR_CONFIG;
    }
    fd = socket(a.ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
    if (fd < 0) {
        snprintf(errbuf, errlen, "socket: %s", strerror(errno));
        return FB_ERR_IO;
    }
    if (a.ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *x = (struct sockaddr_in6 *)&a.ss;
        /* "::" serves both families; a specific IPv6 address only its own. */
        int v6only = IN6_IS_ADDR_UNSPECIFIED(&x->sin6_addr) ? 0 : 1;

        if (setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, v6only ? &one : &zero, sizeof(int)) != 0) {
            snprintf(errbuf, errlen, "IPV6_V6ONLY: %s", strerror(errno));
            close(fd);
            return FB_ERR_IO;
        }
    }
    if (bind(fd, (struct sockaddr *)&a.ss, a.len) != 0) {
        char where[80];

        fb_udp_addr_format(where, sizeof(where), &a);
        snprintf(errbuf, errlen, "bind %s: %s", where, strerror(errno));
        close(fd);
        return FB_ERR_IO;
    }
    sock_setup(s, fd, a.ss.ss_family, bufsize, use_offload);
    return FB_OK;
}

fb_err fb_udp_sock_connect(fb_udp_sock *s, const char *host, int port, size_t bufsize, int use_offload,
                           char *errbuf, size_t errlen)
{
    struct addrinfo hints, *res = NULL, *ai;
    char service[16], bare[256];
    size_t hl = strlen(host);
    int rc, fd = -1, err = 0, family = 0;

    memset(s, 0, sizeof(*s));
    s->fd = -1;
    if (port <= 0 || port > 65535) {
        snprintf(errbuf, errlen, "no UDP port for %s", host);
        return FB_ERR_CONFIG;
    }
    /* a URL's host keeps IPv6 literals in brackets; getaddrinfo wants them bare */
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']' && hl - 2 < sizeof(bare)) {
        memcpy(bare, host + 1, hl - 2);
        bare[hl - 2] = '\0';
    } else {
        snprintf(bare, sizeof(bare), "%s", host);
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_protocol = IPPROTO_UDP;
    snprintf(service, sizeof(service), "%d", port);
    rc = getaddrinfo(bare, service, &hints, &res);
    if (rc != 0) {
        snprintf(errbuf, errlen, "cannot resolve %s for UDP: %s", host, gai_strerror(rc));
        return FB_ERR_CONFIG;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            family = ai->ai_family;
            break;
        }
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        if (strchr(bare, ':') != NULL)
            snprintf(errbuf, errlen, "no UDP socket to [%s]:%d: %s", bare, port, strerror(err));
        else
            snprintf(errbuf, errlen, "no UDP socket to %s:%d: %s", bare, port, strerror(err));
        return FB_ERR_IO;
    }
    sock_setup(s, fd, family, bufsize, use_offload);
    return FB_OK;
}

void fb_udp_sock_close(fb_udp_sock *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

/* ---- receive -------------------------------------------------------------------------------- */

#define RX_CMSG_SPACE 64 /* UDP_GRO's int and SO_TIMESTAMPNS's timespec */

struct fb_udp_rx {
    uint8_t *bufs; /* FB_UDP_RX_BATCH * bufsize */
    size_t bufsize;
    unsigned msgs; /* read by the last call */
    struct mmsghdr msgs_hdr[FB_UDP_RX_BATCH];
    struct iovec iov[FB_UDP_RX_BATCH];
    fb_udp_addr from[FB_UDP_RX_BATCH];
    union {
        char buf[RX_CMSG_SPACE];
        struct cmsghdr align;
    } cmsg[FB_UDP_RX_BATCH];
    fb_udp_dgram dg[FB_UDP_RX_MAX_DGRAMS];
};

fb_err fb_udp_rx_new(fb_udp_rx **prx, size_t bufsize)
{
    fb_udp_rx *rx = calloc(1, sizeof(*rx));

    *prx = NULL;
    if (rx == NULL)
        return FB_ERR_NOMEM;
    rx->bufsize = bufsize == 0 || bufsize > FB_UDP_RX_BUF ? FB_UDP_RX_BUF : bufsize;
    rx->bufs = malloc((size_t)FB_UDP_RX_BATCH * rx->bufsize);
    if (rx->bufs == NULL) {
        free(rx);
        return FB_ERR_NOMEM;
    }
    *prx = rx;
    return FB_OK;
}

void fb_udp_rx_free(fb_udp_rx *rx)
{
    if (rx == NULL)
        return;
    free(rx->bufs);
    free(rx);
}

unsigned fb_udp_rx_msgs(const fb_udp_rx *rx)
{
    return rx->msgs;
}

size_t fb_udp_gro_segment(const struct msghdr *h, size_t len)
{
    size_t seg = len;

    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR((struct msghdr *)h, c)) {
        int gs;

        if (c->cmsg_level != SOL_UDP || c->cmsg_type != UDP_GRO || c->cmsg_len < CMSG_LEN(sizeof(int)))
            continue;
        memcpy(&gs, CMSG_DATA(c), sizeof(gs));
        if (gs > 0 && (size_t)gs < len)
            seg = (size_t)gs;
    }
    return seg;
}

int fb_udp_rx_recv(fb_udp_sock *s, fb_udp_rx *rx, fb_udp_dgram **pdg)
{
    int n, i, tries = 0;
    size_t nd = 0;
    uint64_t now;
    int64_t real_minus_mono;

    *pdg = rx->dg;
    rx->msgs = 0;
    for (i = 0; i < FB_UDP_RX_BATCH; i++) {
        struct msghdr *h = &rx->msgs_hdr[i].msg_hdr;

        rx->iov[i].iov_base = rx->bufs + (size_t)i * rx->bufsize;
        rx->iov[i].iov_len = rx->bufsize;
        memset(h, 0, sizeof(*h));
        h->msg_name = &rx->from[i].ss;
        h->msg_namelen = sizeof(rx->from[i].ss);
        h->msg_iov = &rx->iov[i];
        h->msg_iovlen = 1;
        h->msg_control = rx->cmsg[i].buf;
        h->msg_controllen = sizeof(rx->cmsg[i].buf);
    }
    do {
        n = recvmmsg(s->fd, rx->msgs_hdr, FB_UDP_RX_BATCH, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR && tries++ < 100);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH) {
            s->st.rx_icmp++; /* about an earlier datagram of ours; the caller's timeouts decide */
            return 0;
        }
        return -1;
    }
    rx->msgs = (unsigned)n;
    s->st.rx_calls++;
    now = fb_time_mono_ns() / 1000;
    real_minus_mono = fb_time_real_minus_mono_us();
    for (i = 0; i < n; i++) {
        struct msghdr *h = &rx->msgs_hdr[i].msg_hdr;
        size_t len = rx->msgs_hdr[i].msg_len, seg, off;
        uint64_t arrived = fb_time_rx_arrival_us(h, now, real_minus_mono);
        uint8_t *base = rx->bufs + (size_t)i * rx->bufsize;

        rx->from[i].len = h->msg_namelen;
        if (h->msg_flags & MSG_TRUNC) {
            s->st.rx_truncated++;
            continue;
        }
        seg = fb_udp_gro_segment(h, len);
        if (seg < len)
            s->st.rx_gro_msgs++;
        /* A GRO buffer holds segments of SEG bytes, the last one possibly shorter. */
        for (off = 0; off < len && nd < FB_UDP_RX_MAX_DGRAMS; off += seg) {
            rx->dg[nd].buf = base + off;
            rx->dg[nd].len = len - off < seg ? len - off : seg;
            rx->dg[nd].from = &rx->from[i];
            rx->dg[nd].arrived_us = arrived;
            nd++;
        }
    }
    s->st.rx_dgrams += nd;
    return (int)nd;
}

/* ---- send ----------------------------------------------------------------------------------- */

typedef struct tx_dgram {
    size_t off, len;
    int has_to;
    fb_udp_addr to;
} tx_dgram;

typedef union tx_cmsg {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
} tx_cmsg;

struct fb_udp_tx {
    uint8_t *buf;
    size_t bufsize, max;
    size_t used;
    size_t head, n; /* dg[head .. head+n) are queued */
    size_t reserved;
    tx_dgram *dg;
    struct mmsghdr *msgs;
    struct iovec *iov;
    tx_cmsg *cmsg;
    size_t *msg_first, *msg_count;
};

fb_err fb_udp_tx_new(fb_udp_tx **ptx, size_t max_dgrams, size_t bufsize)
{
    fb_udp_tx *tx = calloc(1, sizeof(*tx));

    *ptx = NULL;
    if (tx == NULL)
        return FB_ERR_NOMEM;
    tx->max = max_dgrams == 0 || max_dgrams > FB_UDP_TX_MAX_DGRAMS ? FB_UDP_TX_MAX_DGRAMS : max_dgrams;
    tx->bufsize = bufsize == 0 ? FB_UDP_TX_BUF : bufsize;
    tx->buf = malloc(tx->bufsize);
    tx->dg = calloc(tx->max, sizeof(*tx->dg));
    tx->msgs = calloc(tx->max, sizeof(*tx->msgs));
    tx->iov = calloc(tx->max, sizeof(*tx->iov));
    tx->cmsg = calloc(tx->max, sizeof(*tx->cmsg));
    tx->msg_first = calloc(tx->max, sizeof(*tx->msg_first));
    tx->msg_count = calloc(tx->max, sizeof(*tx->msg_count));
    if (tx->buf == NULL || tx->dg == NULL || tx->msgs == NULL || tx->iov == NULL || tx->cmsg == NULL ||
        tx->msg_first == NULL || tx->msg_count == NULL) {
        fb_udp_tx_free(tx);
        return FB_ERR_NOMEM;
    }
    *ptx = tx;
    return FB_OK;
}

void fb_udp_tx_free(fb_udp_tx *tx)
{
    if (tx == NULL)
        return;
    free(tx->buf);
    free(tx->dg);
    free(tx->msgs);
    free(tx->iov);
    free(tx->cmsg);
    free(tx->msg_first);
    free(tx->msg_count);
    free(tx);
}

size_t fb_udp_tx_pending(const fb_udp_tx *tx)
{
    return tx->n;
}

void fb_udp_tx_discard(fb_udp_tx *tx)
{
    tx->head = tx->n = tx->used = tx->reserved = 0;
}

/* Moves what is still queued (after a partial send) to the front of the buffer. */
static void tx_compact(fb_udp_tx *tx)
{
    size_t base = tx->n > 0 ? tx->dg[tx->head].off : tx->used;

    if (tx->head == 0)
        return;
    memmove(tx->buf, tx->buf + base, tx->used - base);
    memmove(tx->dg, tx->dg + tx->head, tx->n * sizeof(*tx->dg));
    for (size_t i = 0; i < tx->n; i++)
        tx->dg[i].off -= base;
    tx->used -= base;
    tx->head = 0;
}

uint8_t *fb_udp_tx_reserve(fb_udp_tx *tx, size_t maxlen)
{
    tx->reserved = 0;
    if (maxlen == 0 || maxlen > FB_UDP_MAX_DGRAM)
        return NULL;
    if (tx->head + tx->n >= tx->max || tx->used + maxlen > tx->bufsize)
        tx_compact(tx);
    if (tx->head + tx->n >= tx->max || tx->used + maxlen > tx->bufsize)
        return NULL;
    tx->reserved = maxlen;
    return tx->buf + tx->used;
}

fb_err fb_udp_tx_commit(fb_udp_tx *tx, size_t len, const fb_udp_addr *to)
{
    tx_dgram *d;

    if (len == 0 || len > tx->reserved) {
        tx->reserved = 0;
        return FB_ERR_INTERNAL;
    }
    d = &tx->dg[tx->head + tx->n];
    d->off = tx->used;
    d->len = len;
    d->has_to = to != NULL;
    if (to != NULL)
        d->to = *to;
    tx->used += len;
    tx->n++;
    tx->reserved = 0;
    return FB_OK;
}

static int same_peer(const tx_dgram *a, const tx_dgram *b)
{
    return a->has_to == b->has_to && (!a->has_to || fb_udp_addr_equal(&a->to, &b->to));
}

/* Groups the queued datagrams into messages (GSO runs when allowed); returns the count. */
static size_t build_msgs(const fb_udp_sock *s, fb_udp_tx *tx)
{
    size_t m = 0, i = tx->head, end = tx->head + tx->n;

    while (i < end) {
        tx_dgram *d = &tx->dg[i];
        size_t k = 1, total = d->len;
        struct msghdr *h = &tx->msgs[m].msg_hdr;

        if (s->gso) {
            /* Same peer, same size as the first, contiguous; the last may be shorter. */
            while (i + k < end && k < FB_UDP_GSO_MAX_SEGS) {
                tx_dgram *e = &tx->dg[i + k];

                if (e->len > d->len || e->off != d->off + total || total + e->len > FB_UDP_GSO_MAX_BYTES ||
                    !same_peer(e, d))
                    break;
                total += e->len;
                k++;
                if (e->len < d->len)
                    break;
            }
        }
        tx->iov[m].iov_base = tx->buf + d->off;
        tx->iov[m].iov_len = total;
        memset(h, 0, sizeof(*h));
        if (d->has_to) {
            h->msg_name = &d->to.ss;
            h->msg_namelen = d->to.len;
        }
        h->msg_iov = &tx->iov[m];
        h->msg_iovlen = 1;
        if (k > 1) {
            struct cmsghdr *c;
            uint16_t seg = (uint16_t)d->len;

            h->msg_control = tx->cmsg[m].buf;
            h->msg_controllen = sizeof(tx->cmsg[m].buf);
            c = CMSG_FIRSTHDR(h);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(seg));
            memcpy(CMSG_DATA(c), &seg, sizeof(seg));
        }
        tx->msg_first[m] = i;
        tx->msg_count[m] = k;
        m++;
        i += k;
    }
    return m;
}

fb_udp_send_action fb_udp_send_policy(int err, int gso_msg)
{
    switch (err) {
    case EINTR:
        return FB_UDP_SEND_RETRY;
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
        return FB_UDP_SEND_WAIT;
    case EIO:
    case EINVAL:
    case EOPNOTSUPP:
        return gso_msg ? FB_UDP_SEND_PLAIN : FB_UDP_SEND_DROP;
    default:
        return FB_UDP_SEND_DROP; /* ENOBUFS too: see fb_udp.h */
    }
}

/* Takes the first COUNT queued datagrams off the queue. */
static void tx_consume(fb_udp_tx *tx, size_t count)
{
    tx->head += count;
    tx->n -= count;
    if (tx->n == 0) {
        tx->head = 0;
        tx->used = 0;
    }
}

int fb_udp_tx_flush(fb_udp_sock *s, fb_udp_tx *tx)
{
    size_t nmsgs, sent = 0;
    int guard = 0;

    if (tx->n == 0) {
        tx_consume(tx, 0);
        return 0;
    }
    nmsgs = build_msgs(s, tx);
    /* bounded: each pass sends or drops a message, or ends, but for EINTR and one GSO switch */
    while (sent < nmsgs && guard++ < 4 * FB_UDP_TX_MAX_DGRAMS) {
        int r = sendmmsg(s->fd, &tx->msgs[sent], (unsigned)(nmsgs - sent), MSG_DONTWAIT);

        if (r > 0) {
            for (int j = 0; j < r; j++) {
                s->st.tx_dgrams += tx->msg_count[sent + j];
                if (tx->msg_count[sent + j] > 1)
                    s->st.tx_gso_msgs++;
                tx_consume(tx, tx->msg_count[sent + j]);
            }
            s->st.tx_calls++;
            sent += (size_t)r;
            continue;
        }
        switch (fb_udp_send_policy(r < 0 ? errno : EAGAIN, tx->msg_count[sent] > 1)) {
        case FB_UDP_SEND_RETRY:
            continue;
        case FB_UDP_SEND_WAIT:
            s->st.tx_eagain++;
            return 1; /* the rest stays queued (compacted when room is wanted) */
        case FB_UDP_SEND_PLAIN:
            s->gso = 0;
            s->gso_errno = errno;
            nmsgs = build_msgs(s, tx);
            sent = 0;
            continue;
        case FB_UDP_SEND_DROP:
            break;
        }
        s->st.tx_dropped += tx->msg_count[sent];
        tx_consume(tx, tx->msg_count[sent]);
        sent++;
    }
    return tx->n == 0 ? 0 : 1;
}
