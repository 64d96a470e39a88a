/* fb_replay: sliding anti-replay window, a bitmap indexed by packet number modulo the window
 * (the RFC 4303 / RFC 6479 scheme without the block optimisation: 1024 bits are cheap). */
#include "fb_replay.h"

#include <string.h>

_Static_assert(FB_REPLAY_WINDOW % 64u == 0 && FB_REPLAY_WINDOW >= 64u, "window is whole words");

static int bit_get(const fb_replay *w, uint64_t pn)
{
    uint64_t b = pn % FB_REPLAY_WINDOW;

    return (int)((w->bits[b / 64u] >> (b % 64u)) & 1u);
}

static void bit_set(fb_replay *w, uint64_t pn)
{
    uint64_t b = pn % FB_REPLAY_WINDOW;

    w->bits[b / 64u] |= (uint64_t)1 << (b % 64u);
}

static void bit_clear(fb_replay *w, uint64_t pn)
{
    uint64_t b = pn % FB_REPLAY_WINDOW;

    w->bits[b / 64u] &= ~((uint64_t)1 << (b % 64u));
}

void fb_replay_init(fb_replay *w)
{
    memset(w, 0, sizeof(*w));
}

int fb_replay_check(const fb_replay *w, uint64_t pn)
{
    if (!w->any || pn > w->top)
        return 1;
    if (w->top - pn >= FB_REPLAY_WINDOW)
        return 0;
    return !bit_get(w, pn);
}

int fb_replay_update(fb_replay *w, uint64_t pn)
{
    if (!fb_replay_check(w, pn))
        return 0;
    if (!w->any) {
        memset(w->bits, 0, sizeof(w->bits));
        w->any = 1;
        w->top = pn;
    } else if (pn > w->top) {
        uint64_t advance = pn - w->top;

        /* Bits for the numbers that slide into the window were last used WINDOW numbers ago. */
        if (advance >= FB_REPLAY_WINDOW) {
            memset(w->bits, 0, sizeof(w->bits));
        } else {
            for (uint64_t i = 1; i <= advance; i++) /* counted, so pn = UINT64_MAX cannot wrap */
                bit_clear(w, w->top + i);
        }
        w->top = pn;
    }
    bit_set(w, pn);
    return 1;
}
