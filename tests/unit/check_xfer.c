/* Unit tests for fb_xfer: the range set, and the sender and receiver engines joined in virtual
 * time through a simulated channel (fixed one-way delay, optional bottleneck with a drop-tail
 * queue, seeded random loss in both directions). Every datagram goes through the real codec
 * and AEAD, exactly as udpd and fbcp carry them. Deterministic for a seed. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fb_config.h"
#include "fb_xfer.h"

/* ---- range set ------------------------------------------------------------------------------- */

static void rset_expect(const fb_xfer_rset *s, const uint64_t *pairs, size_t n)
{
    uint64_t total = 0;

    ck_assert_uint_eq(s->n, n);
    for (size_t i = 0; i < n; i++) {
        ck_assert_uint_eq(s->v[i].start, pairs[2 * i]);
        ck_assert_uint_eq(s->v[i].end, pairs[2 * i + 1]);
        total += pairs[2 * i + 1] - pairs[2 * i];
    }
    ck_assert_uint_eq(s->total, total);
}

START_TEST(test_rset_add_merges_overlapping_and_adjacent)
{
    fb_xfer_rset s;
    fb_xfer_rset_init(&s, 0);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 10, 20), FB_OK);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 30, 40), FB_OK);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 0, 5), FB_OK);
    rset_expect(&s, (const uint64_t[]){0, 5, 10, 20, 30, 40}, 3);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 20, 30), FB_OK); /* touches both neighbours */
    rset_expect(&s, (const uint64_t[]){0, 5, 10, 40}, 2);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 3, 12), FB_OK);
    rset_expect(&s, (const uint64_t[]){0, 40}, 1);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 35, 45), FB_OK); /* extends the last */
    ck_assert_int_eq(fb_xfer_rset_add(&s, 7, 7), FB_OK);   /* empty: no-op */
    rset_expect(&s, (const uint64_t[]){0, 45}, 1);
    ck_assert(fb_xfer_rset_contains(&s, 0, 45));
    ck_assert(!fb_xfer_rset_contains(&s, 44, 46));
    fb_xfer_rset_free(&s);
}
END_TEST

START_TEST(test_rset_remove_splits_and_trims)
{
    fb_xfer_rset s;
    fb_xfer_rset_init(&s, 0);
    fb_xfer_rset_add(&s, 0, 100);
    ck_assert_int_eq(fb_xfer_rset_remove(&s, 10, 20), FB_OK);
    rset_expect(&s, (const uint64_t[]){0, 10, 20, 100}, 2);
    fb_xfer_rset_add(&s, 120, 130);
    ck_assert_int_eq(fb_xfer_rset_remove(&s, 5, 125), FB_OK);
    rset_expect(&s, (const uint64_t[]){0, 5, 125, 130}, 2);
    ck_assert_int_eq(fb_xfer_rset_remove(&s, 0, 1000), FB_OK);
    rset_expect(&s, NULL, 0);
    ck_assert_int_eq(fb_xfer_rset_remove(&s, 0, 1000), FB_OK);
    fb_xfer_rset_free(&s);
}
END_TEST

START_TEST(test_rset_capacity_is_a_hard_bound)
{
    fb_xfer_rset s;
    fb_xfer_rset_init(&s, 3);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 0, 1), FB_OK);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 10, 11), FB_OK);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 20, 21), FB_OK);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 30, 31), FB_ERR_TOO_LARGE);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 5, 6), FB_ERR_TOO_LARGE);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 1, 5), FB_OK); /* extends one: no new entry */
    ck_assert_int_eq(fb_xfer_rset_add(&s, 30, 31), FB_ERR_TOO_LARGE);
    ck_assert_int_eq(fb_xfer_rset_add(&s, 11, 20), FB_OK); /* joins two */
    ck_assert_int_eq(fb_xfer_rset_add(&s, 30, 31), FB_OK);
    rset_expect(&s, (const uint64_t[]){0, 5, 10, 21, 30, 31}, 3);
    ck_assert_int_eq(fb_xfer_rset_remove(&s, 2, 3), FB_ERR_TOO_LARGE); /* a split needs one more */
    rset_expect(&s, (const uint64_t[]){0, 5, 10, 21, 30, 31}, 3);
    ck_assert_int_eq(fb_xfer_rset_remove(&s, 4, 10), FB_OK);
    rset_expect(&s, (const uint64_t[]){0, 4, 10, 21, 30, 31}, 3);
    fb_xfer_rset_free(&s);
}
END_TEST

START_TEST(test_rset_gaps)
{
    fb_xfer_rset s;
    fb_xfer_span g[4];
    fb_xfer_rset_init(&s, 0);
    fb_xfer_rset_add(&s, 10, 20);
    fb_xfer_rset_add(&s, 30, 40);
    ck_assert_uint_eq(fb_xfer_rset_gaps(&s, 0, 50, g, 4), 3);
    ck_assert_uint_eq(g[0].start, 0);
    ck_assert_uint_eq(g[0].end, 10);
    ck_assert_uint_eq(g[1].start, 20);
    ck_assert_uint_eq(g[1].end, 30);
    ck_assert_uint_eq(g[2].start, 40);
    ck_assert_uint_eq(g[2].end, 50);
    ck_assert_uint_eq(fb_xfer_rset_gaps(&s, 12, 35, g, 1), 1);
    ck_assert_uint_eq(g[0].start, 20);
    ck_assert_uint_eq(g[0].end, 30);
    ck_assert_uint_eq(fb_xfer_rset_gaps(&s, 12, 18, g, 4), 0);
    ck_assert_uint_eq(fb_xfer_rset_gaps(&s, 0, 50, g, 1), 3); /* count beyond the capacity */
    fb_xfer_rset_free(&s);
}
END_TEST

/* ---- simulator ------------------------------------------------------------------------------- */

/* Virtual clock start: a second before the microsecond clock passes 2^32, so every transfer
 * sees DATA's 32-bit send time wrap (a timestamp is never 0). */
#define SIM_T0 ((1ull << 32) - 1000000u)
#define SIM_MAX_DGRAM 8192u

typedef struct sim_cfg {
    uint64_t size;
    uint32_t chunk_size;
    size_t max_payload; /* 0 = default */
    unsigned policy;    /* FB_POLICY_* */
    uint64_t rate;      /* target rate, bytes/s */
    uint64_t delay_us;  /* one way */
    double link_rate;   /* bottleneck bytes/s; 0 = none */
    double queue_bytes; /* bottleneck buffer */
    double loss_fwd, loss_rev;
    uint64_t seed;
    const fb_range *ranges; /* sender's ranges; NULL = whole file */
    size_t nranges;
    size_t recv_max_ranges;
    int premark_even_chunks; /* receiver already holds every even chunk */
    int premark_outside;     /* receiver already holds everything outside RANGES */
    uint64_t max_time_us;
    uint64_t rekey_at_us;           /* > 0: a new association (new keys) at this time, in flight lost */
    uint64_t stall_at_us, stall_us; /* the receiver does nothing for a while (descheduled) */
    uint64_t recv_service_us;       /* receiver time per DATA (0 = none): a backlog drains slowly */
} sim_cfg;

typedef struct sim_pkt {
    uint64_t arrive_us;
    size_t len;
    uint8_t *buf;
} sim_pkt;

typedef struct sim_queue {
    sim_pkt *v;
    size_t head, n, cap;
} sim_queue;

typedef struct sim {
    const sim_cfg *cfg;
    uint8_t *src, *dst;
    uint32_t *chunk_calls;
    uint64_t nchunks;
    uint64_t written; /* bytes passed to the write callback */
    uint64_t rng;
    double link_free_us; /* bottleneck: when the link is free again */
    sim_queue fwd, rev;
    uint64_t dropped_fwd, dropped_rev, dropped_queue, sent_fwd;
    uint64_t bad_open;
    int chunk_content_ok;
} sim;

