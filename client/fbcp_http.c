/* fbcp_http: fbcp's libcurl plumbing: the settings every request shares (TLS, credentials,
 * timeouts, proxy from the environment as libcurl reads it by default), curl errors mapped to
 * fb_err codes, and one easy handle for control requests (sessions, commit, HEAD, listings),
 * retried with backoff on connection errors. The HTTP(S) data transport is fbcp_http_data.c.
 *
 * HTTP/1.1 is forced so that N connections are N TCP flows (HTTP/2 would multiplex them onto
 * one). curl's own verbose output is never enabled: it prints Authorization headers. */
#include "config.h"

#include "fbcp.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>

volatile sig_atomic_t fbcp_interrupted;

/* ---------------------------------------------------------------- small helpers */

void fbcp_sleep_ms(long ms)
{
    /* in slices so an interrupt is noticed quickly */
    while (ms > 0 && !fbcp_interrupted) {
        long slice = ms > 100 ? 100 : ms;
        struct timespec ts = {0, slice * 1000000L};
        nanosleep(&ts, NULL);
        ms -= slice;
    }
}

long fbcp_backoff_ms(int attempt)
{
    long ms = 500;
    for (int i = 1; i < attempt && ms < 30000; i++)
        ms *= 2;
    return ms > 30000 ? 30000 : ms;
}

void fbcp_sanitize(char *dst, size_t len, const char *src)
{
    size_t i = 0;
    if (len == 0)
        return;
    for (; src != NULL && src[i] != '\0' && i + 1 < len; i++)
        dst[i] = ((unsigned char)src[i] < 0x20 || src[i] == 0x7f) ? '?' : src[i];
    dst[i] = '\0';
}

int fbcp_err_retryable(fb_err e)
{
    return e == FB_ERR_CONNECTION_LOST || e == FB_ERR_TABLE_FULL;
}

static int fbcp_curl_is_tls(CURLcode c)
{
    switch (c) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
        return 1;
    default:
        return 0;
    }
}

/* Maps a failed curl transfer to an error code and a detail line. */
fb_err fbcp_curl_error(CURL *easy, CURLcode c, const char *errbuf, char *detail, size_t detlen)
{
    char *url = NULL;
    char host[256] = "";
    long port = 0, oserr = 0;
    CURLU *cu;

    if (c == CURLE_ABORTED_BY_CALLBACK && fbcp_interrupted) {
        snprintf(detail, detlen, "interrupted");
        return FB_ERR_CONNECTION_LOST;
    }
    curl_easy_getinfo(easy, CURLINFO_OS_ERRNO, &oserr);
    /* a handshake cut by the network (server restarting) is a lost connection, not a TLS problem */
    if (fbcp_curl_is_tls(c) && !(c == CURLE_SSL_CONNECT_ERROR && oserr != 0)) {
        snprintf(detail, detlen, "%s", errbuf[0] ? errbuf : curl_easy_strerror(c));
        return FB_ERR_TLS;
    }
    if (c == CURLE_OUT_OF_MEMORY)
        return FB_ERR_NOMEM;
    curl_easy_getinfo(easy, CURLINFO_EFFECTIVE_URL, &url);
    cu = curl_url();
    if (cu != NULL && url != NULL && curl_url_set(cu, CURLUPART_URL, url, 0) == CURLUE_OK) {
        char *h = NULL, *p = NULL;
        if (curl_url_get(cu, CURLUPART_HOST, &h, 0) == CURLUE_OK)
            snprintf(host, sizeof(host), "%s", h);
        if (curl_url_get(cu, CURLUPART_PORT, &p, CURLU_DEFAULT_PORT) == CURLUE_OK)
            port = strtol(p, NULL, 10);
        curl_free(h);
        curl_free(p);
    }
    curl_url_cleanup(cu);
    switch (c) {
    case CURLE_COULDNT_CONNECT:
        snprintf(detail, detlen, "could not connect to %s:%ld: %s", host, port,
                 oserr ? strerror((int)oserr) : "connection failed");
        break;
    case CURLE_COULDNT_RESOLVE_HOST:
        snprintf(detail, detlen, "could not resolve host %s", host);
        break;
    case CURLE_COULDNT_RESOLVE_PROXY:
        snprintf(detail, detlen, "could not resolve the proxy");
        break;
    case CURLE_OPERATION_TIMEDOUT:
        snprintf(detail, detlen, "%s:%ld: no progress before the timeout", host, port);
        break;
    default:
        snprintf(detail, detlen, "%s:%ld: %s", host, port, errbuf[0] ? errbuf : curl_easy_strerror(c));
        break;
    }
    return FB_ERR_CONNECTION_LOST;
}

