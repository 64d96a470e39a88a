/* fbcp_download: one file (or, with -r, a tree) down from the server (docs/HTTP-API.md, Files).
 *
 * HEAD files/{path} gives size, ETag and Last-Modified. Data goes to a hidden partial file
 * beside the target, ".<name>.fbpart"; the chunks known to be on disk are recorded in the sidecar
 * ".<name>.fbpart.json" (written after fdatasync, atomically, at most every 64 MiB and when the
 * transfer stops), so a re-run fetches only what is missing if the remote file is unchanged
 * (same URL, size and ETag) and each chunk it claims still has the SHA-256 recorded when it was
 * written (chunks that differ, or were never hashed, are fetched again). The transport GETs
 * ranges with If-Range; a 200 instead of 206 means the file changed: start over once, then give
 * up with FB_ERR_CHANGED. At the end: fsync, mtime from Last-Modified, rename into place
 * (RENAME_NOREPLACE under --overwrite never).
 *
 * Unless --fallback=force, a download session (POST sessions, direction download) gives the key
 * and UDP port: the data comes over UDP first (fbcp_move), into the same partial file and
 * sidecar, and over HTTP(S) when UDP is blocked or lost. UDP has no per-answer validator, so a
 * file that got data over UDP is checked with one more HEAD at the end (a different ETag or
 * Last-Modified is "changed", as over HTTP). The session is deleted when the file is done.
 *
 * End to end: when the server knows the file's SHA-256 (Repr-Digest on HEAD, "sha256" in the
 * session answer), the file written must have it before it is renamed into place; otherwise the
 * partial file and sidecar are removed and the download fails with digest_mismatch.
 *
 * The threads beside the transfer (the running SHA-256, the checkpoints) and the check of a
 * resumed file's chunks are fbcp_download_hash.c. */
#include "fbcp.h"
#include "fbcp_download.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "fb_filesum.h"
#include "fb_wire.h"

int fbcp_err_stops_run(fb_err e)
{
    return e == FB_ERR_AUTH || e == FB_ERR_TLS || e == FB_ERR_CONNECTION_LOST || e == FB_ERR_NOMEM ||
           fbcp_interrupted;
}

char *fbcp_files_url(const fbcp_url *url, const char *remote, int slash)
{
    char *esc = fbcp_path_escape(remote);
    size_t len;
    char *r;

    if (esc == NULL)
        return NULL;
    len = strlen(url->base) + strlen(esc) + 16;
    r = malloc(len);
    if (r != NULL)
        snprintf(r, len, "%s/files/%s%s", url->base, esc, slash && esc[0] != '\0' ? "/" : "");
    free(esc);
    return r;
}

static int fbcp_answer_is_dir(const fbcp_http_answer *a)
{
    return a->status == 200 && a->content_type != NULL &&
           strncasecmp(a->content_type, "application/json", 16) == 0 && !a->accept_ranges;
}

fb_err fbcp_remote_stat(fbcp_ctx *c, const fbcp_url *url, const char *remote, int *pisdir, json_t **plisting,
                        char *detail, size_t detlen)
{
    fbcp_http_answer a;
    char *u = fbcp_files_url(url, remote, 0);
    fb_err rv;

    *pisdir = 0;
    if (plisting != NULL)
        *plisting = NULL;
    if (u == NULL)
        return FB_ERR_NOMEM;
    rv = fbcp_http_request(c->http, &a, "HEAD", u, NULL, FBCP_MAX_JSON, FBCP_RETRIES_DEFAULT, detail, detlen);
    free(u);
    if (rv != FB_OK)
        return rv;
    if (a.status == 200 && !fbcp_answer_is_dir(&a)) {
        fbcp_http_answer_free(&a);
        return FB_OK;
    }
    if (a.status != 200 && a.status != 301 && a.status != 302 && a.status != 308) {
        rv = fbcp_http_problem(&a, detail, detlen);
        fbcp_http_answer_free(&a);
        return rv;
    }
    fbcp_http_answer_free(&a);
    if (plisting == NULL) {
        *pisdir = 1; /* the caller only wants to know */
        return FB_OK;
    }

    /* a directory: the listing is at files/<path>/ */
    u = fbcp_files_url(url, remote, 1);
    if (u == NULL)
        return FB_ERR_NOMEM;
    rv = fbcp_http_request(c->http, &a, "GET", u, NULL, FBCP_MAX_LISTING, FBCP_RETRIES_DEFAULT, detail,
                           detlen);
    free(u);
    if (rv != FB_OK)
        return rv;
    if (a.status != 200) {
        rv = fbcp_http_problem(&a, detail, detlen);
    } else if (!fbcp_answer_is_dir(&a) || !json_is_array(json_object_get(a.json, "entries"))) {
        rv = FB_ERR_PROTOCOL;
        snprintf(detail, detlen, "the directory listing is not a JSON document with entries");
    } else {
        *pisdir = 1;
        if (plisting != NULL)
            *plisting = json_incref(a.json);
    }
    fbcp_http_answer_free(&a);
    return rv;
}

