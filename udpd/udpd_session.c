/* udpd_session: the UDP protocol side of udpd, one context per session found in the shared table
 * (udpd_sess.h): the contexts' life cycle, the handshake, dispatch of each datagram, timers.
 *
 * A datagram's session id names a slot (index) and carries the slot's random part; a context is
 * created on the first HELLO for an ACTIVE slot whose random part matches, with the slot's key,
 * and dropped as soon as the slot is no longer the same ACTIVE session (commit, cancel, reuse:
 * the generation changed). The handshake itself is fb_assoc's (pure code): this file gives it
 * the lookup and udpd's admission check (docroot, files, engines), sends its answers, logs its
 * events, and when a pending association is validated ends the running one's work and makes the
 * new one current. An association starts with each new valid HELLO; until the client has sent
 * one authenticated data-phase packet from that address udpd sends nothing but the HELLO_ACK,
 * which is smaller than the padded HELLO: no amplification.
 *
 * Uploads: fb_xfer_receiver, writing through udpd_files.c; downloads: fb_xfer_sender, started by
 * the client's first FEEDBACK (udpd_data.c). */
#include "udpd_sess.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "fb_checkpoint.h"
#include "fb_util.h"

/* ---- lists ------------------------------------------------------------------------------------ */

static void assoc_link(sess *s)
{
    udpd_sessions *ss = s->ss;

    s->prev_assoc = NULL;
    s->next_assoc = ss->assoc;
    if (ss->assoc)
        ss->assoc->prev_assoc = s;
    ss->assoc = s;
    ss->nassoc++;
}

static void assoc_unlink(sess *s)
{
    udpd_sessions *ss = s->ss;

    if (s->prev_assoc)
        s->prev_assoc->next_assoc = s->next_assoc;
    else
        ss->assoc = s->next_assoc;
    if (s->next_assoc)
        s->next_assoc->prev_assoc = s->prev_assoc;
    s->next_assoc = s->prev_assoc = NULL;
    ss->nassoc--;
}

void sess_touch(sess *s)
{
    if (!s->touched) {
        s->touched = 1;
        s->next_touched = s->ss->touched;
        s->ss->touched = s;
    }
}

/* ---- sending ---------------------------------------------------------------------------------- */

/* CLOSE(REASON) with header FLAGS (FB_WIRE_F_CLOSE_*) on the running association. */
void sess_send_close(sess *s, fb_err reason, uint8_t flags)
{
    fb_wire_hdr hdr;
    fb_wire_close c;
    uint8_t *p;
    size_t len = 0;

    if (!s->as.cur.live)
        return;
    p = udpd_send_reserve(s->ss->d, FB_WIRE_OVERHEAD + FB_WIRE_CLOSE_FIXED);
    if (p == NULL)
        return;
    memset(&hdr, 0, sizeof(hdr));
    memcpy(hdr.sid, s->sid, sizeof(hdr.sid));
    hdr.flags = flags;
    hdr.pn = s->as.cur.pn_out;
    c.reason = (uint32_t)reason;
    if (fb_wire_encode_close(p, FB_WIRE_OVERHEAD + FB_WIRE_CLOSE_FIXED, &len, &hdr, &c, s->as.cur.aead) ==
        FB_OK) {
        s->as.cur.pn_out++;
        udpd_send_commit(s->ss->d, len, &s->peer);
    }
}

static void send_feedback(sess *s, uint64_t now, int force)
{
    uint8_t *p;
    size_t len = 0;

    if (!s->as.cur.live || s->rcv == NULL)
        return;
    if (s->force_feedback)
        force = 1;
    if (!force && fb_xfer_receiver_next_feedback(s->rcv, now) > now)
        return;
    p = udpd_send_reserve(s->ss->d, FB_WIRE_MIN_DATAGRAM);
    if (p == NULL)
        return;
    if (fb_xfer_receiver_feedback(s->rcv, p, FB_WIRE_MIN_DATAGRAM, &len, s->as.cur.pn_out, now, force) ==
            FB_OK &&
        len > 0) {
        s->as.cur.pn_out++;
        s->force_feedback = 0;
        udpd_send_commit(s->ss->d, len, &s->peer);
        udpd_ctr.feedbacks_sent++;
    }
}

