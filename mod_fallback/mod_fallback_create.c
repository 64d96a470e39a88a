/* mod_fallback_create.c: creating a session (POST sessions): an upload created, resumed or
 * superseding others, or a download; the slot claimed, filled and published.
 *
 * Creating an upload is serialised per target path by flock on the hidden partial file, so two
 * requests for one path cannot both claim a slot; resuming picks up a live session of the same
 * user, path, size, expected sha256 and source identity whose partial file is still the one it
 * wrote, or the checkpoint sidecar beside the partial file when it was written for the same size,
 * expected sha256, source identity and partial inode. Anything else starts over: a resume never
 * credits chunks to content they were not written for (docs/HTTP-API.md, "Resuming"). */

#include "mod_fallback_private.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "apr_file_io.h"
#include "apr_portable.h"
#include "apr_strings.h"
#include "http_protocol.h"

#include "fb_checkpoint.h"
#include "fb_digest.h"
#include "fb_filesum.h"
#include "fb_path.h"
#include "fb_range.h"
#include "fb_util.h"

#define LOCK_ATTEMPTS 16

/* Fills a CLAIMED slot's descriptive fields; the caller publishes it as ACTIVE.
 * FILE: a download's file as opened now, or an upload's partial file (only its st_dev and st_ino
 * are kept then). SOURCE_ID: an upload's source identity (NULL: none given). SOURCE_MTIME_NS: an
 * upload's client file time (NULL: not given). */
static fb_err fill_slot(fb_slot *slot, mod_fallback_req *req, uint32_t direction, const char *relpath,
                        uint64_t size, uint32_t chunk_size, fb_overwrite overwrite, unsigned mode,
                        uint32_t flags, const unsigned char *sha256, const struct stat *file,
                        const unsigned char *source_id, const uint64_t *source_mtime_ns)
{
    fb_slot_info *info = &slot->info;
    fb_err e;

    fb_slot_info_write_begin(slot);
    e = fb_random_bytes(info->id_random, sizeof(info->id_random));
    if (e == FB_OK)
        e = fb_random_bytes(info->key, sizeof(info->key));
    info->direction = direction;
    info->chunk_size = chunk_size;
    info->size = size;
    info->nchunks = fb_chunk_count(size, chunk_size);
    info->overwrite = (uint32_t)overwrite;
    info->file_mode = mode;
    info->flags = flags;
    info->cipher = 0;
    info->created_ns = fb_time_now_ns();
    if (sha256 != NULL) {
        memcpy(info->expected_sha256, sha256, sizeof(info->expected_sha256));
        info->flags |= FB_SLOT_FLAG_EXPECTED_SHA256;
    }
    /* Lengths were checked by the caller. */
    apr_cpystrn(info->user, req->user, sizeof(info->user));
    apr_cpystrn(info->relpath, relpath, sizeof(info->relpath));
    apr_cpystrn(info->docroot, req->docroot, sizeof(info->docroot));
    info->file_dev = file != NULL ? (uint64_t)file->st_dev : 0;
    info->file_ino = file != NULL ? (uint64_t)file->st_ino : 0;
    info->file_mtime_ns = file != NULL && direction == FB_DIR_DOWNLOAD ? fb_timespec_ns(&file->st_mtim) : 0;
    info->file_ctime_ns = file != NULL && direction == FB_DIR_DOWNLOAD ? fb_timespec_ns(&file->st_ctim) : 0;
    if (source_id != NULL)
        memcpy(info->source_id, source_id, sizeof(info->source_id));
    else
        memset(info->source_id, 0, sizeof(info->source_id));
    info->source_mtime_ns = source_mtime_ns != NULL ? *source_mtime_ns : 0;
    if (source_mtime_ns != NULL)
        info->flags |= FB_SLOT_FLAG_SOURCE_MTIME;
    fb_slot_info_write_end(slot);
    return e;
}

/* Keeps one user from taking every slot: counts the user's live sessions and, at the limit,
 * retires the user's own longest-idle session (idle for a minute at least, nobody writing).
 * A retired upload keeps its partial file and checkpoint, so it can still be resumed. */
