/* fbcp_download_hash: what a download knows of its partial file on disk, on threads beside the
 * transfer: the file's running SHA-256 with each chunk's own digest, the check of a resumed
 * file's chunks against the digests recorded when they were written, and the checkpoints
 * (fdatasync, then the sidecar) written on a thread of their own. */
#include "fbcp.h"
#include "fbcp_download.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "fb_filesum.h"
#include "fb_wire.h"

/* The file's SHA-256, computed by a thread beside the transfer: it reads back and hashes the
 * prefix of the partial file that is complete on disk (the sidecar's first done range), while
 * the main thread receives and writes, so on two cores the hashing costs little time and the
 * finish only waits for the last piece. Data is hashed only once it is marked done (written,
 * never written again), so the digest is always that of the file on disk. The same read gives
 * each chunk's own SHA-256 for the sidecar, so that a resume can tell whether a chunk it claims
 * still holds what was written; while the prefix waits for a chunk, the thread reads and hashes
 * chunks already complete further on (parallel connections and UDP complete them out of order),
 * so a checkpoint can vouch for them too. Whole chunks only. */
#define FBCP_DL_HASH_BLOCK FBCP_DOWNLOAD_CHUNK

typedef struct fbcp_dl_hash {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    EVP_MD_CTX *md;
    int fd;
    uint64_t size;
    uint64_t pos;   /* hashed */
    uint64_t ready; /* [0, ready) is complete on disk */
    uint64_t nchunks;
    unsigned char *chunk_sha; /* the SHA-256 of each chunk (all zero until known) */
    uint64_t *complete;       /* bitmap: chunk written whole (set by the main thread) */
    uint64_t *have;           /* bitmap: chunk's digest is in CHUNK_SHA */
    uint64_t nhashed;         /* 1 + the highest chunk with a digest */
    int stop;
    fb_err rv;
    unsigned char digest[FB_SHA256_LEN];
} fbcp_dl_hash;

static int fbcp_bit(const uint64_t *map, uint64_t i)
{
    return (map[i / 64] >> (i % 64)) & 1u;
}

/* A chunk past FROM that is complete and has no digest yet; 0 if none (chunk 0 is never past). */
static uint64_t fbcp_dl_hash_next_out_of_order(const fbcp_dl_hash *h, uint64_t from)
{
    for (uint64_t w = from / 64; w < (h->nchunks + 63) / 64; w++) {
        uint64_t bits = h->complete[w] & ~h->have[w];

        if (w == from / 64)
            bits &= from % 64 == 63 ? 0 : ~((UINT64_C(2) << (from % 64)) - 1);
        if (bits != 0)
            return w * 64 + (uint64_t)__builtin_ctzll(bits);
    }
    return 0;
}

/* Stores chunk I's digest (under the lock). */
static void fbcp_dl_hash_keep(fbcp_dl_hash *h, uint64_t i, const unsigned char sha[FB_SHA256_LEN])
{
    memcpy(h->chunk_sha + i * FB_SHA256_LEN, sha, FB_SHA256_LEN);
    h->have[i / 64] |= UINT64_C(1) << (i % 64);
    if (i + 1 > h->nhashed)
        h->nhashed = i + 1;
}

/* Reads chunk I (N bytes at AT) into BUF and its digest into SHA; 0 on failure. */
static int fbcp_dl_chunk_digest(const fbcp_dl_hash *h, unsigned char *buf, uint64_t at, uint64_t n,
                                unsigned char sha[FB_SHA256_LEN])
{
    unsigned int len = 0;

    return fb_pread_all(h->fd, buf, (size_t)n, at) == FB_OK &&
           EVP_Digest(buf, (size_t)n, sha, &len, EVP_sha256(), NULL) == 1 && len == FB_SHA256_LEN;
}

