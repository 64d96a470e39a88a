/* mod_fallback_sessions.c: the session control routes of docs/HTTP-API.md:
 * POST sessions (create or resume an upload, create a download), GET and DELETE sessions/{id},
 * POST sessions/{id}/commit (verify, fsync, rename into place exactly once).
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

/* The API shows a slot still being filled in as "active": clients never see "claimed". */
const char *mod_fallback_state_name(uint32_t state)
{
    return fb_slot_state_name(state == FB_SLOT_CLAIMED ? FB_SLOT_ACTIVE : state);
}

fb_err mod_fallback_session_error(fb_slot *slot, uint32_t gen)
{
    uint32_t code = atomic_load(&slot->error_code);

    if (atomic_load(&slot->state) != FB_SLOT_FAILED || atomic_load(&slot->generation) != gen ||
        code >= (uint32_t)FB_ERR__COUNT)
        return FB_OK;
    return (fb_err)code;
}

int mod_fallback_session_ended(mod_fallback_req *req, fb_slot *slot, uint32_t gen)
{
    fb_err e = mod_fallback_session_error(slot, gen);

    /* The administrator's refusal (fbctl cancel) is the client's final answer, on every route. */
    if (e == FB_ERR_SERVER_REFUSED)
        return mod_fallback_problem(req, e, "the session was cancelled on the server");
    return mod_fallback_problem(req, FB_ERR_SESSION_STATE,
                                apr_pstrcat(req->r->pool, "the session is ",
                                            mod_fallback_state_name(atomic_load(&slot->state)), NULL));
}

static const char *direction_name(uint32_t d)
{
    return d == FB_DIR_DOWNLOAD ? "download" : "upload";
}

static void wipe_info(fb_slot_info *info)
{
    OPENSSL_cleanse(info->key, sizeof(info->key));
}

int mod_fallback_session_lookup(mod_fallback_req *req, const char *id, uint32_t *pindex, fb_slot **pslot,
                                uint32_t *pgen, fb_slot_info *info)
{
    request_rec *r = req->r;
    char check[FB_SESSION_ID_LEN + 1];
    uint32_t idx = 0;
    fb_slot *slot;
    int rc;

    *pslot = NULL;
    rc = mod_fallback_docroot_open(req);
    if (req->docroot_fd < 0)
        return rc;
    if (strlen(id) != FB_SESSION_ID_LEN || fb_table_find(req->table, &idx, id) != FB_OK)
        return mod_fallback_problem(req, FB_ERR_NOT_FOUND, NULL);
    slot = fb_table_slot(req->table, idx);
    *pgen = atomic_load(&slot->generation);
    fb_slot_info_read(info, slot);
    fb_session_id_format(check, idx, info->id_random);
    /* Another user's session, or a slot reused since fb_table_find: the same 404 as unknown. */
    if (strcmp(check, id) != 0 || strcmp(info->user, req->user) != 0 || strcmp(info->docroot, req->docroot) != 0) {
        wipe_info(info);
        return mod_fallback_problem(req, FB_ERR_NOT_FOUND, NULL);
    }
    apr_table_setn(r->notes, "fallback-session", apr_pstrdup(r->pool, check));
    *pindex = idx;
    *pslot = slot;
    return OK;
}

/* ETag exactly as BASE/files/{path} would send it (same FileETag settings). */
static void file_validators(mod_fallback_req *req, int fd, const char **petag)
{
    request_rec *r = req->r;
    apr_os_file_t ofd = fd;
    apr_file_t *f = NULL;
    apr_finfo_t fi;
    etag_rec er;

    *petag = NULL;
    /* apr_os_file_put registers no cleanup: FD stays owned by the caller. */
    if (apr_os_file_put(&f, &ofd, APR_FOPEN_READ, r->pool) != APR_SUCCESS ||
        apr_file_info_get(&fi, APR_FINFO_NORM, f) != APR_SUCCESS)
        return;
    memset(&er, 0, sizeof(er));
    er.request_time = r->request_time;
    er.finfo = &fi;
    er.fd = f;
    *petag = ap_make_etag_ex(r, &er);
}

