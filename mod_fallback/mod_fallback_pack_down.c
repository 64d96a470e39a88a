/* mod_fallback_pack_down.c: download packs (docs/HTTP-API.md, "Download packs"): many small
 * files fetched as one download session instead of one session each.
 *
 * POST sessions {"direction":"download","path":ROOT,"pack":[{"path":ENTRY},...]} opens every
 * ROOT/ENTRY beneath the docroot (regular files only; any other entry gets its own error and the
 * others go on) and copies their bytes, in request order, into a staging file, computing each
 * file's SHA-256 and the pack's as it copies. The session is an ordinary download session of the
 * staging file: udpd serves it as any download (it opens the slot's relpath), and so does
 * GET sessions/{id}/data (mod_fallback_files.c) over HTTP(S).
 *
 * The staging files live in one hidden directory at the top of the user's docroot, PACK_DIR. Its
 * name is a hidden partial name (fb_path_is_partial_name), so listings leave it out and
 * fb_path_check refuses it as a path component: no files/ request and no session request can
 * name it; only a pack's own session serves it. It is also a name no upload can ever have as its
 * partial file: that would be the partial of a target named ".fbpack-down.fbpart", itself a
 * hidden name that fb_path_check refuses. A staging file is removed by DELETE of its session
 * (mod_fallback_pack_down_forget); those of clients killed before their DELETE are removed once
 * older than idle_timeout, when the next pack of that docroot is made (a bounded scan). */

#include "mod_fallback_private.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "apr_hash.h"
#include "apr_strings.h"

#include "fb_filesum.h"
#include "fb_path.h"
#include "fb_util.h"

#define PACK_DIR "..fbpack-down.fbpart.fbpart"
#define PACK_NAME_HEX 32             /* a staging file's name: 32 hex digits */
#define PACK_COPY_BLOCK (256 * 1024) /* bytes read and written at a time */
#define PACK_SWEEP_MAX 1024          /* directory entries looked at per sweep */
#define PACK_MAX_ENTRIES 10000u      /* entries of one pack request */
/* Bytes of one pack: files that would take it beyond are refused one by one (too_large), to be
 * fetched on their own. fbcp asks for 16 MiB at most. */
#define PACK_MAX_BYTES (256ull * 1024 * 1024)

/* Whether RELPATH (a slot's) names a staging file; its base name into *PBASE. */
static int staging_relpath(const char *relpath, const char **pbase)
{
    size_t n = sizeof(PACK_DIR) - 1;

    if (strncmp(relpath, PACK_DIR "/", n + 1) != 0)
        return 0;
    *pbase = relpath + n + 1;
    return strlen(*pbase) == PACK_NAME_HEX && strspn(*pbase, "0123456789abcdef") == PACK_NAME_HEX;
}

/* Opens the staging directory beneath the docroot (made first when MAKE). */
static fb_err staging_dir_open(int *pfd, mod_fallback_req *req, int make)
{
    fb_err e = fb_path_open_beneath(pfd, req->docroot_fd, PACK_DIR, O_RDONLY | O_DIRECTORY, 0);

    if (e == FB_ERR_NOT_FOUND && make) {
        int dfd = -1;

        /* mkdirat needs a real directory descriptor (the docroot's is O_PATH) */
        e = fb_path_open_beneath(&dfd, req->docroot_fd, "", O_RDONLY | O_DIRECTORY, 0);
        if (e != FB_OK)
            return e;
        if (mkdirat(dfd, PACK_DIR, 0700) != 0 && errno != EEXIST)
            e = fb_err_from_errno(errno);
        close(dfd);
        if (e == FB_OK)
            e = fb_path_open_beneath(pfd, req->docroot_fd, PACK_DIR, O_RDONLY | O_DIRECTORY, 0);
    }
    return e;
}

