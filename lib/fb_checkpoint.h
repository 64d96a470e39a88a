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
/* 4: the partial file's identity, the source's identity and (with FLAG_SOURCE_MTIME) the
 * source's modification time. Versions 1 to 3 are refused (read as damaged): they cannot say
 * which content their chunks hold, so such an upload starts over. */
#define FB_CHECKPOINT_VERSION 4

#define FB_CHECKPOINT_FLAG_SHA256 1u       /* expected_sha256 is set */
#define FB_CHECKPOINT_FLAG_SOURCE_MTIME 2u /* source_mtime_ns is set */

typedef struct fb_checkpoint {
    uint64_t size;
    uint32_t chunk_size;
    /* FB_CHECKPOINT_FLAG_*: writers set it from the session (the slot's
     * FB_SLOT_FLAG_EXPECTED_SHA256), 0 when the session has no expected digest; never leave it
     * uninitialised. Read back as 0 from version-1 files. */
    uint32_t flags;
    uint64_t nchunks;
    /* The digest the upload was created with (POST sessions "sha256"), if FLAG_SHA256: a resume
     * joins this checkpoint only with the same expectation. All zero otherwise. */
    uint8_t expected_sha256[32];
    /* The client's modification time of its file (the slot's info.source_mtime_ns), if
     * FLAG_SOURCE_MTIME; 0 otherwise. Kept so that what the partial file was written for is on
     * record with it. */
    uint64_t source_mtime_ns;
    /* The partial file the chunks were written to (st_dev, st_ino, taken from the descriptor the
     * writer synced): a resume joins only the same inode, so a partial file deleted or replaced
     * since is never credited with chunks it does not hold. */
    uint64_t part_dev, part_ino;
    /* The upload's source identity (POST sessions "source_id", fb_slot_info.source_id; all 0
     * when none was given): a resume joins only the same identity. */
    uint8_t source_id[32];
    uint64_t bitmap[FB_BITMAP_WORDS];
} fb_checkpoint;

/* Writes CP to RELNAME beneath DIRFD atomically (RELNAME.tmp, fdatasync, renameat, fsync dir).
 * RELNAME may name subdirectories (they must exist); it must stay beneath DIRFD
 * (FB_ERR_PATH_ESCAPE / FB_ERR_BAD_PATH otherwise). Concurrent writers of one checkpoint, in
 * any processes, are serialised by an flock on RELNAME.tmp; the last rename wins. A stale
 * RELNAME.tmp is reused. The file gets mode 0660 (Apache and udpd may share only a group).
 * Bits past NCHUNKS are stored as 0. FB_ERR_INTERNAL if CP is inconsistent (chunk_size 0,
 * nchunks not ceil(size / chunk_size), more than FB_BITMAP_BITS, or unknown FLAGS bits).
 * Always writes version 4; expected_sha256 is stored only with FB_CHECKPOINT_FLAG_SHA256,
 * source_mtime_ns only with FB_CHECKPOINT_FLAG_SOURCE_MTIME. */
fb_err fb_checkpoint_write(int dirfd, const char *relname, const fb_checkpoint *cp);

/* Reads and validates (every length, the field consistency and the SHA-256). Version 4 only.
 * FB_ERR_NOT_FOUND if absent; FB_ERR_IO if damaged, of another version (older ones included) or
 * with unknown flags, or a symlink. */
fb_err fb_checkpoint_read(fb_checkpoint *cp, int dirfd, const char *relname);

/* Removes the checkpoint and any stale RELNAME.tmp (missing is not an error). */
fb_err fb_checkpoint_remove(int dirfd, const char *relname);

#endif