/* udpd stores its pid in the table header and bumps the heartbeat every second while it runs
 * (and clears the pid when it exits cleanly): a heartbeat older than this means nobody serves the
 * UDP port. */
#define UDPD_HEARTBEAT_STALE_NS (5ull * 1000000000ull)

static int udpd_alive(fb_table *table)
{
    fb_table_header *h = fb_table_header_get(table);
    uint64_t hb = atomic_load(&h->heartbeat_ns), now = fb_time_now_ns();

    if (atomic_load(&h->udpd_pid) == 0 || hb == 0)
        return 0;
    /* CLOCK_REALTIME on both sides: allow a clock stepped back a little too. */
    return now >= hb ? now - hb <= UDPD_HEARTBEAT_STALE_NS : hb - now <= UDPD_HEARTBEAT_STALE_NS;
}

static json_t *session_doc(mod_fallback_req *req, uint32_t idx, const fb_slot_info *info, uint32_t state)
{
    char id[FB_SESSION_ID_LEN + 1];
    json_t *doc;

    fb_session_id_format(id, idx, info->id_random);
    doc = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:b, s:s}", "id", id, "direction", direction_name(info->direction),
                    "path", info->relpath, "size", (json_int_t)info->size, "chunk_size", (json_int_t)info->chunk_size,
                    "state", mod_fallback_state_name(state), "resumed", (info->flags & FB_SLOT_FLAG_RESUMED) != 0,
                    "location", apr_pstrcat(req->r->pool, req->base, "/sessions/", id, NULL));
    /* A pack's path is its root directory, not its hidden name. */
    if (doc != NULL && (info->flags & FB_SLOT_FLAG_PACK))
        json_object_set_new(doc, "path", json_string(mod_fallback_pack_root(req->r->pool, info->relpath)));
    /* The UDP endpoint only while udpd runs: a client told of none goes straight to HTTP(S)
     * instead of waiting for a UDP handshake nobody answers. */
    if (doc != NULL && udpd_alive(req->table))
        json_object_set_new(doc, "udp", json_pack("{s:i}", "port", req->cfg->udp_port));
    return doc;
}

/* A failed session says why, when that was recorded ("server_refused" after fbctl cancel). */
static void add_error(json_t *doc, fb_slot *slot, uint32_t state)
{
    uint32_t code = atomic_load(&slot->error_code);

    if (doc != NULL && state == FB_SLOT_FAILED && code != FB_OK && code < (uint32_t)FB_ERR__COUNT)
        json_object_set_new(doc, "error", json_string(fb_err_name((fb_err)code)));
}

/* received_bytes, missing (at most MOD_FALLBACK_MAX_MISSING_RANGES), missing_bytes. */
static int add_progress(json_t *doc, fb_slot *slot, const fb_slot_info *info, apr_pool_t *p)
{
    uint64_t *words = apr_palloc(p, FB_BITMAP_WORDS * sizeof(uint64_t));
    fb_range *ranges = apr_palloc(p, MOD_FALLBACK_MAX_MISSING_RANGES * sizeof(fb_range));
    uint64_t missing_bytes = 0;
    size_t n, i;
    json_t *arr = json_array();

    if (arr == NULL)
        return -1;
    fb_slot_bitmap_copy(words, slot);
    n = fb_bitmap_missing(ranges, MOD_FALLBACK_MAX_MISSING_RANGES, &missing_bytes, words, info->size,
                          info->chunk_size);
    for (i = 0; i < n && i < MOD_FALLBACK_MAX_MISSING_RANGES; i++)
        json_array_append_new(arr, json_pack("[I, I]", (json_int_t)ranges[i].offset, (json_int_t)ranges[i].length));
    json_object_set_new(doc, "missing", arr);
    json_object_set_new(doc, "missing_bytes", json_integer((json_int_t)missing_bytes));
    json_object_set_new(doc, "received_bytes", json_integer((json_int_t)(info->size - missing_bytes)));
    if (n > MOD_FALLBACK_MAX_MISSING_RANGES)
        json_object_set_new(doc, "missing_truncated", json_true());
    return 0;
}