/* Whether a live session of this docroot serves the staging file RELPATH. */
static int staging_in_use(mod_fallback_req *req, const char *relpath)
{
    fb_slot_info *info = apr_palloc(req->r->pool, sizeof(*info));
    uint32_t n = fb_table_nslots(req->table);

    for (uint32_t i = 0; i < n; i++) {
        fb_slot *slot = fb_table_slot(req->table, i);
        uint32_t st = atomic_load(&slot->state);
        int same;

        if (st != FB_SLOT_ACTIVE && st != FB_SLOT_CLAIMED)
            continue;
        fb_slot_info_read(info, slot);
        OPENSSL_cleanse(info->key, sizeof(info->key));
        same = info->direction == FB_DIR_DOWNLOAD && strcmp(info->docroot, req->docroot) == 0 &&
               strcmp(info->relpath, relpath) == 0;
        if (same)
            return 1;
    }
    return 0;
}

/* mod_fallback_sweep_dir's visitor: a staging file older than idle_timeout that no live session
 * serves (a client killed before its DELETE) is removed. */
static int staging_visit(mod_fallback_req *req, int dir_fd, const char *name, uint64_t now, uint64_t max_age,
                         void *arg)
{
    const char *base = NULL;
    const char *rel = apr_pstrcat(req->r->pool, PACK_DIR "/", name, NULL);
    struct stat sb;

    (void)arg;
    if (!staging_relpath(rel, &base) || fstatat(dir_fd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISREG(sb.st_mode) || !mod_fallback_stale_or_gone(dir_fd, name, now, max_age) ||
        staging_in_use(req, rel))
        return 0;
    return unlinkat(dir_fd, name, 0) == 0;
}

/* Removes the stale staging files (staging_visit). Looks at PACK_SWEEP_MAX entries at most. */
static void staging_sweep(mod_fallback_req *req, int dir_fd)
{
    unsigned removed = mod_fallback_sweep_dir(req, dir_fd, PACK_SWEEP_MAX, staging_visit, NULL);

    if (removed > 0)
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, req->r,
                      FBLOGNO(00951) "removed %u download pack staging file(s) of '%s' older than %u s",
                      removed, req->user, (unsigned)req->cfg->idle_timeout);
}

void mod_fallback_pack_down_forget(mod_fallback_req *req, const char *relpath)
{
    const char *base = NULL;
    int dir_fd = -1;

    if (!staging_relpath(relpath, &base) || staging_dir_open(&dir_fd, req, 0) != FB_OK)
        return;
    if (unlinkat(dir_fd, base, 0) != 0 && errno != ENOENT)
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, APR_FROM_OS_ERROR(errno), req->r,
                      FBLOGNO(00952) "cannot remove the download pack staging file '%s'", relpath);
    close(dir_fd);
}

/* The pack being written: the staging file and the running digest of all it holds. */
typedef struct pack_writer {
    int fd;
    uint64_t size;
    EVP_MD_CTX *md;   /* the pack's digest */
    EVP_MD_CTX *save; /* the pack's digest before the current file, to take a failed file back */
    EVP_MD_CTX *file; /* the current file's digest */
    unsigned char *buf;
} pack_writer;

static void pack_writer_free(pack_writer *w)
{
    EVP_MD_CTX_free(w->md);
    EVP_MD_CTX_free(w->save);
    EVP_MD_CTX_free(w->file);
}

/* Appends the SIZE bytes of FD to the pack, its SHA-256 into SHA. FB_ERR_CHANGED: the file
 * became shorter while it was read; FB_ERR_IO: it could not be read (both: nothing of it stays in
 * the pack). FB_ERR_DISK_FULL or FB_ERR_LOCAL_IO (the staging file could not be written: the
 * caller gives up the pack). */
