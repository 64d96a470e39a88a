/* fbcp_udp: the UDP transport of fbcp (docs/PROTOCOL.md), one association at a time per file.
 *
 * - Socket: libfb's UDP layer (lib/fb_udp.h, the same as udpd's), connected to the URL's host
 *   and the session's UDP port, 16 MiB buffers; a send batch of 128 datagrams (sendmmsg, GSO
 *   runs), recvmmsg with GRO split, kernel arrival times, and fb_udp's errno policy.
 * - Handshake: HELLO (handshake keys, fresh client nonce, padded to the datagram size asked for)
 *   retransmitted after 250 ms, doubling; an authenticated HELLO_ACK echoing the nonce either
 *   refuses (its status) or gives the data keys, cipher, rates and datagram size.
 * - Upload leg: the fb_xfer sender reads the missing ranges (read-ahead buffer, pread) and
 *   seals DATA straight into the send batch, paced by the rate controller: the loop sleeps in
 *   ppoll until the next send time (timer slack 1 us), so sub-millisecond gaps are kept without
 *   spinning; FEEDBACK drives it. Done when every byte is acknowledged: then CLOSE, and the
 *   caller commits over HTTPS.
 * - Download leg: the fb_xfer receiver, told which ranges the file already holds, writes DATA
 *   through a write-behind buffer (pwrite after each receive batch) and reports each chunk
 *   (x->range_done, the sidecar) only after its bytes were written; FEEDBACK when due.
 * - Whether the leg goes on is fbcp_switch's decision (no answer, silence); the probe used while
 *   HTTP(S) carries the data lives here too (fbcp_udp_probe). */
#include "config.h"

#include "fbcp.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "fb_aead.h"
#include "fb_assoc.h"
#include "fb_config.h"
#include "fb_replay.h"
#include "fb_udp.h"
#include "fb_wire.h"
#include "fb_xfer.h"

#define FBCP_UDP_SOCKBUF (16u << 20)
#define FBCP_UDP_TX_SLOTS 128 /* datagrams a send batch holds */
#define FBCP_UDP_READ_AHEAD (1u << 20)
#define FBCP_UDP_WRITE_BEHIND (1u << 20)
#define FBCP_UDP_KEEPALIVE_US 1000000ull
#define FBCP_UDP_CLOSE_WAIT_MAX_US 1000000ull  /* round trip counted for udpd's CLOSE, at most */
#define FBCP_UDP_CLOSE_WAIT_EXTRA_US 100000ull /* beyond two round trips */
#define FBCP_UDP_TICK_US 100000ull /* the loop wakes at least this often (progress, timers) */
/* Shorter gaps are slept this long: the pacer's credit (2 ms) lets the datagrams due meanwhile go
 * out as one batch (one GSO message). At 100 Mbit/s that is about 8 datagrams a wake-up instead
 * of one or two with 150 us, and a third of the CPU per GiB (17.4 to 6.5 s on the benchmark's
 * link), at the same goodput. */
#define FBCP_UDP_MIN_SLEEP_US 1000
#define FBCP_UDP_RX_POLL_US 1000 /* without a readable socket, look anyway this often */
/* After a read that found datagrams, the next ones are left to gather in the socket this long
 * (unless something is due sooner) instead of waking for each: at 500 Mbit/s one wake-up per
 * few datagrams became one per ~20, and the arrival times come from the kernel anyway.
 * FBCP_UDP_RX_GATHER_US=N (0..10000) overrides it, for tuning and tests. */
#define FBCP_UDP_RX_GATHER_US 500
#define FBCP_UDP_RX_GATHER_MAX_US 10000

struct fbcp_udp {
    const fbcp_opts *o;
    fb_udp_sock sock;
    char peer[128]; /* "host:port" for messages */
    size_t dgram;   /* the datagram size asked for (HELLO max_datagram and padding) */

    /* session */
    int have_session;
    unsigned gen;
    uint8_t sid[FB_WIRE_SID_LEN];
    fb_aead_ctx *aead;

    /* association */
    fb_assoc_client hs; /* the handshake: HELLO, its retransmissions, the answer */
    int associated;
    fb_wire_hello_ack ack;
    size_t max_dgram; /* negotiated */
    fb_replay replay;
    uint64_t pn;
    uint64_t last_keepalive_us;
    fb_err refused; /* status of a refusing HELLO_ACK (FB_OK: none) */
    int peer_closed;
    fb_err close_reason;
    int close_unchanged;   /* udpd's CLOSE carried FB_WIRE_F_CLOSE_UNCHANGED */
    uint64_t hello_rtt_us; /* HELLO to HELLO_ACK, less udpd's hold: the path's round trip */

    /* the leg's engine (one of the two) and its file */
    fbcp_xfer *x;
    fb_xfer_sender *snd;
    fb_xfer_receiver *rcv;
    uint8_t *ra; /* upload read-ahead */
    uint64_t ra_off;
    size_t ra_len;
    uint8_t *wb; /* download write-behind */
    uint64_t wb_off;
    size_t wb_len;
    uint64_t *pend; /* download: chunks complete in the write-behind buffer */
    size_t npend, pend_cap;
    int io_errno;
    const char *io_what;

    fb_udp_rx *rx;
    fb_udp_tx *tx;
    size_t stride; /* the largest datagram now: the size asked for, then the negotiated one */

    int readable;        /* the last wait saw a datagram waiting */
    uint64_t last_rx_us; /* last receive call */
    uint64_t rx_gather_us;  /* after a read that found datagrams, let the next gather this long */
    uint64_t gather_end_us; /* ... until then (0: not gathering) */
    uint64_t rx_dgrams, rx_dropped;
    uint64_t rx_reads; /* receive calls that found datagrams (rx_dgrams / rx_reads: the batching) */

    /* FBCP_RATE_TRACE=FILE: the sender's rate controller every 10 ms (for bench/ and tuning) */
    FILE *rate_trace;
    uint64_t rate_trace_t0, rate_trace_next;
};