static void *fbcp_dl_hash_main(void *p)
{
    fbcp_dl_hash *h = p;
    unsigned char *buf = malloc(FBCP_DL_HASH_BLOCK);
    unsigned int outlen = 0;

    pthread_mutex_lock(&h->mu);
    if (buf == NULL)
        h->rv = FB_ERR_NOMEM;
    /* bounded: each pass hashes a block or waits at most 50 ms for more, and stops on STOP */
    while (h->rv == FB_OK && h->pos < h->size && !h->stop) {
        uint64_t at = h->pos, n = h->size - at > FBCP_DL_HASH_BLOCK ? FBCP_DL_HASH_BLOCK : h->size - at;
        uint64_t ci = at / FBCP_DL_HASH_BLOCK, oo;
        unsigned char chunk_sha[FB_SHA256_LEN];
        int fail = 0, have;

        if (h->ready < at + n) { /* whole chunks (POS stays chunk-aligned) */
            oo = fbcp_dl_hash_next_out_of_order(h, ci);
            if (oo == 0) {
                fbcp_cond_wait_ms(&h->cv, &h->mu, 50);
                continue;
            }
            /* meanwhile, a chunk complete further on: its own digest only (the main thread
             * never writes a complete chunk again) */
            at = oo * FBCP_DL_HASH_BLOCK;
            n = h->size - at > FBCP_DL_HASH_BLOCK ? FBCP_DL_HASH_BLOCK : h->size - at;
            pthread_mutex_unlock(&h->mu);
            fail = !fbcp_dl_chunk_digest(h, buf, at, n, chunk_sha);
            pthread_mutex_lock(&h->mu);
            if (fail)
                h->rv = FB_ERR_IO;
            else
                fbcp_dl_hash_keep(h, oo, chunk_sha);
            continue;
        }
        have = fbcp_bit(h->have, ci);
        pthread_mutex_unlock(&h->mu);
        /* shorter than at the start: its digest would be meaningless */
        fail = fb_pread_all(h->fd, buf, (size_t)n, at) != FB_OK;
        if (!fail && EVP_DigestUpdate(h->md, buf, (size_t)n) != 1)
            fail = 1;
        if (!fail && !have) {
            unsigned int clen = 0;

            fail = EVP_Digest(buf, (size_t)n, chunk_sha, &clen, EVP_sha256(), NULL) != 1 ||
                   clen != FB_SHA256_LEN;
        }
        pthread_mutex_lock(&h->mu);
        if (fail) {
            h->rv = FB_ERR_IO;
        } else {
            h->pos = at + n;
            if (!have)
                fbcp_dl_hash_keep(h, ci, chunk_sha);
        }
    }
    if (h->rv == FB_OK && h->pos == h->size &&
        (EVP_DigestFinal_ex(h->md, h->digest, &outlen) != 1 || outlen != FB_SHA256_LEN))
        h->rv = FB_ERR_IO;
    else if (h->rv == FB_OK && h->pos != h->size)
        h->rv = FB_ERR_INTERNAL; /* stopped */
    pthread_mutex_unlock(&h->mu);
    free(buf);
    return NULL;
}

/* Stops the thread (STOP) or waits for it to hash everything, and frees it; the digest into OUT
 * (when not NULL). Without a thread, or when it failed, OUT is computed by reading the file. */
fb_err fbcp_download_hash_end(fbcp_download *d, int stop, unsigned char out[FB_SHA256_LEN])
{
    fbcp_dl_hash *h = d->hash;
    fb_err rv = FB_ERR_INTERNAL;

    if (h != NULL) {
        pthread_mutex_lock(&h->mu);
        if (stop)
            h->stop = 1;
        else
            h->ready = h->size; /* the caller knows the whole file is on disk */
        pthread_cond_broadcast(&h->cv);
        pthread_mutex_unlock(&h->mu);
        pthread_join(h->thread, NULL);
        rv = h->rv;
        if (rv == FB_OK && out != NULL)
            memcpy(out, h->digest, FB_SHA256_LEN);
        pthread_cond_destroy(&h->cv);
        pthread_mutex_destroy(&h->mu);
        EVP_MD_CTX_free(h->md);
        OPENSSL_cleanse(h->digest, sizeof(h->digest));
        free(h->chunk_sha);
        free(h->complete);
        free(h->have);
        free(h);
        d->hash = NULL;
    }
    if (out == NULL)
        return FB_OK;
    if (rv != FB_OK)
        rv = fb_sha256_fd(out, d->x.fd, d->x.size);
    return rv;
}

