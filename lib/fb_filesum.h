/* fb_filesum: a committed file's SHA-256 kept with the file, and its Repr-Digest (RFC 9530).
 *
 * At commit the module stores the digest it verified in the extended attribute
 * FB_FILESUM_XATTR, together with what it is valid for: the file's size, modification time,
 * st_dev and st_ino, and the time it was set (the file's change time must fall within
 * FB_FILESUM_CTIME_WINDOW_NS of it: every later write, truncate, chmod or rename moves the change
 * time on, and no user can set it back). A digest is served only while all of these still hold,
 * so a file changed afterwards, by any means, loses its digest instead of being served with a
 * stale one. The value is text: "1 <64 hex> <size> <mtime_ns> <dev> <ino> <set_ns>".
 *
 * The formatting and parsing functions are pure (no I/O) so that they can be unit-tested; the
 * two xattr calls are the only I/O. */
#ifndef FB_FILESUM_H
#define FB_FILESUM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "fb_err.h"

#define FB_FILESUM_XATTR "user.fallback.sha256"
#define FB_FILESUM_MAX 192 /* longest attribute value, NUL included */
/* The change time may lie this far after the digest was set (the rename into place follows it)
 * and 1 s before (coarse file-system clocks). */
#define FB_FILESUM_CTIME_WINDOW_NS (2ull * 1000 * 1000 * 1000)
#define FB_FILESUM_CTIME_EARLY_NS (1ull * 1000 * 1000 * 1000)
/* "sha-256=:" + 44 base64 characters + ":" + NUL */
#define FB_REPR_DIGEST_LEN 55

/* The attribute value for SHA on the file described by ST, set at SET_NS (CLOCK_REALTIME, ns).
 * Returns the length written (without NUL), 0 if OUTLEN is too small. */
size_t fb_filesum_format(char *out, size_t outlen, const uint8_t sha[32], const struct stat *st,
                         uint64_t set_ns);

/* Parses an attribute value of LEN bytes (no NUL needed) and checks it against ST, the file as it
 * is now. 1 with the digest in SHA if well formed and still valid; 0 otherwise. */
int fb_filesum_parse(uint8_t sha[32], const char *value, size_t len, const struct stat *st);

/* Stores SHA on the open file FD (fsetxattr), valid for the file as it is now. Call it after the
 * last change to the file's data, mode and times, just before the rename into place.
 * FB_ERR_IO (errno kept) when the file system has no user extended attributes. */
fb_err fb_filesum_set(int fd, const uint8_t sha[32]);

/* 1 with the digest in SHA if the open file FD carries a digest valid for it now; 0 otherwise. */
int fb_filesum_get(uint8_t sha[32], int fd);

/* The RFC 9530 field value for SHA: "sha-256=:<base64>:". */
void fb_repr_digest_format(char out[FB_REPR_DIGEST_LEN], const uint8_t sha[32]);

/* Finds the sha-256 member of a Repr-Digest field value (a Structured Fields dictionary such as
 * "sha-512=:...:, sha-256=:...:") and decodes it into SHA. 1 if found and 32 bytes; 0 otherwise. */
int fb_repr_digest_parse(uint8_t sha[32], const char *value);

#endif
