/* Unit tests for fb_rate: the sender's rate controller, pacer and retransmission scheduler.
 *
 * The controller is driven through a simulated bottleneck in virtual time: senders paced by
 * fb_rate, one drop-tail FIFO drained at the link rate, a fixed propagation delay, seeded
 * random loss, and receivers that send FEEDBACK every 10 ms (receive rate, loss, echoed
 * timestamps with a clock offset) exactly as the wire protocol carries them. Deterministic. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fb_config.h"
#include "fb_rate.h"
#include "fb_wire.h"

/* ---- simulator ------------------------------------------------------------------------ */

#define SIM_FLOWS 2
#define SIM_RING 131072u /* packets in flight per flow (power of two) */
#define SIM_FB_RING 16384u
#define PKT 1452u

#ifndef SIM_ASSERT
#define SIM_ASSERT(x) ck_assert(x)
#endif

typedef struct sim_cfg {
    double link_rate;   /* bytes/s */
    uint64_t rtt_us;    /* base round trip (propagation), split evenly */
    double queue_bytes; /* drop-tail capacity */
    double loss;        /* random loss probability per data packet */
    uint64_t duration_us;
    uint64_t measure_from_us;
    int nflows;
    fb_rate_params params[SIM_FLOWS];
    uint64_t start_us[SIM_FLOWS];
    uint64_t extra_rtt_us[SIM_FLOWS];
    int64_t clock_offset_us[SIM_FLOWS];
    int reno[SIM_FLOWS]; /* 1: a loss-based TCP (Reno: window, ACK-clocked) instead of fb_rate */
    uint64_t seed;
    /* A busy or virtualised host: the sender process is descheduled STALLS_PER_S times a second
     * (at random) for STALL_MIN_US..STALL_MAX_US each and sends nothing meanwhile (its pacer
     * then allows its burst credit, no more); the link relay is held up the same way
     * (RELAY_STALLS_PER_S, up to RELAY_STALL_MAX_US), delivering what it held at once, late:
     * queueing-delay spikes that are no queue. 0: an ideal host. */
    double stalls_per_s;
    uint64_t stall_min_us, stall_max_us;
    double relay_stalls_per_s;
    uint64_t relay_stall_max_us;
    /* The relay in front of the bottleneck held up the same way (INGRESS_STALLS_PER_S, up to
     * INGRESS_STALL_MAX_US): packets enter the bottleneck's queue late, and the link idles
     * meanwhile unless a queue was left to carry it through (the user-space link emulator,
     * sharing two cores with both ends). */
    double ingress_stalls_per_s;
    uint64_t ingress_stall_max_us;
    int newest_delay_only; /* 1: FEEDBACK without the delay lag (the newest DATA's delay only) */
} sim_cfg;

typedef struct sim_result {
    double goodput[SIM_FLOWS];  /* bytes/s delivered during the measurement window */
    double min_rate[SIM_FLOWS]; /* pacing rate range during the measurement window */
    double max_rate[SIM_FLOWS];
    double mean_rate[SIM_FLOWS];
    double max_q_us, mean_q_us; /* bottleneck queueing delay seen by arriving packets, window */
    uint64_t sent, drops_queue, drops_random;
    uint64_t first_full_us[SIM_FLOWS]; /* first time the rate reached 90 % of the link (0 = never) */
    uint64_t stalled_us;               /* the sender's host was descheduled this long */
} sim_result;

typedef struct sim_pkt {
    uint64_t arrive_us, send_ts_us, seq;
} sim_pkt;

typedef struct sim_fb {
    uint64_t arrive_us;
    uint64_t recv_bytes, lost_bytes, recv_rate, echo_ts_us, echo_recv_ts_us, hold_us;
    uint32_t owd_lag_us;
    int has_echo;
} sim_fb;

typedef struct sim_flow {
    fb_rate rate;
    sim_pkt *ring;
    size_t head, tail;
    sim_fb fb[SIM_FB_RING];
    size_t fb_head, fb_tail;
    uint64_t next_seq, expect_seq;
    uint64_t recv_bytes, lost_bytes, interval_bytes;
    uint64_t last_echo_ts, last_echo_recv, last_arrival;
    int has_echo;
    int has_min_owd; /* smallest one-way delay since the last FEEDBACK (as the receiver does) */
    int64_t min_owd;
    uint64_t next_fb_timer;
    uint64_t prev_recv_bytes, prev_lost_bytes;
    uint64_t window_bytes;
    double rate_sum;
    uint64_t rate_n;
    /* Reno: congestion window and packets in flight (packets); ACK arrivals use the fb ring
     * (arrive_us), loss notices (a dropped packet is known one RTT after it left) their own */
    double cwnd, ssthresh;
    uint64_t inflight, last_cut_us;
    uint64_t loss_at[SIM_RING];
    size_t loss_head, loss_tail;
} sim_flow;

