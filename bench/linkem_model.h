/* linkem_model: the pure part of the link emulator, one direction of a WAN link.
 *
 * No I/O and no clock: the caller passes the arrival time of each packet and gets back a verdict
 * (forward, lost, or dropped by the full queue) and, when forwarded, the time the packet leaves
 * the far end of the link. That keeps the model deterministic and testable (check_linkem.c).
 *
 * The link, in the order a packet meets it:
 *   1. random loss: independent (Bernoulli) and/or Gilbert-Elliott (bursty), from a seeded PRNG;
 *   2. a drop-tail queue limited in bytes in front of a serialiser running at the link rate;
 *   3. a fixed propagation delay.
 * A FIFO link at a constant rate is fully described by the time its serialiser becomes idle
 * ("busy_until"): a packet's departure is max(now, busy_until) + len*8/rate, and the backlog at
 * time t is (busy_until - t) * rate. Release times are therefore monotonic within a direction, and
 * the delay line is a plain FIFO. */
#ifndef LINKEM_MODEL_H
#define LINKEM_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* xoshiro256** seeded through splitmix64: fast, good quality, identical on every platform. */
typedef struct lk_rng {
    uint64_t s[4];
} lk_rng;

/* Seeds the generator from a seed and a stream number (one stream per direction, so the two
 * directions draw independent sequences whatever the thread interleaving). */
void lk_rng_seed(lk_rng *rng, uint64_t seed, uint64_t stream);
uint64_t lk_rng_next(lk_rng *rng);
/* Uniform in [0, 1) with 53 bits. */
double lk_rng_unit(lk_rng *rng);

/* Gilbert-Elliott parameters, probabilities in [0, 1], per packet. The chain moves first (good->bad
 * with p, bad->good with r), then the packet is lost with the loss probability of the new state.
 * Same parameter order as netem's "loss gemodel p r 1-h 1-k". */
typedef struct lk_ge_cfg {
    double p;         /* good -> bad */
    double r;         /* bad -> good */
    double loss_bad;  /* 1-h: loss probability in the bad state (usually 1) */
    double loss_good; /* 1-k: loss probability in the good state (usually 0) */
} lk_ge_cfg;

typedef struct lk_dir_cfg {
    uint64_t rate_bps;    /* link rate in bit/s; 0 = unlimited (no serialisation, no queue) */
    uint64_t delay_ns;    /* one-way propagation delay */
    uint64_t queue_bytes; /* drop-tail limit of the backlog in front of the serialiser */
    double loss;          /* independent loss probability, [0, 1] */
    bool ge_enabled;      /* Gilbert-Elliott loss on top of (independent from) the above */
    lk_ge_cfg ge;
} lk_dir_cfg;

typedef enum lk_verdict {
    LK_FORWARD = 0,
    LK_DROP_LOSS,  /* random loss */
    LK_DROP_QUEUE, /* the queue had no room for the packet */
} lk_verdict;

typedef struct lk_dir {
    lk_dir_cfg cfg;
    lk_rng rng;
    bool ge_bad;         /* Gilbert-Elliott state */
    uint64_t busy_until; /* when the serialiser finishes the last admitted packet (ns) */
    uint64_t tx_frac;    /* remainder of len*8e9 / rate carried to the next packet, so the */
                         /* long-run rate is exact whatever the rounding */
    uint64_t last_now;   /* the model's clock never runs backwards */
    /* Set by each lk_dir_offer that admits a packet (for the statistics): how long the link had
     * been idle before this packet (0 when it was busy, or before the first packet) and how long
     * the packet waits behind the backlog before its serialisation starts. */
    uint64_t last_idle_ns;
    uint64_t last_wait_ns;
} lk_dir;

/* Checks a configuration; returns NULL if valid, else a message saying what is wrong. */
const char *lk_dir_cfg_check(const lk_dir_cfg *cfg);

/* Initialises a direction; the configuration must have passed lk_dir_cfg_check. */
void lk_dir_init(lk_dir *dir, const lk_dir_cfg *cfg, uint64_t seed, uint64_t stream);

/* Bytes waiting in front of (or being sent by) the serialiser at time now_ns. */
uint64_t lk_dir_backlog(const lk_dir *dir, uint64_t now_ns);

/* Offers a packet of len bytes arriving at now_ns. On LK_FORWARD, *release_ns is when the
 * packet has crossed the link (departure from the serialiser plus the delay). Times earlier than
 * a previous call are treated as equal to it. */
lk_verdict lk_dir_offer(lk_dir *dir, uint64_t now_ns, uint32_t len, uint64_t *release_ns);

/* ---- the delay line: a FIFO of variable-length packet records in one buffer ----
 * Packets leave a direction in arrival order (release times are monotonic), so a byte ring is
 * enough: the reader of the TUN reads straight into the space lk_ring_reserve gives, and the
 * writer writes straight from the front record. Single-threaded: one ring per direction. */

/* Largest packet a TUN read can return (the MTU is 1500, but a read must never truncate). */
#define LK_MAX_PKT 65536u
#define LK_REC_ALIGN 8u

/* A packet in the ring: this header, then the packet, padded to LK_REC_ALIGN. */
typedef struct lk_rec {
    uint64_t release_ns;
    uint32_t len;
    uint32_t reserved;
} lk_rec;
_Static_assert(sizeof(lk_rec) == 16, "ring record header layout");

/* The most a record can take: what lk_ring_reserve must find contiguous. */
#define LK_MAX_REC ((uint32_t)((sizeof(lk_rec) + LK_MAX_PKT + LK_REC_ALIGN - 1) & ~(LK_REC_ALIGN - 1)))

typedef struct lk_ring {
    uint8_t *buf;
    size_t cap;
    size_t head, tail; /* oldest record; where the next one goes */
    size_t wrap_at;    /* end of the data in the upper part once the writer wrapped, else SIZE_MAX */
    size_t count;      /* records held */
    size_t bytes;      /* buffer bytes held by records */
} lk_ring;

/* Uses buf (cap bytes, 8-byte aligned, cap >= 2 * LK_MAX_REC) as an empty ring. */
void lk_ring_init(lk_ring *ring, void *buf, size_t cap);
/* Contiguous room for a record of up to LK_MAX_PKT bytes of packet, or NULL if the ring is full.
 * Fill the header and packet, then lk_ring_commit; reserving again without committing returns the
 * same space. */
lk_rec *lk_ring_reserve(lk_ring *ring);
/* Adds the record just filled in the reserved space (rec->len must be set, <= LK_MAX_PKT). */
void lk_ring_commit(lk_ring *ring);
/* The oldest record, or NULL when empty. */
lk_rec *lk_ring_front(lk_ring *ring);
/* Removes the oldest record (the ring must not be empty). */
void lk_ring_pop(lk_ring *ring);

/* A ring size for one direction that can never fill, or 0 when the rate is unlimited (nothing
 * then bounds the bytes in flight). */
size_t lk_ring_size(const lk_dir_cfg *cfg);

#endif
