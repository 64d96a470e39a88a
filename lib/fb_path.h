/* fb_path: resolving client-supplied paths beneath a docroot so that no "..", absolute path or
 * symlink can escape it. The syntax check is pure; opening uses openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS) so the kernel enforces containment at every component. */
#ifndef FB_PATH_H
#define FB_PATH_H

#include <sys/types.h>

#include "fb_err.h"

#define FB_PATH_MAX 1024 /* longest relative path accepted from a client */

/* Checks and normalises a client path: UTF-8 bytes, no NUL or control characters, not absolute,
 * no "." or ".." components, no empty components except a trailing "/", no component starting
 * with the partial-file prefix ".fbpart" naming scheme (see fb_path_partial_name), at most
 * FB_PATH_MAX bytes. Leading "/" is not allowed; repeated "/" are not allowed. The normalised
 * path (trailing slash removed) is written to OUT (capacity OUTLEN).
 * Returns FB_ERR_PATH_ESCAPE for ".." or absolute paths, FB_ERR_BAD_PATH for other problems.
 * The empty path "" (the docroot itself) is valid. */
fb_err fb_path_check(char *out, size_t outlen, const char *relpath);

/* Opens RELPATH (already checked) beneath the directory DIRFD with FLAGS/MODE via openat2 and
 * RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS. *PFD receives the descriptor. Symlinks inside the tree
 * that stay inside are followed; any escape gives FB_ERR_PATH_ESCAPE. */
fb_err fb_path_open_beneath(int *pfd, int dirfd, const char *relpath, int flags, mode_t mode);

/* Creates the parent directories of RELPATH beneath DIRFD (mode 0755, like mkdir -p),
 * each step resolved beneath DIRFD. */
fb_err fb_path_mkdirs_beneath(int dirfd, const char *relpath);

/* The hidden partial file and checkpoint names beside a target: for "a/b/file.bin" writes
 * "a/b/.file.bin.fbpart" and "a/b/.file.bin.fbpart.ckpt". */
fb_err fb_path_partial_name(char *out, size_t outlen, const char *relpath);
fb_err fb_path_checkpoint_name(char *out, size_t outlen, const char *relpath);

/* True if NAME (one directory entry) is a partial or checkpoint file to hide from listings. */
int fb_path_is_partial_name(const char *name);

#endif