/* Tells the thread how far the file is complete on disk (the end of the done range at 0) and
 * which of the chunks touched by [OFF, OFF+LEN) are now complete (LEN 0: none). */
void fbcp_download_hash_ready(fbcp_download *d, uint64_t off, uint64_t len)
{
    fbcp_dl_hash *h = d->hash;
    uint64_t ready = d->sc.done.n > 0 && d->sc.done.v[0].offset == 0 ? d->sc.done.v[0].length : 0;
    int wake = 0;

    if (h == NULL)
        return;
    pthread_mutex_lock(&h->mu);
    for (uint64_t c = off / FBCP_DL_HASH_BLOCK;
         len > 0 && c <= (off + len - 1) / FBCP_DL_HASH_BLOCK && c < h->nchunks; c++) {
        uint64_t at = c * FBCP_DL_HASH_BLOCK,
                 n = h->size - at > FBCP_DL_HASH_BLOCK ? FBCP_DL_HASH_BLOCK : h->size - at;

        if (!fbcp_bit(h->complete, c) && fbcp_ranges_covers(&d->sc.done, at, n)) {
            h->complete[c / 64] |= UINT64_C(1) << (c % 64);
            wake = 1;
        }
    }
    if (ready > h->ready) {
        h->ready = ready;
        wake = 1;
    }
    if (wake)
        pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* (Re)starts the thread for the partial file as it is now. Without it, the finish hashes. */
void fbcp_download_hash_start(fbcp_download *d)
{
    fbcp_dl_hash *h;
    int have_mu = 0, have_cv = 0;

    (void)fbcp_download_hash_end(d, 1, NULL);
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return;
    h->fd = d->x.fd;
    h->size = d->x.size;
    h->md = EVP_MD_CTX_new();
    h->nchunks = (d->x.size + FBCP_DOWNLOAD_CHUNK - 1) / FBCP_DOWNLOAD_CHUNK;
    h->chunk_sha = calloc((size_t)h->nchunks + 1, FB_SHA256_LEN);
    h->complete = calloc((size_t)(h->nchunks + 63) / 64 + 1, sizeof(uint64_t));
    h->have = calloc((size_t)(h->nchunks + 63) / 64 + 1, sizeof(uint64_t));
    if (h->md == NULL || h->chunk_sha == NULL || h->complete == NULL || h->have == NULL ||
        EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) != 1)
        goto fail;
    have_mu = pthread_mutex_init(&h->mu, NULL) == 0;
    have_cv = have_mu && pthread_cond_init(&h->cv, NULL) == 0;
    if (!have_cv || pthread_create(&h->thread, NULL, fbcp_dl_hash_main, h) != 0)
        goto fail;
    d->hash = h;
    /* what a resume kept is complete already */
    for (size_t i = 0; i < d->sc.done.n; i++)
        fbcp_download_hash_ready(d, d->sc.done.v[i].offset, d->sc.done.v[i].length);
    fbcp_download_hash_ready(d, 0, 0);
    return;
fail:
    if (have_cv)
        pthread_cond_destroy(&h->cv);
    if (have_mu)
        pthread_mutex_destroy(&h->mu);
    EVP_MD_CTX_free(h->md);
    free(h->chunk_sha);
    free(h->complete);
    free(h->have);
    free(h);
}

/* 1 if every whole chunk in DONE has its digest (under H's lock). */
static int fbcp_dl_hash_covers(const fbcp_dl_hash *h, const fbcp_ranges *done)
{
    for (size_t i = 0; i < done->n; i++) {
        uint64_t end = done->v[i].offset + done->v[i].length;

        for (uint64_t c = (done->v[i].offset + FBCP_DL_HASH_BLOCK - 1) / FBCP_DL_HASH_BLOCK; c < h->nchunks;
             c++) {
            uint64_t cend = (c + 1) * FBCP_DL_HASH_BLOCK < h->size ? (c + 1) * FBCP_DL_HASH_BLOCK : h->size;

            if (cend > end)
                break;
            if (!fbcp_bit(h->have, c))
                return 0;
        }
    }
    return 1;
}

/* The chunk digests of H into S (for the sidecar), once the thread has hashed every whole chunk
 * S->done claims: it trails the writes by a few chunks, and a checkpoint should vouch for all it
 * lists. Bounded: at most FBCP_DL_HASH_CATCHUP_MS; then what there is. H NULL: no digests. */
