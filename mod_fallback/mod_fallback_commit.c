/* mod_fallback_commit.c: POST sessions/{id}/commit: verify, fsync, rename into place exactly
 * once (docs/HTTP-API.md), and the failure paths that leave the session FAILED or ACTIVE. */

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

static int reply_committed(mod_fallback_req *req, const char *id, const fb_slot_info *info,
                           const unsigned char *sha)
{
    char hex[FB_SHA256_HEX_LEN + 1];

    fb_hex_encode(hex, sha, FB_SHA256_LEN);
    return mod_fallback_json_reply(req, HTTP_OK,
                                   json_pack("{s:s, s:s, s:s, s:I, s:s}", "id", id, "state", "done", "path",
                                             (info->flags & FB_SLOT_FLAG_PACK)
                                                 ? mod_fallback_pack_root(req->r->pool, info->relpath)
                                                 : info->relpath,
                                             "size", (json_int_t)info->size, "sha256", hex),
                                   0);
}

/* The answer for a session already done: idempotent for the same digest. */
static int reply_done(mod_fallback_req *req, const char *id, fb_slot *slot, uint32_t gen,
                      const unsigned char *sha)
{
    fb_slot_info *info = apr_palloc(req->r->pool, sizeof(*info));

    fb_slot_info_read(info, slot);
    wipe_info(info);
    /* A finished slot may be taken by a new session at any moment (fb_table_claim): what was
     * read counts only if the slot is still this session's. */
    if (atomic_load(&slot->state) != FB_SLOT_DONE || atomic_load(&slot->generation) != gen)
        return mod_fallback_problem(req, FB_ERR_NOT_FOUND, "the session ended and its slot was reused");
    if (!(info->flags & FB_SLOT_FLAG_EXPECTED_SHA256) ||
        !fb_mem_equal_ct(info->expected_sha256, sha, FB_SHA256_LEN))
        return mod_fallback_problem(req, FB_ERR_DIGEST_MISMATCH,
                                    "the file was committed with another digest");
    return reply_committed(req, id, info, sha);
}

/* Moves the slot out of FINALISING after a failed commit and answers (with EXTRA's members,
 * whose reference is taken; may be NULL). */
int mod_fallback_commit_fail_ext(mod_fallback_req *req, fb_slot *slot, fb_slot_state to, fb_err code,
                                 const char *detail, json_t *extra)
{
    if (to == FB_SLOT_FAILED)
        atomic_store(&slot->error_code, (uint32_t)code);
    if (!fb_slot_transition(slot, FB_SLOT_FINALISING, to))
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, req->r,
                      FBLOGNO(00213) "session left FINALISING unexpectedly");
    return mod_fallback_problem_ext(req, code, detail, extra);
}

static int commit_fail(mod_fallback_req *req, fb_slot *slot, fb_slot_state to, fb_err code,
                       const char *detail)
{
    return mod_fallback_commit_fail_ext(req, slot, to, code, detail, NULL);
}

/* Under the older policies the target may have changed since the session was created: 1 if a
 * target (other than a directory, which the rename refuses anyway) is there now that is not
 * older than the upload's source. */
