/* fb_path: resolving client-supplied paths beneath a docroot so that no "..", absolute path or
 * symlink can escape it. The syntax check is pure; opening uses openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS) so the kernel enforces containment at every component. */
#ifndef FB_PATH_H
#define FB_PATH_H

#include <sys/types.h>

#include "fb_err.h"

#define FB_PATH_MAX 1024 /* longest relative path accepted from a client */

/* Checks and normalises a client path (already percent-decoded by the caller): well-formed UTF-8
 * (no overlong forms or surrogates, so it can go into JSON), no NUL or control characters
 * (< 0x20, 0x7f), not absolute, no "." or ".." components, no empty components except one
 * trailing "/", no component longer than NAME_MAX, no component that is one of our hidden
 * partial/checkpoint names (see fb_path_is_partial_name), at most FB_PATH_MAX bytes in all.
 * Backslashes are ordinary characters. The normalised path (trailing slash removed) is written
 * to OUT (capacity OUTLEN; OUT may be RELPATH itself).
 * Returns FB_ERR_PATH_ESCAPE for any ".." component or an absolute path (even if the path has
 * other problems too), FB_ERR_BAD_PATH for every other problem, including OUT too small.
 * The empty path "" (the docroot itself) is valid. */
fb_err fb_path_check(char *out, size_t outlen, const char *relpath);

/* Opens RELPATH (already checked) beneath the directory DIRFD with FLAGS/MODE via openat2 and
 * RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS; O_CLOEXEC is always added. "" opens DIRFD's directory
 * itself. *PFD receives the descriptor (-1 on failure). Symlinks inside the tree that stay
 * inside are followed; any escape (EXDEV) or symlink loop/magic link (ELOOP) gives
 * FB_ERR_PATH_ESCAPE; other errors map through fb_err_from_errno (ENOENT -> FB_ERR_NOT_FOUND,
 * EEXIST -> FB_ERR_EXISTS, EACCES -> FB_ERR_PERMISSION, ...). */
fb_err fb_path_open_beneath(int *pfd, int dirfd, const char *relpath, int flags, mode_t mode);

/* Creates the parent directories of RELPATH (everything before its last "/") beneath DIRFD
 * (mode 0755 before umask, like mkdir -p); existing ones are fine. Each prefix is resolved from
 * DIRFD with RESOLVE_BENEATH before anything is created in it, so a symlink inside the tree that
 * stays inside is followed and one that leaves gives FB_ERR_PATH_ESCAPE with nothing created
 * outside. A component that exists but is not a directory gives FB_ERR_BAD_PATH. */
fb_err fb_path_mkdirs_beneath(int dirfd, const char *relpath);

/* The hidden partial file and checkpoint names beside a target: for "a/b/file.bin" writes
 * "a/b/.file.bin.fbpart" and "a/b/.file.bin.fbpart.ckpt". FB_ERR_BAD_PATH if RELPATH is empty,
 * ends in "/", or the result does not fit in OUTLEN. (A checkpoint writer's temporary file
 * should be the checkpoint name + ".tmp", which fb_path_is_partial_name also hides.) */
fb_err fb_path_partial_name(char *out, size_t outlen, const char *relpath);
fb_err fb_path_checkpoint_name(char *out, size_t outlen, const char *relpath);
/* A pack's manifest sidecar beside its partial file: "a/.NAME.fbpart.manifest" for "a/NAME"
 * (its writer's temporary is that + ".tmp"). Errors as above. */
fb_err fb_path_manifest_name(char *out, size_t outlen, const char *relpath);

/* True if NAME (one directory entry) is a partial or checkpoint file to hide from listings:
 * it starts with "." and ends with ".fbpart", ".fbpart.ckpt" or ".fbpart.ckpt.tmp"; or one of a
 * pack's (docs/HTTP-API.md, "Packs"): the manifest sidecar (".fbpart.manifest", its temporary
 * ".fbpart.manifest.tmp"), a file being unpacked at commit (".fbpart.unpack"), or the pack's own
 * name, ".fbpack-" and exactly 32 lower-case hex digits. */
int fb_path_is_partial_name(const char *name);

#endif