/* Transport failures worth another attempt (the server may come back). */
int fbcp_curl_retryable(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_AGAIN:
    case CURLE_SSL_CONNECT_ERROR: /* also a handshake cut short; a real TLS failure just fails again */
        return 1;
    default:
        return 0;
    }
}

int fbcp_status_retryable(long status)
{
    return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

/* The delay-seconds form of a Retry-After header (RFC 9110 10.2.3), capped; 0 when absent or
 * in another form. */
static long fbcp_retry_after_s(CURL *e)
{
    struct curl_header *hd = NULL;
    long l;

    if (curl_easy_header(e, "Retry-After", 0, CURLH_HEADER, -1, &hd) != CURLHE_OK || hd == NULL ||
        fbcp_parse_long(&l, hd->value, 0, 86400) != FB_OK)
        return 0;
    if (l == 0)
        l = 1;
    return l > FBCP_MAX_RETRY_AFTER_S ? FBCP_MAX_RETRY_AFTER_S : l;
}

static int fbcp_xferinfo(void *p, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    return fbcp_interrupted ? 1 : 0;
}

/* Every TCP connection paces what it sends (see fb_sock_tcp_pace). */
static int fbcp_http_sockopt(void *ud, curl_socket_t fd, curlsocktype purpose)
{
    (void)ud;
    if (purpose == CURLSOCKTYPE_IPCXN)
        (void)fb_sock_tcp_pace(fd);
    return CURL_SOCKOPT_OK;
}

/* The settings every handle shares. */
fb_err fbcp_http_setup(fbcp_http *h, CURL *e, char *errbuf)
{
    const fbcp_opts *o = h->o;
    CURLcode c = CURLE_OK;

#define SET(opt, val)                                                                                        \
    do {                                                                                                     \
        if (c == CURLE_OK)                                                                                   \
            c = curl_easy_setopt(e, opt, val);                                                               \
    } while (0)
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_USERAGENT, "fbcp/" PACKAGE_VERSION);
    SET(CURLOPT_SHARE, h->share);
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_CONNECTTIMEOUT, o->timeout_s);
    SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
    SET(CURLOPT_LOW_SPEED_TIME, o->timeout_s);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_SOCKOPTFUNCTION, fbcp_http_sockopt);
    SET(CURLOPT_ERRORBUFFER, errbuf);
    SET(CURLOPT_NOPROGRESS, 0L);
    SET(CURLOPT_XFERINFOFUNCTION, fbcp_xferinfo);
    SET(CURLOPT_FILETIME, 1L);
    if (o->cacert != NULL)
        SET(CURLOPT_CAINFO, o->cacert);
    if (o->insecure) {
        SET(CURLOPT_SSL_VERIFYPEER, 0L);
        SET(CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (o->user != NULL) {
        SET(CURLOPT_USERNAME, o->user);
        SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        if (o->password != NULL)
            SET(CURLOPT_PASSWORD, o->password);
    }
    /* .netrc: optional when no -u; with --netrc it may also supply the password for -u */
    if (o->user == NULL || o->netrc) {
        SET(CURLOPT_NETRC, (long)CURL_NETRC_OPTIONAL);
        if (o->netrc_file != NULL)
            SET(CURLOPT_NETRC_FILE, o->netrc_file);
    }
#undef SET
    return c == CURLE_OK ? FB_OK : FB_ERR_INTERNAL;
}

fb_err fbcp_http_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? FB_OK : FB_ERR_INTERNAL;
}

void fbcp_http_global_cleanup(void)
{
    curl_global_cleanup();
}

fb_err fbcp_http_new(fbcp_http **ph, const fbcp_opts *o)
{
    fbcp_http *h = calloc(1, sizeof(*h));

    *ph = NULL;
    if (h == NULL)
        return FB_ERR_NOMEM;
    h->o = o;
    h->share = curl_share_init();
    h->api = curl_easy_init();
    if (h->share == NULL || h->api == NULL) {
        fbcp_http_free(h);
        return FB_ERR_NOMEM;
    }
    curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    *ph = h;
    return FB_OK;
}

