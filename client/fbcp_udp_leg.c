/* fbcp_udp_leg: a UDP leg of one file over fbcp_udp.c's association, and the UDP transport.
 *
 * - Upload leg: the fb_xfer sender reads the missing ranges (read-ahead buffer, pread) and
 *   seals DATA straight into the send batch, paced by the rate controller: the loop sleeps in
 *   ppoll until the next send time (timer slack 1 us), so sub-millisecond gaps are kept without
 *   spinning; FEEDBACK drives it. Done when every byte is acknowledged: then CLOSE, and the
 *   caller commits over HTTPS.
 * - Download leg: the fb_xfer receiver, told which ranges the file already holds, writes DATA
 *   through a write-behind buffer (pwrite after each receive batch) and reports each chunk
 *   (x->range_done, the sidecar) only after its bytes were written; FEEDBACK when due.
 * - Whether the leg goes on is fbcp_switch's decision (no answer, silence). */
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
