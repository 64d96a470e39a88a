/* mod_fallback_pack_up.c: upload packs (docs/HTTP-API.md, "Upload packs"): up to 10,000 small
 * files as ONE upload session, so a tree of small files costs one create, one stream of data and
 * one commit instead of three round trips per file.
 *
 * The pack is an ordinary upload (mod_fallback_upload_create) of a hidden name in the pack's root
 * directory, ".fbpack-<32 hex>", whose data is the files' bytes concatenated and whose source_id
 * is the SHA-256 of the pack's manifest: the canonical list of the files to send (path, size,
 * sha256, mtime, mode) and the overwrite policy. The same pack asked again therefore finds the
 * same live session or checkpoint and resumes, over either transport, and every rule of a single
 * upload (supersede, checkpoints, disk-space check, digest at commit) applies unchanged. The
 * manifest is kept in a hidden sidecar beside the partial file; the commit reads it back (checked
 * against the source_id) and lands each file as one file's commit would: copied into a hidden
 * temporary beside its target while its own SHA-256 is computed, mode, times and digest set,
 * fsync, the policy checked again, rename. Then each touched directory is synced once. */

#include "mod_fallback_private.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "apr_hash.h"
#include "apr_strings.h"
#include "http_protocol.h"

#include "fb_checkpoint.h"
#include "fb_filesum.h"
#include "fb_path.h"
#include "fb_util.h"

#define PACK_MAX_ENTRIES 10000
#define PACK_MANIFEST_VERSION 1
/* A manifest of 10,000 entries with paths of 1 KiB is about 11 MB. */
#define PACK_MANIFEST_MAX (16u << 20)
#define PACK_COPY_BUF (1u << 20)
#define PACK_SWEEP_MAX 4096 /* directory entries looked at per sweep of a root */
/* Bytes of a file's name kept in its unpack temporary's name (NAME_MAX is 255). */
#define PACK_TMP_NAME_KEEP 200

struct mod_fallback_pack_up {
    const char *relpath;  /* the pack's hidden name, root/.fbpack-<hex> */
    const char *manifest; /* canonical text (its SHA-256 is the source_id) */
    size_t manifest_len;
};

typedef struct pack_entry {
    const char *path;   /* as in the request: relative to the root */
    const char *joined; /* root/path, checked */
    uint64_t size;
    unsigned char sha[FB_SHA256_LEN];
    int has_mtime;
    uint64_t mtime_ns;
    unsigned mode;
    uint64_t offset; /* where its bytes start in the pack */
    /* commit */
    const char *parent, *base, *tmpbase; /* tmpbase: the temporary made for it, NULL: none */
    json_t *result;
} pack_entry;

const char *mod_fallback_pack_root(apr_pool_t *p, const char *relpath)
{
    const char *slash = strrchr(relpath, '/');

    return slash != NULL ? apr_pstrmemdup(p, relpath, (apr_size_t)(slash - relpath)) : "";
}

static const char *join_root(apr_pool_t *p, const char *root, const char *path)
{
    return root[0] != '\0' ? apr_pstrcat(p, root, "/", path, NULL) : apr_pstrdup(p, path);
}

/* ---- the request ------------------------------------------------------------------------------- */

static int bad_entry(mod_fallback_req *req, fb_err code, size_t i, const char *path, const char *what)
{
    return mod_fallback_problem(
        req, code,
        path != NULL ? apr_psprintf(req->r->pool, "pack[%" APR_SIZE_T_FMT "] (\"%s\"): %s", i, path, what)
                     : apr_psprintf(req->r->pool, "pack[%" APR_SIZE_T_FMT "]: %s", i, what));
}