/* ---- life cycle ------------------------------------------------------------------------------- */

/* Ends the running association (the context stays for a new HELLO). */
void sess_assoc_end(sess *s, uint64_t now, const char *why)
{
    if (!s->as.cur.live)
        return;
    if (s->direction == FB_DIR_UPLOAD && s->rcv != NULL) {
        if (sess_publish(s) == FB_OK)
            sess_checkpoint_at_close(s, now);
    }
    if (s->snd != NULL) {
        fb_xfer_sender_free(s->snd);
        s->snd = NULL;
    }
    assoc_unlink(s);
    udpd_log(UDPD_INFO, "UD00020", "session %s: association with %s ended: %s", s->id, s->peer_str, why);
    fb_assoc_srv_end(&s->as); /* wipes its keys */
}

static void sess_destroy(sess *s, uint64_t now, const char *why)
{
    udpd_sessions *ss = s->ss;

    /* Off the list of sessions this batch touched: the end of the batch walks it. */
    if (s->touched) {
        for (sess **pp = &ss->touched; *pp != NULL; pp = &(*pp)->next_touched)
            if (*pp == s) {
                *pp = s->next_touched;
                break;
            }
        s->touched = 0;
        s->next_touched = NULL;
    }

    if (s->as.cur.live) {
        /* The session is gone (or ending): nothing may be written or recorded for it any more. */
        s->wlen = 0;
        s->npend = 0;
        s->ckpt_dirty = 0;
        sess_assoc_end(s, now, why);
    }
    ss->by_index[s->index] = NULL;
    fb_xfer_receiver_free(s->rcv);
    fb_xfer_sender_free(s->snd);
    fb_assoc_srv_clear(&s->as);
    sess_close_files(s);
    free(s->wbuf);
    free(s->rbuf);
    free(s->pend_chunks);
    free(s->known);
    udpd_log(UDPD_DEBUG, "UD00021", "session %s: context dropped: %s", s->id, why);
    OPENSSL_cleanse(s, sizeof(*s)); /* the session key with it */
    free(s);
}

/* The slot left ACTIVE under the session (commit, cancel, reuse): drop it, telling a client the
 * administrator refused (fbctl cancel) why, so it stops instead of continuing over HTTPS. */
static void sess_ended(sess *s, uint64_t now)
{
    if (slot_refused(s)) {
        udpd_log(UDPD_INFO, "UD00070", "session %s: cancelled on the server; closing its association", s->id);
        sess_send_close(s, FB_ERR_SERVER_REFUSED, 0);
    }
    sess_destroy(s, now, "the session is no longer active");
}

