/* fbcp_http_data: the HTTP(S) data transport: a curl multi loop with --connections easy
 * handles, each moving one ranged request at a time (PUT with Content-Range for uploads, GET
 * with Range/If-Range for downloads), at file offsets through pread/pwrite. A failed request is
 * retried after a backoff; for uploads the server is asked again what is missing in that range
 * first (the request may have completed some chunks, and re-sending them would be refused with
 * 416). The shared libcurl settings and control requests are fbcp_http.c. */
#include "config.h"

#include "fbcp.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

typedef struct fbcp_req {
    uint64_t off;
    uint64_t len;
    int attempts;        /* failures so far of this piece of the file */
    int resync;          /* upload: ask the server what is missing before sending */
    uint64_t not_before; /* monotonic ns */
} fbcp_req;

typedef struct fbcp_engine fbcp_engine;

typedef struct fbcp_slot {
    fbcp_engine *eng;
    CURL *easy;
    int busy;
    fbcp_req req;
    uint64_t moved;     /* body bytes of this request read from / written to the file */
    uint64_t done_upto; /* download: absolute offset up to which range_done was called */
    struct curl_slist *hdrs;
    int checked; /* download: status and Content-Range looked at */
    enum {
        FBCP_SLOT_OK,
        FBCP_SLOT_ERRBODY,  /* an error answer: its body is kept for the problem document */
        FBCP_SLOT_CHANGED,  /* a 200 for another version of the file */
        FBCP_SLOT_BADRANGE, /* a 206 not matching the request */
        FBCP_SLOT_LOCAL,    /* local read/write error */
        FBCP_SLOT_ENOUGH,   /* a whole-file 200 was read up to the end of the request, then cut */
    } state;
    uint64_t body_base; /* download: file offset of the answer's first body byte */
    uint64_t received;  /* download: body bytes received */
    int whole;          /* download: the answer is a 200 with the whole file */
    int local_errno;
    fbcp_buf body; /* answer body (upload JSON, or an error document) */
    uint64_t t0;
    char errbuf[CURL_ERROR_SIZE];
} fbcp_slot;

struct fbcp_engine {
    fbcp_http *h;
    fbcp_xfer *x;
    CURLM *multi;
    fbcp_slot slots[FBCP_MAX_CONNECTIONS];
    int nslots;
    fbcp_req *q;
    size_t qn, qcap;
    uint64_t qbytes; /* sum of the queued requests' lengths */
    fb_err err;
    char *detail;
    size_t detlen;
    uint64_t last_yield_check_ns; /* x->yield_check: at most every 20 ms unless UDP is readable */
    int udp_readable;
};

typedef struct fbcp_http_transport {
    fbcp_http *h;
    CURLM *multi;
    CURL *easy[FBCP_MAX_CONNECTIONS];
    int neasy;
} fbcp_http_transport;

static fb_err fbcp_engine_push(fbcp_engine *g, uint64_t off, uint64_t len, int attempts, int resync,
                               uint64_t not_before)
{
    if (g->qn == g->qcap) {
        size_t ncap = g->qcap ? g->qcap * 2 : 64;
        fbcp_req *nq = realloc(g->q, ncap * sizeof(*nq));
        if (nq == NULL)
            return FB_ERR_NOMEM;
        g->q = nq;
        g->qcap = ncap;
    }
    g->q[g->qn].off = off;
    g->q[g->qn].len = len;
    g->qbytes += len;
    g->q[g->qn].attempts = attempts;
    g->q[g->qn].resync = resync;
    g->q[g->qn].not_before = not_before;
    g->qn++;
    return FB_OK;
}

/* Queues RANGES split into request-sized pieces. */
static fb_err fbcp_engine_push_ranges(fbcp_engine *g, const fbcp_ranges *ranges, int attempts)
{
    fbcp_ranges split;
    fb_err rv;

    fbcp_ranges_init(&split);
    rv = fbcp_ranges_split(&split, ranges, g->x->opts->request_size, g->x->chunk_size);
    for (size_t i = 0; rv == FB_OK && i < split.n; i++)
        rv = fbcp_engine_push(g, split.v[i].offset, split.v[i].length, attempts, 0, 0);
    fbcp_ranges_free(&split);
    return rv;
}

