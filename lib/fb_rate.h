/* fb_rate: the sender's rate controller, pacer and retransmission scheduler for the UDP fast
 * path (DESIGN.md section 6; docs/PROTOCOL.md section 7).
 *
 * Rate-based and paced, fed by the receiver's FEEDBACK, driven by queueing delay rather than
 * loss, so random loss costs only its retransmission. Queueing delay q is the one-way delay
 * sample minus its windowed minimum (the clock offset between the hosts cancels out), or the
 * RTT above its minimum when no one-way sample is given. The control law uses the smallest
 * one-way delay since the previous FEEDBACK (the queue that stays, not the one a paced burst
 * builds behind its own first datagrams, nor a relay's or host's delay hiccup); quick start's
 * exit uses the newest (a queue growing fast). Policies:
 *
 *   fixed  hold the target rate whatever the network does;
 *   fair   keep ALPHA bytes of its own queued at the bottleneck (FAST TCP's equilibrium, in rate
 *          form): it increases while q is below ALPHA/rate and decreases in proportion to the
 *          excess. Every flow through a bottleneck sees the same q, so each settles at
 *          ALPHA/q: equal shares whatever their RTTs. Loss cuts the rate (x0.85, once per RTT)
 *          only when the delay rose with it (a congested queue overflowing), never alone;
 *   high   the fair law with twice ALPHA and twice the gain: about twice a fair flow's share;
 *   low    LEDBAT-like scavenger: aims at 25 ms of queueing delay, backs off quickly above it
 *          (towards the minimum rate), so loss-based TCP, which fills queues, always wins.
 *
 * Every flow starts with quick start (rate doubling per RTT from an initial rate until the
 * queueing delay rises), is clamped to [min_rate, target_rate], and, except fixed, slows down
 * when feedback stops (halving per RTT of silence, down to min_rate).
 *
 * Pure code: no I/O, no clock (every call takes the current time in microseconds of one
 * monotonic clock), no allocation; deterministic for the same inputs. */
#ifndef FB_RATE_H
#define FB_RATE_H

#include <stddef.h>
#include <stdint.h>

#include "fb_range.h"

#define FB_RATE_FEEDBACK_INTERVAL_US 10000u /* receivers send FEEDBACK this often (or RTT/4) */
#define FB_RATE_DEFAULT_INITIAL 1048576u    /* bytes/s quick start begins at (8 Mbit/s) */
#define FB_RATE_LOW_TARGET_US 25000u        /* queueing delay the low policy aims at */
#define FB_RATE_FAIR_ALPHA_PACKETS 48u      /* fair: packets of its own kept queued */

typedef struct fb_rate_params {
    unsigned policy;       /* one FB_POLICY_* bit (fb_config.h) */
    uint64_t target_rate;  /* bytes/s, > 0: the ceiling (and the fixed rate) */
    uint64_t min_rate;     /* bytes/s: the floor (<= target_rate) */
    uint64_t initial_rate; /* bytes/s quick start begins at; 0 = FB_RATE_DEFAULT_INITIAL */
    uint32_t packet_size;  /* typical datagram size in bytes; 0 = FB_WIRE_DEFAULT_DATAGRAM */
} fb_rate_params;

/* What the sender learned from one FEEDBACK. */
typedef struct fb_rate_sample {
    uint64_t now_us;      /* when it arrived */
    uint64_t acked_bytes; /* payload bytes newly known received since the previous feedback */
    uint64_t lost_bytes;  /* payload bytes newly reported missing (each hole counted once) */
    uint64_t rtt_us;      /* now - echo_ts - hold; 0 = no sample */
    int has_owd;          /* owd_us is valid */
    int64_t owd_us;       /* echo_recv_ts - echo_ts: one-way delay plus the clocks' offset */
    uint32_t owd_lag_us;  /* how much owd_us exceeds the smallest one-way delay of the DATA that
                           * arrived since the previous FEEDBACK (FEEDBACK's delay lag) */
    uint64_t recv_rate;   /* bytes/s measured by the receiver; 0 = unknown */
} fb_rate_sample;

