/* fb_range: chunk arithmetic, strict Content-Range parsing and plain chunk-bitmap helpers.
 * Pure code: no I/O, no allocation, no clock. Every input is assumed hostile: sizes near
 * UINT64_MAX must not overflow and a malformed header must never be half-accepted. */
#include "fb_range.h"

#include <string.h>

uint64_t fb_chunk_count(uint64_t size, uint32_t chunk_size)
{
    if (size == 0 || chunk_size == 0)
        return 0;
    /* (size - 1) / chunk + 1 rather than (size + chunk - 1) / chunk: no overflow near UINT64_MAX. */
    return (size - 1) / chunk_size + 1;
}

fb_range fb_chunk_range(uint64_t size, uint32_t chunk_size, uint64_t index)
{
    fb_range r = {size, 0};

    if (index >= fb_chunk_count(size, chunk_size))
        return r;
    /* index < count, so index * chunk_size < size: no overflow. */
    r.offset = index * chunk_size;
    r.length = size - r.offset < chunk_size ? size - r.offset : chunk_size;
    return r;
}

void fb_chunks_covered(uint64_t *pfirst, uint64_t *plast_excl, uint64_t size, uint32_t chunk_size,
                       uint64_t offset, uint64_t length)
{
    uint64_t end, first, last;

    *pfirst = 0;
    *plast_excl = 0;
    if (chunk_size == 0 || length == 0 || offset >= size)
        return;
    /* Bytes past the end of the file do not exist: clamp (and avoid offset + length overflow). */
    end = length > size - offset ? size : offset + length;
    first = offset / chunk_size + (offset % chunk_size != 0);
    /* A range that reaches the end of the file completes the final chunk even if it is short. */
    last = end == size ? fb_chunk_count(size, chunk_size) : end / chunk_size;
    if (first >= last)
        return;
    *pfirst = first;
    *plast_excl = last;
}

/* Parses one run of ASCII digits at *PP into *PVAL, advancing *PP. Fails on no digits or on a
 * value that does not fit in 64 bits (leading zeros are fine: they do not change the value). */
static int fb_parse_u64(uint64_t *pval, const char **pp)
{
    const char *p = *pp;
    uint64_t v = 0;

    if (*p < '0' || *p > '9')
        return 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');

        if (v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *pval = v;
    *pp = p;
    return 1;
}

int fb_decimal_parse(uint64_t *pval, const char *s)
{
    uint64_t v;

    if (s == NULL || !fb_parse_u64(&v, &s) || *s != '\0')
        return 0;
    *pval = v;
    return 1;
}

fb_err fb_content_range_parse(uint64_t *pfirst, uint64_t *plast, uint64_t *pcomplete, const char *value)
{
    static const char unit[] = "bytes ";
    const char *p = value;
    uint64_t first, last, complete;

    if (p == NULL || strncmp(p, unit, sizeof(unit) - 1) != 0)
        return FB_ERR_BAD_RANGE;
    p += sizeof(unit) - 1;
    if (!fb_parse_u64(&first, &p) || *p++ != '-')
        return FB_ERR_BAD_RANGE;
    if (!fb_parse_u64(&last, &p) || *p++ != '/')
        return FB_ERR_BAD_RANGE;
    if (!fb_parse_u64(&complete, &p) || *p != '\0')
        return FB_ERR_BAD_RANGE;
    if (first > last)
        return FB_ERR_BAD_RANGE;
    if (last >= complete)
        return FB_ERR_RANGE_NOT_SATISFIABLE;
    *pfirst = first;
    *plast = last;
    *pcomplete = complete;
    return FB_OK;
}

int fb_bitmap_get(const uint64_t *words, uint64_t bit)
{
    return (int)((words[bit / 64] >> (bit % 64)) & 1u);
}

void fb_bitmap_set(uint64_t *words, uint64_t bit)
{
    words[bit / 64] |= (uint64_t)1 << (bit % 64);
}

uint64_t fb_bitmap_count(const uint64_t *words, uint64_t nbits)
{
    uint64_t n = 0;
    uint64_t full = nbits / 64;

    for (uint64_t i = 0; i < full; i++)
        n += (uint64_t)__builtin_popcountll(words[i]);
    /* Bits past NBITS in the last word are not ours to count. */
    if (nbits % 64 != 0)
        n += (uint64_t)__builtin_popcountll(words[full] & (((uint64_t)1 << (nbits % 64)) - 1));
    return n;
}

/* Index of the first bit at or after FROM whose value is WANT (0 or 1), or NBITS if none.
 * Works a word at a time so that a large, mostly complete bitmap is scanned quickly. */
static uint64_t fb_bitmap_next(const uint64_t *words, uint64_t nbits, uint64_t from, int want)
{
    while (from < nbits) {
        uint64_t w = want ? words[from / 64] : ~words[from / 64];

        w &= ~(uint64_t)0 << (from % 64);
        if (w != 0) {
            uint64_t bit = from - from % 64 + (uint64_t)__builtin_ctzll(w);

            return bit < nbits ? bit : nbits;
        }
        from = from - from % 64 + 64;
    }
    return nbits;
}

size_t fb_bitmap_missing(fb_range *out, size_t max, uint64_t *pmissing_bytes, const uint64_t *words,
                         uint64_t size, uint32_t chunk_size)
{
    uint64_t nchunks = fb_chunk_count(size, chunk_size);
    uint64_t missing = 0;
    uint64_t i = 0;
    size_t n = 0;

    while (i < nchunks) {
        uint64_t start = fb_bitmap_next(words, nchunks, i, 0);
        uint64_t stop, off, end;

        if (start >= nchunks)
            break;
        stop = fb_bitmap_next(words, nchunks, start, 1);
        off = start * chunk_size;
        /* stop * chunk_size may overflow when stop == nchunks and SIZE is near UINT64_MAX. */
        end = stop >= nchunks ? size : stop * chunk_size;
        if (n < max) {
            out[n].offset = off;
            out[n].length = end - off;
        }
        n++;
        missing += end - off;
        i = stop;
    }
    if (pmissing_bytes != NULL)
        *pmissing_bytes = missing;
    return n;
}
