/* fb_util: small helpers every part needs: hex, random bytes, SHA-256 of a file, time. */
#ifndef FB_UTIL_H
#define FB_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "fb_err.h"

#define FB_SHA256_LEN 32
#define FB_SHA256_HEX_LEN 64

/* Lower-case hex of LEN bytes into OUT (needs 2*LEN+1). */
void fb_hex_encode(char *out, const unsigned char *in, size_t len);
/* Decodes exactly 2*LEN hex characters (either case) from IN; FB_ERR_BAD_REQUEST otherwise. */
fb_err fb_hex_decode(unsigned char *out, size_t len, const char *in);

/* Cryptographically random bytes (OpenSSL RAND_bytes). */
fb_err fb_random_bytes(unsigned char *out, size_t len);

/* SHA-256 of the first SIZE bytes of the open file FD (pread, no seek). */
fb_err fb_sha256_fd(unsigned char out[FB_SHA256_LEN], int fd, uint64_t size);

/* CLOCK_REALTIME and CLOCK_MONOTONIC in nanoseconds. */
uint64_t fb_time_now_ns(void);
uint64_t fb_time_mono_ns(void);

/* Constant-time comparison; 1 if equal. */
int fb_mem_equal_ct(const void *a, const void *b, size_t len);

#endif
