/* mod_fallback_data.c: PUT BASE/sessions/{id}/data, the HTTP(S) data path of an upload.
 *
 * The body is streamed to the partial file at the Content-Range offset (a quarter MiB gathered
 * before each write, never the whole body in memory), and a chunk's bit is set in the shared
 * table as soon as this request has written every byte of it, so udpd, other connections and a
 * later resume all see progress at once. Progress becomes durable through the checkpoint
 * sidecar: bitmap snapshot, fdatasync, then the checkpoint, under the partial file's flock; at
 * the end of every request (success or not) and every 64 MiB. Several requests may write
 * disjoint ranges of one session at once: nothing global is locked while data is copied. */

#include "mod_fallback_private.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "apr_strings.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"

#include "fb_checkpoint.h"
#include "fb_digest.h"
#include "fb_path.h"
#include "fb_range.h"
#include "fb_util.h"

#define READ_BLOCK (256 * 1024)
#define GATHER_BYTES (256 * 1024) /* body bytes gathered before each write */
#define CHECKPOINT_EVERY (64ull * 1024 * 1024)
#define DIGEST_STEP (64ull * 1024 * 1024) /* most bytes folded into the digest per read pass */

/* One PUT request's writing state. */
typedef struct put_ctx {
    request_rec *r;
    fb_slot *slot;
    uint32_t gen;          /* slot generation at lookup: detects a cancelled and reused slot */
    uint64_t size;         /* session size */
    uint32_t chunk_size;
    uint64_t first;        /* range start */
    uint64_t end;          /* range end, exclusive */
    uint64_t pos;          /* next byte to write */
    uint64_t next_mark;    /* first chunk this request has not marked yet */
    int fd;                /* partial file, O_WRONLY */
    int parent_fd;
    const char *ckpt_base;
    fb_checkpoint *cp;     /* reused buffer for snapshots */
    char *gather;          /* body bytes received, not yet written: they belong at pos */
    apr_size_t gathered;
    uint64_t since_ckpt;   /* body bytes received since this request's last checkpoint */
} put_ctx;

static int slot_still_ours(const put_ctx *c)
{
    return atomic_load(&c->slot->generation) == c->gen && atomic_load(&c->slot->state) == FB_SLOT_ACTIVE;
}

/* Sets the bits of the chunks [first, pos) now covers wholly. */
static void mark_chunks(put_ctx *c)
{
    uint64_t cf = 0, cl = 0, i;

    if (c->pos <= c->first)
        return;
    fb_chunks_covered(&cf, &cl, c->size, c->chunk_size, c->first, c->pos - c->first);
    if (c->next_mark < cf)
        c->next_mark = cf;
    if (c->next_mark >= cl)
        return;
    /* Never mark chunks of a session that was cancelled meanwhile (its slot may be reused). */
    if (!slot_still_ours(c))
        return;
    for (i = c->next_mark; i < cl; i++)
        fb_slot_set_chunk(c->slot, i);
    c->next_mark = cl;
}

/* Makes progress durable: snapshot the bitmap and fdatasync under the flock, then write the
 * checkpoint. Only chunks in the snapshot, all synced, are recorded. */
static fb_err checkpoint_save(put_ctx *c)
{
    struct stat sb = {0};
    fb_err e = FB_OK;
    int tries = 0;

    while (flock(c->fd, LOCK_EX) != 0) {
        if (errno != EINTR || tries++ > 1000)
            return FB_ERR_IO;
    }
    /* A commit or cancel holds this lock while it changes the state; after it, there is
     * nothing left to record. */
    if (slot_still_ours(c)) {
        c->cp->size = c->size;
        c->cp->chunk_size = c->chunk_size;
        c->cp->nchunks = fb_chunk_count(c->size, c->chunk_size);
        fb_slot_bitmap_copy(c->cp->bitmap, c->slot);
        /* The inode the chunks are in: a resume joins only this partial file. */
        if (fstat(c->fd, &sb) != 0)
            e = FB_ERR_IO;
        c->cp->part_dev = (uint64_t)sb.st_dev;
        c->cp->part_ino = (uint64_t)sb.st_ino;
        if (e == FB_OK && fdatasync(c->fd) != 0)
            e = fb_err_from_errno(errno) == FB_ERR_DISK_FULL ? FB_ERR_DISK_FULL : FB_ERR_IO;
        else if (e == FB_OK)
            e = fb_checkpoint_write(c->parent_fd, c->ckpt_base, c->cp);
    }
    flock(c->fd, LOCK_UN);
    if (e != FB_OK)
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, c->r, FBLOGNO(00400) "checkpoint of '%s' not written: %s",
                      c->ckpt_base, fb_err_message(e));
    return e;
}