/* Parses entry I of the request into EN; -1 when fine, else the handler result of a 4xx. */
static int parse_entry(mod_fallback_req *req, pack_entry *en, json_t *obj, size_t i, const char *root,
                       fb_overwrite ow, apr_hash_t *seen)
{
    apr_pool_t *p = req->r->pool;
    char checked[FB_PATH_MAX + 1];
    json_t *v;
    json_int_t size;
    const char *bad;
    fb_err e;

    if (!json_is_object(obj))
        return bad_entry(req, FB_ERR_BAD_REQUEST, i, NULL,
                         "each entry must be an object {path, size, sha256}");
    v = json_object_get(obj, "path");
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
        return bad_entry(req, FB_ERR_BAD_PATH, i, NULL, "path must be a string without NUL characters");
    en->path = json_string_value(v);
    e = fb_path_check(checked, sizeof(checked), en->path);
    if (e == FB_OK && (checked[0] == '\0' || strcmp(checked, en->path) != 0))
        e = FB_ERR_BAD_PATH; /* "" or a trailing "/": a directory, not a file */
    if (e == FB_OK) {
        en->joined = join_root(p, root, en->path);
        e = fb_path_check(checked, sizeof(checked), en->joined);
    }
    if (e != FB_OK)
        return bad_entry(req, e, i, en->path,
                         e == FB_ERR_PATH_ESCAPE
                             ? "the path escapes the pack's root"
                             : "not a valid file path (see fb_path_check), or too long with the root");
    if (apr_hash_get(seen, en->joined, APR_HASH_KEY_STRING) != NULL)
        return bad_entry(req, FB_ERR_BAD_REQUEST, i, en->path, "this path is in the pack twice");
    apr_hash_set(seen, en->joined, APR_HASH_KEY_STRING, en);
    v = json_object_get(obj, "size");
    if (!json_is_integer(v) || (size = json_integer_value(v)) < 0)
        return bad_entry(req, FB_ERR_BAD_REQUEST, i, en->path, "size must be a non-negative integer");
    en->size = (uint64_t)size;
    if (mod_fallback_sha256_hex_parse(en->sha, json_object_get(obj, "sha256")) != FB_OK)
        return bad_entry(req, FB_ERR_BAD_REQUEST, i, en->path, "sha256 (64 hex digits) is required");
    en->mode = req->cfg->file_mode & 0777u;
    v = json_object_get(obj, "mode");
    if (v != NULL && !json_is_null(v) &&
        (!json_is_string(v) || !mod_fallback_mode_parse(&en->mode, json_string_value(v))))
        return bad_entry(req, FB_ERR_BAD_REQUEST, i, en->path,
                         "mode must be an octal string such as \"0644\"");
    bad = mod_fallback_mtime_parse(obj, &en->mtime_ns, &en->has_mtime);
    if (bad != NULL)
        return bad_entry(req, FB_ERR_BAD_REQUEST, i, en->path, bad);
    if (mod_fallback_policy_needs_older(ow) && !en->has_mtime)
        return bad_entry(req, FB_ERR_BAD_REQUEST, i, en->path,
                         "overwrite \"older\" and \"if_different,older\" need each file's mtime");
    return -1;
}

/* An O_RDONLY descriptor of one directory beneath the docroot, kept while the next file is in
 * the same directory (files of a tree come directory by directory). */
typedef struct dir_cache {
    const char *path;
    int fd;
    fb_err err;
} dir_cache;

static fb_err dir_open(dir_cache *dc, mod_fallback_req *req, const char *parent)
{
    if (dc->path != NULL && strcmp(dc->path, parent) == 0)
        return dc->err;
    if (dc->fd >= 0)
        close(dc->fd);
    dc->path = parent;
    dc->err = fb_path_open_beneath(&dc->fd, req->docroot_fd, parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    /* ENOTDIR maps to not_found: here it means a file where a directory should be. */
    if (dc->err == FB_ERR_NOT_FOUND && errno == ENOTDIR)
        dc->err = FB_ERR_BAD_PATH;
    return dc->err;
}

static void dir_close(dir_cache *dc)
{
    if (dc->fd >= 0)
        close(dc->fd);
    dc->fd = -1;
    dc->path = NULL;
}

/* The decision for one entry at create: 1 to send, else 0 with EN->result set. */
static int decide_entry(mod_fallback_req *req, pack_entry *en, dir_cache *dc, fb_overwrite ow)
{
    const char *reason = NULL, *detail = NULL, *target = NULL;
    fb_err e = FB_OK;
    int rc;

    if (mod_fallback_split_parent(&en->parent, &en->base, req->r->pool, en->joined) != FB_OK) {
        e = FB_ERR_BAD_PATH;
        goto refused;
    }
    if (req->cfg->max_file_size != 0 && en->size > req->cfg->max_file_size) {
        e = FB_ERR_TOO_LARGE;
        detail = apr_psprintf(req->r->pool, "files may be at most %" APR_UINT64_T_FMT " bytes",
                              (apr_uint64_t)req->cfg->max_file_size);
        goto refused;
    }
    e = dir_open(dc, req, en->parent);
    if (e == FB_ERR_NOT_FOUND)
        return 1; /* no directory yet, so no target: made at commit */
    if (e != FB_OK) {
        detail = e == FB_ERR_BAD_PATH ? "a parent of the file is not a directory" : NULL;
        goto refused;
    }
    rc = mod_fallback_target_decide(req->r, dc->fd, en->base, en->size, ow, en->sha, 0,
                                    en->has_mtime ? &en->mtime_ns : NULL, &reason, &e, &detail, &target);
    if (rc == -1)
        return 1;
    if (rc == 1) {
        en->result = json_pack("{s:s, s:b, s:s}", "path", en->path, "send", 0, "reason", reason);
        return 0;
    }
refused:
    en->result = json_pack("{s:s, s:b, s:s, s:s}", "path", en->path, "send", 0, "error", fb_err_name(e),
                           "detail", detail != NULL ? detail : fb_err_message(e));
    if (target != NULL)
        json_object_set_new(en->result, "target", json_string(target));
    return 0;
}

/* The canonical manifest of the entries to send: [version, overwrite, [[path, size, sha256,
 * mtime_s|null, mtime_ns, mode], ...]] as compact JSON. */
static char *manifest_text(pack_entry **send, size_t nsend, fb_overwrite ow)
{
    json_t *list = json_array(), *doc;
    char hex[FB_SHA256_HEX_LEN + 1], *text;

    for (size_t i = 0; i < nsend; i++) {
        const pack_entry *en = send[i];

        fb_hex_encode(hex, en->sha, FB_SHA256_LEN);
        json_array_append_new(
            list,
            json_pack("[s, I, s, o, I, i]", en->path, (json_int_t)en->size, hex,
                      en->has_mtime ? json_integer((json_int_t)(en->mtime_ns / 1000000000ull)) : json_null(),
                      (json_int_t)(en->has_mtime ? en->mtime_ns % 1000000000ull : 0), (int)en->mode));
    }
    doc = json_pack("[i, i, o]", PACK_MANIFEST_VERSION, (int)ow, list);
    text = doc != NULL ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    return text;
}

static apr_status_t json_release(void *data)
{
    json_decref((json_t *)data);
    return APR_SUCCESS;
}

static void sha256_buf(unsigned char out[FB_SHA256_LEN], const void *data, size_t len)
{
    unsigned int n = 0;

    if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != FB_SHA256_LEN)
        memset(out, 0, FB_SHA256_LEN);
}

