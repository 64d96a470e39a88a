/* fbcp_util: the pure helpers of fbcp, kept apart so the unit test can reach them: URL parsing
 * (libcurl's URL API does the parsing; this file only splits off the module's location),
 * remote path checks, sorted range lists, number parsing, and the download sidecar (JSON via
 * jansson, written atomically). */
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

/* ---------------------------------------------------------------- range lists */

void fbcp_ranges_init(fbcp_ranges *r)
{
    memset(r, 0, sizeof(*r));
}

void fbcp_ranges_free(fbcp_ranges *r)
{
    free(r->v);
    memset(r, 0, sizeof(*r));
}

void fbcp_ranges_clear(fbcp_ranges *r)
{
    r->n = 0;
}

static fb_err fbcp_ranges_reserve(fbcp_ranges *r, size_t need)
{
    fb_range *nv;
    size_t ncap;

    if (need <= r->cap)
        return FB_OK;
    ncap = r->cap ? r->cap * 2 : 16;
    while (ncap < need)
        ncap *= 2;
    if (ncap > SIZE_MAX / sizeof(fb_range))
        return FB_ERR_NOMEM;
    nv = realloc(r->v, ncap * sizeof(fb_range));
    if (nv == NULL)
        return FB_ERR_NOMEM;
    r->v = nv;
    r->cap = ncap;
    return FB_OK;
}

fb_err fbcp_ranges_add(fbcp_ranges *r, uint64_t off, uint64_t len)
{
    uint64_t end;
    size_t i, j;

    if (len == 0)
        return FB_OK;
    if (off > UINT64_MAX - len)
        return FB_ERR_BAD_RANGE;
    end = off + len;
    /* first range whose end reaches OFF (touching ranges merge) */
    for (i = 0; i < r->n && r->v[i].offset + r->v[i].length < off; i++)
        ;
    /* ranges i..j-1 overlap or touch [off, end) */
    for (j = i; j < r->n && r->v[j].offset <= end; j++) {
        if (r->v[j].offset < off)
            off = r->v[j].offset;
        if (r->v[j].offset + r->v[j].length > end)
            end = r->v[j].offset + r->v[j].length;
    }
    if (j == i) {
        fb_err rv = fbcp_ranges_reserve(r, r->n + 1);
        if (rv != FB_OK)
            return rv;
        memmove(&r->v[i + 1], &r->v[i], (r->n - i) * sizeof(fb_range));
        r->n++;
    } else if (j > i + 1) {
        memmove(&r->v[i + 1], &r->v[j], (r->n - j) * sizeof(fb_range));
        r->n -= j - i - 1;
    }
    r->v[i].offset = off;
    r->v[i].length = end - off;
    return FB_OK;
}

uint64_t fbcp_ranges_total(const fbcp_ranges *r)
{
    uint64_t t = 0;
    for (size_t i = 0; i < r->n; i++)
        t += r->v[i].length;
    return t;
}

fb_err fbcp_ranges_intersect(fbcp_ranges *out, const fbcp_ranges *r, uint64_t off, uint64_t len)
{
    uint64_t end;

    fbcp_ranges_clear(out);
    if (off > UINT64_MAX - len)
        return FB_ERR_BAD_RANGE;
    end = off + len;
    for (size_t i = 0; i < r->n; i++) {
        uint64_t a = r->v[i].offset, b = r->v[i].offset + r->v[i].length;
        if (a < off)
            a = off;
        if (b > end)
            b = end;
        if (a < b) {
            fb_err rv = fbcp_ranges_add(out, a, b - a);
            if (rv != FB_OK)
                return rv;
        }
    }
    return FB_OK;
}