/* True when the checkpoint at the end of a PUT would be wasted: the body arrived whole, the file
 * is complete, so the commit comes next and makes it durable (fsync before the rename), and this
 * request wrote less than CHECKPOINT_EVERY since its last checkpoint. If the commit never comes
 * (the client or the machine dies first), a resume sends again at most that much, which is what
 * a crash between two periodic checkpoints costs anyway; an earlier checkpoint stays valid (its
 * chunks were synced before it was written). For a small file this saves the fdatasync of the
 * partial file, the sidecar's creation, fdatasync and rename, and a directory fsync. */
static int final_checkpoint_superfluous(const put_ctx *c, fb_err e)
{
    return e == FB_OK && c->since_ckpt < CHECKPOINT_EVERY && slot_still_ours(c) &&
           atomic_load(&c->slot->chunks_done) == fb_chunk_count(c->size, c->chunk_size);
}

static fb_err write_all(put_ctx *c, const char *data, apr_size_t len)
{
    fb_err e = fb_pwrite_all(c->fd, data, len, c->pos);

    if (e != FB_OK)
        return e;
    c->pos += (uint64_t)len;
    atomic_fetch_add(&c->slot->bytes_http, (uint64_t)len);
    return FB_OK;
}

/* Writes N bytes at the current position one chunk at a time. A chunk that another request
 * completed meanwhile (overlapping ranges sent at once) is never written again: it may already
 * be folded into the running digest, and completed chunks stay as they are. */
static fb_err write_pieces(put_ctx *c, const char *data, apr_size_t n, const char **pdetail)
{
    while (n > 0) {
        uint64_t chunk = c->pos / c->chunk_size;
        uint64_t room = (chunk + 1) * (uint64_t)c->chunk_size - c->pos;
        apr_size_t piece = n < room ? n : (apr_size_t)room;
        fb_err e;

        if (chunk >= c->next_mark && fb_slot_chunk_done(c->slot, chunk)) {
            *pdetail = "another request completed this part of the file meanwhile";
            return FB_ERR_RANGE_NOT_SATISFIABLE;
        }
        e = write_all(c, data, piece);
        if (e != FB_OK)
            return e;
        data += piece;
        n -= piece;
    }
    return FB_OK;
}

/* Writes what the body brought since the last flush, marks the chunks it completed and folds
 * the front of the file into the running digest. */
static fb_err flush_gathered(put_ctx *c, const char **pdetail)
{
    fb_err e = FB_OK;

    if (c->gathered > 0) {
        e = write_pieces(c, c->gather, c->gathered, pdetail);
        c->gathered = 0;
    }
    mark_chunks(c);
    /* Fold what is complete at the front of the file into the running digest now, while it is
     * in the page cache, so the commit does not have to read the file again. */
    fb_slot_digest_advance(c->slot, c->gen, c->fd, DIGEST_STEP);
    return e;
}

/* Streams the body; returns FB_OK or what went wrong, with *PDETAIL and *PRV set.
 *
 * mod_ssl hands the body over in pieces of at most 8 KiB (its record buffer), whatever is
 * asked for. The pieces are gathered into GATHER_BYTES before each write, so the file, the
 * chunk bits, the digest and the session's bookkeeping are touched once per quarter MiB rather
 * than once per TLS record. What was gathered is written before any return, also when the body
 * ends early, so nothing received is thrown away. */