int mod_fallback_pack_up_create(mod_fallback_req *req, json_t *doc, const char *root)
{
    static const char *const single[] = {"size", "sha256", "source_id", "ask_digest",
                                         "mode", "mtime",  "mtime_ns"};
    request_rec *r = req->r;
    json_t *arr = json_object_get(doc, "pack"), *answers;
    fb_overwrite ow = FB_OVERWRITE_ALWAYS;
    struct mod_fallback_pack_up *pack;
    unsigned char digest[FB_SHA256_LEN];
    char hex[FB_SHA256_HEX_LEN + 1], *text;
    size_t n, i, nsend = 0, nskip = 0, nerr = 0;
    uint64_t total = 0;
    pack_entry *entries, **send;
    apr_hash_t *seen;
    dir_cache dc = {NULL, -1, FB_OK};
    int rc;

    for (i = 0; i < sizeof(single) / sizeof(single[0]); i++)
        if (json_object_get(doc, single[i]) != NULL)
            return mod_fallback_problem(
                req, FB_ERR_BAD_REQUEST,
                apr_psprintf(r->pool, "\"%s\" is not allowed beside \"pack\" (give it per file)", single[i]));
    if (!json_is_array(arr))
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "pack must be an array of {path, size, sha256}");
    n = json_array_size(arr);
    if (n == 0)
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "pack must hold at least one file");
    if (n > PACK_MAX_ENTRIES)
        return mod_fallback_problem(req, FB_ERR_TOO_LARGE,
                                    apr_psprintf(r->pool,
                                                 "a pack holds at most %d files, this one %" APR_SIZE_T_FMT,
                                                 PACK_MAX_ENTRIES, n));
    if (!mod_fallback_overwrite_parse(&ow, json_object_get(doc, "overwrite")))
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, MOD_FALLBACK_OVERWRITE_BAD);

    entries = apr_pcalloc(r->pool, n * sizeof(*entries));
    send = apr_palloc(r->pool, n * sizeof(*send));
    seen = apr_hash_make(r->pool);
    for (i = 0; i < n; i++) {
        rc = parse_entry(req, &entries[i], json_array_get(arr, i), i, root, ow, seen);
        if (rc != -1)
            return rc;
    }

    answers = json_array();
    for (i = 0; i < n; i++) {
        pack_entry *en = &entries[i];

        if (decide_entry(req, en, &dc, ow)) {
            en->offset = total;
            total += en->size;
            send[nsend++] = en;
            en->result =
                json_pack("{s:s, s:b, s:I}", "path", en->path, "send", 1, "offset", (json_int_t)en->offset);
        } else if (json_object_get(en->result, "error") != NULL) {
            nerr++;
        } else {
            nskip++;
        }
        json_array_append_new(answers, en->result);
    }
    dir_close(&dc);
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                  FBLOGNO(00900) "pack of %" APR_SIZE_T_FMT " files for '%s' (%s): %" APR_SIZE_T_FMT
                                 " to send (%" APR_UINT64_T_FMT " bytes), %" APR_SIZE_T_FMT
                                 " skipped, %" APR_SIZE_T_FMT " refused",
                  n, req->user, root, nsend, (apr_uint64_t)total, nskip, nerr);
    if (nsend == 0)
        return mod_fallback_json_reply(
            req, HTTP_OK,
            json_pack("{s:s, s:s, s:I, s:s, s:b, s:I, s:I, s:[], s:o}", "direction", "upload", "path", root,
                      "size", (json_int_t)0, "state", "done", "skipped", 1, "received_bytes", (json_int_t)0,
                      "missing_bytes", (json_int_t)0, "missing", "pack", answers),
            0);

    text = manifest_text(send, nsend, ow);
    if (text == NULL) {
        json_decref(answers);
        return mod_fallback_problem(req, FB_ERR_NOMEM, NULL);
    }
    pack = apr_pcalloc(r->pool, sizeof(*pack));
    pack->manifest = apr_pstrdup(r->pool, text);
    pack->manifest_len = strlen(text);
    free(text);
    sha256_buf(digest, pack->manifest, pack->manifest_len);
    fb_hex_encode(hex, digest, FB_SHA256_LEN);
    hex[32] = '\0';
    pack->relpath = join_root(r->pool, root, apr_pstrcat(r->pool, ".fbpack-", hex, NULL));
    if (strlen(pack->relpath) >= FB_RELPATH_MAX) {
        json_decref(answers);
        return mod_fallback_problem(req, FB_ERR_BAD_PATH, "the pack's root path is too long");
    }
    req->answer_extra = json_pack("{s:o}", "pack", answers);
    if (req->answer_extra != NULL)
        apr_pool_cleanup_register(r->pool, req->answer_extra, json_release, apr_pool_cleanup_null);
    return mod_fallback_upload_create(req, pack->relpath, total, ow, NULL, 0, req->cfg->file_mode & 0777u,
                                      digest, NULL, pack);
}