static void fbcp_engine_fail(fbcp_engine *g, fb_err e, const char *detail)
{
    if (g->err == FB_OK) {
        g->err = e;
        snprintf(g->detail, g->detlen, "%s", detail != NULL ? detail : "");
    }
}

static size_t fbcp_upload_read(char *ptr, size_t size, size_t nitems, void *ud)
{
    fbcp_slot *s = ud;
    fbcp_xfer *x = s->eng->x;
    size_t want = size * nitems;
    ssize_t n;

    if (fbcp_interrupted)
        return CURL_READFUNC_ABORT;
    if (want > s->req.len - s->moved)
        want = (size_t)(s->req.len - s->moved);
    if (want == 0)
        return 0;
    do
        n = pread(x->fd, ptr, want, (off_t)(s->req.off + s->moved));
    while (n < 0 && errno == EINTR);
    if (n <= 0) {
        /* the file shrank or cannot be read: the server must not get a short body */
        s->state = FBCP_SLOT_LOCAL;
        s->local_errno = n < 0 ? errno : 0;
        return CURL_READFUNC_ABORT;
    }
    /* hashed here, from this buffer, when it is next in file order: the file is read once */
    fbcp_upload_hash_sent(x, s->req.off + s->moved, ptr, (size_t)n);
    s->moved += (uint64_t)n;
    x->bytes += (uint64_t)n;
    x->bytes_http += (uint64_t)n;
    return (size_t)n;
}

static int fbcp_upload_seek(void *ud, curl_off_t offset, int origin)
{
    fbcp_slot *s = ud;
    if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > s->req.len)
        return CURL_SEEKFUNC_CANTSEEK;
    s->moved = (uint64_t)offset;
    return CURL_SEEKFUNC_OK;
}

/* Reports the chunks a download request has completed, up to absolute offset END. */
static fb_err fbcp_download_mark(fbcp_slot *s, uint64_t end)
{
    fbcp_xfer *x = s->eng->x;
    uint64_t req_end = s->req.off + s->req.len;
    uint64_t upto = end == req_end ? end : end - end % x->chunk_size;

    if (upto <= s->done_upto)
        return FB_OK;
    {
        uint64_t from = s->done_upto;
        s->done_upto = upto;
        x->bytes_done += upto - from;
        return x->range_done != NULL ? x->range_done(x, from, upto - from) : FB_OK;
    }
}

/* Whether an answer is about the file we started with: its ETag equals the one HEAD gave (weak
 * comparison: "W/" ignored), else its Last-Modified does. */
static int fbcp_slot_same_version(fbcp_slot *s)
{
    fbcp_xfer *x = s->eng->x;
    struct curl_header *hd = NULL;

    if (x->etag != NULL && curl_easy_header(s->easy, "ETag", 0, CURLH_HEADER, -1, &hd) == CURLHE_OK &&
        hd != NULL)
        return strcmp(strncmp(hd->value, "W/", 2) == 0 ? hd->value + 2 : hd->value, x->etag) == 0;
    if (x->last_modified != NULL &&
        curl_easy_header(s->easy, "Last-Modified", 0, CURLH_HEADER, -1, &hd) == CURLHE_OK && hd != NULL)
        return strcmp(hd->value, x->last_modified) == 0;
    return 1; /* nothing to compare with */
}

/* A 200 answer to a ranged GET carries the whole file. Apache sends it when the range covers the
 * whole file, and a server may ignore Range altogether. It is usable when it is the same version
 * of the file and has the expected length. */
static int fbcp_slot_same_file(fbcp_slot *s)
{
    fbcp_xfer *x = s->eng->x;
    curl_off_t len = -1;

    if (curl_easy_getinfo(s->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len) == CURLE_OK && len >= 0 &&
        (uint64_t)len != x->size)
        return 0;
    if (x->etag == NULL && x->last_modified == NULL)
        return s->req.off == 0 && s->req.len == x->size;
    return fbcp_slot_same_version(s);
}