/* The slot's session, if the random part matches; with its key. NULL if not a live session. */
static sess *sess_create(udpd_sessions *ss, uint32_t idx, const uint8_t sid[FB_WIRE_SID_LEN], uint64_t now)
{
    fb_slot *slot = fb_table_slot(udpd_table(ss->d), idx);
    fb_slot_info *info = NULL;
    uint32_t gen;
    sess *s = NULL;
    int ok;

    gen = atomic_load(&slot->generation);
    if (atomic_load(&slot->state) != FB_SLOT_ACTIVE)
        return NULL;
    info = malloc(sizeof(*info));
    if (info == NULL)
        return NULL;
    ok = fb_slot_info_read_checked(info, slot) && atomic_load(&slot->generation) == gen &&
         atomic_load(&slot->state) == FB_SLOT_ACTIVE &&
         fb_mem_equal_ct(info->id_random, sid + 4, FB_ID_RANDOM_LEN) &&
         (info->direction == FB_DIR_UPLOAD || info->direction == FB_DIR_DOWNLOAD) && info->chunk_size > 0 &&
         info->nchunks == fb_chunk_count(info->size, info->chunk_size) && info->nchunks <= FB_BITMAP_BITS;
    if (ok)
        s = calloc(1, sizeof(*s));
    if (s != NULL && fb_assoc_srv_init(&s->as, sid, info->key, info->cipher, s) != FB_OK) {
        free(s);
        s = NULL;
    }
    if (s != NULL) {
        s->ss = ss;
        s->index = idx;
        s->generation = gen;
        memcpy(s->sid, sid, FB_WIRE_SID_LEN);
        fb_wire_sid_to_string(s->id, sid);
        s->slot = slot;
        s->direction = info->direction;
        s->size = info->size;
        s->chunk_size = info->chunk_size;
        s->nchunks = info->nchunks;
        s->created_ns = info->created_ns;
        s->file_dev = info->file_dev;
        s->file_ino = info->file_ino;
        s->file_mtime_ns = info->file_mtime_ns;
        s->file_ctime_ns = info->file_ctime_ns;
        if (info->flags & FB_SLOT_FLAG_EXPECTED_SHA256) {
            s->ckpt_flags = FB_CHECKPOINT_FLAG_SHA256;
            memcpy(s->expected_sha256, info->expected_sha256, sizeof(s->expected_sha256));
        }
        if (info->flags & FB_SLOT_FLAG_SOURCE_MTIME) {
            s->ckpt_flags |= FB_CHECKPOINT_FLAG_SOURCE_MTIME;
            s->source_mtime_ns = info->source_mtime_ns;
        }
        memcpy(s->source_id, info->source_id, sizeof(s->source_id));
        memcpy(s->relpath, info->relpath, sizeof(s->relpath));
        s->relpath[sizeof(s->relpath) - 1] = '\0';
        memcpy(s->docroot, info->docroot, sizeof(s->docroot));
        s->docroot[sizeof(s->docroot) - 1] = '\0';
        s->part_fd = s->parent_fd = s->file_fd = -1;
        s->last_seen_us = now;
        /* The periodic checkpoint (CKPT_INTERVAL_US) counts from the session's start, not from
         * time 0: a new upload is not checkpointed on the next housekeeping tick (a small file's
         * checkpoint would be thrown away by its commit a moment later). */
        s->last_ckpt_us = now;
        ss->by_index[idx] = s;
    }
    OPENSSL_cleanse(info, sizeof(*info));
    free(info);
    return s;
}

/* Makes sure the engine of the session's direction exists (upload: the receiver, seeded from
 * the shared bitmap; download: buffers; the sender waits for the first FEEDBACK). */
static fb_err engines_prepare(sess *s, uint64_t now)
{
    if (s->direction == FB_DIR_UPLOAD) {
        fb_xfer_receiver_params rp;
        fb_err e;

        if (s->rcv != NULL)
            return FB_OK;
        if (s->wbuf == NULL)
            s->wbuf = malloc(WBUF_SIZE);
        if (s->known == NULL)
            s->known = calloc(FB_BITMAP_WORDS, sizeof(uint64_t));
        if (s->wbuf == NULL || s->known == NULL)
            return FB_ERR_NOMEM;
        memset(s->known, 0, FB_BITMAP_WORDS * sizeof(uint64_t));
        s->known_count = 0;
        s->wlen = 0;
        s->npend = 0;
        memset(&rp, 0, sizeof(rp));
        rp.size = s->size;
        rp.chunk_size = s->chunk_size;
        rp.aead = s->as.hs; /* replaced by the association's keys when it is validated */
        memcpy(rp.sid, s->sid, FB_WIRE_SID_LEN);
        rp.write = sess_write_cb;
        rp.on_chunk_complete = sess_chunk_cb;
        rp.ctx = s;
        e = fb_xfer_receiver_new(&s->rcv, &rp, now);
        if (e != FB_OK)
            return e;
        sess_sync_bitmap(s);
        return FB_OK;
    }
    if (s->rbuf == NULL)
        s->rbuf = malloc(RBUF_SIZE);
    return s->rbuf ? FB_OK : FB_ERR_NOMEM;
}

/* A write failed or the session went away under the upload: tell the client, start over on
 * its next HELLO (from the shared bitmap, which holds only written chunks). */
void sess_upload_fail(sess *s, fb_err e, uint64_t now)
{
    if (e == FB_ERR_SESSION_STATE && slot_refused(s))
        e = FB_ERR_SERVER_REFUSED;
    udpd_ctr.write_errors++;
    udpd_log(e == FB_ERR_SESSION_STATE ? UDPD_INFO : UDPD_ERROR, "UD00022",
             "session %s: writing '%s' failed: %s; UDP transfer stopped (the client continues over HTTPS)",
             s->id, s->relpath, fb_err_message(e));
    s->wlen = 0;
    s->npend = 0;
    sess_send_close(s, e, 0);
    fb_xfer_receiver_free(s->rcv);
    s->rcv = NULL;
    sess_assoc_end(s, now, fb_err_name(e));
}

