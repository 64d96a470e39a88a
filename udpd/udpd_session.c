/* udpd_session: the UDP protocol side of udpd, one context per session found in the shared table.
 *
 * A datagram's session id names a slot (index) and carries the slot's random part; a context is
 * created on the first HELLO for an ACTIVE slot whose random part matches, with the slot's key,
 * and dropped as soon as the slot is no longer the same ACTIVE session (commit, cancel, reuse:
 * the generation changed). An association (client address, nonces, data keys, replay window)
 * starts with each new valid HELLO; until the client has sent one authenticated data-phase
 * packet from that address (proof that it got our HELLO_ACK there) udpd sends nothing but the
 * HELLO_ACK, which is smaller than the padded HELLO: no amplification.
 *
 * Uploads: fb_xfer_receiver; new bytes are gathered in a write buffer (contiguous runs) and
 * written with pwrite after each receive batch, and only then are the chunks they completed set
 * in the shared bitmap. Checkpoints (64 MiB, 2 s, idle, close, exit) go to udpd_ckpt. Chunks
 * written over HTTP meanwhile are merged into the receiver so FEEDBACK reports them.
 * Downloads: fb_xfer_sender reading the file through a read-ahead buffer, started by the
 * client's first FEEDBACK (which says what it already has). */
#include "udpd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "fb_aead.h"
#include "fb_assoc.h"
#include "fb_checkpoint.h"
#include "fb_path.h"
#include "fb_range.h"
#include "fb_util.h"
#include "fb_xfer.h"

#define SESSION_IDLE_US (300ull * 1000000) /* context without association: freed */
#define CKPT_BYTES (64ull << 20)
#define CKPT_INTERVAL_US (2ull * 1000000)
#define CKPT_IDLE_US (1000000ull)
#define HOUSEKEEP_US 100000ull
#define WBUF_SIZE (1u << 20)
#define RBUF_SIZE (1u << 20)
#define SEND_QUANTUM 64 /* DATA per session per round, so sessions share the batch */
/* Sleep at least this long between pacing wakes: the pacer's 2 ms burst credit keeps the rate,
 * and each wake sends a batch (at 100 Mbit/s about 8 datagrams; with 250 us one or two, at twice
 * the CPU per GiB: 13.4 against 6.2-7.3 s on the benchmark's link). */
#define PACING_QUANTUM_US 1000

typedef struct sess sess;

struct sess {
    udpd_sessions *ss;
    uint32_t index, generation;
    uint8_t sid[FB_WIRE_SID_LEN];
    char id[FB_WIRE_SID_HEX_LEN + 1];
    fb_slot *slot;
    uint32_t direction;
    uint64_t size;
    uint32_t chunk_size;
    uint64_t nchunks;
    uint32_t ckpt_flags;  /* FB_CHECKPOINT_FLAG_SHA256 when the session has an expected digest */
    uint8_t expected_sha256[32];
    uint64_t source_mtime_ns; /* with FB_CHECKPOINT_FLAG_SOURCE_MTIME in ckpt_flags */
    uint8_t source_id[32]; /* an upload's source identity, for its checkpoints */
    char relpath[FB_RELPATH_MAX];
    char docroot[FB_DOCROOT_MAX];
    uint64_t last_seen_us; /* any datagram for this session that authenticated */

    /* The handshake (fb_assoc): the session key, the running association (as.cur) and a new one
     * waiting for its first authenticated data-phase packet (as.pend, PROTOCOL.md 7.4, 7.5). */
    fb_assoc_srv as;
    udpd_addr peer;    /* as.cur's address, as the socket layer takes it */
    char peer_str[64]; /* ... and for the log */
    int force_feedback;

    /* files (opened at the first association) */
    int files_open;
    int part_fd, parent_fd, file_fd;
    char ckpt_base[FB_RELPATH_MAX + 32];

    /* upload */
    fb_xfer_receiver *rcv;
    uint8_t *wbuf;
    uint64_t woff;
    size_t wlen;
    uint64_t *pend_chunks; /* chunks complete in the write buffer, published after the flush */
    size_t npend, pend_cap;
    uint64_t *known; /* chunks known complete (ours or seen in the shared bitmap) */
    uint64_t known_count;
    uint64_t since_ckpt_bytes, last_ckpt_us, last_data_us;
    int ckpt_dirty;
    fb_err write_error;
    int touched;
    sess *next_touched;

    /* download */
    uint64_t created_ns;     /* the session's creation (CLOCK_REALTIME), when the client had just
                              * checked the file's ETag against its HEAD */
    uint64_t file_dev, file_ino, file_mtime_ns, file_ctime_ns; /* the file then (the slot's) */
    int file_verifiable;     /* the file opened is that one, unchanged since shortly before */
    fb_xfer_sender *snd;
    uint8_t *rbuf;
    uint64_t roff;
    size_t rlen;
    int snd_done_logged;
    uint64_t trace_t0_us; /* UDPD_RATE_TRACE: when this session's trace began */

    sess *next_assoc, *prev_assoc;
};

struct udpd_sessions {
    udpd *d;
    uint32_t nslots;
    sess **by_index;
    sess *assoc; /* associated sessions (doubly linked) */
    unsigned nassoc;
    sess *touched;
    uint64_t last_housekeep_us;
    uint64_t *scratch;   /* bitmap copy */
    fb_assoc_server *hs;        /* the handshake of every session */
    const fb_config *policy_of; /* the configuration its policy was taken from */
};

static void count_wire(fb_wire_reason why)
{
    if ((unsigned)why < FB_WIRE_R__COUNT)
        udpd_ctr.wire[why]++;
}

