/* udpd_files: the files of a udpd session (udpd_sess.h): opening them beneath the docroot, the
 * upload's write buffer (pwrite after each receive batch) and the publication of the chunks it
 * completed in the shared bitmap, checkpoints through udpd_ckpt, the download's read-ahead
 * buffer, and the check at the end of a download that the file is still the session's. */
#include "udpd_sess.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fb_checkpoint.h"
#include "fb_path.h"
#include "fb_range.h"
#include "fb_util.h"

/* Whether ST is the file the session was created for: the same inode with the same
 * modification and change times as the module saw (the slot's file identity; unknown = no). A
 * path that now names another file (a symlink or a directory swapped, a file renamed over it)
 * or a file written since fails this. */
static int file_is_the_sessions(const sess *s, const struct stat *st)
{
    return s->file_ino != 0 && (uint64_t)st->st_dev == s->file_dev && (uint64_t)st->st_ino == s->file_ino &&
           (uint64_t)st->st_size == s->size && fb_timespec_ns(&st->st_mtim) == s->file_mtime_ns &&
           fb_timespec_ns(&st->st_ctim) == s->file_ctime_ns;
}

/* Whether the file's last change (ctime: data or metadata, never set by a user) came before
 * CREATED_NS less a margin for the file system's coarse clock. With a coarse clock a write just
 * after the module's fstat could keep the same ctime; a file untouched for that long before
 * cannot be written "in the same tick" as its stat. */
#define FILE_CLOCK_MARGIN_NS (50ull * 1000 * 1000)
static int file_untouched_since(const struct stat *st, uint64_t created_ns)
{
    uint64_t ctime_ns = fb_timespec_ns(&st->st_ctim);

    return ctime_ns != 0 && created_ns > FILE_CLOCK_MARGIN_NS && ctime_ns + FILE_CLOCK_MARGIN_NS < created_ns;
}

/* At the end of a download: whether the path still names the file the session was created for,
 * unchanged (file_is_the_sessions, for the descriptor served from and for the path looked up
 * again): what a HEAD's ETag would have told the client, without an HTTPS round trip. */