/* One line per 10 ms of an upload (the columns: fb_xfer_sender_trace_line). */
static void fbcp_udp_rate_trace(fbcp_udp *u, uint64_t now)
{
    char line[256];

    if (u->rate_trace == NULL || u->snd == NULL || now < u->rate_trace_next)
        return;
    u->rate_trace_next = now + 10000;
    fb_xfer_sender_trace_line(line, sizeof(line), u->snd, u->rate_trace_t0, now);
    fputs(line, u->rate_trace);
}

static uint64_t fbcp_now_us(void)
{
    return fb_time_mono_ns() / 1000;
}

int fbcp_udp_fd(const fbcp_udp *u)
{
    return u != NULL ? u->sock.fd : -1;
}

int fbcp_udp_associated(const fbcp_udp *u)
{
    return u != NULL && u->associated;
}

/* ---------------------------------------------------------------- socket */

fb_err fbcp_udp_new(fbcp_udp **pu, const fbcp_opts *o, const char *host, long port, char *detail,
                    size_t detlen)
{
    char err[256];
    fbcp_udp *u;
    fb_err e;

    *pu = NULL;
    u = calloc(1, sizeof(*u));
    if (u == NULL)
        return FB_ERR_NOMEM;
    u->o = o;
    e = fb_udp_sock_connect(&u->sock, host, (int)(port < 0 || port > 65535 ? 0 : port), FBCP_UDP_SOCKBUF, 1,
                            err, sizeof(err));
    if (e != FB_OK) {
        snprintf(detail, detlen, "%s", err);
        fbcp_udp_free(u);
        return FB_ERR_CONNECTION_LOST;
    }
    /* not given: the largest that fits an MTU of 1500 for the address family */
    u->dgram = o->udp_datagram != 0        ? o->udp_datagram
               : u->sock.family == AF_INET ? FB_WIRE_DEFAULT_DATAGRAM_IPV4
                                           : FB_WIRE_DEFAULT_DATAGRAM;
    if (u->dgram < FB_WIRE_MIN_DATAGRAM)
        u->dgram = FB_WIRE_MIN_DATAGRAM;
    if (u->dgram > FB_WIRE_MAX_DATAGRAM)
        u->dgram = FB_WIRE_MAX_DATAGRAM;
    u->stride = u->dgram;
    if (strchr(host, ':') != NULL && host[0] != '[')
        snprintf(u->peer, sizeof(u->peer), "[%s]:%ld", host, port);
    else
        snprintf(u->peer, sizeof(u->peer), "%s:%ld", host, port);
    if (fb_udp_rx_new(&u->rx, 0) != FB_OK ||
        fb_udp_tx_new(&u->tx, FBCP_UDP_TX_SLOTS, (size_t)FBCP_UDP_TX_SLOTS * u->dgram) != FB_OK) {
        fbcp_udp_free(u);
        return FB_ERR_NOMEM;
    }
    fbcp_trace(o, "UDP socket to %s (GSO %s, GRO %s)", u->peer, u->sock.gso ? "on" : "off",
               u->sock.gro ? "on" : "off");
    *pu = u;
    return FB_OK;
}

/* ---------------------------------------------------------------- sending */

/* Room for one datagram of at most STRIDE bytes, NULL when the batch is full. */
static uint8_t *fbcp_udp_reserve(fbcp_udp *u)
{
    return fb_udp_tx_reserve(u->tx, u->stride);
}

static void fbcp_udp_commit(fbcp_udp *u, size_t len)
{
    (void)fb_udp_tx_commit(u->tx, len, NULL);
}

/* Sends the batch (fb_udp's errno policy). 0: all went (datagrams refused for good are dropped:
 * the engines repair them); 1: the socket buffer is full, the rest stays queued. */
static int fbcp_udp_flush(fbcp_udp *u)
{
    int had_gso = u->sock.gso, r = fb_udp_tx_flush(&u->sock, u->tx);

    if (had_gso && !u->sock.gso)
        fbcp_trace(u->o, "UDP GSO refused (%s): sending plain datagrams", strerror(u->sock.gso_errno));
    return r;
}

/* Queues one datagram built in BUF (at most STRIDE bytes) and sends the batch at once. */
static void fbcp_udp_send_now(fbcp_udp *u, const uint8_t *buf, size_t len)
{
    uint8_t *p = fbcp_udp_reserve(u);

    if (p == NULL) {
        fbcp_udp_flush(u);
        p = fbcp_udp_reserve(u);
    }
    if (p == NULL || len > u->stride)
        return;
    memcpy(p, buf, len);
    fbcp_udp_commit(u, len);
    fbcp_udp_flush(u);
}

/* ---------------------------------------------------------------- session and handshake */

static unsigned fbcp_policy_bit(fbcp_policy p)
{
    switch (p) {
    case FBCP_POLICY_FIXED:
        return FB_POLICY_FIXED;
    case FBCP_POLICY_HIGH:
        return FB_POLICY_HIGH;
    case FBCP_POLICY_LOW:
        return FB_POLICY_LOW;
    case FBCP_POLICY_FAIR:
        break;
    }
    return FB_POLICY_FAIR;
}

