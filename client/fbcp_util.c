/* fbcp_util: the pure helpers of fbcp, kept apart so the unit test can reach them: URL parsing
 * (libcurl's URL API does the parsing; this file only splits off the module's location),
 * remote path checks, number parsing, a timed condition wait. The range lists are
 * fbcp_ranges.c, the download sidecar fbcp_sidecar.c. */
#include "fbcp.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

/* ---------------------------------------------------------------- URLs and paths */

int fbcp_is_url(const char *arg)
{
    return strncasecmp(arg, "http://", 7) == 0 || strncasecmp(arg, "https://", 8) == 0;
}

void fbcp_url_free(fbcp_url *u)
{
    free(u->base);
    free(u->origin);
    free(u->host);
    free(u->path);
    free(u->user);
    if (u->password != NULL) {
        explicit_bzero(u->password, strlen(u->password));
        free(u->password);
    }
    memset(u, 0, sizeof(*u));
}

/* Decodes one percent-encoded path segment; rejects what the server would refuse anyway so the
 * user gets the message before any request: "." / ".." (path_escape), empty, "/" or NUL inside. */
static fb_err fbcp_segment_decode(char **out, const char *seg, size_t len, char *errbuf, size_t errlen)
{
    int dlen = 0;
    char *d;

    *out = NULL;
    if (len == 0) {
        snprintf(errbuf, errlen, "empty path component");
        return FB_ERR_BAD_PATH;
    }
    if (len > INT32_MAX)
        return FB_ERR_BAD_PATH;
    d = curl_easy_unescape(NULL, seg, (int)len, &dlen);
    if (d == NULL)
        return FB_ERR_NOMEM;
    if ((size_t)dlen != strlen(d) || strchr(d, '/') != NULL) {
        snprintf(errbuf, errlen, "encoded '/' or NUL in a path component");
        curl_free(d);
        return FB_ERR_BAD_PATH;
    }
    if (strcmp(d, ".") == 0 || strcmp(d, "..") == 0) {
        snprintf(errbuf, errlen, "'.' and '..' are not allowed in a path");
        curl_free(d);
        return FB_ERR_PATH_ESCAPE;
    }
    *out = strdup(d);
    curl_free(d);
    return *out == NULL ? FB_ERR_NOMEM : FB_OK;
}

/* Appends the decoded segments of RAW (no leading "/") to a new "a/b/c" string. */
static fb_err fbcp_path_decode(char **out, const char *raw, char *errbuf, size_t errlen)
{
    size_t cap = strlen(raw) + 1, used = 0;
    char *res = calloc(1, cap);
    const char *p = raw;
    fb_err rv = FB_OK;

    if (res == NULL)
        return FB_ERR_NOMEM;
    while (*p != '\0') {
        const char *slash = strchr(p, '/');
        size_t len = slash != NULL ? (size_t)(slash - p) : strlen(p);
        char *seg = NULL;

        rv = fbcp_segment_decode(&seg, p, len, errbuf, errlen);
        if (rv != FB_OK)
            break;
        /* decoding never makes a segment longer, so the buffer is large enough */
        if (used > 0)
            res[used++] = '/';
        memcpy(res + used, seg, strlen(seg) + 1);
        used += strlen(seg);
        free(seg);
        p += len;
        if (*p == '/')
            p++;
    }
    if (rv != FB_OK) {
        free(res);
        return rv;
    }
    *out = res;
    return FB_OK;
}