static void add_key(json_t *doc, const fb_slot_info *info)
{
    char hex[2 * FB_KEY_LEN + 1];

    fb_hex_encode(hex, info->key, FB_KEY_LEN);
    json_object_set_new(doc, "key", json_string(hex));
    OPENSSL_cleanse(hex, sizeof(hex));
}

/* Answers a session document; the key only to its creator (create/resume answers). */
static int reply_session(mod_fallback_req *req, int status, uint32_t idx, fb_slot *slot, int with_key, int with_stats,
                         int resumed)
{
    fb_slot_info *info = apr_palloc(req->r->pool, sizeof(*info));
    uint32_t state = atomic_load(&slot->state);
    json_t *doc;

    fb_slot_info_read(info, slot);
    doc = session_doc(req, idx, info, state);
    add_error(doc, slot, state);
    if (doc == NULL) {
        wipe_info(info);
        return mod_fallback_json_reply(req, status, NULL, 0);
    }
    apr_table_set(req->r->notes, "fallback-session", json_string_value(json_object_get(doc, "id")));
    if (resumed)
        json_object_set_new(doc, "resumed", json_true());
    if (info->direction == FB_DIR_UPLOAD) {
        add_progress(doc, slot, info, req->r->pool);
    }
    else {
        int fd = -1;
        const char *etag = NULL;
        struct stat sb;

        unsigned char sha[FB_SHA256_LEN];
        int have_sha = 0;

        if (fb_path_open_beneath(&fd, req->docroot_fd, info->relpath, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0) == FB_OK) {
            file_validators(req, fd, &etag);
            if (etag != NULL && fstat(fd, &sb) != 0)
                etag = NULL;
            have_sha = fb_filesum_get(sha, fd);
            close(fd);
        }
        /* The file's SHA-256 when the server knows it (kept at commit, still valid): the client
         * checks what it wrote against it, as files/ gives it in Repr-Digest. */
        if (have_sha) {
            char hex[FB_SHA256_HEX_LEN + 1];

            fb_hex_encode(hex, sha, FB_SHA256_LEN);
            json_object_set_new(doc, "sha256", json_string(hex));
        }
        if (etag != NULL) {
            json_object_set_new(doc, "etag", json_string(etag));
            mod_fallback_json_set_mtime(doc, &sb.st_mtim);
        }
    }
    if (with_stats) {
        json_object_set_new(doc, "bytes_http", json_integer((json_int_t)atomic_load(&slot->bytes_http)));
        json_object_set_new(doc, "bytes_udp", json_integer((json_int_t)atomic_load(&slot->bytes_udp)));
    }
    if (with_key)
        add_key(doc, info);
    wipe_info(info);
    if (req->answer_extra != NULL)
        json_object_update(doc, req->answer_extra);
    if (status == HTTP_CREATED)
        apr_table_set(req->r->headers_out, "Location", json_string_value(json_object_get(doc, "location")));
    return mod_fallback_json_reply(req, status, doc, with_key);
}

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
    uint32_t cs = fb_table_chunk_size_for(size, req->cfg->chunk_size ? req->cfg->chunk_size : FB_DEFAULT_CHUNK_SIZE);

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
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, FBLOGNO(00201) "no free session slot: %s", fb_err_message(e));
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
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, FBLOGNO(00203) "download session %s for '%s' (%s), %" APR_UINT64_T_FMT
                      " bytes", id, req->user, relpath, (apr_uint64_t)sb.st_size);
    }
    return reply_session(req, HTTP_CREATED, idx, slot, 1, 0, 0);
}

/* Opens (creating) the partial file and takes its flock. Retries when the name was replaced or
 * removed while we waited (a cancel, a commit, or a restart of the upload). */