static void count_drop(udpd_drop why)
{
    udpd_ctr.drop[why]++;
}

/* ---- lists ------------------------------------------------------------------------------------ */

static void assoc_link(sess *s)
{
    udpd_sessions *ss = s->ss;

    s->prev_assoc = NULL;
    s->next_assoc = ss->assoc;
    if (ss->assoc)
        ss->assoc->prev_assoc = s;
    ss->assoc = s;
    ss->nassoc++;
}

static void assoc_unlink(sess *s)
{
    udpd_sessions *ss = s->ss;

    if (s->prev_assoc)
        s->prev_assoc->next_assoc = s->next_assoc;
    else
        ss->assoc = s->next_assoc;
    if (s->next_assoc)
        s->next_assoc->prev_assoc = s->prev_assoc;
    s->next_assoc = s->prev_assoc = NULL;
    ss->nassoc--;
}

static void touch(sess *s)
{
    if (!s->touched) {
        s->touched = 1;
        s->next_touched = s->ss->touched;
        s->ss->touched = s;
    }
}

/* ---- sending ---------------------------------------------------------------------------------- */

/* CLOSE(REASON) with header FLAGS (FB_WIRE_F_CLOSE_*) on the running association. */
static void send_close(sess *s, fb_err reason, uint8_t flags)
{
    fb_wire_hdr hdr;
    fb_wire_close c;
    uint8_t *p;
    size_t len = 0;

    if (!s->as.cur.live)
        return;
    p = udpd_send_reserve(s->ss->d, FB_WIRE_OVERHEAD + FB_WIRE_CLOSE_FIXED);
    if (p == NULL)
        return;
    memset(&hdr, 0, sizeof(hdr));
    memcpy(hdr.sid, s->sid, sizeof(hdr.sid));
    hdr.flags = flags;
    hdr.pn = s->as.cur.pn_out;
    c.reason = (uint32_t)reason;
    if (fb_wire_encode_close(p, FB_WIRE_OVERHEAD + FB_WIRE_CLOSE_FIXED, &len, &hdr, &c, s->as.cur.aead) ==
        FB_OK) {
        s->as.cur.pn_out++;
        udpd_send_commit(s->ss->d, len, &s->peer);
    }
}

static void send_feedback(sess *s, uint64_t now, int force)
{
    uint8_t *p;
    size_t len = 0;

    if (!s->as.cur.live || s->rcv == NULL)
        return;
    if (s->force_feedback)
        force = 1;
    if (!force && fb_xfer_receiver_next_feedback(s->rcv, now) > now)
        return;
    p = udpd_send_reserve(s->ss->d, FB_WIRE_MIN_DATAGRAM);
    if (p == NULL)
        return;
    if (fb_xfer_receiver_feedback(s->rcv, p, FB_WIRE_MIN_DATAGRAM, &len, s->as.cur.pn_out, now, force) ==
            FB_OK &&
        len > 0) {
        s->as.cur.pn_out++;
        s->force_feedback = 0;
        udpd_send_commit(s->ss->d, len, &s->peer);
        udpd_ctr.feedbacks_sent++;
    }
}

/* ---- files ------------------------------------------------------------------------------------ */

static int slot_still_ours(const sess *s)
{
    return atomic_load(&s->slot->generation) == s->generation &&
           atomic_load(&s->slot->state) == FB_SLOT_ACTIVE;
}

/* Whether the session was refused by the administrator (fbctl cancel: FAILED with server_refused,
 * same generation): its client is told so in the CLOSE, the seed's "Server refused request". */
