/* fb_xfer_send: the sending transfer engine of the UDP fast path (fb_xfer.h).
 *
 * State: NEED, the bytes not yet known to be received (pruned by every FEEDBACK); CURSOR, how
 * far first transmissions have gone (new data leaves in increasing offset order, so everything
 * of NEED below CURSOR has been sent at least once); a log of CURSOR over time for loss
 * detection; the retransmission queue fed by fb_retx. Pure code: the read callback does the
 * I/O, the caller passes the time. */
#include "fb_xfer.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#define LOG_N 4096u            /* send-log entries (time buckets of CURSOR) */
#define LOG_BUCKET_MIN_US 100u /* at least this wide; wider for long RTTs (srtt / 512) */
#define DEFAULT_RTT_US 100000u /* before the first RTT sample */
#define PROBE_BACKOFF_MAX 5u   /* silence probes back off to 32 times the timeout... */
#define PROBE_MAX_US 1000000u  /* ...but not beyond a second (unless the timeout itself is longer) */

typedef struct send_log_entry {
    uint64_t t_first, t_last; /* first and last send time in this bucket */
    uint64_t cursor;          /* CURSOR after the last send of the bucket */
} send_log_entry;

struct fb_xfer_sender {
    fb_xfer_sender_params p; /* ranges not kept */
    fb_rate rate;
    fb_retx retx;
    fb_xfer_rset need;
    uint64_t cursor;
    /* retransmission queue: ranges due, sent before new data */
    fb_range rq[FB_XFER_RETX_QUEUE];
    size_t rq_n;
    /* send log (ring) */
    send_log_entry log[LOG_N];
    size_t log_head, log_n; /* oldest entry, count */
    uint64_t log_evicted;   /* cursor of the newest entry dropped from the ring */
    /* feedback state */
    int have_pn;
    uint64_t last_pn;
    uint64_t last_echo_ts;
    uint64_t last_recv_bytes;
    uint64_t loss_counted; /* holes below this were counted as lost already */
    uint64_t described;    /* bytes below this were described by some FEEDBACK (holes or not) */
    fb_range cand[FB_RETX_MAX]; /* on_feedback: ranges judged lost (too large for the stack) */
    /* silence probe: everything sent, no FEEDBACK for a while */
    uint64_t last_event_us; /* last send or FEEDBACK */
    unsigned probe_backoff;
    fb_xfer_sender_stats st;
};