static size_t fbcp_slot_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    fbcp_slot *s = ud;
    fbcp_xfer *x = s->eng->x;
    size_t n = size * nmemb;
    uint64_t pos, want_from, want_to;

    if (x->direction == FBCP_UPLOAD || s->state == FBCP_SLOT_ERRBODY)
        return fbcp_buf_write(ptr, size, nmemb, &s->body) == n || s->body.overflow ? n : 0;
    if (!s->checked) {
        long status = 0;
        struct curl_header *hd = NULL;
        uint64_t first, last, complete;

        s->checked = 1;
        curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status == 200) {
            if (!fbcp_slot_same_file(s)) {
                s->state = FBCP_SLOT_CHANGED;
                return 0;
            }
            s->body_base = 0;
            s->whole = 1;
        } else if (status != 206) {
            s->state = FBCP_SLOT_ERRBODY;
            return fbcp_buf_write(ptr, size, nmemb, &s->body) == n || s->body.overflow ? n : 0;
        } else if (!fbcp_slot_same_version(s)) {
            s->state = FBCP_SLOT_CHANGED;
            return 0;
        } else if (curl_easy_header(s->easy, "Content-Range", 0, CURLH_HEADER, -1, &hd) != CURLHE_OK ||
                   hd == NULL || fbcp_parse_content_range(&first, &last, &complete, hd->value) != FB_OK ||
                   first != s->req.off || last != s->req.off + s->req.len - 1 || complete != x->size) {
            s->state = FBCP_SLOT_BADRANGE;
            return 0;
        } else {
            s->body_base = s->req.off;
        }
    }
    /* this piece of the body is [pos, pos + n) of the file; keep what falls inside the request */
    pos = s->body_base + s->received;
    s->received += n;
    want_from = s->req.off + s->moved;
    want_to = s->req.off + s->req.len;
    if (pos > want_from) {
        s->state = FBCP_SLOT_BADRANGE;
        return 0;
    }
    if (pos + n > want_from) {
        size_t skip = (size_t)(want_from - pos);
        size_t take = n - skip;
        if (want_from + take > want_to)
            take = (size_t)(want_to - want_from);
        if (fb_pwrite_all(x->fd, ptr + skip, take, s->req.off + s->moved) != FB_OK) {
            s->state = FBCP_SLOT_LOCAL;
            s->local_errno = errno;
            return 0;
        }
        s->moved += take;
        x->bytes += take;
        x->bytes_http += take;
        if (fbcp_download_mark(s, s->req.off + s->moved) != FB_OK) {
            s->state = FBCP_SLOT_LOCAL;
            s->local_errno = EIO;
            return 0;
        }
    }
    if (s->body_base + s->received > want_to) {
        /* a whole-file answer past the end of this request: stop reading it */
        if (!s->whole) {
            s->state = FBCP_SLOT_BADRANGE; /* a 206 longer than its Content-Range */
            return 0;
        }
        s->state = FBCP_SLOT_ENOUGH;
        return 0;
    }
    return n;
}

/* --limit-rate share of a request about to start: the limit divided among the requests that can
 * run at once (fewer than the connections near the end of a file). */
static curl_off_t fbcp_engine_share(const fbcp_engine *g)
{
    uint64_t n = 1 + g->qn, per;

    for (int i = 0; i < g->nslots; i++)
        n += (uint64_t)g->slots[i].busy;
    if (n > (uint64_t)g->nslots)
        n = (uint64_t)g->nslots;
    per = g->x->opts->limit_rate / n;
    return (curl_off_t)(per > 0 ? per : 1);
}

/* True if the upload request R carries the whole file and asks the server to commit it. */
static int fbcp_slot_commits(const fbcp_xfer *x, const fbcp_req *r)
{
    return x->direction == FBCP_UPLOAD && x->commit_sha != NULL && x->commit_sha[0] != '\0' && r->off == 0 &&
           r->len == x->size;
}

/* True if the answer to an upload request is a commit document with state "done". */
static int fbcp_slot_says_done(const fbcp_slot *s)
{
    json_t *doc =
        s->body.len > 0 && !s->body.overflow ? json_loadb(s->body.data, s->body.len, 0, NULL) : NULL;
    const char *state = json_string_value(json_object_get(doc, "state"));
    int done = state != NULL && strcmp(state, "done") == 0;

    json_decref(doc);
    return done;
}