#define USER_IDLE_RETIRE_NS (60ull * 1000 * 1000 * 1000)
static fb_err enforce_user_limit(mod_fallback_req *req)
{
    uint32_t limit = req->cfg->max_sessions_per_user, n = fb_table_nslots(req->table), live = 0;
    fb_slot_info *info = apr_palloc(req->r->pool, sizeof(*info));
    fb_slot *oldest = NULL;
    uint64_t oldest_at = UINT64_MAX, now = fb_time_now_ns();

    if (limit == 0)
        return FB_OK;
    for (uint32_t i = 0; i < n; i++) {
        fb_slot *slot = fb_table_slot(req->table, i);
        uint32_t st = atomic_load(&slot->state);
        uint64_t last;

        if (st != FB_SLOT_ACTIVE && st != FB_SLOT_CLAIMED && st != FB_SLOT_FINALISING)
            continue;
        fb_slot_info_read(info, slot);
        OPENSSL_cleanse(info->key, sizeof(info->key));
        if (strcmp(info->user, req->user) != 0 || strcmp(info->docroot, req->docroot) != 0)
            continue;
        live++;
        last = atomic_load(&slot->last_activity_ns);
        if (st == FB_SLOT_ACTIVE && atomic_load(&slot->writers) == 0 && now > last &&
            now - last >= USER_IDLE_RETIRE_NS && last < oldest_at) {
            oldest = slot;
            oldest_at = last;
        }
    }
    if (live < limit)
        return FB_OK;
    if (oldest != NULL && fb_slot_transition(oldest, FB_SLOT_ACTIVE, FB_SLOT_FAILED)) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, req->r,
                      FBLOGNO(00225) "user '%s' at the limit of %u sessions: retired the longest idle one",
                      req->user, (unsigned)limit);
        return FB_OK;
    }
    return FB_ERR_TABLE_FULL;
}

static fb_err claim_slot(uint32_t *pidx, fb_slot **pslot, mod_fallback_req *req)
{
    const fb_config *cfg = req->cfg;
    fb_err e = enforce_user_limit(req);

    if (e != FB_OK)
        return e;
    e = fb_table_claim(req->table, pidx, fb_time_now_ns(), cfg->idle_timeout, cfg->done_linger);

    if (e == FB_OK)
        *pslot = fb_table_slot(req->table, *pidx);
    return e;
}

static int publish_slot(fb_slot *slot)
{
    if (!fb_slot_transition(slot, FB_SLOT_CLAIMED, FB_SLOT_ACTIVE))
        return 0;
    atomic_store(&slot->last_activity_ns, fb_time_now_ns());
    return 1;
}

/* Size and string limits shared by both directions. */
static int check_limits(mod_fallback_req *req, uint64_t size, uint32_t *pchunk)
{
    uint32_t cs =
        fb_table_chunk_size_for(size, req->cfg->chunk_size ? req->cfg->chunk_size : FB_DEFAULT_CHUNK_SIZE);

    if (size > (uint64_t)INT64_MAX || cs == 0 || fb_chunk_count(size, cs) > FB_BITMAP_BITS)
        return mod_fallback_problem(req, FB_ERR_TOO_LARGE, "file too large for one session");
    if (strlen(req->user) >= FB_USER_MAX)
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "user name too long");
    if (strlen(req->docroot) >= FB_DOCROOT_MAX) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, req->r, FBLOGNO(00200) "docroot %s too long", req->docroot);
        return mod_fallback_problem(req, FB_ERR_CONFIG, "docroot path too long");
    }
    *pchunk = cs;
    return -1; /* no answer written: go on */
}

