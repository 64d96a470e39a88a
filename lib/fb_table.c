/* fb_table: the session table in a shared memory-mapped file (DESIGN.md section 3).
 *
 * This file has the slots: claiming, recovery, the seqlock over INFO, the state transitions, ids
 * and the chunk bitmap; creating and attaching the file are fb_table_open.c. Slot ownership
 * (CLAIMED and FINALISING) is a compare-and-swap on owner_pid taken before the state CAS, so every
 * transition that hands a slot to one process is exclusive even when the previous holder died
 * between any two instructions; see the comment at the top of fb_table.h. */
#include "fb_table.h"
#include "fb_table_private.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#define SEQLOCK_SPIN_BEFORE_YIELD 1000u
#define SEQLOCK_MAX_TRIES 1000000u
#define TRANSITION_LOCK_TRIES 10000
#define NS_PER_S 1000000000ull

/* ---- small helpers (kept local so libfb's table depends only on libc and OpenSSL) ---- */

void table_errf(char *errbuf, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (errbuf == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t table_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

void table_hex(char *out, const unsigned char *in, size_t len)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0x0f];
    }
    out[2 * len] = '\0';
}

/* Value of a lower-case hex digit, -1 for anything else (upper case included: ids are canonical). */
static int table_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* A pid is dead only when the kernel says there is no such process; EPERM means it exists
 * under another uid. pid <= 0 is never passed to kill() (that would signal process groups). */
static int table_pid_dead(int32_t pid)
{
    if (pid <= 0)
        return 0;
    if (pid == (int32_t)getpid())
        return 0;
    return kill((pid_t)pid, 0) == -1 && errno == ESRCH;
}

static int table_state_held(uint32_t state)
{
    return state == FB_SLOT_CLAIMED || state == FB_SLOT_FINALISING;
}

/* Takes the slot's ownership: owner_pid 0 or dead -> our pid. 1 on success. */
static int slot_lock(fb_slot *slot)
{
    int32_t me = (int32_t)getpid();
    int32_t owner = atomic_load_explicit(&slot->owner_pid, memory_order_acquire);

    if (owner != 0 && !table_pid_dead(owner))
        return 0;
    return atomic_compare_exchange_strong_explicit(&slot->owner_pid, &owner, me, memory_order_acq_rel,
                                                   memory_order_acquire);
}

/* Takes the ownership for a transition out of FROM. A claimer probing the slot may hold it
 * for a few instructions: wait for it (bounded) while the state is still FROM. */
static int slot_lock_in_state(fb_slot *slot, uint32_t from)
{
    for (int tries = 0; tries < TRANSITION_LOCK_TRIES; tries++) {
        if (atomic_load_explicit(&slot->state, memory_order_acquire) != from)
            return 0;
        if (slot_lock(slot))
            return 1;
        sched_yield();
    }
    return 0;
}

/* Gives ownership back if we hold it. */
static void slot_unlock(fb_slot *slot)
{
    int32_t me = (int32_t)getpid();

    atomic_compare_exchange_strong_explicit(&slot->owner_pid, &me, 0, memory_order_acq_rel,
                                            memory_order_relaxed);
}

/* A writer killed inside write_begin/end leaves the sequence odd; the new holder makes it even. */
static void slot_seq_make_even(fb_slot *slot)
{
    uint32_t seq = atomic_load_explicit(&slot->seq, memory_order_relaxed);

    if (seq & 1u)
        atomic_fetch_add_explicit(&slot->seq, 1, memory_order_release);
}

static void slot_wipe_info(fb_slot *slot)
{
    fb_slot_info_write_begin(slot);
    OPENSSL_cleanse(&slot->info, sizeof(slot->info));
    fb_slot_info_write_end(slot);
}

/* Prepares a slot we now hold in CLAIMED for its new session. */
static void slot_init_claimed(fb_slot *slot, uint64_t now_ns)
{
    slot_seq_make_even(slot);
    slot_wipe_info(slot);
    for (size_t i = 0; i < FB_BITMAP_WORDS; i++)
        atomic_store_explicit(&slot->bitmap[i], 0, memory_order_relaxed);
    atomic_store_explicit(&slot->bytes_http, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->bytes_udp, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->chunks_done, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->error_code, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->writers, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->hash_pos, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->hash_owner, 0, memory_order_relaxed);
    atomic_store_explicit(&slot->state_since_ns, now_ns, memory_order_relaxed);
    atomic_store_explicit(&slot->last_activity_ns, now_ns, memory_order_relaxed);
    atomic_fetch_add_explicit(&slot->generation, 1, memory_order_release);
}