/* ---- handshake (fb_assoc) --------------------------------------------------------------------- */

/* The negotiation follows the configuration (a reload applies to the HELLOs after it). */
static void policy_refresh(udpd_sessions *ss)
{
    const fb_config *cfg = udpd_cfg(ss->d);
    fb_assoc_policy pol;

    if (cfg == ss->policy_of)
        return;
    memset(&pol, 0, sizeof(pol));
    pol.allowed_ciphers = cfg->allowed_ciphers;
    pol.allowed_policies = cfg->allowed_policies;
    pol.target_rate_cap = cfg->target_rate_cap_kbps * 125; /* kbit/s -> B/s */
    pol.min_rate_cap = cfg->min_rate_cap_kbps * 125;
    pol.default_rate = UDPD_DEFAULT_RATE;
    pol.max_datagram = (uint16_t)UDPD_MAX_DATAGRAM;
    fb_assoc_server_set_policy(ss->hs, &pol);
    ss->policy_of = cfg;
}

/* The session a datagram names: its context, created on a HELLO for an ACTIVE slot whose random
 * part matches; a context whose slot is no longer the same session is dropped first. */
static fb_assoc_srv *lookup_cb(void *ctx, const fb_wire_hdr *hdr, uint64_t now, fb_wire_reason *why)
{
    udpd_sessions *ss = ctx;
    uint32_t idx = fb_wire_sid_slot(hdr->sid);
    sess *s;

    if (idx >= ss->nslots) {
        *why = FB_WIRE_R_UNKNOWN_SESSION;
        return NULL;
    }
    s = ss->by_index[idx];
    if (s != NULL && !slot_still_ours(s)) {
        sess_ended(s, now);
        s = NULL;
    }
    if (s == NULL) {
        if (hdr->type != FB_WIRE_HELLO) {
            /* No context: the session is unknown, or no HELLO came yet. */
            *why = atomic_load(&fb_table_slot(udpd_table(ss->d), idx)->state) == FB_SLOT_ACTIVE
                       ? FB_WIRE_R_NO_KEYS
                       : FB_WIRE_R_UNKNOWN_SESSION;
            return NULL;
        }
        s = sess_create(ss, idx, hdr->sid, now);
        if (s == NULL) {
            *why = FB_WIRE_R_UNKNOWN_SESSION;
            return NULL;
        }
    }
    return &s->as;
}

/* What udpd requires of a HELLO beyond cipher and policy: its docroot, its files, the engines. */
static fb_err admit_cb(void *ctx, fb_assoc_srv *as, uint64_t now, const char **detail)
{
    udpd_sessions *ss = ctx;
    sess *s = as->user;
    fb_err st = FB_OK;

    if (!sess_docroot_allowed(udpd_cfg(ss->d), s->docroot)) {
        *detail = "the session's docroot is not in this udpd's configuration";
        return FB_ERR_PERMISSION;
    }
    if (!s->files_open && (st = sess_open_files(s)) != FB_OK) {
        *detail = "cannot open the file";
        return st;
    }
    if ((st = engines_prepare(s, now)) != FB_OK)
        *detail = "out of memory";
    return st;
}