static fb_err lock_partial(int *pfd, int parent_fd, const char *partbase, int create)
{
    int attempt;

    *pfd = -1;
    for (attempt = 0; attempt < LOCK_ATTEMPTS; attempt++) {
        struct stat a, b;
        int fd = openat(parent_fd, partbase, (create ? O_RDWR | O_CREAT : O_RDWR) | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                        0600);
        int tries = 0;

        if (fd < 0)
            return errno == ELOOP ? FB_ERR_PATH_ESCAPE : fb_err_from_errno(errno);
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR && tries++ < 1000)
            ;
        if (fstat(fd, &a) == 0 && fstatat(parent_fd, partbase, &b, AT_SYMLINK_NOFOLLOW) == 0 && a.st_dev == b.st_dev &&
            a.st_ino == b.st_ino) {
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
        }
        else if (atomic_load(&slot->state) == FB_SLOT_FINALISING) {
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
static int partial_is_the_sessions(const struct stat *sb, const fb_slot_info *info)
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
static int target_is_older(const struct stat *sb, uint64_t source_mtime_ns)
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
        struct timespec ts[2] = {{0, UTIME_OMIT},
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
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, FBLOGNO(00205) "cannot create the directories of '%s': %s", relpath,
                      fb_err_message(e));
        return mod_fallback_problem(req, e, "cannot create the target's directory");
    }
    rc = check_target(req, parent_fd, base, size, ow, sha256, ask_digest, source_mtime_ns, &skip_reason);
    if (rc == 1)
        return reply_skipped(req, relpath, size, skip_reason);
    if (rc != -1)
        return rc;

    e = lock_partial(&part_fd, parent_fd, partbase, 1);
    if (e != FB_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00206) "cannot open the partial file of '%s': %s", relpath,
                      fb_err_message(e));
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
                return mod_fallback_problem(
                    req, FB_ERR_DISK_FULL,
                    apr_psprintf(r->pool, "the upload needs %" APR_UINT64_T_FMT " more bytes, %" APR_UINT64_T_FMT
                                          " are free",
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
        if (atomic_load(&slot->state) == FB_SLOT_ACTIVE && info->direction == FB_DIR_UPLOAD && info->size == size &&
            strcmp(info->user, req->user) == 0 && strcmp(info->docroot, req->docroot) == 0 &&
            strcmp(info->relpath, relpath) == 0) {
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
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                          FBLOGNO(00223) "upload of '%s' refused: session %s of the same path and size expects "
                          "other content",
                          relpath, id);
            rc = mod_fallback_problem(
                req, FB_ERR_SESSION_STATE,
                apr_psprintf(r->pool,
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
            rc = mod_fallback_problem(req, fb_err_from_errno(err) == FB_ERR_DISK_FULL ? FB_ERR_DISK_FULL : FB_ERR_IO, NULL);
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
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, FBLOGNO(00208) "no free session slot: %s", fb_err_message(e));
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
                      FBLOGNO(00210) "upload session %s for '%s' (%s), %" APR_UINT64_T_FMT " bytes%s", id, req->user,
                      relpath, (apr_uint64_t)size, resumed ? ", resumed from checkpoint" : "");
    }
    if (resumed)
        status = HTTP_OK;
    rc = reply_session(req, status, idx, slot, 1, 0, 0);

leave:
    /* Releases the flock: the slot is ACTIVE (or was not created) by now. */
    mod_fallback_fd_close_now(r->pool, part_fd);
    return rc;
}

/* Octal permission string: "644", "0644"; no setuid/setgid/sticky bits. */
int mod_fallback_mode_parse(unsigned *pmode, const char *s)
{
    unsigned v = 0;
    size_t i, n = strlen(s);

    if (n == 0 || n > 4)
        return 0;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '7')
            return 0;
        v = v * 8 + (unsigned)(s[i] - '0');
    }
    if (v & ~0777u)
        return 0;
    *pmode = v;
    return 1;
}

/* "mtime" (integer seconds since the epoch, 0 to FB_MTIME_MAX_S) and "mtime_ns" (its
 * nanoseconds part, 0 to 999999999; only with "mtime"): *PNS in ns, *PHAS 0 when absent.
 * Returns NULL when fine, else what is wrong. */
