/* mod_fallback_util.c: what every route needs: problem+json and JSON answers, a bounded reader
 * for JSON request bodies, the docroot of the request's user (opened once per request) and
 * small path and digest helpers. */

#include "mod_fallback_private.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "apr_strings.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"

#include "fb_path.h"
#include "fb_util.h"

/* Request bodies we refuse without reading: a small one is drained so the connection stays
 * usable; a large or chunked one closes the connection instead of reading gigabytes. */
#define MOD_FALLBACK_DRAIN_MAX 65536

void mod_fallback_body_unread(request_rec *r)
{
    const char *cl = apr_table_get(r->headers_in, "Content-Length");
    const char *te = apr_table_get(r->headers_in, "Transfer-Encoding");
    apr_off_t len = 0;

    if (te != NULL || (cl != NULL && (apr_strtoff(&len, cl, NULL, 10) != APR_SUCCESS || len < 0 ||
                                      len > MOD_FALLBACK_DRAIN_MAX)))
        r->connection->keepalive = AP_CONN_CLOSE;
    /* Otherwise Apache discards the small rest itself when the request is finalised. */
}

static int write_json(request_rec *r, json_t *doc, int sensitive)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    size_t len;

    if (text == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00100) "cannot encode JSON answer");
        r->status = HTTP_INTERNAL_SERVER_ERROR;
        ap_set_content_type(r, "application/problem+json");
        ap_rputs("{\"type\":\"urn:fallback:error:internal_error\",\"title\":\"Internal error\","
                 "\"status\":500,\"code\":\"internal_error\"}\n",
                 r);
        return OK;
    }
    len = strlen(text);
    /* Answers may carry session keys or paths: never cache them anywhere. */
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    ap_set_content_length(r, (apr_off_t)len + 1);
    if (!r->header_only) {
        ap_rwrite(text, (int)len, r);
        ap_rputs("\n", r);
    }
    if (sensitive)
        OPENSSL_cleanse(text, len);
    free(text);
    return OK;
}

/* The problem document, with EXTRA's members (RFC 9457 extension members; may be NULL). */
static int problem_write(request_rec *r, fb_err code, const char *detail, const json_t *extra)
{
    int status = fb_err_http_status(code);
    json_t *doc;
    int rc;

    doc = json_pack("{s:s, s:s, s:i, s:s}", "type",
                    apr_pstrcat(r->pool, "urn:fallback:error:", fb_err_name(code), NULL), "title",
                    fb_err_message(code), "status", status, "code", fb_err_name(code));
    if (doc != NULL && extra != NULL)
        json_object_update_missing(doc, (json_t *)extra);
    if (doc != NULL && detail != NULL)
        json_object_set_new(doc, "detail", json_string(detail));
    r->status = status;
    ap_set_content_type(r, "application/problem+json");
    if (code == FB_ERR_TABLE_FULL)
        apr_table_setn(r->headers_out, "Retry-After", "2");
    if (doc == NULL) {
        ap_rprintf(r, "{\"code\":\"%s\",\"status\":%d}\n", fb_err_name(code), status);
        return OK;
    }
    rc = write_json(r, doc, 0);
    json_decref(doc);
    return rc;
}

int mod_fallback_problem_r(request_rec *r, fb_err code, const char *detail)
{
    return problem_write(r, code, detail, NULL);
}

int mod_fallback_problem(mod_fallback_req *req, fb_err code, const char *detail)
{
    return mod_fallback_problem_ext(req, code, detail, NULL);
}

int mod_fallback_problem_ext(mod_fallback_req *req, fb_err code, const char *detail, json_t *extra)
{
    request_rec *r = req->r;
    int rc;

    ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, FBLOGNO(00101) "answer %d %s%s%s", fb_err_http_status(code),
                  fb_err_name(code), detail ? ": " : "", detail ? detail : "");
    if (!req->body_read)
        mod_fallback_body_unread(r);
    rc = problem_write(r, code, detail, extra);
    json_decref(extra);
    return rc;
}

int mod_fallback_json_reply(mod_fallback_req *req, int status, json_t *doc, int sensitive)
{
    request_rec *r = req->r;
    int rc;

    if (doc == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, FBLOGNO(00102) "cannot build JSON answer");
        return mod_fallback_problem(req, FB_ERR_NOMEM, NULL);
    }
    if (!req->body_read)
        mod_fallback_body_unread(r);
    r->status = status;
    ap_set_content_type(r, "application/json");
    rc = write_json(r, doc, sensitive);
    json_decref(doc);
    return rc;
}

/* "application/json" with optional parameters. Requiring it means a cross-site browser form
 * cannot create or commit sessions with the user's cached credentials (it would need a CORS
 * preflight). */
static int is_json_type(const char *ct)
{
    size_t n = sizeof("application/json") - 1;

    if (ct == NULL || strncasecmp(ct, "application/json", n) != 0)
        return 0;
    return ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t';
}