/* An authenticated HELLO was answered (or not): count, log, send the answer back to FROM. */
static void on_hello(sess *s, fb_assoc_event ev, const fb_assoc_out *out, const udpd_addr *from)
{
    char where[64];
    uint8_t *p;

    udpd_ctr.hellos++;
    udpd_addr_format(where, sizeof(where), from);
    switch (ev) {
    case FB_ASSOC_HELLO_REPLAYED:
        count_drop(UDPD_DROP_HELLO_REPLAYED);
        break;
    case FB_ASSOC_HELLO_REFUSED:
        udpd_ctr.hello_refused++;
        udpd_log(UDPD_INFO, "UD00023", "session %s: HELLO from %s refused: %s (%s)", s->id, where,
                 fb_err_message(out->status), out->detail ? out->detail : "");
        break;
    case FB_ASSOC_HELLO_FAILED:
        udpd_log(UDPD_ERROR, "UD00024", "session %s: cannot derive data keys", s->id);
        break;
    case FB_ASSOC_HELLO_PENDING:
        udpd_log(UDPD_DEBUG, "UD00029", "session %s: HELLO from %s accepted, waiting for its first packet",
                 s->id, where);
        break;
    default: /* FB_ASSOC_HELLO_AGAIN: our answer was lost; the same one again */
        break;
    }
    if (out->len == 0 || (p = udpd_send_reserve(s->ss->d, out->len)) == NULL)
        return;
    memcpy(p, out->dgram, out->len);
    udpd_send_commit(s->ss->d, out->len, from);
}

/* The pending association proved its address: it becomes the running one. */
static void promote(sess *s, uint64_t now)
{
    if (s->as.cur.live)
        sess_assoc_end(s, now, "replaced by a new association");
    fb_assoc_srv_promote(&s->as);
    memcpy(&s->peer.ss, &s->as.cur.peer.ss, sizeof(s->peer.ss));
    s->peer.len = s->as.cur.peer.len;
    udpd_addr_format(s->peer_str, sizeof(s->peer_str), &s->peer);
    assoc_link(s);
    udpd_ctr.associations++;
    s->snd_done_logged = 0;
    s->roff = s->rlen = 0;
    if (s->rcv != NULL) {
        fb_xfer_receiver_set_aead(s->rcv, s->as.cur.aead);
        s->force_feedback = 1; /* the client learns at once what is held */
    }
    udpd_log(
        UDPD_INFO, "UD00025",
        "session %s: %s of '%s' (%llu bytes) from %s: cipher %s, policy %s, rate %llu..%llu B/s, datagram %u",
        s->id, s->direction == FB_DIR_UPLOAD ? "upload" : "download", s->relpath, (unsigned long long)s->size,
        s->peer_str, fb_config_cipher_name(s->as.cur.cipher), fb_config_policy_name(s->as.cur.policy),
        (unsigned long long)s->as.cur.min_rate, (unsigned long long)s->as.cur.target_rate,
        s->as.cur.max_dgram);
}

void udpd_sessions_input(udpd_sessions *ss, uint8_t *buf, size_t len, const udpd_addr *from, uint64_t now,
                         uint64_t arrived)
{
    fb_assoc_out out;
    fb_assoc_addr peer;
    fb_assoc_event ev;
    sess *s;

    udpd_ctr.rx_dgrams++;
    udpd_ctr.rx_bytes += len;
    policy_refresh(ss);
    fb_assoc_addr_set(&peer, (const struct sockaddr *)&from->ss, from->len);
    ev = fb_assoc_server_input(ss->hs, &out, buf, len, &peer, now);
    s = out.srv != NULL ? out.srv->user : NULL;
    switch (ev) {
    case FB_ASSOC_DROP:
        count_wire(out.reason);
        return;
    case FB_ASSOC_DROP_UNEXPECTED:
        count_drop(UDPD_DROP_UNEXPECTED);
        return;
    case FB_ASSOC_DROP_ADDRESS:
        count_drop(UDPD_DROP_WRONG_ADDRESS);
        return;
    case FB_ASSOC_VALIDATED:
        promote(s, now);
        break;
    case FB_ASSOC_PACKET:
        break;
    default:
        s->last_seen_us = now;
        on_hello(s, ev, &out, from);
        return;
    }
    s->last_seen_us = now;
    switch (out.pkt.hdr.type) {
    case FB_WIRE_DATA:
        sess_on_data(s, &out.pkt, now, arrived);
        break;
    case FB_WIRE_FEEDBACK:
        sess_on_feedback(s, &out.pkt, arrived);
        break;
    case FB_WIRE_CLOSE:
        sess_on_close(s, &out.pkt, now);
        break;
    case FB_WIRE_PROBE:
        sess_on_probe(s, &out.pkt, now, arrived);
        break;
    default:
        count_drop(UDPD_DROP_UNEXPECTED);
        break;
    }
}

