/* fbcp_udp: the UDP association of fbcp (docs/PROTOCOL.md), one at a time per file.
 *
 * - Socket: libfb's UDP layer (lib/fb_udp.h, the same as udpd's), connected to the URL's host
 *   and the session's UDP port, 16 MiB buffers; a send batch of 128 datagrams (sendmmsg, GSO
 *   runs), recvmmsg with GRO split, kernel arrival times, and fb_udp's errno policy.
 * - Handshake: HELLO (handshake keys, fresh client nonce, padded to the datagram size asked for)
 *   retransmitted after 250 ms, doubling; an authenticated HELLO_ACK echoing the nonce either
 *   refuses (its status) or gives the data keys, cipher, rates and datagram size.
 * - Receiving, waiting, CLOSE and keepalives; the probe used while HTTP(S) carries the data
 *   (fbcp_udp_probe).
 * The legs that move a file's data over the association are fbcp_udp_leg.c. */
#include "config.h"

#include "fbcp.h"
#include "fbcp_udp.h"

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
/* One line per 10 ms of an upload (the columns: fb_xfer_sender_trace_line). */
void fbcp_udp_rate_trace(fbcp_udp *u, uint64_t now)
{
    char line[256];

    if (u->rate_trace == NULL || u->snd == NULL || now < u->rate_trace_next)
        return;
    u->rate_trace_next = now + 10000;
    fb_xfer_sender_trace_line(line, sizeof(line), u->snd, u->rate_trace_t0, now);
    fputs(line, u->rate_trace);
}

uint64_t fbcp_now_us(void)
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
uint8_t *fbcp_udp_reserve(fbcp_udp *u)
{
    return fb_udp_tx_reserve(u->tx, u->stride);
}

void fbcp_udp_commit(fbcp_udp *u, size_t len)
{
    (void)fb_udp_tx_commit(u->tx, len, NULL);
}

/* Sends the batch (fb_udp's errno policy). 0: all went (datagrams refused for good are dropped:
 * the engines repair them); 1: the socket buffer is full, the rest stays queued. */
int fbcp_udp_flush(fbcp_udp *u)
{
    int had_gso = u->sock.gso, r = fb_udp_tx_flush(&u->sock, u->tx);

    if (had_gso && !u->sock.gso)
        fbcp_trace(u->o, "UDP GSO refused (%s): sending plain datagrams", strerror(u->sock.gso_errno));
    return r;
}

/* Queues one datagram built in BUF (at most STRIDE bytes) and sends the batch at once. */
void fbcp_udp_send_now(fbcp_udp *u, const uint8_t *buf, size_t len)
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
fb_err fbcp_udp_sync_session(fbcp_udp *u, const fbcp_xfer *x)
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
void fbcp_udp_hello(fbcp_udp *u, uint64_t now, int fresh)
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

/* The end of a complete download: CLOSE(0), then up to about two round trips for udpd's answer.
 * A CLOSE with FB_WIRE_F_CLOSE_UNCHANGED means the file is still the one the session began with
 * and udpd ended the session: fbcp needs neither the HEAD that checks the file nor the DELETE
 * (PROTOCOL.md 8.5). No answer, or one without the flag: fbcp checks over HTTP(S) as before. */
int fbcp_udp_close_download(fbcp_udp *u)
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

void fbcp_udp_close(fbcp_udp *u, fb_err reason)
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
unsigned fbcp_udp_receive(fbcp_udp *u, fbcp_switch *sw, uint64_t *pnow, int *prefused, int *panswered)
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
void fbcp_udp_wait(fbcp_udp *u, uint64_t now, uint64_t until, int want_out)
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
