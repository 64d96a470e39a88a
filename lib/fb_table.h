/* fb_table: the session table shared by mod_fallback (every Apache child, both generations
 * during a graceful restart) and udpd, in one memory-mapped file (DESIGN.md section 3).
 *
 * Layout: a versioned header, then NSLOTS fixed-size slots addressed by index. No pointers
 * inside. Slot state is an atomic changed by compare-and-swap:
 *
 *   FREE -> CLAIMED -> ACTIVE -> FINALISING -> DONE
 *                        ^           |
 *                        +-----------+  (commit failed: back to ACTIVE)
 *   any -> FAILED / FREE (cancel)
 *
 * The process that claims a slot fills its descriptive fields under the slot's seqlock while it
 * is CLAIMED, then publishes it as ACTIVE. After that the descriptive fields never change;
 * progress lives in atomics and the chunk bitmap (atomic OR). A process killed at any point
 * leaves at worst a CLAIMED or FINALISING slot with a dead owner pid, which fb_table_claim
 * and fb_table_recover_slot repair. The file is created under a temporary name, initialised,
 * and linked into place, so a reader never sees a half-built table; it is never truncated or
 * zeroed once published. Mode 0660; attach refuses world-accessible files or foreign owners.
 *
 * Ownership of a slot in CLAIMED or FINALISING is OWNER_PID, taken by compare-and-swap (0 or a
 * dead pid -> our pid) before the state CAS and given back (-> 0) when the slot leaves those
 * states. So exactly one process holds a CLAIMED/FINALISING slot, and a dead holder is detected
 * with kill(pid, 0) == ESRCH (pids in the same pid namespace; a recycled pid looks alive, which
 * only delays recovery). Callers never write OWNER_PID or STATE directly: use fb_table_claim,
 * fb_slot_transition and fb_slot_release. Threads of one process share a pid: the owner CAS
 * still makes them exclude each other, but a thread must not transition a slot another thread
 * of its process holds. A process that caches a slot index across requests compares GENERATION
 * (bumped at each claim) before trusting it. */
#ifndef FB_TABLE_H
#define FB_TABLE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "fb_err.h"

#define FB_TABLE_MAGIC "FBSESS\0\0" /* 8 bytes */
#define FB_TABLE_VERSION_MAJOR 4 /* 2: running digest in the slot; 3: a download's file identity;
                                  * 4: an upload's source time and identity */
#define FB_TABLE_VERSION_MINOR 0

#define FB_BITMAP_BITS 131072u /* chunks per session; chunk size grows for huge files */
#define FB_BITMAP_WORDS (FB_BITMAP_BITS / 64u)
#define FB_USER_MAX 128
#define FB_RELPATH_MAX 1040 /* FB_PATH_MAX + NUL, rounded */
#define FB_DOCROOT_MAX 1024
#define FB_KEY_LEN 32
#define FB_ID_RANDOM_LEN 12
#define FB_SESSION_ID_LEN 32         /* hex characters: 8 for the slot index, 24 random */
#define FB_TABLE_MAX_SLOTS 65536u    /* each slot is about 18 KiB */
#define FB_CHUNK_SIZE_MAX (1u << 30) /* fb_table_chunk_size_for never goes beyond 1 GiB */

typedef enum fb_slot_state {
    FB_SLOT_FREE = 0,
    FB_SLOT_CLAIMED = 1,
    FB_SLOT_ACTIVE = 2,
    FB_SLOT_FINALISING = 3,
    FB_SLOT_DONE = 4,
    FB_SLOT_FAILED = 5,
} fb_slot_state;

typedef enum fb_direction { FB_DIR_UPLOAD = 1, FB_DIR_DOWNLOAD = 2 } fb_direction;
typedef enum fb_overwrite {
    FB_OVERWRITE_NEVER = 0,
    FB_OVERWRITE_ALWAYS = 1,
    FB_OVERWRITE_IF_DIFFERENT = 2,
    FB_OVERWRITE_OLDER = 3,              /* only a target older than the source's mtime */
    FB_OVERWRITE_IF_DIFFERENT_OLDER = 4, /* only an older target that also differs */
} fb_overwrite;

