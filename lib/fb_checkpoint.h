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

/* Writes CP to RELNAME beneath DIRFD atomically (RELNAME.tmp, fsync, renameat, fsync dir). */
fb_err fb_checkpoint_write(int dirfd, const char *relname, const fb_checkpoint *cp);

/* Reads and validates. FB_ERR_NOT_FOUND if absent; FB_ERR_IO if damaged or of another version. */
fb_err fb_checkpoint_read(fb_checkpoint *cp, int dirfd, const char *relname);

/* Removes the checkpoint (missing is not an error). */
fb_err fb_checkpoint_remove(int dirfd, const char *relname);

#endif