const char *mod_fallback_mtime_parse(json_t *obj, uint64_t *pns, int *phas)
{
    json_t *v = json_object_get(obj, "mtime"), *vns = json_object_get(obj, "mtime_ns");
    json_int_t s, ns = 0;

    *phas = 0;
    if (v == NULL || json_is_null(v))
        return vns != NULL && !json_is_null(vns) ? "mtime_ns is only valid with mtime" : NULL;
    if (!json_is_integer(v) || (s = json_integer_value(v)) < 0 || (uint64_t)s > FB_MTIME_MAX_S)
        return "mtime must be an integer number of seconds since the epoch, 0 to 9999999999";
    if (vns != NULL && !json_is_null(vns) &&
        (!json_is_integer(vns) || (ns = json_integer_value(vns)) < 0 || ns > 999999999))
        return "mtime_ns must be an integer from 0 to 999999999";
    *pns = (uint64_t)s * 1000000000ull + (uint64_t)ns;
    *phas = 1;
    return NULL;
}

/* The same for a request: -1 to go on, or the handler result of a 400 answer. */
static int parse_source_mtime(mod_fallback_req *req, json_t *doc, uint64_t *pns, int *phas)
{
    const char *bad = mod_fallback_mtime_parse(doc, pns, phas);

    return bad != NULL ? mod_fallback_problem(req, FB_ERR_BAD_REQUEST, bad) : -1;
}

int mod_fallback_overwrite_parse(fb_overwrite *pow, json_t *v)
{
    static const struct {
        const char *name;
        fb_overwrite ow;
    } names[] = {{"never", FB_OVERWRITE_NEVER},
                 {"always", FB_OVERWRITE_ALWAYS},
                 {"if_different", FB_OVERWRITE_IF_DIFFERENT},
                 {"older", FB_OVERWRITE_OLDER},
                 {"if_different,older", FB_OVERWRITE_IF_DIFFERENT_OLDER}};

    *pow = FB_OVERWRITE_ALWAYS;
    if (v == NULL || json_is_null(v))
        return 1;
    for (size_t i = 0; json_is_string(v) && i < sizeof(names) / sizeof(names[0]); i++) {
        if (strcmp(json_string_value(v), names[i].name) == 0) {
            *pow = names[i].ow;
            return 1;
        }
    }
    return 0;
}

