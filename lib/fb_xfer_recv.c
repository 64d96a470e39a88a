/* fb_xfer_recv: the receiving transfer engine of the UDP fast path, and the bounded range set
 * both engines use (fb_xfer.h). Pure code: callbacks do the writing, the caller passes time. */
#include "fb_xfer.h"

#include <stdlib.h>
#include <string.h>

/* ---- range set ------------------------------------------------------------------------------ */

void fb_xfer_rset_init(fb_xfer_rset *s, size_t max)
{
    memset(s, 0, sizeof(*s));
    s->max = max ? max : FB_XFER_DEFAULT_MAX_RANGES;
}

void fb_xfer_rset_free(fb_xfer_rset *s)
{
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
    s->total = 0;
}

void fb_xfer_rset_clear(fb_xfer_rset *s)
{
    s->n = 0;
    s->total = 0;
}

size_t fb_xfer_rset_find(const fb_xfer_rset *s, uint64_t offset)
{
    size_t lo = 0, hi = s->n;

    /* Fast path: appending at the end is the common case. */
    if (s->n == 0 || s->v[s->n - 1].end <= offset)
        return s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (s->v[mid].end > offset)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* Grows the array so it can hold WANT entries (WANT <= max already checked). */
static fb_err rset_reserve(fb_xfer_rset *s, size_t want)
{
    size_t ncap;
    fb_xfer_span *nv;

    if (want <= s->cap)
        return FB_OK;
    ncap = s->cap ? s->cap : 16;
    while (ncap < want)
        ncap *= 2;
    if (ncap > s->max)
        ncap = s->max;
    nv = realloc(s->v, ncap * sizeof(*nv));
    if (nv == NULL)
        return FB_ERR_NOMEM;
    s->v = nv;
    s->cap = ncap;
    return FB_OK;
}

/* [i, j): the intervals that overlap or touch [start, end). */
static void rset_touching(const fb_xfer_rset *s, uint64_t start, uint64_t end, size_t *pi, size_t *pj)
{
    size_t i = 0, j;

    /* First interval with end >= start (touching counts). */
    if (start > 0)
        i = fb_xfer_rset_find(s, start - 1);
    j = i;
    while (j < s->n && s->v[j].start <= end)
        j++;
    *pi = i;
    *pj = j;
}

fb_err fb_xfer_rset_add(fb_xfer_rset *s, uint64_t start, uint64_t end)
{
    size_t i, j, k;
    uint64_t removed = 0, ns, ne;
    fb_err e;

    if (start >= end)
        return FB_OK;
    /* Fast paths: extend the last interval, or append after it. */
    if (s->n > 0 && start <= s->v[s->n - 1].end && start >= s->v[s->n - 1].start) {
        if (end > s->v[s->n - 1].end) {
            s->total += end - s->v[s->n - 1].end;
            s->v[s->n - 1].end = end;
        }
        return FB_OK;
    }
    if (s->n == 0 || start > s->v[s->n - 1].end) {
        if (s->n + 1 > s->max)
            return FB_ERR_TOO_LARGE;
        e = rset_reserve(s, s->n + 1);
        if (e != FB_OK)
            return e;
        s->v[s->n].start = start;
        s->v[s->n].end = end;
        s->n++;
        s->total += end - start;
        return FB_OK;
    }
    rset_touching(s, start, end, &i, &j);
    if (i == j) {
        if (s->n + 1 > s->max)
            return FB_ERR_TOO_LARGE;
        e = rset_reserve(s, s->n + 1);
        if (e != FB_OK)
            return e;
        memmove(&s->v[i + 1], &s->v[i], (s->n - i) * sizeof(s->v[0]));
        s->v[i].start = start;
        s->v[i].end = end;
        s->n++;
        s->total += end - start;
        return FB_OK;
    }
    ns = start < s->v[i].start ? start : s->v[i].start;
    ne = end > s->v[j - 1].end ? end : s->v[j - 1].end;
    for (k = i; k < j; k++)
        removed += s->v[k].end - s->v[k].start;
    s->v[i].start = ns;
    s->v[i].end = ne;
    if (j > i + 1)
        memmove(&s->v[i + 1], &s->v[j], (s->n - j) * sizeof(s->v[0]));
    s->n -= j - i - 1;
    s->total = s->total - removed + (ne - ns);
    return FB_OK;
}

fb_err fb_xfer_rset_remove(fb_xfer_rset *s, uint64_t start, uint64_t end)
{
    size_t i, k, first_gone, last_gone;
    fb_err e;

    if (start >= end)
        return FB_OK;
    i = fb_xfer_rset_find(s, start);
    if (i == s->n || s->v[i].start >= end)
        return FB_OK;
    /* Strictly inside one interval: split it in two. */
    if (s->v[i].start < start && s->v[i].end > end) {
        if (s->n + 1 > s->max)
            return FB_ERR_TOO_LARGE;
        e = rset_reserve(s, s->n + 1);
        if (e != FB_OK)
            return e;
        memmove(&s->v[i + 1], &s->v[i], (s->n - i) * sizeof(s->v[0]));
        s->v[i].end = start;
        s->v[i + 1].start = end;
        s->n++;
        s->total -= end - start;
        return FB_OK;
    }
    if (s->v[i].start < start) {
        s->total -= s->v[i].end - start;
        s->v[i].end = start;
        i++;
    }
    first_gone = i;
    for (k = i; k < s->n && s->v[k].end <= end; k++)
        s->total -= s->v[k].end - s->v[k].start;
    last_gone = k;
    if (k < s->n && s->v[k].start < end) {
        s->total -= end - s->v[k].start;
        s->v[k].start = end;
    }
    if (last_gone > first_gone) {
        memmove(&s->v[first_gone], &s->v[last_gone], (s->n - last_gone) * sizeof(s->v[0]));
        s->n -= last_gone - first_gone;
    }
    return FB_OK;
}

int fb_xfer_rset_contains(const fb_xfer_rset *s, uint64_t start, uint64_t end)
{
    size_t i;

    if (start >= end)
        return 1;
    i = fb_xfer_rset_find(s, start);
    return i < s->n && s->v[i].start <= start && s->v[i].end >= end;
}

size_t fb_xfer_rset_gaps(const fb_xfer_rset *s, uint64_t start, uint64_t end, fb_xfer_span *out, size_t cap)
{
    size_t i, count = 0;
    uint64_t pos = start;

    if (start >= end)
        return 0;
    for (i = fb_xfer_rset_find(s, start); i < s->n && pos < end; i++) {
        if (s->v[i].start > pos) {
            uint64_t ge = s->v[i].start < end ? s->v[i].start : end;

            if (count < cap) {
                out[count].start = pos;
                out[count].end = ge;
            }
            count++;
        }
        if (s->v[i].end > pos)
            pos = s->v[i].end;
    }
    if (pos < end) {
        if (count < cap) {
            out[count].start = pos;
            out[count].end = end;
        }
        count++;
    }
    return count;
}

/* 1 if adding [START, END) keeps the set within its capacity. */
static int rset_add_fits(const fb_xfer_rset *s, uint64_t start, uint64_t end)
{
    size_t i, j;

    if (s->n < s->max)
        return 1;
    rset_touching(s, start, end, &i, &j);
    return j > i; /* merges with at least one: no new entry */
}

/* ---- receiver ------------------------------------------------------------------------------- */

struct fb_xfer_receiver {
    fb_xfer_receiver_params p;
    uint64_t nchunks;
    uint32_t *chunk_bytes; /* bytes held per chunk */
    fb_xfer_rset held;
    fb_xfer_receiver_stats st;
    /* feedback state */
    int sent_any;
    uint64_t last_fb_us;
    uint32_t pkts_since_fb;
    uint64_t idle_us; /* current idle feedback interval */
    int new_hole;     /* a DATA opened a hole since the last FEEDBACK */
    int have_echo;
    uint64_t echo_ts_us, echo_recv_us;
    /* the smallest one-way delay (receive time minus send time, modulo 2^32: only differences
     * count) of the first transmissions that arrived since the last FEEDBACK */
    int have_min_delay;
    uint32_t min_delay;
    /* receive rate: datagram bytes that arrived (rate_bytes, cumulative, the first datagram's
     * excluded: it opens the span) up to last_arrival_us; the marks are earlier (time, bytes)
     * pairs, one per FEEDBACK, so the rate spans about FB_XFER_RATE_WINDOW_US of arrivals */
    int have_arrival;
    uint64_t last_arrival_us, rate_bytes;
    struct {
        uint64_t t, bytes;
    } mark[FB_XFER_RATE_MARKS];
    unsigned nmark, mark_head;
    uint64_t list_from; /* the next FEEDBACK lists holes from here (0: from cum) */
};

static uint64_t chunk_len(const fb_xfer_receiver *r, uint64_t index)
{
    uint64_t start = index * r->p.chunk_size;
    uint64_t left = r->p.size - start;

    return left < r->p.chunk_size ? left : r->p.chunk_size;
}

static uint64_t idle_base(const fb_xfer_receiver *r)
{
    return 4ull * r->p.feedback_interval_us;
}

fb_err fb_xfer_receiver_new(fb_xfer_receiver **pr, const fb_xfer_receiver_params *p, uint64_t now_us)
{
    fb_xfer_receiver *r;

    *pr = NULL;
    if (p == NULL || p->chunk_size == 0 || p->write == NULL || p->aead == NULL)
        return FB_ERR_INTERNAL;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return FB_ERR_NOMEM;
    r->p = *p;
    if (r->p.feedback_interval_us == 0)
        r->p.feedback_interval_us = FB_RATE_FEEDBACK_INTERVAL_US;
    if (r->p.feedback_packets == 0)
        r->p.feedback_packets = FB_XFER_DEFAULT_FEEDBACK_PACKETS;
    if (r->p.feedback_min_us == 0)
        r->p.feedback_min_us = FB_XFER_FEEDBACK_MIN_US;
    r->nchunks = fb_chunk_count(p->size, p->chunk_size);
    if (r->nchunks > 0) {
        if (r->nchunks > SIZE_MAX / sizeof(uint32_t)) {
            free(r);
            return FB_ERR_NOMEM;
        }
        r->chunk_bytes = calloc((size_t)r->nchunks, sizeof(uint32_t));
        if (r->chunk_bytes == NULL) {
            free(r);
            return FB_ERR_NOMEM;
        }
    }
    fb_xfer_rset_init(&r->held, p->max_ranges);
    r->last_fb_us = now_us;
    r->idle_us = idle_base(r);
    *pr = r;
    return FB_OK;
}

void fb_xfer_receiver_free(fb_xfer_receiver *r)
{
    if (r == NULL)
        return;
    fb_xfer_rset_free(&r->held);
    free(r->chunk_bytes);
    free(r);
}

/* Counts [START, END) (bytes newly held) into the chunk counters; NOTIFY: report chunks that
 * become complete. */
static void count_chunks(fb_xfer_receiver *r, uint64_t start, uint64_t end, int notify)
{
    uint64_t pos = start;

    while (pos < end) {
        uint64_t idx = pos / r->p.chunk_size;
        uint64_t cend = (idx + 1) * r->p.chunk_size;
        uint64_t take = (cend < end ? cend : end) - pos;

        r->chunk_bytes[idx] += (uint32_t)take;
        if (r->chunk_bytes[idx] == chunk_len(r, idx) && notify) {
            r->st.chunks_completed++;
            if (r->p.on_chunk_complete != NULL)
                r->p.on_chunk_complete(r->p.ctx, idx);
        }
        pos += take;
    }
}

fb_err fb_xfer_receiver_mark_received(fb_xfer_receiver *r, uint64_t offset, uint64_t len)
{
    fb_xfer_span gaps[64];
    uint64_t end, pos;
    fb_err e;

    if (offset >= r->p.size || len == 0)
        return FB_OK;
    end = len > r->p.size - offset ? r->p.size : offset + len;
    if (!rset_add_fits(&r->held, offset, end))
        return FB_ERR_TOO_LARGE;
    /* Count the gaps in bounded batches (each batch is added before the next is looked up). */
    pos = offset;
    while (pos < end) {
        size_t n = fb_xfer_rset_gaps(&r->held, pos, end, gaps, 64), k, m = n < 64 ? n : 64;
        uint64_t upto = n > 64 ? gaps[63].end : end;

        for (k = 0; k < m; k++)
            count_chunks(r, gaps[k].start, gaps[k].end, 0);
        e = fb_xfer_rset_add(&r->held, pos, upto);
        if (e != FB_OK)
            return e;
        pos = upto;
    }
    return FB_OK;
}

fb_err fb_xfer_receiver_on_data(fb_xfer_receiver *r, const fb_wire_hdr *hdr, const fb_wire_data *d,
                                uint64_t now_us, size_t *pnew)
{
    uint64_t start = d->offset, end, pos;
    size_t fresh = 0;
    fb_err e;

    if (pnew != NULL)
        *pnew = 0;
    if (d->len == 0 || d->offset > r->p.size || d->len > r->p.size - d->offset) {
        r->st.refused++;
        return FB_ERR_BAD_RANGE;
    }
    end = start + d->len;
    /* Beyond everything held, leaving a gap: a new hole (loss, or reordering). */
    if (start > (r->held.n ? r->held.v[r->held.n - 1].end : 0))
        r->new_hole = 1;
    if (!rset_add_fits(&r->held, start, end)) {
        r->st.refused++;
        return FB_ERR_TOO_LARGE;
    }
    /* Write and record the new parts. A datagram touches few intervals; loop in batches so a
     * pathological set (many tiny holes under one large payload) is still handled exactly. */
    pos = start;
    while (pos < end) {
        fb_xfer_span gaps[16];
        size_t n = fb_xfer_rset_gaps(&r->held, pos, end, gaps, 16), k, m = n < 16 ? n : 16;
        uint64_t upto = n > 16 ? gaps[15].end : end;

        for (k = 0; k < m; k++) {
            e = r->p.write(r->p.ctx, gaps[k].start, d->payload + (gaps[k].start - start),
                           (size_t)(gaps[k].end - gaps[k].start));
            if (e != FB_OK)
                return e;
        }
        e = fb_xfer_rset_add(&r->held, pos, upto);
        if (e != FB_OK)
            return e;
        for (k = 0; k < m; k++) {
            fresh += (size_t)(gaps[k].end - gaps[k].start);
            count_chunks(r, gaps[k].start, gaps[k].end, 1);
        }
        pos = upto;
    }
    r->st.packets++;
    r->st.bytes_new += fresh;
    r->st.bytes_dup += d->len - fresh;
    if (fresh == 0)
        r->st.packets_dup++;
    r->pkts_since_fb++;
    if (!r->have_arrival) {
        r->have_arrival = 1;
        r->last_arrival_us = now_us; /* its own bytes arrived before the span */
        r->mark[0].t = now_us;
        r->mark[0].bytes = 0;
        r->nmark = 1;
        r->mark_head = 0;
    } else {
        r->rate_bytes += d->len + FB_WIRE_DATA_OVERHEAD; /* datagrams: the unit the sender paces in */
        if (now_us > r->last_arrival_us)
            r->last_arrival_us = now_us;
    }
    r->idle_us = idle_base(r);
    /* The newest first transmission is the echo, and the smallest delay of those since the
     * last FEEDBACK goes with it (a retransmission's send time says nothing about the path it
     * would have taken). 32-bit send times: "newer" and "smaller" modulo 2^32, so the
     * comparisons survive their wrap. */
    if (!(hdr->flags & FB_WIRE_F_DATA_RETRANSMIT)) {
        uint32_t delay = (uint32_t)now_us - (uint32_t)d->send_ts_us;

        if (!r->have_echo || (int32_t)((uint32_t)d->send_ts_us - (uint32_t)r->echo_ts_us) >= 0) {
            r->have_echo = 1;
            r->echo_ts_us = d->send_ts_us;
            r->echo_recv_us = now_us;
        }
        /* A burst queues behind itself: its last datagram (often the newest) waited for the
         * others, its first did not. The smallest delay is the queue that stays. */
        if (!r->have_min_delay || (int32_t)(delay - r->min_delay) < 0) {
            r->have_min_delay = 1;
            r->min_delay = delay;
        }
    }
    if (pnew != NULL)
        *pnew = fresh;
    return FB_OK;
}

void fb_xfer_receiver_set_aead(fb_xfer_receiver *r, const fb_aead_ctx *aead)
{
    r->p.aead = aead;
    r->sent_any = 0;
    r->idle_us = idle_base(r);
}

int fb_xfer_receiver_complete(const fb_xfer_receiver *r)
{
    return r->held.total == r->p.size;
}

uint64_t fb_xfer_receiver_next_feedback(const fb_xfer_receiver *r, uint64_t now_us)
{
    if (!r->sent_any)
        return now_us;
    if (r->pkts_since_fb > 0 && (r->pkts_since_fb >= r->p.feedback_packets || r->new_hole)) {
        uint64_t t = r->last_fb_us + r->p.feedback_min_us;

        return t > now_us ? t : now_us;
    }
    if (r->pkts_since_fb > 0)
        return r->last_fb_us + r->p.feedback_interval_us;
    if (fb_xfer_receiver_complete(r))
        return UINT64_MAX;
    return r->last_fb_us + r->idle_us;
}

/* Datagram bytes per second over the newest mark at least FB_XFER_RATE_WINDOW_US of arrivals
 * old (or the oldest kept), then a new mark at the latest arrival. Short windows are noisy:
 * arrivals come in bursts (GRO, a relay or a host scheduled late) that a longer span averages
 * out. 0 (unknown) when the span is under FB_XFER_RATE_SPAN_MIN_US. */
static uint64_t receive_rate(fb_xfer_receiver *r)
{
    uint64_t rate = 0;
    unsigned k, best;

    if (!r->have_arrival)
        return 0;
    /* marks are oldest first from mark_head; pick the newest one old enough */
    best = r->mark_head;
    for (k = 0; k < r->nmark; k++) {
        unsigned i = (r->mark_head + k) % FB_XFER_RATE_MARKS;

        if (r->last_arrival_us - r->mark[i].t < FB_XFER_RATE_WINDOW_US)
            break;
        best = i;
    }
    if (r->last_arrival_us - r->mark[best].t >= FB_XFER_RATE_SPAN_MIN_US && r->rate_bytes > r->mark[best].bytes)
        rate = (uint64_t)((double)(r->rate_bytes - r->mark[best].bytes) * 1e6 /
                          (double)(r->last_arrival_us - r->mark[best].t));
    /* drop marks older than the one used; add the new one (the oldest goes when full) */
    while (r->nmark > 1 && r->mark_head != best) {
        r->mark_head = (r->mark_head + 1) % FB_XFER_RATE_MARKS;
        r->nmark--;
    }
    if (r->mark[(r->mark_head + r->nmark - 1) % FB_XFER_RATE_MARKS].t != r->last_arrival_us) {
        if (r->nmark == FB_XFER_RATE_MARKS) {
            r->mark_head = (r->mark_head + 1) % FB_XFER_RATE_MARKS;
            r->nmark--;
        }
        k = (r->mark_head + r->nmark) % FB_XFER_RATE_MARKS;
        r->mark[k].t = r->last_arrival_us;
        r->mark[k].bytes = r->rate_bytes;
        r->nmark++;
    }
    return rate;
}

fb_err fb_xfer_receiver_feedback(fb_xfer_receiver *r, uint8_t *buf, size_t cap, size_t *plen, uint64_t pn,
                                 uint64_t now_us, int force)
{
    fb_wire_feedback fb;
    fb_wire_hdr hdr;
    const fb_xfer_rset *h = &r->held;
    size_t i;
    fb_err e;

    *plen = 0;
    if (!force && fb_xfer_receiver_next_feedback(r, now_us) > now_us)
        return FB_OK;
    memset(&fb, 0, sizeof(fb));
    memset(&hdr, 0, sizeof(hdr));
    memcpy(hdr.sid, r->p.sid, FB_WIRE_SID_LEN);
    hdr.pn = pn;
    if (h->n > 0) {
        fb.cum_offset = h->v[0].start == 0 ? h->v[0].end : 0;
        fb.high_offset = h->v[h->n - 1].end;
        if (fb.cum_offset < fb.high_offset) {
            /* Holes in [cum, high): before the first interval (when it does not start at 0),
             * then between consecutive intervals. More than a FEEDBACK lists: successive
             * FEEDBACKs list successive groups (FROM), so the sender learns every hole within a
             * few intervals rather than only the first ones, one RTT of repair at a time. */
            uint64_t pos = fb.cum_offset;

            i = h->v[0].start == 0 ? 1 : 0;
            if (r->list_from > fb.cum_offset && r->list_from < fb.high_offset) {
                size_t j = fb_xfer_rset_find(h, r->list_from);

                if (j + 1 < h->n) {
                    pos = h->v[j].end;
                    i = j + 1;
                    fb.from_offset = pos;
                    hdr.flags |= FB_WIRE_F_FEEDBACK_FROM;
                }
            }
            for (; i < h->n; i++) {
                if (fb.nranges == FB_WIRE_MAX_RANGES) {
                    hdr.flags |= FB_WIRE_F_FEEDBACK_MORE;
                    break;
                }
                fb.ranges[fb.nranges].offset = pos;
                fb.ranges[fb.nranges].length = h->v[i].start - pos;
                fb.nranges++;
                pos = h->v[i].end;
            }
            /* next time: after the last hole listed, or from cum again once all were */
            r->list_from = (hdr.flags & FB_WIRE_F_FEEDBACK_MORE)
                               ? fb.ranges[fb.nranges - 1].offset + fb.ranges[fb.nranges - 1].length
                               : 0;
        }
    }
    if (fb_xfer_receiver_complete(r))
        hdr.flags |= FB_WIRE_F_FEEDBACK_COMPLETE;
    fb.recv_bytes = r->st.bytes_new;
    fb.recv_rate = receive_rate(r);
    if (r->have_echo) {
        uint64_t hold = now_us > r->echo_recv_us ? now_us - r->echo_recv_us : 0;

        fb.echo_ts_us = r->echo_ts_us;
        fb.echo_recv_ts_us = r->echo_recv_us;
        fb.hold_us = hold > UINT32_MAX ? UINT32_MAX : (uint32_t)hold;
        if (r->have_min_delay) {
            /* the echo's delay minus the smallest: positive unless the echo arrived before the
             * previous FEEDBACK and is not among them */
            int32_t lag = (int32_t)(((uint32_t)r->echo_recv_us - (uint32_t)r->echo_ts_us) - r->min_delay);

            fb.delay_lag_us = lag <= 0 ? 0 : lag > UINT16_MAX ? UINT16_MAX : (uint16_t)lag;
        }
    }
    e = fb_wire_encode_feedback(buf, cap, plen, &hdr, &fb, r->p.aead);
    if (e != FB_OK)
        return e;
    /* Nothing arrived since the previous one: the sender may be gone; back off. */
    if (r->sent_any && r->pkts_since_fb == 0) {
        r->idle_us *= 2;
        if (r->idle_us > FB_XFER_IDLE_FEEDBACK_MAX_US)
            r->idle_us = FB_XFER_IDLE_FEEDBACK_MAX_US;
    }
    r->sent_any = 1;
    r->last_fb_us = now_us;
    r->pkts_since_fb = 0;
    r->have_min_delay = 0;
    r->new_hole = 0;
    r->st.feedbacks++;
    return FB_OK;
}

void fb_xfer_receiver_stats_get(fb_xfer_receiver_stats *out, const fb_xfer_receiver *r)
{
    *out = r->st;
    out->held_bytes = r->held.total;
}

const fb_xfer_rset *fb_xfer_receiver_held(const fb_xfer_receiver *r)
{
    return &r->held;
}