static uint64_t sim_rand(uint64_t *s)
{
    /* xorshift64*: deterministic and good enough for Bernoulli loss */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static double sim_uniform(uint64_t *s)
{
    return (double)(sim_rand(s) >> 11) / 9007199254740992.0;
}

/* Exponentially distributed gap with mean 1/PER_S seconds, in us. */
static uint64_t sim_gap_us(uint64_t *rng, double per_s)
{
    return (uint64_t)(-log(1.0 - sim_uniform(rng)) / per_s * 1e6) + 1;
}

/* Host stalls (see sim_cfg): the next one after AFTER, as [start, end). */
static void sim_next_stall(uint64_t *rng, double per_s, uint64_t min_us, uint64_t max_us, uint64_t after,
                           uint64_t *start, uint64_t *end)
{
    *start = after + sim_gap_us(rng, per_s);
    *end = *start + min_us + (uint64_t)(sim_uniform(rng) * (double)(max_us - min_us));
}

static uint64_t one_way(const sim_cfg *c, int f)
{
    return (c->rtt_us + c->extra_rtt_us[f]) / 2;
}

/* A loss-based TCP flow (Reno): ACKs grow the window (slow start, then one packet per RTT),
 * a loss halves it (once per RTT); it sends whenever the window allows, so it fills any
 * buffer until it overflows. Its packets share the bottleneck FIFO with the others. */
static void sim_reno_step(const sim_cfg *c, int f, sim_flow *fl, uint64_t now, double *link_free, uint64_t *rng,
                          sim_result *res, int measuring)
{
    while (fl->fb_head != fl->fb_tail && fl->fb[fl->fb_tail].arrive_us <= now) {
        fl->fb_tail = (fl->fb_tail + 1) % SIM_FB_RING;
        fl->inflight--;
        fl->cwnd += fl->cwnd < fl->ssthresh ? 1.0 : 1.0 / fl->cwnd;
    }
    while (fl->loss_head != fl->loss_tail && fl->loss_at[fl->loss_tail] <= now) {
        fl->loss_tail = (fl->loss_tail + 1) % SIM_RING;
        fl->inflight--;
        if (now - fl->last_cut_us >= c->rtt_us) {
            fl->cwnd = fl->cwnd / 2 < 2 ? 2 : fl->cwnd / 2;
            fl->ssthresh = fl->cwnd;
            fl->last_cut_us = now;
        }
    }
    while ((double)fl->inflight < fl->cwnd) {
        double qbytes = *link_free > (double)now ? (*link_free - (double)now) * c->link_rate / 1e6 : 0.0;
        sim_pkt *p;

        fl->inflight++;
        res->sent++;
        fl->next_seq++;
        if (sim_uniform(rng) < c->loss || qbytes + PKT > c->queue_bytes) {
            if (qbytes + PKT > c->queue_bytes)
                res->drops_queue++;
            else
                res->drops_random++;
            SIM_ASSERT((fl->loss_head + 1) % SIM_RING != fl->loss_tail);
            fl->loss_at[fl->loss_head] = now + c->rtt_us;
            fl->loss_head = (fl->loss_head + 1) % SIM_RING;
            continue;
        }
        if (measuring) {
            double q = qbytes / c->link_rate * 1e6;

            res->max_q_us = q > res->max_q_us ? q : res->max_q_us;
        }
        *link_free = (*link_free > (double)now ? *link_free : (double)now) + PKT * 1e6 / c->link_rate;
        SIM_ASSERT(((fl->head + 1) & (SIM_RING - 1)) != fl->tail);
        p = &fl->ring[fl->head];
        p->seq = fl->next_seq - 1;
        p->send_ts_us = now;
        p->arrive_us = (uint64_t)ceil(*link_free) + one_way(c, f);
        fl->head = (fl->head + 1) & (SIM_RING - 1);
    }
}

static void sim_run(sim_result *res, const sim_cfg *c)
{
    static sim_flow flows[SIM_FLOWS];
    double link_free = 0; /* time the link finishes the queued bytes */
    uint64_t now = 0, rng = c->seed ? c->seed : 0x9e3779b97f4a7c15ull;
    uint64_t noise_rng = rng ^ 0x5851f42d4c957f2dull; /* own stream: the loss pattern stays the same */
    uint64_t stall_start = UINT64_MAX, stall_end = 0, relay_start = UINT64_MAX, relay_end = 0;
    uint64_t ingress_start = UINT64_MAX, ingress_end = 0;
    double qsum = 0;
    uint64_t qn = 0;

    memset(res, 0, sizeof(*res));
    for (int f = 0; f < c->nflows; f++) {
        sim_flow *fl = &flows[f];

        memset(fl, 0, sizeof(*fl));
        fl->ring = calloc(SIM_RING, sizeof(sim_pkt));
        SIM_ASSERT(fl->ring != NULL);
        fb_rate_init(&fl->rate, &c->params[f], c->start_us[f]);
        fl->next_fb_timer = c->start_us[f] + FB_RATE_FEEDBACK_INTERVAL_US;
        fl->cwnd = 10;
        fl->ssthresh = 1e9;
        res->min_rate[f] = INFINITY;
    }
    if (c->stalls_per_s > 0)
        sim_next_stall(&noise_rng, c->stalls_per_s, c->stall_min_us, c->stall_max_us, 0, &stall_start, &stall_end);
    if (c->relay_stalls_per_s > 0)
        sim_next_stall(&noise_rng, c->relay_stalls_per_s, 0, c->relay_stall_max_us, 0, &relay_start, &relay_end);
    if (c->ingress_stalls_per_s > 0)
        sim_next_stall(&noise_rng, c->ingress_stalls_per_s, 0, c->ingress_stall_max_us, 0, &ingress_start,
                       &ingress_end);
    /* Bounded: virtual time strictly advances to the next event each pass or an event is
     * consumed; the total is bounded by duration and the packet count. */
    while (now < c->duration_us) {
        uint64_t next = c->duration_us;

        for (int f = 0; f < c->nflows; f++) {
            sim_flow *fl = &flows[f];
            uint64_t t;

            if (now < c->start_us[f]) {
                next = c->start_us[f] < next ? c->start_us[f] : next;
                continue;
            }
            if (c->reno[f]) {
                t = (double)fl->inflight < fl->cwnd ? now : UINT64_MAX;
                if (fl->loss_head != fl->loss_tail && fl->loss_at[fl->loss_tail] < t)
                    t = fl->loss_at[fl->loss_tail];
            } else {
                t = fb_rate_next_send_time(&fl->rate, now);
                if (t < stall_end && t >= stall_start)
                    t = stall_end; /* descheduled: nothing leaves before it runs again */
            }
            next = t < next ? t : next;
            if (fl->head != fl->tail && fl->ring[fl->tail].arrive_us < next)
                next = fl->ring[fl->tail].arrive_us;
            if (!c->reno[f] && fl->next_fb_timer < next)
                next = fl->next_fb_timer;
            if (fl->fb_head != fl->fb_tail && fl->fb[fl->fb_tail].arrive_us < next)
                next = fl->fb[fl->fb_tail].arrive_us;
        }
        now = next > now ? next : now;
        if (now >= c->duration_us)
            break;
        for (int f = 0; f < c->nflows; f++) {
            sim_flow *fl = &flows[f];
            int measuring = now >= c->measure_from_us;

            if (now < c->start_us[f])
                continue;
            /* Receiver: packets arriving now. */
            while (fl->head != fl->tail && fl->ring[fl->tail].arrive_us <= now) {
                sim_pkt *p = &fl->ring[fl->tail];

                fl->tail = (fl->tail + 1) & (SIM_RING - 1);
                if (p->seq > fl->expect_seq)
                    fl->lost_bytes += (p->seq - fl->expect_seq) * PKT;
                fl->expect_seq = p->seq + 1;
                fl->recv_bytes += PKT;
                fl->interval_bytes += PKT;
                fl->last_echo_ts = p->send_ts_us;
                fl->last_echo_recv = (uint64_t)((int64_t)p->arrive_us + c->clock_offset_us[f]);
                fl->last_arrival = p->arrive_us;
                fl->has_echo = 1;
                if (!fl->has_min_owd || (int64_t)(fl->last_echo_recv - fl->last_echo_ts) < fl->min_owd) {
                    fl->min_owd = (int64_t)(fl->last_echo_recv - fl->last_echo_ts);
                    fl->has_min_owd = 1;
                }
                if (measuring)
                    fl->window_bytes += PKT;
                if (c->reno[f]) { /* its ACK, one way later */
                    sim_fb *ack = &fl->fb[fl->fb_head];

                    SIM_ASSERT((fl->fb_head + 1) % SIM_FB_RING != fl->fb_tail);
                    memset(ack, 0, sizeof(*ack));
                    ack->arrive_us = now + one_way(c, f);
                    fl->fb_head = (fl->fb_head + 1) % SIM_FB_RING;
                }
            }
            if (c->reno[f]) {
                sim_reno_step(c, f, fl, now, &link_free, &rng, res, measuring);
                continue;
            }
            /* Receiver: periodic feedback. */
            if (fl->next_fb_timer <= now) {
                sim_fb *fb = &fl->fb[fl->fb_head];

                SIM_ASSERT((fl->fb_head + 1) % SIM_FB_RING != fl->fb_tail);
                fb->arrive_us = now + one_way(c, f);
                fb->recv_bytes = fl->recv_bytes;
                fb->lost_bytes = fl->lost_bytes;
                fb->recv_rate = fl->interval_bytes * 1000000u / FB_RATE_FEEDBACK_INTERVAL_US;
                fb->has_echo = fl->has_echo;
                fb->echo_ts_us = fl->last_echo_ts;
                fb->echo_recv_ts_us = fl->last_echo_recv;
                fb->hold_us = now - fl->last_arrival;
                fb->owd_lag_us = 0;
                if (fl->has_min_owd && c->newest_delay_only == 0)
                    fb->owd_lag_us = (uint32_t)((int64_t)(fl->last_echo_recv - fl->last_echo_ts) - fl->min_owd);
                fl->has_min_owd = 0;
                fl->fb_head = (fl->fb_head + 1) % SIM_FB_RING;
                fl->interval_bytes = 0;
                fl->next_fb_timer += FB_RATE_FEEDBACK_INTERVAL_US;
            }
            /* Sender: feedback arriving now. */
            while (fl->fb_head != fl->fb_tail && fl->fb[fl->fb_tail].arrive_us <= now) {
                sim_fb *fb = &fl->fb[fl->fb_tail];
                fb_rate_sample s = {0};

                fl->fb_tail = (fl->fb_tail + 1) % SIM_FB_RING;
                s.now_us = now;
                s.acked_bytes = fb->recv_bytes - fl->prev_recv_bytes;
                s.lost_bytes = fb->lost_bytes - fl->prev_lost_bytes;
                fl->prev_recv_bytes = fb->recv_bytes;
                fl->prev_lost_bytes = fb->lost_bytes;
                s.recv_rate = fb->recv_rate;
                if (fb->has_echo) {
                    s.rtt_us = now - fb->echo_ts_us - fb->hold_us;
                    s.has_owd = 1;
                    s.owd_us = (int64_t)fb->echo_recv_ts_us - (int64_t)fb->echo_ts_us;
                    s.owd_lag_us = fb->owd_lag_us;
                }
                fb_rate_on_feedback(&fl->rate, &s);
                if (measuring) {
                    double r = (double)fb_rate_current(&fl->rate);

                    res->min_rate[f] = r < res->min_rate[f] ? r : res->min_rate[f];
                    res->max_rate[f] = r > res->max_rate[f] ? r : res->max_rate[f];
                    fl->rate_sum += r;
                    fl->rate_n++;
                }
                if (res->first_full_us[f] == 0 && (double)fb_rate_current(&fl->rate) >= 0.9 * c->link_rate)
                    res->first_full_us[f] = now - c->start_us[f];
            }
            /* The sender's host: a stall that ended gives way to the next one. */
            while (c->stalls_per_s > 0 && now >= stall_end) {
                sim_next_stall(&noise_rng, c->stalls_per_s, c->stall_min_us, c->stall_max_us, stall_end, &stall_start,
                               &stall_end);
                if (stall_start < c->duration_us)
                    res->stalled_us += stall_end - stall_start;
            }
            /* Sender: packets due now (bulk sender, always has data), unless descheduled. */
            while (!(now >= stall_start && now < stall_end) && fb_rate_next_send_time(&fl->rate, now) <= now) {
                double enter = (double)now, qbytes;
                sim_pkt *p;

                if (c->ingress_stalls_per_s > 0) {
                    while (now >= ingress_end)
                        sim_next_stall(&noise_rng, c->ingress_stalls_per_s, 0, c->ingress_stall_max_us,
                                       ingress_end, &ingress_start, &ingress_end);
                    if (now >= ingress_start)
                        enter = (double)ingress_end; /* enters the queue when the relay runs again */
                }
                qbytes = link_free > enter ? (link_free - enter) * c->link_rate / 1e6 : 0.0;

                fb_rate_on_send(&fl->rate, now, PKT);
                res->sent++;
                fl->next_seq++;
                if (sim_uniform(&rng) < c->loss) {
                    res->drops_random++;
                    continue;
                }
                if (qbytes + PKT > c->queue_bytes) {
                    res->drops_queue++;
                    continue;
                }
                if (measuring) {
                    double q = qbytes / c->link_rate * 1e6;

                    qsum += q;
                    qn++;
                    res->max_q_us = q > res->max_q_us ? q : res->max_q_us;
                }
                link_free = (link_free > enter ? link_free : enter) + PKT * 1e6 / c->link_rate;
                SIM_ASSERT(((fl->head + 1) & (SIM_RING - 1)) != fl->tail);
                p = &fl->ring[fl->head];
                p->seq = fl->next_seq - 1;
                p->send_ts_us = now;
                p->arrive_us = (uint64_t)ceil(link_free) + one_way(c, f);
                if (c->relay_stalls_per_s > 0) {
                    /* The relay hands packets over in order: one due during its stall leaves at its end. */
                    while (p->arrive_us >= relay_end)
                        sim_next_stall(&noise_rng, c->relay_stalls_per_s, 0, c->relay_stall_max_us, relay_end,
                                       &relay_start, &relay_end);
                    if (p->arrive_us >= relay_start)
                        p->arrive_us = relay_end;
                }
                fl->head = (fl->head + 1) & (SIM_RING - 1);
            }
        }
    }
    for (int f = 0; f < c->nflows; f++) {
        uint64_t from = c->measure_from_us > c->start_us[f] ? c->measure_from_us : c->start_us[f];

        res->goodput[f] = (double)flows[f].window_bytes * 1e6 / (double)(c->duration_us - from);
        res->mean_rate[f] = flows[f].rate_n ? flows[f].rate_sum / (double)flows[f].rate_n : 0;
        free(flows[f].ring);
        flows[f].ring = NULL;
    }
    res->mean_q_us = qn ? qsum / (double)qn : 0;
#ifdef SIM_TRACE
    for (int f = 0; f < c->nflows; f++)
        fprintf(stderr, "flow %d: goodput %.2f MB/s rate min %.2f mean %.2f max %.2f full@%.2fs\n", f,
                res->goodput[f] / 1e6, res->min_rate[f] / 1e6, res->mean_rate[f] / 1e6,
                res->max_rate[f] / 1e6, res->first_full_us[f] / 1e6);
    fprintf(stderr, "q mean %.1f ms max %.1f ms; sent %lu drops queue %lu random %lu\n", res->mean_q_us / 1e3,
            res->max_q_us / 1e3, (unsigned long)res->sent, (unsigned long)res->drops_queue,
            (unsigned long)res->drops_random);
#endif
}

#define MBPS(x) ((x)*1e6 / 8) /* Mbit/s to bytes/s */

static void sim_defaults(sim_cfg *c, unsigned policy, double link_rate, uint64_t rtt_us)
{
    memset(c, 0, sizeof(*c));
    c->link_rate = link_rate;
    c->rtt_us = rtt_us;
    c->queue_bytes = link_rate * (double)rtt_us / 1e6; /* 1 BDP */
    c->duration_us = 60000000u;
    c->measure_from_us = 20000000u;
    c->nflows = 1;
    for (int f = 0; f < SIM_FLOWS; f++) {
        c->params[f].policy = policy;
        c->params[f].target_rate = (uint64_t)(link_rate * 4); /* ceiling well above the link */
        c->params[f].min_rate = 0;
        c->params[f].packet_size = PKT;
        c->clock_offset_us[f] = f == 0 ? 123456789 : -987654; /* hosts' clocks disagree */
    }
    c->seed = 42;
}

/* ---- simulated behaviour --------------------------------------------------------------- */

START_TEST(test_fair_fills_a_lossy_long_link)
{
    sim_cfg c;
    sim_result r;

    /* 100 Mbit/s, 200 ms RTT, 1 % random loss, 1 BDP of buffer. */
    sim_defaults(&c, FB_POLICY_FAIR, MBPS(100), 200000);
    c.loss = 0.01;
    sim_run(&r, &c);
    ck_assert_msg(r.goodput[0] >= 0.9 * c.link_rate * (1 - c.loss), "goodput %.0f of %.0f", r.goodput[0],
                  c.link_rate);
    /* It fills the link without flooding the queue: overflow losses stay rare. */
    ck_assert_msg(r.drops_queue <= r.sent / 1000, "queue drops %lu of %lu", (unsigned long)r.drops_queue,
                  (unsigned long)r.sent);
    ck_assert_msg(r.mean_q_us < 50000, "mean queueing delay %.0f us", r.mean_q_us);
}
END_TEST

/* A sender on a busy host: descheduled 100 times a second for 1-4 ms, and then for 1-8 ms (as
 * the benchmark VM showed under heavy CPU steal: away a third of the time), and a link relay
 * that holds packets up to 15 ms 20 times a second (delay spikes that are no queue). The pacer
 * repays what the stalls held back, so the flow still fills the link (with only the 2 ms burst
 * forgiven: 97 % and 83 %). */
START_TEST(test_fair_tolerates_a_busy_host)
{
    sim_cfg c;
    sim_result r;

    sim_defaults(&c, FB_POLICY_FAIR, MBPS(500), 100000);
    c.loss = 0.01;
    c.stalls_per_s = 100;
    c.stall_min_us = 1000;
    c.stall_max_us = 4000;
    c.relay_stalls_per_s = 20;
    c.relay_stall_max_us = 15000;
    sim_run(&r, &c);
    ck_assert_msg(r.goodput[0] >= 0.95 * c.link_rate * (1 - c.loss), "goodput %.0f of %.0f", r.goodput[0],
                  c.link_rate);
    /* the host really was away: about a fifth of the time (100 x 2.5 ms a second) */
    ck_assert_msg(r.stalled_us > c.duration_us / 6, "stalled %lu us", (unsigned long)r.stalled_us);

    c.stall_max_us = 8000;
    sim_run(&r, &c);
    ck_assert_msg(r.goodput[0] >= 0.9 * c.link_rate * (1 - c.loss), "goodput %.0f of %.0f (stalls of 1-8 ms)",
                  r.goodput[0], c.link_rate);
    ck_assert_msg(r.stalled_us > c.duration_us / 4, "stalled %lu us", (unsigned long)r.stalled_us);
}
END_TEST

/* The link emulator in front of the bottleneck held up 100 times a second for up to 6 ms (as a
 * user-space relay sharing two cores with both ends is): packets enter the queue late and the
 * link idles meanwhile unless a queue carries it through. The newest DATA's delay then often
 * shows a few ms that are no queue, above the 2.6 ms a fair flow keeps at 500 Mbit/s: taken
 * for the queue, the flow keeps the real one too short to carry the link through the holds
 * (85-87 % of the link over seeds 1-6). The smallest delay since the previous FEEDBACK
 * (FEEDBACK's delay lag) sees through them (93-94 %). */
START_TEST(test_fair_sees_through_delay_jitter)
{
    sim_cfg c;
    sim_result with_lag, newest_only;

    sim_defaults(&c, FB_POLICY_FAIR, MBPS(500), 100000);
    c.loss = 0.01;
    c.ingress_stalls_per_s = 100;
    c.ingress_stall_max_us = 6000;
    sim_run(&with_lag, &c);
    ck_assert_msg(with_lag.goodput[0] >= 0.91 * c.link_rate * (1 - c.loss), "goodput %.0f of %.0f",
                  with_lag.goodput[0], c.link_rate);
    c.newest_delay_only = 1;
    sim_run(&newest_only, &c);
    ck_assert_msg(newest_only.goodput[0] < 0.96 * with_lag.goodput[0],
                  "the newest delay alone gave %.0f, the smallest %.0f: the holds no longer matter?",
                  newest_only.goodput[0], with_lag.goodput[0]);
}
END_TEST

START_TEST(test_fair_ignores_heavy_random_loss)
{
    sim_cfg c;
    sim_result r;

    /* 5 % random loss (the worst case of the benchmark matrix), 50 ms RTT. */
    sim_defaults(&c, FB_POLICY_FAIR, MBPS(100), 50000);
    c.loss = 0.05;
    sim_run(&r, &c);
    ck_assert_msg(r.goodput[0] >= 0.9 * c.link_rate * (1 - c.loss), "goodput %.0f", r.goodput[0]);
}
END_TEST

START_TEST(test_quick_start_reaches_the_link_rate_fast)
{
    sim_cfg c;
    sim_result r;

    sim_defaults(&c, FB_POLICY_FAIR, MBPS(100), 200000);
    c.duration_us = 10000000u;
    c.measure_from_us = 5000000u;
    sim_run(&r, &c);
    /* From 8 Mbit/s to 100 Mbit/s is ~4 doublings: well under 20 RTTs (4 s). */
    ck_assert_uint_gt(r.first_full_us[0], 0);
    ck_assert_msg(r.first_full_us[0] < 4000000u, "full rate after %lu us", (unsigned long)r.first_full_us[0]);
    ck_assert_msg(r.goodput[0] >= 0.9 * c.link_rate, "goodput %.0f", r.goodput[0]);
}
END_TEST

START_TEST(test_fixed_holds_the_target)
{
    sim_cfg c;
    sim_result r;

    /* Target below the link: exactly the target, whatever the loss. */
    sim_defaults(&c, FB_POLICY_FIXED, MBPS(100), 200000);
    c.params[0].target_rate = (uint64_t)MBPS(40);
    c.params[0].min_rate = (uint64_t)MBPS(10);
    c.loss = 0.02;
    sim_run(&r, &c);
    ck_assert_double_eq_tol(r.min_rate[0], MBPS(40), 1.0);
    ck_assert_double_eq_tol(r.max_rate[0], MBPS(40), 1.0);
    ck_assert_double_eq_tol(r.goodput[0], MBPS(40) * 0.98, MBPS(40) * 0.02);

    /* Target above the link: still the target (fixed does not adapt; the queue overflows). */
    sim_defaults(&c, FB_POLICY_FIXED, MBPS(100), 100000);
    c.params[0].target_rate = (uint64_t)MBPS(120);
    sim_run(&r, &c);
    ck_assert_double_eq_tol(r.min_rate[0], MBPS(120), 1.0);
    ck_assert_uint_gt(r.drops_queue, 0);
}
END_TEST

START_TEST(test_clamps_are_respected)
{
    sim_cfg c;
    sim_result r;

    /* A fair flow with a ceiling below the link never exceeds it and reaches it. */
    sim_defaults(&c, FB_POLICY_FAIR, MBPS(100), 100000);
    c.params[0].target_rate = (uint64_t)MBPS(20);
    c.loss = 0.01;
    sim_run(&r, &c);
    ck_assert_double_le(r.max_rate[0], MBPS(20));
    ck_assert_double_ge(r.goodput[0], MBPS(20) * 0.97);

    /* A low flow pushed off the link by a fixed flow above capacity stops at its floor. */
    sim_defaults(&c, FB_POLICY_LOW, MBPS(100), 100000);
    c.nflows = 2;
    c.params[0].min_rate = (uint64_t)MBPS(5);
    c.params[1].policy = FB_POLICY_FIXED;
    c.params[1].target_rate = (uint64_t)MBPS(110);
    c.start_us[1] = 5000000u;
    sim_run(&r, &c);
    ck_assert_double_ge(r.min_rate[0], MBPS(5));
    ck_assert_double_le(r.max_rate[0], MBPS(5) * 1.05);
}
END_TEST

START_TEST(test_low_backs_off_above_its_delay_target)
{
    sim_cfg c;
    sim_result r;

    /* Alone, low uses the link (it only aims at 25 ms of queue). */
    sim_defaults(&c, FB_POLICY_LOW, MBPS(100), 100000);
    sim_run(&r, &c);
    ck_assert_msg(r.goodput[0] >= 0.85 * c.link_rate, "low alone: %.0f", r.goodput[0]);
    ck_assert_msg(r.mean_q_us <= 1.5 * FB_RATE_LOW_TARGET_US, "low alone queue %.0f us", r.mean_q_us);

    /* A fixed 90 Mbit/s flow arrives and the queue would exceed 25 ms: low gives way, leaving
     * well under its previous rate, and the fixed flow gets what it asks for. */
    sim_defaults(&c, FB_POLICY_LOW, MBPS(100), 100000);
    c.nflows = 2;
    c.params[1].policy = FB_POLICY_FIXED;
    c.params[1].target_rate = (uint64_t)MBPS(90);
    c.start_us[1] = 10000000u;
    sim_run(&r, &c);
    ck_assert_msg(r.goodput[0] <= MBPS(12), "low kept %.0f", r.goodput[0]);
    ck_assert_msg(r.goodput[1] >= MBPS(90) * 0.97, "fixed got %.0f", r.goodput[1]);
    ck_assert_msg(r.mean_q_us <= 1.5 * FB_RATE_LOW_TARGET_US, "queue %.0f us", r.mean_q_us);
}
END_TEST

START_TEST(test_two_fair_flows_share_equally)
{
    sim_cfg c;
    sim_result r;
    double lo, hi;

    /* The second flow arrives 5 s later; both 200 ms RTT, 1 % loss. */
    sim_defaults(&c, FB_POLICY_FAIR, MBPS(100), 200000);
    c.nflows = 2;
    c.loss = 0.01;
    c.start_us[1] = 5000000u;
    c.duration_us = 90000000u;
    c.measure_from_us = 60000000u;
    sim_run(&r, &c);
    lo = fmin(r.goodput[0], r.goodput[1]);
    hi = fmax(r.goodput[0], r.goodput[1]);
    ck_assert_msg(lo >= 0.8 * hi, "shares %.0f and %.0f", r.goodput[0], r.goodput[1]);
    ck_assert_msg(lo + hi >= 0.9 * c.link_rate * (1 - c.loss), "total %.0f", lo + hi);
}
END_TEST

START_TEST(test_two_fair_flows_with_different_rtts_share)
{
    sim_cfg c;
    sim_result r;
    double lo, hi;

    /* 40 ms and 200 ms round trips: the equilibrium does not depend on RTT. */
    sim_defaults(&c, FB_POLICY_FAIR, MBPS(100), 40000);
    c.queue_bytes = MBPS(100) * 0.2;
    c.nflows = 2;
    c.extra_rtt_us[1] = 160000;
    c.start_us[1] = 2000000u;
    c.duration_us = 90000000u;
    c.measure_from_us = 60000000u;
    sim_run(&r, &c);
    lo = fmin(r.goodput[0], r.goodput[1]);
    hi = fmax(r.goodput[0], r.goodput[1]);
    ck_assert_msg(lo >= 0.75 * hi, "shares %.0f and %.0f", r.goodput[0], r.goodput[1]);
    ck_assert_msg(lo + hi >= 0.9 * c.link_rate, "total %.0f", lo + hi);
}
END_TEST

START_TEST(test_high_takes_about_twice_fair)
{
    sim_cfg c;
    sim_result r;
    double ratio;

    sim_defaults(&c, FB_POLICY_FAIR, MBPS(100), 100000);
    c.nflows = 2;
    c.params[1].policy = FB_POLICY_HIGH;
    c.start_us[1] = 2000000u;
    c.duration_us = 90000000u;
    c.measure_from_us = 60000000u;
    sim_run(&r, &c);
    ratio = r.goodput[1] / r.goodput[0];
    ck_assert_msg(ratio >= 1.5 && ratio <= 2.5, "high/fair = %.2f", ratio);
}
END_TEST

/* Beside a loss-based TCP flow that fills a deep buffer (2 BDP), a pure delay law would keep
 * only its own small queue and yield nearly everything. The drain finds the queue held by
 * someone else; fair then competes (AIMD on its queue target) and neither flow falls below a
 * third of the link. low never competes: it leaves the TCP flow nearly everything. */
START_TEST(test_fair_competes_with_a_loss_based_flow)
{
    sim_cfg c;
    sim_result r;
    double fair, tcp;

    sim_defaults(&c, FB_POLICY_FAIR, MBPS(100), 50000);
    c.queue_bytes = MBPS(100) * 0.1; /* 100 ms: the benchmark relay's buffer */
    c.nflows = 2;
    c.reno[1] = 1;
    c.duration_us = 90000000u;
    c.measure_from_us = 30000000u;
    sim_run(&r, &c);
    fair = r.goodput[0];
    tcp = r.goodput[1];
    ck_assert_msg(fair >= (fair + tcp) / 3 && tcp >= (fair + tcp) / 3, "fair %.1f, TCP %.1f Mbit/s",
                  fair * 8 / 1e6, tcp * 8 / 1e6);
    ck_assert_msg(fair + tcp >= 0.9 * c.link_rate, "together %.1f Mbit/s", (fair + tcp) * 8 / 1e6);

    c.params[0].policy = FB_POLICY_LOW;
    sim_run(&r, &c);
    ck_assert_msg(r.goodput[1] >= 0.8 * (r.goodput[0] + r.goodput[1]), "low %.1f, TCP %.1f Mbit/s",
                  r.goodput[0] * 8 / 1e6, r.goodput[1] * 8 / 1e6);
}
END_TEST

START_TEST(test_shallow_buffer_bounds_overflow)
{
    sim_cfg c;
    sim_result r;

    /* A buffer of 5 ms holds less than the flow's own queue target (48 packets): the delay
     * signal saturates and the queue overflows. A known limit of the delay law (see
     * PROTOCOL.md 7.6); the damping towards the receive rate keeps the loss bounded. */
    sim_defaults(&c, FB_POLICY_FAIR, MBPS(100), 100000);
    c.queue_bytes = MBPS(100) * 0.005;
    sim_run(&r, &c);
    ck_assert_msg(r.goodput[0] >= 0.8 * c.link_rate, "goodput %.0f", r.goodput[0]);
    ck_assert_msg(r.drops_queue <= r.sent / 5, "queue drops %lu of %lu", (unsigned long)r.drops_queue,
                  (unsigned long)r.sent);
}
END_TEST

/* ---- direct controller behaviour ------------------------------------------------------- */

static fb_rate_sample sample_at(uint64_t now, int64_t owd_us, uint64_t lost, uint64_t recv_rate)
{
    fb_rate_sample s = {0};

    s.now_us = now;
    s.acked_bytes = 100 * PKT;
    s.lost_bytes = lost;
    s.rtt_us = 100000 + (uint64_t)(owd_us > 0 ? owd_us : 0);
    s.has_owd = 1;
    s.owd_us = 5000000 + owd_us; /* arbitrary clock offset */
    s.recv_rate = recv_rate;
    return s;
}

/* Quick start ends on the queue building, not on one delay spike (a busy host), nor on a delay
 * wobble beside the path's usual random loss. */
START_TEST(test_quick_start_survives_a_spike_and_random_loss)
{
    fb_rate r;
    fb_rate_params p = {FB_POLICY_FAIR, 100000000, 0, 1000000, PKT};
    uint64_t t = 0;
    fb_rate_sample s;

    fb_rate_init(&r, &p, 0);
    for (int i = 0; i < 10; i++) { /* 1 % loss on a flat queue: the random loss is learnt */
        t += 10000;
        s = sample_at(t, 0, PKT, 0);
        fb_rate_on_feedback(&r, &s);
    }
    t += 10000;
    s = sample_at(t, 40000, 0, 0); /* one 40 ms spike */
    fb_rate_on_feedback(&r, &s);
    t += 10000;
    s = sample_at(t, 0, 0, 0);
    fb_rate_on_feedback(&r, &s);
    ck_assert_int_eq(fb_rate_in_quick_start(&r), 1);
    t += 10000;
    s = sample_at(t, 3000, PKT, 0); /* 3 ms wobble with the usual 1 % loss */
    fb_rate_on_feedback(&r, &s);
    ck_assert_int_eq(fb_rate_in_quick_start(&r), 1);
    /* The queue really building: two samples in a row above the exit delay. */
    for (int i = 0; i < 2; i++) {
        t += 10000;
        s = sample_at(t, 40000, 0, 0);
        fb_rate_on_feedback(&r, &s);
    }
    ck_assert_int_eq(fb_rate_in_quick_start(&r), 0);
}
END_TEST

START_TEST(test_random_loss_alone_never_lowers_the_rate)
{
    fb_rate r;
    fb_rate_params p = {FB_POLICY_FAIR, 100000000, 0, 1000000, PKT};
    double prev;

    fb_rate_init(&r, &p, 0);
    /* Flat, empty queue; every feedback reports loss (8 of 108 datagrams: 7 %). Up to the
     * first periodic drain (3 s after quick start), which lowers the rate on purpose. */
    prev = (double)fb_rate_current(&r);
    for (uint64_t t = 10000; t <= 2500000; t += 10000) {
        fb_rate_sample s = sample_at(t, 0, 8 * PKT, 0);

        fb_rate_on_feedback(&r, &s);
        ck_assert_double_ge((double)fb_rate_current(&r), prev);
        prev = (double)fb_rate_current(&r);
    }
    ck_assert_uint_eq(fb_rate_current(&r), 100000000);
}
END_TEST

START_TEST(test_loss_with_rising_delay_cuts_once_per_rtt)
{
    fb_rate r;
    fb_rate_params p = {FB_POLICY_FAIR, 100000000, 0, 10000000, PKT};
    uint64_t t = 0, before, after;
    fb_rate_sample s;

    fb_rate_init(&r, &p, 0);
    for (int i = 0; i < 50; i++) { /* settle with an empty queue */
        t += 10000;
        s = sample_at(t, 0, 0, 0);
        fb_rate_on_feedback(&r, &s);
    }
    before = fb_rate_current(&r);
    t += 10000;
    s = sample_at(t, 30000, 10 * PKT, 0); /* delay jumped by 30 ms and packets were lost */
    fb_rate_on_feedback(&r, &s);
    after = fb_rate_current(&r);
    ck_assert_double_eq_tol((double)after, (double)before * 0.85, (double)before * 0.001);
    t += 10000;
    s = sample_at(t, 30000, 10 * PKT, 0); /* the same RTT: no second cut, only the delay law */
    fb_rate_on_feedback(&r, &s);
    ck_assert_double_ge((double)fb_rate_current(&r), (double)after * 0.9);
}
END_TEST

START_TEST(test_low_decreases_while_delay_exceeds_target)
{
    fb_rate r;
    fb_rate_params p = {FB_POLICY_LOW, 100000000, 1000000, 50000000, PKT};
    uint64_t t = 0, prev;
    fb_rate_sample s;

    fb_rate_init(&r, &p, 0);
    t += 10000;
    s = sample_at(t, 0, 0, 0);
    fb_rate_on_feedback(&r, &s);
    /* Quick start ends at the second feedback in a row with the queue above its exit. */
    for (int i = 0; i < 2; i++) {
        t += 10000;
        s = sample_at(t, 40000, 0, 0);
        fb_rate_on_feedback(&r, &s);
    }
    ck_assert_int_eq(fb_rate_in_quick_start(&r), 0);
    prev = fb_rate_current(&r);
    for (int i = 0; i < 300; i++) {
        t += 10000;
        s = sample_at(t, 40000, 0, 0); /* 40 ms of queue: above the 25 ms target */
        fb_rate_on_feedback(&r, &s);
        ck_assert_uint_le(fb_rate_current(&r), prev);
        prev = fb_rate_current(&r);
    }
    ck_assert_uint_eq(fb_rate_current(&r), 1000000); /* all the way to its floor */
}
END_TEST

/* Sends every packet the pacer allows at NOW (at most MAX); returns how many. */
static uint64_t pacer_burst(fb_rate *r, uint64_t now, uint64_t max)
{
    uint64_t n = 0;

    while (n < max && fb_rate_next_send_time(r, now) <= now) {
        fb_rate_on_send(r, now, PKT);
        n++;
    }
    return n;
}

START_TEST(test_pacer_spaces_packets_at_the_rate)
{
    fb_rate r;
    fb_rate_params p = {FB_POLICY_FIXED, 1452000, 0, 0, PKT}; /* 1000 packets/s */
    uint64_t now = 1000000, sent = 0;

    fb_rate_init(&r, &p, now);
    /* Over one virtual second (1 us steps would be slow; step to each send time). */
    for (int i = 0; i < 5000 && now < 2000000; i++) {
        uint64_t t = fb_rate_next_send_time(&r, now);

        if (t > now) {
            now = t;
            continue;
        }
        fb_rate_on_send(&r, now, PKT);
        sent++;
    }
    ck_assert_uint_ge(sent, 999);
    ck_assert_uint_le(sent, 1002);
    /* After idling, at most ~2 ms of credit is sent at once. */
    ck_assert_uint_le(pacer_burst(&r, now + 500000, 100), 3);
}
END_TEST

/* A sender that is descheduled for the first 4 ms of every 10 ms (a busy or virtualised host)
 * still sends at its rate: what it could not send while away is repaid at 1.25 x the rate
 * after a burst of about 2 ms, never more than 20 ms of it, and a sender that was idle for a
 * while owes nothing. */
START_TEST(test_pacer_repays_a_late_senders_debt)
{
    fb_rate r;
    fb_rate_params p = {FB_POLICY_FIXED, 1452000, 0, 0, PKT}; /* 1000 packets/s: 1 per ms */
    uint64_t now = 1000000, sent = 0, most = 0, wakes = 0;

    fb_rate_init(&r, &p, now);
    while (now < 3000000 && wakes < 10000) {
        uint64_t burst = pacer_burst(&r, now, 1000);

        wakes++;
        sent += burst;
        most = burst > most ? burst : most;
        /* never ahead of the rate by more than the burst */
        ck_assert_uint_le(sent, (now - 1000000) / 1000 + 4);
        now = fb_rate_next_send_time(&r, now);
        if (now % 10000 < 4000)
            now += 4000 - now % 10000; /* away: runs again at the end of the stall */
    }
    /* 2 s at 1000/s; forgiving only 2 ms of each stall would send 1800 */
    ck_assert_uint_ge(sent, 1980);
    ck_assert_uint_le(most, 4);

    /* Descheduled for 40 ms while busy: at most 20 ms is owed, repaid at 1.25 x. */
    now += 40000;
    {
        uint64_t t0 = now, n = 0;

        for (int i = 0; i < 100000 && now < t0 + 200000; i++) {
            uint64_t t = fb_rate_next_send_time(&r, now);

            if (t > now) {
                now = t;
                continue;
            }
            fb_rate_on_send(&r, now, PKT);
            n++;
            /* the catch-up speed: about 1.25 packets per ms after the first burst */
            ck_assert_uint_le(n, (now - t0) * 125 / 100000 + 4);
        }
        /* 200 ms at the rate plus the 20 ms owed (not the whole 40 ms) */
        ck_assert_uint_ge(n, 215);
        ck_assert_uint_le(n, 224);
    }

    /* Idle for 60 ms (nothing to send): no debt, just the burst. */
    ck_assert_uint_le(pacer_burst(&r, now + 60000, 100), 3);
}
END_TEST

START_TEST(test_silence_slows_adaptive_flows_but_not_fixed)
{
    fb_rate r, f;
    fb_rate_params p = {FB_POLICY_FAIR, 100000000, 2000000, 50000000, PKT};
    fb_rate_params pf = {FB_POLICY_FIXED, 50000000, 0, 0, PKT};
    fb_rate_sample s = sample_at(10000, 0, 0, 0);

    fb_rate_init(&r, &p, 0);
    fb_rate_init(&f, &pf, 0);
    fb_rate_on_feedback(&r, &s);
    fb_rate_on_feedback(&f, &s);
    /* 5 s without feedback while trying to send. */
    for (uint64_t t = 20000; t < 5000000; t += 1000) {
        fb_rate_on_send(&r, t, PKT);
        fb_rate_on_send(&f, t, PKT);
    }
    ck_assert_uint_eq(fb_rate_current(&r), 2000000);
    ck_assert_uint_eq(fb_rate_current(&f), 50000000);
}
END_TEST

START_TEST(test_rate_never_reaches_zero)
{
    fb_rate r;
    fb_rate_params p = {FB_POLICY_LOW, 100000000, 0, 50000000, PKT};
    fb_rate_sample s = sample_at(10000, 0, 0, 0);
    uint64_t t;

    fb_rate_init(&r, &p, 0);
    fb_rate_on_feedback(&r, &s);
    /* Minimum 0 and a path gone silent for 60 s: the rate bottoms out at 10 datagrams/s, so the
     * sender keeps probing, and the pacer always names a time within a second. */
    for (t = 20000; t < 60000000; t += 100000)
        fb_rate_on_send(&r, t, PKT);
    ck_assert_uint_eq(fb_rate_current(&r), 10 * PKT);
    ck_assert_uint_le(fb_rate_next_send_time(&r, t), t + 1000000);
}
END_TEST

START_TEST(test_set_limits_clamps_immediately)
{
    fb_rate r;
    fb_rate_params p = {FB_POLICY_FAIR, 100000000, 0, 50000000, PKT};

    fb_rate_init(&r, &p, 0);
    ck_assert_uint_eq(fb_rate_current(&r), 50000000);
    fb_rate_set_limits(&r, 0, 10000000);
    ck_assert_uint_eq(fb_rate_current(&r), 10000000);
    fb_rate_set_limits(&r, 20000000, 30000000);
    ck_assert_uint_eq(fb_rate_current(&r), 20000000);
    /* A minimum above the target is repaired to the target. */
    fb_rate_set_limits(&r, 90000000, 40000000);
    ck_assert_uint_eq(fb_rate_current(&r), 40000000);
}
END_TEST

/* ---- retransmission scheduler ---------------------------------------------------------- */

START_TEST(test_retx_sends_each_hole_once_per_interval)
{
    fb_retx x;
    fb_range out[8];
    fb_range missing[2] = {{1000, 500}, {5000, 100}};
    size_t n;

    fb_retx_init(&x);
    n = fb_retx_schedule(&x, out, 8, missing, 2, 1000000, 250000, 0, 0, UINT64_MAX);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(out[0].offset, 1000);
    ck_assert_uint_eq(out[0].length, 500);
    ck_assert_uint_eq(out[1].offset, 5000);
    ck_assert_uint_eq(out[1].length, 100);
    /* The next feedbacks within the interval still list the holes: nothing is resent. */
    for (uint64_t t = 1010000; t < 1250000; t += 10000)
        ck_assert_uint_eq(fb_retx_schedule(&x, out, 8, missing, 2, t, 250000, 0, 0, UINT64_MAX), 0);
    /* One interval later, both are due again. */
    n = fb_retx_schedule(&x, out, 8, missing, 2, 1250000, 250000, 0, 0, UINT64_MAX);
    ck_assert_uint_eq(n, 2);
}
END_TEST

START_TEST(test_retx_new_parts_and_repaired_parts)
{
    fb_retx x;
    fb_range out[8];
    fb_range first[1] = {{1000, 1000}};
    fb_range grown[2] = {{1000, 1000}, {3000, 500}};
    fb_range shrunk[1] = {{1500, 500}};
    size_t n;

    fb_retx_init(&x);
    ck_assert_uint_eq(fb_retx_schedule(&x, out, 8, first, 1, 100, 1000, 0, 0, UINT64_MAX), 1);
    /* A new hole appears: only it is due. */
    n = fb_retx_schedule(&x, out, 8, grown, 2, 200, 1000, 0, 0, UINT64_MAX);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(out[0].offset, 3000);
    ck_assert_uint_eq(out[0].length, 500);
    /* Part of the first hole was repaired; what remains keeps its time and the repaired part
     * and the vanished hole are forgotten. */
    ck_assert_uint_eq(fb_retx_schedule(&x, out, 8, shrunk, 1, 300, 1000, 0, 0, UINT64_MAX), 0);
    ck_assert_uint_eq(x.n, 1);
    ck_assert_uint_eq(x.e[0].offset, 1500);
    ck_assert_uint_eq(x.e[0].end, 2000);
    ck_assert_uint_eq(x.e[0].sent_us, 100);
    n = fb_retx_schedule(&x, out, 8, shrunk, 1, 1100, 1000, 0, 0, UINT64_MAX);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(out[0].offset, 1500);
}
END_TEST

/* A FEEDBACK that describes one group of holes among many: a repair already sent outside that
 * group waits for a FEEDBACK that describes it; one never sent there goes out. */
START_TEST(test_retx_waits_outside_the_described_part)
{
    fb_retx x;
    fb_range out[8];
    fb_range missing[2] = {{1000, 500}, {9000, 100}};
    size_t n;

    fb_retx_init(&x);
    ck_assert_uint_eq(fb_retx_schedule(&x, out, 8, missing, 1, 0, 1000, 0, 0, UINT64_MAX), 1);
    /* Later than the interval, but the FEEDBACK described only [8000, 10000): the range at
     * 1000 waits, the new one at 9000 is due. */
    n = fb_retx_schedule(&x, out, 8, missing, 2, 5000, 1000, 0, 8000, 10000);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(out[0].offset, 9000);
    /* A FEEDBACK describing [0, 2000) says it is still missing: now it is due. */
    n = fb_retx_schedule(&x, out, 8, missing, 2, 6000, 1000, 0, 0, 2000);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(out[0].offset, 1000);
    ck_assert_uint_eq(out[0].length, 500);
}
END_TEST

START_TEST(test_retx_budget_and_capacity)
{
    fb_retx x;
    fb_range out[1];
    fb_range missing[3] = {{0, 100}, {200, 100}, {400, 100}};
    size_t n;

    fb_retx_init(&x);
    /* 150 bytes of budget: the first hole and half of the second. */
    n = fb_retx_schedule(&x, out, 1, missing, 3, 10, 1000, 150, 0, UINT64_MAX);
    ck_assert_uint_eq(n, 1); /* capacity 1: the rest waits */
    ck_assert_uint_eq(out[0].offset, 0);
    ck_assert_uint_eq(out[0].length, 100);
    /* What was not scheduled is still due at once. */
    n = fb_retx_schedule(&x, out, 1, missing, 3, 20, 1000, 0, 0, UINT64_MAX);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(out[0].offset, 200);
    fb_retx_forget_below(&x, 250);
    for (unsigned i = 0; i < x.n; i++)
        ck_assert_uint_ge(x.e[i].offset, 250);
}
END_TEST

START_TEST(test_retx_overhead_stays_near_the_loss_rate)
{
    /* A receiver reports the same 1 % of holes every 10 ms for 2 s (RTT 200 ms): each hole is
     * resent about once per RTT, i.e. 10 times, not 200 times. */
    fb_retx x;
    fb_range missing[50], out[64];
    uint64_t resent = 0;

    for (int i = 0; i < 50; i++) {
        missing[i].offset = (uint64_t)i * 145200;
        missing[i].length = 1452;
    }
    fb_retx_init(&x);
    for (uint64_t t = 0; t < 2000000; t += 10000) {
        size_t n = fb_retx_schedule(&x, out, 64, missing, 50, t, 200000, 0, 0, UINT64_MAX);

        for (size_t i = 0; i < n; i++)
            resent += out[i].length;
    }
    ck_assert_uint_eq(resent, 10u * 50u * 1452u);
}
END_TEST

static Suite *rate_suite(void)
{
    Suite *s = suite_create("fb_rate");
    TCase *sim = tcase_create("simulated bottleneck");
    TCase *direct = tcase_create("controller");
    TCase *retx = tcase_create("retransmission");

    tcase_set_timeout(sim, 300);
    tcase_add_test(sim, test_fair_fills_a_lossy_long_link);
    tcase_add_test(sim, test_fair_ignores_heavy_random_loss);
    tcase_add_test(sim, test_fair_tolerates_a_busy_host);
    tcase_add_test(sim, test_fair_sees_through_delay_jitter);
    tcase_add_test(sim, test_quick_start_reaches_the_link_rate_fast);
    tcase_add_test(sim, test_fixed_holds_the_target);
    tcase_add_test(sim, test_clamps_are_respected);
    tcase_add_test(sim, test_low_backs_off_above_its_delay_target);
    tcase_add_test(sim, test_two_fair_flows_share_equally);
    tcase_add_test(sim, test_two_fair_flows_with_different_rtts_share);
    tcase_add_test(sim, test_high_takes_about_twice_fair);
    tcase_add_test(sim, test_shallow_buffer_bounds_overflow);
    tcase_add_test(sim, test_fair_competes_with_a_loss_based_flow);
    suite_add_tcase(s, sim);

    tcase_add_test(direct, test_random_loss_alone_never_lowers_the_rate);
    tcase_add_test(direct, test_quick_start_survives_a_spike_and_random_loss);
    tcase_add_test(direct, test_loss_with_rising_delay_cuts_once_per_rtt);
    tcase_add_test(direct, test_low_decreases_while_delay_exceeds_target);
    tcase_add_test(direct, test_pacer_spaces_packets_at_the_rate);
    tcase_add_test(direct, test_pacer_repays_a_late_senders_debt);
    tcase_add_test(direct, test_silence_slows_adaptive_flows_but_not_fixed);
    tcase_add_test(direct, test_set_limits_clamps_immediately);
    tcase_add_test(direct, test_rate_never_reaches_zero);
    suite_add_tcase(s, direct);

    tcase_add_test(retx, test_retx_sends_each_hole_once_per_interval);
    tcase_add_test(retx, test_retx_new_parts_and_repaired_parts);
    tcase_add_test(retx, test_retx_budget_and_capacity);
    tcase_add_test(retx, test_retx_waits_outside_the_described_part);
    tcase_add_test(retx, test_retx_overhead_stays_near_the_loss_rate);
    suite_add_tcase(s, retx);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(rate_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