/* Takes X's session id and key (again when the session was created anew). */
static fb_err fbcp_udp_sync_session(fbcp_udp *u, const fbcp_xfer *x)
{
    const fbcp_opts *o = u->o;
    fb_assoc_client_params hp;
    uint64_t target = o->target_rate / 8, min = o->min_rate / 8;

    if (u->have_session && u->gen == x->session_gen)
        return FB_OK;
    memset(&hp, 0, sizeof(hp));
    if (!x->have_key || x->session_id == NULL || fb_wire_sid_from_string(hp.sid, x->session_id) != FB_OK)
        return FB_ERR_PROTOCOL;
    fb_aead_free(u->aead);
    u->aead = NULL;
    if (fb_aead_new(&u->aead, x->key, FB_AEAD_CLIENT) != FB_OK)
        return FB_ERR_NOMEM;
    memcpy(u->sid, hp.sid, sizeof(u->sid));
    if (o->limit_rate > 0 && (target == 0 || target > o->limit_rate))
        target = o->limit_rate; /* --limit-rate bounds UDP too */
    if (target != 0 && min > target)
        min = target;
    hp.cipher = o->cipher;
    hp.policy = fbcp_policy_bit(o->policy);
    hp.target_rate = target;
    hp.min_rate = min;
    hp.max_datagram = (uint16_t)u->dgram;
    hp.random = fb_assoc_random_os;
    fb_assoc_client_init(&u->hs, &hp, u->aead);
    u->have_session = 1;
    u->gen = x->session_gen;
    u->associated = 0;
    u->refused = FB_OK;
    u->peer_closed = 0;
    return FB_OK;
}

/* HELLO: a fresh attempt when FRESH, else the pending one again (fb_assoc). */
static void fbcp_udp_hello(fbcp_udp *u, uint64_t now, int fresh)
{
    uint8_t buf[FB_WIRE_MAX_DATAGRAM];
    size_t len = 0;

    if (fb_assoc_client_hello(&u->hs, buf, sizeof(buf), &len, now, fresh) != FB_OK)
        return;
    if (fresh) {
        u->refused = FB_OK;
        u->peer_closed = 0;
    }
    /* no association: the send slots go back to the size asked for, which the HELLO fills */
    if (fb_udp_tx_pending(u->tx) > 0)
        fbcp_udp_flush(u);
    fb_udp_tx_discard(u->tx);
    u->stride = u->dgram;
    fbcp_udp_send_now(u, buf, len);
}

static void fbcp_udp_close(fbcp_udp *u, fb_err reason);
static void fbcp_udp_wait(fbcp_udp *u, uint64_t now, uint64_t until, int want_out);
static unsigned fbcp_udp_receive(fbcp_udp *u, fbcp_switch *sw, uint64_t *pnow, int *prefused, int *panswered);

/* The end of a complete download: CLOSE(0), then up to about two round trips for udpd's answer.
 * A CLOSE with FB_WIRE_F_CLOSE_UNCHANGED means the file is still the one the session began with
 * and udpd ended the session: fbcp needs neither the HEAD that checks the file nor the DELETE
 * (PROTOCOL.md 8.5). No answer, or one without the flag: fbcp checks over HTTP(S) as before. */
static int fbcp_udp_close_download(fbcp_udp *u)
{
    uint64_t now = fbcp_now_us(), rtt = u->hello_rtt_us, until;

    if (!u->associated)
        return 0;
    if (rtt > FBCP_UDP_CLOSE_WAIT_MAX_US)
        rtt = FBCP_UDP_CLOSE_WAIT_MAX_US;
    until = now + 2 * rtt + FBCP_UDP_CLOSE_WAIT_EXTRA_US;
    u->peer_closed = 0;
    u->close_unchanged = 0;
    u->gather_end_us = 0; /* udpd's CLOSE is read as soon as it comes */
    fbcp_udp_close(u, FB_OK);
    u->associated = 1; /* still open for udpd's CLOSE */
    /* bounded: ends at UNTIL or with udpd's CLOSE */
    while (!u->peer_closed && now < until) {
        fbcp_udp_wait(u, now, until, 0);
        (void)fbcp_udp_receive(u, NULL, &now, NULL, NULL);
        now = fbcp_now_us();
    }
    u->associated = 0;
    return u->peer_closed && u->close_reason == FB_OK && u->close_unchanged;
}

static void fbcp_udp_close(fbcp_udp *u, fb_err reason)
{
    uint8_t buf[FB_WIRE_OVERHEAD + FB_WIRE_CLOSE_FIXED];
    fb_wire_hdr hdr;
    fb_wire_close c;
    size_t len = 0;

    if (!u->associated)
        return;
    memset(&hdr, 0, sizeof(hdr));
    memcpy(hdr.sid, u->sid, sizeof(hdr.sid));
    c.reason = (uint32_t)reason;
    /* twice: a lost CLOSE only costs udpd its idle timeout, but costs it */
    for (int i = 0; i < 2; i++) {
        hdr.pn = u->pn;
        if (fb_wire_encode_close(buf, sizeof(buf), &len, &hdr, &c, u->aead) == FB_OK) {
            u->pn++;
            fbcp_udp_send_now(u, buf, len);
        }
    }
    u->associated = 0;
}

/* A PROBE on the association (keep-alive while HTTP(S) drains; validates our address). */
static void fbcp_udp_keepalive(fbcp_udp *u, uint64_t now)
{
    uint8_t buf[FB_WIRE_OVERHEAD + FB_WIRE_PROBE_FIXED];
    fb_wire_hdr hdr;
    fb_wire_probe p;
    size_t len = 0;

    memset(&hdr, 0, sizeof(hdr));
    memset(&p, 0, sizeof(p));
    memcpy(hdr.sid, u->sid, sizeof(hdr.sid));
    hdr.pn = u->pn;
    p.probe_id = u->pn;
    p.ts_us = now;
    if (fb_wire_encode_probe(buf, sizeof(buf), &len, &hdr, &p, u->aead) == FB_OK) {
        u->pn++;
        fbcp_udp_send_now(u, buf, len);
    }
    u->last_keepalive_us = now;
}

/* ---------------------------------------------------------------- file callbacks */

