/* fbcp_move: moves the missing ranges of one file over UDP or HTTP(S), as fbcp_switch decides.
 *
 * A transfer is a sequence of legs. A UDP leg (fbcp_udp.c) ends when everything arrived, or when
 * UDP does not answer, goes silent, refuses or is closed; then, under --fallback=auto, the file
 * continues over HTTP(S) with what is still missing (X->missing: the server's session document for
 * an upload, the download's own sidecar). While HTTP(S) carries the data, its loop calls
 * fbcp_udp_probe through X->yield_check; once a HELLO is accepted again, the HTTP transport
 * starts no new request, lets the running ones finish and returns, and the rest goes back to UDP
 * (at most FBCP_MAX_RETURNS_TO_UDP times per file). Every change is a "transport" event. */
#include "fbcp.h"

#include <string.h>

#include <openssl/crypto.h>

static uint64_t fbcp_move_now_us(void)
{
    return fb_time_mono_ns() / 1000;
}

fb_err fbcp_move_setup(fbcp_ctx *c, fbcp_xfer *x, fbcp_switch *sw, char *detail, size_t detlen)
{
    const fbcp_opts *o = c->opts;
    fb_err e = FB_OK;

    fbcp_switch_init(sw, o->fallback, o->udp_timeout_ms, o->udp_idle_ms, FBCP_UDP_PROBE_INTERVAL_MS,
                     FBCP_MAX_RETURNS_TO_UDP, fbcp_move_now_us());
    x->sw = sw;
    x->poll_fd = -1;
    x->yield_check = NULL;
    if (o->fallback == FBCP_FALLBACK_AUTO && x->udp == NULL && x->size <= FBCP_UDP_MIN_SIZE) {
        /* a small file: HTTP(S) only, and no UDP probe either */
        fbcp_trace(o, "%llu bytes: over HTTP(S) (files up to %u bytes do not use UDP)",
                   (unsigned long long)x->size, FBCP_UDP_MIN_SIZE);
        fbcp_switch_to_http(sw, fbcp_move_now_us());
    } else if (o->fallback != FBCP_FALLBACK_FORCE && x->udp == NULL) {
        if (c->udp == NULL || !x->have_key || x->udp_port <= 0) {
            /* the module names the UDP port only while udpd runs */
            e = FB_ERR_CONNECTION_LOST;
            snprintf(detail, detlen, "%s",
                     x->udp_port <= 0 ? "the server offers no UDP endpoint (udpd is not running)"
                                      : "the session has no key for UDP");
        } else {
            e = fbcp_udp_new(&x->udp, o, x->url->host, x->udp_port, detail, detlen);
        }
        if (e != FB_OK) {
            if (o->fallback == FBCP_FALLBACK_NEVER)
                return e;
            fbcp_trace(o, "UDP unavailable (%s): HTTP(S) only", detail);
            detail[0] = '\0';
            fbcp_switch_udp_failed(sw, FBCP_SW_UNAVAILABLE);
            fbcp_switch_to_http(sw, fbcp_move_now_us());
        }
    }
    if (x->udp != NULL) {
        x->poll_fd = fbcp_udp_fd(x->udp);
        x->yield_check = fbcp_udp_probe;
        if (c->udp_unanswered && o->fallback == FBCP_FALLBACK_AUTO && sw->current == FBCP_TR_UDP) {
            /* UDP did not answer for the previous file: HTTP(S) at once, a HELLO at once too */
            uint64_t now = fbcp_move_now_us();

            fbcp_trace(o, "UDP did not answer for the previous file: starting over HTTP(S), probing UDP");
            fbcp_switch_to_http(sw, now);
            sw->next_probe_us = now;
        }
    }
    x->transport_name = fbcp_tr_name(sw->current);
    return FB_OK;
}

void fbcp_move_cleanup(fbcp_xfer *x)
{
    fbcp_udp_free(x->udp);
    x->udp = NULL;
    x->poll_fd = -1;
    x->yield_check = NULL;
    OPENSSL_cleanse(x->key, sizeof(x->key));
    x->have_key = 0;
}

fb_err fbcp_move(fbcp_ctx *c, fbcp_xfer *x, const fbcp_ranges *todo0, char *detail, size_t detlen)
{
    fbcp_switch *sw = x->sw;
    fbcp_ranges todo;
    fb_err rv;
    /* every round is one leg; legs after the first are changes of transport, of which there are
     * at most two per return to UDP plus the first fallback */
    int max_rounds = sw != NULL ? 2 * (int)sw->max_returns + 4 : 1;

    detail[0] = '\0';
    fbcp_ranges_init(&todo);
    rv = fbcp_ranges_copy(&todo, todo0);
    for (int round = 0; rv == FB_OK; round++) {
        fbcp_transport *t;

        if (todo.n == 0)
            break;
        if (round >= max_rounds) {
            rv = FB_ERR_INTERNAL;
            snprintf(detail, detlen, "too many changes of transport");
            break;
        }
        if (sw == NULL || sw->current == FBCP_TR_HTTP || c->udp == NULL || x->udp == NULL) {
            t = c->transport;
            x->yielded = 0;
            rv = x->direction == FBCP_UPLOAD ? t->ops->upload(t, x, &todo, detail, detlen)
                                             : t->ops->download(t, x, &todo, detail, detlen);
            if (x->udp != NULL && fbcp_udp_associated(x->udp))
                c->udp_unanswered = 0; /* a probe was answered, even if HTTP(S) finished first */
            if (rv != FB_OK || !x->yielded || sw == NULL)
                break;
            /* UDP answers again and the running requests have finished */
            x->yielded = 0;
            c->udp_unanswered = 0;
            fbcp_switch_to_udp(sw, fbcp_move_now_us());
            fbcp_event_transport(x, "http", "udp", fbcp_switch_reason_name(FBCP_SW_ANSWERED));
        } else {
            t = c->udp;
            /* No HTTP(S) sender publishes where it reads during a UDP leg: the upload's hashing
             * thread must not wait for one (it used to sit out its liveness timeout per file). */
            fbcp_upload_hash_hint(x, UINT64_MAX);
            rv = x->direction == FBCP_UPLOAD ? t->ops->upload(t, x, &todo, detail, detlen)
                                             : t->ops->download(t, x, &todo, detail, detlen);
            c->udp_unanswered = sw->reason == FBCP_SW_NO_ANSWER;
            if (rv == FB_OK || sw->reason == FBCP_SW_NONE || sw->reason == FBCP_SW_ANSWERED ||
                fbcp_interrupted)
                break; /* done, or an error no other transport can help with */
            if (sw->mode != FBCP_FALLBACK_AUTO)
                break; /* --fallback=never: the leg's error stands ("Connection lost", a refusal) */
            if (sw->reason == FBCP_SW_CLOSED && rv == FB_ERR_SERVER_REFUSED)
                break; /* udpd closed because the server cancelled the session: HTTP(S) would too */
            fbcp_trace(x->opts, "continuing over HTTP(S): %s", detail);
            fbcp_switch_to_http(sw, fbcp_move_now_us());
            fbcp_event_transport(x, "udp", "http", fbcp_switch_reason_name(sw->reason));
            detail[0] = '\0';
            rv = FB_OK;
        }
        if (x->missing == NULL) {
            rv = FB_ERR_INTERNAL;
            break;
        }
        rv = x->missing(x, &todo, detail, detlen);
    }
    fbcp_ranges_free(&todo);
    return rv;
}