int sess_file_unchanged(const sess *s)
{
    struct stat now, cur;
    int droot, fd = -1, same;

    if (!s->file_verifiable || s->file_fd < 0 || fstat(s->file_fd, &cur) != 0 ||
        !file_is_the_sessions(s, &cur))
        return 0;
    /* A hidden name is the module's own file (a download pack's staging file): its session ends
     * with the client's DELETE, which removes the file too, never here. */
    {
        char first[FB_RELPATH_MAX];
        size_t n = strcspn(s->relpath, "/");

        memcpy(first, s->relpath, n < sizeof(first) ? n : sizeof(first) - 1);
        first[n < sizeof(first) ? n : sizeof(first) - 1] = '\0';
        if (fb_path_is_partial_name(first))
            return 0;
    }
    droot = open(s->docroot, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (droot < 0)
        return 0;
    same = fb_path_open_beneath(&fd, droot, s->relpath, O_RDONLY | O_NONBLOCK, 0) == FB_OK &&
           fstat(fd, &now) == 0 && file_is_the_sessions(s, &now);
    if (fd >= 0)
        close(fd);
    close(droot);
    return same;
}

int sess_docroot_allowed(const fb_config *cfg, const char *docroot)
{
    for (unsigned i = 0; i < cfg->ndocroots; i++)
        if (cfg->docroots[i].docroot != NULL && strcmp(cfg->docroots[i].docroot, docroot) == 0)
            return 1;
    return 0;
}

void sess_close_files(sess *s)
{
    if (s->part_fd >= 0)
        close(s->part_fd);
    if (s->parent_fd >= 0)
        close(s->parent_fd);
    if (s->file_fd >= 0)
        close(s->file_fd);
    s->part_fd = s->parent_fd = s->file_fd = -1;
    s->files_open = 0;
}

fb_err sess_open_files(sess *s)
{
    char parent[FB_RELPATH_MAX], part[FB_RELPATH_MAX + 32], ckpt[FB_RELPATH_MAX + 32];
    const char *base, *slash;
    int droot = -1;
    struct stat sb;
    fb_err e;

    droot = open(s->docroot, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (droot < 0)
        return fb_err_from_errno(errno);
    if (s->direction == FB_DIR_DOWNLOAD) {
        e = fb_path_open_beneath(&s->file_fd, droot, s->relpath, O_RDONLY | O_NONBLOCK, 0);
        if (e == FB_OK && (fstat(s->file_fd, &sb) != 0 || !S_ISREG(sb.st_mode)))
            e = FB_ERR_NOT_FOUND;
        else if (e == FB_OK && (uint64_t)sb.st_size != s->size)
            e = FB_ERR_CHANGED;
        if (e == FB_OK)
            s->file_verifiable = file_is_the_sessions(s, &sb) && file_untouched_since(&sb, s->created_ns);
        goto done;
    }
    if (fb_path_partial_name(part, sizeof(part), s->relpath) != FB_OK ||
        fb_path_checkpoint_name(ckpt, sizeof(ckpt), s->relpath) != FB_OK) {
        e = FB_ERR_BAD_PATH;
        goto done;
    }
    slash = strrchr(s->relpath, '/');
    if (slash != NULL) {
        size_t n = (size_t)(slash - s->relpath);

        memcpy(parent, s->relpath, n);
        parent[n] = '\0';
    } else {
        parent[0] = '\0';
    }
    /* A real descriptor (not O_PATH): the checkpoint fsyncs the directory through it. */
    e = fb_path_open_beneath(&s->parent_fd, droot, parent, O_RDONLY | O_DIRECTORY, 0);
    if (e != FB_OK)
        goto done;
    base = strrchr(part, '/');
    base = base ? base + 1 : part;
    /* Read too: the checkpoint worker folds completed data into the running digest. */
    e = fb_path_open_beneath(&s->part_fd, s->parent_fd, base, O_RDWR | O_NOFOLLOW | O_NONBLOCK, 0);
    if (e == FB_ERR_NOT_FOUND)
        e = FB_ERR_SESSION_STATE;
    /* Only the partial file the session created (the slot keeps its inode, as the module's
     * PUT checks it): one deleted, replaced or truncated on the server is not written into. */
    if (e == FB_OK &&
        (fstat(s->part_fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != s->size ||
         (uint64_t)sb.st_ino != s->file_ino || (uint64_t)sb.st_dev != s->file_dev))
        e = FB_ERR_SESSION_STATE;
    base = strrchr(ckpt, '/');
    snprintf(s->ckpt_base, sizeof(s->ckpt_base), "%s", base ? base + 1 : ckpt);
    /* Checked after the open, like the module: a new session of the same path fails this one
     * before replacing the file, so a file opened here belongs to this session if it is still
     * active now. */
    if (e == FB_OK && !slot_still_ours(s))
        e = FB_ERR_SESSION_STATE;
done:
    close(droot);
    if (e != FB_OK) {
        sess_close_files(s);
        return e;
    }
    s->files_open = 1;
    return FB_OK;
}

/* Writes the write buffer out (only while the session is still ours), except the parts of
 * chunks someone else (HTTP) completed meanwhile: those may already be folded into the running
 * digest (fb_digest.h), so they are never written again, as the module does. */
static fb_err wflush(sess *s)
{
    uint64_t pos = s->woff, end = s->woff + s->wlen, run = s->woff;
    fb_err e = FB_OK;

    if (s->wlen == 0)
        return FB_OK;
    if (!slot_still_ours(s))
        return FB_ERR_SESSION_STATE;
    while (pos < end && e == FB_OK) {
        uint64_t idx = pos / s->chunk_size;
        uint64_t cend = (idx + 1) * s->chunk_size < end ? (idx + 1) * s->chunk_size : end;

        if (fb_slot_chunk_done(s->slot, idx)) {
            if (pos > run)
                e = fb_pwrite_all(s->part_fd, s->wbuf + (run - s->woff), (size_t)(pos - run), run);
            run = cend;
        }
        pos = cend;
    }
    if (e == FB_OK && end > run)
        e = fb_pwrite_all(s->part_fd, s->wbuf + (run - s->woff), (size_t)(end - run), run);
    if (e == FB_OK)
        s->wlen = 0;
    return e;
}

fb_err sess_write_cb(void *ctx, uint64_t offset, const uint8_t *buf, size_t len)
{
    sess *s = ctx;
    fb_err e;

    if (s->wlen > 0 && (offset != s->woff + s->wlen || s->wlen + len > WBUF_SIZE)) {
        e = wflush(s);
        if (e != FB_OK)
            return e;
    }
    if (len > WBUF_SIZE)
        return FB_ERR_INTERNAL; /* datagrams are far smaller */
    if (s->wlen == 0)
        s->woff = offset;
    memcpy(s->wbuf + s->wlen, buf, len);
    s->wlen += len;
    return FB_OK;
}

void sess_chunk_cb(void *ctx, uint64_t index)
{
    sess *s = ctx;

    if (s->npend == s->pend_cap) {
        size_t ncap = s->pend_cap ? s->pend_cap * 2 : 64;
        uint64_t *np = realloc(s->pend_chunks, ncap * sizeof(*np));

        if (np == NULL)
            return; /* the chunk stays unpublished; the checkpoint and HTTP see it as missing */
        s->pend_chunks = np;
        s->pend_cap = ncap;
    }
    s->pend_chunks[s->npend++] = index;
}

static void known_set(sess *s, uint64_t index)
{
    uint64_t bit = 1ull << (index % 64);

    if (!(s->known[index / 64] & bit)) {
        s->known[index / 64] |= bit;
        s->known_count++;
    }
}

/* Merges chunks completed by others (HTTP) into the receiver, so FEEDBACK reports them. */
void sess_sync_bitmap(sess *s)
{
    uint64_t done = atomic_load(&s->slot->chunks_done), words, w;

    if (s->rcv == NULL || done == s->known_count)
        return;
    fb_slot_bitmap_copy(s->ss->scratch, s->slot);
    words = (s->nchunks + 63) / 64;
    for (w = 0; w < words && w < FB_BITMAP_WORDS; w++) {
        uint64_t fresh = s->ss->scratch[w] & ~s->known[w];

        while (fresh) {
            uint64_t b = (uint64_t)__builtin_ctzll(fresh), idx = w * 64 + b;
            fb_range r = fb_chunk_range(s->size, s->chunk_size, idx);

            fresh &= fresh - 1;
            if (idx >= s->nchunks)
                break;
            if (fb_xfer_receiver_mark_received(s->rcv, r.offset, r.length) == FB_OK)
                known_set(s, idx);
        }
    }
}

/* Queues a checkpoint of the upload (or with DIGEST_ONLY, only the folding of its completed data
 * into the running digest, which leaves the session dirty). */
static void checkpoint_job(sess *s, uint64_t now, int sync, int digest_only)
{
    udpd_ckpt_job job;

    if (!s->files_open || s->direction != FB_DIR_UPLOAD || !s->ckpt_dirty)
        return;
    memset(&job, 0, sizeof(job));
    job.part_fd = fcntl(s->part_fd, F_DUPFD_CLOEXEC, 0);
    job.parent_fd = fcntl(s->parent_fd, F_DUPFD_CLOEXEC, 0);
    if (job.part_fd < 0 || job.parent_fd < 0) {
        if (job.part_fd >= 0)
            close(job.part_fd);
        if (job.parent_fd >= 0)
            close(job.parent_fd);
        udpd_log(UDPD_WARN, "UD00061", "session %s: no descriptor for a checkpoint: %s", s->id,
                 strerror(errno));
        return;
    }
    snprintf(job.base, sizeof(job.base), "%s", s->ckpt_base);
    job.slot = s->slot;
    job.generation = s->generation;
    job.size = s->size;
    job.chunk_size = s->chunk_size;
    job.flags = s->ckpt_flags;
    memcpy(job.expected_sha256, s->expected_sha256, sizeof(job.expected_sha256));
    job.source_mtime_ns = s->source_mtime_ns;
    memcpy(job.source_id, s->source_id, sizeof(job.source_id));
    job.digest_only = digest_only;
    udpd_ckpt_submit(&job, sync);
    if (digest_only)
        return;
    s->ckpt_dirty = 0;
    s->since_ckpt_bytes = 0;
    s->last_ckpt_us = now;
}

void sess_checkpoint(sess *s, uint64_t now, int sync)
{
    checkpoint_job(s, now, sync, 0);
}

/* The checkpoint when a client closes its association. An upload that is complete is about to be
 * committed, and the commit makes it durable (fsync before the rename): its checkpoint waits
 * (the session stays dirty) and is written by the housekeeping only if the session is still
 * active CKPT_IDLE_US after its last data, that is when the commit does not come. Until then a
 * crash costs at most a resend of what arrived since the last sess_checkpoint, below CKPT_BYTES, as
 * between two periodic checkpoints. For a small file this saves two fdatasyncs, a directory
 * fsync and the creation and removal of the sidecar per file. The completed data is still folded
 * into the running digest now, so the commit need not read it. */
void sess_checkpoint_at_close(sess *s, uint64_t now)
{
    int complete = s->files_open && s->direction == FB_DIR_UPLOAD &&
                   atomic_load(&s->slot->chunks_done) == s->nchunks && s->since_ckpt_bytes < CKPT_BYTES;

    checkpoint_job(s, now, 0, complete);
}

/* Writes buffered data, then publishes the chunks it completed. */
fb_err sess_publish(sess *s)
{
    fb_err e = wflush(s);
    size_t i;

    if (e != FB_OK) {
        s->npend = 0;
        return e;
    }
    for (i = 0; i < s->npend; i++) {
        if (fb_slot_set_chunk(s->slot, s->pend_chunks[i]))
            udpd_ctr.chunks_completed++;
        known_set(s, s->pend_chunks[i]);
        s->ckpt_dirty = 1;
    }
    s->npend = 0;
    return FB_OK;
}

fb_err sess_read_cb(void *ctx, uint64_t offset, uint8_t *buf, size_t len)
{
    sess *s = ctx;
    size_t want;
    fb_err e;

    if (offset >= s->roff && offset + len <= s->roff + s->rlen) {
        memcpy(buf, s->rbuf + (offset - s->roff), len);
        return FB_OK;
    }
    if (len > RBUF_SIZE || offset > s->size || len > s->size - offset)
        return FB_ERR_INTERNAL;
    /* Read ahead from OFFSET: first sends and repairs both go forward. */
    want = s->size - offset < RBUF_SIZE ? (size_t)(s->size - offset) : RBUF_SIZE;
    s->rlen = 0;
    e = fb_pread_all(s->file_fd, s->rbuf, want, offset); /* FB_ERR_CHANGED: it shrank under us */
    if (e != FB_OK)
        return e;
    s->roff = offset;
    s->rlen = want;
    memcpy(buf, s->rbuf, len);
    return FB_OK;
}