int mod_fallback_sessions_create_download(mod_fallback_req *req, const char *relpath)
{
    request_rec *r = req->r;
    struct stat sb;
    uint32_t cs = 0, idx = 0;
    fb_slot *slot = NULL;
    int fd = -1, rc;
    fb_err e;

    if (relpath[0] == '\0')
        return mod_fallback_problem(req, FB_ERR_NOT_FOUND, "not a regular file");
    /* O_NONBLOCK: a FIFO must not hang the worker (it is refused below). */
    e = fb_path_open_beneath(&fd, req->docroot_fd, relpath, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0);
    if (e != FB_OK)
        return mod_fallback_problem(req, e == FB_ERR_PATH_ESCAPE ? e : FB_ERR_NOT_FOUND, NULL);
    mod_fallback_fd_close_on_cleanup(r->pool, fd);
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
        return mod_fallback_problem(req, FB_ERR_NOT_FOUND, "not a regular file");
    rc = check_limits(req, (uint64_t)sb.st_size, &cs);
    if (rc != -1)
        return rc;
    e = claim_slot(&idx, &slot, req);
    if (e != FB_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, FBLOGNO(00201) "no free session slot: %s",
                      fb_err_message(e));
        return mod_fallback_problem(req, e, NULL);
    }
    e = fill_slot(slot, req, FB_DIR_DOWNLOAD, relpath, (uint64_t)sb.st_size, cs, FB_OVERWRITE_NEVER, 0, 0,
                  NULL, &sb, NULL, NULL);
    if (e != FB_OK || !publish_slot(slot)) {
        fb_slot_release(slot);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00202) "cannot set up download session");
        return mod_fallback_problem(req, FB_ERR_INTERNAL, NULL);
    }
    {
        char id[FB_SESSION_ID_LEN + 1];
        fb_session_id_format(id, idx, slot->info.id_random);
        apr_table_setn(r->notes, "fallback-session", apr_pstrdup(r->pool, id));
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      FBLOGNO(00203) "download session %s for '%s' (%s), %" APR_UINT64_T_FMT " bytes", id,
                      req->user, relpath, (apr_uint64_t)sb.st_size);
    }
    return reply_session(req, HTTP_CREATED, idx, slot, 1, 0, 0);
}

/* Opens (creating) the partial file and takes its flock. Retries when the name was replaced or
 * removed while we waited (a cancel, a commit, or a restart of the upload). */
fb_err lock_partial(int *pfd, int parent_fd, const char *partbase, int create)
{
    int attempt;

    *pfd = -1;
    for (attempt = 0; attempt < LOCK_ATTEMPTS; attempt++) {
        struct stat a, b;
        int fd = openat(parent_fd, partbase,
                        (create ? O_RDWR | O_CREAT : O_RDWR) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
        int tries = 0;

        if (fd < 0)
            return errno == ELOOP ? FB_ERR_PATH_ESCAPE : fb_err_from_errno(errno);
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR && tries++ < 1000)
            ;
        if (fstat(fd, &a) == 0 && fstatat(parent_fd, partbase, &b, AT_SYMLINK_NOFOLLOW) == 0 &&
            a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
            if (!S_ISREG(a.st_mode)) {
                close(fd);
                return FB_ERR_EXISTS;
            }
            *pfd = fd;
            return FB_OK;
        }
        close(fd);
    }
    return FB_ERR_IO;
}

/* Restarting an upload with another size: the old partial inode may still be written by a
 * request of the failed session, so a new inode replaces it instead of truncating it. The
 * caller keeps the old inode's lock until the new one is locked, then closes it. */
