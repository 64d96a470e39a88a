/* fbcp_upload_hash: an upload's SHA-256, computed while the data goes out. What the HTTP(S)
 * transport has just read to send is hashed from its buffer when it is next in file order, so
 * the file is read once; a thread reads and hashes the rest (ranges sent out of order by other
 * connections, UDP, resumed parts), never ahead of where the HTTP(S) senders are still to read
 * unless they stall. */
#include "fbcp.h"
#include "fbcp_upload.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define FBCP_HASH_BLOCK (1024u * 1024u)
#define FBCP_HASH_WAIT_MS 20            /* the thread's longest sleep before it looks again */
#define FBCP_HASH_STALL_NS 300000000ull /* the front has not moved this long: the thread hashes */
#define FBCP_HASH_ALIVE_NS 500000000ull /* no hint this long: no HTTP(S) sender runs */

static void fbcp_hash_wait(fbcp_hash_job *j)
{
    fbcp_cond_wait_ms(&j->cv, &j->mu, FBCP_HASH_WAIT_MS);
}

/* The thread: hashes from the file what no sender is about to read. Bounded: every pass hashes
 * a block or sleeps at most FBCP_HASH_WAIT_MS, and after FBCP_HASH_STALL_NS without progress it
 * hashes a block whatever the senders do. */
static void *fbcp_hash_main(void *p)
{
    fbcp_hash_job *j = p;
    unsigned char *buf = malloc(FBCP_HASH_BLOCK);
    unsigned int outlen = 0;

    pthread_mutex_lock(&j->mu);
    if (buf == NULL)
        j->rv = FB_ERR_NOMEM;
    while (j->rv == FB_OK && j->pos < j->size && !j->stop) {
        uint64_t now = fb_time_mono_ns(), limit, at, n;
        int fail = 0;

        if (j->claimed) {
            fbcp_hash_wait(j);
            continue;
        }
        if (j->pos < j->read_low)
            limit = j->read_low; /* no sender will read below READ_LOW: hash up to it */
        else if (now - j->hint_ns > FBCP_HASH_ALIVE_NS)
            limit = j->size; /* no HTTP(S) sender runs (UDP, or between transports) */
        else if (now - j->moved_ns > FBCP_HASH_STALL_NS)
            limit = j->pos + FBCP_HASH_BLOCK; /* the sender at the front is stuck (backoff) */
        else {
            fbcp_hash_wait(j); /* the sender at the front hashes as it reads */
            continue;
        }
        at = j->pos;
        n = j->size - at;
        if (n > limit - at)
            n = limit - at;
        if (n > FBCP_HASH_BLOCK)
            n = FBCP_HASH_BLOCK;
        j->claimed = 1;
        j->claim_end = at + n;
        pthread_mutex_unlock(&j->mu);
        /* shorter than at the start: its digest would be meaningless */
#ifndef FB_BENCH_UNSAFE_NO_DIGESTS
        fail = fb_pread_all(j->fd, buf, (size_t)n, at) != FB_OK;
        if (!fail && EVP_DigestUpdate(j->md, buf, (size_t)n) != 1)
            fail = 1;
#endif
        pthread_mutex_lock(&j->mu);
        j->claimed = 0;
        if (fail) {
            j->rv = FB_ERR_IO;
        } else {
            j->pos = at + n;
            j->moved_ns = fb_time_mono_ns();
        }
        pthread_cond_broadcast(&j->cv);
    }
    if (j->rv == FB_OK && j->pos == j->size &&
        (EVP_DigestFinal_ex(j->md, j->digest, &outlen) != 1 || outlen != FB_SHA256_LEN))
        j->rv = FB_ERR_INTERNAL;
    else if (j->rv == FB_OK && j->pos != j->size)
        j->rv = FB_ERR_INTERNAL; /* stopped: the upload ended early, the digest is not needed */
    pthread_mutex_unlock(&j->mu);
    free(buf);
    return NULL;
}