static fb_err fbcp_udp_read(void *ctx, uint64_t off, uint8_t *buf, size_t len)
{
    fbcp_udp *u = ctx;
    fbcp_xfer *x = u->x;
    uint8_t *dst;
    size_t want, got = 0;

    if (off >= u->ra_off && off + len <= u->ra_off + u->ra_len) {
        memcpy(buf, u->ra + (off - u->ra_off), len);
        return FB_OK;
    }
    if (off > x->size || len > x->size - off)
        return FB_ERR_INTERNAL;
    if (off < u->ra_off || len > FBCP_UDP_READ_AHEAD) {
        /* a retransmission behind the read-ahead: read just it */
        dst = buf;
        want = len;
    } else {
        dst = u->ra;
        want = x->size - off < FBCP_UDP_READ_AHEAD ? (size_t)(x->size - off) : FBCP_UDP_READ_AHEAD;
        u->ra_len = 0;
    }
    if (fb_pread_all(x->fd, dst, want, off) != FB_OK) {
        /* unreadable, or the file shrank while being sent (errno 0) */
        u->io_errno = errno;
        u->io_what = "read";
        return FB_ERR_LOCAL_IO;
    }
    got = want;
    if (dst == u->ra) {
        u->ra_off = off;
        u->ra_len = got;
        memcpy(buf, u->ra, len);
    }
    return FB_OK;
}

/* Writes the write-behind buffer. */
static fb_err fbcp_udp_wflush(fbcp_udp *u)
{
    if (fb_pwrite_all(u->x->fd, u->wb, u->wb_len, u->wb_off) != FB_OK) {
        u->io_errno = errno;
        u->io_what = "write";
        return FB_ERR_LOCAL_IO;
    }
    u->wb_len = 0;
    return FB_OK;
}

static fb_err fbcp_udp_write(void *ctx, uint64_t off, const uint8_t *buf, size_t len)
{
    fbcp_udp *u = ctx;
    fb_err e;

    if (u->wb_len > 0 && (off != u->wb_off + u->wb_len || u->wb_len + len > FBCP_UDP_WRITE_BEHIND)) {
        e = fbcp_udp_wflush(u);
        if (e != FB_OK)
            return e;
    }
    if (len > FBCP_UDP_WRITE_BEHIND)
        return FB_ERR_INTERNAL; /* datagrams are far smaller */
    if (u->wb_len == 0)
        u->wb_off = off;
    memcpy(u->wb + u->wb_len, buf, len);
    u->wb_len += len;
    return FB_OK;
}

static void fbcp_udp_chunk(void *ctx, uint64_t index)
{
    fbcp_udp *u = ctx;

    if (u->npend == u->pend_cap) {
        size_t ncap = u->pend_cap ? u->pend_cap * 2 : 64;
        uint64_t *np = realloc(u->pend, ncap * sizeof(*np));

        if (np == NULL)
            return; /* the chunk stays unrecorded: fetched again if the transfer stops */
        u->pend = np;
        u->pend_cap = ncap;
    }
    u->pend[u->npend++] = index;
}

/* Download: writes what is buffered, then records the chunks it completed. */
static fb_err fbcp_udp_publish(fbcp_udp *u)
{
    fbcp_xfer *x = u->x;
    fb_err e = fbcp_udp_wflush(u);

    if (e != FB_OK)
        return e;
    for (size_t i = 0; i < u->npend; i++) {
        uint64_t off = u->pend[i] * FBCP_DOWNLOAD_CHUNK;
        uint64_t len = x->size - off < FBCP_DOWNLOAD_CHUNK ? x->size - off : FBCP_DOWNLOAD_CHUNK;

        x->bytes_done += len;
        if (x->range_done != NULL && (e = x->range_done(x, off, len)) != FB_OK) {
            u->io_errno = errno != 0 ? errno : EIO;
            u->io_what = "record";
            break;
        }
    }
    u->npend = 0;
    return e;
}

/* ---------------------------------------------------------------- receiving */

enum { FBCP_IN_DROP = 0, FBCP_IN_DATA_PHASE = 1, FBCP_IN_ANSWERED = 2, FBCP_IN_REFUSED = 3 };

/* One received datagram (decrypted in place). Returns what it was. */
static int fbcp_udp_input(fbcp_udp *u, uint8_t *buf, size_t len, uint64_t now)
{
    fb_wire_pkt pkt;
    fb_wire_reason why;

    u->rx_dgrams++;
    if (!u->have_session)
        goto drop;
    switch (fb_assoc_client_input(&u->hs, buf, len, now)) {
    case FB_ASSOC_C_DROP:
        goto drop;
    case FB_ASSOC_C_REFUSED:
        u->refused = u->hs.refused;
        return FBCP_IN_REFUSED;
    case FB_ASSOC_C_ACCEPTED:
        if (fb_udp_tx_pending(u->tx) > 0)
            fbcp_udp_flush(u);
        u->ack = u->hs.ack;
        u->hello_rtt_us = u->hs.rtt_us;
        u->max_dgram = u->hs.max_dgram;
        u->stride = u->max_dgram;
        fb_replay_init(&u->replay);
        u->pn = 0;
        u->associated = 1;
        u->last_keepalive_us = now;
        return FBCP_IN_ANSWERED;
    case FB_ASSOC_C_DATA_PHASE:
        break;
    }
    if (!u->associated || fb_wire_open(&pkt, &why, buf, len, u->aead, &u->replay) != FB_OK)
        goto drop;
    switch (pkt.hdr.type) {
    case FB_WIRE_FEEDBACK:
        if (u->snd != NULL)
            (void)fb_xfer_sender_on_feedback(u->snd, &pkt.hdr, &pkt.u.feedback, now);
        break;
    case FB_WIRE_DATA:
        if (u->rcv != NULL) {
            fb_err e = fb_xfer_receiver_on_data(u->rcv, &pkt.hdr, &pkt.u.data, now, NULL);
            if (e == FB_ERR_LOCAL_IO && u->io_what == NULL)
                u->io_what = "write";
        }
        break;
    case FB_WIRE_CLOSE:
        u->peer_closed = 1;
        u->close_reason = (fb_err)pkt.u.close.reason;
        u->close_unchanged = (pkt.hdr.flags & FB_WIRE_F_CLOSE_UNCHANGED) != 0;
        u->associated = 0;
        break;
    default:
        break; /* PROBE replies: proof of life only */
    }
    return FBCP_IN_DATA_PHASE;
drop:
    u->rx_dropped++;
    return FBCP_IN_DROP;
}