static fb_err fbcp_slot_start(fbcp_engine *g, fbcp_slot *s, const fbcp_req *r)
{
    fbcp_xfer *x = g->x;
    char hdr[160];
    CURL *e = s->easy;

    s->req = *r;
    s->moved = 0;
    s->done_upto = r->off;
    s->checked = 0;
    s->body_base = 0;
    s->received = 0;
    s->whole = 0;
    s->state = FBCP_SLOT_OK;
    s->local_errno = 0;
    free(s->body.data);
    memset(&s->body, 0, sizeof(s->body));
    s->body.max = 64 * 1024;
    curl_slist_free_all(s->hdrs);
    s->hdrs = NULL;
    s->errbuf[0] = '\0';
    s->t0 = fb_time_mono_ns();

    curl_easy_reset(e);
    if (fbcp_http_setup(g->h, e, s->errbuf) != FB_OK)
        return FB_ERR_INTERNAL;
    curl_easy_setopt(e, CURLOPT_URL, x->data_url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, s);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, fbcp_slot_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    if (x->direction == FBCP_UPLOAD) {
        snprintf(hdr, sizeof(hdr), "Content-Range: bytes %llu-%llu/%llu", (unsigned long long)r->off,
                 (unsigned long long)(r->off + r->len - 1), (unsigned long long)x->size);
        s->hdrs = curl_slist_append(s->hdrs, hdr);
        s->hdrs = curl_slist_append(s->hdrs, "Content-Type: application/octet-stream");
        s->hdrs = curl_slist_append(s->hdrs, "Expect:");
        if (fbcp_slot_commits(x, r)) {
            /* the whole file in one request: the server commits it too (no commit round trip) */
            snprintf(hdr, sizeof(hdr), "Fallback-Commit: sha256=%s", x->commit_sha);
            s->hdrs = curl_slist_append(s->hdrs, hdr);
        }
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->len);
        curl_easy_setopt(e, CURLOPT_READFUNCTION, fbcp_upload_read);
        curl_easy_setopt(e, CURLOPT_READDATA, s);
        curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, fbcp_upload_seek);
        curl_easy_setopt(e, CURLOPT_SEEKDATA, s);
        /* Larger reads from the file per call: fewer callbacks and TLS writes per byte. */
        curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 1024L * 1024L);
        if (g->x->opts->limit_rate > 0)
            curl_easy_setopt(e, CURLOPT_MAX_SEND_SPEED_LARGE, fbcp_engine_share(g));
        fbcp_trace(x->opts, "> PUT %s bytes %llu-%llu/%llu", x->data_url, (unsigned long long)r->off,
                   (unsigned long long)(r->off + r->len - 1), (unsigned long long)x->size);
    } else {
        snprintf(hdr, sizeof(hdr), "Range: bytes=%llu-%llu", (unsigned long long)r->off,
                 (unsigned long long)(r->off + r->len - 1));
        s->hdrs = curl_slist_append(s->hdrs, hdr);
        if (x->if_range != NULL && strlen(x->if_range) < sizeof(hdr) - 16) {
            snprintf(hdr, sizeof(hdr), "If-Range: %s", x->if_range);
            s->hdrs = curl_slist_append(s->hdrs, hdr);
        }
        if (g->x->opts->limit_rate > 0)
            curl_easy_setopt(e, CURLOPT_MAX_RECV_SPEED_LARGE, fbcp_engine_share(g));
        fbcp_trace(x->opts, "> GET %s bytes=%llu-%llu", x->data_url, (unsigned long long)r->off,
                   (unsigned long long)(r->off + r->len - 1));
    }
    if (s->hdrs == NULL)
        return FB_ERR_NOMEM;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->hdrs);
    if (curl_multi_add_handle(g->multi, e) != CURLM_OK)
        return FB_ERR_INTERNAL;
    s->busy = 1;
    return FB_OK;
}

/* Requeues what is left of a failed request after a backoff, or fails the transfer once the
 * piece has failed more than --retries times. E/DETAIL say why it failed. */
static void fbcp_engine_retry(fbcp_engine *g, fbcp_slot *s, fb_err e, const char *detail)
{
    fbcp_xfer *x = g->x;
    fbcp_req r = s->req;
    uint64_t now = fb_time_mono_ns();

    if (x->direction == FBCP_DOWNLOAD && s->done_upto > r.off) {
        /* the chunks already written are kept; progress earns a fresh retry budget */
        r.len -= s->done_upto - r.off;
        r.off = s->done_upto;
        r.attempts = 0;
    }
    if (r.len == 0)
        return;
    r.attempts++;
    if (r.attempts > x->opts->retries || fbcp_interrupted) {
        fbcp_engine_fail(g, e, detail);
        return;
    }
    fbcp_trace(x->opts, "retry %d/%d of bytes %llu-%llu in %ld ms (%s%s%s)", r.attempts, x->opts->retries,
               (unsigned long long)r.off, (unsigned long long)(r.off + r.len - 1),
               fbcp_backoff_ms(r.attempts), fb_err_message(e), detail[0] ? ": " : "", detail);
    if (fbcp_engine_push(g, r.off, r.len, r.attempts, x->direction == FBCP_UPLOAD,
                         now + (uint64_t)fbcp_backoff_ms(r.attempts) * 1000000ull) != FB_OK)
        fbcp_engine_fail(g, FB_ERR_NOMEM, NULL);
}

