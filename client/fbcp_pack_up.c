/* fbcp_pack_up: many small files up to the server as one session (docs/HTTP-API.md, "Packs").
 *
 * A pack is the concatenation of its files' bytes. fbcp reads each file once, into memory
 * (a memfd: at most FBCP_PACK_BYTES), hashing it as it goes; asks the server with one
 * POST sessions which of them it wants (the overwrite policy is the server's, as for one file);
 * sends the bytes of those, in order, as one upload (fbcp_upload_pack: UDP or HTTP(S), switching,
 * resuming, like any file); and reads the result of each file from the commit's answer. So a tree
 * of small files costs a few round trips per pack instead of a few per file.
 *
 * Whatever cannot go in a pack is sent one by one with fbcp_upload_file, which then reports it: a
 * file that cannot be read or changed while it was read, one grown past FBCP_PACK_FILE_MAX, and
 * every file of a pack the server refused as a whole (a server without packs answers 400; a
 * max_json_body smaller than the pack's request, 413). */
#include "fbcp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/evp.h>

typedef struct fbcp_pack_file {
    const fbcp_pack_item *item;
    const char *rel; /* its path below the pack's root */
    uint64_t offset; /* where its bytes are in the memfd */
    struct stat st;
    char sha_hex[FB_SHA256_HEX_LEN + 1];
    int send; /* the server wants it */
} fbcp_pack_file;

typedef struct fbcp_pack_up {
    fbcp_ctx *c;
    fbcp_pack_file *files; /* those read into the memfd, in request order */
    size_t n;
    int memfd;  /* every file's bytes */
    int sendfd; /* the pack as sent: MEMFD itself, or the wanted files copied out of it */
    unsigned char *buf;
} fbcp_pack_up;

static fb_err fbcp_write_all(int fd, const unsigned char *p, size_t len, uint64_t off)
{
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return FB_ERR_LOCAL_IO;
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return FB_OK;
}

/* Reads ITEM whole into the memfd at OFF, hashing it. Non-zero: the file is left to be sent on its
 * own (it reports what is wrong with it then). */