/* ---- chunk maths ---- */

uint64_t fb_table_nchunks_for(uint64_t size, uint32_t chunk_size)
{
    if (chunk_size == 0)
        return UINT64_MAX;
    return size / chunk_size + (size % chunk_size != 0);
}

uint32_t fb_table_chunk_size_for(uint64_t size, uint32_t preferred)
{
    uint32_t chunk = preferred == 0 ? (1u << 20) : preferred;

    if (chunk > FB_CHUNK_SIZE_MAX)
        chunk = FB_CHUNK_SIZE_MAX;
    /* At most 31 doublings from 1 byte: bounded. */
    while (fb_table_nchunks_for(size, chunk) > FB_BITMAP_BITS && chunk < FB_CHUNK_SIZE_MAX)
        chunk = chunk > FB_CHUNK_SIZE_MAX / 2 ? FB_CHUNK_SIZE_MAX : chunk * 2;
    return chunk;
}

/* ---- claiming and recovery ---- */

/* Whether a slot seen in STATE may be taken by a new claim at NOW_NS. */
static int slot_reusable(fb_slot *slot, uint32_t state, uint64_t now_ns, uint32_t idle_timeout_s,
                         uint32_t done_linger_s)
{
    switch (state) {
    case FB_SLOT_FREE:
        return 1;
    case FB_SLOT_CLAIMED: {
        /* An abandoned claim: its holder is dead. A CLAIMED slot always has an owner (it is
         * taken before the state CAS and given back after the next one), so owner 0 is either
         * a slot that left CLAIMED since we looked (re-read the state) or damage to repair. */
        int32_t owner = atomic_load_explicit(&slot->owner_pid, memory_order_acquire);

        if (owner != 0)
            return table_pid_dead(owner);
        return atomic_load_explicit(&slot->state, memory_order_acquire) == FB_SLOT_CLAIMED;
    }
    case FB_SLOT_DONE:
    case FB_SLOT_FAILED: {
        uint64_t since = atomic_load_explicit(&slot->state_since_ns, memory_order_relaxed);

        return now_ns >= since && now_ns - since >= (uint64_t)done_linger_s * NS_PER_S;
    }
    case FB_SLOT_ACTIVE: {
        uint64_t last = atomic_load_explicit(&slot->last_activity_ns, memory_order_relaxed);

        return idle_timeout_s != 0 && now_ns >= last && now_ns - last >= (uint64_t)idle_timeout_s * NS_PER_S;
    }
    default:
        return 0;
    }
}

/* Takes a slot seen in STATE for a new claim. The condition is checked before taking the
 * ownership (so probing never blocks a legitimate transition of a slot that is not reusable,
 * such as a commit's ACTIVE -> FINALISING) and again once it is held. */
static int slot_try_take(fb_slot *slot, uint32_t state, uint64_t now_ns, uint32_t idle_timeout_s,
                         uint32_t done_linger_s)
{
    uint32_t cur;

    if (!slot_reusable(slot, state, now_ns, idle_timeout_s, done_linger_s) ||
        atomic_load_explicit(&slot->state, memory_order_acquire) != state || !slot_lock(slot))
        return 0;
    cur = atomic_load_explicit(&slot->state, memory_order_acquire);
    if (cur == state && cur == FB_SLOT_CLAIMED)
        return 1; /* we now hold the abandoned claim, which is already CLAIMED */
    if (cur == state && slot_reusable(slot, state, now_ns, idle_timeout_s, done_linger_s) &&
        atomic_compare_exchange_strong_explicit(&slot->state, &cur, FB_SLOT_CLAIMED, memory_order_acq_rel,
                                                memory_order_acquire))
        return 1;
    slot_unlock(slot);
    return 0;
}

/* Takes the DONE/FAILED slot that finished longest ago, whatever DONE_LINGER says: a finished
 * session never stands in the way of a new one. Another claimer may take the chosen slot first:
 * then look again (bounded; each lost race means someone else got a slot). */