static void fbcp_slot_finish(fbcp_engine *g, fbcp_slot *s, CURLcode c)
{
    fbcp_xfer *x = g->x;
    long status = 0;
    char detail[FBCP_DETAIL_LEN];
    fb_err e;

    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(g->multi, s->easy);
    s->busy = 0;
    detail[0] = '\0';
    fbcp_trace(x->opts, "< %s bytes %llu-%llu: %ld%s%s (%llu bytes, %.0f ms)",
               x->direction == FBCP_UPLOAD ? "PUT" : "GET", (unsigned long long)s->req.off,
               (unsigned long long)(s->req.off + s->req.len - 1), status, c != CURLE_OK ? " " : "",
               c != CURLE_OK ? curl_easy_strerror(c) : "", (unsigned long long)s->moved,
               (double)(fb_time_mono_ns() - s->t0) / 1e6);

    if (s->state == FBCP_SLOT_LOCAL) {
        /* a full local disk too: "disk_full" names the server's disk */
        e = s->local_errno == ENOMEM ? FB_ERR_NOMEM : FB_ERR_LOCAL_IO;
        if (s->local_errno == 0)
            snprintf(detail, sizeof(detail), "the file changed size during the transfer");
        else
            snprintf(detail, sizeof(detail), "cannot %s: %s", x->direction == FBCP_UPLOAD ? "read" : "write",
                     strerror(s->local_errno));
        fbcp_engine_fail(g, e, detail);
        return;
    }
    if (s->state == FBCP_SLOT_ENOUGH && s->moved == s->req.len) {
        if (fbcp_download_mark(s, s->req.off + s->req.len) != FB_OK)
            fbcp_engine_fail(g, FB_ERR_LOCAL_IO, NULL);
        return;
    }
    if (s->state == FBCP_SLOT_CHANGED) {
        fbcp_engine_fail(g, FB_ERR_CHANGED, "the server answered with another version of the file");
        return;
    }
    if (s->state == FBCP_SLOT_BADRANGE) {
        fbcp_engine_fail(g, FB_ERR_PROTOCOL, "the answer's Content-Range does not match the request");
        return;
    }
    if (c != CURLE_OK && s->state != FBCP_SLOT_ERRBODY) {
        e = fbcp_curl_error(s->easy, c, s->errbuf, detail, sizeof(detail));
        if (fbcp_curl_retryable(c) && e != FB_ERR_TLS && !fbcp_interrupted)
            fbcp_engine_retry(g, s, e, detail);
        else
            fbcp_engine_fail(g, e, detail);
        return;
    }
    if (status >= 200 && status < 300 && s->state == FBCP_SLOT_OK) {
        if (x->direction == FBCP_UPLOAD) {
            x->bytes_done += s->req.len;
            if (fbcp_slot_commits(x, &s->req))
                x->committed = fbcp_slot_says_done(s);
            if (x->range_done != NULL && x->range_done(x, s->req.off, s->req.len) != FB_OK)
                fbcp_engine_fail(g, FB_ERR_LOCAL_IO, NULL);
            return;
        }
        if (s->moved == s->req.len) {
            if (fbcp_download_mark(s, s->req.off + s->req.len) != FB_OK)
                fbcp_engine_fail(g, FB_ERR_LOCAL_IO, NULL);
            return;
        }
        fbcp_engine_retry(g, s, FB_ERR_CONNECTION_LOST, "the answer ended early");
        return;
    }
    {
        json_t *doc = s->body.len > 0 ? json_loadb(s->body.data, s->body.len, 0, NULL) : NULL;
        e = fbcp_problem_from(status, doc, detail, sizeof(detail));
        json_decref(doc);
    }
    if (status == 409 && e == FB_ERR_SESSION_STATE && fbcp_slot_commits(x, &s->req)) {
        /* the session is not active any more: an earlier attempt of this request wrote the data
         * and committed (or is committing) it, and its answer was lost. POST commit, which
         * follows, says how it ended (done: the same answer again). */
        x->bytes_done += s->req.len;
        if (x->range_done != NULL && x->range_done(x, s->req.off, s->req.len) != FB_OK)
            fbcp_engine_fail(g, FB_ERR_LOCAL_IO, NULL);
        return;
    }
    if (x->direction == FBCP_UPLOAD && (status == 416 || status == 404)) {
        /* chunks of this range completed meanwhile (416), or the server lost the session (404):
         * ask again what is missing (the refresh re-creates a lost session) */
        fbcp_engine_retry(g, s, e, detail);
        return;
    }
    if (fbcp_status_retryable(status)) {
        fbcp_engine_retry(g, s, e, detail);
        return;
    }
    fbcp_engine_fail(g, e, detail);
}

