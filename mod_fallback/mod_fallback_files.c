/* mod_fallback_files.c: GET/HEAD BASE/files/{path}, the download path over HTTP(S), and MKCOL
 * BASE/files/{path}, which makes a directory (the empty directories of a tree copy).
 *
 * A regular file goes out as one file bucket + EOS with ETag, Last-Modified and Accept-Ranges,
 * so Apache's own byterange filter serves Range (single and multiple) and If-Range, and
 * ap_meets_conditions handles If-None-Match/If-Modified-Since. A directory answers a JSON
 * listing. Everything is opened beneath the user's docroot (openat2 RESOLVE_BENEATH), and
 * partial/checkpoint files are never served or listed. */

#include "mod_fallback_private.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "apr_portable.h"
#include "apr_strings.h"
#include "http_core.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"

#include "fb_filesum.h"
#include "fb_path.h"
#include "fb_util.h"

#define MAX_LISTING_ENTRIES 100000

typedef struct listing_entry {
    const char *name;
    const char *type; /* "file", "dir", "other" */
    apr_off_t size;
    struct timespec mtime;
} listing_entry;

/* True if some component of RAW is a partial or checkpoint name. */
static int names_partial(apr_pool_t *p, const char *raw)
{
    char *copy = apr_pstrdup(p, raw);
    char *last = NULL;
    char *comp;

    for (comp = apr_strtok(copy, "/", &last); comp != NULL; comp = apr_strtok(NULL, "/", &last))
        if (fb_path_is_partial_name(comp))
            return 1;
    return 0;
}

/* Downloads are paced by the kernel (fb_sock_tcp_pace): a client that asks for a file in ranged
 * requests on one connection leaves it idle for a round trip between them, and the next answer
 * would otherwise leave as one window-sized burst. Not for HTTP/2 streams, whose connection
 * socket belongs to mod_http2's main connection (paced there or not, as a whole). */
static void pace_connection(request_rec *r)
{
    apr_socket_t *sock = r->connection->master == NULL ? ap_get_conn_socket(r->connection) : NULL;
    apr_os_sock_t fd;

    if (sock != NULL && apr_os_sock_get(&fd, sock) == APR_SUCCESS && fb_sock_tcp_pace(fd) != 0)
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, APR_FROM_OS_ERROR(errno), r, FBLOGNO(00509) "cannot turn on TCP pacing");
}

static int send_file(mod_fallback_req *req, int fd)
{
    request_rec *r = req->r;
    core_dir_config *d = ap_get_core_module_config(r->per_dir_config);
    apr_os_file_t ofd = fd;
    apr_file_t *f = NULL;
    apr_bucket_brigade *bb;
    apr_bucket *e;
    apr_int32_t flags = APR_FOPEN_READ;
    int rc;

    if (d != NULL && d->enable_sendfile == ENABLE_SENDFILE_ON)
        flags |= APR_FOPEN_SENDFILE_ENABLED;
    /* The descriptor is closed by the r->pool cleanup registered by the caller. r->pool lives
     * until the EOR bucket after the file bucket is destroyed, so even a file bucket set aside
     * for async write completion stays valid. apr_os_file_put marks the file NOCLEANUP, so a
     * set-aside copy never closes it a second time. */
    if (apr_os_file_put(&f, &ofd, flags, r->pool) != APR_SUCCESS ||
        apr_file_info_get(&r->finfo, APR_FINFO_NORM, f) != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00500) "cannot stat the file to send");
        return mod_fallback_problem(req, FB_ERR_IO, NULL);
    }
    ap_update_mtime(r, r->finfo.mtime);
    ap_set_last_modified(r);
    {
        struct stat sb; /* Last-Modified has whole seconds; a copy keeps the nanoseconds too */

        if (fstat(fd, &sb) == 0 && sb.st_mtim.tv_sec >= 0)
            apr_table_setn(r->headers_out, "X-Fallback-Mtime",
                           apr_psprintf(r->pool, "%" APR_INT64_T_FMT ".%09ld", (apr_int64_t)sb.st_mtim.tv_sec,
                                        (long)sb.st_mtim.tv_nsec));
    }
    ap_set_etag_fd(r, f);
    ap_set_accept_ranges(r);
    ap_set_content_length(r, r->finfo.size);
    {
        /* RFC 9530: the whole file's SHA-256, when kept at commit and still valid for the file
         * as it is (fb_filesum.h); on ranged answers too, as it describes the representation. */
        uint8_t sha[32];
        char *value = apr_palloc(r->pool, FB_REPR_DIGEST_LEN);

        if (fb_filesum_get(sha, fd)) {
            fb_repr_digest_format(value, sha);
            apr_table_setn(r->headers_out, "Repr-Digest", value);
        }
    }
    /* User-supplied content is never rendered by a browser on the API's origin. */
    ap_set_content_type(r, "application/octet-stream");
    apr_table_setn(r->headers_out, "X-Content-Type-Options", "nosniff");

    rc = ap_meets_conditions(r);
    if (rc != OK) {
        r->status = rc;
        return rc;
    }
    pace_connection(r);
    bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    e = apr_brigade_insert_file(bb, f, 0, r->finfo.size, r->pool);