/* Reads everything waiting (bounded), feeding fbcp_udp_input; tells SW (may be NULL) what was
 * heard. Returns the number of authenticated datagrams. */
static unsigned fbcp_udp_receive(fbcp_udp *u, fbcp_switch *sw, uint64_t *pnow, int *prefused, int *panswered)
{
    unsigned heard = 0;

    /* at most 8 batches: then the caller writes, answers FEEDBACK and sends before reading on */
    for (int round = 0; round < 8; round++) {
        fb_udp_dgram *dg;
        /* a refused earlier datagram (ICMP, udpd not there) reads as nothing: the switch's
         * timeouts decide, not one ICMP message */
        int n = fb_udp_rx_recv(&u->sock, u->rx, &dg);

        if (n < 0 || fb_udp_rx_msgs(u->rx) == 0)
            break;
        if (round == 0)
            u->rx_reads++;
        *pnow = fbcp_now_us();
        for (int i = 0; i < n; i++) {
            /* dg[i].arrived_us: when the kernel got it, what the receive rate and delay samples
             * are made of */
            int r = fbcp_udp_input(u, dg[i].buf, dg[i].len, dg[i].arrived_us);

            if (r == FBCP_IN_DROP)
                continue;
            heard++;
            if (r == FBCP_IN_REFUSED && prefused != NULL)
                *prefused = 1;
            if (r == FBCP_IN_ANSWERED && panswered != NULL)
                *panswered = 1;
            if (sw != NULL && r != FBCP_IN_REFUSED)
                fbcp_switch_udp_heard(sw, *pnow, r == FBCP_IN_ANSWERED);
        }
        if (fb_udp_rx_msgs(u->rx) < FB_UDP_RX_BATCH)
            break;
    }
    return heard;
}

/* Sleeps until UNTIL (us) or a datagram arrives (or, with WANT_OUT, the socket can send). */
static void fbcp_udp_wait(fbcp_udp *u, uint64_t now, uint64_t until, int want_out)
{
    struct pollfd pfd = {.fd = u->sock.fd, .events = POLLIN | (want_out ? POLLOUT : 0)};
    struct timespec ts;
    uint64_t wait;
    int read_after = 0;

    if (until <= now) {
        u->readable = 0;
        return; /* work is due: the caller's loop comes back at once */
    }
    wait = until - now;
    if (wait < FBCP_UDP_MIN_SLEEP_US)
        wait = FBCP_UDP_MIN_SLEEP_US;
    if (wait > FBCP_UDP_TICK_US)
        wait = FBCP_UDP_TICK_US;
    if (now < u->gather_end_us) {
        /* not woken by each datagram: sleep to the end of the gathering (or what is due; the
         * pacing minimum above is for sends and does not lengthen the gathering) */
        pfd.events &= (short)~POLLIN;
        if (now + wait >= u->gather_end_us) {
            wait = u->gather_end_us - now;
            read_after = 1;
        }
    }
    ts.tv_sec = (time_t)(wait / 1000000);
    ts.tv_nsec = (long)(wait % 1000000) * 1000;
    u->readable = ppoll(&pfd, 1, &ts, NULL) > 0 && (pfd.revents & POLLIN);
    if (read_after)
        u->readable = 1; /* read what gathered */
}

/* ---------------------------------------------------------------- a UDP leg */

static void fbcp_udp_end_engines(fbcp_udp *u)
{
    fb_xfer_sender_free(u->snd);
    fb_xfer_receiver_free(u->rcv);
    u->snd = NULL;
    u->rcv = NULL;
    u->wb_len = 0;
    u->npend = 0;
    u->ra_len = 0;
    u->x = NULL;
}

static fb_err fbcp_udp_start_engine(fbcp_udp *u, fbcp_xfer *x, const fbcp_ranges *todo, uint64_t now)
{
    fb_err e;

    u->x = x;
    u->io_errno = 0;
    u->io_what = NULL;
    if (x->direction == FBCP_UPLOAD) {
        fb_xfer_sender_params sp;

        if (u->ra == NULL && (u->ra = malloc(FBCP_UDP_READ_AHEAD)) == NULL)
            return FB_ERR_NOMEM;
        u->ra_len = 0;
        u->ra_off = 0;
        memset(&sp, 0, sizeof(sp));
        sp.size = x->size;
        sp.ranges = todo->v;
        sp.nranges = todo->n;
        sp.max_payload = u->max_dgram - FB_WIRE_DATA_OVERHEAD;
        sp.chunk_size = x->chunk_size; /* the session's: every chunk completes with whole datagrams */
        sp.rate.policy = u->ack.policy;
        sp.rate.target_rate = u->ack.target_rate;
        sp.rate.min_rate = u->ack.min_rate;
        sp.rate.packet_size = (uint32_t)u->max_dgram;
        sp.aead = u->aead;
        memcpy(sp.sid, u->sid, sizeof(sp.sid));
        sp.read = fbcp_udp_read;
        sp.read_ctx = u;
        e = fb_xfer_sender_new(&u->snd, &sp, now);
    } else {
        fb_xfer_receiver_params rp;
        fbcp_ranges held;

        if (u->wb == NULL && (u->wb = malloc(FBCP_UDP_WRITE_BEHIND)) == NULL)
            return FB_ERR_NOMEM;
        u->wb_len = 0;
        u->npend = 0;
        memset(&rp, 0, sizeof(rp));
        rp.size = x->size;
        rp.chunk_size = FBCP_DOWNLOAD_CHUNK; /* the sidecar's chunks */
        rp.aead = u->aead;
        memcpy(rp.sid, u->sid, sizeof(rp.sid));
        rp.write = fbcp_udp_write;
        rp.on_chunk_complete = fbcp_udp_chunk;
        rp.ctx = u;
        e = fb_xfer_receiver_new(&u->rcv, &rp, now);
        /* what is not to be fetched is held already: FEEDBACK says so, udpd never sends it */
        fbcp_ranges_init(&held);
        if (e == FB_OK)
            e = fbcp_ranges_complement(&held, todo, x->size);
        for (size_t i = 0; e == FB_OK && i < held.n; i++)
            e = fb_xfer_receiver_mark_received(u->rcv, held.v[i].offset, held.v[i].length);
        fbcp_ranges_free(&held);
    }
    return e;
}