#define FB_SLOT_FLAG_EXPECTED_SHA256 1u /* expected_sha256 is set */
#define FB_SLOT_FLAG_RESUMED 2u         /* progress was loaded from a checkpoint */
#define FB_SLOT_FLAG_SOURCE_MTIME 4u    /* source_mtime_ns is set (0 is a valid time) */
#define FB_SLOT_FLAG_PACK 8u            /* an upload pack: many files in one session */

/* Descriptive fields: written only while CLAIMED, under the seqlock. */
typedef struct fb_slot_info {
    uint8_t id_random[FB_ID_RANDOM_LEN];
    uint8_t key[FB_KEY_LEN];
    uint32_t direction; /* fb_direction */
    uint32_t chunk_size;
    uint32_t pad0; /* explicit: keeps SIZE 8-aligned, always 0 */
    uint64_t size;
    uint64_t nchunks;
    uint32_t overwrite; /* fb_overwrite */
    uint32_t file_mode;
    uint32_t flags;  /* FB_SLOT_FLAG_* */
    uint32_t cipher; /* fb_cipher bit chosen (UDP) */
    uint64_t created_ns;
    uint8_t expected_sha256[32];
    char user[FB_USER_MAX];
    char relpath[FB_RELPATH_MAX];
    char docroot[FB_DOCROOT_MAX];
    /* Download: the file as the session was created (st_dev, st_ino, modification and change
     * times in ns since the epoch): udpd only vouches for a file that is still this one
     * (PROTOCOL.md 8.5). Upload: FILE_DEV and FILE_INO are the partial file the session created
     * (the times 0): the module's PUT, udpd and a resume use only that inode, so a partial file
     * deleted or replaced on the server is never credited with the session's chunks. */
    uint64_t file_dev, file_ino, file_mtime_ns, file_ctime_ns;
    /* Upload: the modification time of the client's file (ns since the epoch; given when
     * FB_SLOT_FLAG_SOURCE_MTIME is set), applied to the target at commit and compared under the
     * "older" overwrite policies. */
    uint64_t source_mtime_ns;
    /* Upload: what the client says identifies its file's content (opaque; all 0 = not given).
     * Progress is only resumed for the same identity. */
    uint8_t source_id[32];
} fb_slot_info;

typedef struct fb_slot {
    _Atomic uint32_t state;      /* fb_slot_state */
    _Atomic uint32_t seq;        /* seqlock over INFO: odd while being written */
    _Atomic uint32_t generation; /* incremented at each claim */
    _Atomic int32_t owner_pid;   /* process holding CLAIMED or FINALISING */
    _Atomic uint64_t state_since_ns;
    _Atomic uint64_t last_activity_ns; /* CLOCK_REALTIME; data writers bump it, idle reuse reads it */
    _Atomic uint64_t bytes_http;       /* payload bytes written over HTTP(S) */
    _Atomic uint64_t bytes_udp;        /* payload bytes written over UDP */
    _Atomic uint64_t chunks_done;      /* bits set in BITMAP */
    _Atomic uint32_t error_code;       /* fb_err when FAILED */
    _Atomic uint32_t writers;          /* requests currently writing data (informational) */
    uint8_t reserved[64];
    fb_slot_info info;
    /* Running SHA-256 of the file's completed prefix (see fb_digest.h), so that a commit does
     * not have to read the whole file: HASH_POS is (bytes folded in) << 1 | index of the
     * consistent copy in HASH_STATE; the other copy is the one being written. HASH_OWNER is
     * the pid currently advancing it (0 when none). */
    _Atomic uint64_t hash_pos;
    _Atomic int32_t hash_owner;
    uint32_t pad1;
    uint8_t hash_state[2][128];
    /* Cache-line aligned, which also makes the slot size a multiple of 64. */
    _Alignas(64) _Atomic uint64_t bitmap[FB_BITMAP_WORDS];
} fb_slot;

