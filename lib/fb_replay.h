/* fb_replay: sliding anti-replay window over packet numbers (docs/PROTOCOL.md section 5).
 *
 * Accepts each packet number at most once, and only if it is within FB_REPLAY_WINDOW of the
 * highest one accepted so far; older ones are refused as possibly replayed. Check before the
 * (costly) AEAD open, update only after the packet authenticated, so forged packets cannot
 * move the window. Pure code, no allocation; one window per association and direction. */
#ifndef FB_REPLAY_H
#define FB_REPLAY_H

#include <stdint.h>

#define FB_REPLAY_WINDOW 1024u /* packets; a multiple of 64 */
#define FB_REPLAY_WORDS (FB_REPLAY_WINDOW / 64u)

typedef struct fb_replay {
    uint64_t top;                   /* highest packet number accepted; valid when any */
    int any;                        /* 0 until the first update */
    uint64_t bits[FB_REPLAY_WORDS]; /* bit (pn % WINDOW) set: pn seen, for pn in (top - WINDOW, top] */
} fb_replay;

void fb_replay_init(fb_replay *w);

/* 1 if PN is new and inside the window (may be accepted), 0 if seen or too old. */
int fb_replay_check(const fb_replay *w, uint64_t pn);

/* Records PN as seen (call after authentication succeeded). Returns fb_replay_check's verdict
 * from before the update: 0 means it was a replay and nothing changed. */
int fb_replay_update(fb_replay *w, uint64_t pn);

#endif