static fb_err replace_partial(int *pfd, int parent_fd, const char *partbase)
{
    int fd, tries = 0;

    if (unlinkat(parent_fd, partbase, 0) != 0 && errno != ENOENT)
        return fb_err_from_errno(errno);
    fd = openat(parent_fd, partbase, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno == EEXIST ? FB_ERR_SESSION_STATE : fb_err_from_errno(errno);
    while (flock(fd, LOCK_EX) != 0 && errno == EINTR && tries++ < 1000)
        ;
    *pfd = fd;
    return FB_OK;
}

/* Other live uploads to the same target. The same user's upload of another size is superseded
 * (marked failed); anyone else's, or one being committed, blocks this request. */
static fb_err supersede_others(int *psuperseded, mod_fallback_req *req, const char *relpath, uint64_t size)
{
    uint32_t n = fb_table_nslots(req->table), i;
    fb_slot_info *info = apr_palloc(req->r->pool, sizeof(*info));

    *psuperseded = 0;
    for (i = 0; i < n; i++) {
        fb_slot *slot = fb_table_slot(req->table, i);
        uint32_t st = atomic_load(&slot->state);

        if (st != FB_SLOT_ACTIVE && st != FB_SLOT_FINALISING)
            continue;
        fb_slot_info_read(info, slot);
        wipe_info(info);
        if (info->direction != FB_DIR_UPLOAD || strcmp(info->docroot, req->docroot) != 0 ||
            strcmp(info->relpath, relpath) != 0)
            continue;
        if (st == FB_SLOT_FINALISING || strcmp(info->user, req->user) != 0 || info->size == size)
            return FB_ERR_SESSION_STATE;
        if (fb_slot_transition(slot, FB_SLOT_ACTIVE, FB_SLOT_FAILED)) {
            atomic_store(&slot->error_code, (uint32_t)FB_ERR_CHANGED);
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, req->r,
                          FBLOGNO(00204) "upload of '%s' restarted with size %" APR_UINT64_T_FMT
                                         " (was %" APR_UINT64_T_FMT "): old session failed",
                          relpath, (apr_uint64_t)size, (apr_uint64_t)info->size);
            *psuperseded = 1;
        } else if (atomic_load(&slot->state) == FB_SLOT_FINALISING) {
            return FB_ERR_SESSION_STATE;
        }
    }
    return FB_OK;
}

/* 1 if an upload expecting EXPECTED (NULL: no digest given) may continue the progress of one
 * that expected HAS ? SHA : nothing: both gave none, or both the same digest. */
static int same_expectation(const unsigned char *expected, uint32_t has, const unsigned char *sha)
{
    if (expected == NULL)
        return !has;
    return has && fb_mem_equal_ct(sha, expected, FB_SHA256_LEN);
}

/* 1 if an upload identified as SOURCE_ID (NULL: none given) may continue progress recorded for
 * HAS (all zero: none given): the same 32 bytes. Not a secret: a plain compare. */
static int same_source(const unsigned char *source_id, const uint8_t has[32])
{
    static const uint8_t none[32];

    return memcmp(source_id != NULL ? source_id : none, has, 32) == 0;
}

/* 1 if SB (the partial file as opened now) is still the partial file the live upload INFO wrote:
 * the same inode (kept in file_dev/file_ino at create), a regular file of the session's size. A
 * partial file deleted (a new one is another inode), replaced or truncated since fails this. */
int partial_is_the_sessions(const struct stat *sb, const fb_slot_info *info)
{
    return info->file_ino != 0 && (uint64_t)sb->st_dev == info->file_dev &&
           (uint64_t)sb->st_ino == info->file_ino && S_ISREG(sb->st_mode) &&
           (uint64_t)sb->st_size == info->size;
}

/* REASON: "identical" (if_different) or "newer" (the older policies). */
static int reply_skipped(mod_fallback_req *req, const char *relpath, uint64_t size, const char *reason)
{
    json_t *doc =
        json_pack("{s:s, s:s, s:I, s:s, s:b, s:s, s:I, s:I, s:[]}", "direction", "upload", "path", relpath,
                  "size", (json_int_t)size, "state", "done", "skipped", 1, "reason", reason, "received_bytes",
                  (json_int_t)size, "missing_bytes", (json_int_t)0, "missing");
    return mod_fallback_json_reply(req, HTTP_OK, doc, 0);
}

int mod_fallback_policy_needs_older(fb_overwrite ow)
{
    return ow == FB_OVERWRITE_OLDER || ow == FB_OVERWRITE_IF_DIFFERENT_OLDER;
}

/* 1 if the target SB may be replaced under an "older" policy: its modification time is
 * strictly before the source's (SOURCE_MTIME_NS). */