static fb_err stream_body(put_ctx *c, const char **pdetail, apr_status_t *prv)
{
    request_rec *r = c->r;
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    uint64_t passes, max_passes;
    int seen_eos = 0;
    fb_err e = FB_OK;

    *pdetail = NULL;
    *prv = APR_SUCCESS;
    c->gather = apr_palloc(r->pool, GATHER_BYTES);
    c->gathered = 0;
    /* Each pass brings at least one byte or ends the body; the bound only guards the loop. */
    max_passes = (c->end - c->first) + 1024;
    for (passes = 0; !seen_eos && e == FB_OK && passes < max_passes; passes++) {
        apr_bucket *b;
        int wrote = 0; /* this pass wrote what was gathered */
        apr_status_t rv = ap_get_brigade(r->input_filters, bb, AP_MODE_READBYTES, APR_BLOCK_READ, READ_BLOCK);

        if (rv != APR_SUCCESS) {
            *prv = rv;
            *pdetail = "the request body ended early (client gone or timed out)";
            e = FB_ERR_BAD_RANGE;
            break;
        }
        for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb) && e == FB_OK; b = APR_BUCKET_NEXT(b)) {
            const char *data;
            apr_size_t n;

            if (APR_BUCKET_IS_EOS(b)) {
                seen_eos = 1;
                break;
            }
            if (APR_BUCKET_IS_METADATA(b))
                continue;
            rv = apr_bucket_read(b, &data, &n, APR_BLOCK_READ);
            if (rv != APR_SUCCESS) {
                *prv = rv;
                *pdetail = "the request body ended early (client gone or timed out)";
                e = FB_ERR_BAD_RANGE;
                break;
            }
            c->since_ckpt += n;
            while (n > 0 && e == FB_OK) {
                /* room left in the range, past what is already gathered */
                uint64_t in_range = c->end - c->pos - c->gathered;
                apr_size_t take = GATHER_BYTES - c->gathered;

                if (in_range == 0) {
                    /* Only the part inside the range is written: the rest is not ours to store. */
                    *pdetail = "the body is longer than the Content-Range";
                    e = FB_ERR_BAD_RANGE;
                    break;
                }
                take = take < n ? take : n;
                take = (uint64_t)take < in_range ? take : (apr_size_t)in_range;
                memcpy(c->gather + c->gathered, data, take);
                c->gathered += take;
                data += take;
                n -= take;
                if (c->gathered == GATHER_BYTES) {
                    e = flush_gathered(c, pdetail);
                    wrote = 1;
                }
            }
        }
        apr_brigade_cleanup(bb);
        if (e != FB_OK || !wrote)
            continue; /* a pass that wrote nothing has nothing to account for */
        atomic_store(&c->slot->last_activity_ns, fb_time_now_ns());
        if (!slot_still_ours(c)) {
            *pdetail = "the session was cancelled or committed";
            e = FB_ERR_SESSION_STATE;
        }
        if (e == FB_OK && c->since_ckpt >= CHECKPOINT_EVERY) {
            c->since_ckpt = 0;
            if (checkpoint_save(c) == FB_ERR_DISK_FULL)
                e = FB_ERR_DISK_FULL;
        }
    }
    /* What was gathered is written whatever ended the body (an error, the client gone), so a
     * resume need not send it again; not into a session that was cancelled meanwhile. */
    if (c->gathered > 0 && slot_still_ours(c)) {
        const char *detail = NULL;
        fb_err fe = flush_gathered(c, &detail);

        if (e == FB_OK) {
            e = fe;
            *pdetail = detail;
        }
    }
    if (e == FB_OK && !seen_eos) {
        *pdetail = "the request body does not end";
        e = FB_ERR_BAD_RANGE;
    }
    if (e == FB_OK && c->pos != c->end) {
        *pdetail = "the body is shorter than the Content-Range";
        e = FB_ERR_BAD_RANGE;
    }
    return e;
}