static double sim_rand(sim *m)
{
    /* xorshift64*: deterministic and good enough for loss decisions. */
    m->rng ^= m->rng >> 12;
    m->rng ^= m->rng << 25;
    m->rng ^= m->rng >> 27;
    return (double)((m->rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static void q_push(sim_queue *q, uint64_t t, const uint8_t *buf, size_t len)
{
    sim_pkt *p;

    if (q->n == q->cap) {
        size_t ncap = q->cap ? q->cap * 2 : 1024;
        sim_pkt *nv = calloc(ncap, sizeof(*nv));

        ck_assert_ptr_nonnull(nv);
        for (size_t i = 0; i < q->n; i++)
            nv[i] = q->v[(q->head + i) % q->cap];
        free(q->v);
        q->v = nv;
        q->cap = ncap;
        q->head = 0;
    }
    p = &q->v[(q->head + q->n) % q->cap];
    p->arrive_us = t;
    p->len = len;
    p->buf = malloc(len);
    ck_assert_ptr_nonnull(p->buf);
    memcpy(p->buf, buf, len);
    q->n++;
}

static sim_pkt *q_front(sim_queue *q)
{
    return q->n ? &q->v[q->head] : NULL;
}

static void q_pop(sim_queue *q)
{
    free(q->v[q->head].buf);
    q->head = (q->head + 1) % q->cap;
    q->n--;
}

static void q_free(sim_queue *q)
{
    while (q->n)
        q_pop(q);
    free(q->v);
}

static fb_err sim_read(void *ctx, uint64_t offset, uint8_t *buf, size_t len)
{
    sim *m = ctx;

    ck_assert_uint_le(offset + len, m->cfg->size);
    memcpy(buf, m->src + offset, len);
    return FB_OK;
}

static fb_err sim_write(void *ctx, uint64_t offset, const uint8_t *buf, size_t len)
{
    sim *m = ctx;

    ck_assert_uint_le(offset + len, m->cfg->size);
    memcpy(m->dst + offset, buf, len);
    m->written += len;
    return FB_OK;
}

static void sim_chunk(void *ctx, uint64_t index)
{
    sim *m = ctx;
    fb_range r = fb_chunk_range(m->cfg->size, m->cfg->chunk_size, index);

    ck_assert_uint_lt(index, m->nchunks);
    m->chunk_calls[index]++;
    /* Reported only after every byte of it was written. */
    if (memcmp(m->src + r.offset, m->dst + r.offset, r.length) != 0)
        m->chunk_content_ok = 0;
}

/* Sender -> receiver: loss, then the bottleneck queue, then the delay. */
static void sim_send_fwd(sim *m, uint64_t now, const uint8_t *buf, size_t len)
{
    double depart = (double)now;

    m->sent_fwd++;
    if (m->cfg->link_rate > 0) {
        double backlog_us = m->link_free_us > (double)now ? m->link_free_us - (double)now : 0;

        if (backlog_us * m->cfg->link_rate / 1e6 + (double)len > m->cfg->queue_bytes) {
            m->dropped_queue++;
            return;
        }
        depart = ((double)now > m->link_free_us ? (double)now : m->link_free_us) +
                 (double)len * 1e6 / m->cfg->link_rate;
        m->link_free_us = depart;
    }
    if (sim_rand(m) < m->cfg->loss_fwd) {
        m->dropped_fwd++;
        return;
    }
    q_push(&m->fwd, (uint64_t)depart + m->cfg->delay_us, buf, len);
}

static void sim_send_rev(sim *m, uint64_t now, const uint8_t *buf, size_t len)
{
    if (sim_rand(m) < m->cfg->loss_rev) {
        m->dropped_rev++;
        return;
    }
    q_push(&m->rev, now + m->cfg->delay_us, buf, len);
}

typedef struct sim_result {
    fb_xfer_sender_stats ss;
    fb_xfer_receiver_stats rs;
    uint64_t end_us;
} sim_result;

static void aead_pair(fb_aead_ctx **pc, fb_aead_ctx **ps, unsigned cipher)
{
    uint8_t key[32], cn[16], sn[16];

    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)(i * 7 + 1);
    memset(cn, 0xc1, sizeof(cn));
    memset(sn, 0x5e, sizeof(sn));
    ck_assert_int_eq(fb_aead_new(pc, key, FB_AEAD_CLIENT), FB_OK);
    ck_assert_int_eq(fb_aead_new(ps, key, FB_AEAD_SERVER), FB_OK);
    ck_assert_int_eq(fb_aead_set_data_keys(*pc, cipher, cn, sn), FB_OK);
    ck_assert_int_eq(fb_aead_set_data_keys(*ps, cipher, cn, sn), FB_OK);
}

/* Receiver parameters that write into M, for M's configured size and chunk size, opening
 * with SCTX; callers add what their case needs. */
static fb_xfer_receiver_params sim_receiver_params(sim *m, fb_aead_ctx *sctx)
{
    fb_xfer_receiver_params rp;

    memset(&rp, 0, sizeof(rp));
    rp.size = m->cfg->size;
    rp.chunk_size = m->cfg->chunk_size;
    rp.aead = sctx;
    rp.write = sim_write;
    rp.ctx = m;
    return rp;
}

/* Runs one transfer to completion; checks the invariants every run must keep. */
static void sim_run(const sim_cfg *cfg, sim_result *res)
{
    sim m;
    fb_aead_ctx *cctx = NULL, *sctx = NULL;
    fb_xfer_sender *snd = NULL;
    fb_xfer_receiver *rcv = NULL;
    fb_xfer_sender_params sp;
    fb_xfer_receiver_params rp;
    fb_replay win_fwd, win_rev;
    uint8_t buf[SIM_MAX_DGRAM + 64];
    uint64_t now = SIM_T0, pn_fwd = 0, pn_rev = 0, iter, premarked = 0;
    int rekeyed = 0, stalled = 0;
    uint64_t recv_busy = 0;
    size_t len;

    memset(&m, 0, sizeof(m));
    m.cfg = cfg;
    m.rng = cfg->seed * 0x9E3779B97F4A7C15ull + 1;
    m.src = malloc(cfg->size + 1);
    m.dst = calloc(1, cfg->size + 1);
    m.nchunks = fb_chunk_count(cfg->size, cfg->chunk_size);
    m.chunk_calls = calloc(m.nchunks + 1, sizeof(uint32_t));
    m.chunk_content_ok = 1;
    ck_assert(m.src && m.dst && m.chunk_calls);
    for (uint64_t i = 0; i < cfg->size; i++)
        m.src[i] = (uint8_t)(sim_rand(&m) * 256);
    aead_pair(&cctx, &sctx, FB_CIPHER_AES128_GCM);
    fb_replay_init(&win_fwd);
    fb_replay_init(&win_rev);

    memset(&sp, 0, sizeof(sp));
    sp.size = cfg->size;
    sp.ranges = cfg->ranges;
    sp.nranges = cfg->nranges;
    sp.max_payload = cfg->max_payload;
    sp.chunk_size = cfg->chunk_size;
    sp.rate.policy = cfg->policy;
    sp.rate.target_rate = cfg->rate;
    sp.rate.min_rate = cfg->rate / 100;
    sp.aead = cctx;
    memset(sp.sid, 0xab, sizeof(sp.sid));
    sp.read = sim_read;
    sp.read_ctx = &m;
    ck_assert_int_eq(fb_xfer_sender_new(&snd, &sp, now), FB_OK);

    rp = sim_receiver_params(&m, sctx);
    memcpy(rp.sid, sp.sid, sizeof(rp.sid));
    rp.on_chunk_complete = sim_chunk;
    rp.max_ranges = cfg->recv_max_ranges;
    ck_assert_int_eq(fb_xfer_receiver_new(&rcv, &rp, now), FB_OK);
    if (cfg->premark_even_chunks) {
        for (uint64_t c = 0; c < m.nchunks; c += 2) {
            fb_range r = fb_chunk_range(cfg->size, cfg->chunk_size, c);
            memcpy(m.dst + r.offset, m.src + r.offset, r.length);
            ck_assert_int_eq(fb_xfer_receiver_mark_received(rcv, r.offset, r.length), FB_OK);
            premarked += r.length;
        }
    }
    if (cfg->premark_outside) {
        fb_xfer_rset want;
        fb_xfer_span gaps[64];
        size_t ng;

        fb_xfer_rset_init(&want, 0);
        for (size_t i = 0; i < cfg->nranges; i++)
            fb_xfer_rset_add(&want, cfg->ranges[i].offset, cfg->ranges[i].offset + cfg->ranges[i].length);
        ng = fb_xfer_rset_gaps(&want, 0, cfg->size, gaps, 64);
        ck_assert_uint_le(ng, 64);
        for (size_t i = 0; i < ng; i++) {
            memcpy(m.dst + gaps[i].start, m.src + gaps[i].start, gaps[i].end - gaps[i].start);
            ck_assert_int_eq(fb_xfer_receiver_mark_received(rcv, gaps[i].start, gaps[i].end - gaps[i].start),
                             FB_OK);
            premarked += gaps[i].end - gaps[i].start;
        }
        fb_xfer_rset_free(&want);
    }

    for (iter = 0; iter < 50000000u; iter++) {
        uint64_t next = UINT64_MAX, t;
        sim_pkt *p;

        if (fb_xfer_sender_done(snd) && fb_xfer_receiver_complete(rcv))
            break;
        if (cfg->rekey_at_us && !rekeyed && now - SIM_T0 >= cfg->rekey_at_us) {
            /* The client comes back with a new HELLO: fresh keys, packet numbers from 0, and
             * whatever was in flight under the old keys is gone. */
            fb_aead_ctx *nc, *ns;
            aead_pair(&nc, &ns, FB_CIPHER_AES256_GCM);
            fb_xfer_sender_set_aead(snd, nc);
            fb_xfer_receiver_set_aead(rcv, ns);
            fb_aead_free(cctx);
            fb_aead_free(sctx);
            cctx = nc;
            sctx = ns;
            pn_fwd = pn_rev = 0;
            fb_replay_init(&win_fwd);
            fb_replay_init(&win_rev);
            while (q_front(&m.fwd))
                q_pop(&m.fwd);
            while (q_front(&m.rev))
                q_pop(&m.rev);
            rekeyed = 1;
        }
        /* Deliver everything due (a stalled receiver lets it queue up). */
        stalled = cfg->stall_us && now - SIM_T0 >= cfg->stall_at_us &&
                  now - SIM_T0 < cfg->stall_at_us + cfg->stall_us;
        while (!stalled && (p = q_front(&m.fwd)) != NULL && p->arrive_us <= now && now >= recv_busy) {
            fb_wire_pkt pkt;
            fb_wire_reason why;

            if (fb_wire_open(&pkt, &why, p->buf, p->len, sctx, &win_fwd) == FB_OK) {
                fb_err e;
                ck_assert_int_eq(pkt.hdr.type, FB_WIRE_DATA);
                /* Never across a chunk boundary (PROTOCOL.md 8.1). */
                ck_assert_uint_eq(pkt.u.data.offset / cfg->chunk_size,
                                  (pkt.u.data.offset + pkt.u.data.len - 1) / cfg->chunk_size);
                e = fb_xfer_receiver_on_data(rcv, &pkt.hdr, &pkt.u.data, now, NULL);
                ck_assert(e == FB_OK || e == FB_ERR_TOO_LARGE);
            } else {
                m.bad_open++;
            }
            q_pop(&m.fwd);
            if (cfg->recv_service_us)
                recv_busy = now + cfg->recv_service_us;
        }
        while ((p = q_front(&m.rev)) != NULL && p->arrive_us <= now) {
            fb_wire_pkt pkt;
            fb_wire_reason why;

            if (fb_wire_open(&pkt, &why, p->buf, p->len, cctx, &win_rev) == FB_OK) {
                ck_assert_int_eq(pkt.hdr.type, FB_WIRE_FEEDBACK);
                ck_assert_int_eq(fb_xfer_sender_on_feedback(snd, &pkt.hdr, &pkt.u.feedback, now), FB_OK);
            } else {
                m.bad_open++;
            }
            q_pop(&m.rev);
        }
        len = 0;
        if (!stalled)
            ck_assert_int_eq(fb_xfer_receiver_feedback(rcv, buf, sizeof(buf), &len, pn_rev, now, 0), FB_OK);
        if (len > 0) {
            pn_rev++;
            sim_send_rev(&m, now, buf, len);
        }
        for (int burst = 0; burst < 1000 && fb_xfer_sender_next_time(snd, now) <= now; burst++) {
            ck_assert_int_eq(fb_xfer_sender_next(snd, buf, sizeof(buf), &len, pn_fwd, now), FB_OK);
            if (len == 0)
                break;
            pn_fwd++;
            sim_send_fwd(&m, now, buf, len);
        }
        if (fb_xfer_sender_done(snd) && fb_xfer_receiver_complete(rcv))
            break;
        /* Advance to the next event. */
        if ((p = q_front(&m.fwd)) != NULL && p->arrive_us < next)
            next = p->arrive_us;
        if ((p = q_front(&m.fwd)) != NULL && p->arrive_us <= now && recv_busy > now && recv_busy < next)
            next = recv_busy;
        if (stalled && SIM_T0 + cfg->stall_at_us + cfg->stall_us < next)
            next = SIM_T0 + cfg->stall_at_us + cfg->stall_us;
        if (stalled && next <= now)
            next = SIM_T0 + cfg->stall_at_us + cfg->stall_us;
        if ((p = q_front(&m.rev)) != NULL && p->arrive_us < next)
            next = p->arrive_us;
        t = fb_xfer_receiver_next_feedback(rcv, now);
        if (t < next)
            next = t;
        t = fb_xfer_sender_next_time(snd, now);
        if (t < next)
            next = t;
        if (next == UINT64_MAX) {
            fb_xfer_sender_stats ss;
            fb_xfer_receiver_stats rs;
            fb_xfer_sender_stats_get(&ss, snd);
            fb_xfer_receiver_stats_get(&rs, rcv);
            ck_abort_msg(
                "simulation stalled at %llu us: sender need %llu, sent %llu, feedbacks %llu; receiver held "
                "%llu of %llu, feedbacks %llu",
                (unsigned long long)(now - SIM_T0), (unsigned long long)ss.need_bytes,
                (unsigned long long)ss.bytes, (unsigned long long)ss.feedbacks,
                (unsigned long long)rs.held_bytes, (unsigned long long)cfg->size,
                (unsigned long long)rs.feedbacks);
        }
        now = next > now ? next : now + 1;
        ck_assert_msg(now - SIM_T0 < cfg->max_time_us, "transfer did not finish in %llu us (need %llu bytes)",
                      (unsigned long long)cfg->max_time_us, (unsigned long long)0);
    }
    ck_assert(fb_xfer_sender_done(snd));
    ck_assert(fb_xfer_receiver_complete(rcv));
    ck_assert_uint_eq(m.bad_open, 0);
    /* Every byte exactly: the content, and each new byte written once. */
    ck_assert_int_eq(memcmp(m.src, m.dst, cfg->size), 0);
    ck_assert_uint_eq(m.written + premarked, cfg->size);
    /* Each chunk reported once, those held before never, and only once written. */
    ck_assert(m.chunk_content_ok);
    for (uint64_t c = 0; c < m.nchunks && !cfg->premark_outside; c++) {
        if (cfg->premark_even_chunks && c % 2 == 0)
            ck_assert_uint_eq(m.chunk_calls[c], 0);
        else
            ck_assert_msg(m.chunk_calls[c] == 1, "chunk %llu reported %u times", (unsigned long long)c,
                          m.chunk_calls[c]);
    }
    fb_xfer_sender_stats_get(&res->ss, snd);
    fb_xfer_receiver_stats_get(&res->rs, rcv);
    res->end_us = now - SIM_T0;
    if (getenv("XFER_VERBOSE") != NULL)
        fprintf(stderr,
                "size %llu loss %.3f/%.3f: %.3f s, retx %.4f, dup %.4f, lost %llu, queue drops %llu, "
                "feedbacks %llu, "
                "rate %.1f Mbit/s\n",
                (unsigned long long)cfg->size, cfg->loss_fwd, cfg->loss_rev, (double)res->end_us / 1e6,
                (double)res->ss.bytes_retx / (double)(cfg->size ? cfg->size : 1),
                (double)res->rs.bytes_dup / (double)(cfg->size ? cfg->size : 1),
                (unsigned long long)res->ss.lost_bytes, (unsigned long long)m.dropped_queue,
                (unsigned long long)res->rs.feedbacks, (double)res->ss.rate * 8 / 1e6);
    ck_assert_uint_eq(res->rs.bytes_new, m.written);
    ck_assert_uint_eq(res->rs.held_bytes, cfg->size);

    fb_xfer_sender_free(snd);
    fb_xfer_receiver_free(rcv);
    fb_aead_free(cctx);
    fb_aead_free(sctx);
    q_free(&m.fwd);
    q_free(&m.rev);
    free(m.src);
    free(m.dst);
    free(m.chunk_calls);
}

static sim_cfg base_cfg(uint64_t size, uint32_t chunk)
{
    sim_cfg c;

    memset(&c, 0, sizeof(c));
    c.size = size;
    c.chunk_size = chunk;
    c.policy = FB_POLICY_FIXED;
    c.rate = 20000000; /* 160 Mbit/s */
    c.delay_us = 10000;
    c.seed = 1;
    c.max_time_us = 120000000;
    return c;
}

/* ---- transfers ------------------------------------------------------------------------------- */

START_TEST(test_lossless_transfer_sends_each_byte_once)
{
    sim_cfg c = base_cfg(4u << 20, 65536);
    sim_result r;

    sim_run(&c, &r);
    ck_assert_uint_eq(r.ss.bytes_retx, 0);
    ck_assert_uint_eq(r.ss.bytes_new, c.size);
    ck_assert_uint_eq(r.rs.bytes_dup, 0);
    /* At the fixed rate: 4 MiB / 20 MB/s = 0.21 s, plus a round trip or so. */
    ck_assert_uint_lt(r.end_us, 400000);
}
END_TEST

/* Random loss costs only its retransmission: redundant bytes stay near the loss rate. */
START_TEST(test_random_loss_retransmits_about_the_loss)
{
    static const double losses[] = {0.01, 0.03, 0.05};
    double p = losses[_i % 3];
    sim_cfg c = base_cfg(8u << 20, 1u << 20);
    sim_result r;
    double redundant, expect;

    c.loss_fwd = p;
    c.loss_rev = p;
    c.seed = 11 + (uint64_t)_i;
    sim_run(&c, &r);
    redundant = (double)r.ss.bytes_retx / (double)c.size;
    expect = p / (1 - p); /* repairs are lost at the same rate */
    ck_assert_msg(redundant <= expect + 0.01, "loss %.2f: %.4f of the file retransmitted", p, redundant);
    /* Duplicates at the receiver: only repairs that crossed a late original. */
    ck_assert_msg((double)r.rs.bytes_dup <= 0.01 * (double)c.size, "%llu duplicate bytes",
                  (unsigned long long)r.rs.bytes_dup);
}
END_TEST

START_TEST(test_heavy_loss_with_more_holes_than_a_feedback_lists)
{
    sim_cfg c = base_cfg(2u << 20, 65536);
    sim_result r;

    c.loss_fwd = 0.3; /* thousands of holes: FEEDBACK lists 64 and sets MORE */
    c.loss_rev = 0.3;
    c.seed = 5;
    sim_run(&c, &r);
    ck_assert_msg((double)r.ss.bytes_retx <= (0.3 / 0.7 + 0.1) * (double)c.size, "%llu bytes retransmitted",
                  (unsigned long long)r.ss.bytes_retx);
}
END_TEST

/* A long path with 5 % loss: thousands of holes, far more than one FEEDBACK lists. Successive
 * FEEDBACKs list successive groups of holes (FROM), so the sender learns them all within a few
 * feedback intervals and the tail is repaired in a few round trips, not 64 holes per RTT. */
START_TEST(test_many_holes_are_repaired_in_a_few_round_trips)
{
    sim_cfg c = base_cfg(32u << 20, 1u << 20);
    sim_result r;
    uint64_t sending_us = (uint64_t)((double)c.size / (double)c.rate * 1e6);

    c.delay_us = 100000; /* 200 ms round trip */
    c.loss_fwd = 0.05;
    c.loss_rev = 0.05;
    c.seed = 21;
    sim_run(&c, &r);
    ck_assert_uint_eq(r.rs.bytes_new, c.size);
    /* ~1200 holes after the first pass; repairs are lost at 5 % too: about 3 rounds of repair
     * plus the last feedback. Listing 64 holes per RTT would take 20 RTTs or more. */
    ck_assert_msg(r.end_us <= sending_us + 8 * 2 * c.delay_us, "done after %.2f s (sending %.2f s)",
                  (double)r.end_us / 1e6, (double)sending_us / 1e6);
    /* Repairs: the holes and the repairs lost again (5.3 %), plus some sent a second time while
     * the FEEDBACK confirming the first was still to come (the groups are described in turn):
     * 6.8-8.5 % of the file over seeds 21-25. Sending every hole twice would be 10.5 %. */
    ck_assert_msg((double)r.ss.bytes_retx <= (0.05 / 0.95 + 0.035) * (double)c.size, "%llu bytes retransmitted",
                  (unsigned long long)r.ss.bytes_retx);
}
END_TEST

START_TEST(test_fair_policy_through_a_bottleneck)
{
    sim_cfg c = base_cfg(16u << 20, 1u << 20);
    sim_result r;

    c.policy = FB_POLICY_FAIR;
    c.rate = 1000000000;    /* asks far more than the link carries */
    c.link_rate = 12500000; /* 100 Mbit/s */
    c.queue_bytes = 250000;
    c.loss_fwd = 0.005;
    c.loss_rev = 0.005;
    c.delay_us = 20000;
    sim_run(&c, &r);
    /* Quick start overshoots once into the queue; after that only random loss. */
    ck_assert_msg((double)r.ss.bytes_retx <= 0.1 * (double)c.size, "%llu bytes retransmitted",
                  (unsigned long long)r.ss.bytes_retx);
    /* Most of the link is used: 16 MiB at 100 Mbit/s is 1.34 s. */
    ck_assert_msg(r.end_us < 3000000, "took %llu us", (unsigned long long)r.end_us);
}
END_TEST

START_TEST(test_zero_byte_file)
{
    fb_aead_ctx *cctx, *sctx;
    fb_xfer_sender *s;
    fb_xfer_receiver *rc;
    fb_xfer_sender_params sp;
    fb_xfer_receiver_params rp;
    fb_wire_pkt pkt;
    fb_wire_reason why;
    uint8_t buf[1500];
    size_t len;
    int dummy = 0;

    aead_pair(&cctx, &sctx, FB_CIPHER_AES256_GCM);
    memset(&sp, 0, sizeof(sp));
    sp.size = 0;
    sp.rate.policy = FB_POLICY_FAIR;
    sp.rate.target_rate = 1000000;
    sp.aead = cctx;
    sp.read = sim_read;
    sp.read_ctx = &dummy;
    ck_assert_int_eq(fb_xfer_sender_new(&s, &sp, SIM_T0), FB_OK);
    ck_assert(fb_xfer_sender_done(s));
    ck_assert_uint_eq(fb_xfer_sender_next_time(s, SIM_T0), UINT64_MAX);
    ck_assert_int_eq(fb_xfer_sender_next(s, buf, sizeof(buf), &len, 0, SIM_T0), FB_OK);
    ck_assert_uint_eq(len, 0);

    memset(&rp, 0, sizeof(rp));
    rp.size = 0;
    rp.chunk_size = 1u << 20;
    rp.aead = sctx;
    rp.write = sim_write;
    rp.ctx = &dummy;
    ck_assert_int_eq(fb_xfer_receiver_new(&rc, &rp, SIM_T0), FB_OK);
    ck_assert(fb_xfer_receiver_complete(rc));
    /* The first FEEDBACK says complete at once; none follows while nothing arrives. */
    ck_assert_int_eq(fb_xfer_receiver_feedback(rc, buf, sizeof(buf), &len, 0, SIM_T0, 0), FB_OK);
    ck_assert_uint_gt(len, 0);
    ck_assert_int_eq(fb_wire_open(&pkt, &why, buf, len, cctx, NULL), FB_OK);
    ck_assert(pkt.hdr.flags & FB_WIRE_F_FEEDBACK_COMPLETE);
    ck_assert_int_eq(fb_xfer_sender_on_feedback(s, &pkt.hdr, &pkt.u.feedback, SIM_T0 + 10), FB_OK);
    ck_assert_uint_eq(fb_xfer_receiver_next_feedback(rc, SIM_T0 + 100), UINT64_MAX);
    fb_xfer_sender_free(s);
    fb_xfer_receiver_free(rc);
    fb_aead_free(cctx);
    fb_aead_free(sctx);
}
END_TEST

START_TEST(test_one_byte_file)
{
    sim_cfg c = base_cfg(1, 1u << 20);
    sim_result r;

    sim_run(&c, &r);
    ck_assert_uint_eq(r.ss.packets, 1);
    ck_assert_uint_eq(r.rs.chunks_completed, 1);
    /* Lost in both directions many times: still exactly once. */
    c.loss_fwd = 0.5;
    c.loss_rev = 0.5;
    for (c.seed = 1; c.seed <= 5; c.seed++)
        sim_run(&c, &r);
}
END_TEST

/* Sizes around chunk multiples, with payloads that straddle chunk boundaries. */
START_TEST(test_chunk_size_plus_minus_one)
{
    static const int64_t deltas[] = {-1, 0, 1};
    const uint32_t chunk = 4096;
    uint64_t mult = 1 + (uint64_t)(_i / 3) * 4; /* 1 and 5 chunks */
    sim_cfg c = base_cfg(mult * chunk + (uint64_t)deltas[_i % 3], chunk);
    sim_result r;

    c.loss_fwd = 0.1;
    c.seed = 100 + (uint64_t)_i;
    sim_run(&c, &r);
    ck_assert_uint_eq(r.rs.chunks_completed, fb_chunk_count(c.size, chunk));
    /* The chunk size itself one off the payload size too. */
    c.max_payload = chunk + 1;
    sim_run(&c, &r);
    c.max_payload = chunk - 1;
    sim_run(&c, &r);
}
END_TEST

/* Bytes the receiver already holds (HTTP, checkpoint) are reported and never sent again once
 * the sender heard a FEEDBACK. */
START_TEST(test_premarked_chunks_are_not_resent)
{
    sim_cfg c = base_cfg(8u << 20, 1u << 20);
    sim_result r;

    c.premark_even_chunks = 1;
    sim_run(&c, &r);
    /* Only the first round trip's worth (20 ms at 20 MB/s = 400 KB) goes out blind. */
    ck_assert_msg(r.ss.bytes_new <= 4u * (1u << 20) + 500000, "%llu bytes sent",
                  (unsigned long long)r.ss.bytes_new);
}
END_TEST

/* The sender sends only the ranges it was given (the "missing" list of a resumed session). */
START_TEST(test_sender_sends_only_its_ranges)
{
    static const fb_range ranges[] = {{1u << 20, 1u << 20}, {3u << 20, 512 * 1024}};
    sim_cfg c = base_cfg(4u << 20, 1u << 20);
    fb_aead_ctx *cctx, *sctx;
    fb_xfer_sender *s;
    fb_xfer_sender_params sp;
    uint8_t buf[1500];
    size_t len;
    uint64_t sent = 0, pn = 0, now = SIM_T0;
    sim m;

    memset(&m, 0, sizeof(m));
    m.cfg = &c;
    m.src = calloc(1, c.size);
    aead_pair(&cctx, &sctx, FB_CIPHER_AES128_GCM);
    memset(&sp, 0, sizeof(sp));
    sp.size = c.size;
    sp.ranges = ranges;
    sp.nranges = 2;
    sp.rate.policy = FB_POLICY_FIXED;
    sp.rate.target_rate = 1000000000;
    sp.aead = cctx;
    sp.read = sim_read;
    sp.read_ctx = &m;
    ck_assert_int_eq(fb_xfer_sender_new(&s, &sp, now), FB_OK);
    for (int i = 0; i < 100000; i++) {
        fb_wire_pkt pkt;
        fb_wire_reason why;
        uint64_t t = fb_xfer_sender_next_time(s, now);

        if (t == UINT64_MAX)
            break;
        now = t > now ? t : now;
        ck_assert_int_eq(fb_xfer_sender_next(s, buf, sizeof(buf), &len, pn++, now), FB_OK);
        ck_assert_uint_gt(len, 0);
        ck_assert_int_eq(fb_wire_open(&pkt, &why, buf, len, sctx, NULL), FB_OK);
        /* Without FEEDBACK, the sender ends up probing the silence with a resend. */
        if (pkt.hdr.flags & FB_WIRE_F_DATA_RETRANSMIT) {
            ck_assert_uint_eq(pkt.u.data.offset, ranges[0].offset);
            break;
        }
        ck_assert((pkt.u.data.offset >= ranges[0].offset &&
                   pkt.u.data.offset + pkt.u.data.len <= ranges[0].offset + ranges[0].length) ||
                  (pkt.u.data.offset >= ranges[1].offset &&
                   pkt.u.data.offset + pkt.u.data.len <= ranges[1].offset + ranges[1].length));
        sent += pkt.u.data.len;
    }
    ck_assert_uint_eq(sent, ranges[0].length + ranges[1].length);
    fb_xfer_sender_free(s);
    fb_aead_free(cctx);
    fb_aead_free(sctx);
    free(m.src);
    /* And end to end, with loss, against a receiver holding the rest. */
    {
        sim_result r;
        c.ranges = ranges;
        c.nranges = 2;
        c.loss_fwd = 0.02;
        c.premark_outside = 1;
        sim_run(&c, &r);
        ck_assert_uint_eq(r.ss.bytes_new, ranges[0].length + ranges[1].length);
        ck_assert_uint_eq(r.rs.chunks_completed, 2); /* chunk 1 and chunk 3 (its second half held) */
    }
}
END_TEST

/* A new association in the middle (fbcp back from HTTPS, or a NAT rebinding) continues the
 * same transfer with new keys. */
START_TEST(test_new_association_continues_the_transfer)
{
    sim_cfg c = base_cfg(4u << 20, 1u << 20);
    sim_result r;

    c.loss_fwd = 0.01;
    c.rekey_at_us = 100000;
    sim_run(&c, &r);
    /* What was in flight at the switch (one-way delay at the rate: 200 KB) is resent. */
    ck_assert_uint_le(r.ss.bytes_retx, 200000 + c.size / 50);
}
END_TEST

/* A receiver that stops for 150 ms (a descheduled process on a busy host) and then processes
 * what queued up: nothing was lost, so nothing is resent. */
START_TEST(test_receiver_stall_causes_no_resend)
{
    sim_cfg c = base_cfg(8u << 20, 1u << 20);
    sim_result r;

    c.stall_at_us = 100000;
    c.stall_us = 150000;
    c.recv_service_us = 35; /* twice the sending rate: the 150 ms backlog takes 150 ms */
    sim_run(&c, &r);
    ck_assert_uint_eq(r.ss.bytes_retx, 0);
    ck_assert_uint_eq(r.rs.bytes_dup, 0);
}
END_TEST

/* A receiver with a tiny range set refuses out-of-order data it cannot record; the sender
 * repairs it and the transfer still completes exactly. */
START_TEST(test_receiver_range_set_bound)
{
    sim_cfg c = base_cfg(1u << 20, 65536);
    sim_result r;

    c.loss_fwd = 0.05;
    c.recv_max_ranges = 4;
    c.seed = 3;
    sim_run(&c, &r);
    ck_assert_uint_gt(r.rs.refused, 0);
}
END_TEST

START_TEST(test_receiver_refuses_data_beyond_the_file)
{
    fb_aead_ctx *cctx, *sctx;
    fb_xfer_receiver *rc;
    fb_xfer_receiver_params rp;
    fb_wire_hdr hdr;
    fb_wire_data d;
    uint8_t payload[100] = {0};
    size_t fresh = 99;
    sim_cfg c = base_cfg(1000, 300);
    sim m;

    memset(&m, 0, sizeof(m));
    m.cfg = &c;
    m.dst = calloc(1, c.size);
    m.nchunks = 4;
    m.chunk_calls = calloc(4, sizeof(uint32_t));
    m.src = calloc(1, c.size);
    m.chunk_content_ok = 1;
    aead_pair(&cctx, &sctx, FB_CIPHER_AES128_GCM);
    rp = sim_receiver_params(&m, sctx);
    rp.on_chunk_complete = sim_chunk;
    ck_assert_int_eq(fb_xfer_receiver_new(&rc, &rp, SIM_T0), FB_OK);
    memset(&hdr, 0, sizeof(hdr));
    d.payload = payload;
    d.send_ts_us = SIM_T0;
    d.offset = 950;
    d.len = 100;
    ck_assert_int_eq(fb_xfer_receiver_on_data(rc, &hdr, &d, SIM_T0, &fresh), FB_ERR_BAD_RANGE);
    ck_assert_uint_eq(fresh, 0);
    d.offset = UINT64_MAX - 10;
    ck_assert_int_eq(fb_xfer_receiver_on_data(rc, &hdr, &d, SIM_T0, &fresh), FB_ERR_BAD_RANGE);
    ck_assert_uint_eq(m.written, 0);
    /* The last chunk (100 bytes) completes with the last 100 bytes, once. */
    d.offset = 900;
    ck_assert_int_eq(fb_xfer_receiver_on_data(rc, &hdr, &d, SIM_T0, &fresh), FB_OK);
    ck_assert_uint_eq(fresh, 100);
    ck_assert_uint_eq(m.chunk_calls[3], 1);
    ck_assert_int_eq(fb_xfer_receiver_on_data(rc, &hdr, &d, SIM_T0, &fresh), FB_OK);
    ck_assert_uint_eq(fresh, 0);
    ck_assert_uint_eq(m.chunk_calls[3], 1);
    /* Straddling into it completes nothing new; the overlap is not written twice. */
    d.offset = 850;
    ck_assert_int_eq(fb_xfer_receiver_on_data(rc, &hdr, &d, SIM_T0, &fresh), FB_OK);
    ck_assert_uint_eq(fresh, 50);
    ck_assert_uint_eq(m.written, 150);
    {
        fb_xfer_receiver_stats st;
        fb_xfer_receiver_stats_get(&st, rc);
        ck_assert_uint_eq(st.refused, 2);
        ck_assert_uint_eq(st.bytes_dup, 150);
        ck_assert_uint_eq(st.packets_dup, 1);
    }
    fb_xfer_receiver_free(rc);
    fb_aead_free(cctx);
    fb_aead_free(sctx);
    free(m.dst);
    free(m.src);
    free(m.chunk_calls);
}
END_TEST

/* FEEDBACK cadence: N packets or one interval, whichever first; idle backs off; nothing once
 * complete. */
/* A receiver alone, fed DATA by hand: its keys, its destination buffer, and what it answers. */
typedef struct rx_alone {
    fb_aead_ctx *cctx, *sctx;
    fb_xfer_receiver *rc;
    sim_cfg c;
    sim m;
} rx_alone;

static void rx_alone_start(rx_alone *x, uint64_t size, uint64_t now)
{
    fb_xfer_receiver_params rp;

    memset(x, 0, sizeof(*x));
    x->c = base_cfg(size, 1u << 20);
    x->m.cfg = &x->c;
    x->m.dst = calloc(1, x->c.size);
    aead_pair(&x->cctx, &x->sctx, FB_CIPHER_AES128_GCM);
    rp = sim_receiver_params(&x->m, x->sctx);
    ck_assert_int_eq(fb_xfer_receiver_new(&x->rc, &rp, now), FB_OK);
}

static void rx_alone_end(rx_alone *x)
{
    fb_xfer_receiver_free(x->rc);
    fb_aead_free(x->cctx);
    fb_aead_free(x->sctx);
    free(x->m.dst);
}

/* The FEEDBACK the receiver sends at AT, decoded. */
static fb_wire_feedback rx_alone_feedback(rx_alone *x, uint64_t pn, uint64_t at)
{
    uint8_t buf[1500];
    size_t len;
    fb_wire_pkt pkt;
    fb_wire_reason why;

    ck_assert_int_eq(fb_xfer_receiver_feedback(x->rc, buf, sizeof(buf), &len, pn, at, 1), FB_OK);
    ck_assert_int_eq(fb_wire_open(&pkt, &why, buf, len, x->cctx, NULL), FB_OK);
    return pkt.u.feedback;
}

/* Hands the receiver a DATA of 100 bytes at OFFSET, sent at SEND_TS (the 32 bits that travel),
 * arriving AT; RETRANSMIT sets the flag. */
static void rx_alone_data(rx_alone *x, uint64_t offset, uint64_t send_ts, uint64_t at, int retransmit)
{
    static const uint8_t payload[100];
    fb_wire_hdr hdr;
    fb_wire_data d;

    memset(&hdr, 0, sizeof(hdr));
    hdr.flags = retransmit ? FB_WIRE_F_DATA_RETRANSMIT : 0;
    d.offset = offset;
    d.send_ts_us = (uint32_t)send_ts;
    d.payload = payload;
    d.len = sizeof(payload);
    ck_assert_int_eq(fb_xfer_receiver_on_data(x->rc, &hdr, &d, at, NULL), FB_OK);
}

/* DATA carries the low 32 bits of its send time. The receiver echoes the newest first
 * transmission's, newest modulo 2^32 (the sender's microsecond clock passes 2^32 every 71
 * minutes), and the sender takes the echo for one of its own recent times. */
START_TEST(test_echo_survives_the_send_time_wrap)
{
    rx_alone x;
    uint64_t sender_clock = (1ull << 32) - 300, t = SIM_T0, echo;

    rx_alone_start(&x, 1u << 20, t);
    /* Five DATA 200 us apart, sent across the wrap, as the decoder gives them: 32 bits. */
    for (uint64_t i = 0; i < 5; i++)
        rx_alone_data(&x, i * 100, sender_clock + 200 * i, t + 200 * i, 0);
    echo = rx_alone_feedback(&x, 1, t + 1000).echo_ts_us;
    ck_assert_uint_eq(echo, (uint32_t)(sender_clock + 800)); /* the last one, past the wrap */
    /* The sender, 30 ms later by its clock, restores its own full time. */
    ck_assert_uint_eq(fb_wire_ts_unwrap(sender_clock + 30800, echo), sender_clock + 800);
    /* An older first transmission arriving late does not replace it. */
    rx_alone_data(&x, 1000, sender_clock + 100, t + 1100, 0);
    ck_assert_uint_eq(rx_alone_feedback(&x, 2, t + 1200).echo_ts_us, (uint32_t)(sender_clock + 800));
    rx_alone_end(&x);
}
END_TEST

/* FEEDBACK's delay lag: how much the echoed DATA's one-way delay exceeds the smallest among the
 * first transmissions since the previous FEEDBACK. A paced burst queues behind itself: its first
 * datagram shows the standing queue, its last (the echo) that plus the burst. */
START_TEST(test_feedback_reports_the_smallest_delay)
{
    rx_alone x;
    fb_wire_feedback fb;
    uint64_t sender_clock = (1ull << 32) - 2000, t = SIM_T0 + 7; /* clocks apart, across a wrap */
    static const uint32_t delay[] = {5300, 5000, 5100, 5600, 5900}; /* one-way delays, us */

    rx_alone_start(&x, 1u << 20, t);
    /* Five sent 100 us apart: the newest (the echo) took 5900 us, the smallest 5000. */
    for (uint64_t i = 0; i < 5; i++)
        rx_alone_data(&x, i * 100, sender_clock + 100 * i, t + 100 * i + delay[i], 0);
    fb = rx_alone_feedback(&x, 1, t + 7000);
    ck_assert_uint_eq(fb.echo_ts_us, (uint32_t)(sender_clock + 400));
    ck_assert_uint_eq(fb.echo_recv_ts_us, t + 400 + 5900);
    ck_assert_uint_eq(fb.delay_lag_us, 900);
    /* The next interval starts afresh: one DATA alone is its own smallest. A retransmission with
     * a tiny delay says nothing about the path and does not count. */
    rx_alone_data(&x, 500, sender_clock + 8000, t + 8000 + 5200, 0);
    rx_alone_data(&x, 2000, sender_clock + 13100, t + 13150, 1);
    fb = rx_alone_feedback(&x, 2, t + 14000);
    ck_assert_uint_eq(fb.echo_ts_us, (uint32_t)(sender_clock + 8000));
    ck_assert_uint_eq(fb.delay_lag_us, 0);
    /* A delay 70 ms above the smallest saturates the 16-bit field. */
    rx_alone_data(&x, 600, sender_clock + 20000, t + 20000 + 5000, 0);
    rx_alone_data(&x, 700, sender_clock + 20100, t + 20100 + 75000, 0);
    ck_assert_uint_eq(rx_alone_feedback(&x, 3, t + 96000).delay_lag_us, UINT16_MAX);
    rx_alone_end(&x);
}
END_TEST

/* The sender's side of the delay lag: its queueing delay is the smallest delay of the interval
 * above the path's minimum, not the echo's. One DATA alone first (5 ms: the minimum), then three
 * in a row taking 5.3, 5.6 and 6.0 ms: the queue that stays is 0.3 ms, not the echo's 1.0. */
START_TEST(test_sender_takes_the_smallest_delay)
{
    static const uint64_t delay[] = {5000, 5300, 5600, 6000};
    rx_alone x;
    fb_xfer_sender *s;
    fb_xfer_sender_params sp;
    fb_xfer_sender_stats st;
    fb_wire_pkt pkt;
    fb_wire_reason why;
    uint8_t buf[1500];
    size_t len;
    uint64_t t = SIM_T0;

    rx_alone_start(&x, 1u << 20, t);
    x.m.src = calloc(1, x.c.size);
    ck_assert(x.m.src != NULL);
    memset(&sp, 0, sizeof(sp));
    sp.size = x.c.size;
    sp.chunk_size = x.c.chunk_size;
    sp.rate.policy = FB_POLICY_FAIR;
    sp.rate.target_rate = 100000000;
    sp.aead = x.cctx;
    sp.read = sim_read;
    sp.read_ctx = &x.m;
    ck_assert_int_eq(fb_xfer_sender_new(&s, &sp, t), FB_OK);
    for (unsigned i = 0; i < 4; i++) {
        t = fb_xfer_sender_next_time(s, t);
        ck_assert_int_eq(fb_xfer_sender_next(s, buf, sizeof(buf), &len, i, t), FB_OK);
        ck_assert_uint_gt(len, 0);
        ck_assert_int_eq(fb_wire_open(&pkt, &why, buf, len, x.sctx, NULL), FB_OK);
        ck_assert_int_eq(fb_xfer_receiver_on_data(x.rc, &pkt.hdr, &pkt.u.data, t + delay[i], NULL), FB_OK);
        if (i == 0 || i == 3) { /* a FEEDBACK after the first and after the last */
            fb_wire_feedback fb = rx_alone_feedback(&x, i, t + delay[i] + 100);

            ck_assert_uint_eq(fb.delay_lag_us, i == 0 ? 0 : delay[3] - delay[1]);
            pkt.hdr.type = FB_WIRE_FEEDBACK;
            pkt.hdr.flags = 0;
            ck_assert_int_eq(fb_xfer_sender_on_feedback(s, &pkt.hdr, &fb, t + delay[i] + 5200), FB_OK);
        }
    }
    fb_xfer_sender_stats_get(&st, s);
    ck_assert_uint_eq(st.queue_delay_us, delay[1] - delay[0]);
    fb_xfer_sender_free(s);
    free(x.m.src);
    rx_alone_end(&x);
}
END_TEST

/* FEEDBACK's receive rate: whole datagrams (payload + FB_WIRE_DATA_OVERHEAD, the unit the
 * sender paces in) over the span of the arrival times given, about the last 20 ms; a FEEDBACK
 * sent long after the arrivals (a receiver that read late) reports the same rate. */
START_TEST(test_receive_rate_on_arrival_times)
{
    rx_alone x;
    fb_wire_hdr hdr;
    fb_wire_data d;
    uint8_t payload[1000] = {0};
    uint64_t t = SIM_T0, off = 0, rate, want;

    rx_alone_start(&x, 10u << 20, t);
    memset(&hdr, 0, sizeof(hdr));
    d.payload = payload;
    d.len = sizeof(payload);
    /* One 1000-byte DATA every 100 us over 30 ms: 1060 datagram bytes per 100 us. */
    for (int i = 0; i <= 300; i++) {
        d.offset = off;
        d.send_ts_us = t;
        ck_assert_int_eq(fb_xfer_receiver_on_data(x.rc, &hdr, &d, t, NULL), FB_OK);
        off += sizeof(payload);
        if (i < 300)
            t += 100;
    }
    want = (sizeof(payload) + FB_WIRE_DATA_OVERHEAD) * 10000u; /* bytes/s */
    /* Asked 50 ms after the last arrival (a busy receiver): still the arrival rate. */
    rate = rx_alone_feedback(&x, 1, t + 50000).recv_rate;
    ck_assert_msg(rate >= want * 99 / 100 && rate <= want * 101 / 100, "rate %llu, want %llu",
                  (unsigned long long)rate, (unsigned long long)want);
    /* The same datagrams in bursts (10 at one instant every 1 ms): the same rate over ~20 ms. */
    for (int i = 0; i < 40; i++) {
        t += 1000;
        for (int k = 0; k < 10; k++) {
            d.offset = off;
            ck_assert_int_eq(fb_xfer_receiver_on_data(x.rc, &hdr, &d, t, NULL), FB_OK);
            off += sizeof(payload);
        }
        if (i % 5 == 4) { /* a FEEDBACK every 5 ms */
            rate = rx_alone_feedback(&x, 2 + (uint64_t)i, t + 100).recv_rate;
            if (i >= 24)
                ck_assert_msg(rate >= want * 95 / 100 && rate <= want * 105 / 100, "burst rate %llu",
                              (unsigned long long)rate);
        }
    }
    rx_alone_end(&x);
}
END_TEST

START_TEST(test_feedback_cadence)
{
    fb_aead_ctx *cctx, *sctx;
    fb_xfer_receiver *rc;
    fb_xfer_receiver_params rp;
    fb_wire_hdr hdr;
    fb_wire_data d;
    uint8_t payload[10] = {0}, buf[1500];
    size_t len;
    uint64_t now = SIM_T0, pn = 0;
    sim_cfg c = base_cfg(100000, 1000);
    sim m;

    memset(&m, 0, sizeof(m));
    m.cfg = &c;
    m.dst = calloc(1, c.size);
    aead_pair(&cctx, &sctx, FB_CIPHER_AES128_GCM);
    rp = sim_receiver_params(&m, sctx);
    rp.feedback_interval_us = 10000;
    rp.feedback_packets = 8;
    ck_assert_int_eq(fb_xfer_receiver_new(&rc, &rp, now), FB_OK);
    /* First one at once. */
    ck_assert_uint_eq(fb_xfer_receiver_next_feedback(rc, now), now);
    ck_assert_int_eq(fb_xfer_receiver_feedback(rc, buf, sizeof(buf), &len, pn++, now, 0), FB_OK);
    ck_assert_uint_gt(len, 0);
    /* Idle: after 4 intervals, then 8. */
    ck_assert_uint_eq(fb_xfer_receiver_next_feedback(rc, now), now + 40000);
    now += 40000;
    ck_assert_int_eq(fb_xfer_receiver_feedback(rc, buf, sizeof(buf), &len, pn++, now, 0), FB_OK);
    ck_assert_uint_gt(len, 0);
    ck_assert_uint_eq(fb_xfer_receiver_next_feedback(rc, now), now + 80000);
    /* One DATA: due one interval after the last. */
    memset(&hdr, 0, sizeof(hdr));
    d.payload = payload;
    d.len = sizeof(payload);
    d.send_ts_us = now;
    d.offset = 0;
    ck_assert_int_eq(fb_xfer_receiver_on_data(rc, &hdr, &d, now + 1, NULL), FB_OK);
    ck_assert_uint_eq(fb_xfer_receiver_next_feedback(rc, now + 1), now + 10000);
    ck_assert_int_eq(fb_xfer_receiver_feedback(rc, buf, sizeof(buf), &len, pn, now + 5000, 0), FB_OK);
    ck_assert_uint_eq(len, 0);
    /* Eight: at once, but not within 2 ms of the previous one. */
    for (int i = 1; i < 8; i++) {
        d.offset = (uint64_t)i * 10;
        ck_assert_int_eq(fb_xfer_receiver_on_data(rc, &hdr, &d, now + 2, NULL), FB_OK);
    }
    ck_assert_uint_eq(fb_xfer_receiver_next_feedback(rc, now + 2), now + 2000);
    ck_assert_uint_eq(fb_xfer_receiver_next_feedback(rc, now + 2500), now + 2500);
    ck_assert_int_eq(fb_xfer_receiver_feedback(rc, buf, sizeof(buf), &len, pn, now + 1000, 0), FB_OK);
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(fb_xfer_receiver_feedback(rc, buf, sizeof(buf), &len, pn++, now + 2, 1),
                     FB_OK); /* forced */
    ck_assert_uint_gt(len, 0);
    {
        fb_wire_pkt pkt;
        fb_wire_reason why;
        ck_assert_int_eq(fb_wire_open(&pkt, &why, buf, len, cctx, NULL), FB_OK);
        ck_assert_uint_eq(pkt.u.feedback.cum_offset, 80);
        ck_assert_uint_eq(pkt.u.feedback.high_offset, 80);
        ck_assert_uint_eq(pkt.u.feedback.recv_bytes, 80);
        ck_assert_uint_eq(pkt.u.feedback.echo_ts_us, now);
        /* Same send time: the latest arrival is the sample. */
        ck_assert_uint_eq(pkt.u.feedback.echo_recv_ts_us, now + 2);
        ck_assert_uint_eq(pkt.u.feedback.hold_us, 0);
    }
    /* A new hole: due 2 ms after the previous FEEDBACK, not one interval. */
    d.offset = 500;
    ck_assert_int_eq(fb_xfer_receiver_on_data(rc, &hdr, &d, now + 3, NULL), FB_OK);
    ck_assert_uint_eq(fb_xfer_receiver_next_feedback(rc, now + 3), now + 2002);
    ck_assert_int_eq(fb_xfer_receiver_feedback(rc, buf, sizeof(buf), &len, pn++, now + 2002, 0), FB_OK);
    ck_assert_uint_gt(len, 0);
    {
        fb_wire_pkt pkt;
        fb_wire_reason why;
        ck_assert_int_eq(fb_wire_open(&pkt, &why, buf, len, cctx, NULL), FB_OK);
        ck_assert_uint_eq(pkt.u.feedback.cum_offset, 80);
        ck_assert_uint_eq(pkt.u.feedback.high_offset, 510);
        ck_assert_uint_eq(pkt.u.feedback.nranges, 1);
        ck_assert_uint_eq(pkt.u.feedback.ranges[0].offset, 80);
        ck_assert_uint_eq(pkt.u.feedback.ranges[0].length, 420);
    }
    /* In order again: one interval. */
    d.offset = 80;
    ck_assert_int_eq(fb_xfer_receiver_on_data(rc, &hdr, &d, now + 2003, NULL), FB_OK);
    ck_assert_uint_eq(fb_xfer_receiver_next_feedback(rc, now + 2003), now + 12002);
    /* Complete: nothing more unless something arrives. */
    ck_assert_int_eq(fb_xfer_receiver_mark_received(rc, 0, c.size), FB_OK);
    ck_assert(fb_xfer_receiver_complete(rc));
    ck_assert_int_eq(fb_xfer_receiver_feedback(rc, buf, sizeof(buf), &len, pn++, now + 12002, 0), FB_OK);
    ck_assert_uint_gt(len, 0);
    ck_assert_uint_eq(fb_xfer_receiver_next_feedback(rc, now + 12003), UINT64_MAX);
    fb_xfer_receiver_free(rc);
    fb_aead_free(cctx);
    fb_aead_free(sctx);
    free(m.dst);
}
END_TEST

static Suite *xfer_suite(void)
{
    Suite *s = suite_create("fb_xfer");
    TCase *tc = tcase_create("rset");

    tcase_add_test(tc, test_rset_add_merges_overlapping_and_adjacent);
    tcase_add_test(tc, test_rset_remove_splits_and_trims);
    tcase_add_test(tc, test_rset_capacity_is_a_hard_bound);
    tcase_add_test(tc, test_rset_gaps);
    suite_add_tcase(s, tc);

    tc = tcase_create("receiver");
    tcase_add_test(tc, test_receiver_refuses_data_beyond_the_file);
    tcase_add_test(tc, test_feedback_cadence);
    tcase_add_test(tc, test_receive_rate_on_arrival_times);
    tcase_add_test(tc, test_echo_survives_the_send_time_wrap);
    tcase_add_test(tc, test_feedback_reports_the_smallest_delay);
    tcase_add_test(tc, test_sender_takes_the_smallest_delay);
    tcase_add_test(tc, test_zero_byte_file);
    suite_add_tcase(s, tc);

    tc = tcase_create("transfer");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_lossless_transfer_sends_each_byte_once);
    tcase_add_loop_test(tc, test_random_loss_retransmits_about_the_loss, 0, 3);
    tcase_add_test(tc, test_heavy_loss_with_more_holes_than_a_feedback_lists);
    tcase_add_test(tc, test_many_holes_are_repaired_in_a_few_round_trips);
    tcase_add_test(tc, test_fair_policy_through_a_bottleneck);
    tcase_add_test(tc, test_one_byte_file);
    tcase_add_loop_test(tc, test_chunk_size_plus_minus_one, 0, 6);
    tcase_add_test(tc, test_premarked_chunks_are_not_resent);
    tcase_add_test(tc, test_sender_sends_only_its_ranges);
    tcase_add_test(tc, test_receiver_range_set_bound);
    tcase_add_test(tc, test_new_association_continues_the_transfer);
    tcase_add_test(tc, test_receiver_stall_causes_no_resend);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(xfer_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