/* Upload: replaces queue entry I (flagged resync) with what the server says is still missing. */
static void fbcp_engine_resync(fbcp_engine *g, size_t i)
{
    fbcp_xfer *x = g->x;
    fbcp_req r = g->q[i];
    fbcp_ranges missing;
    char detail[FBCP_DETAIL_LEN];
    fb_err e;

    g->qbytes -= g->q[i].len;
    memmove(&g->q[i], &g->q[i + 1], (g->qn - i - 1) * sizeof(*g->q));
    g->qn--;
    fbcp_ranges_init(&missing);
    detail[0] = '\0';
    e = x->refresh != NULL ? x->refresh(x, &missing, r.off, r.len, detail, sizeof(detail)) : FB_ERR_INTERNAL;
    if (e == FB_OK) {
        uint64_t left = fbcp_ranges_total(&missing);
        if (left < r.len)
            x->bytes_done += r.len - left;
        e = fbcp_engine_push_ranges(g, &missing, left < r.len ? 0 : r.attempts);
        if (e != FB_OK)
            fbcp_engine_fail(g, e, NULL);
    } else if (fbcp_err_retryable(e) && !fbcp_interrupted && r.attempts < x->opts->retries) {
        r.attempts++;
        fbcp_trace(x->opts, "retry %d/%d asking for the missing ranges in %ld ms", r.attempts,
                   x->opts->retries, fbcp_backoff_ms(r.attempts));
        if (fbcp_engine_push(g, r.off, r.len, r.attempts, 1,
                             fb_time_mono_ns() + (uint64_t)fbcp_backoff_ms(r.attempts) * 1000000ull) != FB_OK)
            fbcp_engine_fail(g, FB_ERR_NOMEM, NULL);
    } else {
        fbcp_engine_fail(g, e, detail);
    }
    fbcp_ranges_free(&missing);
}

/* Upload: the lowest file offset a request is still to read: the running ones' read positions
 * and the next queued one (queued in file order; a retry queued later may start lower, which only
 * makes the hashing read that part again). The hashing thread stays below it. */
static uint64_t fbcp_engine_read_low(const fbcp_engine *g)
{
    uint64_t low = g->qn > 0 ? g->q[0].off : UINT64_MAX;

    for (int si = 0; si < g->nslots; si++) {
        const fbcp_slot *s = &g->slots[si];
        if (s->busy && s->moved < s->req.len && s->req.off + s->moved < low)
            low = s->req.off + s->moved;
    }
    return low;
}