void udpd_sessions_after_batch(udpd_sessions *ss, uint64_t now)
{
    uint64_t wall = 0;

    while (ss->touched != NULL) {
        sess *s = ss->touched;
        fb_err e;

        ss->touched = s->next_touched;
        s->touched = 0;
        s->next_touched = NULL;
        if (s->rcv == NULL)
            continue;
        e = sess_publish(s);
        if (e != FB_OK) {
            sess_upload_fail(s, e, now);
            continue;
        }
        if (wall == 0)
            wall = fb_time_now_ns();
        atomic_store(&s->slot->last_activity_ns, wall);
        if (s->since_ckpt_bytes >= CKPT_BYTES)
            sess_checkpoint(s, now, 0);
        send_feedback(s, now, 0);
    }
}

/* ---- timers ----------------------------------------------------------------------------------- */

static void housekeeping(udpd_sessions *ss, uint64_t now)
{
    for (uint32_t i = 0; i < ss->nslots; i++) {
        sess *s = ss->by_index[i];

        if (s == NULL)
            continue;
        if (!slot_still_ours(s)) {
            sess_ended(s, now);
            continue;
        }
        if (fb_assoc_srv_expire(&s->as, now)) {
            sess_assoc_end(s, now, "idle");
            continue;
        }
        if (!s->as.cur.live && !s->as.pend.live && now - s->last_seen_us > SESSION_IDLE_US) {
            sess_checkpoint(s, now, 0);
            sess_destroy(s, now, "idle");
            continue;
        }
        if (s->rcv != NULL)
            sess_sync_bitmap(s);
        if (s->ckpt_dirty &&
            (now - s->last_ckpt_us >= CKPT_INTERVAL_US || now - s->last_data_us >= CKPT_IDLE_US))
            sess_checkpoint(s, now, 0);
    }
}

uint64_t udpd_sessions_run(udpd_sessions *ss, uint64_t now)
{
    uint64_t next;
    int progress, rounds = 0;

    if (now - ss->last_housekeep_us >= HOUSEKEEP_US) {
        ss->last_housekeep_us = now;
        housekeeping(ss, now);
    }
    next = ss->last_housekeep_us + HOUSEKEEP_US;
    /* Downloads share the send batch in rounds of SEND_QUANTUM datagrams each. */
    do {
        progress = 0;
        for (sess *s = ss->assoc, *n; s != NULL; s = n) {
            n = s->next_assoc;
            if (s->snd == NULL)
                continue;
            for (int k = 0; k < SEND_QUANTUM && fb_xfer_sender_next_time(s->snd, now) <= now; k++) {
                uint8_t *p = udpd_send_reserve(ss->d, s->as.cur.max_dgram);
                size_t len = 0;
                fb_err e;

                if (p == NULL) /* batch full: flush and come back at once, or on EPOLLOUT */
                    return udpd_send_blocked(ss->d) ? next : now;
                e = fb_xfer_sender_next(s->snd, p, s->as.cur.max_dgram, &len, s->as.cur.pn_out, now);
                if (e != FB_OK) {
                    udpd_log(UDPD_ERROR, "UD00028", "session %s: reading '%s' failed: %s", s->id, s->relpath,
                             fb_err_message(e));
                    sess_send_close(s, e, 0);
                    sess_assoc_end(s, now, fb_err_name(e));
                    break;
                }
                if (len == 0)
                    break;
                s->as.cur.pn_out++;
                udpd_send_commit(ss->d, len, &s->peer);
                udpd_ctr.data_bytes_sent += len - FB_WIRE_DATA_OVERHEAD;
                progress = 1;
            }
        }
    } while (progress && ++rounds < 64);
    for (sess *s = ss->assoc; s != NULL; s = s->next_assoc) {
        uint64_t t = UINT64_MAX;

        if (s->rcv != NULL) {
            send_feedback(s, now, 0);
            t = s->force_feedback ? now : fb_xfer_receiver_next_feedback(s->rcv, now);
        } else if (s->snd != NULL) {
            t = fb_xfer_sender_next_time(s->snd, now);
            if (t > now && t - now < PACING_QUANTUM_US)
                t = now + PACING_QUANTUM_US;
        }
        if (t < next)
            next = t;
    }
    return next;
}

