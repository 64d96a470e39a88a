/* linkem_model: loss, drop-tail queue, serialisation and delay of one link direction, with the
 * time passed in. See linkem_model.h for the model. */
#include "linkem_model.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define NS_PER_S 1000000000ull

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void lk_rng_seed(lk_rng *rng, uint64_t seed, uint64_t stream)
{
    /* Mix the stream in through its own splitmix step so streams 0 and 1 of nearby seeds are
     * unrelated. */
    uint64_t x = seed ^ (stream * 0xd1b54a32d192ed03ull);
    for (size_t i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&x);
}

uint64_t lk_rng_next(lk_rng *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double lk_rng_unit(lk_rng *rng)
{
    return (double)(lk_rng_next(rng) >> 11) * 0x1.0p-53;
}

static bool prob_ok(double p)
{
    return isfinite(p) && p >= 0.0 && p <= 1.0;
}

const char *lk_dir_cfg_check(const lk_dir_cfg *cfg)
{
    if (!prob_ok(cfg->loss))
        return "loss must be between 0 and 100 %";
    if (cfg->ge_enabled) {
        if (!prob_ok(cfg->ge.p) || !prob_ok(cfg->ge.r) || !prob_ok(cfg->ge.loss_bad) ||
            !prob_ok(cfg->ge.loss_good))
            return "Gilbert-Elliott probabilities must be between 0 and 100 %";
    }
    /* 100 Gbit/s and 10 s of delay are far beyond what a user-space relay can emulate; the limits
     * keep every product below in 64 bits. */
    if (cfg->rate_bps > 100000000000ull)
        return "rate above 100 Gbit/s";
    if (cfg->delay_ns > 10 * NS_PER_S)
        return "delay above 10 s";
    if (cfg->rate_bps != 0 && cfg->queue_bytes < 1500)
        return "queue smaller than one 1500-byte packet";
    if (cfg->queue_bytes > (1ull << 40))
        return "queue above 1 TiB";
    return NULL;
}

void lk_dir_init(lk_dir *dir, const lk_dir_cfg *cfg, uint64_t seed, uint64_t stream)
{
    dir->cfg = *cfg;
    lk_rng_seed(&dir->rng, seed, stream);
    dir->ge_bad = false;
    dir->busy_until = 0;
    dir->tx_frac = 0;
    dir->last_now = 0;
}

uint64_t lk_dir_backlog(const lk_dir *dir, uint64_t now_ns)
{
    if (dir->cfg.rate_bps == 0 || dir->busy_until <= now_ns)
        return 0;
    unsigned __int128 bits = (unsigned __int128)(dir->busy_until - now_ns) * dir->cfg.rate_bps;
    /* Round up: a packet whose last bit is still being sent still occupies the queue. */
    return (uint64_t)((bits + 8ull * NS_PER_S - 1) / (8ull * NS_PER_S));
}

static bool lost(lk_dir *dir)
{
    bool drop = false;
    /* Draw the same number of random numbers whatever the outcome, so one direction's sequence
     * of decisions depends only on its seed and its packet count. */
    if (dir->cfg.loss > 0.0)
        drop = lk_rng_unit(&dir->rng) < dir->cfg.loss;
    if (dir->cfg.ge_enabled) {
        const lk_ge_cfg *ge = &dir->cfg.ge;
        double u = lk_rng_unit(&dir->rng);
        if (dir->ge_bad) {
            if (u < ge->r)
                dir->ge_bad = false;
        } else if (u < ge->p) {
            dir->ge_bad = true;
        }
        double v = lk_rng_unit(&dir->rng);
        if (v < (dir->ge_bad ? ge->loss_bad : ge->loss_good))
            drop = true;
    }
    return drop;
}

lk_verdict lk_dir_offer(lk_dir *dir, uint64_t now_ns, uint32_t len, uint64_t *release_ns)
{
    if (now_ns < dir->last_now)
        now_ns = dir->last_now;
    dir->last_now = now_ns;

    if (lost(dir))
        return LK_DROP_LOSS;
    if (dir->cfg.rate_bps == 0) {
        *release_ns = now_ns + dir->cfg.delay_ns;
        return LK_FORWARD;
    }
    if (lk_dir_backlog(dir, now_ns) + len > dir->cfg.queue_bytes)
        return LK_DROP_QUEUE;

    uint64_t start = dir->busy_until > now_ns ? dir->busy_until : now_ns;
    dir->last_wait_ns = start - now_ns;
    dir->last_idle_ns = dir->busy_until != 0 && dir->busy_until < now_ns ? now_ns - dir->busy_until : 0;
    if (start == now_ns && dir->busy_until < now_ns)
        dir->tx_frac = 0; /* the link went idle: no partial nanosecond to carry */
    /* len <= 2^32 and 8e9 < 2^33: the product fits in 64 bits with room for the remainder. */
    uint64_t num = (uint64_t)len * 8ull * NS_PER_S + dir->tx_frac;
    uint64_t tx_ns = num / dir->cfg.rate_bps;
    dir->tx_frac = num % dir->cfg.rate_bps;
    dir->busy_until = start + tx_ns;
    *release_ns = dir->busy_until + dir->cfg.delay_ns;
    return LK_FORWARD;
}

/* ---- ring ---- */

static size_t rec_size(uint32_t len)
{
    return (sizeof(lk_rec) + len + LK_REC_ALIGN - 1) & ~(size_t)(LK_REC_ALIGN - 1);
}

void lk_ring_init(lk_ring *ring, void *buf, size_t cap)
{
    ring->buf = buf;
    ring->cap = cap;
    ring->head = ring->tail = 0;
    ring->wrap_at = SIZE_MAX;
    ring->count = 0;
    ring->bytes = 0;
}

lk_rec *lk_ring_reserve(lk_ring *ring)
{
    if (ring->count == 0) {
        ring->head = ring->tail = 0;
        ring->wrap_at = SIZE_MAX;
    }
    if (ring->wrap_at == SIZE_MAX) { /* data (if any) in [head, tail) */
        if (ring->cap - ring->tail >= LK_MAX_REC)
            return (lk_rec *)(ring->buf + ring->tail);
        /* Wrap only if the lower part takes a whole record with room to spare: tail reaching head
         * would make a full ring look empty. */
        if (ring->head > LK_MAX_REC) {
            ring->wrap_at = ring->tail;
            ring->tail = 0;
            return (lk_rec *)ring->buf;
        }
        return NULL;
    }
    /* wrapped: data in [head, wrap_at) and [0, tail) */
    if (ring->head - ring->tail > LK_MAX_REC)
        return (lk_rec *)(ring->buf + ring->tail);
    return NULL;
}

void lk_ring_commit(lk_ring *ring)
{
    lk_rec *rec = (lk_rec *)(ring->buf + ring->tail);
    size_t sz = rec_size(rec->len);
    ring->tail += sz;
    ring->bytes += sz;
    ring->count++;
}

lk_rec *lk_ring_front(lk_ring *ring)
{
    return ring->count ? (lk_rec *)(ring->buf + ring->head) : NULL;
}

void lk_ring_pop(lk_ring *ring)
{
    lk_rec *rec = (lk_rec *)(ring->buf + ring->head);
    size_t sz = rec_size(rec->len);
    ring->head += sz;
    ring->bytes -= sz;
    ring->count--;
    if (ring->head == ring->wrap_at) {
        ring->head = 0;
        ring->wrap_at = SIZE_MAX;
    }
}

/* Every held packet is either in the queue (at most queue_bytes, the backlog being counted at
 * arrival) or has left the serialiser during the last delay (at most rate x delay, plus the packet
 * that straddles the boundary). A record costs at most twice its packet (a 16-byte header and
 * padding on the smallest, 20-byte IP packet), and a wrap wastes less than one LK_MAX_REC, plus
 * one more for the space lk_ring_reserve keeps free. The relay releases due packets only between
 * batches of reads, so packets up to LK_RELEASE_SLACK_NS overdue may still be held: that much
 * more at the link rate. */
#define LK_RELEASE_SLACK_NS (50 * 1000000ull)
size_t lk_ring_size(const lk_dir_cfg *cfg)
{
    if (cfg->rate_bps == 0)
        return 0;
    uint64_t held_ns = cfg->delay_ns + LK_RELEASE_SLACK_NS;
    uint64_t in_flight =
        cfg->queue_bytes + (uint64_t)((unsigned __int128)cfg->rate_bps * held_ns / 8 / NS_PER_S) + LK_MAX_PKT;
    return (size_t)(2 * in_flight + 4ull * LK_MAX_REC);
}