static int fbcp_pack_read(fbcp_pack_up *p, fbcp_pack_file *f, uint64_t off)
{
    struct stat now;
    unsigned char digest[FB_SHA256_LEN];
    unsigned int dlen = 0;
    size_t got = 0;
    int fd = open(f->item->local, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    int bad = 1;

    if (fd < 0)
        return 1;
    if (fstat(fd, &f->st) != 0 || !S_ISREG(f->st.st_mode) || (uint64_t)f->st.st_size > FBCP_PACK_FILE_MAX)
        goto out;
    while (got < (size_t)f->st.st_size + 1) { /* one byte more: a file that grew is seen */
        ssize_t r = read(fd, p->buf + got, FBCP_PACK_FILE_MAX + 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto out;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    /* what was read is the file as it was listed and stays so: else it goes alone, where a
     * change while it is read is caught and named */
    if (got != (size_t)f->st.st_size || fstat(fd, &now) != 0 || now.st_size != f->st.st_size ||
        now.st_mtim.tv_sec != f->st.st_mtim.tv_sec || now.st_mtim.tv_nsec != f->st.st_mtim.tv_nsec)
        goto out;
    if (EVP_Digest(p->buf, got, digest, &dlen, EVP_sha256(), NULL) != 1 || dlen != FB_SHA256_LEN)
        goto out;
    if (fbcp_write_all(p->memfd, p->buf, got, off) != FB_OK)
        goto out;
    fb_hex_encode(f->sha_hex, digest, FB_SHA256_LEN);
    f->offset = off;
    bad = 0;
out:
    close(fd);
    return bad;
}

/* fbcp_pack_build_fn: the wanted files, in order, and their SHA-256 as one stream. */
static fb_err fbcp_pack_build(void *arg, json_t *answer, int *pfd, uint64_t *psize,
                              char sha_hex[FB_SHA256_HEX_LEN + 1], char *detail, size_t detlen)
{
    fbcp_pack_up *p = arg;
    json_t *decisions = json_object_get(answer, "pack");
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char digest[FB_SHA256_LEN];
    unsigned int dlen = 0;
    uint64_t at = 0;
    size_t wanted = 0;
    fb_err rv = FB_OK;

    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return FB_ERR_NOMEM;
    }
    if (!json_is_array(decisions) || json_array_size(decisions) != p->n) {
        snprintf(detail, detlen, "the pack's answer does not list every file");
        rv = FB_ERR_PROTOCOL;
    }
    for (size_t i = 0; rv == FB_OK && i < p->n; i++) {
        json_t *d = json_array_get(decisions, i);
        json_t *off = json_object_get(d, "offset");

        p->files[i].send = json_is_true(json_object_get(d, "send"));
        if (!p->files[i].send)
            continue;
        if (!json_is_integer(off) || (uint64_t)json_integer_value(off) != at) {
            snprintf(detail, detlen, "the pack's answer places %s elsewhere", p->files[i].rel);
            rv = FB_ERR_PROTOCOL;
            break;
        }
        at += (uint64_t)p->files[i].st.st_size;
        wanted++;
    }
    if (rv == FB_OK && wanted != p->n) {
        /* some are skipped: the pack is the others, copied out */
        p->sendfd = memfd_create("fbcp-pack-send", MFD_CLOEXEC);
        if (p->sendfd < 0)
            rv = FB_ERR_LOCAL_IO;
    } else {
        p->sendfd = p->memfd;
    }
    at = 0;
    for (size_t i = 0; rv == FB_OK && i < p->n; i++) {
        size_t len = (size_t)p->files[i].st.st_size;

        if (!p->files[i].send)
            continue;
        if (len > 0 && pread(p->memfd, p->buf, len, (off_t)p->files[i].offset) != (ssize_t)len) {
            rv = FB_ERR_LOCAL_IO;
            break;
        }
        if (EVP_DigestUpdate(md, p->buf, len) != 1)
            rv = FB_ERR_INTERNAL;
        else if (p->sendfd != p->memfd)
            rv = fbcp_write_all(p->sendfd, p->buf, len, at);
        at += len;
    }
    if (rv == FB_OK && (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != FB_SHA256_LEN))
        rv = FB_ERR_INTERNAL;
    EVP_MD_CTX_free(md);
    if (rv == FB_ERR_LOCAL_IO)
        snprintf(detail, detlen, "cannot build the pack in memory: %s", strerror(errno));
    if (rv != FB_OK)
        return rv;
    fb_hex_encode(sha_hex, digest, FB_SHA256_LEN);
    *pfd = p->sendfd;
    *psize = at;
    return FB_OK;
}

/* The POST sessions body of the pack under ROOT. */
static json_t *fbcp_pack_request(const fbcp_pack_up *p, const char *root)
{
    const fbcp_opts *o = p->c->opts;
    json_t *entries = json_array();
    json_t *req = json_pack("{s:s, s:s, s:s}", "direction", "upload", "path", root, "overwrite",
                            fbcp_overwrite_names[o->overwrite]);
    int times = o->preserve_times || o->overwrite >= FBCP_OVERWRITE_OLDER;

    if (entries == NULL || req == NULL) {
        json_decref(entries);
        json_decref(req);
        return NULL;
    }
    for (size_t i = 0; i < p->n; i++) {
        const fbcp_pack_file *f = &p->files[i];
        char mode[16];
        json_t *e;

        snprintf(mode, sizeof(mode), "%04o", (unsigned)(f->st.st_mode & 07777));
        e = json_pack("{s:s, s:I, s:s, s:s}", "path", f->rel, "size", (json_int_t)f->st.st_size, "sha256",
                      f->sha_hex, "mode", mode);
        if (e != NULL && times) {
            json_object_set_new(e, "mtime", json_integer((json_int_t)f->st.st_mtim.tv_sec));
            json_object_set_new(e, "mtime_ns", json_integer((json_int_t)f->st.st_mtim.tv_nsec));
        }
        if (e == NULL || json_array_append_new(entries, e) != 0) {
            json_decref(entries);
            json_decref(req);
            return NULL;
        }
    }
    json_object_set_new(req, "pack", entries);
    return req;
}

/* One file's outcome as its own events, so that --json, the bar and the summaries count files as
 * when they move one by one. Its bytes are the pack's counters in proportion. */
static void fbcp_pack_file_event(const fbcp_pack_up *p, const fbcp_pack_file *f, const fbcp_url *url,
                                 const fbcp_xfer *pack, const char *skip_reason)
{
    fbcp_xfer x;
    uint64_t size = (uint64_t)f->st.st_size;
    double share = pack != NULL && pack->size > 0 ? (double)size / (double)pack->size : 0;

    memset(&x, 0, sizeof(x));
    x.direction = FBCP_UPLOAD;
    x.opts = p->c->opts;
    x.local = f->item->local;
    x.remote = f->item->remote;
    x.url = url;
    x.fd = -1;
    x.poll_fd = -1;
    x.size = size;
    x.transport_name = pack != NULL && pack->bytes_udp > 0 ? "udp" : p->c->transport->ops->name;
    if (skip_reason != NULL) {
        fbcp_event_skip(&x, skip_reason);
        return;
    }
    fbcp_event_start(&x);
    x.start_ns = pack->start_ns != 0 ? pack->start_ns : x.start_ns;
    x.bytes = (uint64_t)((double)pack->bytes * share + 0.5);
    x.bytes_udp = (uint64_t)((double)pack->bytes_udp * share + 0.5);
    x.bytes_http = (uint64_t)((double)pack->bytes_http * share + 0.5);
    x.bytes_udp_retx = (uint64_t)((double)pack->bytes_udp_retx * share + 0.5);
    fbcp_event_done(&x, f->sha_hex);
}

/* Reads a per-file problem ({"error": name, "detail": ...}) and reports it for F. */
static void fbcp_pack_file_error(const fbcp_pack_file *f, json_t *d)
{
    const char *name = json_string_value(json_object_get(d, "error"));
    const char *why = json_string_value(json_object_get(d, "detail"));
    fb_err e = name != NULL ? fb_err_from_name(name) : FB_ERR_PROTOCOL;

    if (e == FB_OK)
        e = FB_ERR_PROTOCOL;
    fbcp_report_error(NULL, f->item->local, e, why);
}

/* The outcome of every file of the pack, from the creation answer and the commit's. */
static void fbcp_pack_outcomes(fbcp_pack_up *p, const fbcp_url *url, json_t *answer, json_t *commit,
                               const fbcp_xfer *counts)
{
    json_t *decisions = json_object_get(answer, "pack");
    json_t *results = json_object_get(commit, "pack");
    size_t r = 0;

    for (size_t i = 0; i < p->n; i++) {
        const fbcp_pack_file *f = &p->files[i];
        json_t *d = json_array_get(decisions, i);

        if (!f->send) {
            const char *reason = json_string_value(json_object_get(d, "reason"));
            if (json_object_get(d, "error") != NULL)
                fbcp_pack_file_error(f, d);
            else
                fbcp_pack_file_event(p, f, url, counts,
                                     reason != NULL && strcmp(reason, "newer") == 0 ? "newer" : "identical");
            continue;
        }
        /* the commit lists the files it was sent, in order; a repeated commit (the first answer
         * was lost) may list none: they were committed then */
        json_t *res = json_array_get(results, r++);
        const char *result = json_string_value(json_object_get(res, "result"));
        const char *path = json_string_value(json_object_get(res, "path"));

        if (res != NULL && (path == NULL || strcmp(path, f->rel) != 0)) {
            fbcp_report_error(NULL, f->item->local, FB_ERR_PROTOCOL, "the commit's results are out of order");
        } else if (res == NULL || (result != NULL && strcmp(result, "committed") == 0)) {
            fbcp_pack_file_event(p, f, url, counts, NULL);
        } else if (result != NULL && strcmp(result, "skipped") == 0) {
            const char *reason = json_string_value(json_object_get(res, "reason"));
            fbcp_pack_file_event(p, f, url, counts,
                                 reason != NULL && strcmp(reason, "newer") == 0 ? "newer" : "identical");
        } else {
            fbcp_pack_file_error(f, res);
        }
    }
}

/* A pack the server refused as a whole that its files may still pass one by one. */
static int fbcp_pack_refused(fb_err e)
{
    return e == FB_ERR_BAD_REQUEST || e == FB_ERR_BAD_PATH || e == FB_ERR_PATH_ESCAPE ||
           e == FB_ERR_NOT_FOUND || e == FB_ERR_TOO_LARGE || e == FB_ERR_PROTOCOL || e == FB_ERR_CHANGED ||
           e == FB_ERR_DIGEST_MISMATCH || e == FB_ERR_METHOD;
}

fb_err fbcp_upload_pack_files(fbcp_ctx *c, const fbcp_url *url, const char *root, const fbcp_pack_item *items,
                              size_t n)
{
    fbcp_pack_up p;
    unsigned char *alone = calloc(n > 0 ? n : 1, 1); /* sent one by one */
    json_t *request = NULL, *answer = NULL, *commit = NULL;
    char detail[FBCP_DETAIL_LEN] = "";
    char label[FBCP_DETAIL_LEN];
    size_t rootlen = strlen(root);
    uint64_t off = 0;
    fbcp_xfer counts;
    fb_err rv = FB_OK, e;

    memset(&p, 0, sizeof(p));
    memset(&counts, 0, sizeof(counts));
    p.c = c;
    p.memfd = p.sendfd = -1;
    p.files = calloc(n > 0 ? n : 1, sizeof(*p.files));
    p.buf = malloc(FBCP_PACK_FILE_MAX + 1);
    if (alone == NULL || p.files == NULL || p.buf == NULL) {
        fbcp_report_error(NULL, n > 0 ? items[0].local : root, FB_ERR_NOMEM, "cannot make a pack");
        rv = FB_ERR_NOMEM;
        goto out;
    }
    p.memfd = memfd_create("fbcp-pack", MFD_CLOEXEC);
    for (size_t i = 0; i < n; i++) {
        fbcp_pack_file *f = &p.files[p.n];
        const char *rel = items[i].remote;

        if (rootlen > 0) /* ROOT/rel: the tree gave every item a path below ROOT */
            rel = strncmp(rel, root, rootlen) == 0 && rel[rootlen] == '/' ? rel + rootlen + 1 : NULL;
        f->item = &items[i];
        f->rel = rel;
        if (p.memfd < 0 || rel == NULL || rel[0] == '\0' || fbcp_pack_read(&p, f, off) != 0) {
            alone[i] = 1;
            continue;
        }
        off += (uint64_t)f->st.st_size;
        p.n++;
    }
    if (rv == FB_OK && p.n > 0) {
        request = fbcp_pack_request(&p, root);
        if (request == NULL)
            rv = FB_ERR_NOMEM;
    }
    if (rv == FB_OK && p.n > 0) {
        snprintf(label, sizeof(label), "%s: pack of %zu files", p.files[0].item->local, p.n);
        fbcp_trace(c->opts, "%s (%llu bytes) to %s", label, (unsigned long long)off, root[0] ? root : "/");
        e = fbcp_upload_pack(c, url, label, root, request, fbcp_pack_build, &p, &answer, &commit, &counts,
                             detail, sizeof(detail));
        if (e == FB_OK) {
            fbcp_pack_outcomes(&p, url, answer, commit, &counts);
        } else if (fbcp_pack_refused(e) && !fbcp_interrupted) {
            /* e.g. a server without packs: each file goes alone */
            fbcp_trace(c->opts, "%s: %s (%s): sending its files one by one", label, fb_err_message(e),
                       detail);
            for (size_t i = 0, k = 0; i < n; i++)
                if (!alone[i] && k < p.n && p.files[k].item == &items[i]) {
                    alone[i] = 1;
                    k++;
                }
            p.n = 0;
        } else {
            if (!(fbcp_interrupted && e == FB_ERR_CONNECTION_LOST))
                fbcp_report_error(NULL, label, e, detail);
            rv = e;
        }
    }
    for (size_t i = 0; i < n && (rv == FB_OK || !fbcp_err_stops_run(rv)) && !fbcp_interrupted; i++) {
        if (!alone[i])
            continue;
        e = fbcp_upload_file(c, url, items[i].local, items[i].remote, 0);
        if (e != FB_OK && (rv == FB_OK || fbcp_err_stops_run(e)))
            rv = e;
    }
out:
    json_decref(request);
    json_decref(answer);
    json_decref(commit);
    if (p.sendfd >= 0 && p.sendfd != p.memfd)
        close(p.sendfd);
    if (p.memfd >= 0)
        close(p.memfd);
    free(p.files);
    free(p.buf);
    free(alone);
    return rv;
}