#if APR_HAS_MMAP
    if (d != NULL && d->enable_mmap == ENABLE_MMAP_OFF)
        (void)apr_bucket_file_enable_mmap(e, 0);
#else
    (void)e;
#endif
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(r->connection->bucket_alloc));
    return ap_pass_brigade_fchk(r, bb, FBLOGNO(00501) "sending a file failed");
}

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const listing_entry *)a)->name, ((const listing_entry *)b)->name);
}

static int send_listing(mod_fallback_req *req, int fd, const char *relpath)
{
    request_rec *r = req->r;
    apr_array_header_t *entries = apr_array_make(r->pool, 64, sizeof(listing_entry));
    struct dirent *de;
    json_t *doc, *arr;
    DIR *dir;
    int dfd, i, truncated = 0;

    dfd = dup(fd);
    if (dfd < 0 || (dir = fdopendir(dfd)) == NULL) {
        if (dfd >= 0)
            close(dfd);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(errno), r, FBLOGNO(00502) "cannot list '%s'", relpath);
        return mod_fallback_problem(req, FB_ERR_IO, NULL);
    }
    while ((de = readdir(dir)) != NULL) {
        const char *name = de->d_name;
        listing_entry *le;
        struct stat sb;

        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || fb_path_is_partial_name(name))
            continue;
        if (entries->nelts >= MAX_LISTING_ENTRIES) {
            truncated = 1;
            break;
        }
        if (fstatat(fd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (S_ISLNK(sb.st_mode)) {
            /* Follow only what stays beneath the docroot; escaping or dangling links are left out. */
            const char *rel = relpath[0] ? apr_pstrcat(r->pool, relpath, "/", name, NULL) : name;
            int lfd = -1, ok;

            if (strlen(rel) > FB_PATH_MAX ||
                fb_path_open_beneath(&lfd, req->docroot_fd, rel, O_PATH | O_CLOEXEC, 0) != FB_OK)
                continue;
            ok = fstat(lfd, &sb) == 0;
            close(lfd);
            if (!ok)
                continue;
        }
        le = apr_array_push(entries);
        le->name = apr_pstrdup(r->pool, name);
        le->type = S_ISREG(sb.st_mode) ? "file" : S_ISDIR(sb.st_mode) ? "dir" : "other";
        le->size = sb.st_size;
        le->mtime = sb.st_mtim;
    }
    closedir(dir);

    qsort(entries->elts, (size_t)entries->nelts, sizeof(listing_entry), entry_cmp);
    arr = json_array();
    for (i = 0; arr != NULL && i < entries->nelts; i++) {
        const listing_entry *le = &APR_ARRAY_IDX(entries, i, listing_entry);
        json_t *name = json_string(le->name); /* NULL for names that are not UTF-8: left out */
        json_t *item;

        if (name == NULL)
            continue;
        item = json_pack("{s:o, s:s}", "name", name, "type", le->type);
        if (item == NULL)
            continue;
        if (strcmp(le->type, "file") == 0)
            json_object_set_new(item, "size", json_integer((json_int_t)le->size));
        mod_fallback_json_set_mtime(item, &le->mtime);
        json_array_append_new(arr, item);
    }
    doc = arr ? json_pack("{s:s, s:o}", "path", relpath, "entries", arr) : NULL;
    if (doc != NULL && truncated)
        json_object_set_new(doc, "truncated", json_true());
    return mod_fallback_json_reply(req, HTTP_OK, doc, 0);
}

