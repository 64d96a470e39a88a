/* fbcp_switch: which transport carries a file's data, decided in virtual time.
 *
 * Pure code (no I/O, no clock: every call takes the time), so client/check_fbcp.c drives it
 * through whole scenarios. The rules (docs/fbcp.md, "Transport choice"):
 *
 *   - auto and never start on UDP, force on HTTP(S) for good;
 *   - a UDP leg whose HELLO is not answered within --udp-timeout, or that hears nothing
 *     authenticated for --udp-idle once answered, ends: auto continues over HTTP(S), never fails;
 *   - udpd refusing the HELLO (cipher, policy, permissions) or no UDP endpoint at all: auto
 *     continues over HTTP(S) without ever probing (the answer would be the same), never fails;
 *   - while on HTTP(S), a HELLO goes out every probe interval; an accepted answer moves the data
 *     back to UDP, at most MAX_RETURNS times per file, so a flapping path cannot make it
 *     oscillate for ever. */
#include "fbcp.h"

#include <string.h>

void fbcp_switch_init(fbcp_switch *s, fbcp_fallback mode, uint32_t start_timeout_ms, uint32_t idle_timeout_ms,
                      uint32_t probe_interval_ms, unsigned max_returns, uint64_t now_us)
{
    memset(s, 0, sizeof(*s));
    s->mode = mode;
    s->start_timeout_us = (uint64_t)start_timeout_ms * 1000;
    s->idle_timeout_us = (uint64_t)idle_timeout_ms * 1000;
    s->probe_interval_us = (uint64_t)(probe_interval_ms ? probe_interval_ms : 1) * 1000;
    s->max_returns = max_returns;
    s->leg_start_us = now_us;
    s->next_probe_us = UINT64_MAX;
    if (mode == FBCP_FALLBACK_FORCE) {
        s->current = FBCP_TR_HTTP;
        s->udp_disabled = 1;
    } else {
        s->current = FBCP_TR_UDP;
    }
}

void fbcp_switch_udp_heard(fbcp_switch *s, uint64_t now_us, int handshake)
{
    if (s->current != FBCP_TR_UDP)
        return;
    if (handshake)
        s->answered = 1;
    if (s->answered && now_us > s->last_heard_us)
        s->last_heard_us = now_us;
}

uint64_t fbcp_switch_udp_deadline(const fbcp_switch *s)
{
    uint64_t since;

    if (s->current != FBCP_TR_UDP)
        return UINT64_MAX;
    if (!s->answered)
        return s->leg_start_us + s->start_timeout_us;
    /* the idle clock runs from the later of the leg's start and the last datagram heard */
    since = s->last_heard_us > s->leg_start_us ? s->last_heard_us : s->leg_start_us;
    return since + s->idle_timeout_us;
}

static fbcp_sw_verdict fbcp_switch_verdict(const fbcp_switch *s)
{
    return s->mode == FBCP_FALLBACK_NEVER ? FBCP_SW_FAIL : FBCP_SW_FALLBACK;
}

fbcp_sw_verdict fbcp_switch_udp_check(fbcp_switch *s, uint64_t now_us)
{
    if (s->current != FBCP_TR_UDP)
        return FBCP_SW_STAY;
    if (now_us < fbcp_switch_udp_deadline(s))
        return FBCP_SW_STAY;
    s->reason = s->answered ? FBCP_SW_LOST : FBCP_SW_NO_ANSWER;
    return fbcp_switch_verdict(s);
}

fbcp_sw_verdict fbcp_switch_udp_failed(fbcp_switch *s, fbcp_sw_reason reason)
{
    s->reason = reason;
    if (reason == FBCP_SW_REFUSED || reason == FBCP_SW_UNAVAILABLE)
        s->udp_disabled = 1;
    return fbcp_switch_verdict(s);
}

void fbcp_switch_to_http(fbcp_switch *s, uint64_t now_us)
{
    if (s->current != FBCP_TR_HTTP)
        s->switches++;
    s->current = FBCP_TR_HTTP;
    s->leg_start_us = now_us;
    s->answered = 0;
    s->last_heard_us = 0;
    if (s->udp_disabled || s->mode != FBCP_FALLBACK_AUTO || s->returns >= s->max_returns)
        s->next_probe_us = UINT64_MAX;
    else
        s->next_probe_us = now_us + s->probe_interval_us;
}

int fbcp_switch_probe_due(fbcp_switch *s, uint64_t now_us)
{
    if (s->current != FBCP_TR_HTTP || s->next_probe_us == UINT64_MAX || now_us < s->next_probe_us)
        return 0;
    /* the next one an interval from now, not from the due time: a stalled caller does not
     * get a burst of HELLOs */
    s->next_probe_us = now_us + s->probe_interval_us;
    return 1;
}

fbcp_sw_verdict fbcp_switch_probe_answered(fbcp_switch *s)
{
    if (s->current != FBCP_TR_HTTP || s->udp_disabled || s->mode != FBCP_FALLBACK_AUTO ||
        s->returns >= s->max_returns)
        return FBCP_SW_STAY;
    return FBCP_SW_RETURN;
}

void fbcp_switch_probe_refused(fbcp_switch *s)
{
    s->udp_disabled = 1;
    s->next_probe_us = UINT64_MAX;
}

void fbcp_switch_to_udp(fbcp_switch *s, uint64_t now_us)
{
    if (s->current != FBCP_TR_UDP) {
        s->switches++;
        s->returns++;
    }
    s->current = FBCP_TR_UDP;
    s->leg_start_us = now_us;
    s->answered = 1; /* the probe's HELLO_ACK opened this leg's association */
    s->last_heard_us = now_us;
    s->next_probe_us = UINT64_MAX;
    s->reason = FBCP_SW_ANSWERED;
}

const char *fbcp_switch_reason_name(fbcp_sw_reason r)
{
    switch (r) {
    case FBCP_SW_NONE:
        return "none";
    case FBCP_SW_NO_ANSWER:
        return "no_answer";
    case FBCP_SW_LOST:
        return "lost";
    case FBCP_SW_REFUSED:
        return "refused";
    case FBCP_SW_CLOSED:
        return "closed";
    case FBCP_SW_UNAVAILABLE:
        return "unavailable";
    case FBCP_SW_ANSWERED:
        return "answered";
    }
    return "unknown";
}

const char *fbcp_tr_name(fbcp_tr t)
{
    return t == FBCP_TR_UDP ? "udp" : "http";
}