int mod_fallback_data_put(mod_fallback_req *req, const char *id)
{
    request_rec *r = req->r;
    fb_slot_info *info = apr_palloc(r->pool, sizeof(*info));
    char partrel[FB_RELPATH_MAX + 32], ckptrel[FB_RELPATH_MAX + 32];
    const char *cr, *cl, *fc, *detail = NULL;
    unsigned char commit_sha[FB_SHA256_LEN];
    uint64_t first = 0, last = 0, complete = 0, len, c0, ci, missing_bytes = 0;
    fb_range dummy;
    put_ctx *c;
    fb_slot *slot = NULL;
    uint32_t idx = 0, gen = 0;
    apr_status_t rv = APR_SUCCESS;
    fb_err e;
    int rc;

    rc = mod_fallback_session_lookup(req, id, &idx, &slot, &gen, info);
    if (slot == NULL)
        return rc;
    OPENSSL_cleanse(info->key, sizeof(info->key));
    if (info->direction != FB_DIR_UPLOAD)
        return mod_fallback_problem(req, FB_ERR_SESSION_STATE, "not an upload session");
    if (info->chunk_size == 0)
        return mod_fallback_problem(req, FB_ERR_INTERNAL, "session without a chunk size");
    if (atomic_load(&slot->state) != FB_SLOT_ACTIVE)
        return mod_fallback_session_ended(req, slot, gen);

    cr = apr_table_get(r->headers_in, "Content-Range");
    if (cr == NULL)
        return mod_fallback_problem(req, FB_ERR_BAD_RANGE, "Content-Range is required");
    e = fb_content_range_parse(&first, &last, &complete, cr);
    if (e == FB_ERR_RANGE_NOT_SATISFIABLE)
        return mod_fallback_problem(req, e, "the range ends beyond the file");
    if (e != FB_OK)
        return mod_fallback_problem(req, FB_ERR_BAD_RANGE, "Content-Range must be \"bytes FIRST-LAST/SIZE\"");
    if (complete != info->size)
        return mod_fallback_problem(
            req, FB_ERR_RANGE_NOT_SATISFIABLE,
            apr_psprintf(r->pool, "the session size is %" APR_UINT64_T_FMT, (apr_uint64_t)info->size));
    if (last >= info->size || first > last)
        return mod_fallback_problem(req, FB_ERR_RANGE_NOT_SATISFIABLE, NULL);
    len = last - first + 1;
    cl = apr_table_get(r->headers_in, "Content-Length");
    if (cl != NULL) {
        uint64_t n = 0;
        if (!fb_decimal_parse(&n, cl) || n != len)
            return mod_fallback_problem(req, FB_ERR_BAD_RANGE,
                                        "Content-Length differs from the Content-Range");
    } else if (apr_table_get(r->headers_in, "Transfer-Encoding") == NULL) {
        return mod_fallback_problem(req, FB_ERR_BAD_RANGE, "the request has no body");
    }
    /* "Commit when this completes the file" (docs/HTTP-API.md): saves a small file's client the
     * commit request. */
    fc = apr_table_get(r->headers_in, "Fallback-Commit");
    if (fc != NULL && (strncmp(fc, "sha256=", 7) != 0 || strlen(fc + 7) != FB_SHA256_HEX_LEN ||
                       fb_hex_decode(commit_sha, FB_SHA256_LEN, fc + 7) != FB_OK))
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST,
                                    "Fallback-Commit must be sha256= and 64 hex digits");
    /* Every chunk the range touches must still be missing. */
    c0 = first / info->chunk_size;
    for (ci = c0; ci <= last / info->chunk_size; ci++) {
        if (fb_slot_chunk_done(slot, ci))
            return mod_fallback_problem(
                req, FB_ERR_RANGE_NOT_SATISFIABLE,
                apr_psprintf(r->pool, "chunk %" APR_UINT64_T_FMT " is already complete", (apr_uint64_t)ci));
    }

    if (fb_path_partial_name(partrel, sizeof(partrel), info->relpath) != FB_OK ||
        fb_path_checkpoint_name(ckptrel, sizeof(ckptrel), info->relpath) != FB_OK)
        return mod_fallback_problem(req, FB_ERR_INTERNAL, NULL);
    c = apr_pcalloc(r->pool, sizeof(*c));
    c->r = r;
    c->slot = slot;
    c->gen = gen;
    c->size = info->size;
    c->chunk_size = info->chunk_size;
    c->first = first;
    c->end = last + 1;
    c->pos = first;
    c->next_mark = 0;
    c->fd = -1;
    c->ckpt_base = apr_pstrdup(r->pool, mod_fallback_basename(ckptrel));
    c->cp = apr_pcalloc(r->pool, sizeof(*c->cp));
    /* The session's expected digest goes into every checkpoint: a resume must expect the same. */
    if (info->flags & FB_SLOT_FLAG_EXPECTED_SHA256) {
        c->cp->flags = FB_CHECKPOINT_FLAG_SHA256;
        memcpy(c->cp->expected_sha256, info->expected_sha256, sizeof(c->cp->expected_sha256));
    }
    /* And the client file's modification time, so that it is on record beside the data. */
    if (info->flags & FB_SLOT_FLAG_SOURCE_MTIME) {
        c->cp->flags |= FB_CHECKPOINT_FLAG_SOURCE_MTIME;
        c->cp->source_mtime_ns = info->source_mtime_ns;
    }
    /* And its source identity: a resume must come from the same source file. */
    memcpy(c->cp->source_id, info->source_id, sizeof(c->cp->source_id));
    e = mod_fallback_open_parent(&c->parent_fd, req, info->relpath);
    if (e == FB_OK) {
        c->fd = openat(c->parent_fd, mod_fallback_basename(partrel),
                       O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC); /* read: digest */
        if (c->fd < 0)
            e = FB_ERR_NOT_FOUND;
    }
    /* Only the partial file this session created (its inode is in the slot): one deleted or
     * replaced on the server must not be written into as if it held the session's chunks. */
    if (e == FB_OK) {
        struct stat sb;

        mod_fallback_fd_close_on_cleanup(r->pool, c->fd);
        if (fstat(c->fd, &sb) != 0 || (uint64_t)sb.st_ino != info->file_ino ||
            (uint64_t)sb.st_dev != info->file_dev)
            e = FB_ERR_CHANGED;
    }
    if (e != FB_OK)
        return mod_fallback_problem(req, FB_ERR_SESSION_STATE, "the partial file is gone");
    /* Checked after the open: a new session of the same path fails this one before replacing
     * the file, so a file opened by name here belongs to this session if it is still active. */
    /* Counted as a writer before the state check: a commit that moved the session on waits for
     * the writers it may have raced with (see the commit). */
    atomic_fetch_add(&slot->writers, 1);
    if (!slot_still_ours(c)) {
        atomic_fetch_sub(&slot->writers, 1);
        return mod_fallback_session_ended(req, slot, gen);
    }
    e = stream_body(c, &detail, &rv);
    req->body_read = 1;
    if (!final_checkpoint_superfluous(c, e))
        (void)checkpoint_save(c);
    atomic_fetch_sub(&slot->writers, 1);

    if (e == FB_ERR_SESSION_STATE && mod_fallback_session_error(slot, gen) == FB_ERR_SERVER_REFUSED) {
        e = FB_ERR_SERVER_REFUSED; /* cancelled by the administrator while the body streamed */
        detail = "the session was cancelled on the server";
    }
    if (e != FB_OK) {
        ap_log_rerror(APLOG_MARK, e == FB_ERR_DISK_FULL || e == FB_ERR_IO ? APLOG_ERR : APLOG_INFO, rv, r,
                      FBLOGNO(00401) "session %s: PUT %" APR_UINT64_T_FMT "-%" APR_UINT64_T_FMT
                                     " stopped at %" APR_UINT64_T_FMT ": %s%s%s",
                      id, (apr_uint64_t)first, (apr_uint64_t)last, (apr_uint64_t)c->pos, fb_err_message(e),
                      detail ? ": " : "", detail ? detail : "");
        /* The rest of a broken body is not worth reading. */
        r->connection->keepalive = AP_CONN_CLOSE;
        if (rv == AP_FILTER_ERROR)
            return ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
        return mod_fallback_problem(req, e, detail);
    }

    fb_slot_bitmap_copy(c->cp->bitmap, slot);
    fb_bitmap_missing(&dummy, 0, &missing_bytes, c->cp->bitmap, info->size, info->chunk_size);
    ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                  FBLOGNO(00402) "session %s: wrote %" APR_UINT64_T_FMT "-%" APR_UINT64_T_FMT
                                 ", %" APR_UINT64_T_FMT " bytes missing",
                  id, (apr_uint64_t)first, (apr_uint64_t)last, (apr_uint64_t)missing_bytes);
    if (fc != NULL && missing_bytes == 0)
        return mod_fallback_sessions_commit_sha(req, id, commit_sha);
    return mod_fallback_json_reply(req, HTTP_OK,
                                   json_pack("{s:I, s:I, s:b}", "received_bytes",
                                             (json_int_t)(info->size - missing_bytes), "missing_bytes",
                                             (json_int_t)missing_bytes, "complete", missing_bytes == 0),
                                   0);
}