/* ---- the manifest sidecar ---------------------------------------------------------------------- */

static fb_err write_all(int fd, const char *data, size_t len)
{
    return fb_pwrite_all(fd, data, len, 0);
}

/* Writes the manifest beside the partial file unless it is there already: under the partial
 * file's lock, a temporary synced and renamed, so a crash leaves the old one or the new one. */
/* mod_fallback_sweep_dir's visitor for sweep_stale_packs: NAME is the manifest of another pack
 * ("..fbpack-<hex>.fbpart.manifest" of the pack ".fbpack-<hex>") that, like its partial file, has
 * been untouched for idle_timeout: the pack's files go. ARG: the name of this pack. */
static int stale_pack_visit(mod_fallback_req *req, int dir_fd, const char *name, uint64_t now,
                            uint64_t max_age, void *arg)
{
    static const char manifest_suffix[] = ".fbpart.manifest";
    static const char *const sidecars[] = {".fbpart", ".fbpart.ckpt", ".fbpart.ckpt.tmp", ".fbpart.manifest",
                                           ".fbpart.manifest.tmp"};
    size_t len = strlen(name), slen = sizeof(manifest_suffix) - 1;
    const char *base;
    char part[NAME_MAX + 1];

    if (strncmp(name, "..fbpack-", 9) != 0 || len <= slen + 1 ||
        strcmp(name + len - slen, manifest_suffix) != 0)
        return 0;
    base = apr_pstrndup(req->r->pool, name + 1, len - slen - 1);
    if (strcmp(base, (const char *)arg) == 0 || !fb_path_is_partial_name(base))
        return 0;
    snprintf(part, sizeof(part), ".%s.fbpart", base);
    if (!mod_fallback_stale_or_gone(dir_fd, name, now, max_age) ||
        !mod_fallback_stale_or_gone(dir_fd, part, now, max_age))
        return 0;
    for (size_t i = 0; i < sizeof(sidecars) / sizeof(sidecars[0]); i++) {
        snprintf(part, sizeof(part), ".%s%s", base, sidecars[i]);
        (void)unlinkat(dir_fd, part, 0);
    }
    return 1;
}

/* Removes the hidden files of other packs in the root PARENT_FD that nobody has touched for
 * idle_timeout: a pack is formed anew by each run of a client, so the pack of a client killed
 * mid-way is rarely asked for again and its partial file would stay for good. A pack whose
 * manifest (refreshed whenever the pack is asked for) and partial file are both that old has no
 * live session (idle_timeout ends it). KEEP_BASE: the name of this pack (".fbpack-<hex>"). Looks
 * at PACK_SWEEP_MAX entries at most. */
static void sweep_stale_packs(mod_fallback_req *req, int parent_fd, const char *keep_base)
{
    unsigned removed =
        mod_fallback_sweep_dir(req, parent_fd, PACK_SWEEP_MAX, stale_pack_visit, (void *)keep_base);

    if (removed > 0)
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, req->r,
                      FBLOGNO(00912) "removed %u upload pack(s) of '%s' untouched for %u s (partial files of "
                                     "interrupted runs)",
                      removed, req->user, (unsigned)req->cfg->idle_timeout);
}