int mod_fallback_sessions_create(mod_fallback_req *req)
{
    char relpath[FB_PATH_MAX + 1];
    json_t *doc = NULL, *v;
    const char *dir, *path;
    fb_overwrite ow = FB_OVERWRITE_ALWAYS;
    unsigned char sha[FB_SHA256_LEN], source[FB_SHA256_LEN];
    const unsigned char *shap = NULL, *sourcep = NULL;
    unsigned mode;
    json_int_t size;
    uint64_t mtime_ns = 0;
    fb_err e;
    int rc, ask_digest = 0, has_mtime = 0;

    rc = mod_fallback_read_json(req, &doc);
    if (doc == NULL)
        return rc;

    v = json_object_get(doc, "direction");
    dir = json_is_string(v) ? json_string_value(v) : NULL;
    if (dir == NULL || (strcmp(dir, "upload") != 0 && strcmp(dir, "download") != 0))
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "direction must be \"upload\" or \"download\"");

    v = json_object_get(doc, "path");
    if (!json_is_string(v))
        return mod_fallback_problem(req, FB_ERR_BAD_PATH, "path must be a string");
    path = json_string_value(v);
    if (strlen(path) != json_string_length(v))
        return mod_fallback_problem(req, FB_ERR_BAD_PATH, "path contains a NUL character");
    e = fb_path_check(relpath, sizeof(relpath), path);
    if (e != FB_OK)
        return mod_fallback_problem(req, e, NULL);

    rc = mod_fallback_docroot_open(req);
    if (req->docroot_fd < 0)
        return rc;

    if (strcmp(dir, "download") == 0 && json_object_get(doc, "pack") != NULL)
        return mod_fallback_pack_down_create(req, relpath, doc);
    if (strcmp(dir, "download") == 0)
        return mod_fallback_sessions_create_download(req, relpath);
    if (json_object_get(doc, "pack") != NULL)
        return mod_fallback_pack_up_create(req, doc, relpath);

    v = json_object_get(doc, "size");
    if (!json_is_integer(v) || (size = json_integer_value(v)) < 0)
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "size must be a non-negative integer");

    if (!mod_fallback_overwrite_parse(&ow, json_object_get(doc, "overwrite")))
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, MOD_FALLBACK_OVERWRITE_BAD);

    v = json_object_get(doc, "sha256");
    if (v != NULL && !json_is_null(v)) {
        if (mod_fallback_sha256_hex_parse(sha, v) != FB_OK)
            return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "sha256 must be 64 hex digits");
        shap = sha;
    }

    /* What identifies the client's file (docs/HTTP-API.md, "Resuming"): progress is resumed only
     * for the same identity. 64 hex digits; all zero is the same as none. */
    v = json_object_get(doc, "source_id");
    if (v != NULL && !json_is_null(v)) {
        static const unsigned char none[FB_SHA256_LEN];

        if (mod_fallback_sha256_hex_parse(source, v) != FB_OK)
            return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "source_id must be 64 hex digits");
        if (memcmp(source, none, sizeof(source)) != 0)
            sourcep = source;
    }

    v = json_object_get(doc, "ask_digest");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_boolean(v))
            return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "ask_digest must be true or false");
        ask_digest = json_is_true(v);
    }

    mode = req->cfg->file_mode & 0777u;
    v = json_object_get(doc, "mode");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v) || !mod_fallback_mode_parse(&mode, json_string_value(v)))
            return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "mode must be an octal string such as \"0644\"");
    }

    rc = parse_source_mtime(req, doc, &mtime_ns, &has_mtime);
    if (rc != -1)
        return rc;
    if (mod_fallback_policy_needs_older(ow) && !has_mtime)
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST,
                                    "overwrite \"older\" and \"if_different,older\" need the file's mtime");

    return mod_fallback_upload_create(req, relpath, (uint64_t)size, ow, shap, ask_digest, mode, sourcep,
                                      has_mtime ? &mtime_ns : NULL, NULL);
}

/* 1 if the live upload INFO's partial file is still the one it wrote (partial_is_the_sessions);
 * 0 if it is gone or changed. Errors other than a missing file count as intact: only what is
 * known to be lost fails a session. */
