/* fb_rate: delay-based rate control, pacing and retransmission scheduling for the UDP sender.
 * The control laws and their constants are explained in fb_rate.h and docs/PROTOCOL.md
 * section 7; the unit tests drive them through a simulated bottleneck in virtual time. */
#include "fb_rate.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fb_config.h"
#include "fb_wire.h"

/* Constants of the control laws. Times in microseconds, rates in bytes/s. */
#define BASE_BUCKET_US 10000000u /* one-way-delay minimum kept per 10 s, 6 buckets: 60 s window */
#define BASE_BUCKETS 6u
#define MIN_CONTROL_RTT_US 10000u /* control time constant never shorter than 10 ms */
#define DEFAULT_RTT_US 100000u    /* assumed before the first RTT sample */
#define ALPHA_REF_RATE 12500000.0 /* alpha grows with sqrt(rate) above 100 Mbit/s */
#define FAST_GAMMA 0.5            /* fair: fraction of the error corrected per RTT */
#define MAX_UP_PER_RTT 1.0        /* at most doubling per RTT */
#define MAX_DOWN_PER_RTT 0.5      /* at most halving per RTT by delay alone */
#define LOSS_CUT_FAIR 0.85        /* congestive loss: fair and high */
#define LOSS_CUT_LOW 0.5          /* congestive loss: low */
#define QS_EXIT_MIN_US 4000       /* quick start ends once q exceeds max(this, min(alpha/x, max)) */
#define QS_EXIT_MAX_US 25000
#define QS_LOSS_EXIT 0.25           /* ... or once more than 25 % of 64 datagrams are lost */
#define RISE_MIN_US 2000            /* q counts as rising when 2 ms and 50 % above its recent min */
#define HIGH_Q_MIN_US 5000          /* ... or when above 5 ms and twice the flow's own target */
#define LOW_BACKOFF 0.5             /* low: extra decrease per RTT at twice its delay target */
#define DRAIN_INTERVAL_US 20000000u /* every 20 s, a quarter of the rate for one RTT: re-measure */
#define DRAIN_FIRST_US 3000000u     /* the first one 3 s (or 10 RTTs) after quick start */
#define DRAIN_COMPETING_US 8000000u /* every 8 s while competing: has the other flow gone? */
#define COMPETE_Q_MIN_US 10000      /* a queue under 10 ms is never another flow's worry */
#define COMPETE_KEPT 0.7            /* a drain that left 70 % of the queue: someone else holds it */
#define COMPETE_AI 0.5              /* competing: alpha_mult + 0.5 per RTT ... */
#define COMPETE_MD 0.5              /* ... x 0.5 at each congestive loss */
#define COMPETE_MULT_MAX 64.0
#define DRAIN_FACTOR 0.25           /* the delay floor (empties a queue of up to 0.75 RTT) */
#define LOSS_COMP_MAX 0.15          /* random loss compensated in the receive rate up to 15 % */
#define PROBE_GAIN 0.05             /* push of 5 % of the rate while the queue is nearly empty */
#define MAX_PUSH 0.1                /* delay law's excess over the receive rate, fraction of x */
#define DAMPING 1.0                 /* weight of (receive rate - rate) in the delay law */
#define RECV_TAU_MIN_US 40000.0     /* receive rate smoothed over max(40 ms, RTT/4) */
#define RATE_FLOOR_PACKETS 10u      /* never slower than 10 datagrams/s (below a tiny target) */
#define BURST_US 2000.0             /* pacer credit after idling or a late wake-up: 2 ms of the rate */
#define CATCHUP_MAX_US 20000.0      /* a busy sender that fell behind owes at most 20 ms of its rate */
#define CATCHUP_SPEED 1.25          /* ... and makes it up at 1.25 x the rate, after the burst */
#define IDLE_GAP_US 50000u          /* no packet for 50 ms: the sender was idle, it owes nothing */
#define SILENCE_MIN_US 200000u      /* no feedback for max(this, 2 srtt): start slowing down */
#define EXCESS_LOSS_MIN 0.005       /* congestive loss: recent loss > 2 x random loss + 0.5 % */