static apr_status_t json_cleanup(void *data)
{
    json_decref((json_t *)data);
    return APR_SUCCESS;
}

int mod_fallback_read_json(mod_fallback_req *req, json_t **pdoc)
{
    request_rec *r = req->r;
    apr_size_t max = req->cfg->max_json_body;
    const char *cl = apr_table_get(r->headers_in, "Content-Length");
    apr_bucket_brigade *bb;
    char *buf;
    apr_size_t len = 0;
    json_error_t jerr;
    json_t *doc;
    int seen_eos = 0;
    int passes;

    *pdoc = NULL;
    if (max == 0 || max > 16 * 1024 * 1024)
        max = FB_DEFAULT_MAX_JSON_BODY;
    if (!is_json_type(apr_table_get(r->headers_in, "Content-Type")))
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "Content-Type must be application/json");
    if (cl != NULL) {
        apr_off_t n = 0;
        char *end = NULL;
        if (apr_strtoff(&n, cl, &end, 10) != APR_SUCCESS || n < 0 || (end != NULL && *end != '\0'))
            return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "bad Content-Length");
        if ((apr_uint64_t)n > max)
            return mod_fallback_problem(
                req, FB_ERR_TOO_LARGE,
                apr_psprintf(r->pool, "JSON body larger than %" APR_SIZE_T_FMT " bytes", max));
    }

    bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    buf = apr_palloc(r->pool, max + 1);
    /* Each pass yields at least one byte or EOS, so max + a few passes suffice. */
    for (passes = 0; !seen_eos; passes++) {
        apr_bucket *b;
        apr_status_t rv;

        if ((apr_size_t)passes > max + 16) {
            req->body_read = 1;
            r->connection->keepalive = AP_CONN_CLOSE;
            return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "request body does not end");
        }
        rv = ap_get_brigade(r->input_filters, bb, AP_MODE_READBYTES, APR_BLOCK_READ, HUGE_STRING_LEN);
        if (rv != APR_SUCCESS) {
            req->body_read = 1;
            r->connection->keepalive = AP_CONN_CLOSE;
            ap_log_rerror(APLOG_MARK, APLOG_INFO, rv, r, FBLOGNO(00103) "reading JSON body failed");
            if (rv == AP_FILTER_ERROR)
                return ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
            return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "cannot read the request body");
        }
        for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb); b = APR_BUCKET_NEXT(b)) {
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
                req->body_read = 1;
                r->connection->keepalive = AP_CONN_CLOSE;
                ap_log_rerror(APLOG_MARK, APLOG_INFO, rv, r, FBLOGNO(00104) "reading JSON body failed");
                return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "cannot read the request body");
            }
            if (n > max - len) {
                /* Chunked bodies have no Content-Length to refuse up front. */
                req->body_read = 1;
                r->connection->keepalive = AP_CONN_CLOSE;
                return mod_fallback_problem(
                    req, FB_ERR_TOO_LARGE,
                    apr_psprintf(r->pool, "JSON body larger than %" APR_SIZE_T_FMT " bytes", max));
            }
            memcpy(buf + len, data, n);
            len += n;
        }
        apr_brigade_cleanup(bb);
    }
    req->body_read = 1;
    buf[len] = '\0';

    doc = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL)
        return mod_fallback_problem(
            req, FB_ERR_BAD_REQUEST,
            apr_psprintf(r->pool, "invalid JSON: %s (offset %d)", jerr.text, jerr.position));
    if (!json_is_object(doc)) {
        json_decref(doc);
        return mod_fallback_problem(req, FB_ERR_BAD_REQUEST, "the JSON body must be an object");
    }
    /* Freed with the request even on early returns. */
    apr_pool_cleanup_register(r->pool, doc, json_cleanup, apr_pool_cleanup_null);
    *pdoc = doc;
    return OK;
}

static apr_status_t close_fd_cleanup(void *data)
{
    int fd = (int)(intptr_t)data;

    if (fd >= 0)
        close(fd);
    return APR_SUCCESS;
}

void mod_fallback_fd_close_on_cleanup(apr_pool_t *p, int fd)
{
    apr_pool_cleanup_register(p, (void *)(intptr_t)fd, close_fd_cleanup, apr_pool_cleanup_null);
}

void mod_fallback_fd_close_now(apr_pool_t *p, int fd)
{
    if (fd < 0)
        return;
    apr_pool_cleanup_kill(p, (void *)(intptr_t)fd, close_fd_cleanup);
    close(fd);
}