fb_err fbcp_url_parse(fbcp_url *u, const char *text, const char *location, char *errbuf, size_t errlen)
{
    CURLU *cu = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *query = NULL, *frag = NULL;
    char *loc = NULL;
    const char *rest;
    size_t loclen, plen;
    fb_err rv = FB_ERR_USAGE;

    memset(u, 0, sizeof(*u));
    errbuf[0] = '\0';
    if (cu == NULL)
        return FB_ERR_NOMEM;
    if (!fbcp_is_url(text) || curl_url_set(cu, CURLUPART_URL, text, CURLU_PATH_AS_IS) != CURLUE_OK) {
        snprintf(errbuf, errlen, "not a valid http(s) URL");
        goto out;
    }
    if (curl_url_get(cu, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(cu, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(cu, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
        curl_url_get(cu, CURLUPART_PATH, &path, 0) != CURLUE_OK) {
        snprintf(errbuf, errlen, "not a valid http(s) URL");
        goto out;
    }
    if (curl_url_get(cu, CURLUPART_QUERY, &query, 0) == CURLUE_OK ||
        curl_url_get(cu, CURLUPART_FRAGMENT, &frag, 0) == CURLUE_OK) {
        snprintf(errbuf, errlen, "a query or fragment is not allowed in the URL");
        goto out;
    }
    {
        char *uu = NULL, *pw = NULL;
        if (curl_url_get(cu, CURLUPART_USER, &uu, CURLU_URLDECODE) == CURLUE_OK) {
            u->user = strdup(uu);
            curl_free(uu);
        }
        if (curl_url_get(cu, CURLUPART_PASSWORD, &pw, CURLU_URLDECODE) == CURLUE_OK) {
            u->password = strdup(pw);
            explicit_bzero(pw, strlen(pw));
            curl_free(pw);
        }
    }

    /* The location: --location, else the first path segment. */
    if (location != NULL) {
        size_t l;
        loc = malloc(strlen(location) + 2);
        if (loc == NULL) {
            rv = FB_ERR_NOMEM;
            goto out;
        }
        snprintf(loc, strlen(location) + 2, "%s%s", location[0] == '/' ? "" : "/", location);
        l = strlen(loc);
        while (l > 0 && loc[l - 1] == '/')
            loc[--l] = '\0';
    } else {
        const char *seg = path + 1;
        const char *slash = strchr(seg, '/');
        size_t l = slash != NULL ? (size_t)(slash - seg) : strlen(seg);
        if (path[0] != '/' || l == 0) {
            snprintf(errbuf, errlen, "the URL names no location (expected https://host/<location>/<path>)");
            goto out;
        }
        loc = strndup(path, l + 1);
        if (loc == NULL) {
            rv = FB_ERR_NOMEM;
            goto out;
        }
    }
    loclen = strlen(loc);
    plen = strlen(path);
    if (strncmp(path, loc, loclen) != 0 || (path[loclen] != '\0' && path[loclen] != '/')) {
        snprintf(errbuf, errlen, "the URL path does not start with the location %s", loclen ? loc : "/");
        goto out;
    }
    rest = path + loclen;
    if (*rest == '/')
        rest++;
    u->trailing_slash = plen == 0 || path[plen - 1] == '/';
    {
        char *trimmed = strdup(rest);
        size_t tl;
        if (trimmed == NULL) {
            rv = FB_ERR_NOMEM;
            goto out;
        }
        tl = strlen(trimmed);
        if (tl > 0 && trimmed[tl - 1] == '/')
            trimmed[--tl] = '\0';
        rv = fbcp_path_decode(&u->path, trimmed, errbuf, errlen);
        free(trimmed);
        if (rv != FB_OK)
            goto out;
        rv = FB_ERR_USAGE;
    }

    u->port = strtol(port, NULL, 10);
    u->host = strdup(host);
    {
        size_t ol = strlen(scheme) + strlen(host) + 32;
        u->origin = malloc(ol);
        if (u->origin != NULL)
            snprintf(u->origin, ol, "%s://%s:%ld", scheme, host, u->port);
        u->base = u->origin != NULL ? malloc(ol + loclen) : NULL;
        if (u->base != NULL)
            snprintf(u->base, ol + loclen, "%s%s", u->origin, loc);
    }
    if (u->host == NULL || u->origin == NULL || u->base == NULL) {
        rv = FB_ERR_NOMEM;
        goto out;
    }
    rv = FB_OK;
out:
    if (rv != FB_OK) {
        if (errbuf[0] == '\0')
            snprintf(errbuf, errlen, "%s", fb_err_message(rv));
        fbcp_url_free(u);
    }
    free(loc);
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(query);
    curl_free(frag);
    curl_url_cleanup(cu);
    return rv;
}

char *fbcp_path_escape(const char *path)
{
    size_t cap = strlen(path) * 3 + 1, used = 0;
    char *res = malloc(cap);
    const char *p = path;

    if (res == NULL)
        return NULL;
    res[0] = '\0';
    while (*p != '\0') {
        const char *slash = strchr(p, '/');
        size_t len = slash != NULL ? (size_t)(slash - p) : strlen(p);
        char *e = len > 0 ? curl_easy_escape(NULL, p, (int)len) : NULL;
        size_t el;

        if (len > 0 && e == NULL) {
            free(res);
            return NULL;
        }
        el = e != NULL ? strlen(e) : 0;
        if (used + el + 2 > cap) { /* cannot happen: each byte becomes at most 3 */
            curl_free(e);
            free(res);
            return NULL;
        }
        if (el > 0)
            memcpy(res + used, e, el);
        used += el;
        curl_free(e);
        p += len;
        if (*p == '/') {
            res[used++] = '/';
            p++;
        }
        res[used] = '\0';
    }
    return res;
}

char *fbcp_path_join(const char *dir, const char *name)
{
    size_t dl = strlen(dir), nl, len;
    char *res;

    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    while (*name == '/' && dl > 0)
        name++;
    nl = strlen(name);
    len = dl + nl + 2;
    res = malloc(len);
    if (res == NULL)
        return NULL;
    if (dl == 0)
        snprintf(res, len, "%s", name);
    else if (nl == 0)
        snprintf(res, len, "%.*s", (int)dl, dir);
    else if (dir[dl - 1] == '/')
        snprintf(res, len, "%.*s%s", (int)dl, dir, name);
    else
        snprintf(res, len, "%.*s/%s", (int)dl, dir, name);
    return res;
}

char *fbcp_basename(const char *path)
{
    size_t end = strlen(path), start;

    while (end > 0 && path[end - 1] == '/')
        end--;
    start = end;
    while (start > 0 && path[start - 1] != '/')
        start--;
    return strndup(path + start, end - start);
}

int fbcp_name_is_safe(const char *name)
{
    if (name == NULL || name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return 0;
    if (strlen(name) > 255)
        return 0;
    for (const char *p = name; *p != '\0'; p++)
        if (*p == '/' || (unsigned char)*p < 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

/* ---------------------------------------------------------------- numbers */

fb_err fbcp_parse_size(uint64_t *out, const char *text, int binary)
{
    uint64_t v = 0, mult = 1;
    const char *p = text;

    if (!isdigit((unsigned char)*p))
        return FB_ERR_USAGE;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return FB_ERR_USAGE;
        v = v * 10 + d;
    }
    if (*p != '\0') {
        uint64_t base = binary ? 1024 : 1000;
        switch (*p) {
        case 'k':
        case 'K':
            mult = base;
            break;
        case 'm':
        case 'M':
            mult = base * base;
            break;
        case 'g':
        case 'G':
            mult = base * base * base;
            break;
        case 't':
        case 'T':
            mult = base * base * base * base;
            break;
        default:
            return FB_ERR_USAGE;
        }
        p++;
        if (*p != '\0')
            return FB_ERR_USAGE;
    }
    if (v != 0 && mult > UINT64_MAX / v)
        return FB_ERR_USAGE;
    *out = v * mult;
    return FB_OK;
}

fb_err fbcp_parse_long(long *out, const char *text, long min, long max)
{
    char *end;
    long v;

    errno = 0;
    if (!isdigit((unsigned char)text[0]) && !(text[0] == '-' && isdigit((unsigned char)text[1])))
        return FB_ERR_USAGE;
    v = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return FB_ERR_USAGE;
    *out = v;
    return FB_OK;
}

fb_err fbcp_parse_seconds_ms(uint32_t *out, const char *text, uint32_t min_ms, uint32_t max_ms)
{
    uint64_t ms = 0;
    const char *p = text;
    int decimals = 0;

    /* digits only, no strtod: no locale, no exponents, no rounding surprises */
    if (!isdigit((unsigned char)*p))
        return FB_ERR_USAGE;
    for (; isdigit((unsigned char)*p); p++) {
        ms = ms * 10 + (uint64_t)(*p - '0');
        if (ms > UINT32_MAX)
            return FB_ERR_USAGE;
    }
    ms *= 1000;
    if (*p == '.') {
        uint64_t scale = 100;
        p++;
        if (!isdigit((unsigned char)*p))
            return FB_ERR_USAGE;
        for (; isdigit((unsigned char)*p); p++, decimals++) {
            if (decimals >= 3)
                return FB_ERR_USAGE;
            ms += (uint64_t)(*p - '0') * scale;
            scale /= 10;
        }
    }
    if (*p != '\0' || ms < min_ms || ms > max_ms)
        return FB_ERR_USAGE;
    *out = (uint32_t)ms;
    return FB_OK;
}

/* A response's Content-Range: the strict parser of libfb, after what HTTP allows around it
 * (a range unit in any case, trailing white space). */
fb_err fbcp_parse_content_range(uint64_t *first, uint64_t *last, uint64_t *complete, const char *value)
{
    char buf[96];
    size_t n;

    if (value == NULL || strncasecmp(value, "bytes ", 6) != 0)
        return FB_ERR_BAD_RANGE;
    n = strlen(value);
    while (n > 0 &&
           (value[n - 1] == ' ' || value[n - 1] == '\t' || value[n - 1] == '\r' || value[n - 1] == '\n'))
        n--;
    if (n >= sizeof(buf))
        return FB_ERR_BAD_RANGE;
    memcpy(buf, "bytes ", 6);
    memcpy(buf + 6, value + 6, n - 6);
    buf[n] = '\0';
    /* A range past the end is as wrong in an answer as a malformed one. */
    return fb_content_range_parse(first, last, complete, buf) == FB_OK ? FB_OK : FB_ERR_BAD_RANGE;
}

void fbcp_cond_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, unsigned ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts); /* the condition variables use the default clock */
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    (void)pthread_cond_timedwait(cv, mu, &ts);
}