void fbcp_http_free(fbcp_http *h)
{
    if (h == NULL)
        return;
    if (h->api != NULL)
        curl_easy_cleanup(h->api);
    if (h->share != NULL)
        curl_share_cleanup(h->share);
    free(h);
}

/* ---------------------------------------------------------------- control requests */

size_t fbcp_buf_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    fbcp_buf *b = ud;
    size_t n = size * nmemb;
    char *nd;

    if (n > b->max - b->len) {
        b->overflow = 1;
        return 0;
    }
    nd = realloc(b->data, b->len + n + 1);
    if (nd == NULL)
        return 0;
    b->data = nd;
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

void fbcp_http_answer_free(fbcp_http_answer *a)
{
    json_decref(a->json);
    free(a->content_type);
    free(a->etag);
    free(a->last_modified);
    free(a->content_range);
    free(a->repr_digest);
    memset(a, 0, sizeof(*a));
}

static char *fbcp_header_dup(CURL *e, const char *name)
{
    struct curl_header *hd = NULL;
    if (curl_easy_header(e, name, 0, CURLH_HEADER, -1, &hd) != CURLHE_OK || hd == NULL)
        return NULL;
    return strdup(hd->value);
}

static int fbcp_is_json_type(const char *ct)
{
    return ct != NULL && (strncasecmp(ct, "application/json", 16) == 0 ||
                          strncasecmp(ct, "application/problem+json", 24) == 0);
}

fb_err fbcp_http_request(fbcp_http *h, fbcp_http_answer *a, const char *method, const char *url, json_t *body,
                         size_t max_body, int retries, char *detail, size_t detlen)
{
    return fbcp_http_request_hdr(h, a, method, url, NULL, body, max_body, retries, detail, detlen);
}

fb_err fbcp_http_request_hdr(fbcp_http *h, fbcp_http_answer *a, const char *method, const char *url,
                             const char *header, json_t *body, size_t max_body, int retries, char *detail,
                             size_t detlen)
{
    CURL *e = h->api;
    struct curl_slist *hdrs = NULL;
    char *text = NULL;
    fbcp_buf buf = {0};
    fb_err rv = FB_ERR_INTERNAL;
    int attempt;
    long busy_waited_s = 0;

    memset(a, 0, sizeof(*a));
    a->filetime = -1;
    a->length = -1;
    detail[0] = '\0';
    if (retries < 0)
        retries = h->o->retries;
    if (body != NULL) {
        text = json_dumps(body, JSON_COMPACT);
        if (text == NULL)
            return FB_ERR_NOMEM;
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        hdrs = curl_slist_append(hdrs, "Expect:");
        if (hdrs == NULL) {
            free(text);
            return FB_ERR_NOMEM;
        }
    }
    if (header != NULL) {
        struct curl_slist *n = curl_slist_append(hdrs, header);
        if (n == NULL) {
            curl_slist_free_all(hdrs);
            free(text);
            return FB_ERR_NOMEM;
        }
        hdrs = n;
    }
    for (attempt = 0;; attempt++) {
        CURLcode c;
        uint64_t t0 = fb_time_mono_ns();
        long status = 0;

        curl_easy_reset(e);
        h->errbuf[0] = '\0';
        free(buf.data);
        memset(&buf, 0, sizeof(buf));
        buf.max = max_body;
        if (fbcp_http_setup(h, e, h->errbuf) != FB_OK)
            break;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, fbcp_buf_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &buf);
        if (strcmp(method, "HEAD") == 0) {
            curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        } else if (strcmp(method, "POST") == 0) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, text != NULL ? text : "");
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(text != NULL ? strlen(text) : 0));
        } else if (strcmp(method, "GET") != 0) {
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
        }
        if (hdrs != NULL)
            curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
        fbcp_trace(h->o, "> %s %s", method, url);
        c = curl_easy_perform(e);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        if (c != CURLE_OK) {
            if (buf.overflow) {
                snprintf(detail, detlen, "answer larger than %zu bytes", max_body);
                rv = FB_ERR_PROTOCOL;
                break;
            }
            rv = fbcp_curl_error(e, c, h->errbuf, detail, detlen);
            fbcp_trace(h->o, "< %s (%s)", fb_err_message(rv), detail);
            if (!fbcp_interrupted && fbcp_curl_retryable(c) && rv != FB_ERR_TLS && attempt < retries) {
                fbcp_sleep_ms(fbcp_backoff_ms(attempt + 1));
                continue;
            }
            break;
        }
        fbcp_trace(h->o, "< %ld (%.0f ms)", status, (double)(fb_time_mono_ns() - t0) / 1e6);
        if ((status == 503 || status == 429) && !fbcp_interrupted) {
            /* The server is busy (its session table is full of live sessions): wait as long as it
             * says and ask again, without using up a retry; bounded in total. */
            long wait_s = fbcp_retry_after_s(e);
            if (wait_s > 0 && busy_waited_s + wait_s <= FBCP_MAX_BUSY_WAIT_S) {
                fbcp_trace(h->o, "server busy (%ld): asking again in %ld s as it says", status, wait_s);
                busy_waited_s += wait_s;
                fbcp_sleep_ms(wait_s * 1000);
                attempt--;
                continue;
            }
        }
        if (fbcp_status_retryable(status) && attempt < retries && !fbcp_interrupted) {
            fbcp_sleep_ms(fbcp_backoff_ms(attempt + 1));
            continue;
        }
        {
            char *ct = NULL;
            curl_off_t len = -1, ft = -1;
            struct curl_header *hd = NULL;

            a->status = status;
            curl_easy_getinfo(e, CURLINFO_CONTENT_TYPE, &ct);
            a->content_type = ct != NULL ? strdup(ct) : NULL;
            a->etag = fbcp_header_dup(e, "ETag");
            a->last_modified = fbcp_header_dup(e, "Last-Modified");
            a->content_range = fbcp_header_dup(e, "Content-Range");
            a->repr_digest = fbcp_header_dup(e, "Repr-Digest");
            if (curl_easy_getinfo(e, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len) == CURLE_OK)
                a->length = len;
            if (curl_easy_getinfo(e, CURLINFO_FILETIME_T, &ft) == CURLE_OK)
                a->filetime = ft;
            if (curl_easy_header(e, "Accept-Ranges", 0, CURLH_HEADER, -1, &hd) == CURLHE_OK && hd != NULL &&
                strstr(hd->value, "bytes") != NULL)
                a->accept_ranges = 1;
            if (buf.len > 0 && fbcp_is_json_type(ct))
                a->json = json_loadb(buf.data, buf.len, 0, NULL);
        }
        rv = FB_OK;
        break;
    }
    curl_slist_free_all(hdrs);
    free(text);
    free(buf.data);
    if (rv != FB_OK)
        fbcp_http_answer_free(a);
    return rv;
}

