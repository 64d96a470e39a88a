/* mod_fallback_sessions.c: the session control routes of docs/HTTP-API.md: POST sessions (the
 * request read and checked, then handed to mod_fallback_create.c), GET and DELETE sessions/{id},
 * and the session documents they answer with. The commit is mod_fallback_commit.c. */

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

void wipe_info(fb_slot_info *info)
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
    if (strcmp(check, id) != 0 || strcmp(info->user, req->user) != 0 ||
        strcmp(info->docroot, req->docroot) != 0) {
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
    doc = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:b, s:s}", "id", id, "direction",
                    direction_name(info->direction), "path", info->relpath, "size", (json_int_t)info->size,
                    "chunk_size", (json_int_t)info->chunk_size, "state", mod_fallback_state_name(state),
                    "resumed", (info->flags & FB_SLOT_FLAG_RESUMED) != 0, "location",
                    apr_pstrcat(req->r->pool, req->base, "/sessions/", id, NULL));
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
        json_array_append_new(
            arr, json_pack("[I, I]", (json_int_t)ranges[i].offset, (json_int_t)ranges[i].length));
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
int reply_session(mod_fallback_req *req, int status, uint32_t idx, fb_slot *slot, int with_key,
                  int with_stats, int resumed)
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
    } else {
        int fd = -1;
        const char *etag = NULL;
        struct stat sb;

        unsigned char sha[FB_SHA256_LEN];
        int have_sha = 0;

        if (fb_path_open_beneath(&fd, req->docroot_fd, info->relpath, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0) ==
            FB_OK) {
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
            return mod_fallback_problem(req, FB_ERR_BAD_REQUEST,
                                        "mode must be an octal string such as \"0644\"");
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
                                    st == FB_SLOT_DONE ? "the session is already committed"
                                                       : "the session is being committed");
    /* Generation-checked: never frees a slot reused for another session meanwhile. */
    (void)fb_slot_cancel(slot, gen);
    if (info->direction == FB_DIR_DOWNLOAD)
        mod_fallback_pack_down_forget(req, info->relpath);
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, FBLOGNO(00212) "session %s of '%s' (%s) cancelled", id,
                  req->user, info->relpath);
    r->status = HTTP_NO_CONTENT;
    if (!req->body_read)
        mod_fallback_body_unread(r);
    return OK;
}