fb_err mod_fallback_pack_up_prepare(mod_fallback_req *req, struct mod_fallback_pack_up *pack, int parent_fd)
{
    char name[FB_RELPATH_MAX + 48];
    const char *base, *tmp;
    struct stat sb;
    int fd;
    fb_err e;

    if (fb_path_manifest_name(name, sizeof(name), pack->relpath) != FB_OK)
        return FB_ERR_BAD_PATH;
    base = mod_fallback_basename(name);
    fd = openat(parent_fd, base, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
        int same = 0;

        if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && (uint64_t)sb.st_size == pack->manifest_len) {
            char *have = apr_palloc(req->r->pool, pack->manifest_len + 1);

            same = fb_pread_all(fd, have, pack->manifest_len, 0) == FB_OK &&
                   memcmp(have, pack->manifest, pack->manifest_len) == 0;
        }
        /* asked for again: it is not stale (sweep_stale_packs) */
        if (same)
            (void)futimens(fd, NULL);
        close(fd);
        if (same) {
            sweep_stale_packs(req, parent_fd, mod_fallback_basename(pack->relpath));
            return FB_OK;
        }
    }
    tmp = apr_pstrcat(req->r->pool, base, ".tmp", NULL);
    fd = openat(parent_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return fb_err_from_errno(errno);
    e = write_all(fd, pack->manifest, pack->manifest_len);
    if (e == FB_OK && fsync(fd) != 0)
        e = fb_err_from_errno(errno);
    close(fd);
    if (e == FB_OK && renameat(parent_fd, tmp, parent_fd, base) != 0)
        e = fb_err_from_errno(errno);
    if (e != FB_OK) {
        (void)unlinkat(parent_fd, tmp, 0);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, req->r,
                      FBLOGNO(00901) "cannot write the manifest of '%s': %s", pack->relpath,
                      fb_err_message(e));
    } else {
        sweep_stale_packs(req, parent_fd, mod_fallback_basename(pack->relpath));
    }
    return e;
}

void mod_fallback_pack_up_remove(int parent_fd, const char *relpath)
{
    char name[FB_RELPATH_MAX + 48];

    if (fb_path_manifest_name(name, sizeof(name), relpath) != FB_OK)
        return;
    (void)unlinkat(parent_fd, mod_fallback_basename(name), 0);
    (void)strcat(name, ".tmp");
    (void)unlinkat(parent_fd, mod_fallback_basename(name), 0);
}

/* Reads the manifest of the pack INFO back, checks it is the one its source_id names, and makes
 * its entries (*PENTRIES, *PN, offsets from the sizes). NULL when fine, else what is wrong. */
static const char *manifest_load(mod_fallback_req *req, const fb_slot_info *info, int parent_fd,
                                 fb_overwrite *pow, pack_entry **pentries, size_t *pn)
{
    apr_pool_t *p = req->r->pool;
    char name[FB_RELPATH_MAX + 48], checked[FB_PATH_MAX + 1];
    const char *root = mod_fallback_pack_root(p, info->relpath);
    unsigned char digest[FB_SHA256_LEN];
    json_t *doc, *list;
    struct stat sb;
    char *text;
    uint64_t total = 0;
    int fd, ow = 0, version = 0;
    size_t i, n;
    fb_err e;

    if (fb_path_manifest_name(name, sizeof(name), info->relpath) != FB_OK)
        return "no manifest name";
    fd = openat(parent_fd, mod_fallback_basename(name), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return "the manifest is gone";
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size <= 0 ||
        (uint64_t)sb.st_size > PACK_MANIFEST_MAX) {
        close(fd);
        return "the manifest is not a file of a sane size";
    }
    text = apr_palloc(p, (apr_size_t)sb.st_size);
    e = fb_pread_all(fd, text, (size_t)sb.st_size, 0);
    close(fd);
    if (e != FB_OK)
        return "the manifest cannot be read";
    sha256_buf(digest, text, (size_t)sb.st_size);
    if (memcmp(digest, info->source_id, FB_SHA256_LEN) != 0)
        return "the manifest is not the pack's (its digest differs)";
    doc = json_loadb(text, (size_t)sb.st_size, 0, NULL);
    if (doc == NULL)
        return "the manifest is not JSON";
    apr_pool_cleanup_register(p, doc, json_release, apr_pool_cleanup_null);
    if (json_unpack(doc, "[i, i, o]", &version, &ow, &list) != 0 || version != PACK_MANIFEST_VERSION ||
        !json_is_array(list) || ow < 0 || ow > (int)FB_OVERWRITE_IF_DIFFERENT_OLDER ||
        (n = json_array_size(list)) == 0 || n > PACK_MAX_ENTRIES)
        return "the manifest has an unknown form";
    *pow = (fb_overwrite)ow;
    *pentries = apr_pcalloc(p, n * sizeof(**pentries));
    for (i = 0; i < n; i++) {
        pack_entry *en = &(*pentries)[i];
        const char *path, *hex;
        json_int_t size, mode, nsec;
        json_t *secs;

        if (json_unpack(json_array_get(list, i), "[s, I, s, o, I, I]", &path, &size, &hex, &secs, &nsec,
                        &mode) != 0 ||
            size < 0 || strlen(hex) != FB_SHA256_HEX_LEN ||
            fb_hex_decode(en->sha, FB_SHA256_LEN, hex) != FB_OK || mode < 0 || mode > 0777 || nsec < 0 ||
            nsec > 999999999 || (!json_is_null(secs) && !json_is_integer(secs)))
            return "an entry of the manifest is malformed";
        en->path = path;
        en->joined = join_root(p, root, path);
        if (fb_path_check(checked, sizeof(checked), en->joined) != FB_OK ||
            mod_fallback_split_parent(&en->parent, &en->base, p, en->joined) != FB_OK)
            return "a path of the manifest is not valid";
        en->size = (uint64_t)size;
        en->mode = (unsigned)mode;
        en->has_mtime = json_is_integer(secs);
        if (en->has_mtime) {
            json_int_t s = json_integer_value(secs);
            if (s < 0 || (uint64_t)s > FB_MTIME_MAX_S)
                return "an entry of the manifest is malformed";
            en->mtime_ns = (uint64_t)s * 1000000000ull + (uint64_t)nsec;
        }
        en->offset = total;
        total += en->size;
    }
    if (total != info->size)
        return "the manifest's sizes do not add up to the pack's";
    *pn = n;
    return NULL;
}