int mod_fallback_files_get(mod_fallback_req *req, const char *raw)
{
    request_rec *r = req->r;
    char relpath[FB_PATH_MAX + 1];
    struct stat sb;
    int fd = -1, rc;
    fb_err e;

    e = fb_path_check(relpath, sizeof(relpath), raw);
    if (e != FB_OK) {
        /* Partial and checkpoint files do not exist as far as clients can tell. */
        if (e == FB_ERR_BAD_PATH && names_partial(r->pool, raw))
            return mod_fallback_problem(req, FB_ERR_NOT_FOUND, NULL);
        return mod_fallback_problem(req, e, NULL);
    }
    rc = mod_fallback_docroot_open(req);
    if (req->docroot_fd < 0)
        return rc;
    /* O_NONBLOCK: opening a FIFO must not hang the worker; it is refused below anyway. */
    e = fb_path_open_beneath(&fd, req->docroot_fd, relpath[0] ? relpath : ".",
                             O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0);
    if (e != FB_OK) {
        if (e != FB_ERR_PATH_ESCAPE && e != FB_ERR_PERMISSION)
            e = FB_ERR_NOT_FOUND;
        return mod_fallback_problem(req, e, NULL);
    }
    mod_fallback_fd_close_on_cleanup(r->pool, fd);
    if (fstat(fd, &sb) != 0)
        return mod_fallback_problem(req, FB_ERR_IO, NULL);
    if (S_ISREG(sb.st_mode)) {
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        return send_file(req, fd);
    }
    if (S_ISDIR(sb.st_mode))
        return send_listing(req, fd, relpath);
    return mod_fallback_problem(req, FB_ERR_NOT_FOUND, "not a regular file or directory");
}

/* A download session's file over HTTP(S), for a client that cannot name it with files/ (a
 * download pack's staging file has a hidden name): the same answer as files/ gives, Range and
 * all, while the session is active and only for its user (another user's session is not found).
 * The file must still be the one the session was created for (inode, size, modification time). */
int mod_fallback_files_session_data(mod_fallback_req *req, const char *id)
{
    request_rec *r = req->r;
    fb_slot_info *info = apr_palloc(r->pool, sizeof(*info));
    fb_slot *slot = NULL;
    uint32_t idx = 0, gen = 0;
    struct stat sb;
    int fd = -1, rc, fl;

    rc = mod_fallback_session_lookup(req, id, &idx, &slot, &gen, info);
    if (slot == NULL)
        return rc;
    OPENSSL_cleanse(info->key, sizeof(info->key));
    if (info->direction != FB_DIR_DOWNLOAD) {
        apr_table_setn(r->headers_out, "Allow", "PUT");
        return mod_fallback_problem(req, FB_ERR_METHOD, "an upload session's data is sent with PUT");
    }
    if (atomic_load(&slot->state) != FB_SLOT_ACTIVE || atomic_load(&slot->generation) != gen)
        return mod_fallback_session_ended(req, slot, gen);
    if (fb_path_open_beneath(&fd, req->docroot_fd, info->relpath,
                             O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0) != FB_OK)
        return mod_fallback_problem(req, FB_ERR_CHANGED, "the session's file is gone");
    mod_fallback_fd_close_on_cleanup(r->pool, fd);
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_dev != info->file_dev ||
        (uint64_t)sb.st_ino != info->file_ino || (uint64_t)sb.st_size != info->size ||
        fb_timespec_ns(&sb.st_mtim) != info->file_mtime_ns)
        return mod_fallback_problem(req, FB_ERR_CHANGED, "the file changed since the session was created");
    atomic_store(&slot->last_activity_ns, fb_time_now_ns());
    fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return send_file(req, fd);
}

/* Opens RELPATH beneath the docroot as a directory. *PNOTDIR is set when something that is not
 * a directory (a file, a symlink to one, a dangling symlink) stands at RELPATH or above it. */
static fb_err open_dir(int *pfd, int *pnotdir, mod_fallback_req *req, const char *relpath)
{
    fb_err e = fb_path_open_beneath(pfd, req->docroot_fd, relpath[0] ? relpath : ".",
                                    O_RDONLY | O_DIRECTORY | O_NONBLOCK | O_CLOEXEC, 0);

    *pnotdir = e != FB_OK && errno == ENOTDIR;
    return e;
}

/* Creates RELPATH's last component (its parents exist by now). Losing a race to another
 * creator is fine: the caller opens whatever is there. */
