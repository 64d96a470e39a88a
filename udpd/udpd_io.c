/* udpd_io: batched UDP I/O with GRO/GSO and clean fallbacks (see udpd_io.h). */
#include "udpd_io.h"

#include "fb_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
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

int udpd_addr_equal(const udpd_addr *a, const udpd_addr *b)
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

void udpd_addr_format(char *out, size_t outlen, const udpd_addr *a)
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

fb_err udpd_addr_parse(udpd_addr *out, const char *host, int port)
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

fb_err udpd_sock_open(udpd_sock *s, const char *host, int port, size_t bufsize, int use_offload, char *errbuf,
                      size_t errlen)
{
    udpd_addr a;
    int fd, one = 1, zero = 0;

    memset(s, 0, sizeof(*s));
    s->fd = -1;
    if (udpd_addr_parse(&a, host, port) != FB_OK) {
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

        udpd_addr_format(where, sizeof(where), &a);
        snprintf(errbuf, errlen, "bind %s: %s", where, strerror(errno));
        close(fd);
        return FB_ERR_IO;
    }
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
    s->family = a.ss.ss_family;
    return FB_OK;
}

void udpd_sock_close(udpd_sock *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

/* ---- receive -------------------------------------------------------------------------------- */

#define RX_CMSG_SPACE 64

struct udpd_rx {
    uint8_t *bufs; /* UDPD_IO_RX_BATCH * UDPD_IO_RX_BUF */
    struct mmsghdr msgs[UDPD_IO_RX_BATCH];
    struct iovec iov[UDPD_IO_RX_BATCH];
    udpd_addr from[UDPD_IO_RX_BATCH];
    union {
        char buf[RX_CMSG_SPACE];
        struct cmsghdr align;
    } cmsg[UDPD_IO_RX_BATCH];
    udpd_rx_dgram dg[UDPD_IO_RX_MAX_DGRAMS];
};

fb_err udpd_rx_new(udpd_rx **prx)
{
    udpd_rx *rx = calloc(1, sizeof(*rx));

    *prx = NULL;
    if (rx == NULL)
        return FB_ERR_NOMEM;
    rx->bufs = malloc((size_t)UDPD_IO_RX_BATCH * UDPD_IO_RX_BUF);
    if (rx->bufs == NULL) {
        free(rx);
        return FB_ERR_NOMEM;
    }
    *prx = rx;
    return FB_OK;
}

void udpd_rx_free(udpd_rx *rx)
{
    if (rx == NULL)
        return;
    free(rx->bufs);
    free(rx);
}

int udpd_rx_recv(udpd_sock *s, udpd_rx *rx, udpd_rx_dgram **pdg)
{
    int n, i, tries = 0;
    size_t nd = 0;
    uint64_t now;
    int64_t real_minus_mono;

    *pdg = rx->dg;
    for (i = 0; i < UDPD_IO_RX_BATCH; i++) {
        struct msghdr *h = &rx->msgs[i].msg_hdr;

        rx->iov[i].iov_base = rx->bufs + (size_t)i * UDPD_IO_RX_BUF;
        rx->iov[i].iov_len = UDPD_IO_RX_BUF;
        memset(h, 0, sizeof(*h));
        h->msg_name = &rx->from[i].ss;
        h->msg_namelen = sizeof(rx->from[i].ss);
        h->msg_iov = &rx->iov[i];
        h->msg_iovlen = 1;
        h->msg_control = rx->cmsg[i].buf;
        h->msg_controllen = sizeof(rx->cmsg[i].buf);
    }
    do {
        n = recvmmsg(s->fd, rx->msgs, UDPD_IO_RX_BATCH, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR && tries++ < 100);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    s->st.rx_calls++;
    now = fb_time_mono_ns() / 1000;
    real_minus_mono = fb_time_real_minus_mono_us();
    for (i = 0; i < n; i++) {
        struct msghdr *h = &rx->msgs[i].msg_hdr;
        size_t len = rx->msgs[i].msg_len, seg = len, off;
        struct cmsghdr *c;
        uint64_t arrived = fb_time_rx_arrival_us(h, now, real_minus_mono);

        rx->from[i].len = h->msg_namelen;
        if (h->msg_flags & MSG_TRUNC) {
            s->st.rx_truncated++;
            continue;
        }
        for (c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                int gs;

                memcpy(&gs, CMSG_DATA(c), sizeof(gs));
                if (gs > 0 && (size_t)gs < len) {
                    seg = (size_t)gs;
                    s->st.rx_gro_msgs++;
                }
            }
        }
        /* A GRO buffer holds segments of SEG bytes, the last one possibly shorter. */
        for (off = 0; off < len && nd < UDPD_IO_RX_MAX_DGRAMS; off += seg) {
            rx->dg[nd].buf = rx->bufs + (size_t)i * UDPD_IO_RX_BUF + off;
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
    udpd_addr to;
} tx_dgram;

struct udpd_tx {
    uint8_t *buf;
    size_t used;
    tx_dgram dg[UDPD_IO_TX_MAX_DGRAMS];
    size_t head, n; /* dg[head .. head+n) are queued */
    size_t reserved;
    struct mmsghdr msgs[UDPD_IO_TX_MAX_DGRAMS];
    struct iovec iov[UDPD_IO_TX_MAX_DGRAMS];
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } cmsg[UDPD_IO_TX_MAX_DGRAMS];
    size_t msg_first[UDPD_IO_TX_MAX_DGRAMS], msg_count[UDPD_IO_TX_MAX_DGRAMS];
};

fb_err udpd_tx_new(udpd_tx **ptx)
{
    udpd_tx *tx = calloc(1, sizeof(*tx));

    *ptx = NULL;
    if (tx == NULL)
        return FB_ERR_NOMEM;
    tx->buf = malloc(UDPD_IO_TX_BUF);
    if (tx->buf == NULL) {
        free(tx);
        return FB_ERR_NOMEM;
    }
    *ptx = tx;
    return FB_OK;
}

void udpd_tx_free(udpd_tx *tx)
{
    if (tx == NULL)
        return;
    free(tx->buf);
    free(tx);
}

size_t udpd_tx_pending(const udpd_tx *tx)
{
    return tx->n;
}

uint8_t *udpd_tx_reserve(udpd_tx *tx, size_t maxlen)
{
    if (tx->head + tx->n >= UDPD_IO_TX_MAX_DGRAMS || tx->used + maxlen > UDPD_IO_TX_BUF)
        return NULL;
    tx->reserved = maxlen;
    return tx->buf + tx->used;
}

void udpd_tx_commit(udpd_tx *tx, size_t len, const udpd_addr *to)
{
    tx_dgram *d = &tx->dg[tx->head + tx->n];

    if (len > tx->reserved)
        len = tx->reserved;
    d->off = tx->used;
    d->len = len;
    d->to = *to;
    tx->used += len;
    tx->n++;
    tx->reserved = 0;
}

/* Groups the queued datagrams into messages (GSO runs when allowed); returns the count. */
static size_t build_msgs(udpd_sock *s, udpd_tx *tx)
{
    size_t m = 0, i = tx->head, end = tx->head + tx->n;

    while (i < end) {
        tx_dgram *d = &tx->dg[i];
        size_t k = 1, total = d->len;
        struct msghdr *h = &tx->msgs[m].msg_hdr;

        if (s->gso) {
            /* Same peer, same size as the first, contiguous; the last may be shorter. */
            while (i + k < end && k < UDPD_IO_GSO_MAX_SEGS) {
                tx_dgram *e = &tx->dg[i + k];

                if (e->len > d->len || e->off != d->off + total || total + e->len > UDPD_IO_GSO_MAX_BYTES ||
                    !udpd_addr_equal(&e->to, &d->to))
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
        h->msg_name = &d->to.ss;
        h->msg_namelen = d->to.len;
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

static void tx_reset_if_empty(udpd_tx *tx)
{
    if (tx->n == 0) {
        tx->head = 0;
        tx->used = 0;
    }
}

int udpd_tx_flush(udpd_sock *s, udpd_tx *tx)
{
    size_t nmsgs, sent = 0;
    int guard = 0;

    if (tx->n == 0) {
        tx_reset_if_empty(tx);
        return 0;
    }
    nmsgs = build_msgs(s, tx);
    while (sent < nmsgs && guard++ < 4 * UDPD_IO_TX_MAX_DGRAMS) {
        int r = sendmmsg(s->fd, &tx->msgs[sent], (unsigned)(nmsgs - sent), MSG_DONTWAIT);

        if (r > 0) {
            for (int j = 0; j < r; j++) {
                tx->head += tx->msg_count[sent + j];
                tx->n -= tx->msg_count[sent + j];
                s->st.tx_dgrams += tx->msg_count[sent + j];
                if (tx->msg_count[sent + j] > 1)
                    s->st.tx_gso_msgs++;
            }
            s->st.tx_calls++;
            sent += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            s->st.tx_eagain++;
            /* Keep the rest; the caller waits for EPOLLOUT. The buffer is compacted lazily. */
            return 1;
        }
        if (r < 0 && (errno == EIO || errno == EINVAL) && tx->msg_count[sent] > 1 && s->gso) {
            /* The device or kernel refuses segmentation offload: plain datagrams from now on. */
            s->gso = 0;
            nmsgs = build_msgs(s, tx);
            sent = 0;
            continue;
        }
        /* Refused for good (EMSGSIZE, unreachable, ...): drop that message, go on. */
        tx->head += tx->msg_count[sent];
        tx->n -= tx->msg_count[sent];
        s->st.tx_dropped += tx->msg_count[sent];
        sent++;
    }
    tx_reset_if_empty(tx);
    return tx->n == 0 ? 0 : 1;
}
