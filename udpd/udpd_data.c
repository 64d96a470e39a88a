/* udpd_data: the data phase of a udpd session (udpd_sess.h), on its running association: DATA
 * into the upload's receiver, FEEDBACK into the download's sender (created by the first one),
 * PROBE answered at its own size, CLOSE (a download's CLOSE(0) answered, with UNCHANGED when the
 * file is provably the session's: PROTOCOL.md 8.5). */
#include "udpd_sess.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ARRIVED: the kernel's receive time, for the receive rate and the delay echo. */
void sess_on_data(sess *s, const fb_wire_pkt *pkt, uint64_t now, uint64_t arrived)
{
    size_t fresh = 0;
    fb_err e;

    if (s->direction != FB_DIR_UPLOAD) {
        count_drop(UDPD_DROP_WRONG_DIRECTION);
        return;
    }
    if (s->rcv == NULL) {
        count_drop(UDPD_DROP_SESSION_INACTIVE);
        return;
    }
    e = fb_xfer_receiver_on_data(s->rcv, &pkt->hdr, &pkt->u.data, arrived, &fresh);
    if (e == FB_ERR_BAD_RANGE) {
        count_wire(FB_WIRE_R_MALFORMED); /* beyond the session size (PROTOCOL.md 6.3) */
        return;
    }
    if (e == FB_ERR_TOO_LARGE) {
        count_drop(UDPD_DROP_RANGE_SET_FULL);
        return;
    }
    if (e != FB_OK) {
        sess_upload_fail(s, e, now);
        return;
    }
    udpd_ctr.data_bytes_new += fresh;
    udpd_ctr.data_bytes_dup += pkt->u.data.len - fresh;
    if (fresh > 0) {
        atomic_fetch_add(&s->slot->bytes_udp, (uint64_t)fresh);
        s->since_ckpt_bytes += fresh;
        s->last_data_us = now;
    }
    sess_touch(s);
}

/* UDPD_RATE_TRACE=FILE (benchmarks, tuning): the download sender's rate controller after each
 * FEEDBACK, one line each, columns as fb_xfer_sender_trace_line. Opened once; never holds keys. */
static void rate_trace(sess *s, uint64_t now)
{
    static FILE *trace;
    static int tried;
    char line[256];

    if (!tried) {
        const char *path = getenv("UDPD_RATE_TRACE");

        tried = 1;
        if (path != NULL && (trace = fopen(path, "a")) != NULL)
            setvbuf(trace, NULL, _IOLBF, 0);
    }
    if (trace == NULL)
        return;
    if (s->trace_t0_us == 0)
        s->trace_t0_us = now;
    fb_xfer_sender_trace_line(line, sizeof(line), s->snd, s->trace_t0_us, now);
    fprintf(trace, "%s %s", s->id, line);
}

/* NOW: the FEEDBACK's arrival time (the kernel's), so the RTT excludes time it waited to be read. */
void sess_on_feedback(sess *s, const fb_wire_pkt *pkt, uint64_t now)
{
    fb_err e;

    if (s->direction != FB_DIR_DOWNLOAD) {
        count_drop(UDPD_DROP_WRONG_DIRECTION);
        return;
    }
    udpd_ctr.feedbacks_rx++;
    if (s->snd == NULL) {
        fb_xfer_sender_params sp;

        memset(&sp, 0, sizeof(sp));
        sp.size = s->size;
        sp.max_payload = s->as.cur.max_dgram - FB_WIRE_DATA_OVERHEAD;
        sp.chunk_size = s->chunk_size;
        sp.rate.policy = s->as.cur.policy;
        sp.rate.target_rate = s->as.cur.target_rate;
        sp.rate.min_rate = s->as.cur.min_rate;
        sp.rate.packet_size = s->as.cur.max_dgram;
        sp.aead = s->as.cur.aead;
        memcpy(sp.sid, s->sid, FB_WIRE_SID_LEN);
        sp.read = sess_read_cb;
        sp.read_ctx = s;
        e = fb_xfer_sender_new(&s->snd, &sp, now);
        if (e != FB_OK) {
            udpd_log(UDPD_ERROR, "UD00026", "session %s: cannot start sending: %s", s->id, fb_err_message(e));
            sess_send_close(s, e, 0);
            sess_assoc_end(s, now, fb_err_name(e));
            return;
        }
    }
    e = fb_xfer_sender_on_feedback(s->snd, &pkt->hdr, &pkt->u.feedback, now);
    if (e != FB_OK) {
        count_wire(FB_WIRE_R_MALFORMED);
        return;
    }
    rate_trace(s, now);
    if (fb_xfer_sender_done(s->snd) && !s->snd_done_logged) {
        fb_xfer_sender_stats st;

        fb_xfer_sender_stats_get(&st, s->snd);
        s->snd_done_logged = 1;
        udpd_log(UDPD_INFO, "UD00027", "session %s: download of '%s' complete: %llu bytes sent, %llu resent",
                 s->id, s->relpath, (unsigned long long)st.bytes_new, (unsigned long long)st.bytes_retx);
    }
}

