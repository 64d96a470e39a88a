/* udpd_ckpt: upload checkpoints on a worker thread.
 *
 * A checkpoint is exactly the module's (mod_fallback_data.c): flock(LOCK_EX) on the partial
 * file, bitmap snapshot, fdatasync, fb_checkpoint_write, unlock; before it, the completed
 * front of the file is folded into the running digest (fb_digest.h). Skipped once the slot is no
 * longer the same ACTIVE session (a commit or cancel holds the same lock while it changes the
 * state). fdatasync of tens of megabytes can take a good part of a second, so it runs here and
 * not on the event loop, which keeps receiving meanwhile: only chunks whose data udpd has
 * already written are ever set in the bitmap, so any snapshot is safe to record. */
#include "udpd.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fb_checkpoint.h"
#include "fb_digest.h"
#include "fb_range.h"

#define QUEUE_LEN 64

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    udpd_ckpt_job q[QUEUE_LEN];
    size_t head, n;
    int running, stopping;
    pthread_t thread;
} ck = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

fb_err udpd_ckpt_run(udpd_ckpt_job *job)
{
    fb_checkpoint *cp = calloc(1, sizeof(*cp));
    struct stat st = {0};
    fb_err e = FB_OK;
    int tries = 0;

    if (cp == NULL) {
        e = FB_ERR_NOMEM;
        goto out;
    }
    /* Fold the completed front of the file into the slot's running digest while it is still in
     * the page cache, so the commit does not read it all again (returns at once if another
     * process is at it, or if the front chunk is not complete). */
    fb_slot_digest_advance(job->slot, job->generation, job->part_fd, 0);
    if (job->digest_only)
        goto out;
    while (flock(job->part_fd, LOCK_EX) != 0) {
        if (errno != EINTR || tries++ > 1000) {
            e = FB_ERR_IO;
            goto out;
        }
    }
    if (atomic_load(&job->slot->generation) == job->generation &&
        atomic_load(&job->slot->state) == FB_SLOT_ACTIVE) {
        cp->size = job->size;
        cp->chunk_size = job->chunk_size;
        cp->nchunks = fb_chunk_count(job->size, job->chunk_size);
        /* The session's expected digest goes into every checkpoint, as the module writes it: a
         * resume must expect the same. */
        cp->flags = job->flags;
        memcpy(cp->expected_sha256, job->expected_sha256, sizeof(cp->expected_sha256));
        cp->source_mtime_ns = job->source_mtime_ns;
        /* and which source and which partial inode the chunks belong to (fb_checkpoint.h) */
        memcpy(cp->source_id, job->source_id, sizeof(cp->source_id));
        fb_slot_bitmap_copy(cp->bitmap, job->slot);
        if (fstat(job->part_fd, &st) != 0)
            e = FB_ERR_IO;
        cp->part_dev = (uint64_t)st.st_dev;
        cp->part_ino = (uint64_t)st.st_ino;
        if (e == FB_OK && fdatasync(job->part_fd) != 0)
            e = fb_err_from_errno(errno) == FB_ERR_DISK_FULL ? FB_ERR_DISK_FULL : FB_ERR_IO;
        else if (e == FB_OK)
            e = fb_checkpoint_write(job->parent_fd, job->base, cp);
    }
    flock(job->part_fd, LOCK_UN);
out:
    free(cp);
    close(job->part_fd);
    close(job->parent_fd);
    job->part_fd = job->parent_fd = -1;
    if (job->digest_only && e == FB_OK)
        return e;
    if (e == FB_OK) {
        __atomic_fetch_add(&udpd_ctr.checkpoints, 1, __ATOMIC_RELAXED);
    } else {
        __atomic_fetch_add(&udpd_ctr.checkpoint_errors, 1, __ATOMIC_RELAXED);
        udpd_log(UDPD_WARN, "UD00060", "checkpoint '%s' not written: %s", job->base, fb_err_message(e));
    }
    return e;
}

static void *worker(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&ck.mu);
    for (;;) {
        udpd_ckpt_job job;

        while (ck.n == 0 && !ck.stopping)
            pthread_cond_wait(&ck.cv, &ck.mu);
        if (ck.n == 0 && ck.stopping)
            break;
        job = ck.q[ck.head];
        ck.head = (ck.head + 1) % QUEUE_LEN;
        ck.n--;
        pthread_mutex_unlock(&ck.mu);
        (void)udpd_ckpt_run(&job);
        pthread_mutex_lock(&ck.mu);
    }
    pthread_mutex_unlock(&ck.mu);
    return NULL;
}

fb_err udpd_ckpt_start(void)
{
    sigset_t all, old;
    int rc;

    /* The thread must not take the signals the event loop reads from its signalfd. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rc = pthread_create(&ck.thread, NULL, worker, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return FB_ERR_INTERNAL;
    ck.running = 1;
    return FB_OK;
}

void udpd_ckpt_submit(udpd_ckpt_job *job, int sync)
{
    if (!sync && ck.running) {
        pthread_mutex_lock(&ck.mu);
        if (ck.n < QUEUE_LEN) {
            ck.q[(ck.head + ck.n) % QUEUE_LEN] = *job;
            ck.n++;
            pthread_cond_signal(&ck.cv);
            pthread_mutex_unlock(&ck.mu);
            return;
        }
        pthread_mutex_unlock(&ck.mu);
    }
    (void)udpd_ckpt_run(job);
}

void udpd_ckpt_stop(void)
{
    if (!ck.running)
        return;
    pthread_mutex_lock(&ck.mu);
    ck.stopping = 1;
    pthread_cond_signal(&ck.cv);
    pthread_mutex_unlock(&ck.mu);
    pthread_join(ck.thread, NULL);
    ck.running = 0;
}