#define FBCP_DL_HASH_CATCHUP_MS 1000
static fb_err fbcp_dl_hash_take(fbcp_dl_hash *h, fbcp_sidecar *s)
{
    fb_err rv;

    if (h == NULL)
        return fbcp_sidecar_set_hashes(s, NULL, 0);
    pthread_mutex_lock(&h->mu);
    for (int i = 0;
         i < FBCP_DL_HASH_CATCHUP_MS / 10 && h->rv == FB_OK && !h->stop && !fbcp_dl_hash_covers(h, &s->done);
         i++)
        fbcp_cond_wait_ms(&h->cv, &h->mu, 10);
    rv = fbcp_sidecar_set_hashes(s, h->chunk_sha, h->nhashed);
    pthread_mutex_unlock(&h->mu);
    return rv;
}

static int fbcp_digest_unknown(const unsigned char *sha)
{
    static const unsigned char zero[FB_SHA256_LEN];

    return memcmp(sha, zero, FB_SHA256_LEN) == 0;
}

/* A resume keeps of OLD's done ranges only the whole chunks that still have the digest recorded
 * when they were written: the partial file may have been changed since (by anyone), and a chunk
 * that was never hashed cannot be vouched for. OUT gets what is kept; the rest is fetched again. */
fb_err fbcp_download_keep_verified(fbcp_download *d, const fbcp_sidecar *old, fbcp_ranges *out)
{
    unsigned char *buf = malloc(FBCP_DOWNLOAD_CHUNK);
    unsigned char sha[FB_SHA256_LEN];
    fbcp_ranges in;
    uint64_t dropped = 0, unhashed = 0;
    fb_err rv = buf == NULL ? FB_ERR_NOMEM : FB_OK;

    fbcp_ranges_init(&in);
    fbcp_ranges_clear(out);
    for (uint64_t i = 0; rv == FB_OK && i < old->nhashed; i++) {
        uint64_t off = i * FBCP_DOWNLOAD_CHUNK, len = old->size - off;
        unsigned int slen = 0;

        if (off >= old->size)
            break;
        if (len > FBCP_DOWNLOAD_CHUNK)
            len = FBCP_DOWNLOAD_CHUNK;
        rv = fbcp_ranges_intersect(&in, &old->done, off, len);
        if (rv != FB_OK || fbcp_ranges_total(&in) != len)
            continue; /* not claimed whole */
        if (fbcp_digest_unknown(old->chunk_sha + i * FB_SHA256_LEN)) {
            unhashed += len; /* never hashed: cannot be vouched for */
            continue;
        }
        if (fb_pread_all(d->x.fd, buf, (size_t)len, off) == FB_OK &&
            EVP_Digest(buf, (size_t)len, sha, &slen, EVP_sha256(), NULL) == 1 && slen == FB_SHA256_LEN &&
            memcmp(sha, old->chunk_sha + i * FB_SHA256_LEN, FB_SHA256_LEN) == 0)
            rv = fbcp_ranges_add(out, off, len);
        else
            dropped += len;
    }
    if (unhashed > 0)
        fbcp_trace(d->c->opts, "%llu bytes the sidecar claims were never hashed: fetching them again",
                   (unsigned long long)unhashed);
    if (dropped > 0)
        fbcp_warn("%s: %llu bytes of the partial file changed since they were written: fetching them again",
                  d->x.local, (unsigned long long)dropped);
    fbcp_ranges_free(&in);
    free(buf);
    return rv;
}

/* Checkpoints run on a thread of their own. fdatasync of 64 MiB on a slow disk can take a good
 * part of a second; a UDP receiver waiting for it reads nothing meanwhile, its socket buffer
 * overflows, and the sender takes the loss for congestion (dips of several seconds in a 1 GiB
 * download at 200 ms). The thread syncs the partial file, then writes a copy of the sidecar taken
 * before the sync: every chunk the copy lists had been written when the sync began. */