/* The layout crosses process boundaries (and builds): pin it. */
_Static_assert(offsetof(fb_slot_info, size) == 56, "slot info layout");
_Static_assert(offsetof(fb_slot_info, expected_sha256) == 96, "slot info layout");
_Static_assert(offsetof(fb_slot_info, docroot) == 1296, "slot info layout");
_Static_assert(offsetof(fb_slot_info, file_dev) == 2320, "slot info layout");
_Static_assert(offsetof(fb_slot_info, source_mtime_ns) == 2352, "slot info layout");
_Static_assert(sizeof(fb_slot_info) == 2392, "slot info layout");
_Static_assert(offsetof(fb_slot, reserved) == 64, "slot layout: atomics fill the first cache line");
_Static_assert(offsetof(fb_slot, info) == 128, "slot layout");
_Static_assert(offsetof(fb_slot, hash_pos) == 2520, "slot layout");
_Static_assert(offsetof(fb_slot, bitmap) == 2816, "slot layout");
_Static_assert(sizeof(fb_slot) == 19200, "slot layout");
_Static_assert(sizeof(fb_slot) % 64 == 0, "slots are whole cache lines");

typedef struct fb_table_header {
    char magic[8];
    uint16_t version_major;
    uint16_t version_minor;
    uint32_t header_size;
    uint64_t total_size;
    uint32_t slot_size;
    uint32_t nslots;
    uint8_t boot_id[16];
    _Atomic uint64_t heartbeat_ns; /* bumped by udpd; informational */
    _Atomic int32_t udpd_pid;
    uint8_t reserved[196];
} fb_table_header;

_Static_assert(sizeof(fb_table_header) == 256, "table header layout");
_Static_assert(offsetof(fb_table_header, boot_id) == 32 && offsetof(fb_table_header, heartbeat_ns) == 48,
               "table header layout");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2 && ATOMIC_INT_LOCK_FREE == 2,
               "lock-free atomics needed in shared memory");

typedef struct fb_table fb_table; /* process-local handle */

/* Options for fb_table_open. */
typedef struct fb_table_opts {
    uint32_t nslots; /* used only when creating */
    int create;      /* create if missing */
    uid_t owner_uid; /* when creating as root: chown to this uid/gid; (uid_t)-1 keeps */
    gid_t owner_gid;
    uid_t trusted_uid; /* attach accepts files owned by root, by geteuid(), by this uid, or by
                        * owner_uid; (uid_t)-1 for none */
} fb_table_opts;

/* Attaches to the table at PATH, or creates it if missing and opts->create (built under
 * PATH.tmp.<pid>.<random>, published with link() so that of several processes racing to create
 * it all attach to the first one; the parent directory is created with mode 0770 if missing).
 * An existing table is never truncated or rewritten: its slot count wins over opts->nslots.
 * Refuses a file whose magic or major version differ (FB_ERR_SHM_VERSION), a symlink or
 * non-regular file, a file whose mode gives any access to others or whose owner is not trusted
 * (FB_ERR_SHM_PERMS). FB_ERR_NOT_FOUND if missing and not creating. OPTS may be NULL (attach
 * only). Errors in ERRBUF (may be NULL). */
fb_err fb_table_open(fb_table **ptable, const char *path, const fb_table_opts *opts, char *errbuf,
                     size_t errlen);
void fb_table_close(fb_table *table);

fb_table_header *fb_table_header_get(fb_table *table);
uint32_t fb_table_nslots(const fb_table *table);
fb_slot *fb_table_slot(fb_table *table, uint32_t index);

/* Chunk size for a SIZE-byte file: PREFERRED (1 MiB if 0, at most FB_CHUNK_SIZE_MAX), doubled
 * until the file fits FB_BITMAP_BITS chunks, capped at FB_CHUNK_SIZE_MAX. A file larger than
 * FB_CHUNK_SIZE_MAX * FB_BITMAP_BITS still does not fit: check fb_table_nchunks_for. */
uint32_t fb_table_chunk_size_for(uint64_t size, uint32_t preferred);
/* ceil(SIZE / CHUNK_SIZE); 0 for a 0-byte file; UINT64_MAX if CHUNK_SIZE is 0. */
uint64_t fb_table_nchunks_for(uint64_t size, uint32_t chunk_size);