/* Adds the engine's progress since the last call to X's counters. */
static void fbcp_udp_account(fbcp_udp *u, fbcp_xfer *x, uint64_t todo_total, uint64_t *pnew, uint64_t *pretx,
                             uint64_t *packed)
{
    uint64_t nnew, nretx;

    if (u->snd != NULL) {
        fb_xfer_sender_stats st;
        uint64_t acked;

        fb_xfer_sender_stats_get(&st, u->snd);
        nnew = st.bytes_new;
        nretx = st.bytes_retx;
        acked = todo_total > st.need_bytes ? todo_total - st.need_bytes : 0;
        if (acked > *packed) {
            x->bytes_done += acked - *packed;
            *packed = acked;
        }
    } else if (u->rcv != NULL) {
        fb_xfer_receiver_stats st;

        fb_xfer_receiver_stats_get(&st, u->rcv);
        nnew = st.bytes_new;
        nretx = st.bytes_dup;
    } else {
        return;
    }
    x->bytes_udp += nnew - *pnew;
    x->bytes_udp_retx += nretx - *pretx;
    x->bytes += (nnew - *pnew) + (nretx - *pretx);
    *pnew = nnew;
    *pretx = nretx;
}

static fb_err fbcp_udp_io_error(fbcp_udp *u, char *detail, size_t detlen)
{
    if (u->io_errno == ENOMEM)
        return FB_ERR_NOMEM;
    if (u->io_errno == 0)
        snprintf(detail, detlen, "the file changed size during the transfer");
    else
        snprintf(detail, detlen, "cannot %s: %s", u->io_what ? u->io_what : "write", strerror(u->io_errno));
    return FB_ERR_LOCAL_IO;
}

/* Upload (sender) or download (receiver) of TODO over UDP until every byte arrived, UDP stops
 * answering (X->sw decides), or a fatal error. */
