/* fbcp_pack_down: small files of a tree fetched as download packs (docs/HTTP-API.md, "Download
 * packs"; docs/fbcp.md, "Packs").
 *
 * Gathering (fbcp_pack_gather, called by fbcp_tree.c as the server's listings come in): files of
 * at most FBCP_PACK_FILE_MAX bytes go into the open pack of their tree, in the order they are
 * listed; a pack is handed back full at FBCP_PACK_FILES files, FBCP_PACK_BYTES bytes or
 * FBCP_PACK_JSON bytes of request, and the rest when the listings are done.
 *
 * Running one pack (fbcp_pack_down_run, a job of the run's queue): the overwrite policy first,
 * with the listing's size and time (files it skips are not asked for); POST sessions with
 * "pack"; the pack's bytes into memory (a memfd) over UDP or HTTP(S) exactly as one file's
 * (fbcp_move: GET sessions/{id}/data with Range is the HTTP(S) path, since the staging file has no
 * files/ name); the pack's SHA-256 checked; then each file checked against its own SHA-256,
 * written to its partial name beside the target (".<name>.fbpart"), fsynced, given the server's
 * modification time (with its nanoseconds) when times are kept, the overwrite policy applied again
 * with the server's answer, and renamed into place; one start/done (or skip, or error) event per
 * file, as for files sent one by one. The session is deleted at the end, which removes the
 * server's staging file. A server without packs (400, 404, 405 to the request) or one that finds
 * the request too large (413) gets the files one by one (fbcp_download_file). */
#include "fbcp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#define FBCP_PACK_ANSWER_MAX (64u * 1024u * 1024u) /* largest pack accepted (files may grow) */
#define FBCP_PACK_MAX_TREES 4096                   /* trees with an open pack at once */

typedef struct fbcp_pack_file {
    char *remote;    /* full remote path */
    const char *rel; /* REMOTE below the pack's root */
    char *local;
    uint64_t size; /* as listed */
    int64_t mtime; /* as listed (whole seconds), -1 unknown */
} fbcp_pack_file;

struct fbcp_pack_down {
    const fbcp_url *url;
    int tree;
    char *root;  /* remote root of the tree: entries are relative to it */
    char *label; /* for messages and the pack's own progress events: the local root */
    fbcp_pack_file *v;
    size_t n, cap;
    uint64_t bytes;
    size_t json;
};

struct fbcp_pack_gather {
    fbcp_pack_down *open[FBCP_PACK_MAX_TREES]; /* by tree id */
};

void fbcp_pack_down_free(fbcp_pack_down *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->n; i++) {
        free(p->v[i].remote);
        free(p->v[i].local);
    }
    free(p->v);
    free(p->root);
    free(p->label);
    free(p);
}

int fbcp_pack_down_tree(const fbcp_pack_down *p)
{
    return p->tree;
}

uint64_t fbcp_pack_down_bytes(const fbcp_pack_down *p)
{
    return p->bytes;
}

fb_err fbcp_pack_gather_new(fbcp_pack_gather **pg)
{
    *pg = calloc(1, sizeof(**pg));
    return *pg != NULL ? FB_OK : FB_ERR_NOMEM;
}

void fbcp_pack_gather_free(fbcp_pack_gather *g)
{
    if (g == NULL)
        return;
    for (int i = 0; i < FBCP_PACK_MAX_TREES; i++)
        fbcp_pack_down_free(g->open[i]);
    free(g);
}

/* Bytes S takes as a JSON string (quotes included; jansson escapes as counted here). */
static size_t fbcp_json_str_len(const char *s)
{
    size_t n = 2;

    for (; *s != '\0'; s++)
        n += *s == '"' || *s == '\\' ? 2 : (unsigned char)*s < 0x20 ? 6 : 1;
    return n;
}

/* REMOTE without its last DEPTH components (its tree's root); NULL when it has fewer. */
static char *fbcp_pack_root_of(const char *remote, int depth)
{
    size_t len = strlen(remote);

    for (int d = 0; d < depth; d++) {
        while (len > 0 && remote[len - 1] != '/')
            len--;
        if (len == 0)
            return d == depth - 1 ? strdup("") : NULL;
        len--; /* the "/" */
    }
    return strndup(remote, len);
}

