/* fb_table_private.h: what fb_table.c (the slots) and fb_table_open.c (creating and attaching
 * the file) share. Not part of libfb's interface (that is fb_table.h). */
#ifndef FB_TABLE_PRIVATE_H
#define FB_TABLE_PRIVATE_H

#include <stddef.h>
#include <stdint.h>

struct fb_table {
    unsigned char *base;
    size_t map_size;
    uint32_t nslots;
    _Atomic uint32_t cursor; /* where the next claim starts scanning; spreads processes apart */
};

/* fb_table.c */
/* vsnprintf into ERRBUF (may be NULL). */
__attribute__((format(printf, 3, 4))) void table_errf(char *errbuf, size_t errlen, const char *fmt, ...);
/* LEN bytes of IN as lower-case hex into OUT (2 * LEN + 1 bytes). */
void table_hex(char *out, const unsigned char *in, size_t len);

#endif
