/* fb_digest: running SHA-256 of an upload in its session slot (see fb_digest.h).
 *
 * It uses OpenSSL's SHA256_CTX because that state is a plain, copyable structure that can live
 * in shared memory; the EVP interface keeps its state behind a pointer. */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include "fb_digest.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "fb_range.h"

_Static_assert(sizeof(SHA256_CTX) <= sizeof(((fb_slot *)0)->hash_state[0]), "digest state fits the slot");

#define DIGEST_READ_BLOCK (1024u * 1024u)

static int digest_pid_dead(int32_t pid)
{
    return pid > 0 && kill(pid, 0) != 0 && errno == ESRCH;
}

/* Takes the right to advance the digest: free, or held by a dead process. */
static int digest_lock(fb_slot *slot)
{
    int32_t me = (int32_t)getpid();
    int32_t cur = 0;

    if (atomic_compare_exchange_strong(&slot->hash_owner, &cur, me))
        return 1;
    if (cur == me)
        return 0; /* another thread of this process is at it */
    if (digest_pid_dead(cur) && atomic_compare_exchange_strong(&slot->hash_owner, &cur, me))
        return 1;
    return 0;
}

static void digest_unlock(fb_slot *slot)
{
    int32_t me = (int32_t)getpid();

    atomic_compare_exchange_strong(&slot->hash_owner, &me, 0);
}

/* Reads LEN bytes at OFF into the digest. */
static fb_err digest_fold(SHA256_CTX *ctx, int fd, uint64_t off, uint64_t len, unsigned char *buf)
{
#ifdef FB_BENCH_UNSAFE_NO_DIGESTS
    /* Only in the scratch build of bench/digest_cost.sh (see there): nothing is read or hashed,
     * so the digest stays that of no bytes and verifies nothing. */
#warning "FB_BENCH_UNSAFE_NO_DIGESTS: uploads are not verified; for bench/digest_cost.sh only"
    (void)ctx, (void)fd, (void)off, (void)buf;
    len = 0;
#endif
    while (len > 0) {
        size_t want = len > DIGEST_READ_BLOCK ? DIGEST_READ_BLOCK : (size_t)len;
        ssize_t n = pread(fd, buf, want, (off_t)off);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return FB_ERR_IO;
        SHA256_Update(ctx, buf, (size_t)n);
        off += (uint64_t)n;
        len -= (uint64_t)n;
    }
    return FB_OK;
}

/* Loads the published state: position and a private copy of the context. */
static uint64_t digest_load(fb_slot *slot, SHA256_CTX *ctx)
{
    uint64_t pos = atomic_load_explicit(&slot->hash_pos, memory_order_acquire);

    if ((pos >> 1) == 0)
        SHA256_Init(ctx);
    else
        memcpy(ctx, slot->hash_state[pos & 1], sizeof(*ctx));
    return pos;
}

/* Publishes CTX as covering BYTES, into the copy not in use. */
static void digest_store(fb_slot *slot, uint64_t oldpos, const SHA256_CTX *ctx, uint64_t bytes)
{
    unsigned idx = (unsigned)((oldpos & 1) ^ 1);

    memcpy(slot->hash_state[idx], ctx, sizeof(*ctx));
    atomic_store_explicit(&slot->hash_pos, (bytes << 1) | idx, memory_order_release);
}

/* Folds completed chunks from the current position; stops at a missing chunk, at MAX_BYTES or
 * at the end. Caller holds the digest lock. */
static fb_err digest_run(fb_slot *slot, uint32_t generation, int fd, uint64_t max_bytes, uint64_t size,
                         uint32_t chunk_size, int require_complete)
{
    SHA256_CTX ctx;
    unsigned char *buf;
    uint64_t oldpos, at, folded = 0;
    fb_err e = FB_OK;

    if (chunk_size == 0)
        return FB_ERR_INTERNAL;
    buf = malloc(DIGEST_READ_BLOCK);
    if (buf == NULL)
        return FB_ERR_NOMEM;
    oldpos = digest_load(slot, &ctx);
    at = oldpos >> 1;
    while (at < size && (max_bytes == 0 || folded < max_bytes)) {
        uint64_t chunk = at / chunk_size;
        fb_range cr = fb_chunk_range(size, chunk_size, chunk);
        uint64_t len = cr.offset + cr.length - at;

        if (!fb_slot_chunk_done(slot, chunk)) {
            if (require_complete)
                e = FB_ERR_INCOMPLETE;
            break;
        }
        e = digest_fold(&ctx, fd, at, len, buf);
        if (e != FB_OK)
            break;
        at += len;
        folded += len;
    }
    if (atomic_load(&slot->generation) != generation)
        e = FB_ERR_SESSION_STATE;
    else if (folded > 0)
        digest_store(slot, oldpos, &ctx, at);
    OPENSSL_cleanse(&ctx, sizeof(ctx));
    free(buf);
    return e;
}

void fb_slot_digest_advance(fb_slot *slot, uint32_t generation, int fd, uint64_t max_bytes)
{
    uint64_t size = slot->info.size;
    uint32_t chunk_size = slot->info.chunk_size;
    uint64_t at = atomic_load_explicit(&slot->hash_pos, memory_order_acquire) >> 1;

    /* Cheap test first: nothing to do unless the chunk at the front is complete. */
    if (chunk_size == 0 || at >= size || !fb_slot_chunk_done(slot, at / chunk_size))
        return;
    if (!digest_lock(slot))
        return;
    if (atomic_load(&slot->generation) == generation)
        (void)digest_run(slot, generation, fd, max_bytes, size, chunk_size, 0);
    digest_unlock(slot);
}

uint64_t fb_slot_digest_position(fb_slot *slot)
{
    return atomic_load_explicit(&slot->hash_pos, memory_order_acquire) >> 1;
}

fb_err fb_slot_digest_final(unsigned char out[32], fb_slot *slot, uint32_t generation, int fd, uint64_t size)
{
    SHA256_CTX ctx;
    fb_err e;
    int tries;

    /* Another process may be folding right now: wait for it (it holds the lock for at most
     * the time to hash what is complete), up to about 30 s. */
    for (tries = 0; !digest_lock(slot); tries++) {
        struct timespec ts = {0, 2 * 1000 * 1000};
        if (tries > 15000)
            return FB_ERR_INTERNAL;
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&slot->generation) != generation || slot->info.size != size) {
        digest_unlock(slot);
        return FB_ERR_SESSION_STATE;
    }
    e = digest_run(slot, generation, fd, 0, size, slot->info.chunk_size, 1);
    if (e == FB_OK) {
        uint64_t pos = digest_load(slot, &ctx);
        if ((pos >> 1) != size)
            e = FB_ERR_INCOMPLETE;
        else
            SHA256_Final(out, &ctx);
        OPENSSL_cleanse(&ctx, sizeof(ctx));
    }
    digest_unlock(slot);
    return e;
}