static fbcp_pack_down *fbcp_pack_new(const fbcp_url *url, int tree, const char *remote, const char *local,
                                     int depth)
{
    fbcp_pack_down *p = calloc(1, sizeof(*p));
    size_t rl, ll;

    if (p == NULL)
        return NULL;
    p->url = url;
    p->tree = tree;
    p->root = fbcp_pack_root_of(remote, depth);
    /* the local root: LOCAL without as many bytes as REMOTE has below the root */
    rl = p->root != NULL ? strlen(remote) - strlen(p->root) : 0;
    ll = strlen(local);
    p->label = strndup(local, ll > rl ? ll - rl : 0);
    if (p->root == NULL || p->label == NULL) {
        fbcp_pack_down_free(p);
        return NULL;
    }
    p->json = 64 + fbcp_json_str_len(p->root);
    return p;
}

int fbcp_pack_gather_add(fbcp_pack_gather *g, const fbcp_url *url, int tree, const char *remote,
                         const char *local, int depth, uint64_t size, const struct timespec *mtime,
                         fbcp_pack_down **pfull)
{
    fbcp_pack_down *p;
    fbcp_pack_file *f;
    size_t json;

    *pfull = NULL;
    if (g == NULL || tree < 0 || tree >= FBCP_PACK_MAX_TREES || depth < 1 || size > FBCP_PACK_FILE_MAX)
        return 0;
    p = g->open[tree];
    if (p != NULL && p->url != url) /* one server per tree: never expected */
        return 0;
    json = 12 + fbcp_json_str_len(remote);
    if (json > FBCP_PACK_JSON / 2)
        return 0; /* a name this long goes on its own */
    if (p != NULL &&
        (p->n >= FBCP_PACK_FILES || p->bytes + size > FBCP_PACK_BYTES || p->json + json > FBCP_PACK_JSON)) {
        *pfull = p;
        g->open[tree] = p = NULL;
    }
    if (p == NULL) {
        p = fbcp_pack_new(url, tree, remote, local, depth);
        if (p == NULL)
            return 0;
        g->open[tree] = p;
    }
    if (strncmp(remote, p->root, strlen(p->root)) != 0)
        return 0;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        fbcp_pack_file *v = realloc(p->v, cap * sizeof(*v));

        if (v == NULL)
            return 0;
        p->v = v;
        p->cap = cap;
    }
    f = &p->v[p->n];
    f->remote = strdup(remote);
    f->local = strdup(local);
    if (f->remote == NULL || f->local == NULL) {
        free(f->remote);
        free(f->local);
        return 0;
    }
    f->rel = f->remote + strlen(p->root) + (p->root[0] != '\0');
    f->size = size;
    f->mtime = mtime != NULL ? (int64_t)mtime->tv_sec : -1;
    p->n++;
    p->bytes += size;
    p->json += json;
    return 1;
}