static fb_err fbcp_engine_run(fbcp_engine *g)
{
    fbcp_xfer *x = g->x;
    int busy = 0, yielding = 0;

    /* bounded: every request either completes, or fails and is retried at most --retries times
     * per piece, and a piece's budget is only renewed when the file made progress; a yield
     * starts nothing new */
    for (;;) {
        uint64_t now = fb_time_mono_ns();
        uint64_t next_ready = UINT64_MAX;
        int running = 0;
        CURLMsg *msg;
        int left;

        if (fbcp_interrupted)
            fbcp_engine_fail(g, FB_ERR_CONNECTION_LOST, "interrupted");
        if (g->err != FB_OK)
            break;
        /* another transport wants the data back (UDP answers again): finish what runs */
        if (x->yield_check != NULL && (g->udp_readable || now - g->last_yield_check_ns >= 20000000ull)) {
            g->last_yield_check_ns = now;
            g->udp_readable = 0;
            if (x->yield_check(x) && !yielding)
                yielding = 1;
        }
        if (yielding == 1) {
            yielding = 2; /* said once: 2 is yielding, already traced */
            fbcp_trace(x->opts, "HTTP(S): starting no new request, letting the running ones finish");
        }
        /* fill idle connections with ready requests, in file order */
        for (int si = 0; si < g->nslots && g->err == FB_OK && !yielding; si++) {
            size_t i;
            if (g->slots[si].busy)
                continue;
            for (i = 0; i < g->qn && g->q[i].not_before > now; i++)
                if (g->q[i].not_before < next_ready)
                    next_ready = g->q[i].not_before;
            if (i == g->qn)
                break;
            if (g->q[i].resync) {
                fbcp_engine_resync(g, i);
                si--; /* the queue changed: look again for this slot */
                now = fb_time_mono_ns();
                continue;
            }
            {
                fbcp_req r = g->q[i];
                fb_err e;

                r.len = fbcp_request_share(r.len, g->qbytes, g->nslots, x->chunk_size);
                g->qbytes -= r.len;
                if (r.len < g->q[i].len) {
                    /* the rest stays queued in its place (file order) */
                    g->q[i].off += r.len;
                    g->q[i].len -= r.len;
                } else {
                    memmove(&g->q[i], &g->q[i + 1], (g->qn - i - 1) * sizeof(*g->q));
                    g->qn--;
                }
                e = fbcp_slot_start(g, &g->slots[si], &r);
                if (e != FB_OK)
                    fbcp_engine_fail(g, e, NULL);
            }
        }
        if (g->err != FB_OK)
            break;
        busy = 0;
        for (int si = 0; si < g->nslots; si++)
            busy += g->slots[si].busy;
        if (busy == 0 && (g->qn == 0 || yielding)) {
            x->yielded = yielding && g->qn > 0;
            break;
        }
        if (busy > 0) {
            if (curl_multi_perform(g->multi, &running) != CURLM_OK) {
                fbcp_engine_fail(g, FB_ERR_INTERNAL, "curl_multi_perform failed");
                break;
            }
            while ((msg = curl_multi_info_read(g->multi, &left)) != NULL) {
                fbcp_slot *s = NULL;
                if (msg->msg != CURLMSG_DONE)
                    continue;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
                if (s != NULL)
                    fbcp_slot_finish(g, s, msg->data.result);
            }
        }
        fbcp_event_progress(x, 0);
        if (g->err != FB_OK)
            break;
        if (x->direction == FBCP_UPLOAD)
            fbcp_upload_hash_hint(x, fbcp_engine_read_low(g));
        {
            long wait_ms = 200;
            int idle_slots = 0;
            now = fb_time_mono_ns();
            for (int si = 0; si < g->nslots; si++)
                idle_slots += !g->slots[si].busy;
            /* A queued request only shortens the wait when a connection is free to take it:
             * otherwise a ready request would make every poll return at once (a busy loop). */
            for (size_t i = 0; i < g->qn && idle_slots > 0; i++)
                if (g->q[i].not_before < next_ready)
                    next_ready = g->q[i].not_before;
            if (idle_slots == 0)
                next_ready = UINT64_MAX;
            if (next_ready != UINT64_MAX) {
                long until = next_ready > now ? (long)((next_ready - now) / 1000000ull) + 1 : 0;
                if (until < wait_ms)
                    wait_ms = until;
            }
            struct curl_waitfd extra = {.fd = x->poll_fd, .events = CURL_WAIT_POLLIN, .revents = 0};
            unsigned nextra = x->yield_check != NULL && x->poll_fd >= 0 ? 1 : 0;

            busy = 0;
            for (int si = 0; si < g->nslots; si++)
                busy += g->slots[si].busy;
            if (busy > 0 && running > 0) {
                uint64_t t0 = fb_time_mono_ns();
                int nfds = 0;

                curl_multi_poll(g->multi, nextra ? &extra : NULL, nextra, (int)wait_ms, &nfds);
                /* A rate-limited transfer (--limit-rate) asks to be called again at once over
                 * and over (libcurl 7.88): without this pause the loop spins a core. 1 ms is far
                 * below what the limit needs to be smooth. */
                if (x->opts->limit_rate > 0 && nfds == 0 && fb_time_mono_ns() - t0 < 1000000ull) {
                    struct timespec ts = {0, 1000000L};
                    nanosleep(&ts, NULL);
                }
            } else if (busy == 0 && g->qn > 0 && wait_ms > 0 && nextra)
                curl_multi_poll(g->multi, &extra, 1, (int)wait_ms, NULL); /* backing off, probing */
            else if (busy == 0 && g->qn > 0 && wait_ms > 0)
                fbcp_sleep_ms(wait_ms); /* only backing-off requests are left */
            if (nextra && extra.revents != 0)
                g->udp_readable = 1;
        }
    }
    /* stop whatever is still running (on error or interrupt) */
    for (int si = 0; si < g->nslots; si++) {
        fbcp_slot *s = &g->slots[si];
        if (s->busy) {
            curl_multi_remove_handle(g->multi, s->easy);
            s->busy = 0;
        }
    }
    fbcp_event_progress(x, 1);
    return g->err;
}

