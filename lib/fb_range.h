/* fb_range: byte-range and chunk arithmetic, strict Content-Range parsing (RFC 9110 14.4) and
 * the chunk bitmap helpers. Pure code: no I/O, no allocation. */
#ifndef FB_RANGE_H
#define FB_RANGE_H

#include <stddef.h>
#include <stdint.h>

#include "fb_err.h"

/* A half-open byte range [offset, offset + length). */
typedef struct fb_range {
    uint64_t offset;
    uint64_t length;
} fb_range;

/* Number of chunks for SIZE bytes (0 for an empty file). CHUNK_SIZE must be > 0. */
uint64_t fb_chunk_count(uint64_t size, uint32_t chunk_size);

/* Byte range of chunk INDEX (the last one may be short). An INDEX past the last chunk gives the
 * empty range {SIZE, 0}. */
fb_range fb_chunk_range(uint64_t size, uint32_t chunk_size, uint64_t index);

/* Chunks wholly inside [offset, offset+length) of a SIZE-byte file: *PFIRST .. *PLAST_EXCL.
 * The final, short chunk counts as whole when the range reaches SIZE. Bytes past SIZE (and an
 * offset + length that overflows) are clamped to SIZE. If no chunk is covered both are 0. */
void fb_chunks_covered(uint64_t *pfirst, uint64_t *plast_excl, uint64_t size, uint32_t chunk_size,
                       uint64_t offset, uint64_t length);

/* Parses a Content-Range value of the form "bytes FIRST-LAST/COMPLETE" strictly: lower-case
 * "bytes", exactly one space, digits only (leading zeros allowed), no signs or other spaces, no
 * value above UINT64_MAX. "bytes * /N" and "/ *" forms are rejected (not valid on a request).
 * Returns FB_ERR_BAD_RANGE for bad syntax or FIRST > LAST, FB_ERR_RANGE_NOT_SATISFIABLE for
 * LAST >= COMPLETE (so COMPLETE 0 never parses). The outputs are written only on FB_OK. */
fb_err fb_content_range_parse(uint64_t *pfirst, uint64_t *plast, uint64_t *pcomplete, const char *value);

/* Parses S as a whole as ASCII decimal digits (no sign, no spaces, leading zeros fine) into
 * *PVAL; 0 if S is empty, has anything else, or does not fit in 64 bits. For header values such
 * as Content-Length. */
int fb_decimal_parse(uint64_t *pval, const char *s);

/* Plain (non-atomic) bitmap helpers; the session table has atomic versions. */
int fb_bitmap_get(const uint64_t *words, uint64_t bit);
void fb_bitmap_set(uint64_t *words, uint64_t bit);
uint64_t fb_bitmap_count(const uint64_t *words, uint64_t nbits);

/* Writes the byte ranges of the chunks whose bit is clear (adjacent chunks merged, in order) into
 * OUT (capacity MAX; OUT may be NULL when MAX is 0). Returns the total number of ranges (which
 * may exceed MAX: only MAX are written). *PMISSING_BYTES, if not NULL, receives the byte total of
 * all missing ranges. Bits past the last chunk are ignored; SIZE 0 has no ranges. */
size_t fb_bitmap_missing(fb_range *out, size_t max, uint64_t *pmissing_bytes, const uint64_t *words,
                         uint64_t size, uint32_t chunk_size);

#endif