int target_is_older(const struct stat *sb, uint64_t source_mtime_ns)
{
    return fb_timespec_ns(&sb->st_mtim) < source_mtime_ns;
}

/* The overwrite policy (mod_fallback_private.h). ASK_DIGEST: under if_different(,older) without
 * a digest, a regular file of the same size is refused with "target": "file" (it may be
 * identical: ask again with the digest) instead of being replaced. SOURCE_MTIME_NS is required
 * (non-NULL) by the older policies. */
int mod_fallback_target_decide(request_rec *r, int parent_fd, const char *base, uint64_t size,
                               fb_overwrite ow, const unsigned char *sha256, int ask_digest,
                               const uint64_t *source_mtime_ns, const char **preason, fb_err *perr,
                               const char **pdetail, const char **ptarget)
{
    struct stat sb;
    unsigned char digest[FB_SHA256_LEN];
    int fd, same, if_different = ow == FB_OVERWRITE_IF_DIFFERENT || ow == FB_OVERWRITE_IF_DIFFERENT_OLDER;

    *pdetail = NULL;
    *ptarget = NULL;
    if (fstatat(parent_fd, base, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT)
            return -1;
        *perr = fb_err_from_errno(errno);
        return 0;
    }
    *perr = FB_ERR_EXISTS;
    if (S_ISDIR(sb.st_mode)) {
        /* "target": "directory" tells a client copying like cp to upload into it instead */
        *pdetail = "the target is a directory";
        *ptarget = "directory";
        return 0;
    }
    if (ow == FB_OVERWRITE_NEVER)
        return 0;
    /* The age first: a newer target is kept whatever its content (and is not read). */
    if (mod_fallback_policy_needs_older(ow) &&
        (source_mtime_ns == NULL || !target_is_older(&sb, *source_mtime_ns))) {
        *preason = "newer";
        return 1;
    }
    if (if_different && sha256 == NULL && ask_digest && S_ISREG(sb.st_mode) && (uint64_t)sb.st_size == size) {
        *pdetail = "a file of this size is at the target: ask again with the sha256";
        *ptarget = "file";
        return 0;
    }
    if (!if_different || sha256 == NULL || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != size)
        return -1;
    fd = openat(parent_fd, base, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -1;
    same = fb_sha256_fd(digest, fd, size) == FB_OK && fb_mem_equal_ct(digest, sha256, FB_SHA256_LEN);
    if (same && source_mtime_ns != NULL && fb_timespec_ns(&sb.st_mtim) != *source_mtime_ns) {
        /* identical content with another time: the target takes the source's time, as a copy
         * that keeps times would give it (rsync -a does the same) */
        struct timespec ts[2] = {
            {0, UTIME_OMIT},
            {(time_t)(*source_mtime_ns / 1000000000u), (long)(*source_mtime_ns % 1000000000u)}};
        if (futimens(fd, ts) != 0)
            ap_log_rerror(APLOG_MARK, APLOG_INFO, errno, r,
                          FBLOGNO(00262) "cannot give the identical target '%s' the source's time", base);
    }
    close(fd);
    *preason = "identical";
    return same ? 1 : -1;
}

/* mod_fallback_target_decide, answering a refusal. Returns -1 to go on, 1 to skip (*PREASON), or
 * a handler result after answering. */
static int check_target(mod_fallback_req *req, int parent_fd, const char *base, uint64_t size,
                        fb_overwrite ow, const unsigned char *sha256, int ask_digest,
                        const uint64_t *source_mtime_ns, const char **preason)
{
    const char *detail = NULL, *target = NULL;
    fb_err e = FB_OK;
    int rc = mod_fallback_target_decide(req->r, parent_fd, base, size, ow, sha256, ask_digest,
                                        source_mtime_ns, preason, &e, &detail, &target);

    if (rc != 0)
        return rc;
    return mod_fallback_problem_ext(req, e, detail,
                                    target != NULL ? json_pack("{s:s}", "target", target) : NULL);
}

int mod_fallback_upload_create(mod_fallback_req *req, const char *relpath, uint64_t size, fb_overwrite ow,
                               const unsigned char *sha256, int ask_digest, unsigned mode,
                               const unsigned char *source_id, const uint64_t *source_mtime_ns,
                               struct mod_fallback_pack_up *pack)
{
    request_rec *r = req->r;
    const fb_config *cfg = req->cfg;
    char partrel[FB_RELPATH_MAX + 32], ckptrel[FB_RELPATH_MAX + 32];
    const char *base, *partbase, *ckptbase, *skip_reason = NULL;
    uint32_t cs = 0, idx = 0;
    uint64_t nchunks;
    fb_checkpoint *cp = NULL;
    fb_slot *slot = NULL;
    int parent_fd = -1, part_fd = -1;
    int rc, superseded = 0, resumed = 0, status = HTTP_CREATED;
    struct stat sb;
    fb_err e;

    if (relpath[0] == '\0')
        return mod_fallback_problem(req, FB_ERR_BAD_PATH, "the path names the docroot itself");
    if (pack == NULL && cfg->max_file_size != 0 && size > cfg->max_file_size)
        return mod_fallback_problem(req, FB_ERR_TOO_LARGE,
                                    apr_psprintf(r->pool, "files may be at most %" APR_UINT64_T_FMT " bytes",
                                                 (apr_uint64_t)cfg->max_file_size));
    rc = check_limits(req, size, &cs);
    if (rc != -1)
        return rc;
    nchunks = fb_chunk_count(size, cs);
    if (fb_path_partial_name(partrel, sizeof(partrel), relpath) != FB_OK ||
        fb_path_checkpoint_name(ckptrel, sizeof(ckptrel), relpath) != FB_OK)
        return mod_fallback_problem(req, FB_ERR_BAD_PATH, "path too long");
    base = mod_fallback_basename(relpath);
    partbase = mod_fallback_basename(partrel);
    ckptbase = mod_fallback_basename(ckptrel);

    e = fb_path_mkdirs_beneath(req->docroot_fd, relpath);
    if (e == FB_OK)
        e = mod_fallback_open_parent(&parent_fd, req, relpath);
    if (e != FB_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      FBLOGNO(00205) "cannot create the directories of '%s': %s", relpath, fb_err_message(e));
        return mod_fallback_problem(req, e, "cannot create the target's directory");
    }
    rc = check_target(req, parent_fd, base, size, ow, sha256, ask_digest, source_mtime_ns, &skip_reason);
    if (rc == 1)
        return reply_skipped(req, relpath, size, skip_reason);
    if (rc != -1)
        return rc;

    e = lock_partial(&part_fd, parent_fd, partbase, 1);
    if (e != FB_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00206) "cannot open the partial file of '%s': %s",
                      relpath, fb_err_message(e));
        return mod_fallback_problem(req, e == FB_ERR_EXISTS ? FB_ERR_EXISTS : FB_ERR_IO, NULL);
    }
    mod_fallback_fd_close_on_cleanup(r->pool, part_fd);
    if (pack != NULL) {
        e = mod_fallback_pack_up_prepare(req, pack, parent_fd);
        if (e != FB_OK) {
            rc = mod_fallback_problem(req, e, "cannot write the pack's manifest");
            goto leave;
        }
    }

    /* Refuse at once what cannot fit: the partial file is sparse, so otherwise the disk would
     * only fill up in the middle of the transfer. What the partial file already holds counts. */
    {
        struct stat psb;
        struct statvfs vfs;

        if (fstat(part_fd, &psb) == 0 && fstatvfs(part_fd, &vfs) == 0) {
            uint64_t have = (uint64_t)psb.st_blocks * 512u;
            uint64_t need = size > have ? size - have : 0;
            uint64_t avail = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;

            if (need > avail)
                return mod_fallback_problem(req, FB_ERR_DISK_FULL,
                                            apr_psprintf(r->pool,
                                                         "the upload needs %" APR_UINT64_T_FMT
                                                         " more bytes, %" APR_UINT64_T_FMT " are free",
                                                         (apr_uint64_t)need, (apr_uint64_t)avail));
        }
    }

    /* 1. A live session of this user for the same file: hand it out again (same id and key),
     * but only to a request with the same source identity and expected digest, and only while
     * its partial file is still the one it wrote. Another source identity, or a partial file
     * deleted, replaced or truncated on the server: the same user uploads anew, so that session
     * is superseded and the upload starts over. The same identity with another expected digest
     * is refused, as before (a live upload of other content is not silently replaced). */
    if (fb_table_find_upload(req->table, &idx, req->user, req->docroot, relpath, size) == FB_OK) {
        fb_slot_info *info = apr_palloc(r->pool, sizeof(*info));

        slot = fb_table_slot(req->table, idx);
        fb_slot_info_read(info, slot);
        wipe_info(info);
        /* Re-check what fb_table_find_upload matched: the slot may have been reused since. */
        if (atomic_load(&slot->state) == FB_SLOT_ACTIVE && info->direction == FB_DIR_UPLOAD &&
            info->size == size && strcmp(info->user, req->user) == 0 &&
            strcmp(info->docroot, req->docroot) == 0 && strcmp(info->relpath, relpath) == 0) {
            char id[FB_SESSION_ID_LEN + 1];
            struct stat psb;
            int intact = fstat(part_fd, &psb) == 0 && partial_is_the_sessions(&psb, info);
            int same = same_source(source_id, info->source_id);

            fb_session_id_format(id, idx, info->id_random);
            if (same && intact &&
                same_expectation(sha256, info->flags & FB_SLOT_FLAG_EXPECTED_SHA256, info->expected_sha256)) {
                rc = reply_session(req, HTTP_OK, idx, slot, 1, 0, 1);
                goto leave;
            }
            if (!same || !intact) {
                if (fb_slot_transition(slot, FB_SLOT_ACTIVE, FB_SLOT_FAILED)) {
                    atomic_store(&slot->error_code, (uint32_t)FB_ERR_CHANGED);
                    superseded = 1;
                    ap_log_rerror(
                        APLOG_MARK, APLOG_INFO, 0, r,
                        FBLOGNO(00240) "upload of '%s' starts over: session %s %s", relpath, id,
                        !same ? "was for another source file (source_id differs)"
                              : "lost its partial file (deleted, replaced or truncated on the server)");
                }
                slot = NULL;
                goto supersede_rest;
            }
            ap_log_rerror(
                APLOG_MARK, APLOG_INFO, 0, r,
                FBLOGNO(00223) "upload of '%s' refused: session %s of the same path and size expects "
                               "other content",
                relpath, id);
            rc = mod_fallback_problem(
                req, FB_ERR_SESSION_STATE,
                apr_psprintf(
                    r->pool,
                    "another upload of this path (session %s) with %s is in progress; wait for it to "
                    "finish or expire, or cancel it",
                    id,
                    (info->flags & FB_SLOT_FLAG_EXPECTED_SHA256) ? "another expected sha256"
                                                                 : "no expected sha256"));
            goto leave;
        }
        slot = NULL;
    }