static fb_err fbcp_http_move(fbcp_transport *t, fbcp_xfer *x, const fbcp_ranges *todo, char *detail,
                             size_t detlen)
{
    fbcp_http_transport *ht = t->impl;
    fbcp_engine *g = calloc(1, sizeof(*g));
    fb_err rv;

    detail[0] = '\0';
    if (g == NULL)
        return FB_ERR_NOMEM;
    g->h = ht->h;
    g->x = x;
    g->multi = ht->multi;
    g->detail = detail;
    g->detlen = detlen;
    g->nslots = ht->neasy;
    for (int i = 0; i < g->nslots; i++) {
        g->slots[i].eng = g;
        g->slots[i].easy = ht->easy[i];
    }
    x->transport_name = t->ops->name;
    rv = fbcp_engine_push_ranges(g, todo, 0);
    if (rv == FB_OK)
        rv = fbcp_engine_run(g);
    if (x->direction == FBCP_UPLOAD)
        fbcp_upload_hash_hint(x, UINT64_MAX); /* no request reads any more: hash freely */
    for (int i = 0; i < g->nslots; i++) {
        curl_slist_free_all(g->slots[i].hdrs);
        free(g->slots[i].body.data);
    }
    free(g->q);
    free(g);
    return rv;
}

static void fbcp_http_transport_destroy(fbcp_transport *t)
{
    fbcp_http_transport *ht;

    if (t == NULL)
        return;
    ht = t->impl;
    if (ht != NULL) {
        for (int i = 0; i < ht->neasy; i++)
            if (ht->easy[i] != NULL)
                curl_easy_cleanup(ht->easy[i]);
        if (ht->multi != NULL)
            curl_multi_cleanup(ht->multi);
        free(ht);
    }
    free(t);
}

static const fbcp_transport_ops fbcp_http_ops = {
    .name = "http",
    .upload = fbcp_http_move,
    .download = fbcp_http_move,
    .destroy = fbcp_http_transport_destroy,
};

fb_err fbcp_transport_http_new(fbcp_transport **pt, fbcp_http *h)
{
    fbcp_transport *t = calloc(1, sizeof(*t));
    fbcp_http_transport *ht = calloc(1, sizeof(*ht));
    int n = h->o->connections;

    *pt = NULL;
    if (t == NULL || ht == NULL) {
        free(t);
        free(ht);
        return FB_ERR_NOMEM;
    }
    t->ops = &fbcp_http_ops;
    t->impl = ht;
    ht->h = h;
    if (n < 1)
        n = 1;
    if (n > FBCP_MAX_CONNECTIONS)
        n = FBCP_MAX_CONNECTIONS;
    ht->multi = curl_multi_init();
    if (ht->multi == NULL) {
        fbcp_http_transport_destroy(t);
        return FB_ERR_NOMEM;
    }
    /* one TCP connection per request: no HTTP/2 multiplexing, no pipelining */
    curl_multi_setopt(ht->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
    curl_multi_setopt(ht->multi, CURLMOPT_MAXCONNECTS, (long)n + 1);
    for (int i = 0; i < n; i++) {
        ht->easy[i] = curl_easy_init();
        if (ht->easy[i] == NULL) {
            fbcp_http_transport_destroy(t);
            return FB_ERR_NOMEM;
        }
        ht->neasy++;
    }
    *pt = t;
    return FB_OK;
}