#define CLAIM_OLDEST_ATTEMPTS 64
static int table_take_oldest_finished(fb_table *table, uint32_t *pindex, uint64_t now_ns)
{
    for (int attempt = 0; attempt < CLAIM_OLDEST_ATTEMPTS; attempt++) {
        uint32_t best = UINT32_MAX, best_state = 0;
        uint64_t best_since = UINT64_MAX;

        for (uint32_t i = 0; i < table->nslots; i++) {
            fb_slot *slot = fb_table_slot(table, i);
            uint32_t state = atomic_load_explicit(&slot->state, memory_order_acquire);
            uint64_t since;

            if (state != FB_SLOT_DONE && state != FB_SLOT_FAILED)
                continue;
            since = atomic_load_explicit(&slot->state_since_ns, memory_order_relaxed);
            if (best == UINT32_MAX || since < best_since) {
                best = i;
                best_state = state;
                best_since = since;
            }
        }
        if (best == UINT32_MAX)
            return 0;
        if (slot_try_take(fb_table_slot(table, best), best_state, now_ns, 0, 0)) {
            *pindex = best;
            return 1;
        }
    }
    return 0;
}

fb_err fb_table_claim(fb_table *table, uint32_t *pindex, uint64_t now_ns, uint32_t idle_timeout_s,
                      uint32_t done_linger_s)
{
    uint32_t n = table->nslots;
    uint32_t start = atomic_fetch_add_explicit(&table->cursor, 1, memory_order_relaxed) % n;

    /* Pass 0: free slots. Pass 1: abandoned claims, dead finalisers (recovered to ACTIVE) and
     * DONE/FAILED past their linger. Then the finished slot that finished longest ago, and only
     * after that (pass 2) idle ACTIVE sessions, the last resort. */
    for (int pass = 0; pass < 3; pass++) {
        if (pass == 2 && table_take_oldest_finished(table, pindex, now_ns)) {
            slot_init_claimed(fb_table_slot(table, *pindex), now_ns);
            return FB_OK;
        }
        for (uint32_t k = 0; k < n; k++) {
            uint32_t i = (start + k) % n;
            fb_slot *slot = fb_table_slot(table, i);
            uint32_t state = atomic_load_explicit(&slot->state, memory_order_acquire);
            int want;

            if (pass == 1 && state == FB_SLOT_FINALISING) {
                fb_table_recover_slot(table, i);
                continue;
            }
            switch (pass) {
            case 0:
                want = state == FB_SLOT_FREE;
                break;
            case 1:
                want = state == FB_SLOT_CLAIMED || state == FB_SLOT_DONE || state == FB_SLOT_FAILED;
                break;
            default:
                want = state == FB_SLOT_ACTIVE;
                break;
            }
            if (!want || !slot_try_take(slot, state, now_ns, idle_timeout_s, done_linger_s))
                continue;
            slot_init_claimed(slot, now_ns);
            *pindex = i;
            return FB_OK;
        }
    }
    return FB_ERR_TABLE_FULL;
}

const char *fb_slot_state_name(uint32_t state)
{
    static const char *const names[] = {"free", "claimed", "active", "finalising", "done", "failed"};

    return state < sizeof(names) / sizeof(names[0]) ? names[state] : "unknown";
}

int fb_table_recover_slot(fb_table *table, uint32_t index)
{
    fb_slot *slot = fb_table_slot(table, index);
    uint32_t state;
    int repaired = 0;

    if (slot == NULL)
        return 0;
    state = atomic_load_explicit(&slot->state, memory_order_acquire);
    if (!table_state_held(state))
        return 0;
    /* slot_lock succeeds only if the holder is dead (or absent, which a held state never has). */
    if (!slot_lock(slot))
        return 0;
    state = atomic_load_explicit(&slot->state, memory_order_acquire);
    if (state == FB_SLOT_CLAIMED) {
        slot_seq_make_even(slot);
        slot_wipe_info(slot);
        atomic_store_explicit(&slot->state_since_ns, table_now_ns(), memory_order_relaxed);
        repaired = atomic_compare_exchange_strong_explicit(&slot->state, &state, FB_SLOT_FREE,
                                                           memory_order_acq_rel, memory_order_relaxed);
    } else if (state == FB_SLOT_FINALISING) {
        /* The commit did not finish; the data is all there, so the session can commit again.
         * A committer killed inside its info write left the seqlock odd: close it. */
        slot_seq_make_even(slot);
        atomic_store_explicit(&slot->state_since_ns, table_now_ns(), memory_order_relaxed);
        repaired = atomic_compare_exchange_strong_explicit(&slot->state, &state, FB_SLOT_ACTIVE,
                                                           memory_order_acq_rel, memory_order_relaxed);
    }
    slot_unlock(slot);
    return repaired;
}

/* ---- seqlock over INFO ---- */