static fb_err fbcp_udp_leg(fbcp_transport *t, fbcp_xfer *x, const fbcp_ranges *todo, char *detail,
                           size_t detlen)
{
    fbcp_udp *u = x->udp;
    fbcp_switch *sw = x->sw;
    const fbcp_opts *o = x->opts;
    uint64_t now = fbcp_now_us(), todo_total = fbcp_ranges_total(todo);
    uint64_t s_new = 0, s_retx = 0, s_acked = 0;
    /* a leg that hears answers but moves nothing for --timeout is stalled (say, udpd cannot
     * record what it gets): HTTP(S) may do better, and the loop must end */
    uint64_t stall_us = (uint64_t)o->timeout_s * 1000000, progress_mark = 0, progress_us = now;
    int upload = x->direction == FBCP_UPLOAD, blocked = 0, done = 0;
    fb_err rv = FB_OK;

    (void)t;
    detail[0] = '\0';
    if (u == NULL || sw == NULL)
        return FB_ERR_INTERNAL;
    x->transport_name = "udp";
    sw->reason = FBCP_SW_NONE; /* set below only when UDP itself fails */
    rv = fbcp_udp_sync_session(u, x);
    if (rv != FB_OK) {
        fbcp_switch_udp_failed(sw, FBCP_SW_UNAVAILABLE);
        snprintf(detail, detlen, "the session id is not usable over UDP");
        return FB_ERR_CONNECTION_LOST;
    }
    if (!u->associated)
        fbcp_udp_hello(u, now, 1); /* a fresh attempt: an old probe's HELLO may be long stale */
    u->rx_gather_us = FBCP_UDP_RX_GATHER_US;
    if (getenv("FBCP_UDP_RX_GATHER_US") != NULL) {
        char *end = NULL;
        unsigned long long g = strtoull(getenv("FBCP_UDP_RX_GATHER_US"), &end, 10);

        if (end != NULL && *end == '\0' && g <= FBCP_UDP_RX_GATHER_MAX_US)
            u->rx_gather_us = g;
    }
    if (upload && u->rate_trace == NULL && getenv("FBCP_RATE_TRACE") != NULL) {
        u->rate_trace = fopen(getenv("FBCP_RATE_TRACE"), "a");
        u->rate_trace_t0 = now;
    }
    fbcp_trace(o, "UDP leg: %s %llu bytes with %s", upload ? "sending" : "receiving",
               (unsigned long long)todo_total, u->peer);

    /* bounded in time: a leg that hears nothing ends at the switch's deadline; one that hears
     * something makes progress (or udpd's FEEDBACK says the bytes are there) */
    for (;;) {
        fbcp_sw_verdict v;
        uint64_t wake;
        int refused = 0, answered = 0;

        now = fbcp_now_us();
        if (fbcp_interrupted) {
            rv = FB_ERR_CONNECTION_LOST;
            snprintf(detail, detlen, "interrupted");
            break;
        }
        /* a receive call only when something waits (or now and then: an error may be pending) */
        if (u->readable || now - u->last_rx_us >= FBCP_UDP_RX_POLL_US) {
            uint64_t reads = u->rx_reads;

            u->last_rx_us = now;
            u->readable = 0;
            fbcp_udp_receive(u, sw, &now, &refused, &answered);
            u->gather_end_us = u->rx_reads != reads ? u->last_rx_us + u->rx_gather_us : 0;
        }
        if (answered)
            fbcp_trace(o, "UDP: %s accepted: cipher %s, policy %s, rate %llu..%llu B/s, datagram %zu",
                       u->peer, fb_config_cipher_name(u->ack.cipher), fb_config_policy_name(u->ack.policy),
                       (unsigned long long)u->ack.min_rate, (unsigned long long)u->ack.target_rate,
                       u->max_dgram);
        if (u->rcv != NULL && (rv = fbcp_udp_publish(u)) != FB_OK) {
            rv = fbcp_udp_io_error(u, detail, detlen);
            break;
        }
        if (u->io_what != NULL) {
            rv = fbcp_udp_io_error(u, detail, detlen);
            break;
        }
        fbcp_udp_account(u, x, todo_total, &s_new, &s_retx, &s_acked);
        if ((upload ? s_acked : s_new) > progress_mark || (u->snd == NULL && u->rcv == NULL)) {
            progress_mark = upload ? s_acked : s_new;
            progress_us = now;
        } else if (now - progress_us >= stall_us) {
            rv = FB_ERR_CONNECTION_LOST;
            fbcp_switch_udp_failed(sw, FBCP_SW_LOST);
            snprintf(detail, detlen, "no progress over UDP with %s for %ld s", u->peer, o->timeout_s);
            break;
        }
        if (refused) {
            rv = u->refused != FB_OK ? u->refused : FB_ERR_SERVER_REFUSED;
            fbcp_switch_udp_failed(sw, FBCP_SW_REFUSED);
            snprintf(detail, detlen, "udpd at %s refused the UDP transfer: %s", u->peer, fb_err_message(rv));
            break;
        }
        if (u->peer_closed) {
            rv = u->close_reason != FB_OK ? u->close_reason : FB_ERR_CONNECTION_LOST;
            fbcp_switch_udp_failed(sw, FBCP_SW_CLOSED);
            snprintf(detail, detlen, "udpd at %s closed the association: %s", u->peer, fb_err_message(rv));
            break;
        }
        if ((upload && u->snd != NULL && fb_xfer_sender_done(u->snd)) ||
            (!upload && u->rcv != NULL && fb_xfer_receiver_complete(u->rcv))) {
            done = 1;
            break;
        }
        v = fbcp_switch_udp_check(sw, now);
        if (v != FBCP_SW_STAY) {
            rv = FB_ERR_CONNECTION_LOST;
            if (sw->reason == FBCP_SW_NO_ANSWER)
                snprintf(detail, detlen, "no answer over UDP from %s within %.1f s", u->peer,
                         (double)sw->start_timeout_us / 1e6);
            else
                snprintf(detail, detlen, "nothing heard over UDP from %s for %.1f s", u->peer,
                         (double)sw->idle_timeout_us / 1e6);
            break;
        }
        wake = fbcp_switch_udp_deadline(sw);
        if (!u->associated) {
            if (now >= fb_assoc_client_next_time(&u->hs))
                fbcp_udp_hello(u, now, 0);
            if (fb_assoc_client_next_time(&u->hs) < wake)
                wake = fb_assoc_client_next_time(&u->hs);
            if (!u->hs.pending) /* a refusal seen by an earlier probe, say: try afresh */
                fbcp_udp_hello(u, now, 1);
        } else {
            if (u->snd == NULL && u->rcv == NULL) {
                rv = fbcp_udp_start_engine(u, x, todo, now);
                if (rv != FB_OK) {
                    snprintf(detail, detlen, "cannot start the UDP transfer engine");
                    break;
                }
            }
            if (upload) {
                /* what the pacer allows now, in batches; a full socket buffer waits for POLLOUT */
                for (int k = 0; k < 4 * FBCP_UDP_TX_SLOTS && !blocked; k++) {
                    uint8_t *p;
                    size_t len = 0;

                    if (fb_xfer_sender_next_time(u->snd, now) > now)
                        break;
                    p = fbcp_udp_reserve(u);
                    if (p == NULL) {
                        blocked = fbcp_udp_flush(u);
                        now = fbcp_now_us();
                        continue;
                    }
                    rv = fb_xfer_sender_next(u->snd, p, u->stride, &len, u->pn, now);
                    if (rv != FB_OK || len == 0)
                        break;
                    u->pn++;
                    fbcp_udp_commit(u, len);
                }
                if (rv != FB_OK) {
                    if (rv == FB_ERR_LOCAL_IO)
                        rv = fbcp_udp_io_error(u, detail, detlen);
                    else
                        snprintf(detail, detlen, "cannot seal a datagram");
                    break;
                }
                if (!blocked || fb_udp_tx_pending(u->tx) > 0)
                    blocked = fbcp_udp_flush(u);
                if (!blocked) {
                    uint64_t nt = fb_xfer_sender_next_time(u->snd, now);
                    if (nt < wake)
                        wake = nt;
                }
            } else {
                uint8_t *p = fbcp_udp_reserve(u);
                size_t len = 0;

                if (p != NULL &&
                    fb_xfer_receiver_feedback(u->rcv, p, u->stride, &len, u->pn, now, 0) == FB_OK &&
                    len > 0) {
                    u->pn++;
                    fbcp_udp_commit(u, len);
                }
                blocked = fbcp_udp_flush(u);
                {
                    uint64_t nf = fb_xfer_receiver_next_feedback(u->rcv, now);
                    if (nf < wake)
                        wake = nf;
                }
            }
        }
        fbcp_event_progress(x, 0);
        fbcp_udp_rate_trace(u, now);
        if (u->rate_trace != NULL && u->rate_trace_next < wake)
            wake = u->rate_trace_next;
        fbcp_udp_wait(u, fbcp_now_us(), wake, blocked);
    }

    if (done) {
        if (!upload) {
            uint8_t p[FB_WIRE_MIN_DATAGRAM];
            size_t len = 0;

            /* tell udpd the file is complete, so its sender stops at once; twice, as the CLOSE
             * that follows: udpd vouches for the file only when it knows every byte arrived */
            for (int i = 0; i < 2; i++)
                if (fb_xfer_receiver_feedback(u->rcv, p, sizeof(p), &len, u->pn, fbcp_now_us(), 1) == FB_OK &&
                    len > 0) {
                    u->pn++;
                    fbcp_udp_send_now(u, p, len);
                }
            x->udp_end_confirmed = fbcp_udp_close_download(u);
        }
        fbcp_udp_close(u, FB_OK);
        rv = FB_OK;
    } else if (u->associated) {
        /* lost, refused midway, or a local error: stop udpd's side too */
        fbcp_udp_close(u, rv == FB_ERR_LOCAL_IO ? FB_ERR_LOCAL_IO : FB_ERR_CONNECTION_LOST);
    }
    u->associated = 0;
    fb_assoc_client_cancel(&u->hs);
    if (u->rcv != NULL && u->io_what == NULL)
        (void)fbcp_udp_publish(u); /* keep what arrived */
    fbcp_udp_account(u, x, todo_total, &s_new, &s_retx, &s_acked);
    {
        fb_xfer_sender_stats ss;
        fb_xfer_receiver_stats rs;

        if (u->snd != NULL) {
            fb_xfer_sender_stats_get(&ss, u->snd);
            fbcp_trace(
                o,
                "UDP leg ends: %s; %llu bytes sent, %llu resent, %llu lost, srtt %llu us, rate %llu B/s, "
                "%llu datagrams in %llu send calls (%llu GSO messages)",
                rv == FB_OK ? "all acknowledged" : fb_err_message(rv), (unsigned long long)ss.bytes_new,
                (unsigned long long)ss.bytes_retx, (unsigned long long)ss.lost_bytes,
                (unsigned long long)ss.srtt_us, (unsigned long long)ss.rate,
                (unsigned long long)u->sock.st.tx_dgrams, (unsigned long long)u->sock.st.tx_calls,
                (unsigned long long)u->sock.st.tx_gso_msgs);
        } else if (u->rcv != NULL) {
            fb_xfer_receiver_stats_get(&rs, u->rcv);
            fbcp_trace(o,
                       "UDP leg ends: %s; %llu bytes received, %llu duplicate, %llu FEEDBACK, "
                       "%llu datagrams in %llu reads",
                       rv == FB_OK ? "complete" : fb_err_message(rv), (unsigned long long)rs.bytes_new,
                       (unsigned long long)rs.bytes_dup, (unsigned long long)rs.feedbacks,
                       (unsigned long long)u->rx_dgrams, (unsigned long long)u->rx_reads);
        }
    }
    fbcp_udp_end_engines(u);
    fbcp_event_progress(x, 1);
    return rv;
}