int mod_fallback_target_now_newer(int parent_fd, const char *base, fb_overwrite ow,
                                  const uint64_t *source_mtime_ns)
{
    struct stat sb;

    if (!mod_fallback_policy_needs_older(ow) || fstatat(parent_fd, base, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
        S_ISDIR(sb.st_mode))
        return 0;
    return source_mtime_ns == NULL || !target_is_older(&sb, *source_mtime_ns);
}

int mod_fallback_rename_into_place(int parent_fd, const char *partbase, const char *base, fb_overwrite ow)
{
    if (ow != FB_OVERWRITE_NEVER)
        return renameat(parent_fd, partbase, parent_fd, base);
    if (renameat2(parent_fd, partbase, parent_fd, base, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    /* File systems without RENAME_NOREPLACE: link() refuses an existing name too. */
    if (linkat(parent_fd, partbase, parent_fd, base, 0) != 0)
        return -1;
    return unlinkat(parent_fd, partbase, 0);
}

int mod_fallback_sessions_commit(mod_fallback_req *req, const char *id)
{
    unsigned char sha[FB_SHA256_LEN];
    json_t *doc = NULL;
    int rc;

    rc = mod_fallback_read_json(req, &doc);
    if (doc == NULL)
        return rc;
    if (mod_fallback_sha256_hex_parse(sha, json_object_get(doc, "sha256")) != FB_OK)
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "sha256 must be 64 hex digits");
    return mod_fallback_sessions_commit_sha(req, id, sha);
}

int mod_fallback_sessions_commit_sha(mod_fallback_req *req, const char *id, const unsigned char *sha)
{
    request_rec *r = req->r;
    fb_slot_info *info = apr_palloc(r->pool, sizeof(*info));
    char partrel[FB_RELPATH_MAX + 32], ckptrel[FB_RELPATH_MAX + 32];
    const char *partbase, *ckptbase, *base;
    unsigned char digest[FB_SHA256_LEN];
    fb_slot *slot = NULL;
    uint32_t idx = 0, gen = 0, st;
    int rc, parent_fd = -1, fd = -1, tries = 0;
    uint64_t done;
    struct stat sb;
    fb_err e;

    rc = mod_fallback_session_lookup(req, id, &idx, &slot, &gen, info);
    if (slot == NULL)
        return rc;
    wipe_info(info);
    if (info->direction != FB_DIR_UPLOAD)
        return mod_fallback_problem(req, FB_ERR_SESSION_STATE, "only uploads are committed");
    st = atomic_load(&slot->state);
    if (st == FB_SLOT_DONE)
        return reply_done(req, id, slot, gen, sha);
    if ((info->flags & FB_SLOT_FLAG_EXPECTED_SHA256) &&
        !fb_mem_equal_ct(info->expected_sha256, sha, FB_SHA256_LEN))
        return mod_fallback_problem(req, FB_ERR_DIGEST_MISMATCH,
                                    "differs from the sha256 given when the session was created");
    if (!fb_slot_transition(slot, FB_SLOT_ACTIVE, FB_SLOT_FINALISING)) {
        if (atomic_load(&slot->state) == FB_SLOT_DONE && atomic_load(&slot->generation) == gen)
            return reply_done(req, id, slot, gen, sha);
        return mod_fallback_session_ended(req, slot, gen);
    }
    /* From here on this request owns the slot: every path leaves FINALISING. PUTs that started
     * before the transition may still be writing their last buffer: wait for them (bounded: a
     * child killed mid-request never decrements the count, so after 5 s the commit goes on). */
    for (tries = 0; atomic_load(&slot->writers) > 0 && tries < 500; tries++)
        apr_sleep(apr_time_from_msec(10));
    tries = 0;
    done = atomic_load(&slot->chunks_done);
    if (done != info->nchunks)
        return commit_fail(req, slot, FB_SLOT_ACTIVE, FB_ERR_INCOMPLETE,
                           apr_psprintf(r->pool,
                                        "%" APR_UINT64_T_FMT " of %" APR_UINT64_T_FMT " chunks received",
                                        (apr_uint64_t)done, (apr_uint64_t)info->nchunks));
    if (fb_path_partial_name(partrel, sizeof(partrel), info->relpath) != FB_OK ||
        fb_path_checkpoint_name(ckptrel, sizeof(ckptrel), info->relpath) != FB_OK)
        return commit_fail(req, slot, FB_SLOT_FAILED, FB_ERR_INTERNAL, NULL);
    partbase = mod_fallback_basename(partrel);
    ckptbase = mod_fallback_basename(ckptrel);
    base = mod_fallback_basename(info->relpath);
    e = mod_fallback_open_parent(&parent_fd, req, info->relpath);
    if (e != FB_OK)
        return commit_fail(req, slot, FB_SLOT_FAILED, FB_ERR_SESSION_STATE, "the target directory is gone");
    fd = openat(parent_fd, partbase, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return commit_fail(req, slot, FB_SLOT_FAILED, FB_ERR_SESSION_STATE, "the partial file is gone");
    mod_fallback_fd_close_on_cleanup(r->pool, fd);
    /* Checkpoint writers take this lock too and skip once the session is not ACTIVE. */
    while (flock(fd, LOCK_EX) != 0 && errno == EINTR && tries++ < 1000)
        ;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size != info->size) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00214) "partial file of '%s' has the wrong size",
                      info->relpath);
        rc = commit_fail(req, slot, FB_SLOT_FAILED, FB_ERR_IO, "the partial file has the wrong size");
        goto leave;
    }
    if (fsync(fd) != 0) {
        int err = errno;
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(err), r, FBLOGNO(00215) "fsync of '%s' failed",
                      partrel);
        rc = commit_fail(req, slot, FB_SLOT_ACTIVE,
                         fb_err_from_errno(err) == FB_ERR_DISK_FULL ? FB_ERR_DISK_FULL : FB_ERR_IO, NULL);
        goto leave;
    }
    /* The running digest already covers most of the file (fb_digest.h); only the rest is read.
     * If it disagrees with the client, the file is hashed again from the start before the
     * mismatch is reported, so a damaged running state can never refuse a good upload. */
    e = fb_slot_digest_final(digest, slot, gen, fd, info->size);
    if (e != FB_OK || !fb_mem_equal_ct(digest, sha, FB_SHA256_LEN))
        e = fb_sha256_fd(digest, fd, info->size);
    if (e != FB_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00216) "hashing '%s' failed: %s", partrel,
                      fb_err_message(e));
        rc = commit_fail(req, slot, FB_SLOT_ACTIVE, FB_ERR_IO, NULL);
        goto leave;
    }
    if (!fb_mem_equal_ct(digest, sha, FB_SHA256_LEN)) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, FBLOGNO(00217) "session %s: digest mismatch for '%s'", id,
                      info->relpath);
        rc = commit_fail(req, slot, FB_SLOT_ACTIVE, FB_ERR_DIGEST_MISMATCH, NULL);
        goto leave;
    }
    if (info->flags & FB_SLOT_FLAG_PACK) {
        /* The pack's files land one by one (mod_fallback_pack_up.c); the pack itself is not. */
        rc = mod_fallback_pack_up_land(req, id, slot, info, fd, parent_fd, digest);
        goto leave;
    }
    /* The mode is right before the name becomes visible. */
    if (fchmod(fd, (mode_t)(info->file_mode & 0777u)) != 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(errno), r,
                      FBLOGNO(00218) "fchmod of '%s' failed", partrel);
        rc = commit_fail(req, slot, FB_SLOT_ACTIVE, FB_ERR_IO, NULL);
        goto leave;
    }
    /* So are its times: the client file's modification time when given, else the commit's. */
    if (mod_fallback_fd_set_mtime(fd, (info->flags & FB_SLOT_FLAG_SOURCE_MTIME) ? &info->source_mtime_ns
                                                                                : NULL) != 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(errno), r,
                      FBLOGNO(00260) "cannot set the times of '%s'", partrel);
        rc = commit_fail(req, slot, FB_SLOT_ACTIVE, FB_ERR_IO, NULL);
        goto leave;
    }
    if (mod_fallback_target_now_newer(parent_fd, base, (fb_overwrite)info->overwrite,
                                      (info->flags & FB_SLOT_FLAG_SOURCE_MTIME) ? &info->source_mtime_ns
                                                                                : NULL)) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      FBLOGNO(00261) "session %s: '%s' is not older than the upload any more: kept", id,
                      info->relpath);
        rc = mod_fallback_commit_fail_ext(req, slot, FB_SLOT_ACTIVE, FB_ERR_EXISTS,
                                          "the target is not older than the file",
                                          json_pack("{s:s}", "reason", "newer"));
        goto leave;
    }
    /* The verified digest stays with the file (fb_filesum.h), for Repr-Digest on files/ and
     * "sha256" in download sessions. Last before the rename: any later change of the file's data,
     * mode or times (set them before this) would leave it invalid. Not fatal: without user
     * extended attributes the file is simply served without a digest. */
    e = fb_filesum_set(fd, digest);
    if (e != FB_OK)
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, APR_FROM_OS_ERROR(errno), r,
                      FBLOGNO(00242) "cannot keep the digest of '%s' with it: %s", info->relpath,
                      fb_err_message(e));
    if (mod_fallback_rename_into_place(parent_fd, partbase, base, (fb_overwrite)info->overwrite) != 0) {
        int err = errno;
        if (err == EEXIST || err == EISDIR || err == ENOTEMPTY || err == ENOTDIR) {
            rc = commit_fail(req, slot, FB_SLOT_ACTIVE, FB_ERR_EXISTS, NULL);
        } else {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(err), r,
                          FBLOGNO(00219) "cannot rename '%s' into place", partrel);
            rc = commit_fail(req, slot, FB_SLOT_ACTIVE, FB_ERR_IO, NULL);
        }
        goto leave;
    }
    if (fsync(parent_fd) != 0)
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, APR_FROM_OS_ERROR(errno), r,
                      FBLOGNO(00220) "fsync of the directory of '%s' failed", info->relpath);
    (void)fb_checkpoint_remove(parent_fd, ckptbase);

    mod_fallback_commit_done(req, slot, id, digest);
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                  FBLOGNO(00222) "session %s committed '%s' (%" APR_UINT64_T_FMT " bytes)", id, info->relpath,
                  (apr_uint64_t)info->size);
    rc = reply_committed(req, id, info, digest);

leave:
    mod_fallback_fd_close_now(r->pool, fd);
    return rc;
}

void mod_fallback_commit_done(mod_fallback_req *req, fb_slot *slot, const char *id,
                              const unsigned char *digest)
{
    /* Remember the digest for idempotent repeats of this commit. Only this request writes INFO
     * while the slot is FINALISING; readers use the seqlock as always. */
    fb_slot_info_write_begin(slot);
    memcpy(slot->info.expected_sha256, digest, FB_SHA256_LEN);
    slot->info.flags |= FB_SLOT_FLAG_EXPECTED_SHA256;
    fb_slot_info_write_end(slot);
    if (!fb_slot_transition(slot, FB_SLOT_FINALISING, FB_SLOT_DONE))
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, req->r,
                      FBLOGNO(00221) "session %s left FINALISING unexpectedly", id);
}