int mod_fallback_docroot_open(mod_fallback_req *req)
{
    request_rec *r = req->r;
    int fd;

    if (req->docroot_fd >= 0)
        return OK;
    /* <user>, else the first <group> the user belongs to in the system's group database (NSS),
     * else <default>: the same answer on every request, so a session keeps its docroot. udpd
     * takes the docroot from the session's slot and never resolves it itself. */
    req->docroot = fb_config_docroot_for_user(req->cfg, req->user);
    if (req->docroot == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, FBLOGNO(00105) "no docroot for user '%s' in %s",
                      req->user, req->state->config_file);
        return mod_fallback_problem(req, FB_ERR_PERMISSION, "no docroot is configured for this user");
    }
    fd = open(req->docroot, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(errno), r,
                      FBLOGNO(00106) "cannot open docroot %s of user '%s'", req->docroot, req->user);
        return mod_fallback_problem(req, FB_ERR_CONFIG, "the docroot is not accessible");
    }
    mod_fallback_fd_close_on_cleanup(r->pool, fd);
    req->docroot_fd = fd;
    return OK;
}

fb_err mod_fallback_split_parent(const char **pparent, const char **pbase, apr_pool_t *p, const char *relpath)
{
    const char *slash = strrchr(relpath, '/');

    if (relpath[0] == '\0')
        return FB_ERR_BAD_PATH;
    if (slash == NULL) {
        *pparent = ".";
        *pbase = relpath;
    } else {
        *pparent = apr_pstrmemdup(p, relpath, (apr_size_t)(slash - relpath));
        *pbase = slash + 1;
    }
    return **pbase != '\0' ? FB_OK : FB_ERR_BAD_PATH;
}

fb_err mod_fallback_open_parent(int *pfd, mod_fallback_req *req, const char *relpath)
{
    const char *parent, *base;
    fb_err e;
    int fd = -1;

    *pfd = -1;
    e = mod_fallback_split_parent(&parent, &base, req->r->pool, relpath);
    if (e != FB_OK)
        return e;
    /* A real descriptor (not O_PATH): checkpoint and commit fsync the directory through it. */
    e = fb_path_open_beneath(&fd, req->docroot_fd, parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (e != FB_OK)
        return e;
    mod_fallback_fd_close_on_cleanup(req->r->pool, fd);
    *pfd = fd;
    return FB_OK;
}

const char *mod_fallback_basename(const char *relpath)
{
    const char *slash = strrchr(relpath, '/');

    return slash ? slash + 1 : relpath;
}

fb_err mod_fallback_sha256_hex_parse(unsigned char out[FB_SHA256_LEN], json_t *value)
{
    const char *s;

    if (!json_is_string(value))
        return FB_ERR_BAD_REQUEST;
    s = json_string_value(value);
    if (json_string_length(value) != FB_SHA256_HEX_LEN)
        return FB_ERR_BAD_REQUEST;
    return fb_hex_decode(out, FB_SHA256_LEN, s);
}

void mod_fallback_json_set_mtime(json_t *obj, const struct timespec *t)
{
    json_object_set_new(obj, "mtime", json_integer((json_int_t)t->tv_sec));
    json_object_set_new(obj, "mtime_ns", json_integer((json_int_t)t->tv_nsec));
}

int mod_fallback_fd_set_mtime(int fd, const uint64_t *mtime_ns)
{
    struct timespec ts[2] = {{.tv_sec = 0, .tv_nsec = UTIME_NOW}, {.tv_sec = 0, .tv_nsec = UTIME_NOW}};

    if (mtime_ns != NULL) {
        ts[1].tv_sec = (time_t)(*mtime_ns / 1000000000ull);
        ts[1].tv_nsec = (long)(*mtime_ns % 1000000000ull);
    }
    return futimens(fd, ts);
}

unsigned mod_fallback_sweep_dir(mod_fallback_req *req, int dir_fd, unsigned max_entries,
                                int (*visit)(mod_fallback_req *req, int dir_fd, const char *name,
                                             uint64_t now, uint64_t max_age_ns, void *arg),
                                void *arg)
{
    uint64_t now = fb_time_now_ns(), max_age = (uint64_t)req->cfg->idle_timeout * 1000000000ull;
    unsigned seen = 0, removed = 0;
    struct dirent *de;
    int dfd = dup(dir_fd);
    DIR *dir = dfd >= 0 ? fdopendir(dfd) : NULL;

    if (dir == NULL) {
        if (dfd >= 0)
            close(dfd);
        return 0;
    }
    while (seen < max_entries && (de = readdir(dir)) != NULL) {
        seen++;
        removed += visit(req, dir_fd, de->d_name, now, max_age, arg) != 0;
    }
    closedir(dir);
    return removed;
}

int mod_fallback_stale_or_gone(int dir_fd, const char *name, uint64_t now, uint64_t max_age_ns)
{
    struct stat sb;
    uint64_t mt;

    if (fstatat(dir_fd, name, &sb, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT;
    mt = fb_timespec_ns(&sb.st_mtim);
    return mt <= now && now - mt >= max_age_ns;
}
