/* fb_checkpoint: the progress sidecar beside a partial file (DESIGN.md section 5).
 *
 * It records which chunks of the partial file are durably on disk. Callers write it only
 * after fdatasync of the partial file, from a bitmap snapshot taken before that sync, so
 * every chunk it names is really there. Written to a temporary name, fsynced, renamed over
 * the old one: a crash leaves the old or the new checkpoint, never a torn one. Versioned,
 * with a SHA-256 over its contents so a damaged sidecar is ignored (progress restarts at 0,
 * nothing is lost but time). */
#ifndef FB_CHECKPOINT_H
#define FB_CHECKPOINT_H

#include <stdint.h>

#include "fb_err.h"
#include "fb_table.h"

#define FB_CHECKPOINT_MAGIC "FBCKPT\0\0"
#define FB_CHECKPOINT_VERSION 1

typedef struct fb_checkpoint {
    uint64_t size;
    uint32_t chunk_size;
    uint64_t nchunks;
    uint64_t bitmap[FB_BITMAP_WORDS];
} fb_checkpoint;

/* Writes CP to RELNAME beneath DIRFD atomically (RELNAME.tmp, fdatasync, renameat, fsync dir).
 * RELNAME may name subdirectories (they must exist); it must stay beneath DIRFD
 * (FB_ERR_PATH_ESCAPE / FB_ERR_BAD_PATH otherwise). Concurrent writers of one checkpoint, in
 * any processes, are serialised by an flock on RELNAME.tmp; the last rename wins. A stale
 * RELNAME.tmp is reused. The file gets mode 0660 (Apache and udpd may share only a group).
 * Bits past NCHUNKS are stored as 0. FB_ERR_INTERNAL if CP is inconsistent (chunk_size 0,
 * nchunks not ceil(size / chunk_size), or more than FB_BITMAP_BITS). */
fb_err fb_checkpoint_write(int dirfd, const char *relname, const fb_checkpoint *cp);

/* Reads and validates (every length, the field consistency and the SHA-256). FB_ERR_NOT_FOUND
 * if absent; FB_ERR_IO if damaged, of another version, or a symlink. */
fb_err fb_checkpoint_read(fb_checkpoint *cp, int dirfd, const char *relname);

/* Removes the checkpoint and any stale RELNAME.tmp (missing is not an error). */
fb_err fb_checkpoint_remove(int dirfd, const char *relname);

#endif