int fbcp_ranges_covers(const fbcp_ranges *r, uint64_t off, uint64_t len)
{
    size_t lo = 0, hi = r->n;

    if (len == 0 || off > UINT64_MAX - len)
        return 0;
    /* the last range starting at or before OFF (ranges are sorted and disjoint) */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (r->v[mid].offset <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && r->v[lo - 1].offset + r->v[lo - 1].length >= off + len;
}

fb_err fbcp_ranges_complement(fbcp_ranges *out, const fbcp_ranges *r, uint64_t size)
{
    uint64_t pos = 0;

    fbcp_ranges_clear(out);
    for (size_t i = 0; i < r->n && pos < size; i++) {
        uint64_t a = r->v[i].offset, b = r->v[i].offset + r->v[i].length;
        if (a > size)
            a = size;
        if (b > size)
            b = size;
        if (a > pos) {
            fb_err rv = fbcp_ranges_add(out, pos, a - pos);
            if (rv != FB_OK)
                return rv;
        }
        if (b > pos)
            pos = b;
    }
    if (pos < size)
        return fbcp_ranges_add(out, pos, size - pos);
    return FB_OK;
}

fb_err fbcp_ranges_copy(fbcp_ranges *out, const fbcp_ranges *r)
{
    fb_err rv = fbcp_ranges_reserve(out, r->n);
    if (rv != FB_OK)
        return rv;
    if (r->n > 0)
        memcpy(out->v, r->v, r->n * sizeof(fb_range));
    out->n = r->n;
    return FB_OK;
}

fb_err fbcp_ranges_split(fbcp_ranges *out, const fbcp_ranges *r, uint64_t max_len, uint32_t chunk)
{
    /* OUT is a plain list here (requests are adjacent, so they must not merge): append directly. */
    if (chunk == 0)
        chunk = 1;
    max_len -= max_len % chunk;
    if (max_len == 0)
        max_len = chunk;
    out->n = 0;
    for (size_t i = 0; i < r->n; i++) {
        uint64_t off = r->v[i].offset, left = r->v[i].length;
        while (left > 0) {
            uint64_t len = left < max_len ? left : max_len;
            fb_err rv = fbcp_ranges_reserve(out, out->n + 1);
            if (rv != FB_OK)
                return rv;
            out->v[out->n].offset = off;
            out->v[out->n].length = len;
            out->n++;
            off += len;
            left -= len;
        }
    }
    return FB_OK;
}

uint64_t fbcp_request_share(uint64_t len, uint64_t unassigned, int nslots, uint32_t chunk)
{
    uint64_t share = nslots > 1 ? unassigned / (uint64_t)nslots : unassigned;

    if (chunk == 0)
        chunk = 1;
    if (share < FBCP_TAIL_REQUEST_MIN)
        share = FBCP_TAIL_REQUEST_MIN;
    share -= share % chunk;
    if (share < chunk)
        share = chunk;
    return share < len ? share : len;
}

fb_err fbcp_ranges_from_json(fbcp_ranges *out, json_t *arr, uint64_t size)
{
    size_t i;
    json_t *pair;

    fbcp_ranges_clear(out);
    if (!json_is_array(arr))
        return FB_ERR_PROTOCOL;
    json_array_foreach(arr, i, pair)
    {
        json_t *o = json_array_get(pair, 0), *l = json_array_get(pair, 1);
        json_int_t off, len;
        fb_err rv;

        if (!json_is_array(pair) || json_array_size(pair) != 2 || !json_is_integer(o) || !json_is_integer(l))
            return FB_ERR_PROTOCOL;
        off = json_integer_value(o);
        len = json_integer_value(l);
        if (off < 0 || len <= 0 || (uint64_t)off > size || (uint64_t)len > size - (uint64_t)off)
            return FB_ERR_PROTOCOL;
        rv = fbcp_ranges_add(out, (uint64_t)off, (uint64_t)len);
        if (rv != FB_OK)
            return rv;
    }
    return FB_OK;
}

json_t *fbcp_ranges_to_json(const fbcp_ranges *r)
{
    json_t *arr = json_array();
    if (arr == NULL)
        return NULL;
    for (size_t i = 0; i < r->n; i++) {
        json_t *pair = json_pack("[II]", (json_int_t)r->v[i].offset, (json_int_t)r->v[i].length);
        if (pair == NULL || json_array_append_new(arr, pair) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
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
    while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t' || value[n - 1] == '\r' || value[n - 1] == '\n'))
        n--;
    if (n >= sizeof(buf))
        return FB_ERR_BAD_RANGE;
    memcpy(buf, "bytes ", 6);
    memcpy(buf + 6, value + 6, n - 6);
    buf[n] = '\0';
    /* A range past the end is as wrong in an answer as a malformed one. */
    return fb_content_range_parse(first, last, complete, buf) == FB_OK ? FB_OK : FB_ERR_BAD_RANGE;
}

/* ---------------------------------------------------------------- sidecar */

void fbcp_sidecar_init(fbcp_sidecar *s)
{
    memset(s, 0, sizeof(*s));
    fbcp_ranges_init(&s->done);
}

void fbcp_sidecar_free(fbcp_sidecar *s)
{
    free(s->url);
    free(s->etag);
    free(s->chunk_sha);
    fbcp_ranges_free(&s->done);
    memset(s, 0, sizeof(*s));
}

fb_err fbcp_sidecar_set_hashes(fbcp_sidecar *s, const unsigned char *sha, uint64_t n)
{
    unsigned char *copy = NULL;

    if (n > 0) {
        if (n > SIZE_MAX / 32 || (copy = malloc((size_t)n * 32)) == NULL)
            return FB_ERR_NOMEM;
        memcpy(copy, sha, (size_t)n * 32);
    }
    free(s->chunk_sha);
    s->chunk_sha = copy;
    s->nhashed = n;
    return FB_OK;
}

fb_err fbcp_sidecar_write(const char *path, const fbcp_sidecar *s)
{
    json_t *doc = NULL, *done = fbcp_ranges_to_json(&s->done);
    char *text = NULL, *tmp = NULL, *hex = NULL;
    size_t len, off = 0, tl = strlen(path) + 8;
    int fd = -1;
    fb_err rv = FB_ERR_NOMEM;

    if (done == NULL)
        goto out;
    /* the chunk digests as one hex string, chunk 0 first */
    hex = malloc((size_t)s->nhashed * 64 + 1);
    if (hex == NULL) {
        json_decref(done);
        goto out;
    }
    hex[0] = '\0';
    for (uint64_t i = 0; i < s->nhashed; i++)
        fb_hex_encode(hex + i * 64, s->chunk_sha + i * 32, 32);
    doc = json_pack("{s:i, s:s, s:I, s:s, s:I, s:o, s:s}", "version", FBCP_SIDECAR_VERSION, "url", s->url,
                    "size", (json_int_t)s->size, "etag", s->etag != NULL ? s->etag : "", "chunk_size",
                    (json_int_t)s->chunk_size, "done", done, "chunk_sha256", hex);
    done = NULL; /* owned by doc now (or freed by json_pack on failure) */
    if (doc == NULL)
        goto out;
    text = json_dumps(doc, JSON_COMPACT);
    tmp = malloc(tl);
    if (text == NULL || tmp == NULL)
        goto out;
    snprintf(tmp, tl, "%s.tmp", path);
    rv = FB_ERR_LOCAL_IO;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        goto out;
    len = strlen(text);
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        off += (size_t)n;
    }
    if (write(fd, "\n", 1) != 1 || fsync(fd) != 0)
        goto out;
    if (close(fd) != 0) {
        fd = -1;
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto out;
    rv = FB_OK;
out:
    if (fd >= 0)
        close(fd);
    if (rv != FB_OK && tmp != NULL)
        unlink(tmp);
    free(tmp);
    free(text);
    free(hex);
    json_decref(doc);
    return rv;
}

fb_err fbcp_sidecar_read(fbcp_sidecar *s, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;
    size_t off = 0;
    json_t *doc = NULL;
    json_int_t version = 0, size = -1, chunk = 0;
    const char *url = NULL, *etag = NULL, *hex = NULL;
    json_t *done = NULL;
    fb_err rv = FB_ERR_LOCAL_IO;
    size_t hexlen;

    fbcp_sidecar_init(s);
    if (fd < 0)
        return errno == ENOENT ? FB_ERR_NOT_FOUND : FB_ERR_LOCAL_IO;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > 64 * 1024 * 1024)
        goto out;
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL)
        goto out;
    while (off < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + off, (size_t)st.st_size - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        off += (size_t)n;
    }
    doc = json_loadb(buf, off, 0, NULL);
    if (doc == NULL ||
        json_unpack(doc, "{s:I, s:s, s:I, s:s, s:I, s:o, s:s}", "version", &version, "url", &url, "size",
                    &size, "etag", &etag, "chunk_size", &chunk, "done", &done, "chunk_sha256", &hex) != 0)
        goto out;
    if (version != FBCP_SIDECAR_VERSION || size < 0 || chunk <= 0 || chunk > (json_int_t)UINT32_MAX)
        goto out;
    /* whole digests, no more than the file has chunks */
    hexlen = strlen(hex);
    if (hexlen % 64 != 0 || hexlen / 64 > ((uint64_t)size + (uint64_t)chunk - 1) / (uint64_t)chunk)
        goto out;
    s->nhashed = hexlen / 64;
    if (s->nhashed > 0) {
        s->chunk_sha = malloc((size_t)s->nhashed * 32);
        if (s->chunk_sha == NULL)
            goto out;
        for (uint64_t i = 0; i < s->nhashed; i++) {
            char one[65];

            memcpy(one, hex + i * 64, 64);
            one[64] = '\0';
            if (fb_hex_decode(s->chunk_sha + i * 32, 32, one) != FB_OK)
                goto out;
        }
    }
    s->size = (uint64_t)size;
    s->chunk_size = (uint32_t)chunk;
    s->url = strdup(url);
    s->etag = strdup(etag);
    if (s->url == NULL || s->etag == NULL || fbcp_ranges_from_json(&s->done, done, s->size) != FB_OK)
        goto out;
    rv = FB_OK;
out:
    if (rv != FB_OK)
        fbcp_sidecar_free(s);
    json_decref(doc);
    free(buf);
    close(fd);
    return rv;
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