typedef struct fbcp_dl_ckpt {
    pthread_t thread;
    int fd;
    fbcp_dl_hash *hash; /* the chunk digests come from it after the sync (outlives this thread) */
    const char *path;
    fbcp_sidecar snap;
    fb_err rv;         /* FB_ERR_LOCAL_IO when fdatasync failed */
    int sidecar_errno; /* not 0: the sidecar could not be written */
    atomic_int finished;
} fbcp_dl_ckpt;

static void *fbcp_dl_ckpt_main(void *p)
{
    fbcp_dl_ckpt *k = p;

    /* a full local disk is a local_io_error: "disk_full" names the server's disk */
    if (fdatasync(k->fd) != 0)
        k->rv = FB_ERR_LOCAL_IO;
    else if (fbcp_dl_hash_take(k->hash, &k->snap) != FB_OK || fbcp_sidecar_write(k->path, &k->snap) != FB_OK)
        k->sidecar_errno = errno ? errno : EIO;
    atomic_store(&k->finished, 1);
    return NULL;
}

static void fbcp_download_sidecar_failed(fbcp_download *d, int err)
{
    if (!d->ckpt_warned) {
        d->ckpt_warned = 1;
        fbcp_warn("%s: cannot write %s: %s (the download cannot be resumed)", d->x.local, d->sidecar_path,
                  strerror(err));
    }
}

/* Waits for the checkpoint being written, if any; FB_ERR_LOCAL_IO when its fdatasync failed.
 * Called before anything that removes or rewrites the sidecar or the partial file. */
fb_err fbcp_download_ckpt_join(fbcp_download *d)
{
    fbcp_dl_ckpt *k = d->ckpt;
    fb_err rv;

    if (k == NULL)
        return FB_OK;
    pthread_join(k->thread, NULL);
    rv = k->rv;
    if (k->sidecar_errno != 0)
        fbcp_download_sidecar_failed(d, k->sidecar_errno);
    fbcp_sidecar_free(&k->snap);
    free(k);
    d->ckpt = NULL;
    return rv;
}

/* fdatasync the partial file, then record what it holds; now, on this thread (at the end). */
fb_err fbcp_download_checkpoint(fbcp_download *d)
{
    fb_err rv;

    if (d->x.fd < 0)
        return FB_OK;
    rv = fbcp_download_ckpt_join(d);
    if (rv != FB_OK)
        return rv;
    if (fdatasync(d->x.fd) != 0)
        return FB_ERR_LOCAL_IO;
    d->since_ckpt = 0;
    if (fbcp_dl_hash_take(d->hash, &d->sc) != FB_OK || fbcp_sidecar_write(d->sidecar_path, &d->sc) != FB_OK)
        fbcp_download_sidecar_failed(d, errno);
    return FB_OK;
}

/* Starts a checkpoint on its thread, unless the previous one is still being written (then the
 * next completed range tries again). Without a thread, it is written now. */
fb_err fbcp_download_checkpoint_behind(fbcp_download *d)
{
    fbcp_dl_ckpt *k;
    fb_err rv;

    if (d->ckpt != NULL && !atomic_load(&d->ckpt->finished))
        return FB_OK;
    rv = fbcp_download_ckpt_join(d);
    if (rv != FB_OK)
        return rv;
    k = calloc(1, sizeof(*k));
    if (k == NULL)
        return fbcp_download_checkpoint(d);
    k->fd = d->x.fd;
    k->hash = d->hash;
    k->path = d->sidecar_path;
    fbcp_sidecar_init(&k->snap);
    k->snap.url = strdup(d->sc.url != NULL ? d->sc.url : "");
    k->snap.etag = strdup(d->sc.etag != NULL ? d->sc.etag : "");
    k->snap.size = d->sc.size;
    k->snap.chunk_size = d->sc.chunk_size;
    atomic_init(&k->finished, 0);
    if (k->snap.url == NULL || k->snap.etag == NULL ||
        fbcp_ranges_copy(&k->snap.done, &d->sc.done) != FB_OK ||
        pthread_create(&k->thread, NULL, fbcp_dl_ckpt_main, k) != 0) {
        fbcp_sidecar_free(&k->snap);
        free(k);
        return fbcp_download_checkpoint(d);
    }
    d->ckpt = k;
    d->since_ckpt = 0;
    return FB_OK;
}