fb_err fbcp_problem_from(long status, json_t *doc, char *detail, size_t detlen)
{
    const char *code = NULL, *det = NULL, *title = NULL;
    fb_err e;

    if (json_is_object(doc)) {
        code = json_string_value(json_object_get(doc, "code"));
        det = json_string_value(json_object_get(doc, "detail"));
        title = json_string_value(json_object_get(doc, "title"));
    }
    if (status == 401) {
        e = FB_ERR_AUTH;
    } else if (code != NULL && fb_err_from_name(code) != FB_ERR_PROTOCOL) {
        e = fb_err_from_name(code);
    } else {
        switch (status) {
        case 403:
            e = FB_ERR_PERMISSION;
            break;
        case 404:
            e = FB_ERR_NOT_FOUND;
            break;
        case 405:
            e = FB_ERR_METHOD;
            break;
        case 413:
            e = FB_ERR_TOO_LARGE;
            break;
        case 416:
            e = FB_ERR_RANGE_NOT_SATISFIABLE;
            break;
        case 412:
            e = FB_ERR_CHANGED;
            break;
        case 507:
            e = FB_ERR_DISK_FULL;
            break;
        case 502:
        case 503:
        case 504:
            e = FB_ERR_CONNECTION_LOST;
            break;
        default:
            e = status >= 200 && status < 300 ? FB_ERR_PROTOCOL : FB_ERR_SERVER_REFUSED;
            break;
        }
    }
    if (det != NULL)
        fbcp_sanitize(detail, detlen, det);
    else if (title != NULL && e == FB_ERR_SERVER_REFUSED)
        fbcp_sanitize(detail, detlen, title);
    else if (code != NULL && fb_err_from_name(code) != FB_ERR_PROTOCOL)
        detail[0] = '\0'; /* the code's own message says it all */
    else
        snprintf(detail, detlen, "HTTP %ld", status);
    return e;
}

fb_err fbcp_http_problem(const fbcp_http_answer *a, char *detail, size_t detlen)
{
    return fbcp_problem_from(a->status, a->json, detail, detlen);
}