static int upload_partial_intact(mod_fallback_req *req, const fb_slot_info *info)
{
    char partrel[FB_RELPATH_MAX + 32];
    int parent_fd = -1, fd, intact;
    struct stat sb;

    if (fb_path_partial_name(partrel, sizeof(partrel), info->relpath) != FB_OK ||
        mod_fallback_open_parent(&parent_fd, req, info->relpath) != FB_OK)
        return 1;
    fd = openat(parent_fd, mod_fallback_basename(partrel), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno != ENOENT;
    intact = fstat(fd, &sb) != 0 || partial_is_the_sessions(&sb, info);
    close(fd);
    return intact;
}

/* ACTIVE -> FAILED ("changed") for the session of generation GEN; 1 if this call did it. */
static int fail_changed(fb_slot *slot, uint32_t gen)
{
    if (atomic_load(&slot->generation) != gen || !fb_slot_transition(slot, FB_SLOT_ACTIVE, FB_SLOT_FAILED))
        return 0;
    atomic_store(&slot->error_code, (uint32_t)FB_ERR_CHANGED);
    return 1;
}

int mod_fallback_sessions_get(mod_fallback_req *req, const char *id)
{
    fb_slot_info *info = apr_palloc(req->r->pool, sizeof(*info));
    fb_slot *slot = NULL;
    uint32_t idx = 0, gen = 0;
    int rc;

    rc = mod_fallback_session_lookup(req, id, &idx, &slot, &gen, info);
    if (slot == NULL)
        return rc;
    wipe_info(info);
    if (info->direction == FB_DIR_UPLOAD && atomic_load(&slot->state) == FB_SLOT_ACTIVE &&
        !upload_partial_intact(req, info) && fail_changed(slot, gen)) {
        ap_log_rerror(
            APLOG_MARK, APLOG_INFO, 0, req->r,
            FBLOGNO(00241) "session %s: the partial file of '%s' was deleted, replaced or truncated on the "
                           "server: session failed, the upload starts over when created again",
            id, info->relpath);
        return mod_fallback_problem(
            req, FB_ERR_CHANGED,
            "the partial file on the server was deleted or changed: create the session again "
            "to start over");
    }
    return reply_session(req, HTTP_OK, idx, slot, 0, 1, 0);
}

/* Cancels an ACTIVE upload: the ACTIVE -> FAILED transition and the removal of its partial
 * file and checkpoint happen under the partial file's flock, the lock a create of the same path
 * takes before it decides to resume. So a create either sees the session still ACTIVE (and
 * joins it, to be cancelled with it) or finds no files left: a cancel can never remove the files
 * of a newer session, nor can a newer session resume the progress of a cancelled one.
 * Returns 1 if this request cancelled the session. */
static int cancel_upload(mod_fallback_req *req, fb_slot *slot, const fb_slot_info *info)
{
    char partrel[FB_RELPATH_MAX + 32], ckptrel[FB_RELPATH_MAX + 32];
    int parent_fd = -1, fd = -1, owned;

    if (fb_path_partial_name(partrel, sizeof(partrel), info->relpath) != FB_OK ||
        fb_path_checkpoint_name(ckptrel, sizeof(ckptrel), info->relpath) != FB_OK ||
        mod_fallback_open_parent(&parent_fd, req, info->relpath) != FB_OK ||
        lock_partial(&fd, parent_fd, mod_fallback_basename(partrel), 0) != FB_OK)
        /* No partial file left to protect: the transition alone cancels. */
        return fb_slot_transition(slot, FB_SLOT_ACTIVE, FB_SLOT_FAILED);
    owned = fb_slot_transition(slot, FB_SLOT_ACTIVE, FB_SLOT_FAILED);
    if (owned) {
        if (unlinkat(parent_fd, mod_fallback_basename(partrel), 0) != 0 && errno != ENOENT)
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, APR_FROM_OS_ERROR(errno), req->r,
                          FBLOGNO(00211) "cannot remove the partial file of '%s'", info->relpath);
        (void)fb_checkpoint_remove(parent_fd, mod_fallback_basename(ckptrel));
        if (info->flags & FB_SLOT_FLAG_PACK)
            mod_fallback_pack_up_remove(parent_fd, info->relpath);
    }
    close(fd);
    return owned;
}

int mod_fallback_sessions_delete(mod_fallback_req *req, const char *id)
{
    request_rec *r = req->r;
    fb_slot_info *info = apr_palloc(r->pool, sizeof(*info));
    fb_slot *slot = NULL;
    uint32_t idx = 0, gen = 0, st;
    int rc, owned = 0;

    rc = mod_fallback_session_lookup(req, id, &idx, &slot, &gen, info);
    if (slot == NULL)
        return rc;
    wipe_info(info);
    st = atomic_load(&slot->state);
    if (st == FB_SLOT_ACTIVE) {
        owned = info->direction == FB_DIR_UPLOAD ? cancel_upload(req, slot, info)
                                                 : fb_slot_transition(slot, FB_SLOT_ACTIVE, FB_SLOT_FAILED);
        st = atomic_load(&slot->state);
    }
    if (!owned && st != FB_SLOT_FAILED)
        return mod_fallback_problem(req, FB_ERR_SESSION_STATE,
                                    st == FB_SLOT_DONE ? "the session is already committed" : "the session is being committed");
    /* Generation-checked: never frees a slot reused for another session meanwhile. */
    (void)fb_slot_cancel(slot, gen);
    if (info->direction == FB_DIR_DOWNLOAD)
        mod_fallback_pack_down_forget(req, info->relpath);
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, FBLOGNO(00212) "session %s of '%s' (%s) cancelled", id, req->user,
                  info->relpath);
    r->status = HTTP_NO_CONTENT;
    if (!req->body_read)
        mod_fallback_body_unread(r);
    return OK;
}