typedef struct fb_rate {
    fb_rate_params p;
    double rate;                /* bytes/s, the pacing rate */
    int quick_start;            /* 1 while ramping exponentially */
    uint64_t qs_acked, qs_lost; /* bytes acknowledged / lost in the current quick-start window */
    unsigned qs_high;           /* feedbacks in a row with the queue above quick start's exit */
    unsigned qs_flood;          /* 64-datagram windows in a row with more than 25 % lost */
    uint64_t srtt_us;           /* smoothed RTT (0 = no sample yet) */
    uint64_t min_rtt_us;
    int have_owd;
    int64_t base_owd[6];     /* windowed minimum of one-way delay: one bucket per 10 s */
    uint64_t base_bucket_us; /* start of the current bucket */
    unsigned base_idx;
    int64_t qdelay_us;        /* latest queueing delay estimate: the standing queue (the
                               * smallest delay since the previous FEEDBACK) */
    int64_t qdelay_newest_us; /* the newest DATA's queueing delay (quick start's exit) */
    int have_q;
    int64_t qmin_cur_us, qmin_prev_us; /* min q over the current and previous RTT-long period */
    uint64_t qmin_since_us;
    int64_t qmax_cur_us, qmax_prev_us; /* max q over the current and previous 4-RTT period */
    uint64_t qmax_since_us;
    uint64_t last_update_us; /* last control step */
    uint64_t last_cut_us;    /* last loss-triggered decrease (once per RTT) */
    uint64_t last_feedback_us;
    int have_feedback;
    uint64_t low_q_since_us; /* last time q was above a quarter of this flow's target */
    uint64_t last_decay_us;  /* last silence-triggered decrease */
    uint64_t next_drain_us;  /* next periodic drain (re-measures the delay floor) */
    uint64_t drain_until_us; /* end of the drain under way, 0 = none */
    double drain_saved_rate;
    uint64_t recv_frozen_until_us; /* receive-rate updates ignored until then (after a drain) */
    int have_recv;
    double recv_avg;     /* smoothed arrival rate at the receiver, losses included */
    double recv_last;    /* the latest arrival rate sample, losses included */
    double loss_avg;     /* smoothed random-loss fraction (learnt while the queue is low) */
    double loss_recent;  /* loss fraction over about the last RTT */
    /* Competing with a flow that fills the buffer (loss-based TCP): found by a drain that did
     * not empty the queue; the queue target is then multiplied by alpha_mult, which grows
     * additively per RTT and halves at each congestive loss (Reno's AIMD, on the target). */
    int competing;
    double alpha_mult;
    uint64_t last_mult_us;      /* last additive step of alpha_mult */
    int64_t drain_q_before_us;  /* queueing delay when the last drain began */
    int64_t drain_qmin_us;      /* lowest queueing delay its effect showed */
    uint64_t drain_watch_from_us, drain_watch_until_us; /* when the drain's effect shows */
    double sent_since_fb; /* datagram bytes sent since the last FEEDBACK */
    double send_avg;      /* smoothed rate at which datagrams actually left (a descheduled sender
                           * falls behind its pacer), over the receive rate's time constant;
                           * reported in rate traces, not used by the control law */
    int have_send;
    double next_send_us;  /* pacer: when the next packet is due at the rate (may lie behind
                           * now by up to the catch-up allowance) */
    double catch_next_us; /* pacer: earliest time of the next packet at the catch-up speed */
    uint64_t last_send_us; /* when the last packet left */
    int started;          /* any packet sent */
} fb_rate;

/* Sets up a controller at NOW_US. Invalid parameters are repaired (policy defaults to fair,
 * min <= target, target >= 1), never refused: the server has validated them already. */
void fb_rate_init(fb_rate *r, const fb_rate_params *p, uint64_t now_us);

/* Changes the clamps during a transfer (the server's caps, or the user). */
void fb_rate_set_limits(fb_rate *r, uint64_t min_rate, uint64_t target_rate);

/* Feeds one FEEDBACK. */
void fb_rate_on_feedback(fb_rate *r, const fb_rate_sample *s);

/* Tells the pacer a datagram of BYTES left at NOW_US. Also applies the silence back-off. */
void fb_rate_on_send(fb_rate *r, uint64_t now_us, size_t bytes);

/* Earliest time (us) the next datagram may leave; <= NOW_US means now. A sender may send up
 * to about 2 ms of its rate as one burst (a GSO batch) after being idle or woken late. A sender
 * that was busy but fell behind (woken late, descheduled) catches up what it owes, up to 20 ms
 * of its rate, at 1.25 times the rate after that burst, instead of losing it. */
uint64_t fb_rate_next_send_time(const fb_rate *r, uint64_t now_us);

/* The pacing rate in bytes/s. */
uint64_t fb_rate_current(const fb_rate *r);
uint64_t fb_rate_srtt(const fb_rate *r);
/* Latest queueing-delay estimate in us (0 before any sample). */
uint64_t fb_rate_queue_delay(const fb_rate *r);
int fb_rate_in_quick_start(const fb_rate *r);

/* ---- retransmission scheduler ----------------------------------------------------------
 * Remembers when each missing byte range was last retransmitted, so that a hole reported
 * again and again by successive FEEDBACKs (it takes an RTT for the repair to arrive) is sent
 * about once per RTT, not once per feedback: redundant data stays close to the loss rate. */
#define FB_RETX_MAX 4096u

typedef struct fb_retx_entry {
    uint64_t offset, end; /* [offset, end) */
    uint64_t sent_us;     /* when last (re)transmitted */
} fb_retx_entry;

typedef struct fb_retx {
    fb_retx_entry e[FB_RETX_MAX];       /* sorted by offset, disjoint */
    fb_retx_entry scratch[FB_RETX_MAX]; /* where fb_retx_schedule builds the next table */
    unsigned n;
} fb_retx;

void fb_retx_init(fb_retx *x);

/* Given the receiver's missing ranges MISSING (sorted, disjoint; as in a FEEDBACK), writes into
 * OUT (capacity CAP) the parts due for retransmission at NOW_US: never retransmitted, or last
 * sent at least INTERVAL_US ago (use about srtt * 1.25 plus the feedback interval). They are
 * recorded as sent at NOW_US; ranges no longer missing are forgotten. At most MAX_BYTES are
 * scheduled (0 = no limit), so repair can be paced inside the rate. Returns the count written.
 * The receiver described only [FRESH_FROM, FRESH_TO) just now (0, UINT64_MAX: everything; a
 * FEEDBACK listing one group of holes among many: that group): outside it, a part already
 * retransmitted waits until a FEEDBACK describes it again. When the table is full, parts past
 * its capacity are not remembered (they may go out again early: wasteful, never wrong). */
size_t fb_retx_schedule(fb_retx *x, fb_range *out, size_t cap, const fb_range *missing, size_t nmissing,
                        uint64_t now_us, uint64_t interval_us, uint64_t max_bytes, uint64_t fresh_from,
                        uint64_t fresh_to);

/* Forgets everything below OFFSET (the receiver's cum_offset advanced). */
void fb_retx_forget_below(fb_retx *x, uint64_t offset);

#endif
