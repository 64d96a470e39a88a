/* fb_digest: the running SHA-256 of an upload, kept in its session slot.
 *
 * Whoever completes a chunk at the front of the file (an Apache child writing a PUT, or udpd)
 * folds the completed prefix into the slot's digest state, reading the data back from the
 * partial file (normally still in the page cache). A commit then only hashes what is left, so
 * committing a large file does not stall on reading it all again, and any process can commit.
 *
 * The state crosses processes, so it is the plain SHA256_CTX kept in two copies: the writer
 * fills the copy not in use and publishes it with one release store of HASH_POS. A process
 * killed at any point leaves the previous copy intact; its ownership is reclaimed once its pid
 * is gone. A slot reused for another session is noticed through its generation. */
#ifndef FB_DIGEST_H
#define FB_DIGEST_H

#include <stdint.h>

#include "fb_err.h"
#include "fb_table.h"

/* Folds completed chunks at the front of the file into the slot's digest, reading FD (the
 * partial file, opened for reading). Returns at once when another live process is doing it
 * or when the front chunk is not complete yet; folds at most MAX_BYTES per call (0: no limit).
 * GENERATION is the slot generation the caller's session has. */
void fb_slot_digest_advance(fb_slot *slot, uint32_t generation, int fd, uint64_t max_bytes);

/* Bytes of the file already folded into the digest. */
uint64_t fb_slot_digest_position(fb_slot *slot);

/* The SHA-256 of the whole file (SIZE bytes): the slot's running digest completed by reading
 * the rest of FD. Waits (bounded, about 30 s) for another process that is advancing it.
 * FB_ERR_SESSION_STATE if the slot was reused, FB_ERR_IO on read errors, FB_ERR_INCOMPLETE if
 * a chunk from the digest position on is not marked done, FB_ERR_INTERNAL if the wait ran out.
 * The digest is only ever folded from the file, chunk by completed chunk: never from a
 * writer's memory, which need not be what the file holds when two uploads write one session. */
fb_err fb_slot_digest_final(unsigned char out[32], fb_slot *slot, uint32_t generation, int fd, uint64_t size);

#endif