static fb_err make_leaf(mod_fallback_req *req, const char *relpath, int *pcreated)
{
    int parent_fd = -1;
    fb_err e = mod_fallback_open_parent(&parent_fd, req, relpath);

    if (e != FB_OK)
        return e;
    if (mkdirat(parent_fd, mod_fallback_basename(relpath), MOD_FALLBACK_DIR_MODE) == 0)
        *pcreated = 1;
    else if (errno != EEXIST)
        e = fb_err_from_errno(errno);
    mod_fallback_fd_close_now(req->r->pool, parent_fd);
    return e;
}

int mod_fallback_files_mkcol(mod_fallback_req *req, const char *raw)
{
    request_rec *r = req->r;
    const char *cl = apr_table_get(r->headers_in, "Content-Length");
    const char *hdr = apr_table_get(r->headers_in, "X-Fallback-Mtime");
    char relpath[FB_PATH_MAX + 1];
    uint64_t mtime_ns = 0;
    int fd = -1, notdir = 0, created = 0, rc;
    struct stat sb;
    json_t *doc;
    fb_err e;

    /* RFC 4918 9.3: a body MKCOL does not understand is refused (here: any body). */
    if (apr_table_get(r->headers_in, "Transfer-Encoding") != NULL || (cl != NULL && strcmp(cl, "0") != 0))
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "MKCOL takes no request body");
    if (hdr != NULL && fb_mtime_parse(&mtime_ns, hdr) != FB_OK)
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST,
                                    "X-Fallback-Mtime must be <seconds>[.<fraction>], 0 to 9999999999 s");
    e = fb_path_check(relpath, sizeof(relpath), raw);
    if (e != FB_OK)
        return mod_fallback_problem(req, e, NULL);
    rc = mod_fallback_docroot_open(req);
    if (req->docroot_fd < 0)
        return rc;

    e = open_dir(&fd, &notdir, req, relpath);
    if (e == FB_ERR_NOT_FOUND && !notdir) {
        e = fb_path_mkdirs_beneath(req->docroot_fd, relpath);
        if (e == FB_ERR_BAD_PATH) /* a parent is not a directory */
            return mod_fallback_problem_ext(req, FB_ERR_EXISTS, "a parent of the path is not a directory",
                                            json_pack("{s:s}", "target", "file"));
        if (e == FB_OK)
            e = make_leaf(req, relpath, &created);
        if (e == FB_OK)
            e = open_dir(&fd, &notdir, req, relpath);
    }
    if (e != FB_OK) {
        if (notdir || e == FB_ERR_NOT_FOUND) /* NOT_FOUND here: a dangling symlink is in the way */
            return mod_fallback_problem_ext(req, FB_ERR_EXISTS, "something that is not a directory is there",
                                            json_pack("{s:s}", "target", "file"));
        if (e != FB_ERR_PATH_ESCAPE && e != FB_ERR_PERMISSION && e != FB_ERR_DISK_FULL)
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00540) "cannot make the directory '%s': %s",
                          relpath, fb_err_message(e));
        return mod_fallback_problem(req, e, NULL);
    }
    mod_fallback_fd_close_on_cleanup(r->pool, fd);
    /* The docroot's own times are the admin's: a path of "" changes nothing. */
    if (hdr != NULL && relpath[0] != '\0' && mod_fallback_fd_set_mtime(fd, &mtime_ns) != 0) {
        int err = errno;

        ap_log_rerror(APLOG_MARK, APLOG_INFO, APR_FROM_OS_ERROR(err), r,
                      FBLOGNO(00541) "cannot set the times of the directory '%s'", relpath);
        return mod_fallback_problem(req, err == EPERM || err == EACCES ? FB_ERR_PERMISSION : FB_ERR_IO,
                                    "cannot set the directory's modification time");
    }
    if (fstat(fd, &sb) != 0)
        return mod_fallback_problem(req, FB_ERR_IO, NULL);
    doc = json_pack("{s:s, s:s, s:b}", "path", relpath, "type", "dir", "created", created);
    if (doc != NULL)
        mod_fallback_json_set_mtime(doc, &sb.st_mtim);
    if (created) {
        apr_table_setn(r->headers_out, "Location",
                       apr_pstrcat(r->pool, req->base, "/files/", ap_escape_uri(r->pool, relpath), NULL));
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, FBLOGNO(00542) "directory '%s' made for '%s'", relpath,
                      req->user);
    }
    return mod_fallback_json_reply(req, created ? HTTP_CREATED : HTTP_OK, doc, 0);
}