static fb_err fbcp_download_range_done(fbcp_xfer *x, uint64_t off, uint64_t len)
{
    fbcp_download *d = x->ctx;
    fb_err rv = fbcp_ranges_add(&d->sc.done, off, len);

    if (rv != FB_OK)
        return rv;
    fbcp_download_hash_ready(d, off, len);
    d->since_ckpt += len;
    if (d->since_ckpt >= FBCP_CHECKPOINT_EVERY)
        return fbcp_download_checkpoint_behind(d);
    return FB_OK;
}

/* Opens the partial file, resuming when the sidecar describes this same remote file. */
static fb_err fbcp_download_open(fbcp_download *d, const char *validator, char *detail, size_t detlen)
{
    fbcp_sidecar old;
    int resumable = 0;

    if (d->x.fd >= 0) {
        close(d->x.fd);
        d->x.fd = -1;
    }
    if (d->c->opts->resume && fbcp_sidecar_read(&old, d->sidecar_path) == FB_OK) {
        resumable = strcmp(old.url, d->files_url) == 0 && old.size == d->x.size && old.etag[0] != '\0' &&
                    strcmp(old.etag, validator) == 0 && old.chunk_size == FBCP_DOWNLOAD_CHUNK;
        if (resumable) {
            d->x.fd = open(d->partial, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
            if (d->x.fd < 0 || fbcp_download_keep_verified(d, &old, &d->sc.done) != FB_OK) {
                if (d->x.fd >= 0)
                    close(d->x.fd);
                d->x.fd = -1;
                resumable = 0;
            }
        }
        fbcp_sidecar_free(&old);
    }
    if (!resumable) {
        unlink(d->sidecar_path);
        fbcp_ranges_clear(&d->sc.done);
        d->x.fd = open(d->partial, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0666);
        if (d->x.fd < 0) {
            snprintf(detail, detlen, "%s: %s", d->partial, strerror(errno));
            return FB_ERR_LOCAL_IO;
        }
    }
    free(d->sc.etag);
    d->sc.etag = strdup(validator);
    return d->sc.etag == NULL ? FB_ERR_NOMEM : FB_OK;
}

/* Apache drops "Content-Length: 0" from HEAD answers, so an empty file's HEAD has no length.
 * Ask with a one-byte range instead: 206 "bytes 0-0/N", 416 "bytes * /N" or a 200 with a length. */
static fb_err fbcp_download_probe_size(fbcp_download *d, int64_t *plen, char *detail, size_t detlen)
{
    fbcp_http_answer a;
    fb_err rv;
    uint64_t first, last, complete;

    rv = fbcp_http_request_hdr(d->c->http, &a, "GET", d->files_url, "Range: bytes=0-0", NULL, FBCP_MAX_JSON,
                               FBCP_RETRIES_DEFAULT, detail, detlen);
    if (rv != FB_OK)
        return rv;
    rv = FB_ERR_PROTOCOL;
    if (a.status == 206 && a.content_range != NULL &&
        fbcp_parse_content_range(&first, &last, &complete, a.content_range) == FB_OK &&
        complete <= INT64_MAX) {
        *plen = (int64_t)complete;
        rv = FB_OK;
    } else if (a.status == 416 && a.content_range != NULL && strncmp(a.content_range, "bytes */", 8) == 0) {
        char *end;
        unsigned long long v;
        errno = 0;
        v = strtoull(a.content_range + 8, &end, 10);
        if (errno == 0 && end != a.content_range + 8 && (*end == '\0' || *end == '\r') && v <= INT64_MAX) {
            *plen = (int64_t)v;
            rv = FB_OK;
        }
    } else if (a.status == 200 && a.length >= 0) {
        *plen = a.length;
        rv = FB_OK;
    } else if (a.status != 200 && a.status != 206 && a.status != 416) {
        rv = fbcp_http_problem(&a, detail, detlen);
    }
    if (rv == FB_ERR_PROTOCOL)
        snprintf(detail, detlen, "the server tells no file size");
    fbcp_http_answer_free(&a);
    return rv;
}

/* HEAD: size and validators. */
static fb_err fbcp_download_head(fbcp_download *d, char **pvalidator, char *detail, size_t detlen)
{
    fbcp_http_answer a;
    fb_err rv;
    size_t vl;

    *pvalidator = NULL;
    rv = fbcp_http_request(d->c->http, &a, "HEAD", d->files_url, NULL, FBCP_MAX_JSON, FBCP_RETRIES_DEFAULT,
                           detail, detlen);
    if (rv != FB_OK)
        return rv;
    if (a.status != 200) {
        rv = fbcp_http_problem(&a, detail, detlen);
    } else if (fbcp_answer_is_dir(&a)) {
        rv = FB_ERR_USAGE;
        snprintf(detail, detlen, "%s is a remote directory (use -r)", d->x.remote[0] ? d->x.remote : "/");
    } else if (a.length < 0) {
        rv = fbcp_download_probe_size(d, &a.length, detail, detlen);
    }
    if (rv == FB_OK) {
        d->x.size = (uint64_t)a.length;
        d->filetime = a.filetime;
        d->have_expect_sha = a.repr_digest != NULL && fb_repr_digest_parse(d->expect_sha, a.repr_digest);
        free(d->x.if_range);
        free(d->x.etag);
        free(d->x.last_modified);
        d->x.if_range = d->x.etag = d->x.last_modified = NULL;
        /* If-Range only with a strong ETag: Apache calls its ETag weak, and dates unusable, while the
         * file is less than a second old. Every answer's validators are compared anyway, weakly. */
        if (a.etag != NULL && strncmp(a.etag, "W/", 2) != 0)
            d->x.if_range = strdup(a.etag);
        if (a.etag != NULL)
            d->x.etag = strdup(strncmp(a.etag, "W/", 2) == 0 ? a.etag + 2 : a.etag);
        if (a.last_modified != NULL)
            d->x.last_modified = strdup(a.last_modified);
        vl = (a.etag ? strlen(a.etag) : 0) + (a.last_modified ? strlen(a.last_modified) : 0) + 8;
        *pvalidator = malloc(vl);
        if (*pvalidator == NULL || (a.etag != NULL && d->x.etag == NULL))
            rv = FB_ERR_NOMEM;
        else if (d->x.etag != NULL)
            snprintf(*pvalidator, vl, "%s", d->x.etag);
        else if (a.last_modified != NULL)
            snprintf(*pvalidator, vl, "lm:%s", a.last_modified);
        else
            (*pvalidator)[0] = '\0'; /* nothing to recognise the file by: never resume */
    }
    fbcp_http_answer_free(&a);
    return rv;
}

/* fbcp_move's hook after a change of transport: what the sidecar does not hold. */
static fb_err fbcp_download_missing(fbcp_xfer *x, fbcp_ranges *out, char *detail, size_t detlen)
{
    fbcp_download *d = x->ctx;

    (void)detail;
    (void)detlen;
    return fbcp_ranges_complement(out, &d->sc.done, x->size);
}

/* BASE/sessions, or BASE/sessions/{ID}; NULL on ENOMEM. */
static char *fbcp_sessions_url(const fbcp_url *url, const char *id)
{
    size_t len = strlen(url->base) + (id != NULL ? strlen(id) : 0) + 16;
    char *r = malloc(len);

    if (r != NULL)
        snprintf(r, len, "%s/sessions%s%s", url->base, id != NULL ? "/" : "", id != NULL ? id : "");
    return r;
}

fb_err fbcp_sessions_post(fbcp_ctx *c, const fbcp_url *url, json_t *body, fbcp_http_answer *a, char *detail,
                          size_t detlen)
{
    char *u = fbcp_sessions_url(url, NULL);
    fb_err rv = FB_ERR_NOMEM;

    if (u != NULL && body != NULL)
        rv = fbcp_http_request(c->http, a, "POST", u, body, FBCP_MAX_JSON, FBCP_RETRIES_DEFAULT, detail,
                               detlen);
    json_decref(body);
    free(u);
    return rv;
}

void fbcp_session_delete(fbcp_ctx *c, const fbcp_url *url, const char *id)
{
    char detail[FBCP_DETAIL_LEN];
    fbcp_http_answer a;
    char *u = fbcp_sessions_url(url, id);

    if (u != NULL) {
        if (fbcp_http_request(c->http, &a, "DELETE", u, NULL, FBCP_MAX_JSON, 0, detail, sizeof(detail)) ==
            FB_OK)
            fbcp_http_answer_free(&a);
    }
    free(u);
}

/* DELETE the download session (its slot is all it holds on the server). */
static void fbcp_download_session_end(fbcp_download *d)
{
    if (d->x.session_id == NULL)
        return;
    fbcp_session_delete(d->c, d->x.url, d->x.session_id);
    free(d->x.session_id);
    d->x.session_id = NULL;
}

fb_err fbcp_download_session_take(fbcp_xfer *x, json_t *ans)
{
    const char *id = json_string_value(json_object_get(ans, "id"));
    const char *key = json_string_value(json_object_get(ans, "key"));
    json_t *port = json_object_get(json_object_get(ans, "udp"), "port");
    uint8_t sid[FB_WIRE_SID_LEN];
    fb_err rv = FB_OK;

    if (id == NULL || fb_wire_sid_from_string(sid, id) != FB_OK || key == NULL ||
        strlen(key) != 2 * sizeof(x->key) || fb_hex_decode(x->key, sizeof(x->key), key) != FB_OK)
        rv = FB_ERR_PROTOCOL;
    if (key != NULL)
        OPENSSL_cleanse((void *)key, strlen(key));
    if (rv != FB_OK)
        return rv;
    free(x->session_id);
    x->session_id = strdup(id);
    x->have_key = x->session_id != NULL;
    x->session_gen++;
    x->udp_port = json_is_integer(port) && json_integer_value(port) > 0 && json_integer_value(port) <= 65535
                      ? (long)json_integer_value(port)
                      : 0;
    return x->session_id != NULL ? FB_OK : FB_ERR_NOMEM;
}

static int fbcp_same_etag(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return 1; /* nothing to compare */
    if (strncmp(a, "W/", 2) == 0)
        a += 2;
    if (strncmp(b, "W/", 2) == 0)
        b += 2;
    return strcmp(a, b) == 0;
}

/* Takes the file's size and validators from a session answer instead of a HEAD: the same
 * ETag (If-Range only when strong) and modification time the files/ answers carry. 0 (nothing
 * taken) without an ETag: then HEAD's Last-Modified is the only validator. */
static int fbcp_download_adopt(fbcp_download *d, json_t *ans, char **pvalidator)
{
    const char *etag = json_string_value(json_object_get(ans, "etag"));
    json_t *size = json_object_get(ans, "size"), *mtime = json_object_get(ans, "mtime");

    if (etag == NULL || !json_is_integer(size) || json_integer_value(size) < 0 || !json_is_integer(mtime))
        return 0;
    free(d->x.if_range);
    free(d->x.etag);
    free(d->x.last_modified);
    d->x.if_range = d->x.last_modified = NULL;
    d->x.size = (uint64_t)json_integer_value(size);
    d->filetime = (int64_t)json_integer_value(mtime);
    {
        const char *sha = json_string_value(json_object_get(ans, "sha256"));

        d->have_expect_sha = sha != NULL && strlen(sha) == FB_SHA256_HEX_LEN &&
                             fb_hex_decode(d->expect_sha, FB_SHA256_LEN, sha) == FB_OK;
    }
    if (strncmp(etag, "W/", 2) != 0)
        d->x.if_range = strdup(etag);
    d->x.etag = strdup(strncmp(etag, "W/", 2) == 0 ? etag + 2 : etag);
    *pvalidator = d->x.etag != NULL ? strdup(d->x.etag) : NULL;
    return *pvalidator != NULL;
}

/* POST sessions {direction: download}: the key and UDP port for this file. With PVALIDATOR the
 * answer also describes the file (no HEAD before it: a round trip saved), else FB_ERR_CHANGED
 * when it describes another version of the file than HEAD did. */
static fb_err fbcp_download_session(fbcp_download *d, char **pvalidator, char *detail, size_t detlen)
{
    fbcp_http_answer a;
    fb_err rv;

    fbcp_download_session_end(d);
    rv = fbcp_sessions_post(d->c, d->x.url,
                            json_pack("{s:s, s:s}", "direction", "download", "path", d->x.remote), &a, detail,
                            detlen);
    if (rv != FB_OK)
        return rv;
    if (a.status == 200 || a.status == 201) {
        const char *etag = json_string_value(json_object_get(a.json, "etag"));
        json_t *size = json_object_get(a.json, "size");

        /* taken at once: a session refused below is deleted with the others */
        if (!json_is_integer(size) || (rv = fbcp_download_session_take(&d->x, a.json)) == FB_ERR_PROTOCOL) {
            rv = FB_ERR_PROTOCOL;
            snprintf(detail, detlen, "the download session answer has no usable id, key or size");
        } else if (rv != FB_OK) {
            /* out of memory */
        } else if (pvalidator != NULL && !fbcp_download_adopt(d, a.json, pvalidator)) {
            rv = FB_ERR_PROTOCOL; /* the caller asks HEAD instead */
            snprintf(detail, detlen, "the download session answer does not describe the file");
        } else if ((uint64_t)json_integer_value(size) != d->x.size || !fbcp_same_etag(etag, d->x.etag)) {
            rv = FB_ERR_CHANGED;
            snprintf(detail, detlen, "the file changed on the server between HEAD and the session");
        } else {
            /* udpd vouches for the file as the session saw it: that covers the HEAD's version
             * only when both ETags exist and were compared */
            d->etag_checked = etag != NULL && d->x.etag != NULL;
        }
    } else {
        rv = fbcp_http_problem(&a, detail, detlen);
    }
    fbcp_http_answer_free(&a);
    return rv;
}

/* After UDP carried data: the file must still be the version HEAD described (UDP answers carry
 * no validator). FB_ERR_CHANGED otherwise. */
static fb_err fbcp_download_recheck(fbcp_download *d, const char *validator, char *detail, size_t detlen)
{
    char *now = NULL;
    uint64_t size = d->x.size;
    fb_err rv = fbcp_download_head(d, &now, detail, detlen);

    if (rv == FB_OK && (d->x.size != size || strcmp(now, validator) != 0 || validator[0] == '\0')) {
        rv = FB_ERR_CHANGED;
        snprintf(detail, detlen, "the file changed on the server during the transfer");
    }
    free(now);
    return rv;
}

/* Paths of the partial file and sidecar beside LOCAL. */
static fb_err fbcp_download_names(fbcp_download *d, const char *local)
{
    char *name = fbcp_basename(local);
    const char *slash = strrchr(local, '/');
    size_t len;

    if (name == NULL)
        return FB_ERR_NOMEM;
    d->dir = slash != NULL ? strndup(local, (size_t)(slash - local) + (slash == local ? 1 : 0)) : strdup(".");
    len = strlen(d->dir) + strlen(name) + 32;
    d->partial = malloc(len);
    d->sidecar_path = malloc(len);
    if (d->dir == NULL || d->partial == NULL || d->sidecar_path == NULL) {
        free(name);
        return FB_ERR_NOMEM;
    }
    snprintf(d->partial, len, "%s%s.%s.fbpart", d->dir, strcmp(d->dir, "/") == 0 ? "" : "/", name);
    snprintf(d->sidecar_path, len, "%s.json", d->partial);
    free(name);
    return FB_OK;
}

static fb_err fbcp_download_finish(fbcp_download *d, char *sha_hex, char *detail, size_t detlen)
{
    unsigned char digest[FB_SHA256_LEN];
    int rc;
    fb_err rv = fbcp_download_ckpt_join(d);

    if (rv != FB_OK) {
        snprintf(detail, detlen, "%s: cannot sync the file to disk", d->partial);
        return rv;
    }
    if (fsync(d->x.fd) != 0) {
        snprintf(detail, detlen, "%s: %s", d->partial, strerror(errno));
        return FB_ERR_LOCAL_IO;
    }
    if (d->filetime >= 0 && d->c->opts->preserve_times) {
        struct timespec ts[2] = {{(time_t)d->filetime, 0}, {(time_t)d->filetime, 0}};
        if (futimens(d->x.fd, ts) != 0)
            fbcp_warn("%s: cannot set the modification time: %s", d->x.local, strerror(errno));
    }
    rv = fbcp_download_hash_end(d, 0, digest);
    if (rv != FB_OK) {
        snprintf(detail, detlen, "%s: cannot read back the file", d->partial);
        return FB_ERR_LOCAL_IO;
    }
    fb_hex_encode(sha_hex, digest, FB_SHA256_LEN);
    if (d->have_expect_sha && CRYPTO_memcmp(digest, d->expect_sha, FB_SHA256_LEN) != 0) {
        char want[FB_SHA256_HEX_LEN + 1];

        /* nothing wrong lands at the target, and nothing of it is resumed later */
        fb_hex_encode(want, d->expect_sha, FB_SHA256_LEN);
        unlink(d->partial);
        unlink(d->sidecar_path);
        snprintf(detail, detlen,
                 "the file written has SHA-256 %s, the server's file %s (Repr-Digest): not kept", sha_hex,
                 want);
        sha_hex[0] = '\0';
        return FB_ERR_DIGEST_MISMATCH;
    }
    if (d->c->opts->overwrite == FBCP_OVERWRITE_NEVER)
        rc = renameat2(AT_FDCWD, d->partial, AT_FDCWD, d->x.local, RENAME_NOREPLACE);
    else
        rc = rename(d->partial, d->x.local);
    if (rc != 0) {
        int err = errno;
        snprintf(detail, detlen, "%s: %s", d->x.local, strerror(err));
        return err == EEXIST ? FB_ERR_EXISTS : FB_ERR_LOCAL_IO;
    }
    unlink(d->sidecar_path);
    {
        int dfd = open(d->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    return FB_OK;
}

void fbcp_download_xfer_init(fbcp_xfer *x, fbcp_ctx *c, const fbcp_url *url, const char *local,
                             const char *remote)
{
    memset(x, 0, sizeof(*x));
    x->direction = FBCP_DOWNLOAD;
    x->opts = c->opts;
    x->local = local;
    x->remote = remote;
    x->url = url;
    x->fd = -1;
    x->chunk_size = FBCP_DOWNLOAD_CHUNK;
    x->transport_name = c->transport->ops->name;
    x->poll_fd = -1;
}

int fbcp_download_policy(const fbcp_opts *o, const char *local, uint64_t size, int64_t mtime,
                         const char **preason, fb_err *perr, char *detail, size_t detlen)
{
    struct stat st;

    if (stat(local, &st) != 0)
        return 0;
    if (S_ISDIR(st.st_mode)) {
        *perr = FB_ERR_EXISTS;
        snprintf(detail, detlen, "a directory is in the way");
        return -1;
    }
    if (o->overwrite == FBCP_OVERWRITE_NEVER) {
        *perr = FB_ERR_EXISTS;
        return -1;
    }
    if ((o->overwrite == FBCP_OVERWRITE_IF_DIFFERENT || o->overwrite == FBCP_OVERWRITE_IF_DIFFERENT_OLDER) &&
        S_ISREG(st.st_mode) && (uint64_t)st.st_size == size && mtime >= 0 &&
        st.st_mtim.tv_sec == (time_t)mtime) {
        *preason = "identical";
        return 1;
    }
    if ((o->overwrite == FBCP_OVERWRITE_OLDER || o->overwrite == FBCP_OVERWRITE_IF_DIFFERENT_OLDER) &&
        mtime >= 0 && st.st_mtim.tv_sec >= (time_t)mtime) {
        *preason = "newer"; /* the local file is not older than the server's: kept */
        return 1;
    }
    return 0;
}

fb_err fbcp_download_file(fbcp_ctx *c, const fbcp_url *url, const char *remote, const char *local)
{
    fbcp_download d;
    char detail[FBCP_DETAIL_LEN] = "", refused_detail[FBCP_DETAIL_LEN] = "";
    fb_err session_refused = FB_OK;
    char sha_hex[FB_SHA256_HEX_LEN + 1] = "";
    char *validator = NULL;
    fbcp_ranges missing;
    fb_err rv;

    memset(&d, 0, sizeof(d));
    fbcp_ranges_init(&missing);
    fbcp_sidecar_init(&d.sc);
    d.c = c;
    fbcp_download_xfer_init(&d.x, c, url, local, remote);
    d.x.range_done = fbcp_download_range_done;
    d.x.missing = fbcp_download_missing;
    d.x.ctx = &d;
    d.files_url = fbcp_files_url(url, remote, 0);
    d.x.data_url = d.files_url;
    rv = d.files_url == NULL ? FB_ERR_NOMEM : fbcp_download_names(&d, local);
    if (rv != FB_OK)
        goto out;
    /* Over UDP the session's answer describes the file: no HEAD first (a round trip, on every
     * file of a tree). Anything unusual (a directory, a missing or empty file, no ETag, no
     * sessions) goes the HEAD way, which says what is wrong as it always did. */
    if (c->opts->fallback != FBCP_FALLBACK_FORCE) {
        rv = fbcp_download_session(&d, &validator, detail, sizeof(detail));
        if (rv == FB_OK && d.x.size == 0) {
            fbcp_download_session_end(&d); /* nothing to move over UDP */
            rv = FB_ERR_PROTOCOL;
        }
        if (rv != FB_OK) {
            if (fbcp_err_stops_run(rv))
                goto out;
            fbcp_trace(c->opts, "no session before HEAD (%s: %s)", fb_err_message(rv), detail);
            /* refused (not merely undescriptive): the same answer later, without asking again */
            if (rv != FB_ERR_PROTOCOL) {
                session_refused = rv;
                snprintf(refused_detail, sizeof(refused_detail), "%s", detail);
            }
            detail[0] = '\0';
            free(validator);
            validator = NULL;
            fbcp_download_session_end(&d);
        } else {
            fbcp_trace(c->opts, "session %s describes the file: no HEAD", d.x.session_id);
        }
    }
    if (d.x.session_id == NULL) {
        rv = fbcp_download_head(&d, &validator, detail, sizeof(detail));
        if (rv != FB_OK)
            goto out;
    }

    /* the local overwrite policy, decided before any data moves */
    {
        const char *reason = NULL;
        int pol =
            fbcp_download_policy(c->opts, local, d.x.size, d.filetime, &reason, &rv, detail, sizeof(detail));

        if (pol < 0)
            goto out;
        if (pol > 0) {
            fbcp_event_skip(&d.x, reason);
            goto out;
        }
    }
    if (!c->opts->resume) {
        unlink(d.sidecar_path);
        unlink(d.partial);
    }
    d.sc.url = strdup(d.files_url);
    d.sc.chunk_size = FBCP_DOWNLOAD_CHUNK;
    if (d.sc.url == NULL) {
        rv = FB_ERR_NOMEM;
        goto out;
    }
    if (c->opts->fallback != FBCP_FALLBACK_FORCE && d.x.size > 0) {
        if (session_refused != FB_OK) {
            rv = session_refused;
            snprintf(detail, sizeof(detail), "%s", refused_detail);
        } else if (d.x.session_id == NULL) {
            rv = fbcp_download_session(&d, NULL, detail, sizeof(detail));
        }
        if (rv != FB_OK && c->opts->fallback == FBCP_FALLBACK_AUTO && !fbcp_err_stops_run(rv)) {
            fbcp_trace(c->opts, "no download session (%s: %s): HTTP(S) only", fb_err_message(rv), detail);
            detail[0] = '\0';
            rv = FB_OK;
        }
        if (rv == FB_OK)
            rv = fbcp_move_setup(c, &d.x, &d.sw, detail, sizeof(detail));
        if (rv != FB_OK)
            goto out;
    }

    /* bounded: at most one fresh start after the file changed on the server */
    for (int round = 0; round < 2; round++) {
        d.sc.size = d.x.size;
        rv = fbcp_download_open(&d, validator, detail, sizeof(detail));
        if (rv != FB_OK)
            goto out;
        fbcp_download_hash_start(&d);
        d.x.bytes_skipped = fbcp_ranges_total(&d.sc.done);
        d.x.resumed = d.x.bytes_skipped > 0;
        d.x.bytes_done = 0;
        if (round == 0)
            fbcp_event_start(&d.x);
        rv = fbcp_ranges_complement(&missing, &d.sc.done, d.x.size);
        {
            uint64_t udp_before = d.x.bytes_udp;

            d.x.udp_end_confirmed = 0;
            if (rv == FB_OK && missing.n > 0)
                rv = d.x.sw != NULL
                         ? fbcp_move(c, &d.x, &missing, detail, sizeof(detail))
                         : c->transport->ops->download(c->transport, &d.x, &missing, detail, sizeof(detail));
            if (rv == FB_OK && d.x.udp_end_confirmed && d.etag_checked) {
                /* udpd vouched for the file and ended the session: nothing to DELETE */
                fbcp_trace(c->opts, "udpd: the file is unchanged, the session ended");
                free(d.x.session_id);
                d.x.session_id = NULL;
            } else if (rv == FB_OK && d.x.bytes_udp > udp_before) {
                rv = fbcp_download_recheck(&d, validator, detail, sizeof(detail));
                /* udpd may have ended the session already: then the DELETE answers 404 */
            }
        }
        if (rv != FB_ERR_CHANGED || round == 1)
            break;
        fbcp_warn("%s: the file changed on the server: starting over", local);
        (void)fbcp_download_ckpt_join(&d); /* it would write the old sidecar again */
        fbcp_ranges_clear(&d.sc.done);
        unlink(d.sidecar_path);
        free(validator);
        rv = fbcp_download_head(&d, &validator, detail, sizeof(detail));
        if (rv == FB_OK && d.x.session_id != NULL)
            rv = fbcp_download_session(&d, NULL, detail, sizeof(detail)); /* for the new version */
        if (rv != FB_OK)
            goto out;
        /* a fresh partial file: the old validator no longer matches, so open truncates */
        if (d.x.fd >= 0) {
            if (ftruncate(d.x.fd, 0) != 0) {
                rv = FB_ERR_LOCAL_IO;
                snprintf(detail, sizeof(detail), "%s: %s", d.partial, strerror(errno));
                goto out;
            }
        }
    }
    if (rv != FB_OK) {
        /* keep what arrived for the next run */
        if (d.x.fd >= 0 && d.sc.done.n > 0 && rv != FB_ERR_CHANGED)
            fbcp_download_checkpoint(&d);
        goto out;
    }
    rv = fbcp_download_finish(&d, sha_hex, detail, sizeof(detail));
    if (rv != FB_OK)
        goto out;
    fbcp_event_done(&d.x, sha_hex);
out:
    if (rv != FB_OK && !(fbcp_interrupted && rv == FB_ERR_CONNECTION_LOST))
        fbcp_report_error(&d.x, local, rv, detail);
    fbcp_download_session_end(&d);
    fbcp_move_cleanup(&d.x);
    (void)fbcp_download_ckpt_join(&d); /* before the hash thread it takes digests from ends */
    (void)fbcp_download_hash_end(&d, 1, NULL);
    if (d.x.fd >= 0)
        close(d.x.fd);
    free(validator);
    free(d.files_url);
    free(d.partial);
    free(d.sidecar_path);
    free(d.dir);
    free(d.x.if_range);
    free(d.x.etag);
    free(d.x.last_modified);
    fbcp_sidecar_free(&d.sc);
    fbcp_ranges_free(&missing);
    return rv;
}