static fb_err pack_append(pack_writer *w, int fd, uint64_t size, unsigned char sha[FB_SHA256_LEN])
{
    uint64_t done = 0;
    unsigned int len = 0;
    fb_err e = FB_OK;

    if (EVP_MD_CTX_copy_ex(w->save, w->md) != 1 || EVP_DigestInit_ex(w->file, EVP_sha256(), NULL) != 1)
        return FB_ERR_NOMEM;
    while (e == FB_OK && done < size) {
        size_t want = size - done > PACK_COPY_BLOCK ? PACK_COPY_BLOCK : (size_t)(size - done);
        ssize_t n = pread(fd, w->buf, want, (off_t)done);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            e = n == 0 ? FB_ERR_CHANGED : FB_ERR_IO;
            break;
        }
        if (fb_pwrite_all(w->fd, w->buf, (size_t)n, w->size + done) != FB_OK) {
            e = errno == ENOSPC || errno == EDQUOT ? FB_ERR_DISK_FULL : FB_ERR_LOCAL_IO;
            break;
        }
        if (EVP_DigestUpdate(w->md, w->buf, (size_t)n) != 1 ||
            EVP_DigestUpdate(w->file, w->buf, (size_t)n) != 1)
            e = FB_ERR_NOMEM;
        done += (uint64_t)n;
    }
    if (e == FB_OK && (EVP_DigestFinal_ex(w->file, sha, &len) != 1 || len != FB_SHA256_LEN))
        e = FB_ERR_NOMEM;
    if (e == FB_OK) {
        w->size += size;
        return FB_OK;
    }
    /* the file is taken back out: the pack holds only whole files */
    if (EVP_MD_CTX_copy_ex(w->md, w->save) != 1 || ftruncate(w->fd, (off_t)w->size) != 0)
        return FB_ERR_LOCAL_IO;
    return e;
}

/* The per-entry error element of the answer. */
static json_t *entry_error(const char *path, fb_err e, const char *detail)
{
    json_t *o = json_pack("{s:s, s:s}", "path", path, "error", fb_err_name(e));

    if (o != NULL && detail != NULL)
        json_object_set_new(o, "detail", json_string(detail));
    return o;
}

/* Adds ENTRY (request element I) to the pack, or its error: one element of the answer. */
static json_t *pack_entry(mod_fallback_req *req, pack_writer *w, const char *root, json_t *entry, size_t i,
                          apr_hash_t *seen, fb_err *pfatal, int *pok)
{
    apr_pool_t *p = req->r->pool;
    char rel[FB_PATH_MAX + 1], joined[FB_PATH_MAX + 1];
    unsigned char sha[FB_SHA256_LEN];
    char hex[FB_SHA256_HEX_LEN + 1];
    json_t *v = json_object_get(entry, "path"), *o;
    const char *path;
    struct stat sb;
    int fd = -1;
    fb_err e;

    *pok = 0;
    if (!json_is_object(entry) || !json_is_string(v) ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        *pfatal = FB_ERR_BAD_REQUEST;
        return json_string(apr_psprintf(p, "pack[%zu] must be an object with a \"path\" string", i));
    }
    path = json_string_value(v);
    /* the entry on its own first: ".." or an absolute path is an escape, not just a bad path */
    e = fb_path_check(rel, sizeof(rel), path);
    if (e == FB_OK && rel[0] == '\0')
        e = FB_ERR_BAD_PATH;
    if (e == FB_OK) {
        const char *j = root[0] ? apr_pstrcat(p, root, "/", rel, NULL) : rel;

        e = strlen(j) < sizeof(joined) ? fb_path_check(joined, sizeof(joined), j) : FB_ERR_BAD_PATH;
    }
    if (e != FB_OK)
        return entry_error(path, e, NULL);
    if (apr_hash_get(seen, joined, APR_HASH_KEY_STRING) != NULL) {
        *pfatal = FB_ERR_BAD_REQUEST;
        return json_string(apr_psprintf(p, "the pack names '%s' twice", joined));
    }
    apr_hash_set(seen, apr_pstrdup(p, joined), APR_HASH_KEY_STRING, "");

    /* O_NONBLOCK: a FIFO must not hang the worker (it is refused below) */
    e = fb_path_open_beneath(&fd, req->docroot_fd, joined, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0);
    if (e != FB_OK)
        return entry_error(path, e == FB_ERR_PATH_ESCAPE || e == FB_ERR_PERMISSION ? e : FB_ERR_NOT_FOUND,
                           NULL);
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return entry_error(path, FB_ERR_NOT_FOUND, "not a regular file");
    }
    if ((uint64_t)sb.st_size > PACK_MAX_BYTES - w->size) {
        close(fd);
        return entry_error(path, FB_ERR_TOO_LARGE,
                           apr_psprintf(p, "a pack holds at most %llu bytes: fetch this file on its own",
                                        (unsigned long long)PACK_MAX_BYTES));
    }
    o = json_pack("{s:s, s:I, s:I}", "path", path, "offset", (json_int_t)w->size, "size",
                  (json_int_t)sb.st_size);
    e = pack_append(w, fd, (uint64_t)sb.st_size, sha);
    close(fd);
    if (e == FB_ERR_DISK_FULL || e == FB_ERR_LOCAL_IO || e == FB_ERR_NOMEM) {
        json_decref(o);
        *pfatal = e;
        return NULL;
    }
    if (e != FB_OK) {
        json_decref(o);
        return entry_error(path, e, e == FB_ERR_CHANGED ? "the file became shorter while it was read" : NULL);
    }
    fb_hex_encode(hex, sha, FB_SHA256_LEN);
    json_object_set_new(o, "sha256", json_string(hex));
    mod_fallback_json_set_mtime(o, &sb.st_mtim);
    json_object_set_new(o, "mode", json_string(apr_psprintf(p, "%04o", (unsigned)(sb.st_mode & 0777))));
    *pok = 1;
    return o;
}