void fb_slot_info_write_begin(fb_slot *slot)
{
    atomic_fetch_add_explicit(&slot->seq, 1, memory_order_acq_rel); /* odd: writing */
    atomic_thread_fence(memory_order_seq_cst);
}

void fb_slot_info_write_end(fb_slot *slot)
{
    atomic_thread_fence(memory_order_seq_cst);
    atomic_fetch_add_explicit(&slot->seq, 1, memory_order_release); /* even: stable */
}

int fb_slot_info_read_checked(fb_slot_info *out, fb_slot *slot)
{
    for (uint32_t tries = 0; tries < SEQLOCK_MAX_TRIES; tries++) {
        uint32_t s1 = atomic_load_explicit(&slot->seq, memory_order_acquire);
        uint32_t s2;

        if (tries >= SEQLOCK_SPIN_BEFORE_YIELD)
            sched_yield();
        if (s1 & 1u)
            continue;
        memcpy(out, (const void *)&slot->info, sizeof(*out));
        atomic_thread_fence(memory_order_acquire);
        s2 = atomic_load_explicit(&slot->seq, memory_order_relaxed);
        if (s1 == s2)
            return 1;
    }
    /* The writer is gone (died inside its write): give the caller the latest bytes. */
    memcpy(out, (const void *)&slot->info, sizeof(*out));
    return 0;
}

void fb_slot_info_read(fb_slot_info *out, fb_slot *slot)
{
    (void)fb_slot_info_read_checked(out, slot);
}

/* ---- transitions ---- */

int fb_slot_transition(fb_slot *slot, fb_slot_state from, fb_slot_state to)
{
    uint32_t expected = (uint32_t)from;
    int entering = table_state_held(to) && !table_state_held(from);
    int leaving = table_state_held(from) && !table_state_held(to);
    int ok;

    /* Entering CLAIMED/FINALISING hands the slot to us alone: take ownership first. */
    if (entering && !slot_lock_in_state(slot, (uint32_t)from))
        return 0;
    ok = atomic_compare_exchange_strong_explicit(&slot->state, &expected, (uint32_t)to, memory_order_acq_rel,
                                                 memory_order_acquire);
    if (ok)
        atomic_store_explicit(&slot->state_since_ns, table_now_ns(), memory_order_release);
    if ((entering && !ok) || leaving)
        slot_unlock(slot);
    return ok;
}

void fb_slot_release(fb_slot *slot)
{
    uint32_t old;

    slot_wipe_info(slot);
    atomic_store_explicit(&slot->state_since_ns, table_now_ns(), memory_order_relaxed);
    old = atomic_exchange_explicit(&slot->state, FB_SLOT_FREE, memory_order_acq_rel);
    /* Give the ownership back only if the slot was held (by us, normally). Any other owner is
     * a claimer or finaliser that notices the change when its own CAS fails and unlocks then;
     * a dead holder is taken over by the next claimer. */
    if (table_state_held(old))
        slot_unlock(slot);
}