static double clampd(double v, double lo, double hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* Clamps to [min_rate, target_rate], and never below RATE_FLOOR_PACKETS datagrams a second
 * (unless the target itself is lower): a sender must keep some packets going to learn that
 * the path is back, and the pacer divides by the rate. */
static void clamp_rate(fb_rate *r)
{
    double lo = (double)r->p.min_rate, floor_rate = (double)RATE_FLOOR_PACKETS * r->p.packet_size;

    if (floor_rate > (double)r->p.target_rate)
        floor_rate = (double)r->p.target_rate;
    lo = lo > floor_rate ? lo : floor_rate;
    r->rate = clampd(r->rate, lo, (double)r->p.target_rate);
}

static uint64_t control_rtt(const fb_rate *r)
{
    uint64_t t = r->srtt_us ? r->srtt_us : DEFAULT_RTT_US;

    return t < MIN_CONTROL_RTT_US ? MIN_CONTROL_RTT_US : t;
}

/* Bytes of its own a flow aims to keep queued at the bottleneck ("alpha").
 *
 * FAST TCP's constant (48 packets) up to 100 Mbit/s; above, it grows with the square root of
 * the rate so the queueing delay a flow settles at (alpha / rate) stays above a millisecond,
 * measurable above the timing noise. alpha(x) / x still falls strictly as x grows, so flows
 * seeing the same queueing delay still settle at equal rates (the restoring force is weaker
 * in the square-root range). High behaves as two fair flows, low as a quarter of one and never
 * keeps more than 25 ms of queue. */
static double fair_alpha(double x, uint32_t packet_size)
{
    double a = (double)FB_RATE_FAIR_ALPHA_PACKETS * packet_size;

    return x > ALPHA_REF_RATE ? a * sqrt(x / ALPHA_REF_RATE) : a;
}

static double queue_target_bytes(const fb_rate *r)
{
    double k = r->p.policy == FB_POLICY_HIGH ? 2.0 : r->p.policy == FB_POLICY_LOW ? 0.25 : 1.0;
    /* k * alpha(x / k): the flow behaves like k fair flows sharing its rate, so it settles at
     * k times a fair flow's rate in every range of alpha(x). */
    double a = k * fair_alpha(r->rate / k, r->p.packet_size);

    if (r->competing && r->p.policy != FB_POLICY_LOW)
        a *= r->alpha_mult;

    if (r->p.policy == FB_POLICY_LOW) {
        double cap = r->rate * (double)FB_RATE_LOW_TARGET_US / 1e6;

        a = a < cap ? a : cap;
    }
    return a;
}

/* The queueing delay this flow settles at, in us. */
static double own_target_us(const fb_rate *r)
{
    return queue_target_bytes(r) / r->rate * 1e6;
}

void fb_rate_init(fb_rate *r, const fb_rate_params *p, uint64_t now_us)
{
    memset(r, 0, sizeof(*r));
    r->p = *p;
    if (r->p.policy != FB_POLICY_FIXED && r->p.policy != FB_POLICY_HIGH && r->p.policy != FB_POLICY_FAIR &&
        r->p.policy != FB_POLICY_LOW)
        r->p.policy = FB_POLICY_FAIR;
    if (r->p.target_rate == 0)
        r->p.target_rate = 1;
    if (r->p.min_rate > r->p.target_rate)
        r->p.min_rate = r->p.target_rate;
    if (r->p.packet_size == 0)
        r->p.packet_size = FB_WIRE_DEFAULT_DATAGRAM;
    if (r->p.initial_rate == 0)
        r->p.initial_rate = FB_RATE_DEFAULT_INITIAL;
    if (r->p.policy == FB_POLICY_FIXED) {
        r->rate = (double)r->p.target_rate;
    } else {
        r->rate = (double)r->p.initial_rate;
        r->quick_start = 1;
    }
    clamp_rate(r);
    r->last_update_us = now_us;
    r->last_feedback_us = now_us;
    r->last_decay_us = now_us;
    r->next_drain_us = now_us + DRAIN_INTERVAL_US;
    r->alpha_mult = 1.0;
    r->next_send_us = (double)now_us;
}

void fb_rate_set_limits(fb_rate *r, uint64_t min_rate, uint64_t target_rate)
{
    r->p.target_rate = target_rate ? target_rate : 1;
    r->p.min_rate = min_rate > r->p.target_rate ? r->p.target_rate : min_rate;
    if (r->p.policy == FB_POLICY_FIXED)
        r->rate = (double)r->p.target_rate;
    clamp_rate(r);
}

/* Windowed minimum of the one-way delay, in buckets so old minima expire (route changes,
 * clock drift). */
static int64_t base_owd_update(fb_rate *r, int64_t owd, uint64_t now)
{
    int64_t m;

    if (!r->have_owd) {
        for (unsigned i = 0; i < BASE_BUCKETS; i++)
            r->base_owd[i] = owd;
        r->base_bucket_us = now;
        r->have_owd = 1;
    }
    if (now - r->base_bucket_us >= BASE_BUCKET_US) {
        r->base_idx = (r->base_idx + 1) % BASE_BUCKETS;
        r->base_owd[r->base_idx] = owd;
        r->base_bucket_us = now;
    }
    if (owd < r->base_owd[r->base_idx])
        r->base_owd[r->base_idx] = owd;
    m = r->base_owd[0];
    for (unsigned i = 1; i < BASE_BUCKETS; i++)
        if (r->base_owd[i] < m)
            m = r->base_owd[i];
    return m;
}

static void update_delay(fb_rate *r, const fb_rate_sample *s)
{
    int64_t q, newest;

    if (s->rtt_us > 0) {
        r->srtt_us = r->srtt_us == 0 ? s->rtt_us : (7 * r->srtt_us + s->rtt_us) / 8;
        if (r->min_rtt_us == 0 || s->rtt_us < r->min_rtt_us)
            r->min_rtt_us = s->rtt_us;
    }
    if (s->has_owd) {
        int64_t smallest = s->owd_us - (int64_t)s->owd_lag_us, base = base_owd_update(r, smallest, s->now_us);

        q = smallest - base;
        newest = s->owd_us - base;
    } else if (s->rtt_us > 0 && r->min_rtt_us > 0) {
        q = newest = (int64_t)(s->rtt_us - r->min_rtt_us);
    } else {
        return;
    }
    r->qdelay_us = q < 0 ? 0 : q;
    r->qdelay_newest_us = newest < r->qdelay_us ? r->qdelay_us : newest;
    q = r->qdelay_us;
    /* Minimum q over the last one to two RTTs: the reference for "the delay is rising". */
    if (!r->have_q) {
        r->qmin_cur_us = r->qmin_prev_us = q;
        r->qmin_since_us = s->now_us;
        r->qmax_cur_us = r->qmax_prev_us = q;
        r->qmax_since_us = s->now_us;
        r->have_q = 1;
    } else if (s->now_us - r->qmin_since_us >= control_rtt(r)) {
        r->qmin_prev_us = r->qmin_cur_us;
        r->qmin_cur_us = q;
        r->qmin_since_us = s->now_us;
    } else if (q < r->qmin_cur_us) {
        r->qmin_cur_us = q;
    }
    /* Maximum q over the last four to eight RTTs: how full the bottleneck gets. */
    if (s->now_us - r->qmax_since_us >= 4 * control_rtt(r)) {
        r->qmax_prev_us = r->qmax_cur_us;
        r->qmax_cur_us = q;
        r->qmax_since_us = s->now_us;
    } else if (q > r->qmax_cur_us) {
        r->qmax_cur_us = q;
    }
}

/* Weight of a rate sample covering DT us in the smoothed receive and send rates: their time
 * constant is a quarter of an RTT, at least RECV_TAU_MIN_US. */
static double rate_weight(const fb_rate *r, double dt)
{
    double tau = (double)control_rtt(r) / 4;

    tau = tau < RECV_TAU_MIN_US ? RECV_TAU_MIN_US : tau;
    return dt < tau ? dt / tau : 1.0;
}

/* Smoothed rate at which this flow's packets reach the receiver, lost ones included (a random
 * loss still passed the bottleneck), over about a quarter of an RTT. */
static void update_recv(fb_rate *r, const fb_rate_sample *s, uint64_t prev_feedback_us)
{
    double arrived, dt, lossf;

    /* Only losses while the queue is well below its recent maximum can be told apart from an
     * overflowing buffer: learn the random loss rate from those alone. Counting overflow as
     * random would let the rate settle above the capacity, the excess simply lost. */
    int64_t qmax = r->qmax_cur_us > r->qmax_prev_us ? r->qmax_cur_us : r->qmax_prev_us;

    if (s->acked_bytes + s->lost_bytes > 0) {
        double p = (double)s->lost_bytes / (double)(s->acked_bytes + s->lost_bytes);
        double w = s->now_us > prev_feedback_us
                       ? (double)(s->now_us - prev_feedback_us) / (double)control_rtt(r)
                       : 0.0;

        if (r->have_q && r->qdelay_us * 2 < qmax)
            r->loss_avg += (p - r->loss_avg) / 16;
        r->loss_recent += (p - r->loss_recent) * (w < 1.0 ? w : 1.0); /* over about an RTT */
    }
    /* A drain's dip reaches the receive rate up to one RTT after the drain ends: ignore it. */
    if (s->recv_rate == 0 || s->now_us < r->recv_frozen_until_us)
        return;
    lossf = r->loss_avg < LOSS_COMP_MAX ? r->loss_avg : LOSS_COMP_MAX;
    arrived = (double)s->recv_rate / (1.0 - lossf);
    r->recv_last = arrived;
    if (!r->have_recv) {
        r->recv_avg = arrived;
        r->have_recv = 1;
        return;
    }
    dt = s->now_us > prev_feedback_us ? (double)(s->now_us - prev_feedback_us) : 0.0;
    r->recv_avg += (arrived - r->recv_avg) * rate_weight(r, dt);
}

/* Smoothed rate at which this sender's datagrams actually left, with the receive rate's time
 * constant (for rate traces: a process that is descheduled, on a busy or virtualised host,
 * sends less than its pacer allows, and this shows by how much). */
static void update_send(fb_rate *r, uint64_t now_us, uint64_t prev_feedback_us)
{
    double dt = now_us > prev_feedback_us ? (double)(now_us - prev_feedback_us) : 0.0, sample;

    if (dt <= 0.0)
        return;
    sample = r->sent_since_fb * 1e6 / dt;
    r->sent_since_fb = 0;
    if (!r->have_send) {
        r->send_avg = sample;
        r->have_send = 1;
        return;
    }
    r->send_avg += (sample - r->send_avg) * rate_weight(r, dt);
}

/* Congestion, as opposed to random loss: the queue grew with the loss, or it is well above
 * what this flow aims at (another flow is filling it). */
static int delay_says_congested(const fb_rate *r)
{
    int64_t qmin = r->qmin_cur_us < r->qmin_prev_us ? r->qmin_cur_us : r->qmin_prev_us;
    int64_t rise = qmin / 2 > RISE_MIN_US ? qmin / 2 : RISE_MIN_US;
    if (!r->have_q)
        return 0;
    if (r->quick_start && r->qdelay_newest_us >= qmin + rise)
        return 1;
    return r->qdelay_us > HIGH_Q_MIN_US && (double)r->qdelay_us > 2.0 * own_target_us(r);
}

static double quick_start_exit_us(const fb_rate *r)
{
    double t;

    if (r->p.policy == FB_POLICY_LOW)
        return (double)FB_RATE_LOW_TARGET_US / 2;
    t = own_target_us(r);
    t = t > QS_EXIT_MAX_US ? QS_EXIT_MAX_US : t;
    return t < QS_EXIT_MIN_US ? QS_EXIT_MIN_US : t;
}

/* Loss over about the last RTT above the random loss learnt while the queue was low: a buffer
 * overflowing adds to it, random loss alone does not (every feedback of a 1 %-lossy path has a
 * loss or two, and a queue-delay spike beside one is no evidence). */
static int loss_in_excess(const fb_rate *r)
{
    return r->loss_recent > 2.0 * r->loss_avg + EXCESS_LOSS_MIN;
}

/* One step of the delay law over DT microseconds with control time constant T. */
static void delay_step(fb_rate *r, double dt, double T)
{
    double x = r->rate, q = (double)r->qdelay_us / 1e6, frac = dt / T, Ts = T / 1e6, dx;
    double gain = r->p.policy == FB_POLICY_HIGH ? 2.0 * FAST_GAMMA : FAST_GAMMA;

    /* FAST TCP in rate form: the "window" error (target - own queued bytes) corrected at GAMMA
     * per RTT. A rate, unlike a window, is not self-clocked: the queue integrates the excess
     * and the loop would oscillate. The second term damps it by pulling the rate towards what
     * actually arrives at the receiver (counting random losses as arrived). */
    dx = gain * (queue_target_bytes(r) - x * q) / Ts;
    /* Probing: while the queue is under half the target (the link has room, e.g. after a drain
     * or when another flow left), also push by a share of the rate, so a long fat path is
     * refilled in a few RTTs rather than by FAST's additive steps. Proportional to x, it keeps
     * the ratio between flows and so does not disturb fairness. */
    if (q < 0.5 * own_target_us(r) / 1e6) {
        double probe = PROBE_GAIN * x * (1.0 - q / (0.5 * own_target_us(r) / 1e6));

        dx = dx > probe ? dx : probe;
    }
    /* The push above the receive rate is at most a tenth of the rate: where the buffer is
     * shorter than the queue target (a policer, a shallow switch) this bounds the overflow. */
    if (dx > MAX_PUSH * x)
        dx = MAX_PUSH * x;
    /* Damping only where the queue integrates an excess: below the target the link has room,
     * and a receive rate under the rate is lag (it trails an increase by an RTT), noise, or a
     * sender that fell behind its pacer (a busy host), not a capacity: following it there would
     * stall probing. Unless the loss says a buffer overflows (one shorter than the target). */
    if (r->have_recv && (q >= own_target_us(r) / 1e6 || loss_in_excess(r)))
        dx += DAMPING * (r->recv_avg - x);
    /* LEDBAT's fast decrease: above 25 ms of queue, low gives way quickly, towards its floor. */
    if (r->p.policy == FB_POLICY_LOW && q * 1e6 > FB_RATE_LOW_TARGET_US)
        dx -= LOW_BACKOFF * x * clampd((q * 1e6 - FB_RATE_LOW_TARGET_US) / FB_RATE_LOW_TARGET_US, 0.0, 1.0);
    dx = clampd(dx * frac, -MAX_DOWN_PER_RTT * x * frac, MAX_UP_PER_RTT * x * frac);
    r->rate = x + dx;
}

static uint64_t first_drain_us(const fb_rate *r)
{
    uint64_t t = 10 * control_rtt(r);

    return t > DRAIN_FIRST_US ? t : DRAIN_FIRST_US;
}

/* After a drain: did the queue empty? A flow alone, or among delay-based flows, takes its own
 * share out of the queue (half of it with two equal flows). A queue that stayed (70 % to enter,
 * 40 % to stay: a competing flow's own share leaves with its drain) is held by a flow that fills
 * the buffer whatever the delay, which a delay law would yield everything to: compete with it,
 * Reno-like, until a drain finds the queue gone (Copa's mode switch, found by our own drain). */
static void watch_drain(fb_rate *r, uint64_t now)
{
    if (r->drain_watch_until_us == 0 || now < r->drain_watch_from_us)
        return;
    if (now < r->drain_watch_until_us) {
        if (r->qdelay_us < r->drain_qmin_us)
            r->drain_qmin_us = r->qdelay_us;
        return;
    }
    r->drain_watch_until_us = 0;
    if (r->drain_qmin_us == INT64_MAX || r->p.policy == FB_POLICY_LOW || r->p.policy == FB_POLICY_FIXED)
        return;
    if (r->drain_q_before_us > COMPETE_Q_MIN_US &&
        (double)r->drain_qmin_us > (r->competing ? 0.4 : COMPETE_KEPT) * (double)r->drain_q_before_us) {
        if (!r->competing) {
            r->competing = 1;
            r->alpha_mult = 1.0;
            r->last_mult_us = now;
        }
        r->next_drain_us = now + DRAIN_COMPETING_US;
    } else {
        r->competing = 0;
        r->alpha_mult = 1.0;
    }
}

void fb_rate_on_feedback(fb_rate *r, const fb_rate_sample *s)
{
    double T, dt;

    update_delay(r, s);
    update_recv(r, s, r->last_feedback_us);
    update_send(r, s->now_us, r->last_feedback_us);
    if (!r->have_feedback) {
        r->have_feedback = 1;
        r->low_q_since_us = s->now_us;
    }
    r->last_feedback_us = s->now_us;
    r->last_decay_us = s->now_us;
    if (r->p.policy == FB_POLICY_FIXED) {
        r->rate = (double)r->p.target_rate;
        r->last_update_us = s->now_us;
        return;
    }
    T = (double)control_rtt(r);
    dt = s->now_us > r->last_update_us ? (double)(s->now_us - r->last_update_us) : 0.0;
    if (dt > T)
        dt = T; /* a long gap is not a licence for a huge step */
    r->last_update_us = s->now_us;

    if (r->quick_start) {
        /* Loss with a rising delay ends it only when the loss is above the path's random loss:
         * on a 1 %-lossy path nearly every FEEDBACK reports a loss, and a 2 ms wobble of the
         * delay beside one would end quick start at a fraction of the link. */
        int congested = s->lost_bytes > 0 && delay_says_congested(r) && loss_in_excess(r);
        /* Heavy loss ends quick start even when the delay cannot rise (a full, shallow queue
         * held by other flows, or a policer): doubling on would flood it. */
        int flooding = 0;

        /* Judged over at least 64 datagrams, so random loss at a low rate does not. */
        r->qs_acked += s->acked_bytes;
        r->qs_lost += s->lost_bytes;
        if (r->qs_acked + r->qs_lost >= 64u * r->p.packet_size) {
            /* two such windows in a row: the first datagrams of a transfer may meet a receiver
             * still opening its files, which is no statement about the path */
            r->qs_flood = (double)r->qs_lost > QS_LOSS_EXIT * (double)(r->qs_acked + r->qs_lost) ? r->qs_flood + 1 : 0;
            flooding = r->qs_flood >= 2;
            r->qs_acked = r->qs_lost = 0;
        }

        /* The queue counts as building on two feedbacks in a row above the exit delay: one
         * alone may be a host's scheduling hiccup, not the path. */
        if (r->have_q && (double)r->qdelay_newest_us > quick_start_exit_us(r))
            r->qs_high++;
        else
            r->qs_high = 0;
        if (congested || flooding || r->qs_high >= 2) {
            /* The queue is building: we overshot by up to one RTT of doubling. Go back to about
             * the rate of one RTT ago, or what the receiver gets if more, and let the delay law
             * drain the rest. */
            double back = r->rate / 2;

            r->quick_start = 0;
            if (r->have_recv && (r->recv_avg > back || flooding))
                back = r->recv_avg;
            /* With the queue building, what arrives is the bottleneck's rate: resume there,
             * not at half the overshoot (probing back up from there takes many RTTs on a long
             * path). The delay law drains the queue the overshoot left. */
            if (r->have_recv && !flooding && r->recv_last > back)
                back = r->recv_last;
            r->rate = back < r->rate ? back : r->rate;
            r->next_drain_us = s->now_us + first_drain_us(r);
        } else {
            r->rate *= exp2(dt / T);
            if (r->rate >= (double)r->p.target_rate) {
                r->quick_start = 0;
                r->next_drain_us = s->now_us + first_drain_us(r);
            }
        }
    } else if (r->drain_until_us != 0) {
        /* Draining: hold a quarter of the rate for one RTT so the queue empties and the delay floor is
         * measured afresh, then resume where we were. */
        if (s->now_us >= r->drain_until_us) {
            r->rate = r->drain_saved_rate;
            r->drain_until_us = 0;
            r->next_drain_us = s->now_us + (r->competing ? DRAIN_COMPETING_US : DRAIN_INTERVAL_US);
        }
    } else if (r->have_q && s->now_us >= r->next_drain_us) {
        int64_t qb = r->qmin_cur_us < r->qmin_prev_us ? r->qmin_cur_us : r->qmin_prev_us;

        /* A standing queue would otherwise end up in the windowed minimum of the one-way delay
         * (it keeps 60 s) and be mistaken for propagation delay, and queues would creep up
         * (BBR's ProbeRTT and LEDBAT++'s slowdowns address the same problem). */
        r->drain_saved_rate = r->rate;
        r->rate *= DRAIN_FACTOR;
        r->drain_until_us = s->now_us + control_rtt(r);
        r->recv_frozen_until_us = s->now_us + 2 * control_rtt(r) + FB_RATE_FEEDBACK_INTERVAL_US;
        /* Its effect on the queue shows in the FEEDBACK of the RTT after it. */
        r->drain_q_before_us = qb;
        r->drain_qmin_us = INT64_MAX;
        r->drain_watch_from_us = r->drain_until_us + FB_RATE_FEEDBACK_INTERVAL_US;
        r->drain_watch_until_us = r->recv_frozen_until_us;
    } else if (s->lost_bytes > 0 && delay_says_congested(r) && loss_in_excess(r) &&
               s->now_us - r->last_cut_us >= control_rtt(r)) {
        r->rate *= r->p.policy == FB_POLICY_LOW ? LOSS_CUT_LOW : LOSS_CUT_FAIR;
        r->last_cut_us = s->now_us;
        if (r->competing) {
            r->alpha_mult *= COMPETE_MD;
            r->alpha_mult = r->alpha_mult < 1.0 ? 1.0 : r->alpha_mult;
        }
    } else if (r->have_q) {
        delay_step(r, dt, T);
        if (r->competing && s->now_us - r->last_mult_us >= control_rtt(r)) {
            r->alpha_mult += COMPETE_AI;
            r->alpha_mult = r->alpha_mult > COMPETE_MULT_MAX ? COMPETE_MULT_MAX : r->alpha_mult;
            r->last_mult_us = s->now_us;
        }
    }
    watch_drain(r, s->now_us);
    clamp_rate(r);
}

void fb_rate_on_send(fb_rate *r, uint64_t now_us, size_t bytes)
{
    double start, now = (double)now_us;
    uint64_t silence_limit = 2 * control_rtt(r) > SILENCE_MIN_US ? 2 * control_rtt(r) : SILENCE_MIN_US;

    /* No feedback for a while: the path may be gone or badly congested. Halve per RTT. */
    if (r->p.policy != FB_POLICY_FIXED && r->have_feedback && now_us > r->last_feedback_us &&
        now_us - r->last_feedback_us > silence_limit && now_us - r->last_decay_us >= control_rtt(r)) {
        r->rate *= 0.5;
        r->quick_start = 0;
        r->last_decay_us = now_us;
        clamp_rate(r);
    }
    /* Two clocks. NEXT_SEND is the schedule at the rate: a sender that kept sending but was
     * woken late or descheduled (a busy or virtualised host) stays in debt to it, up to
     * CATCHUP_MAX_US, instead of losing what it could not send; one that sent nothing for a
     * while was idle (no data, waiting for feedback) and owes nothing. CATCH_NEXT spaces
     * packets at CATCHUP_SPEED times the rate with BURST_US of credit: the debt beyond one burst
     * is repaid at a quarter above the rate, which a bottleneck absorbs as a queue of a quarter
     * of the debt at most, rather than landing on it at once. */
    if (!r->started || now_us - r->last_send_us > IDLE_GAP_US) {
        if (!r->started)
            start = now;
        else
            start = r->next_send_us > now - BURST_US ? r->next_send_us : now - BURST_US;
        r->catch_next_us = start;
        r->started = 1;
    } else {
        start = r->next_send_us > now - CATCHUP_MAX_US ? r->next_send_us : now - CATCHUP_MAX_US;
    }
    r->next_send_us = start + (double)bytes * 1e6 / r->rate;
    start = r->catch_next_us > now - BURST_US ? r->catch_next_us : now - BURST_US;
    r->catch_next_us = start + (double)bytes * 1e6 / (CATCHUP_SPEED * r->rate);
    r->last_send_us = now_us;
    r->sent_since_fb += (double)bytes;
}

uint64_t fb_rate_next_send_time(const fb_rate *r, uint64_t now_us)
{
    double t = r->next_send_us > r->catch_next_us ? r->next_send_us : r->catch_next_us;

    if (!r->started || t <= (double)now_us)
        return now_us;
    return (uint64_t)ceil(t);
}

uint64_t fb_rate_current(const fb_rate *r)
{
    return (uint64_t)r->rate;
}

uint64_t fb_rate_srtt(const fb_rate *r)
{
    return r->srtt_us;
}

uint64_t fb_rate_queue_delay(const fb_rate *r)
{
    return r->have_q ? (uint64_t)r->qdelay_us : 0;
}

int fb_rate_in_quick_start(const fb_rate *r)
{
    return r->quick_start;
}

/* ---- retransmission scheduler ---------------------------------------------------------- */

void fb_retx_init(fb_retx *x)
{
    memset(x, 0, sizeof(*x));
}

typedef struct retx_build {
    fb_retx_entry *e; /* the table being rebuilt (the scheduler's scratch half) */
    unsigned n;
    fb_range *out;
    size_t cap, nout;
    uint64_t budget; /* UINT64_MAX = unlimited */
    uint64_t now;
} retx_build;

static void retx_record(retx_build *b, uint64_t s, uint64_t e, uint64_t t)
{
    if (b->n > 0 && b->e[b->n - 1].end == s && b->e[b->n - 1].sent_us == t) {
        b->e[b->n - 1].end = e;
        return;
    }
    if (b->n == FB_RETX_MAX)
        return; /* full: this part may go out again early; wasteful, never wrong */
    b->e[b->n].offset = s;
    b->e[b->n].end = e;
    b->e[b->n].sent_us = t;
    b->n++;
}

static void retx_due(retx_build *b, uint64_t s, uint64_t e)
{
    uint64_t len = e - s;

    if (b->budget == 0 || len == 0)
        return;
    if (len > b->budget)
        len = b->budget;
    if (b->nout > 0 && b->out[b->nout - 1].offset + b->out[b->nout - 1].length == s) {
        b->out[b->nout - 1].length += len;
    } else {
        if (b->nout == b->cap)
            return;
        b->out[b->nout].offset = s;
        b->out[b->nout].length = len;
        b->nout++;
    }
    if (b->budget != UINT64_MAX)
        b->budget -= len;
    retx_record(b, s, s + len, b->now);
}

size_t fb_retx_schedule(fb_retx *x, fb_range *out, size_t cap, const fb_range *missing, size_t nmissing,
                        uint64_t now_us, uint64_t interval_us, uint64_t max_bytes, uint64_t fresh_from,
                        uint64_t fresh_to)
{
    retx_build b;
    unsigned j = 0;

    memset(&b, 0, sizeof(b));
    b.e = x->scratch;
    b.out = out;
    b.cap = out == NULL ? 0 : cap;
    b.budget = max_bytes == 0 ? UINT64_MAX : max_bytes;
    b.now = now_us;
    for (size_t i = 0; i < nmissing; i++) {
        uint64_t pos = missing[i].offset, end;

        if (missing[i].length == 0 || missing[i].offset > UINT64_MAX - missing[i].length)
            continue;
        end = missing[i].offset + missing[i].length;
        while (j < x->n && x->e[j].end <= pos)
            j++;
        while (pos < end) {
            if (j < x->n && x->e[j].offset <= pos) {
                uint64_t seg_end = x->e[j].end < end ? x->e[j].end : end;
                uint64_t sent = x->e[j].sent_us;
                /* outside what the receiver just described, a repair already sent waits: it
                 * may have arrived, and the FEEDBACK that would say so is still to come */
                int fresh = now_us < sent || now_us - sent < interval_us || pos < fresh_from || pos >= fresh_to;

                if (fresh)
                    retx_record(&b, pos, seg_end, sent);
                else
                    retx_due(&b, pos, seg_end);
                pos = seg_end;
                if (x->e[j].end <= pos)
                    j++;
            } else {
                uint64_t next = j < x->n && x->e[j].offset < end ? x->e[j].offset : end;

                retx_due(&b, pos, next);
                pos = next;
            }
        }
    }
    memcpy(x->e, b.e, b.n * sizeof(b.e[0]));
    x->n = b.n;
    return b.nout;
}

void fb_retx_forget_below(fb_retx *x, uint64_t offset)
{
    unsigned k = 0;

    for (unsigned i = 0; i < x->n; i++) {
        if (x->e[i].end <= offset)
            continue;
        x->e[k] = x->e[i];
        if (x->e[k].offset < offset)
            x->e[k].offset = offset;
        k++;
    }
    x->n = k;
}