/* ---- the commit -------------------------------------------------------------------------------- */

typedef struct land_ctx {
    mod_fallback_req *req;
    const char *id;
    int part_fd;
    fb_overwrite ow;
    unsigned char *buf;
    dir_cache dc;
    apr_hash_t *touched; /* directories where a file landed: synced once at the end */
    /* the error that stops the whole commit (disk full, the pack unreadable) */
    fb_err abort_err;
    const char *abort_detail;
} land_ctx;

static void entry_failed(pack_entry *en, fb_err e, const char *detail)
{
    en->result = json_pack("{s:s, s:s, s:s, s:s}", "path", en->path, "result", "failed", "error",
                           fb_err_name(e), "detail", detail != NULL ? detail : fb_err_message(e));
}

/* An error of the file being written: disk full stops the commit, anything else fails the file. */
static void write_failed(land_ctx *c, pack_entry *en, int err, const char *what)
{
    fb_err e = fb_err_from_errno(err);

    if (e == FB_ERR_DISK_FULL) {
        c->abort_err = e;
        c->abort_detail =
            "the disk filled up while the pack's files were written: nothing landed, commit again";
        return;
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(err), c->req->r,
                  FBLOGNO(00902) "pack %s: %s of '%s' failed", c->id, what, en->joined);
    entry_failed(en, e == FB_ERR_PERMISSION ? e : FB_ERR_IO,
                 apr_psprintf(c->req->r->pool, "%s failed", what));
}

/* Phase 1 for one file: its directories, a temporary beside its target holding its bytes
 * (its SHA-256 computed while they are copied and compared), mode and times, fsync.
 * On success EN->tmpbase names the temporary; else EN->result or C->abort_err says why. */
static void copy_entry(land_ctx *c, pack_entry *en, EVP_MD_CTX *md)
{
    mod_fallback_req *req = c->req;
    unsigned char rnd[8], got[FB_SHA256_LEN];
    char rhex[17];
    unsigned int mdlen = 0;
    uint64_t done = 0;
    int fd, err;
    fb_err e = dir_open(&c->dc, req, en->parent);

    if (e == FB_ERR_NOT_FOUND) {
        e = fb_path_mkdirs_beneath(req->docroot_fd, en->joined);
        if (e == FB_OK) {
            c->dc.path = NULL; /* open it again, now that it exists */
            e = dir_open(&c->dc, req, en->parent);
        }
    }
    if (e == FB_ERR_DISK_FULL) {
        c->abort_err = e;
        c->abort_detail =
            "the disk filled up while the pack's directories were made: nothing landed, commit again";
        return;
    }
    if (e != FB_OK) {
        entry_failed(en, e, e == FB_ERR_BAD_PATH ? "a parent of the file is not a directory" : NULL);
        return;
    }
    if (fb_random_bytes(rnd, sizeof(rnd)) != FB_OK) {
        entry_failed(en, FB_ERR_INTERNAL, NULL);
        return;
    }
    fb_hex_encode(rhex, rnd, sizeof(rnd));
    en->tmpbase = apr_psprintf(req->r->pool, ".%.*s.%s.fbpart.unpack", PACK_TMP_NAME_KEEP, en->base, rhex);
    fd = openat(c->dc.fd, en->tmpbase, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        err = errno;
        en->tmpbase = NULL;
        write_failed(c, en, err, "creating the file's temporary");
        return;
    }
    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        entry_failed(en, FB_ERR_INTERNAL, NULL);
        goto drop;
    }
    while (done < en->size) {
        size_t len = en->size - done < PACK_COPY_BUF ? (size_t)(en->size - done) : PACK_COPY_BUF;

        e = fb_pread_all(c->part_fd, c->buf, len, en->offset + done);
        if (e != FB_OK) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(errno), req->r,
                          FBLOGNO(00903) "pack %s: reading the pack failed", c->id);
            c->abort_err = FB_ERR_IO;
            c->abort_detail = "reading the pack's partial file failed";
            goto drop;
        }
        EVP_DigestUpdate(md, c->buf, len);
        e = fb_pwrite_all(fd, c->buf, len, done);
        if (e != FB_OK) {
            write_failed(c, en, errno, "writing the file");
            goto drop;
        }
        done += len;
    }
    if (EVP_DigestFinal_ex(md, got, &mdlen) != 1 || mdlen != FB_SHA256_LEN) {
        entry_failed(en, FB_ERR_INTERNAL, NULL);
        goto drop;
    }
    if (!fb_mem_equal_ct(got, en->sha, FB_SHA256_LEN)) {
        entry_failed(en, FB_ERR_DIGEST_MISMATCH, "the file's bytes in the pack do not match its sha256");
        goto drop;
    }
    /* Mode and times before the name becomes visible, as for one file; then its data is made
     * durable before the rename. */
    if (fchmod(fd, (mode_t)(en->mode & 0777u)) != 0) {
        write_failed(c, en, errno, "setting the file's mode");
        goto drop;
    }
    if (mod_fallback_fd_set_mtime(fd, en->has_mtime ? &en->mtime_ns : NULL) != 0) {
        write_failed(c, en, errno, "setting the file's times");
        goto drop;
    }
    if (fsync(fd) != 0) {
        write_failed(c, en, errno, "fsync of the file");
        goto drop;
    }
    close(fd);
    return;