fb_err fb_xfer_sender_new(fb_xfer_sender **ps, const fb_xfer_sender_params *p, uint64_t now_us)
{
    fb_xfer_sender *s;
    fb_err e = FB_OK;

    *ps = NULL;
    if (p == NULL || p->read == NULL || p->aead == NULL || p->max_payload > FB_WIRE_MAX_PAYLOAD ||
        (p->nranges > 0 && p->ranges == NULL))
        return FB_ERR_INTERNAL;
    for (size_t i = 0; i < p->nranges; i++) {
        if (p->ranges[i].offset > p->size || p->ranges[i].length > p->size - p->ranges[i].offset)
            return FB_ERR_INTERNAL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return FB_ERR_NOMEM;
    s->p = *p;
    s->p.ranges = NULL;
    s->p.nranges = 0;
    if (s->p.max_payload == 0)
        s->p.max_payload = FB_WIRE_DEFAULT_PAYLOAD;
    if (s->p.feedback_interval_us == 0)
        s->p.feedback_interval_us = FB_RATE_FEEDBACK_INTERVAL_US;
    if (s->p.rate.packet_size == 0)
        s->p.rate.packet_size = (uint32_t)(s->p.max_payload + FB_WIRE_DATA_OVERHEAD);
    fb_rate_init(&s->rate, &s->p.rate, now_us);
    s->last_event_us = now_us;
    fb_retx_init(&s->retx);
    fb_xfer_rset_init(&s->need, p->max_ranges);
    if (p->ranges == NULL)
        e = fb_xfer_rset_add(&s->need, 0, p->size);
    for (size_t i = 0; i < p->nranges && e == FB_OK; i++)
        e = fb_xfer_rset_add(&s->need, p->ranges[i].offset, p->ranges[i].offset + p->ranges[i].length);
    if (e != FB_OK) {
        fb_xfer_sender_free(s);
        return e;
    }
    *ps = s;
    return FB_OK;
}

void fb_xfer_sender_free(fb_xfer_sender *s)
{
    if (s == NULL)
        return;
    fb_xfer_rset_free(&s->need);
    free(s);
}

int fb_xfer_sender_done(const fb_xfer_sender *s)
{
    return s->need.total == 0;
}

fb_rate *fb_xfer_sender_rate(fb_xfer_sender *s)
{
    return &s->rate;
}

void fb_xfer_sender_set_aead(fb_xfer_sender *s, const fb_aead_ctx *aead)
{
    s->p.aead = aead;
    /* Packet numbers restart with the new keys: FEEDBACK numbers too. */
    s->have_pn = 0;
}

/* End of the piece starting at ST: at most max_payload, never across a chunk boundary. */
static uint64_t piece_end(const fb_xfer_sender *s, uint64_t st, uint64_t limit)
{
    uint64_t en = limit - st > s->p.max_payload ? st + s->p.max_payload : limit;

    if (s->p.chunk_size > 0) {
        uint64_t boundary = (st / s->p.chunk_size + 1) * s->p.chunk_size;

        if (boundary < en)
            en = boundary;
    }
    return en;
}

static uint64_t srtt_or_default(const fb_xfer_sender *s)
{
    uint64_t r = fb_rate_srtt(&s->rate);

    return r ? r : DEFAULT_RTT_US;
}

/* ---- send log --------------------------------------------------------------------------------- */

static send_log_entry *log_at(fb_xfer_sender *s, size_t i)
{
    return &s->log[(s->log_head + i) % LOG_N];
}

static void log_sent(fb_xfer_sender *s, uint64_t now_us)
{
    uint64_t bucket = srtt_or_default(s) / 512;

    if (bucket < LOG_BUCKET_MIN_US)
        bucket = LOG_BUCKET_MIN_US;
    if (s->log_n > 0) {
        send_log_entry *last = log_at(s, s->log_n - 1);

        if (now_us >= last->t_first && now_us - last->t_first < bucket) {
            if (now_us > last->t_last)
                last->t_last = now_us;
            last->cursor = s->cursor;
            return;
        }
    }
    if (s->log_n == LOG_N) {
        s->log_evicted = s->log[s->log_head].cursor;
        s->log_head = (s->log_head + 1) % LOG_N;
        s->log_n--;
    }
    s->log[(s->log_head + s->log_n) % LOG_N] = (send_log_entry){now_us, now_us, s->cursor};
    s->log_n++;
}

/* How far first transmissions had gone by sends strictly before T (conservative: a bucket that
 * reaches T or later does not count). */
static uint64_t cursor_before(fb_xfer_sender *s, uint64_t t)
{
    size_t lo = 0, hi = s->log_n;

    /* Largest i with t_last < t. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (log_at(s, mid)->t_last < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo == 0 ? s->log_evicted : log_at(s, lo - 1)->cursor;
}

/* ---- sending ------------------------------------------------------------------------------------ */

/* Everything was sent and nothing heard for this long: resend the first needed piece, so a
 * receiver whose FEEDBACK was lost (or that is complete and silent) answers again. */
static uint64_t probe_time(const fb_xfer_sender *s)
{
    uint64_t base = 2 * srtt_or_default(s) + 2ull * s->p.feedback_interval_us;
    uint64_t timeout = base << s->probe_backoff;

    if (timeout > PROBE_MAX_US)
        timeout = base > PROBE_MAX_US ? base : PROBE_MAX_US;
    return s->last_event_us + timeout;
}

static int have_fresh_work(const fb_xfer_sender *s)
{
    return s->rq_n > 0 || fb_xfer_rset_find(&s->need, s->cursor) < s->need.n;
}

uint64_t fb_xfer_sender_next_time(const fb_xfer_sender *s, uint64_t now_us)
{
    uint64_t t;

    if (fb_xfer_sender_done(s))
        return UINT64_MAX;
    t = fb_rate_next_send_time(&s->rate, now_us);
    if (!have_fresh_work(s)) {
        uint64_t p = probe_time(s);

        if (p > t)
            t = p;
    }
    return t;
}

/* Drops the queue's parts that are no longer needed. */
static void rq_prune(fb_xfer_sender *s)
{
    size_t k = 0;

    for (size_t i = 0; i < s->rq_n; i++) {
        uint64_t a = s->rq[i].offset, b = a + s->rq[i].length;
        size_t j = fb_xfer_rset_find(&s->need, a);

        if (j == s->need.n || s->need.v[j].start >= b)
            continue;
        if (s->need.v[j].start > a)
            a = s->need.v[j].start;
        s->rq[k].offset = a;
        s->rq[k].length = b - a;
        k++;
    }
    s->rq_n = k;
}

/* Picks the next piece: a needed part of the queue's first range, else new data. */
static int pick(fb_xfer_sender *s, uint64_t *pstart, uint64_t *pend, int *pretx)
{
    while (s->rq_n > 0) {
        uint64_t a = s->rq[0].offset, b = a + s->rq[0].length;
        size_t j = fb_xfer_rset_find(&s->need, a);

        if (j < s->need.n && s->need.v[j].start < b) {
            uint64_t st = a > s->need.v[j].start ? a : s->need.v[j].start;

            *pstart = st;
            *pend = piece_end(s, st, b < s->need.v[j].end ? b : s->need.v[j].end);
            *pretx = 1;
            return 1;
        }
        memmove(&s->rq[0], &s->rq[1], (s->rq_n - 1) * sizeof(s->rq[0]));
        s->rq_n--;
    }
    {
        size_t j = fb_xfer_rset_find(&s->need, s->cursor);
        uint64_t st, en;

        if (j == s->need.n)
            return 0;
        st = s->need.v[j].start > s->cursor ? s->need.v[j].start : s->cursor;
        en = piece_end(s, st, s->need.v[j].end);
        *pstart = st;
        *pend = en;
        *pretx = 0;
        return 1;
    }
}

/* Consumes [.., END) of the queue's first range after sending it. */
static void rq_consume(fb_xfer_sender *s, uint64_t end)
{
    uint64_t b = s->rq[0].offset + s->rq[0].length;

    if (end >= b) {
        memmove(&s->rq[0], &s->rq[1], (s->rq_n - 1) * sizeof(s->rq[0]));
        s->rq_n--;
    } else {
        s->rq[0].length = b - end;
        s->rq[0].offset = end;
    }
}

fb_err fb_xfer_sender_next(fb_xfer_sender *s, uint8_t *buf, size_t cap, size_t *plen, uint64_t pn,
                           uint64_t now_us)
{
    uint64_t st = 0, en = 0;
    int retx = 0;
    size_t len;
    fb_wire_hdr hdr;
    fb_wire_data d;
    fb_err e;

    *plen = 0;
    if (fb_xfer_sender_next_time(s, now_us) > now_us)
        return FB_OK;
    if (!pick(s, &st, &en, &retx)) {
        /* The silence probe (fb_xfer_sender_next_time said it is due). */
        st = s->need.v[0].start;
        en = piece_end(s, st, s->need.v[0].end);
        retx = 2;
    }
    len = (size_t)(en - st);
    if (cap < FB_WIRE_DATA_OVERHEAD + len)
        return FB_ERR_TOO_LARGE;
    e = s->p.read(s->p.read_ctx, st, buf + FB_WIRE_DATA_PAYLOAD_OFF, len);
    if (e != FB_OK)
        return e;
    memset(&hdr, 0, sizeof(hdr));
    memcpy(hdr.sid, s->p.sid, FB_WIRE_SID_LEN);
    hdr.pn = pn;
    hdr.flags =
        (uint8_t)((retx ? FB_WIRE_F_DATA_RETRANSMIT : 0) | (en == s->p.size ? FB_WIRE_F_DATA_LAST : 0));
    d.offset = st;
    d.send_ts_us = now_us;
    d.payload = buf + FB_WIRE_DATA_PAYLOAD_OFF;
    d.len = len;
    e = fb_wire_encode_data(buf, cap, plen, &hdr, &d, s->p.aead);
    if (e != FB_OK)
        return e;
    if (retx == 1)
        rq_consume(s, en);
    if (retx == 2 && s->probe_backoff < PROBE_BACKOFF_MAX)
        s->probe_backoff++;
    if (retx) {
        s->st.bytes_retx += len;
    } else {
        s->cursor = en;
        log_sent(s, now_us);
        s->st.bytes_new += len;
    }
    s->st.packets++;
    s->st.bytes += len;
    s->last_event_us = now_us;
    fb_rate_on_send(&s->rate, now_us, *plen);
    return FB_OK;
}

/* ---- feedback ----------------------------------------------------------------------------------- */

fb_err fb_xfer_sender_on_feedback(fb_xfer_sender *s, const fb_wire_hdr *hdr, const fb_wire_feedback *fb,
                                  uint64_t now_us)
{
    fb_rate_sample smp;
    fb_range *cand = s->cand, due[FB_XFER_RETX_QUEUE];
    size_t ncand = 0, ndue, i;
    uint64_t unknown_start = 0, unknown_end = 0, line, echo_line = 0, tail_age, srtt, interval, budget;
    uint64_t pos, from, echo_ts;
    int more = (hdr->flags & FB_WIRE_F_FEEDBACK_MORE) != 0, fresh_echo;

    if (fb->high_offset > s->p.size || fb->cum_offset > fb->high_offset)
        return FB_ERR_PROTOCOL;
    if (s->have_pn && hdr->pn <= s->last_pn) {
        s->st.stale_feedbacks++;
        return FB_OK;
    }
    s->have_pn = 1;
    s->last_pn = hdr->pn;
    s->st.feedbacks++;
    s->last_event_us = now_us;
    s->probe_backoff = 0;

    /* What arrived: below cum; in [from, high) all but the holes, up to the last listed hole
     * when more holes exist than are listed. [cum, from) is not described (FROM lists a later
     * group of holes): what an earlier FEEDBACK said of it stands in NEED. Removing may fail on
     * a full set: the bytes then stay "needed", which costs a resend, never data. */
    (void)fb_xfer_rset_remove(&s->need, 0, fb->cum_offset);
    from = (hdr->flags & FB_WIRE_F_FEEDBACK_FROM) ? fb->from_offset : fb->cum_offset;
    if (from < fb->cum_offset || from > fb->high_offset)
        return FB_ERR_PROTOCOL;
    pos = from;
    for (i = 0; i < fb->nranges; i++) {
        (void)fb_xfer_rset_remove(&s->need, pos, fb->ranges[i].offset);
        pos = fb->ranges[i].offset + fb->ranges[i].length;
    }
    if (more) {
        /* beyond the last listed hole: unknown, except what an earlier FEEDBACK described */
        unknown_start = pos > s->described ? pos : s->described;
        unknown_end = fb->high_offset;
        if (pos > s->described)
            s->described = pos;
    } else {
        s->described = fb->high_offset > s->described ? fb->high_offset : s->described;
        (void)fb_xfer_rset_remove(&s->need, pos, fb->high_offset);
    }
    rq_prune(s);
    if (fb_xfer_sender_done(s)) {
        s->rq_n = 0;
        return FB_OK;
    }

    /* Delay samples; a repeated echo carries no new one. */
    memset(&smp, 0, sizeof(smp));
    smp.now_us = now_us;
    smp.recv_rate = fb->recv_rate;
    s->st.recv_rate = fb->recv_rate;
    if (fb->recv_bytes >= s->last_recv_bytes)
        smp.acked_bytes = fb->recv_bytes - s->last_recv_bytes;
    s->last_recv_bytes = fb->recv_bytes;
    s->st.acked_bytes = fb->recv_bytes;
    /* DATA carries the low 32 bits of its send time: the echo is one of our own recent times. */
    echo_ts = fb->echo_ts_us != 0 ? fb_wire_ts_unwrap(now_us, fb->echo_ts_us) : 0;
    fresh_echo = echo_ts != 0 && echo_ts != s->last_echo_ts;
    if (echo_ts != 0) {
        if (fresh_echo && now_us >= echo_ts + fb->hold_us) {
            smp.rtt_us = now_us - echo_ts - fb->hold_us;
            if (smp.rtt_us == 0)
                smp.rtt_us = 1;
            if (fb->echo_recv_ts_us != 0) {
                smp.has_owd = 1;
                smp.owd_us = (int64_t)(fb->echo_recv_ts_us - echo_ts);
                smp.owd_lag_us = fb->delay_lag_us;
            }
        }
        s->last_echo_ts = echo_ts;
        /* Sends strictly before the echoed one (those in its microsecond may follow it). */
        echo_line = cursor_before(s, echo_ts);
    }

    /* Lost: needed bytes sent before a datagram that arrived, or, while no newer first
     * transmission arrives (the tail of a transfer, an outage), sent long ago. As long as new
     * data keeps arriving the echo alone decides: a receiver that stalls for a while (a busy
     * host) then does not make its queued data look lost. */
    srtt = srtt_or_default(s);
    tail_age = 2 * srtt + 2ull * s->p.feedback_interval_us;
    line = !fresh_echo && now_us > tail_age ? cursor_before(s, now_us - tail_age) : 0;
    if (echo_line > line)
        line = echo_line;
    if (line > s->cursor)
        line = s->cursor;
    for (i = fb_xfer_rset_find(&s->need, 0); i < s->need.n && ncand < FB_RETX_MAX; i++) {
        uint64_t a = s->need.v[i].start, b = s->need.v[i].end;

        if (a >= line)
            break;
        if (b > line)
            b = line;
        /* Bytes of unknown state (beyond the holes any FEEDBACK listed) are not judged yet. */
        if (unknown_end > unknown_start && a < unknown_end && b > unknown_start) {
            if (a < unknown_start) {
                cand[ncand].offset = a;
                cand[ncand].length = unknown_start - a;
                ncand++;
            }
            if (b > unknown_end && ncand < FB_RETX_MAX) {
                cand[ncand].offset = unknown_end;
                cand[ncand].length = b - unknown_end;
                ncand++;
            }
            continue;
        }
        cand[ncand].offset = a;
        cand[ncand].length = b - a;
        ncand++;
    }
    for (i = 0; i < ncand; i++) {
        uint64_t a = cand[i].offset, b = a + cand[i].length;

        if (b > s->loss_counted)
            smp.lost_bytes += b - (a > s->loss_counted ? a : s->loss_counted);
    }
    if (line > s->loss_counted)
        s->loss_counted = line;
    s->st.lost_bytes += smp.lost_bytes;
    fb_rate_on_feedback(&s->rate, &smp);

    /* Each lost range about once per RTT; repair limited to about one interval of the rate, so
     * the queue stays fresh. */
    srtt = srtt_or_default(s);
    interval = srtt + srtt / 4 + s->p.feedback_interval_us;
    budget = (uint64_t)((double)fb_rate_current(&s->rate) * (double)interval / 1e6);
    if (budget < s->p.max_payload)
        budget = s->p.max_payload;
    if (s->rq_n < FB_XFER_RETX_QUEUE) {
        ndue = fb_retx_schedule(&s->retx, due, FB_XFER_RETX_QUEUE - s->rq_n, cand, ncand, now_us, interval, budget,
                                from, more ? pos : fb->high_offset);
        memcpy(&s->rq[s->rq_n], due, ndue * sizeof(due[0]));
        s->rq_n += ndue;
    }
    fb_retx_forget_below(&s->retx, fb->cum_offset);
    return FB_OK;
}

void fb_xfer_sender_stats_get(fb_xfer_sender_stats *out, const fb_xfer_sender *s)
{
    *out = s->st;
    out->need_bytes = s->need.total;
    out->rate = fb_rate_current(&s->rate);
    out->srtt_us = fb_rate_srtt(&s->rate);
    out->queue_delay_us = fb_rate_queue_delay(&s->rate);
    out->quick_start = fb_rate_in_quick_start(&s->rate);
    out->recv_avg = (uint64_t)s->rate.recv_avg;
    out->send_avg = (uint64_t)s->rate.send_avg;
}

void fb_xfer_sender_trace_line(char *buf, size_t len, const fb_xfer_sender *s, uint64_t t0_us, uint64_t now_us)
{
    fb_xfer_sender_stats st;

    fb_xfer_sender_stats_get(&st, s);
    snprintf(buf, len, "%.3f %llu %llu %llu %llu %d %llu %llu %llu %llu %llu %llu\n",
             (double)(now_us >= t0_us ? now_us - t0_us : 0) / 1e6, (unsigned long long)st.rate,
             (unsigned long long)st.recv_rate, (unsigned long long)st.srtt_us,
             (unsigned long long)st.queue_delay_us, st.quick_start, (unsigned long long)st.bytes_new,
             (unsigned long long)st.bytes_retx, (unsigned long long)st.acked_bytes,
             (unsigned long long)st.lost_bytes, (unsigned long long)st.recv_avg, (unsigned long long)st.send_avg);
}