supersede_rest:
    /* 2. Nobody else may be writing this partial file. */
    {
        int others = 0;
        e = supersede_others(&others, req, relpath, size);
        superseded |= others;
    }
    if (e != FB_OK) {
        rc = mod_fallback_problem(req, e, "another session is uploading this path");
        goto leave;
    }
    if (superseded) {
        int new_fd = -1;
        e = replace_partial(&new_fd, parent_fd, partbase);
        if (e != FB_OK) {
            rc = mod_fallback_problem(req, e, NULL);
            goto leave;
        }
        mod_fallback_fd_close_now(r->pool, part_fd);
        part_fd = new_fd;
        mod_fallback_fd_close_on_cleanup(r->pool, part_fd);
        (void)fb_checkpoint_remove(parent_fd, ckptbase);
    }

    /* 3. A checkpoint of the same geometry, source and partial inode: resume from it. (A partial
     * file deleted since was created anew by lock_partial: another inode.) */
    cp = apr_palloc(r->pool, sizeof(*cp));
    e = superseded ? FB_ERR_NOT_FOUND : fb_checkpoint_read(cp, parent_fd, ckptbase);
    if (e == FB_OK && fstat(part_fd, &sb) == 0 && (uint64_t)sb.st_size == size && cp->size == size &&
        cp->chunk_size == cs && cp->nchunks == nchunks && cp->part_ino != 0 &&
        cp->part_dev == (uint64_t)sb.st_dev && cp->part_ino == (uint64_t)sb.st_ino &&
        same_source(source_id, cp->source_id) &&
        same_expectation(sha256, cp->flags & FB_CHECKPOINT_FLAG_SHA256, cp->expected_sha256)) {
        resumed = 1;
    } else {
        if (e == FB_OK)
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                          FBLOGNO(00224) "checkpoint of '%s' does not fit this upload (size, chunk size, "
                                         "expected sha256, source_id, or a partial file changed on the "
                                         "server): starting over",
                          relpath);
        if (e != FB_ERR_NOT_FOUND)
            (void)fb_checkpoint_remove(parent_fd, ckptbase);
        /* Sparse: ENOSPC surfaces on write, where it is reported and resumable. */
        if (ftruncate(part_fd, 0) != 0 || ftruncate(part_fd, (off_t)size) != 0) {
            int err = errno;
            ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(err), r,
                          FBLOGNO(00207) "cannot size the partial file of '%s'", relpath);
            rc = mod_fallback_problem(
                req, fb_err_from_errno(err) == FB_ERR_DISK_FULL ? FB_ERR_DISK_FULL : FB_ERR_IO, NULL);
            goto leave;
        }
    }

    /* The partial file as it is now (sized above): the slot keeps its inode (see
     * partial_is_the_sessions). */
    if (fstat(part_fd, &sb) != 0) {
        rc = mod_fallback_problem(req, FB_ERR_IO, NULL);
        goto leave;
    }
    e = claim_slot(&idx, &slot, req);
    if (e != FB_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, FBLOGNO(00208) "no free session slot: %s",
                      fb_err_message(e));
        rc = mod_fallback_problem(req, e, NULL);
        goto leave;
    }
    e = fill_slot(slot, req, FB_DIR_UPLOAD, relpath, size, cs, ow, mode,
                  (resumed ? FB_SLOT_FLAG_RESUMED : 0) | (pack != NULL ? FB_SLOT_FLAG_PACK : 0), sha256, &sb,
                  source_id, source_mtime_ns);
    if (e == FB_OK && resumed) {
        uint64_t i;
        for (i = 0; i < nchunks; i++)
            if (fb_bitmap_get(cp->bitmap, i))
                fb_slot_set_chunk(slot, i);
    }
    if (e != FB_OK || !publish_slot(slot)) {
        fb_slot_release(slot);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00209) "cannot set up upload session");
        rc = mod_fallback_problem(req, FB_ERR_INTERNAL, NULL);
        goto leave;
    }
    {
        char id[FB_SESSION_ID_LEN + 1];
        fb_session_id_format(id, idx, slot->info.id_random);
        apr_table_setn(r->notes, "fallback-session", apr_pstrdup(r->pool, id));
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      FBLOGNO(00210) "upload session %s for '%s' (%s), %" APR_UINT64_T_FMT " bytes%s", id,
                      req->user, relpath, (apr_uint64_t)size, resumed ? ", resumed from checkpoint" : "");
    }
    if (resumed)
        status = HTTP_OK;
    rc = reply_session(req, status, idx, slot, 1, 0, 0);

leave:
    /* Releases the flock: the slot is ACTIVE (or was not created) by now. */
    mod_fallback_fd_close_now(r->pool, part_fd);
    return rc;
}