void sess_on_probe(sess *s, const fb_wire_pkt *pkt, uint64_t now, uint64_t arrived)
{
    fb_wire_hdr hdr;
    fb_wire_probe r;
    uint8_t *p;
    size_t len = 0, size = pkt->datagram_len;

    if (pkt->hdr.flags & FB_WIRE_F_PROBE_REPLY) {
        count_drop(UDPD_DROP_UNEXPECTED);
        return;
    }
    udpd_ctr.probes++;
    p = udpd_send_reserve(s->ss->d, size);
    if (p == NULL)
        return;
    memset(&hdr, 0, sizeof(hdr));
    memcpy(hdr.sid, s->sid, sizeof(hdr.sid));
    hdr.flags = FB_WIRE_F_PROBE_REPLY;
    hdr.pn = s->as.cur.pn_out;
    r.probe_id = pkt->u.probe.probe_id;
    r.ts_us = pkt->u.probe.ts_us;
    r.hold_us = now > arrived ? (uint32_t)(now - arrived) : 0;
    r.pad_to = size; /* the same size: path MTU probing, and never larger than the probe */
    if (fb_wire_encode_probe(p, size, &len, &hdr, &r, s->as.cur.aead) == FB_OK) {
        s->as.cur.pn_out++;
        udpd_send_commit(s->ss->d, len, &s->peer);
    }
}

void sess_on_close(sess *s, const fb_wire_pkt *pkt, uint64_t now)
{
    udpd_ctr.closes++;
    /* A download's receiver closing normally waits for an answer (PROTOCOL.md 8.5): CLOSE(0),
     * with UNCHANGED when every byte is acknowledged and the file is still the one the session
     * was created for; then the session ends here, which saves the client a HEAD and a DELETE
     * over a new HTTPS connection. Twice, as the client sends its CLOSE: never more than it
     * sent, and only to the association's validated address. */
    if (s->direction == FB_DIR_DOWNLOAD && pkt->u.close.reason == FB_OK) {
        int vouch = s->snd != NULL && fb_xfer_sender_done(s->snd) && slot_still_ours(s) &&
                    sess_file_unchanged(s) && fb_slot_cancel(s->slot, s->generation);
        uint8_t flags = vouch ? FB_WIRE_F_CLOSE_UNCHANGED : 0;

        sess_send_close(s, FB_OK, flags);
        sess_send_close(s, FB_OK, flags);
        if (vouch) {
            udpd_ctr.downloads_confirmed++;
            udpd_log(UDPD_INFO, "UD00063", "session %s: download of '%s' confirmed unchanged; session ended",
                     s->id, s->relpath);
            sess_assoc_end(s, now, "download complete");
            return;
        }
    }
    if (s->direction == FB_DIR_UPLOAD && s->rcv != NULL) {
        fb_err e = sess_publish(s);

        if (e != FB_OK) {
            sess_upload_fail(s, e, now);
            return;
        }
        /* assoc_end takes the checkpoint (sess_checkpoint_at_close) */
    }
    sess_assoc_end(s, now,
                   pkt->u.close.reason == FB_OK ? "closed by the client" : fb_err_name(pkt->u.close.reason));
}