static int slot_refused(const sess *s)
{
    return atomic_load(&s->slot->generation) == s->generation &&
           atomic_load(&s->slot->state) == FB_SLOT_FAILED &&
           atomic_load(&s->slot->error_code) == (uint32_t)FB_ERR_SERVER_REFUSED;
}

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
static int download_file_unchanged(const sess *s)
{
    struct stat now, cur;
    int droot, fd = -1, same;

    if (!s->file_verifiable || s->file_fd < 0 || fstat(s->file_fd, &cur) != 0 || !file_is_the_sessions(s, &cur))
        return 0;
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

static int docroot_allowed(const fb_config *cfg, const char *docroot)
{
    for (unsigned i = 0; i < cfg->ndocroots; i++)
        if (cfg->docroots[i].docroot != NULL && strcmp(cfg->docroots[i].docroot, docroot) == 0)
            return 1;
    return 0;
}

static fb_err open_files(sess *s)
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
        if (s->part_fd >= 0)
            close(s->part_fd);
        if (s->parent_fd >= 0)
            close(s->parent_fd);
        if (s->file_fd >= 0)
            close(s->file_fd);
        s->part_fd = s->parent_fd = s->file_fd = -1;
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

static fb_err write_cb(void *ctx, uint64_t offset, const uint8_t *buf, size_t len)
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

static void chunk_cb(void *ctx, uint64_t index)
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
static void sync_bitmap(sess *s)
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

static void checkpoint(sess *s, uint64_t now, int sync)
{
    checkpoint_job(s, now, sync, 0);
}

/* The checkpoint when a client closes its association. An upload that is complete is about to be
 * committed, and the commit makes it durable (fsync before the rename): its checkpoint waits
 * (the session stays dirty) and is written by the housekeeping only if the session is still
 * active CKPT_IDLE_US after its last data, that is when the commit does not come. Until then a
 * crash costs at most a resend of what arrived since the last checkpoint, below CKPT_BYTES, as
 * between two periodic checkpoints. For a small file this saves two fdatasyncs, a directory
 * fsync and the creation and removal of the sidecar per file. The completed data is still folded
 * into the running digest now, so the commit need not read it. */
static void checkpoint_at_close(sess *s, uint64_t now)
{
    int complete = s->files_open && s->direction == FB_DIR_UPLOAD &&
                   atomic_load(&s->slot->chunks_done) == s->nchunks && s->since_ckpt_bytes < CKPT_BYTES;

    checkpoint_job(s, now, 0, complete);
}

/* Writes buffered data, then publishes the chunks it completed. */
static fb_err publish(sess *s)
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

static fb_err read_cb(void *ctx, uint64_t offset, uint8_t *buf, size_t len)
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

/* ---- life cycle ------------------------------------------------------------------------------- */

/* Ends the running association (the context stays for a new HELLO). */
static void assoc_end(sess *s, uint64_t now, const char *why)
{
    if (!s->as.cur.live)
        return;
    if (s->direction == FB_DIR_UPLOAD && s->rcv != NULL) {
        if (publish(s) == FB_OK)
            checkpoint_at_close(s, now);
    }
    if (s->snd != NULL) {
        fb_xfer_sender_free(s->snd);
        s->snd = NULL;
    }
    assoc_unlink(s);
    udpd_log(UDPD_INFO, "UD00020", "session %s: association with %s ended: %s", s->id, s->peer_str, why);
    fb_assoc_srv_end(&s->as); /* wipes its keys */
}

static void sess_destroy(sess *s, uint64_t now, const char *why)
{
    udpd_sessions *ss = s->ss;

    /* Off the list of sessions this batch touched: the end of the batch walks it. */
    if (s->touched) {
        for (sess **pp = &ss->touched; *pp != NULL; pp = &(*pp)->next_touched)
            if (*pp == s) {
                *pp = s->next_touched;
                break;
            }
        s->touched = 0;
        s->next_touched = NULL;
    }

    if (s->as.cur.live) {
        /* The session is gone (or ending): nothing may be written or recorded for it any more. */
        s->wlen = 0;
        s->npend = 0;
        s->ckpt_dirty = 0;
        assoc_end(s, now, why);
    }
    ss->by_index[s->index] = NULL;
    fb_xfer_receiver_free(s->rcv);
    fb_xfer_sender_free(s->snd);
    fb_assoc_srv_clear(&s->as);
    if (s->part_fd >= 0)
        close(s->part_fd);
    if (s->parent_fd >= 0)
        close(s->parent_fd);
    if (s->file_fd >= 0)
        close(s->file_fd);
    free(s->wbuf);
    free(s->rbuf);
    free(s->pend_chunks);
    free(s->known);
    udpd_log(UDPD_DEBUG, "UD00021", "session %s: context dropped: %s", s->id, why);
    OPENSSL_cleanse(s, sizeof(*s)); /* the session key with it */
    free(s);
}

/* The slot left ACTIVE under the session (commit, cancel, reuse): drop it, telling a client the
 * administrator refused (fbctl cancel) why, so it stops instead of continuing over HTTPS. */
static void sess_ended(sess *s, uint64_t now)
{
    if (slot_refused(s)) {
        udpd_log(UDPD_INFO, "UD00070", "session %s: cancelled on the server; closing its association", s->id);
        send_close(s, FB_ERR_SERVER_REFUSED, 0);
    }
    sess_destroy(s, now, "the session is no longer active");
}

/* The slot's session, if the random part matches; with its key. NULL if not a live session. */
static sess *sess_create(udpd_sessions *ss, uint32_t idx, const uint8_t sid[FB_WIRE_SID_LEN], uint64_t now)
{
    fb_slot *slot = fb_table_slot(udpd_table(ss->d), idx);
    fb_slot_info *info = NULL;
    uint32_t gen;
    sess *s = NULL;
    int ok;

    gen = atomic_load(&slot->generation);
    if (atomic_load(&slot->state) != FB_SLOT_ACTIVE)
        return NULL;
    info = malloc(sizeof(*info));
    if (info == NULL)
        return NULL;
    ok = fb_slot_info_read_checked(info, slot) && atomic_load(&slot->generation) == gen &&
         atomic_load(&slot->state) == FB_SLOT_ACTIVE &&
         fb_mem_equal_ct(info->id_random, sid + 4, FB_ID_RANDOM_LEN) &&
         (info->direction == FB_DIR_UPLOAD || info->direction == FB_DIR_DOWNLOAD) && info->chunk_size > 0 &&
         info->nchunks == fb_chunk_count(info->size, info->chunk_size) && info->nchunks <= FB_BITMAP_BITS;
    if (ok)
        s = calloc(1, sizeof(*s));
    if (s != NULL && fb_assoc_srv_init(&s->as, sid, info->key, info->cipher, s) != FB_OK) {
        free(s);
        s = NULL;
    }
    if (s != NULL) {
        s->ss = ss;
        s->index = idx;
        s->generation = gen;
        memcpy(s->sid, sid, FB_WIRE_SID_LEN);
        fb_wire_sid_to_string(s->id, sid);
        s->slot = slot;
        s->direction = info->direction;
        s->size = info->size;
        s->chunk_size = info->chunk_size;
        s->nchunks = info->nchunks;
        s->created_ns = info->created_ns;
        s->file_dev = info->file_dev;
        s->file_ino = info->file_ino;
        s->file_mtime_ns = info->file_mtime_ns;
        s->file_ctime_ns = info->file_ctime_ns;
        if (info->flags & FB_SLOT_FLAG_EXPECTED_SHA256) {
            s->ckpt_flags = FB_CHECKPOINT_FLAG_SHA256;
            memcpy(s->expected_sha256, info->expected_sha256, sizeof(s->expected_sha256));
        }
        if (info->flags & FB_SLOT_FLAG_SOURCE_MTIME) {
            s->ckpt_flags |= FB_CHECKPOINT_FLAG_SOURCE_MTIME;
            s->source_mtime_ns = info->source_mtime_ns;
        }
        memcpy(s->source_id, info->source_id, sizeof(s->source_id));
        memcpy(s->relpath, info->relpath, sizeof(s->relpath));
        s->relpath[sizeof(s->relpath) - 1] = '\0';
        memcpy(s->docroot, info->docroot, sizeof(s->docroot));
        s->docroot[sizeof(s->docroot) - 1] = '\0';
        s->part_fd = s->parent_fd = s->file_fd = -1;
        s->last_seen_us = now;
        /* The periodic checkpoint (CKPT_INTERVAL_US) counts from the session's start, not from
         * time 0: a new upload is not checkpointed on the next housekeeping tick (a small file's
         * checkpoint would be thrown away by its commit a moment later). */
        s->last_ckpt_us = now;
        ss->by_index[idx] = s;
    }
    OPENSSL_cleanse(info, sizeof(*info));
    free(info);
    return s;
}

/* Makes sure the engine of the session's direction exists (upload: the receiver, seeded from
 * the shared bitmap; download: buffers; the sender waits for the first FEEDBACK). */
static fb_err engines_prepare(sess *s, uint64_t now)
{
    if (s->direction == FB_DIR_UPLOAD) {
        fb_xfer_receiver_params rp;
        fb_err e;

        if (s->rcv != NULL)
            return FB_OK;
        if (s->wbuf == NULL)
            s->wbuf = malloc(WBUF_SIZE);
        if (s->known == NULL)
            s->known = calloc(FB_BITMAP_WORDS, sizeof(uint64_t));
        if (s->wbuf == NULL || s->known == NULL)
            return FB_ERR_NOMEM;
        memset(s->known, 0, FB_BITMAP_WORDS * sizeof(uint64_t));
        s->known_count = 0;
        s->wlen = 0;
        s->npend = 0;
        memset(&rp, 0, sizeof(rp));
        rp.size = s->size;
        rp.chunk_size = s->chunk_size;
        rp.aead = s->as.hs; /* replaced by the association's keys when it is validated */
        memcpy(rp.sid, s->sid, FB_WIRE_SID_LEN);
        rp.write = write_cb;
        rp.on_chunk_complete = chunk_cb;
        rp.ctx = s;
        e = fb_xfer_receiver_new(&s->rcv, &rp, now);
        if (e != FB_OK)
            return e;
        sync_bitmap(s);
        return FB_OK;
    }
    if (s->rbuf == NULL)
        s->rbuf = malloc(RBUF_SIZE);
    return s->rbuf ? FB_OK : FB_ERR_NOMEM;
}

/* A write failed or the session went away under the upload: tell the client, start over on
 * its next HELLO (from the shared bitmap, which holds only written chunks). */
static void upload_fail(sess *s, fb_err e, uint64_t now)
{
    if (e == FB_ERR_SESSION_STATE && slot_refused(s))
        e = FB_ERR_SERVER_REFUSED;
    udpd_ctr.write_errors++;
    udpd_log(e == FB_ERR_SESSION_STATE ? UDPD_INFO : UDPD_ERROR, "UD00022",
             "session %s: writing '%s' failed: %s; UDP transfer stopped (the client continues over HTTPS)",
             s->id, s->relpath, fb_err_message(e));
    s->wlen = 0;
    s->npend = 0;
    send_close(s, e, 0);
    fb_xfer_receiver_free(s->rcv);
    s->rcv = NULL;
    assoc_end(s, now, fb_err_name(e));
}

/* ---- handshake (fb_assoc) --------------------------------------------------------------------- */

/* The negotiation follows the configuration (a reload applies to the HELLOs after it). */
static void policy_refresh(udpd_sessions *ss)
{
    const fb_config *cfg = udpd_cfg(ss->d);
    fb_assoc_policy pol;

    if (cfg == ss->policy_of)
        return;
    memset(&pol, 0, sizeof(pol));
    pol.allowed_ciphers = cfg->allowed_ciphers;
    pol.allowed_policies = cfg->allowed_policies;
    pol.target_rate_cap = cfg->target_rate_cap_kbps * 125; /* kbit/s -> B/s */
    pol.min_rate_cap = cfg->min_rate_cap_kbps * 125;
    pol.default_rate = UDPD_DEFAULT_RATE;
    pol.max_datagram = (uint16_t)UDPD_MAX_DATAGRAM;
    fb_assoc_server_set_policy(ss->hs, &pol);
    ss->policy_of = cfg;
}

/* The session a datagram names: its context, created on a HELLO for an ACTIVE slot whose random
 * part matches; a context whose slot is no longer the same session is dropped first. */
static fb_assoc_srv *lookup_cb(void *ctx, const fb_wire_hdr *hdr, uint64_t now, fb_wire_reason *why)
{
    udpd_sessions *ss = ctx;
    uint32_t idx = fb_wire_sid_slot(hdr->sid);
    sess *s;

    if (idx >= ss->nslots) {
        *why = FB_WIRE_R_UNKNOWN_SESSION;
        return NULL;
    }
    s = ss->by_index[idx];
    if (s != NULL && !slot_still_ours(s)) {
        sess_ended(s, now);
        s = NULL;
    }
    if (s == NULL) {
        if (hdr->type != FB_WIRE_HELLO) {
            /* No context: the session is unknown, or no HELLO came yet. */
            *why = atomic_load(&fb_table_slot(udpd_table(ss->d), idx)->state) == FB_SLOT_ACTIVE
                       ? FB_WIRE_R_NO_KEYS
                       : FB_WIRE_R_UNKNOWN_SESSION;
            return NULL;
        }
        s = sess_create(ss, idx, hdr->sid, now);
        if (s == NULL) {
            *why = FB_WIRE_R_UNKNOWN_SESSION;
            return NULL;
        }
    }
    return &s->as;
}

/* What udpd requires of a HELLO beyond cipher and policy: its docroot, its files, the engines. */
static fb_err admit_cb(void *ctx, fb_assoc_srv *as, uint64_t now, const char **detail)
{
    udpd_sessions *ss = ctx;
    sess *s = as->user;
    fb_err st = FB_OK;

    if (!docroot_allowed(udpd_cfg(ss->d), s->docroot)) {
        *detail = "the session's docroot is not in this udpd's configuration";
        return FB_ERR_PERMISSION;
    }
    if (!s->files_open && (st = open_files(s)) != FB_OK) {
        *detail = "cannot open the file";
        return st;
    }
    if ((st = engines_prepare(s, now)) != FB_OK)
        *detail = "out of memory";
    return st;
}

/* An authenticated HELLO was answered (or not): count, log, send the answer back to FROM. */
static void on_hello(sess *s, fb_assoc_event ev, const fb_assoc_out *out, const udpd_addr *from)
{
    char where[64];
    uint8_t *p;

    udpd_ctr.hellos++;
    udpd_addr_format(where, sizeof(where), from);
    switch (ev) {
    case FB_ASSOC_HELLO_REPLAYED:
        count_drop(UDPD_DROP_HELLO_REPLAYED);
        break;
    case FB_ASSOC_HELLO_REFUSED:
        udpd_ctr.hello_refused++;
        udpd_log(UDPD_INFO, "UD00023", "session %s: HELLO from %s refused: %s (%s)", s->id, where,
                 fb_err_message(out->status), out->detail ? out->detail : "");
        break;
    case FB_ASSOC_HELLO_FAILED:
        udpd_log(UDPD_ERROR, "UD00024", "session %s: cannot derive data keys", s->id);
        break;
    case FB_ASSOC_HELLO_PENDING:
        udpd_log(UDPD_DEBUG, "UD00029", "session %s: HELLO from %s accepted, waiting for its first packet",
                 s->id, where);
        break;
    default: /* FB_ASSOC_HELLO_AGAIN: our answer was lost; the same one again */
        break;
    }
    if (out->len == 0 || (p = udpd_send_reserve(s->ss->d, out->len)) == NULL)
        return;
    memcpy(p, out->dgram, out->len);
    udpd_send_commit(s->ss->d, out->len, from);
}

/* The pending association proved its address: it becomes the running one. */
static void promote(sess *s, uint64_t now)
{
    if (s->as.cur.live)
        assoc_end(s, now, "replaced by a new association");
    fb_assoc_srv_promote(&s->as);
    memcpy(&s->peer.ss, &s->as.cur.peer.ss, sizeof(s->peer.ss));
    s->peer.len = s->as.cur.peer.len;
    udpd_addr_format(s->peer_str, sizeof(s->peer_str), &s->peer);
    assoc_link(s);
    udpd_ctr.associations++;
    s->snd_done_logged = 0;
    s->roff = s->rlen = 0;
    if (s->rcv != NULL) {
        fb_xfer_receiver_set_aead(s->rcv, s->as.cur.aead);
        s->force_feedback = 1; /* the client learns at once what is held */
    }
    udpd_log(
        UDPD_INFO, "UD00025",
        "session %s: %s of '%s' (%llu bytes) from %s: cipher %s, policy %s, rate %llu..%llu B/s, datagram %u",
        s->id, s->direction == FB_DIR_UPLOAD ? "upload" : "download", s->relpath, (unsigned long long)s->size,
        s->peer_str, fb_config_cipher_name(s->as.cur.cipher), fb_config_policy_name(s->as.cur.policy),
        (unsigned long long)s->as.cur.min_rate, (unsigned long long)s->as.cur.target_rate, s->as.cur.max_dgram);
}

/* ---- data phase ------------------------------------------------------------------------------- */

/* ARRIVED: the kernel's receive time, for the receive rate and the delay echo. */
static void on_data(sess *s, const fb_wire_pkt *pkt, uint64_t now, uint64_t arrived)
{
    size_t fresh = 0;
    fb_err e;

    if (s->direction != FB_DIR_UPLOAD) {
        count_drop(UDPD_DROP_WRONG_DIRECTION);
        return;
    }
    if (s->rcv == NULL) {
        count_drop(UDPD_DROP_SESSION_INACTIVE);
        return;
    }
    e = fb_xfer_receiver_on_data(s->rcv, &pkt->hdr, &pkt->u.data, arrived, &fresh);
    if (e == FB_ERR_BAD_RANGE) {
        count_wire(FB_WIRE_R_MALFORMED); /* beyond the session size (PROTOCOL.md 6.3) */
        return;
    }
    if (e == FB_ERR_TOO_LARGE) {
        count_drop(UDPD_DROP_RANGE_SET_FULL);
        return;
    }
    if (e != FB_OK) {
        upload_fail(s, e, now);
        return;
    }
    udpd_ctr.data_bytes_new += fresh;
    udpd_ctr.data_bytes_dup += pkt->u.data.len - fresh;
    if (fresh > 0) {
        atomic_fetch_add(&s->slot->bytes_udp, (uint64_t)fresh);
        s->since_ckpt_bytes += fresh;
        s->last_data_us = now;
    }
    touch(s);
}

/* UDPD_RATE_TRACE=FILE (benchmarks, tuning): the download sender's rate controller after each
 * FEEDBACK, one line each, columns as fb_xfer_sender_trace_line. Opened once; never holds keys. */
static void rate_trace(sess *s, uint64_t now)
{
    static FILE *trace;
    static int tried;
    char line[256];

    if (!tried) {
        const char *path = getenv("UDPD_RATE_TRACE");

        tried = 1;
        if (path != NULL && (trace = fopen(path, "a")) != NULL)
            setvbuf(trace, NULL, _IOLBF, 0);
    }
    if (trace == NULL)
        return;
    if (s->trace_t0_us == 0)
        s->trace_t0_us = now;
    fb_xfer_sender_trace_line(line, sizeof(line), s->snd, s->trace_t0_us, now);
    fprintf(trace, "%s %s", s->id, line);
}

/* NOW: the FEEDBACK's arrival time (the kernel's), so the RTT excludes time it waited to be read. */
static void on_feedback(sess *s, const fb_wire_pkt *pkt, uint64_t now)
{
    fb_err e;

    if (s->direction != FB_DIR_DOWNLOAD) {
        count_drop(UDPD_DROP_WRONG_DIRECTION);
        return;
    }
    udpd_ctr.feedbacks_rx++;
    if (s->snd == NULL) {
        fb_xfer_sender_params sp;

        memset(&sp, 0, sizeof(sp));
        sp.size = s->size;
        sp.max_payload = s->as.cur.max_dgram - FB_WIRE_DATA_OVERHEAD;
        sp.chunk_size = s->chunk_size;
        sp.rate.policy = s->as.cur.policy;
        sp.rate.target_rate = s->as.cur.target_rate;
        sp.rate.min_rate = s->as.cur.min_rate;
        sp.rate.packet_size = s->as.cur.max_dgram;
        sp.aead = s->as.cur.aead;
        memcpy(sp.sid, s->sid, FB_WIRE_SID_LEN);
        sp.read = read_cb;
        sp.read_ctx = s;
        e = fb_xfer_sender_new(&s->snd, &sp, now);
        if (e != FB_OK) {
            udpd_log(UDPD_ERROR, "UD00026", "session %s: cannot start sending: %s", s->id, fb_err_message(e));
            send_close(s, e, 0);
            assoc_end(s, now, fb_err_name(e));
            return;
        }
    }
    e = fb_xfer_sender_on_feedback(s->snd, &pkt->hdr, &pkt->u.feedback, now);
    if (e != FB_OK) {
        count_wire(FB_WIRE_R_MALFORMED);
        return;
    }
    rate_trace(s, now);
    if (fb_xfer_sender_done(s->snd) && !s->snd_done_logged) {
        fb_xfer_sender_stats st;

        fb_xfer_sender_stats_get(&st, s->snd);
        s->snd_done_logged = 1;
        udpd_log(UDPD_INFO, "UD00027", "session %s: download of '%s' complete: %llu bytes sent, %llu resent",
                 s->id, s->relpath, (unsigned long long)st.bytes_new, (unsigned long long)st.bytes_retx);
    }
}

static void on_probe(sess *s, const fb_wire_pkt *pkt, uint64_t now, uint64_t arrived)
{
    fb_wire_hdr hdr;
    fb_wire_probe r;
    uint8_t *p;
    size_t len = 0, size = pkt->datagram_len;

    if (pkt->hdr.flags & FB_WIRE_F_PROBE_REPLY) {
        count_drop(UDPD_DROP_UNEXPECTED);
        return;
    }
    udpd_ctr.probes++;
    p = udpd_send_reserve(s->ss->d, size);
    if (p == NULL)
        return;
    memset(&hdr, 0, sizeof(hdr));
    memcpy(hdr.sid, s->sid, sizeof(hdr.sid));
    hdr.flags = FB_WIRE_F_PROBE_REPLY;
    hdr.pn = s->as.cur.pn_out;
    r.probe_id = pkt->u.probe.probe_id;
    r.ts_us = pkt->u.probe.ts_us;
    r.hold_us = now > arrived ? (uint32_t)(now - arrived) : 0;
    r.pad_to = size; /* the same size: path MTU probing, and never larger than the probe */
    if (fb_wire_encode_probe(p, size, &len, &hdr, &r, s->as.cur.aead) == FB_OK) {
        s->as.cur.pn_out++;
        udpd_send_commit(s->ss->d, len, &s->peer);
    }
}

static void on_close(sess *s, const fb_wire_pkt *pkt, uint64_t now)
{
    udpd_ctr.closes++;
    /* A download's receiver closing normally waits for an answer (PROTOCOL.md 8.5): CLOSE(0),
     * with UNCHANGED when every byte is acknowledged and the file is still the one the session
     * was created for; then the session ends here, which saves the client a HEAD and a DELETE
     * over a new HTTPS connection. Twice, as the client sends its CLOSE: never more than it
     * sent, and only to the association's validated address. */
    if (s->direction == FB_DIR_DOWNLOAD && pkt->u.close.reason == FB_OK) {
        int vouch = s->snd != NULL && fb_xfer_sender_done(s->snd) && slot_still_ours(s) &&
                    download_file_unchanged(s) && fb_slot_cancel(s->slot, s->generation);
        uint8_t flags = vouch ? FB_WIRE_F_CLOSE_UNCHANGED : 0;

        send_close(s, FB_OK, flags);
        send_close(s, FB_OK, flags);
        if (vouch) {
            udpd_ctr.downloads_confirmed++;
            udpd_log(UDPD_INFO, "UD00063", "session %s: download of '%s' confirmed unchanged; session ended",
                     s->id, s->relpath);
            assoc_end(s, now, "download complete");
            return;
        }
    }
    if (s->direction == FB_DIR_UPLOAD && s->rcv != NULL) {
        fb_err e = publish(s);

        if (e != FB_OK) {
            upload_fail(s, e, now);
            return;
        }
        /* assoc_end takes the checkpoint (checkpoint_at_close) */
    }
    assoc_end(s, now,
              pkt->u.close.reason == FB_OK ? "closed by the client" : fb_err_name(pkt->u.close.reason));
}

void udpd_sessions_input(udpd_sessions *ss, uint8_t *buf, size_t len, const udpd_addr *from, uint64_t now,
                         uint64_t arrived)
{
    fb_assoc_out out;
    fb_assoc_addr peer;
    fb_assoc_event ev;
    sess *s;

    udpd_ctr.rx_dgrams++;
    udpd_ctr.rx_bytes += len;
    policy_refresh(ss);
    fb_assoc_addr_set(&peer, (const struct sockaddr *)&from->ss, from->len);
    ev = fb_assoc_server_input(ss->hs, &out, buf, len, &peer, now);
    s = out.srv != NULL ? out.srv->user : NULL;
    switch (ev) {
    case FB_ASSOC_DROP:
        count_wire(out.reason);
        return;
    case FB_ASSOC_DROP_UNEXPECTED:
        count_drop(UDPD_DROP_UNEXPECTED);
        return;
    case FB_ASSOC_DROP_ADDRESS:
        count_drop(UDPD_DROP_WRONG_ADDRESS);
        return;
    case FB_ASSOC_VALIDATED:
        promote(s, now);
        break;
    case FB_ASSOC_PACKET:
        break;
    default:
        s->last_seen_us = now;
        on_hello(s, ev, &out, from);
        return;
    }
    s->last_seen_us = now;
    switch (out.pkt.hdr.type) {
    case FB_WIRE_DATA:
        on_data(s, &out.pkt, now, arrived);
        break;
    case FB_WIRE_FEEDBACK:
        on_feedback(s, &out.pkt, arrived);
        break;
    case FB_WIRE_CLOSE:
        on_close(s, &out.pkt, now);
        break;
    case FB_WIRE_PROBE:
        on_probe(s, &out.pkt, now, arrived);
        break;
    default:
        count_drop(UDPD_DROP_UNEXPECTED);
        break;
    }
}

void udpd_sessions_after_batch(udpd_sessions *ss, uint64_t now)
{
    uint64_t wall = 0;

    while (ss->touched != NULL) {
        sess *s = ss->touched;
        fb_err e;

        ss->touched = s->next_touched;
        s->touched = 0;
        s->next_touched = NULL;
        if (s->rcv == NULL)
            continue;
        e = publish(s);
        if (e != FB_OK) {
            upload_fail(s, e, now);
            continue;
        }
        if (wall == 0)
            wall = fb_time_now_ns();
        atomic_store(&s->slot->last_activity_ns, wall);
        if (s->since_ckpt_bytes >= CKPT_BYTES)
            checkpoint(s, now, 0);
        send_feedback(s, now, 0);
    }
}

/* ---- timers ----------------------------------------------------------------------------------- */

static void housekeeping(udpd_sessions *ss, uint64_t now)
{
    for (uint32_t i = 0; i < ss->nslots; i++) {
        sess *s = ss->by_index[i];

        if (s == NULL)
            continue;
        if (!slot_still_ours(s)) {
            sess_ended(s, now);
            continue;
        }
        if (fb_assoc_srv_expire(&s->as, now)) {
            assoc_end(s, now, "idle");
            continue;
        }
        if (!s->as.cur.live && !s->as.pend.live && now - s->last_seen_us > SESSION_IDLE_US) {
            checkpoint(s, now, 0);
            sess_destroy(s, now, "idle");
            continue;
        }
        if (s->rcv != NULL)
            sync_bitmap(s);
        if (s->ckpt_dirty &&
            (now - s->last_ckpt_us >= CKPT_INTERVAL_US || now - s->last_data_us >= CKPT_IDLE_US))
            checkpoint(s, now, 0);
    }
}

uint64_t udpd_sessions_run(udpd_sessions *ss, uint64_t now)
{
    uint64_t next;
    int progress, rounds = 0;

    if (now - ss->last_housekeep_us >= HOUSEKEEP_US) {
        ss->last_housekeep_us = now;
        housekeeping(ss, now);
    }
    next = ss->last_housekeep_us + HOUSEKEEP_US;
    /* Downloads share the send batch in rounds of SEND_QUANTUM datagrams each. */
    do {
        progress = 0;
        for (sess *s = ss->assoc, *n; s != NULL; s = n) {
            n = s->next_assoc;
            if (s->snd == NULL)
                continue;
            for (int k = 0; k < SEND_QUANTUM && fb_xfer_sender_next_time(s->snd, now) <= now; k++) {
                uint8_t *p = udpd_send_reserve(ss->d, s->as.cur.max_dgram);
                size_t len = 0;
                fb_err e;

                if (p == NULL) /* batch full: flush and come back at once, or on EPOLLOUT */
                    return udpd_send_blocked(ss->d) ? next : now;
                e = fb_xfer_sender_next(s->snd, p, s->as.cur.max_dgram, &len, s->as.cur.pn_out, now);
                if (e != FB_OK) {
                    udpd_log(UDPD_ERROR, "UD00028", "session %s: reading '%s' failed: %s", s->id, s->relpath,
                             fb_err_message(e));
                    send_close(s, e, 0);
                    assoc_end(s, now, fb_err_name(e));
                    break;
                }
                if (len == 0)
                    break;
                s->as.cur.pn_out++;
                udpd_send_commit(ss->d, len, &s->peer);
                udpd_ctr.data_bytes_sent += len - FB_WIRE_DATA_OVERHEAD;
                progress = 1;
            }
        }
    } while (progress && ++rounds < 64);
    for (sess *s = ss->assoc; s != NULL; s = s->next_assoc) {
        uint64_t t = UINT64_MAX;

        if (s->rcv != NULL) {
            send_feedback(s, now, 0);
            t = s->force_feedback ? now : fb_xfer_receiver_next_feedback(s->rcv, now);
        } else if (s->snd != NULL) {
            t = fb_xfer_sender_next_time(s->snd, now);
            if (t > now && t - now < PACING_QUANTUM_US)
                t = now + PACING_QUANTUM_US;
        }
        if (t < next)
            next = t;
    }
    return next;
}

/* ---- setup and reporting ---------------------------------------------------------------------- */

fb_err udpd_sessions_new(udpd_sessions **pss, udpd *d, uint32_t nslots)
{
    udpd_sessions *ss = calloc(1, sizeof(*ss));
    fb_assoc_server_params ap;
    fb_err e;

    *pss = NULL;
    if (ss == NULL)
        return FB_ERR_NOMEM;
    ss->d = d;
    ss->nslots = nslots;
    ss->by_index = calloc(nslots ? nslots : 1, sizeof(sess *));
    ss->scratch = calloc(FB_BITMAP_WORDS, sizeof(uint64_t));
    if (ss->by_index == NULL || ss->scratch == NULL) {
        free(ss->by_index);
        free(ss->scratch);
        free(ss);
        return FB_ERR_NOMEM;
    }
    memset(&ap, 0, sizeof(ap));
    ap.policy.max_datagram = (uint16_t)UDPD_MAX_DATAGRAM; /* the rest: policy_refresh */
    ap.random = fb_assoc_random_os;
    ap.lookup = lookup_cb;
    ap.admit = admit_cb;
    ap.ctx = ss;
    e = fb_assoc_server_new(&ss->hs, &ap);
    if (e != FB_OK) {
        free(ss->by_index);
        free(ss->scratch);
        free(ss);
        return e;
    }
    *pss = ss;
    return FB_OK;
}

void udpd_sessions_free(udpd_sessions *ss)
{
    uint64_t now = udpd_now_us();

    if (ss == NULL)
        return;
    for (uint32_t i = 0; i < ss->nslots; i++) {
        sess *s = ss->by_index[i];

        if (s == NULL)
            continue;
        if (s->rcv != NULL && slot_still_ours(s) && publish(s) == FB_OK)
            checkpoint(s, now, 1);
        if (s->as.cur.live)
            assoc_end(s, now, "udpd stopping");
        s->ckpt_dirty = 0;
        sess_destroy(s, now, "udpd stopping");
    }
    free(ss->by_index);
    free(ss->scratch);
    fb_assoc_server_free(ss->hs);
    free(ss);
}

unsigned udpd_sessions_active(const udpd_sessions *ss)
{
    return ss->nassoc;
}

void udpd_sessions_log(udpd_sessions *ss)
{
    for (uint32_t i = 0; i < ss->nslots; i++) {
        sess *s = ss->by_index[i];

        if (s == NULL)
            continue;
        if (s->rcv != NULL) {
            fb_xfer_receiver_stats st;

            fb_xfer_receiver_stats_get(&st, s->rcv);
            udpd_log(
                UDPD_INFO, "UD00052",
                "session %s: upload '%s' %s%s: %llu of %llu bytes held, %llu new over UDP, %llu duplicate, "
                "%llu FEEDBACK",
                s->id, s->relpath, s->as.cur.live ? "with " : "idle", s->as.cur.live ? s->peer_str : "",
                (unsigned long long)st.held_bytes, (unsigned long long)s->size,
                (unsigned long long)st.bytes_new, (unsigned long long)st.bytes_dup,
                (unsigned long long)st.feedbacks);
        } else if (s->snd != NULL) {
            fb_xfer_sender_stats st;

            fb_xfer_sender_stats_get(&st, s->snd);
            udpd_log(UDPD_INFO, "UD00053",
                     "session %s: download '%s' with %s: %llu bytes sent, %llu resent, %llu still needed, "
                     "rate %llu "
                     "B/s, srtt %llu us",
                     s->id, s->relpath, s->peer_str, (unsigned long long)st.bytes_new,
                     (unsigned long long)st.bytes_retx, (unsigned long long)st.need_bytes,
                     (unsigned long long)st.rate, (unsigned long long)st.srtt_us);
        } else {
            udpd_log(UDPD_INFO, "UD00054", "session %s: %s '%s', %s", s->id,
                     s->direction == FB_DIR_UPLOAD ? "upload" : "download", s->relpath,
                     s->as.cur.live ? "associated" : "no association");
        }
    }
}