drop:
    close(fd);
    (void)unlinkat(c->dc.fd, en->tmpbase, 0);
    en->tmpbase = NULL;
}

/* Phase 2 for one file copied: the policy again, its digest kept with it, the rename. */
static void place_entry(land_ctx *c, pack_entry *en)
{
    mod_fallback_req *req = c->req;
    fb_err e = dir_open(&c->dc, req, en->parent);
    int fd, err;

    if (e != FB_OK) {
        entry_failed(en, e, "the file's directory went away during the commit");
        return;
    }
    if (mod_fallback_target_now_newer(c->dc.fd, en->base, c->ow, en->has_mtime ? &en->mtime_ns : NULL)) {
        en->result = json_pack("{s:s, s:s, s:s}", "path", en->path, "result", "skipped", "reason", "newer");
        goto drop;
    }
    /* Last before the rename, as for one file (fb_filesum.h); not fatal without xattrs. */
    fd = openat(c->dc.fd, en->tmpbase, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
        if (fb_filesum_set(fd, en->sha) != FB_OK)
            ap_log_rerror(APLOG_MARK, APLOG_DEBUG, APR_FROM_OS_ERROR(errno), req->r,
                          FBLOGNO(00904) "cannot keep the digest of '%s' with it", en->joined);
        close(fd);
    }
    if (mod_fallback_rename_into_place(c->dc.fd, en->tmpbase, en->base, c->ow) != 0) {
        err = errno;
        if (err == EEXIST || err == EISDIR || err == ENOTEMPTY || err == ENOTDIR)
            entry_failed(en, FB_ERR_EXISTS,
                         err == EEXIST ? "the target appeared during the upload (overwrite never)"
                                       : "a directory is in the way");
        else {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(err), req->r,
                          FBLOGNO(00911) "pack %s: cannot rename '%s' into place", c->id, en->joined);
            entry_failed(en, fb_err_from_errno(err) == FB_ERR_DISK_FULL ? FB_ERR_DISK_FULL : FB_ERR_IO,
                         "the rename into place failed");
        }
        goto drop;
    }
    apr_hash_set(c->touched, en->parent, APR_HASH_KEY_STRING, en);
    en->result = json_pack("{s:s, s:s}", "path", en->path, "result", "committed");
    ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, req->r, FBLOGNO(00905) "pack %s: '%s' committed", c->id,
                  en->joined);
    return;
drop:
    (void)unlinkat(c->dc.fd, en->tmpbase, 0);
}