static int reply_committed(mod_fallback_req *req, const char *id, const fb_slot_info *info, const unsigned char *sha)
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
static int reply_done(mod_fallback_req *req, const char *id, fb_slot *slot, uint32_t gen, const unsigned char *sha)
{
    fb_slot_info *info = apr_palloc(req->r->pool, sizeof(*info));

    fb_slot_info_read(info, slot);
    wipe_info(info);
    /* A finished slot may be taken by a new session at any moment (fb_table_claim): what was
     * read counts only if the slot is still this session's. */
    if (atomic_load(&slot->state) != FB_SLOT_DONE || atomic_load(&slot->generation) != gen)
        return mod_fallback_problem(req, FB_ERR_NOT_FOUND, "the session ended and its slot was reused");
    if (!(info->flags & FB_SLOT_FLAG_EXPECTED_SHA256) || !fb_mem_equal_ct(info->expected_sha256, sha, FB_SHA256_LEN))
        return mod_fallback_problem(req, FB_ERR_DIGEST_MISMATCH, "the file was committed with another digest");
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
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, req->r, FBLOGNO(00213) "session left FINALISING unexpectedly");
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
    if ((info->flags & FB_SLOT_FLAG_EXPECTED_SHA256) && !fb_mem_equal_ct(info->expected_sha256, sha, FB_SHA256_LEN))
        return mod_fallback_problem(req, FB_ERR_DIGEST_MISMATCH, "differs from the sha256 given when the session was created");
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
                           apr_psprintf(r->pool, "%" APR_UINT64_T_FMT " of %" APR_UINT64_T_FMT " chunks received",
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
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00214) "partial file of '%s' has the wrong size", info->relpath);
        rc = commit_fail(req, slot, FB_SLOT_FAILED, FB_ERR_IO, "the partial file has the wrong size");
        goto leave;
    }
    if (fsync(fd) != 0) {
        int err = errno;
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(err), r, FBLOGNO(00215) "fsync of '%s' failed", partrel);
        rc = commit_fail(req, slot, FB_SLOT_ACTIVE, fb_err_from_errno(err) == FB_ERR_DISK_FULL ? FB_ERR_DISK_FULL : FB_ERR_IO,
                         NULL);
        goto leave;
    }
    /* The running digest already covers most of the file (fb_digest.h); only the rest is read.
     * If it disagrees with the client, the file is hashed again from the start before the
     * mismatch is reported, so a damaged running state can never refuse a good upload. */
    e = fb_slot_digest_final(digest, slot, gen, fd, info->size);
    if (e != FB_OK || !fb_mem_equal_ct(digest, sha, FB_SHA256_LEN))
        e = fb_sha256_fd(digest, fd, info->size);
    if (e != FB_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00216) "hashing '%s' failed: %s", partrel, fb_err_message(e));
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
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(errno), r, FBLOGNO(00218) "fchmod of '%s' failed", partrel);
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
        }
        else {
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

    /* Remember the digest for idempotent repeats of this commit. Only this request writes
     * INFO while the slot is FINALISING; readers use the seqlock as always. */
    fb_slot_info_write_begin(slot);
    memcpy(slot->info.expected_sha256, digest, FB_SHA256_LEN);
    slot->info.flags |= FB_SLOT_FLAG_EXPECTED_SHA256;
    fb_slot_info_write_end(slot);
    if (!fb_slot_transition(slot, FB_SLOT_FINALISING, FB_SLOT_DONE))
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00221) "session %s left FINALISING unexpectedly", id);
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, FBLOGNO(00222) "session %s committed '%s' (%" APR_UINT64_T_FMT " bytes)",
                  id, info->relpath, (apr_uint64_t)info->size);
    rc = reply_committed(req, id, info, digest);

leave:
    mod_fallback_fd_close_now(r->pool, fd);
    return rc;
}