/* Claims a slot for the caller (state CLAIMED, owner_pid = getpid(), generation bumped, info and
 * bitmap zeroed, counters reset). Reuses FREE slots first, then CLAIMED/FINALISING ones whose
 * owner process no longer exists (a dead FINALISING one is first recovered to ACTIVE) and
 * DONE/FAILED slots older than DONE_LINGER seconds; then, when none of those is left, the
 * DONE/FAILED slot that finished longest ago however recently (DONE_LINGER only says how long a
 * finished session stays visible while there is room); last, ACTIVE ones idle for IDLE_TIMEOUT
 * seconds. NOW_NS is CLOCK_REALTIME. IDLE_TIMEOUT_S 0 means ACTIVE slots are never taken.
 * FB_ERR_TABLE_FULL when every slot holds a live session. */
fb_err fb_table_claim(fb_table *table, uint32_t *pindex, uint64_t now_ns, uint32_t idle_timeout_s,
                      uint32_t done_linger_s);

/* Seqlock writer side for INFO while CLAIMED. */
void fb_slot_info_write_begin(fb_slot *slot);
void fb_slot_info_write_end(fb_slot *slot);
/* Consistent copy of INFO (retries while a writer is active). A writer that died inside
 * write_begin/end leaves the sequence odd forever: after about 1,000,000 tries (with
 * sched_yield after the first thousand) the reader gives up and returns what it copied last. */
void fb_slot_info_read(fb_slot_info *out, fb_slot *slot);
/* Same, but returns 1 if the copy is consistent, 0 if it gave up. */
int fb_slot_info_read_checked(fb_slot_info *out, fb_slot *slot);

/* CAS FROM -> TO; on success updates state_since_ns and, for CLAIMED/FINALISING, owner_pid.
 * Returns 1 on success, 0 if the state was not FROM or (entering FINALISING) another live
 * process holds the slot. Leaving CLAIMED/FINALISING gives the ownership back, also on failure. */
int fb_slot_transition(fb_slot *slot, fb_slot_state from, fb_slot_state to);
/* Unconditionally frees the slot, wiping the key (the whole INFO, under the seqlock). For the
 * holder of a CLAIMED slot giving it up; to cancel a session found by id use fb_slot_cancel,
 * which cannot free a slot that was reused for another session meanwhile. */
void fb_slot_release(fb_slot *slot);
/* Frees the slot only if it still carries GENERATION (read when the session was looked up) and
 * is ACTIVE, DONE or FAILED: not while a commit holds it FINALISING. 1 if freed, else 0. */
int fb_slot_cancel(fb_slot *slot, uint32_t generation);

/* Name of a slot state ("free", "claimed", "active", "finalising", "done", "failed"). */
const char *fb_slot_state_name(uint32_t state);

/* Formats the public session id of slot INDEX ("%08x" index + 24 hex random). */
void fb_session_id_format(char out[FB_SESSION_ID_LEN + 1], uint32_t index,
                          const uint8_t random[FB_ID_RANDOM_LEN]);
/* Finds the slot of a session id: the syntax must be exact, the index in range, the slot in
 * ACTIVE, FINALISING, DONE or FAILED, and the random part equal (constant time).
 * FB_ERR_NOT_FOUND otherwise. */
fb_err fb_table_find(fb_table *table, uint32_t *pindex, const char *id);

/* Finds an ACTIVE upload with the same user, docroot, relpath and size (for resume). */
fb_err fb_table_find_upload(fb_table *table, uint32_t *pindex, const char *user, const char *docroot,
                            const char *relpath, uint64_t size);

/* Marks chunk INDEX complete (atomic OR); returns 1 if it was newly set (chunks_done bumped),
 * 0 if it was already set or INDEX >= info.nchunks or >= FB_BITMAP_BITS. */
int fb_slot_set_chunk(fb_slot *slot, uint64_t index);
/* 1 if chunk INDEX is complete; 0 otherwise or out of range. */
int fb_slot_chunk_done(fb_slot *slot, uint64_t index);
/* Copies the bitmap (FB_BITMAP_WORDS words) with atomic loads. */
void fb_slot_bitmap_copy(uint64_t *out, fb_slot *slot);

/* Repairs one slot whose owner died: CLAIMED -> FREE (info wiped), FINALISING -> ACTIVE.
 * Returns 1 if repaired, 0 if the slot needed nothing (or INDEX is out of range).
 * fb_table_claim calls it; readers may too. */
int fb_table_recover_slot(fb_table *table, uint32_t index);

#endif