int mod_fallback_pack_down_create(mod_fallback_req *req, const char *root, json_t *doc)
{
    request_rec *r = req->r;
    json_t *pack = json_object_get(doc, "pack"), *answer = NULL, *entry;
    apr_hash_t *seen = apr_hash_make(r->pool);
    unsigned char rnd[PACK_NAME_HEX / 2], sha[FB_SHA256_LEN];
    char name[PACK_NAME_HEX + 1], hex[FB_SHA256_HEX_LEN + 1];
    const char *relpath, *id;
    pack_writer w = {.fd = -1};
    unsigned int len = 0;
    unsigned nfiles = 0, nerrors = 0;
    int dir_fd = -1, rc;
    fb_err fatal = FB_OK;
    size_t i;

    if (!json_is_array(pack) || json_array_size(pack) == 0)
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST,
                                    "pack must be a non-empty array of {\"path\": ...}");
    if (json_array_size(pack) > PACK_MAX_ENTRIES)
        return mod_fallback_problem(req, FB_ERR_TOO_LARGE,
                                    apr_psprintf(r->pool, "a pack has at most %u entries", PACK_MAX_ENTRIES));
    if (fb_random_bytes(rnd, sizeof(rnd)) != FB_OK)
        return mod_fallback_problem(req, FB_ERR_INTERNAL, NULL);
    fb_hex_encode(name, rnd, sizeof(rnd));
    relpath = apr_pstrcat(r->pool, PACK_DIR "/", name, NULL);

    fatal = staging_dir_open(&dir_fd, req, 1);
    if (fatal != FB_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      FBLOGNO(00953) "cannot open the download pack directory of %s: %s", req->docroot,
                      fb_err_message(fatal));
        return mod_fallback_problem(req, fatal == FB_ERR_DISK_FULL ? fatal : FB_ERR_IO, NULL);
    }
    mod_fallback_fd_close_on_cleanup(r->pool, dir_fd);
    staging_sweep(req, dir_fd);
    w.fd = openat(dir_fd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (w.fd < 0) {
        fatal = fb_err_from_errno(errno);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(errno), r,
                      FBLOGNO(00954) "cannot create a download pack staging file in %s", req->docroot);
        return mod_fallback_problem(req, fatal == FB_ERR_DISK_FULL ? fatal : FB_ERR_IO, NULL);
    }
    mod_fallback_fd_close_on_cleanup(r->pool, w.fd);
    w.md = EVP_MD_CTX_new();
    w.save = EVP_MD_CTX_new();
    w.file = EVP_MD_CTX_new();
    w.buf = apr_palloc(r->pool, PACK_COPY_BLOCK);
    answer = json_array();
    if (w.md == NULL || w.save == NULL || w.file == NULL || answer == NULL ||
        EVP_DigestInit_ex(w.md, EVP_sha256(), NULL) != 1)
        fatal = FB_ERR_NOMEM;

    json_array_foreach(pack, i, entry)
    {
        int ok = 0;
        json_t *o;

        if (fatal != FB_OK)
            break;
        o = pack_entry(req, &w, root, entry, i, seen, &fatal, &ok);
        if (fatal == FB_ERR_BAD_REQUEST) { /* O is the detail */
            const char *detail = apr_pstrdup(r->pool, json_string_value(o));

            json_decref(o);
            rc = mod_fallback_problem(req, FB_ERR_BAD_REQUEST, detail);
            goto drop;
        }
        if (o == NULL && fatal == FB_OK)
            fatal = FB_ERR_NOMEM;
        if (o != NULL)
            json_array_append_new(answer, o);
        nfiles += ok;
        nerrors += !ok;
    }
    if (fatal == FB_OK && (EVP_DigestFinal_ex(w.md, sha, &len) != 1 || len != FB_SHA256_LEN))
        fatal = FB_ERR_NOMEM;
    if (fatal != FB_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00955) "cannot write a download pack for '%s': %s",
                      req->user, fb_err_message(fatal));
        rc = mod_fallback_problem(req, fatal == FB_ERR_DISK_FULL || fatal == FB_ERR_NOMEM ? fatal : FB_ERR_IO,
                                  NULL);
        goto drop;
    }
    fb_hex_encode(hex, sha, FB_SHA256_LEN);
    if (w.size == 0) {
        /* nothing to move: the answer says it all, no session */
        rc = mod_fallback_json_reply(req, HTTP_OK,
                                     json_pack("{s:s, s:s, s:I, s:s, s:o}", "direction", "download", "path",
                                               root, "size", (json_int_t)0, "sha256", hex, "pack", answer),
                                     0);
        answer = NULL;
        goto drop;
    }
    /* The pack's digest goes with the file as a committed file's does, so GET .../data answers
     * with its Repr-Digest (not fatal: the session document gives it anyway). */
    (void)fb_filesum_set(w.fd, sha);
    mod_fallback_fd_close_now(r->pool, w.fd);
    w.fd = -1;
    pack_writer_free(&w);

    req->answer_extra = json_pack("{s:s, s:s, s:o}", "path", root, "sha256", hex, "pack", answer);
    answer = NULL;
    rc = mod_fallback_sessions_create_download(req, relpath);
    json_decref(req->answer_extra);
    req->answer_extra = NULL;
    id = apr_table_get(r->notes, "fallback-session");
    if (id == NULL) {
        /* no session (a full table, ...): the answer was written, the staging file goes */
        (void)unlinkat(dir_fd, name, 0);
        return rc;
    }
    ap_log_rerror(
        APLOG_MARK, APLOG_INFO, 0, r,
        FBLOGNO(00950) "download pack session %s for '%s' (%s): %u files, %u errors, %" APR_UINT64_T_FMT
                       " bytes",
        id, req->user, root[0] ? root : "/", nfiles, nerrors, (apr_uint64_t)w.size);
    return rc;

drop:
    json_decref(answer);
    pack_writer_free(&w);
    (void)unlinkat(dir_fd, name, 0);
    return rc;
}
