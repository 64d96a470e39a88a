/* fbcp_ranges: sorted lists of disjoint byte ranges (what is missing, done, to send), their
 * set operations, the request share of a queued range, and their JSON form. Pure. */
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