/* ---------------------------------------------------------------- probing from HTTP(S) */

int fbcp_udp_probe(fbcp_xfer *x)
{
    fbcp_udp *u = x->udp;
    fbcp_switch *sw = x->sw;
    uint64_t now = fbcp_now_us();
    int refused = 0, answered = 0;

    if (u == NULL || sw == NULL || sw->udp_disabled)
        return 0;
    if (fbcp_udp_sync_session(u, x) != FB_OK) {
        fbcp_switch_probe_refused(sw);
        return 0;
    }
    fbcp_udp_receive(u, NULL, &now, &refused, &answered);
    if (refused) {
        fbcp_trace(x->opts, "UDP probe: udpd at %s refuses: %s; staying on HTTP(S)", u->peer,
                   fb_err_message(u->refused));
        fbcp_switch_probe_refused(sw);
        return 0;
    }
    if (answered)
        fbcp_trace(x->opts, "UDP probe: %s answers again", u->peer);
    if (u->associated) {
        /* keep udpd's association (and our address) alive while the HTTP requests finish */
        if (now - u->last_keepalive_us >= FBCP_UDP_KEEPALIVE_US || answered)
            fbcp_udp_keepalive(u, now);
        return fbcp_switch_probe_answered(sw) == FBCP_SW_RETURN;
    }
    if (fbcp_switch_probe_due(sw, now))
        fbcp_udp_hello(u, now, 1);
    return 0;
}

/* ---------------------------------------------------------------- life cycle */

void fbcp_udp_free(fbcp_udp *u)
{
    if (u == NULL)
        return;
    if (u->sock.fd >= 0 && u->associated && u->tx != NULL)
        fbcp_udp_close(u, FB_ERR_CONNECTION_LOST);
    fb_udp_sock_close(&u->sock);
    fb_xfer_sender_free(u->snd);
    fb_xfer_receiver_free(u->rcv);
    fb_aead_free(u->aead); /* wipes the keys */
    fb_udp_rx_free(u->rx);
    fb_udp_tx_free(u->tx);
    if (u->rate_trace != NULL)
        fclose(u->rate_trace);
    free(u->ra);
    free(u->wb);
    free(u->pend);
    OPENSSL_cleanse(u, sizeof(*u));
    free(u);
}

static void fbcp_udp_transport_destroy(fbcp_transport *t)
{
    free(t);
}

static const fbcp_transport_ops fbcp_udp_ops = {
    .name = "udp",
    .upload = fbcp_udp_leg,
    .download = fbcp_udp_leg,
    .destroy = fbcp_udp_transport_destroy,
};

fb_err fbcp_transport_udp_new(fbcp_transport **pt, const fbcp_opts *o)
{
    fbcp_transport *t = calloc(1, sizeof(*t));

    (void)o;
    *pt = NULL;
    if (t == NULL)
        return FB_ERR_NOMEM;
    t->ops = &fbcp_udp_ops;
    /* the pacer sleeps in ppoll for gaps well below a millisecond: ask for 1 us precision
     * instead of the default 50 us timer slack */
    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    *pt = t;
    return FB_OK;
}