int mod_fallback_pack_up_land(mod_fallback_req *req, const char *id, fb_slot *slot, const fb_slot_info *info,
                              int part_fd, int parent_fd, const unsigned char *digest)
{
    request_rec *r = req->r;
    char partrel[FB_RELPATH_MAX + 32], ckptrel[FB_RELPATH_MAX + 32], hex[FB_SHA256_HEX_LEN + 1];
    size_t n = 0, i, ncommitted = 0, nskipped = 0, nfailed = 0;
    pack_entry *entries = NULL;
    apr_hash_index_t *hi;
    json_t *results;
    EVP_MD_CTX *md;
    const char *bad;
    land_ctx c;

    memset(&c, 0, sizeof(c));
    c.req = req;
    c.id = id;
    c.part_fd = part_fd;
    c.dc.fd = -1;
    c.touched = apr_hash_make(r->pool);
    bad = manifest_load(req, info, parent_fd, &c.ow, &entries, &n);
    if (bad != NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00906) "pack %s ('%s'): %s", id, info->relpath,
                      bad);
        return mod_fallback_commit_fail_ext(
            req, slot, FB_SLOT_ACTIVE, FB_ERR_CHANGED,
            apr_pstrcat(r->pool, "the pack's manifest on the server is gone or damaged (", bad,
                        "): create the pack's session again", NULL),
            NULL);
    }
    md = EVP_MD_CTX_new();
    if (md == NULL)
        return mod_fallback_commit_fail_ext(req, slot, FB_SLOT_ACTIVE, FB_ERR_NOMEM, NULL, NULL);
    c.buf = apr_palloc(r->pool, PACK_COPY_BUF);

    /* 1. Every file into its temporary: a full disk (or an unreadable pack) stops here with
     * nothing landed, the session back to ACTIVE, so a later commit does it all again. */
    for (i = 0; i < n && c.abort_err == FB_OK; i++)
        copy_entry(&c, &entries[i], md);
    EVP_MD_CTX_free(md);
    if (c.abort_err != FB_OK) {
        for (i = 0; i < n; i++)
            if (entries[i].tmpbase != NULL && dir_open(&c.dc, req, entries[i].parent) == FB_OK)
                (void)unlinkat(c.dc.fd, entries[i].tmpbase, 0);
        dir_close(&c.dc);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00907) "pack %s ('%s') not committed: %s", id,
                      info->relpath, fb_err_message(c.abort_err));
        return mod_fallback_commit_fail_ext(req, slot, FB_SLOT_ACTIVE, c.abort_err, c.abort_detail, NULL);
    }
    /* 2. Each into place, the policy checked again. */
    for (i = 0; i < n; i++)
        if (entries[i].tmpbase != NULL)
            place_entry(&c, &entries[i]);
    dir_close(&c.dc);
    /* 3. Each directory that got a file, once. */
    for (hi = apr_hash_first(r->pool, c.touched); hi != NULL; hi = apr_hash_next(hi)) {
        const void *key;
        int dfd = -1;

        apr_hash_this(hi, &key, NULL, NULL);
        if (fb_path_open_beneath(&dfd, req->docroot_fd, (const char *)key, O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                                 0) != FB_OK ||
            fsync(dfd) != 0)
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, APR_FROM_OS_ERROR(errno), r,
                          FBLOGNO(00908) "pack %s: fsync of the directory '%s' failed", id,
                          (const char *)key);
        if (dfd >= 0)
            close(dfd);
    }
    /* The pack is used up: its partial file, checkpoint and manifest go. */
    if (fb_path_partial_name(partrel, sizeof(partrel), info->relpath) == FB_OK)
        (void)unlinkat(parent_fd, mod_fallback_basename(partrel), 0);
    if (fb_path_checkpoint_name(ckptrel, sizeof(ckptrel), info->relpath) == FB_OK)
        (void)fb_checkpoint_remove(parent_fd, mod_fallback_basename(ckptrel));
    mod_fallback_pack_up_remove(parent_fd, info->relpath);

    results = json_array();
    for (i = 0; i < n; i++) {
        const char *res = json_string_value(json_object_get(entries[i].result, "result"));

        if (res != NULL && strcmp(res, "committed") == 0)
            ncommitted++;
        else if (res != NULL && strcmp(res, "skipped") == 0)
            nskipped++;
        else
            nfailed++;
        if (entries[i].result == NULL)
            entry_failed(&entries[i], FB_ERR_INTERNAL, NULL);
        json_array_append_new(results, entries[i].result);
    }
    mod_fallback_commit_done(req, slot, id, digest);
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                  FBLOGNO(00910) "pack %s committed in '%s': %" APR_SIZE_T_FMT
                                 " files landed, %" APR_SIZE_T_FMT " skipped, %" APR_SIZE_T_FMT
                                 " failed (%" APR_UINT64_T_FMT " bytes)",
                  id, mod_fallback_pack_root(r->pool, info->relpath), ncommitted, nskipped, nfailed,
                  (apr_uint64_t)info->size);
    fb_hex_encode(hex, digest, FB_SHA256_LEN);
    return mod_fallback_json_reply(
        req, HTTP_OK,
        json_pack("{s:s, s:s, s:s, s:I, s:s, s:o, s:I, s:I, s:I}", "id", id, "state", "done", "path",
                  mod_fallback_pack_root(r->pool, info->relpath), "size", (json_int_t)info->size, "sha256",
                  hex, "pack", results, "committed", (json_int_t)ncommitted, "skipped", (json_int_t)nskipped,
                  "failed", (json_int_t)nfailed),
        0);
}
