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

/* Byte range of chunk INDEX (the last one may be short). */
fb_range fb_chunk_range(uint64_t size, uint32_t chunk_size, uint64_t index);

/* Chunks wholly inside [offset, offset+length) of a SIZE-byte file: *PFIRST .. *PLAST_EXCL.
 * The final, short chunk counts as whole when the range reaches SIZE. Empty if none. */
void fb_chunks_covered(uint64_t *pfirst, uint64_t *plast_excl, uint64_t size, uint32_t chunk_size,
                       uint64_t offset, uint64_t length);

/* Parses a Content-Range value of the form "bytes FIRST-LAST/COMPLETE" strictly: digits only,
 * no signs or spaces besides the one after "bytes", no overflow, FIRST <= LAST < COMPLETE.
 * "bytes * /N" and "/ *" forms are rejected (not valid on a request). */
fb_err fb_content_range_parse(uint64_t *pfirst, uint64_t *plast, uint64_t *pcomplete, const char *value);

/* Plain (non-atomic) bitmap helpers; the session table has atomic versions. */
int fb_bitmap_get(const uint64_t *words, uint64_t bit);
void fb_bitmap_set(uint64_t *words, uint64_t bit);
uint64_t fb_bitmap_count(const uint64_t *words, uint64_t nbits);

/* Writes the byte ranges of the chunks whose bit is clear (adjacent chunks merged) into OUT
 * (capacity MAX). Returns the total number of ranges (which may exceed MAX: only MAX are
 * written). *PMISSING_BYTES, if not NULL, receives the byte total of all missing ranges. */
size_t fb_bitmap_missing(fb_range *out, size_t max, uint64_t *pmissing_bytes, const uint64_t *words,
                         uint64_t size, uint32_t chunk_size);

#endif