/* ---- setup and reporting ---------------------------------------------------------------------- */

fb_err udpd_sessions_new(udpd_sessions **pss, udpd *d, uint32_t nslots)
{
    udpd_sessions *ss = calloc(1, sizeof(*ss));
    fb_assoc_server_params ap;
    fb_err e;

    *pss = NULL;
    if (ss == NULL)
        return FB_ERR_NOMEM;
    ss->d = d;
    ss->nslots = nslots;
    ss->by_index = calloc(nslots ? nslots : 1, sizeof(sess *));
    ss->scratch = calloc(FB_BITMAP_WORDS, sizeof(uint64_t));
    if (ss->by_index == NULL || ss->scratch == NULL) {
        free(ss->by_index);
        free(ss->scratch);
        free(ss);
        return FB_ERR_NOMEM;
    }
    memset(&ap, 0, sizeof(ap));
    ap.policy.max_datagram = (uint16_t)UDPD_MAX_DATAGRAM; /* the rest: policy_refresh */
    ap.random = fb_assoc_random_os;
    ap.lookup = lookup_cb;
    ap.admit = admit_cb;
    ap.ctx = ss;
    e = fb_assoc_server_new(&ss->hs, &ap);
    if (e != FB_OK) {
        free(ss->by_index);
        free(ss->scratch);
        free(ss);
        return e;
    }
    *pss = ss;
    return FB_OK;
}

void udpd_sessions_free(udpd_sessions *ss)
{
    uint64_t now = udpd_now_us();

    if (ss == NULL)
        return;
    for (uint32_t i = 0; i < ss->nslots; i++) {
        sess *s = ss->by_index[i];

        if (s == NULL)
            continue;
        if (s->rcv != NULL && slot_still_ours(s) && sess_publish(s) == FB_OK)
            sess_checkpoint(s, now, 1);
        if (s->as.cur.live)
            sess_assoc_end(s, now, "udpd stopping");
        s->ckpt_dirty = 0;
        sess_destroy(s, now, "udpd stopping");
    }
    free(ss->by_index);
    free(ss->scratch);
    fb_assoc_server_free(ss->hs);
    free(ss);
}

unsigned udpd_sessions_active(const udpd_sessions *ss)
{
    return ss->nassoc;
}

void udpd_sessions_log(udpd_sessions *ss)
{
    for (uint32_t i = 0; i < ss->nslots; i++) {
        sess *s = ss->by_index[i];

        if (s == NULL)
            continue;
        if (s->rcv != NULL) {
            fb_xfer_receiver_stats st;

            fb_xfer_receiver_stats_get(&st, s->rcv);
            udpd_log(
                UDPD_INFO, "UD00052",
                "session %s: upload '%s' %s%s: %llu of %llu bytes held, %llu new over UDP, %llu duplicate, "
                "%llu FEEDBACK",
                s->id, s->relpath, s->as.cur.live ? "with " : "idle", s->as.cur.live ? s->peer_str : "",
                (unsigned long long)st.held_bytes, (unsigned long long)s->size,
                (unsigned long long)st.bytes_new, (unsigned long long)st.bytes_dup,
                (unsigned long long)st.feedbacks);
        } else if (s->snd != NULL) {
            fb_xfer_sender_stats st;

            fb_xfer_sender_stats_get(&st, s->snd);
            udpd_log(UDPD_INFO, "UD00053",
                     "session %s: download '%s' with %s: %llu bytes sent, %llu resent, %llu still needed, "
                     "rate %llu "
                     "B/s, srtt %llu us",
                     s->id, s->relpath, s->peer_str, (unsigned long long)st.bytes_new,
                     (unsigned long long)st.bytes_retx, (unsigned long long)st.need_bytes,
                     (unsigned long long)st.rate, (unsigned long long)st.srtt_us);
        } else {
            udpd_log(UDPD_INFO, "UD00054", "session %s: %s '%s', %s", s->id,
                     s->direction == FB_DIR_UPLOAD ? "upload" : "download", s->relpath,
                     s->as.cur.live ? "associated" : "no association");
        }
    }
}