fb_err fbcp_hash_start(fbcp_hash_job *j)
{
    j->md = EVP_MD_CTX_new();
    if (j->md == NULL || EVP_DigestInit_ex(j->md, EVP_sha256(), NULL) != 1)
        return FB_ERR_NOMEM;
    if (pthread_mutex_init(&j->mu, NULL) != 0)
        return FB_ERR_NOMEM;
    if (pthread_cond_init(&j->cv, NULL) != 0) {
        pthread_mutex_destroy(&j->mu);
        return FB_ERR_NOMEM;
    }
    /* Until a sender publishes where it reads, the thread waits (at most FBCP_HASH_ALIVE_NS):
     * starting at once it would race ahead of the first request and read everything itself. */
    j->read_low = 0;
    j->hint_ns = j->moved_ns = fb_time_mono_ns();
    if (pthread_create(&j->thread, NULL, fbcp_hash_main, j) != 0) {
        pthread_cond_destroy(&j->cv);
        pthread_mutex_destroy(&j->mu);
        return FB_ERR_NOMEM;
    }
    j->started = 1;
    return FB_OK;
}

/* Waits for the thread (STOP: asks it to stop first) and frees what fbcp_hash_start made. */
void fbcp_hash_finish(fbcp_hash_job *j, int stop)
{
    if (j->started) {
        if (stop) {
            pthread_mutex_lock(&j->mu);
            j->stop = 1;
            pthread_cond_broadcast(&j->cv);
            pthread_mutex_unlock(&j->mu);
        }
        pthread_join(j->thread, NULL);
        j->started = 0;
        pthread_cond_destroy(&j->cv);
        pthread_mutex_destroy(&j->mu);
    }
    EVP_MD_CTX_free(j->md);
    j->md = NULL;
}

void fbcp_upload_hash_sent(fbcp_xfer *x, uint64_t off, const void *data, size_t len)
{
    fbcp_upload *u = x->ctx;
    fbcp_hash_job *j;
    uint64_t skip;
    int ok;

    if (x->direction != FBCP_UPLOAD || u == NULL || u->hash == NULL || !u->hash->started)
        return;
    j = u->hash;
    pthread_mutex_lock(&j->mu);
    /* The thread is hashing up to where this data starts (it caught up with this sender): wait
     * for it, at most one block's hashing (a millisecond), rather than leave this data to be
     * read again, and the next and the next, the thread always just behind. */
    for (int i = 0; i < 100 && j->claimed && j->claim_end == off && j->rv == FB_OK; i++)
        fbcp_hash_wait(j);
    if (j->claimed || j->stop || j->rv != FB_OK || j->pos < off || j->pos >= off + len) {
        pthread_mutex_unlock(&j->mu);
        return; /* not next in file order: the thread reads it later */
    }
    skip = j->pos - off;
    j->claimed = 1;
    pthread_mutex_unlock(&j->mu);
#ifdef FB_BENCH_UNSAFE_NO_DIGESTS
    /* Only in the scratch build of bench/digest_cost.sh: nothing hashed, nothing verified. */
#warning "FB_BENCH_UNSAFE_NO_DIGESTS: uploads are not verified; for bench/digest_cost.sh only"
    (void)data;
    ok = 1;
#else
    ok = EVP_DigestUpdate(j->md, (const unsigned char *)data + skip, (size_t)(len - skip)) == 1;
#endif
    pthread_mutex_lock(&j->mu);
    j->claimed = 0;
    if (ok) {
        j->pos = off + len;
        j->moved_ns = fb_time_mono_ns();
        j->inline_bytes += len - skip;
    } else {
        j->rv = FB_ERR_INTERNAL;
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

void fbcp_upload_hash_hint(fbcp_xfer *x, uint64_t read_low)
{
    fbcp_upload *u = x->ctx;
    fbcp_hash_job *j;

    if (x->direction != FBCP_UPLOAD || u == NULL || u->hash == NULL || !u->hash->started)
        return;
    j = u->hash;
    pthread_mutex_lock(&j->mu);
    if (read_low != j->read_low)
        pthread_cond_broadcast(&j->cv);
    j->read_low = read_low;
    j->hint_ns = fb_time_mono_ns();
    pthread_mutex_unlock(&j->mu);
}