int fb_slot_cancel(fb_slot *slot, uint32_t generation)
{
    uint32_t state = atomic_load_explicit(&slot->state, memory_order_acquire);

    if (state != FB_SLOT_ACTIVE && state != FB_SLOT_DONE && state != FB_SLOT_FAILED)
        return 0;
    if (!slot_lock_in_state(slot, state))
        return 0;
    /* Holding the ownership, nobody can claim or finalise it: check it is still the session the
     * caller looked up, and take it to CLAIMED so data writers and lookups let go. */
    if (atomic_load_explicit(&slot->generation, memory_order_acquire) != generation ||
        !atomic_compare_exchange_strong_explicit(&slot->state, &state, FB_SLOT_CLAIMED, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        slot_unlock(slot);
        return 0;
    }
    fb_slot_release(slot);
    return 1;
}

/* ---- session ids and lookups ---- */

void fb_session_id_format(char out[FB_SESSION_ID_LEN + 1], uint32_t index,
                          const uint8_t random[FB_ID_RANDOM_LEN])
{
    snprintf(out, 9, "%08x", (unsigned)index);
    table_hex(out + 8, random, FB_ID_RANDOM_LEN);
}

fb_err fb_table_find(fb_table *table, uint32_t *pindex, const char *id)
{
    uint8_t want[FB_ID_RANDOM_LEN];
    fb_slot_info info;
    uint32_t index = 0, state;
    fb_slot *slot;
    int equal;

    if (id == NULL || strnlen(id, FB_SESSION_ID_LEN + 1) != FB_SESSION_ID_LEN)
        return FB_ERR_NOT_FOUND;
    for (int i = 0; i < FB_SESSION_ID_LEN; i++)
        if (table_hexval(id[i]) < 0)
            return FB_ERR_NOT_FOUND;
    for (int i = 0; i < 8; i++)
        index = (index << 4) | (uint32_t)table_hexval(id[i]);
    for (int i = 0; i < FB_ID_RANDOM_LEN; i++)
        want[i] = (uint8_t)(table_hexval(id[8 + 2 * i]) << 4 | table_hexval(id[8 + 2 * i + 1]));

    slot = fb_table_slot(table, index);
    if (slot == NULL)
        return FB_ERR_NOT_FOUND;
    state = atomic_load_explicit(&slot->state, memory_order_acquire);
    if (state != FB_SLOT_ACTIVE && state != FB_SLOT_FINALISING && state != FB_SLOT_DONE &&
        state != FB_SLOT_FAILED)
        return FB_ERR_NOT_FOUND;
    if (!fb_slot_info_read_checked(&info, slot)) {
        OPENSSL_cleanse(&info, sizeof(info));
        return FB_ERR_NOT_FOUND;
    }
    equal = CRYPTO_memcmp(info.id_random, want, sizeof(want)) == 0;
    OPENSSL_cleanse(&info, sizeof(info)); /* the copy holds the key */
    if (!equal)
        return FB_ERR_NOT_FOUND;
    *pindex = index;
    return FB_OK;
}

/* Compares a NUL-terminated WANT with a fixed-size field that should hold a string. */
static int table_field_equals(const char *field, size_t cap, const char *want)
{
    size_t len = strlen(want);

    return len < cap && memcmp(field, want, len) == 0 && field[len] == '\0';
}

fb_err fb_table_find_upload(fb_table *table, uint32_t *pindex, const char *user, const char *docroot,
                            const char *relpath, uint64_t size)
{
    fb_slot_info info;
    fb_err rc = FB_ERR_NOT_FOUND;

    if (user == NULL || docroot == NULL || relpath == NULL)
        return FB_ERR_NOT_FOUND;
    for (uint32_t i = 0; i < table->nslots; i++) {
        fb_slot *slot = fb_table_slot(table, i);

        if (atomic_load_explicit(&slot->state, memory_order_acquire) != FB_SLOT_ACTIVE)
            continue;
        if (!fb_slot_info_read_checked(&info, slot))
            continue;
        if (info.direction == FB_DIR_UPLOAD && info.size == size &&
            table_field_equals(info.user, sizeof(info.user), user) &&
            table_field_equals(info.docroot, sizeof(info.docroot), docroot) &&
            table_field_equals(info.relpath, sizeof(info.relpath), relpath) &&
            atomic_load_explicit(&slot->state, memory_order_acquire) == FB_SLOT_ACTIVE) {
            *pindex = i;
            rc = FB_OK;
            break;
        }
    }
    OPENSSL_cleanse(&info, sizeof(info));
    return rc;
}

/* ---- chunk bitmap ---- */

static uint64_t slot_nchunks(fb_slot *slot)
{
    /* Fixed once ACTIVE; a relaxed atomic read avoids tearing while a claimer rewrites it. */
    return __atomic_load_n(&slot->info.nchunks, __ATOMIC_RELAXED);
}

int fb_slot_set_chunk(fb_slot *slot, uint64_t index)
{
    uint64_t bit, old;

    if (index >= FB_BITMAP_BITS || index >= slot_nchunks(slot))
        return 0;
    bit = UINT64_C(1) << (index % 64);
    old = atomic_fetch_or_explicit(&slot->bitmap[index / 64], bit, memory_order_acq_rel);
    if (old & bit)
        return 0;
    atomic_fetch_add_explicit(&slot->chunks_done, 1, memory_order_acq_rel);
    return 1;
}

int fb_slot_chunk_done(fb_slot *slot, uint64_t index)
{
    if (index >= FB_BITMAP_BITS || index >= slot_nchunks(slot))
        return 0;
    return (atomic_load_explicit(&slot->bitmap[index / 64], memory_order_acquire) >> (index % 64)) & 1u;
}

void fb_slot_bitmap_copy(uint64_t *out, fb_slot *slot)
{
    for (size_t i = 0; i < FB_BITMAP_WORDS; i++)
        out[i] = atomic_load_explicit(&slot->bitmap[i], memory_order_acquire);
}