fbcp_pack_down *fbcp_pack_gather_flush(fbcp_pack_gather *g)
{
    for (int i = 0; g != NULL && i < FBCP_PACK_MAX_TREES; i++) {
        fbcp_pack_down *p = g->open[i];

        if (p != NULL) {
            g->open[i] = NULL;
            return p;
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------- running one pack */

/* What happens to one file of the pack. */
typedef enum { FBCP_PF_ASK, FBCP_PF_DONE } fbcp_pf_state;

typedef struct fbcp_pack_run {
    fbcp_ctx *c;
    fbcp_pack_down *p;
    fbcp_xfer x; /* the pack's own transfer (its bytes into the memfd) */
    fbcp_switch sw;
    fbcp_ranges done; /* of the pack */
    size_t *ask;      /* indexes of the files asked for, in request order */
    size_t nask;
    json_t *answer;
    unsigned char sha[FB_SHA256_LEN];
    const unsigned char *map;
    char *last_dir; /* the directory of the last file landed, fsynced when it changes */
} fbcp_pack_run;

/* A per-file transfer record for events (sizes and counts of FILE). */
static void fbcp_pack_file_xfer(fbcp_xfer *fx, const fbcp_pack_run *r, const fbcp_pack_file *f, uint64_t size)
{
    fbcp_download_xfer_init(fx, r->c, r->p->url, f->local, f->remote);
    fx->size = size;
    if (r->x.transport_name != NULL)
        fx->transport_name = r->x.transport_name;
}

/* The files one by one, as without packs (ASK: the indexes in R->ask, else all). */
static fb_err fbcp_pack_one_by_one(fbcp_pack_run *r, const size_t *idx, size_t n)
{
    fb_err rv = FB_OK;

    for (size_t i = 0; i < n && !fbcp_interrupted; i++) {
        const fbcp_pack_file *f = &r->p->v[idx[i]];

        rv = fbcp_download_file(r->c, r->p->url, f->remote, f->local);
        if (rv != FB_OK && fbcp_err_stops_run(rv))
            return rv;
    }
    return FB_OK;
}

/* Every file asked for fails with E (DETAIL). */
static void fbcp_pack_fail_all(fbcp_pack_run *r, fb_err e, const char *detail)
{
    for (size_t i = 0; i < r->nask; i++) {
        const fbcp_pack_file *f = &r->p->v[r->ask[i]];
        fbcp_xfer fx;

        fbcp_pack_file_xfer(&fx, r, f, f->size);
        fbcp_report_error(&fx, f->local, e, detail);
    }
}

static fb_err fbcp_pack_range_done(fbcp_xfer *x, uint64_t off, uint64_t len)
{
    fbcp_pack_run *r = x->ctx;

    return fbcp_ranges_add(&r->done, off, len);
}

static fb_err fbcp_pack_missing(fbcp_xfer *x, fbcp_ranges *out, char *detail, size_t detlen)
{
    fbcp_pack_run *r = x->ctx;

    (void)detail;
    (void)detlen;
    return fbcp_ranges_complement(out, &r->done, x->size);
}

/* POST sessions with the pack. *PSTATUS: the HTTP status (the answer in R->answer when 2xx). */
static fb_err fbcp_pack_request(fbcp_pack_run *r, long *pstatus, char *detail, size_t detlen)
{
    json_t *arr = json_array();
    fbcp_http_answer a;
    fb_err rv;

    for (size_t i = 0; arr != NULL && i < r->nask; i++)
        if (json_array_append_new(arr, json_pack("{s:s}", "path", r->p->v[r->ask[i]].rel)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    rv = fbcp_sessions_post(
        r->c, r->p->url,
        arr != NULL ? json_pack("{s:s, s:s, s:o}", "direction", "download", "path", r->p->root, "pack", arr)
                    : NULL,
        &a, detail, detlen);
    if (rv != FB_OK)
        return rv;
    *pstatus = a.status;
    if (a.status == 200 || a.status == 201) {
        r->answer = json_incref(a.json);
    } else if (a.status != 400 && a.status != 404 && a.status != 405 && a.status != 413) {
        rv = fbcp_http_problem(&a, detail, detlen);
    }
    fbcp_http_answer_free(&a);
    return rv;
}

/* Checks the answer: one element per file asked for, in order, the files' bytes back to back.
 * Fills the pack transfer's session fields. */
static fb_err fbcp_pack_check_answer(fbcp_pack_run *r, char *detail, size_t detlen)
{
    json_t *pack = json_object_get(r->answer, "pack"), *size = json_object_get(r->answer, "size"), *e;
    const char *sha = json_string_value(json_object_get(r->answer, "sha256"));
    uint64_t at = 0;
    size_t i;

    if (json_is_integer(size) && json_integer_value(size) > (json_int_t)FBCP_PACK_ANSWER_MAX)
        return FB_ERR_TOO_LARGE; /* the files grew since they were listed */
    if (!json_is_array(pack) || json_array_size(pack) != r->nask || !json_is_integer(size) ||
        json_integer_value(size) < 0 || sha == NULL || strlen(sha) != FB_SHA256_HEX_LEN ||
        fb_hex_decode(r->sha, sizeof(r->sha), sha) != FB_OK) {
        snprintf(detail, detlen, "the pack answer has no usable pack, size or sha256");
        return FB_ERR_PROTOCOL;
    }
    json_array_foreach(pack, i, e)
    {
        json_t *off = json_object_get(e, "offset"), *sz = json_object_get(e, "size");
        const char *path = json_string_value(json_object_get(e, "path"));
        const char *fsha = json_string_value(json_object_get(e, "sha256"));

        if (path == NULL || strcmp(path, r->p->v[r->ask[i]].rel) != 0) {
            snprintf(detail, detlen, "the pack answer lists another file at %zu", i);
            return FB_ERR_PROTOCOL;
        }
        if (json_object_get(e, "error") != NULL)
            continue;
        if (!json_is_integer(off) || !json_is_integer(sz) || json_integer_value(sz) < 0 ||
            (uint64_t)json_integer_value(off) != at || fsha == NULL || strlen(fsha) != FB_SHA256_HEX_LEN) {
            snprintf(detail, detlen, "the pack answer's entry %zu has no usable offset, size or sha256", i);
            return FB_ERR_PROTOCOL;
        }
        at += (uint64_t)json_integer_value(sz);
    }
    if (at != (uint64_t)json_integer_value(size)) {
        snprintf(detail, detlen, "the pack's entries do not add up to its size");
        return FB_ERR_PROTOCOL;
    }
    r->x.size = at;
    return FB_OK;
}

/* The session of the pack (for the transports) from the answer. */
static fb_err fbcp_pack_session(fbcp_pack_run *r, char *detail, size_t detlen)
{
    const char *etag = json_string_value(json_object_get(r->answer, "etag"));
    size_t len;
    fb_err rv = fbcp_download_session_take(&r->x, r->answer);

    if (rv == FB_ERR_PROTOCOL)
        snprintf(detail, detlen, "the pack session answer has no usable id or key");
    if (rv != FB_OK)
        return rv;
    len = strlen(r->p->url->base) + strlen(r->x.session_id) + 32;
    r->x.data_url = malloc(len);
    if (r->x.data_url == NULL)
        return FB_ERR_NOMEM;
    snprintf(r->x.data_url, len, "%s/sessions/%s/data", r->p->url->base, r->x.session_id);
    if (etag != NULL) {
        if (strncmp(etag, "W/", 2) != 0)
            r->x.if_range = strdup(etag);
        r->x.etag = strdup(strncmp(etag, "W/", 2) == 0 ? etag + 2 : etag);
    }
    return FB_OK;
}

/* The pack's bytes into X's memfd, over the transport fbcp_move chooses. */
static fb_err fbcp_pack_fetch(fbcp_pack_run *r, char *detail, size_t detlen)
{
    fbcp_ctx *c = r->c;
    fbcp_ranges todo;
    fb_err rv;

    r->x.fd = memfd_create("fbcp-pack", MFD_CLOEXEC);
    if (r->x.fd < 0 || ftruncate(r->x.fd, (off_t)r->x.size) != 0) {
        snprintf(detail, detlen, "cannot hold the pack in memory: %s", strerror(errno));
        return FB_ERR_LOCAL_IO;
    }
    fbcp_ranges_init(&todo);
    rv = fbcp_ranges_add(&todo, 0, r->x.size);
    if (rv == FB_OK && c->opts->fallback != FBCP_FALLBACK_FORCE) {
        rv = fbcp_move_setup(c, &r->x, &r->sw, detail, detlen);
        if (rv == FB_OK)
            rv = fbcp_move(c, &r->x, &todo, detail, detlen);
    } else if (rv == FB_OK) {
        rv = c->transport->ops->download(c->transport, &r->x, &todo, detail, detlen);
    }
    fbcp_ranges_free(&todo);
    if (rv == FB_OK && fbcp_ranges_total(&r->done) != r->x.size) {
        snprintf(detail, detlen, "the pack did not arrive whole");
        rv = FB_ERR_INCOMPLETE;
    }
    return rv;
}

/* The pack's SHA-256 over what arrived, compared with the answer's. */
static fb_err fbcp_pack_verify(fbcp_pack_run *r, char *detail, size_t detlen)
{
    unsigned char got[FB_SHA256_LEN];
    unsigned int len = 0;

    if (r->x.size > 0) {
        r->map = mmap(NULL, (size_t)r->x.size, PROT_READ, MAP_SHARED, r->x.fd, 0);
        if (r->map == MAP_FAILED) {
            r->map = NULL;
            snprintf(detail, detlen, "cannot read the pack: %s", strerror(errno));
            return FB_ERR_LOCAL_IO;
        }
    }
    if (EVP_Digest(r->map != NULL ? r->map : (const unsigned char *)"", (size_t)r->x.size, got, &len,
                   EVP_sha256(), NULL) != 1 ||
        len != FB_SHA256_LEN)
        return FB_ERR_NOMEM;
    if (CRYPTO_memcmp(got, r->sha, FB_SHA256_LEN) != 0) {
        snprintf(detail, detlen, "the pack's bytes do not have the SHA-256 the server gave: nothing kept");
        return FB_ERR_DIGEST_MISMATCH;
    }
    return FB_OK;
}

/* fsyncs DIR (the directory of the files landed last). */
static void fbcp_pack_sync_dir(const char *dir)
{
    int dfd;

    if (dir == NULL)
        return;
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
}

/* Writes DATA (LEN bytes) to F->local through its partial name; times from E when kept. */
static fb_err fbcp_pack_write(fbcp_pack_run *r, const fbcp_pack_file *f, json_t *e, const unsigned char *data,
                              uint64_t len, char *detail, size_t detlen)
{
    const fbcp_opts *o = r->c->opts;
    char *base = fbcp_basename(f->local), *partial = NULL, *dir;
    const char *slash = strrchr(f->local, '/');
    size_t plen;
    int fd = -1, rc;
    fb_err rv = FB_OK;

    dir = slash != NULL ? strndup(f->local, (size_t)(slash - f->local) + (slash == f->local)) : strdup(".");
    plen = (dir != NULL ? strlen(dir) : 0) + (base != NULL ? strlen(base) : 0) + 32;
    partial = base != NULL && dir != NULL ? malloc(plen) : NULL;
    if (partial == NULL) {
        rv = FB_ERR_NOMEM;
        goto out;
    }
    snprintf(partial, plen, "%s%s.%s.fbpart", dir, strcmp(dir, "/") == 0 ? "" : "/", base);
    fd = open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (fd < 0 || (len > 0 && fb_pwrite_all(fd, data, (size_t)len, 0) != FB_OK) || fsync(fd) != 0) {
        snprintf(detail, detlen, "%s: %s", partial, strerror(errno));
        rv = FB_ERR_LOCAL_IO;
        goto out;
    }
    if (o->preserve_times) {
        json_t *mt = json_object_get(e, "mtime"), *ns = json_object_get(e, "mtime_ns");

        if (json_is_integer(mt)) {
            struct timespec ts[2];

            ts[1].tv_sec = (time_t)json_integer_value(mt);
            ts[1].tv_nsec =
                json_is_integer(ns) && json_integer_value(ns) >= 0 && json_integer_value(ns) < 1000000000
                    ? (long)json_integer_value(ns)
                    : 0;
            ts[0] = ts[1];
            if (futimens(fd, ts) != 0)
                fbcp_warn("%s: cannot set the modification time: %s", f->local, strerror(errno));
        }
    }
    close(fd);
    fd = -1;
    if (o->overwrite == FBCP_OVERWRITE_NEVER)
        rc = renameat2(AT_FDCWD, partial, AT_FDCWD, f->local, RENAME_NOREPLACE);
    else
        rc = rename(partial, f->local);
    if (rc != 0) {
        int err = errno;

        unlink(partial);
        snprintf(detail, detlen, "%s: %s", f->local, strerror(err));
        rv = err == EEXIST ? FB_ERR_EXISTS : FB_ERR_LOCAL_IO;
        goto out;
    }
    /* a sidecar left by an earlier download of this file one by one describes nothing now */
    snprintf(partial, plen, "%s%s.%s.fbpart.json", dir, strcmp(dir, "/") == 0 ? "" : "/", base);
    (void)unlink(partial);
    if (r->last_dir == NULL || strcmp(r->last_dir, dir) != 0) {
        fbcp_pack_sync_dir(r->last_dir);
        free(r->last_dir);
        r->last_dir = dir;
        dir = NULL;
    }
out:
    if (fd >= 0) {
        close(fd);
        if (partial != NULL)
            unlink(partial);
    }
    free(partial);
    free(base);
    free(dir);
    return rv;
}

/* Lands every file of the verified pack, each with its events. */
static fb_err fbcp_pack_land(fbcp_pack_run *r)
{
    json_t *pack = json_object_get(r->answer, "pack"), *e;
    uint64_t total = r->x.size ? r->x.size : 1, udp_left = r->x.bytes_udp;
    size_t i;
    fb_err stop = FB_OK;

    json_array_foreach(pack, i, e)
    {
        const fbcp_pack_file *f = &r->p->v[r->ask[i]];
        const char *err = json_string_value(json_object_get(e, "error"));
        char detail[FBCP_DETAIL_LEN] = "";
        uint64_t off, size;
        const char *reason = NULL;
        unsigned char want[FB_SHA256_LEN], got[FB_SHA256_LEN];
        char hex[FB_SHA256_HEX_LEN + 1];
        unsigned int len = 0;
        fb_err rv = FB_OK;
        fbcp_xfer fx;
        json_t *mt;
        int pol;

        if (fbcp_interrupted)
            return FB_ERR_CONNECTION_LOST;
        if (err != NULL) {
            fb_err code = fb_err_from_name(err);

            if (code == FB_ERR_TOO_LARGE) { /* the server's pack is full: this one on its own */
                size_t idx = r->ask[i];

                rv = fbcp_pack_one_by_one(r, &idx, 1);
                if (rv != FB_OK)
                    return rv;
                continue;
            }
            fbcp_pack_file_xfer(&fx, r, f, f->size);
            fbcp_sanitize(detail, sizeof(detail),
                          json_string_value(json_object_get(e, "detail")) != NULL
                              ? json_string_value(json_object_get(e, "detail"))
                              : "");
            fbcp_report_error(&fx, f->local, code != FB_OK ? code : FB_ERR_PROTOCOL, detail);
            continue;
        }
        off = (uint64_t)json_integer_value(json_object_get(e, "offset"));
        size = (uint64_t)json_integer_value(json_object_get(e, "size"));
        mt = json_object_get(e, "mtime");
        fbcp_pack_file_xfer(&fx, r, f, size);
        /* again, with what the server says now */
        pol = fbcp_download_policy(r->c->opts, f->local, size,
                                   json_is_integer(mt) ? (int64_t)json_integer_value(mt) : -1, &reason, &rv,
                                   detail, sizeof(detail));
        if (pol == 1) {
            fbcp_event_skip(&fx, reason);
            continue;
        }
        if (pol < 0) {
            fbcp_report_error(&fx, f->local, rv, detail);
            continue;
        }
        fbcp_event_start(&fx);
        fx.start_ns = r->x.start_ns;
        if (fb_hex_decode(want, sizeof(want), json_string_value(json_object_get(e, "sha256"))) != FB_OK ||
            EVP_Digest(size > 0 ? r->map + off : (const unsigned char *)"", (size_t)size, got, &len,
                       EVP_sha256(), NULL) != 1) {
            rv = FB_ERR_PROTOCOL;
        } else if (CRYPTO_memcmp(want, got, FB_SHA256_LEN) != 0) {
            rv = FB_ERR_DIGEST_MISMATCH;
            snprintf(detail, sizeof(detail),
                     "its bytes in the pack do not have the SHA-256 the server gave: not kept");
        } else {
            rv = fbcp_pack_write(r, f, e, size > 0 ? r->map + off : NULL, size, detail, sizeof(detail));
        }
        /* the pack's bytes shared out, so that the tree's totals add up */
        fx.bytes = size;
        fx.bytes_udp = r->x.bytes ? size * r->x.bytes_udp / total : 0;
        if (fx.bytes_udp > udp_left)
            fx.bytes_udp = udp_left;
        udp_left -= fx.bytes_udp;
        fx.bytes_http = size - fx.bytes_udp;
        if (rv != FB_OK) {
            fbcp_report_error(&fx, f->local, rv, detail);
            if (fbcp_err_stops_run(rv))
                stop = rv;
            continue;
        }
        fb_hex_encode(hex, got, FB_SHA256_LEN);
        fbcp_event_done(&fx, hex);
    }
    fbcp_pack_sync_dir(r->last_dir);
    return stop;
}

fb_err fbcp_pack_down_run(fbcp_ctx *c, fbcp_pack_down *p)
{
    fbcp_pack_run r;
    char detail[FBCP_DETAIL_LEN] = "";
    long status = 0;
    fb_err rv = FB_OK;

    memset(&r, 0, sizeof(r));
    r.c = c;
    r.p = p;
    fbcp_ranges_init(&r.done);
    fbcp_download_xfer_init(&r.x, c, p->url, p->label, p->root);
    r.x.range_done = fbcp_pack_range_done;
    r.x.missing = fbcp_pack_missing;
    r.x.ctx = &r;
    r.x.start_ns = r.x.last_progress_ns = r.x.rate_mark_ns = fb_time_mono_ns();
    r.ask = malloc((p->n ? p->n : 1) * sizeof(*r.ask));
    if (r.ask == NULL) {
        rv = FB_ERR_NOMEM;
        goto out;
    }
    /* the overwrite policy with the listing's size and time: what it skips is not asked for */
    for (size_t i = 0; i < p->n; i++) {
        const char *reason = NULL;
        fb_err e = FB_OK;
        int pol = fbcp_download_policy(c->opts, p->v[i].local, p->v[i].size, p->v[i].mtime, &reason, &e,
                                       detail, sizeof(detail));
        fbcp_xfer fx;

        fbcp_pack_file_xfer(&fx, &r, &p->v[i], p->v[i].size);
        if (pol == 1)
            fbcp_event_skip(&fx, reason);
        else if (pol < 0)
            fbcp_report_error(&fx, p->v[i].local, e, detail);
        else
            r.ask[r.nask++] = i;
        detail[0] = '\0';
    }
    if (r.nask == 0)
        goto out;
    rv = fbcp_pack_request(&r, &status, detail, sizeof(detail));
    if (rv == FB_OK && r.answer == NULL) {
        /* an older server (400, 404, 405 to "pack"), or a request too large for it (413) */
        fbcp_trace(c->opts, "%s: no download pack (HTTP %ld): %zu files one by one", p->label, status,
                   r.nask);
        rv = fbcp_pack_one_by_one(&r, r.ask, r.nask);
        goto out;
    }
    if (rv == FB_OK && json_object_get(r.answer, "id") != NULL)
        rv = fbcp_pack_session(&r, detail, sizeof(detail));
    if (rv == FB_OK)
        rv = fbcp_pack_check_answer(&r, detail, sizeof(detail));
    if (rv == FB_ERR_TOO_LARGE) {
        fbcp_trace(c->opts, "%s: the pack is too big to hold: %zu files one by one", p->label, r.nask);
        rv = fbcp_pack_one_by_one(&r, r.ask, r.nask);
        goto out;
    }
    if (rv == FB_OK && r.x.session_id == NULL && r.x.size > 0) {
        rv = FB_ERR_PROTOCOL;
        snprintf(detail, sizeof(detail), "the pack answer has data but no session");
    }
    if (rv == FB_OK && r.x.size > 0) {
        fbcp_trace(c->opts, "%s: pack of %zu files, %llu bytes, session %s", p->label, r.nask,
                   (unsigned long long)r.x.size, r.x.session_id);
        rv = fbcp_pack_fetch(&r, detail, sizeof(detail));
    }
    if (rv == FB_OK)
        rv = fbcp_pack_verify(&r, detail, sizeof(detail));
    if (rv != FB_OK) {
        if (!(fbcp_interrupted && rv == FB_ERR_CONNECTION_LOST))
            fbcp_pack_fail_all(&r, rv, detail);
        goto out;
    }
    rv = fbcp_pack_land(&r);
out:
    /* the server removes its staging file */
    if (r.x.session_id != NULL)
        fbcp_session_delete(c, p->url, r.x.session_id);
    fbcp_move_cleanup(&r.x);
    if (r.map != NULL)
        munmap((void *)r.map, (size_t)r.x.size);
    if (r.x.fd >= 0)
        close(r.x.fd);
    json_decref(r.answer);
    free(r.ask);
    free(r.last_dir);
    free(r.x.session_id);
    free(r.x.data_url);
    free(r.x.if_range);
    free(r.x.etag);
    fbcp_ranges_free(&r.done);
    return rv;
}
