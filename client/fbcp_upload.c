/* fbcp_upload: one file up to the server (docs/HTTP-API.md):
 *
 *   POST sessions {direction, path, size, overwrite, sha256?, ask_digest?, mode} -> id, chunk
 *     size, missing (or 409 "target": "directory" / "file": ask again, see fbcp_upload_file)
 *   the transport sends the missing ranges (HTTP: PUT sessions/{id}/data with Content-Range)
 *   POST sessions/{id}/commit {sha256}
 *
 * The missing ranges go over UDP first (fbcp_move: the session's key and UDP port come with the
 * POST answer) and over HTTP(S) when UDP is blocked or lost; the commit is always HTTPS.
 *
 * The POST carries the file's identity ("source_id": SHA-256 over its st_dev, st_ino, size and
 * modification and change times): the server resumes progress only for the same identity and
 * otherwise starts over (docs/HTTP-API.md, "Resuming"). Should a commit still fail its digest,
 * the upload starts over once by itself (DELETE, POST, everything sent and hashed again).
 *
 * The SHA-256 of the file is computed while the data goes out, except with --overwrite
 * if_different when a file of the same size is at the target (the server says so), where the
 * server needs it in the POST to decide whether the target is already identical: then the file
 * is read twice (hash first, then send). Otherwise the file is read once: fbcp_upload_hash.c.
 * A session the server has lost (404) is created again: the server resumes it from its
 * checkpoint. */
#include "fbcp.h"
#include "fbcp_upload.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

/* The session key is only needed by the UDP transport, which keeps its own copy: wipe it from the
 * parsed answer before it is freed so it does not linger in freed memory. */
static void fbcp_wipe_key(json_t *doc)
{
    json_t *k = json_object_get(doc, "key");
    const char *v = json_string_value(k);
    if (v != NULL)
        OPENSSL_cleanse((void *)v, strlen(v));
}

static int fbcp_id_is_safe(const char *id)
{
    size_t n = 0;
    if (id == NULL)
        return 0;
    for (; id[n] != '\0'; n++)
        if (!((id[n] >= '0' && id[n] <= '9') || (id[n] >= 'a' && id[n] <= 'z') ||
              (id[n] >= 'A' && id[n] <= 'Z') || id[n] == '-' || id[n] == '_'))
            return 0;
    return n > 0 && n <= 128;
}

static char *fbcp_url_concat(const char *a, const char *b, const char *c)
{
    size_t len = strlen(a) + strlen(b) + strlen(c) + 1;
    char *r = malloc(len);
    if (r != NULL)
        snprintf(r, len, "%s%s%s", a, b, c);
    return r;
}

/* Reads a session document (POST answer or GET sessions/{id}) into U. */
static fb_err fbcp_upload_parse_session(fbcp_upload *u, json_t *doc, int with_id, char *detail, size_t detlen)
{
    const char *state = json_string_value(json_object_get(doc, "state"));
    json_t *missing = json_object_get(doc, "missing");
    json_t *chunk = json_object_get(doc, "chunk_size");
    fb_err rv;

    if (!json_is_object(doc) || state == NULL) {
        snprintf(detail, detlen, "session document without a state");
        return FB_ERR_PROTOCOL;
    }
    free(u->state);
    u->state = strdup(state);
    if (u->state == NULL)
        return FB_ERR_NOMEM;
    u->done = strcmp(state, "done") == 0;
    if (strcmp(state, "failed") == 0) {
        /* the server ended the session: its recorded reason ("server_refused" after the
         * administrator's fbctl cancel) is the answer, nothing is sent into it any more */
        const char *why = json_string_value(json_object_get(doc, "error"));
        fb_err e = why != NULL ? fb_err_from_name(why) : FB_ERR_SESSION_STATE;

        if (e == FB_OK || e == FB_ERR_PROTOCOL)
            e = FB_ERR_SESSION_STATE;
        snprintf(detail, detlen, "the server ended the session%s",
                 e == FB_ERR_SERVER_REFUSED ? " (cancelled on the server)" : "");
        return e;
    }
    u->skipped = json_is_true(json_object_get(doc, "skipped"));
    /* why (the server's "reason": identical, newer), for the skip event */
    {
        const char *reason = json_string_value(json_object_get(doc, "reason"));
        u->skip_reason = reason != NULL && strcmp(reason, "newer") == 0 ? "newer" : "identical";
    }
    if (json_is_boolean(json_object_get(doc, "resumed")))
        u->resumed = json_is_true(json_object_get(doc, "resumed"));
    /* a skipped upload (identical target) needs no session: the answer may carry no id */
    if (with_id && !(u->done && json_string_value(json_object_get(doc, "id")) == NULL)) {
        const char *id = json_string_value(json_object_get(doc, "id"));
        if (!fbcp_id_is_safe(id)) {
            snprintf(detail, detlen, "session document without a valid id");
            return FB_ERR_PROTOCOL;
        }
        const char *key = json_string_value(json_object_get(doc, "key"));
        json_t *port = json_object_get(json_object_get(doc, "udp"), "port");

        /* a new session (or the same one again): the UDP side re-keys when the gen changes */
        if (key != NULL && strlen(key) == 2 * sizeof(u->x.key) &&
            fb_hex_decode(u->x.key, sizeof(u->x.key), key) == FB_OK) {
            u->x.have_key = 1;
        } else {
            OPENSSL_cleanse(u->x.key, sizeof(u->x.key));
            u->x.have_key = 0;
        }
        u->x.session_gen++;
        u->x.udp_port =
            json_is_integer(port) && json_integer_value(port) > 0 && json_integer_value(port) <= 65535
                ? (long)json_integer_value(port)
                : 0;
        free(u->x.session_id);
        free(u->x.data_url);
        u->x.session_id = strdup(id);
        u->x.data_url = fbcp_url_concat(u->x.url->base, "/sessions/", id);
        if (u->x.session_id == NULL || u->x.data_url == NULL)
            return FB_ERR_NOMEM;
        {
            char *d = fbcp_url_concat(u->x.data_url, "/data", "");
            if (d == NULL)
                return FB_ERR_NOMEM;
            free(u->x.data_url);
            u->x.data_url = d;
        }
    }
    if (json_is_integer(chunk)) {
        json_int_t cs = json_integer_value(chunk);
        if (cs <= 0 || cs > (1 << 30)) {
            snprintf(detail, detlen, "chunk size %lld out of range", (long long)cs);
            return FB_ERR_PROTOCOL;
        }
        u->x.chunk_size = (uint32_t)cs;
    }
    if (u->done) {
        fbcp_ranges_clear(&u->missing);
        return FB_OK;
    }
    if (missing == NULL) {
        snprintf(detail, detlen, "session document without missing ranges");
        return FB_ERR_PROTOCOL;
    }
    rv = fbcp_ranges_from_json(&u->missing, missing, u->x.size);
    if (rv != FB_OK)
        snprintf(detail, detlen, "invalid missing ranges");
    return rv;
}

/* POST sessions for a pack (U->pack_request; takes URL). The first answer sizes the pack (the
 * server decides which files are sent) and is kept for the caller; an answer to a request made
 * again (the session was lost) must describe the same pack. */
static fb_err fbcp_upload_create_pack(fbcp_upload *u, char *url, int retries, char *detail, size_t detlen)
{
    fbcp_http_answer a;
    fb_err rv;

    rv = fbcp_http_request(u->c->http, &a, "POST", url, u->pack_request, FBCP_MAX_JSON, retries, detail,
                           detlen);
    free(url);
    if (rv != FB_OK)
        return rv;
    if (a.status == 200 || a.status == 201) {
        json_t *size = json_object_get(a.json, "size");
        int skipped = json_is_true(json_object_get(a.json, "skipped"));

        if (!skipped && (!json_is_integer(size) || json_integer_value(size) < 0)) {
            snprintf(detail, detlen, "pack session document without a size");
            rv = FB_ERR_PROTOCOL;
        } else if (u->pack_answer == NULL) {
            u->x.size = skipped ? 0 : (uint64_t)json_integer_value(size);
        } else if (skipped || (uint64_t)json_integer_value(size) != u->x.size) {
            snprintf(detail, detlen, "the server's view of the pack changed; run fbcp again");
            rv = FB_ERR_CHANGED;
        }
        if (rv == FB_OK)
            rv = fbcp_upload_parse_session(u, a.json, 1, detail, detlen);
        fbcp_wipe_key(a.json);
        if (rv == FB_OK && u->pack_answer == NULL)
            u->pack_answer = json_incref(a.json);
    } else {
        rv = fbcp_http_problem(&a, detail, detlen);
        fbcp_wipe_key(a.json);
    }
    fbcp_http_answer_free(&a);
    return rv;
}

/* POST sessions: creates (or resumes) the upload session. */
static fb_err fbcp_upload_create(fbcp_upload *u, int retries, char *detail, size_t detlen)
{
    fbcp_http_answer a;
    json_t *body;
    char *url = fbcp_url_concat(u->x.url->base, "/sessions", "");
    char mode[16];
    fb_err rv;

    u->refused_by = FBCP_TARGET_OTHER;
    if (url == NULL)
        return FB_ERR_NOMEM;
    if (u->pack_request != NULL)
        return fbcp_upload_create_pack(u, url, retries, detail, detlen);
    snprintf(mode, sizeof(mode), "%04o", (unsigned)(u->mode & 07777));
    body = json_pack("{s:s, s:s, s:I, s:s, s:s}", "direction", "upload", "path", u->x.remote, "size",
                     (json_int_t)u->x.size, "overwrite", fbcp_overwrite_names[u->c->opts->overwrite], "mode",
                     mode);
    if (body != NULL && (u->c->opts->preserve_times || u->c->opts->overwrite >= FBCP_OVERWRITE_OLDER)) {
        /* the target gets the source's time; the "older" policies compare it */
        json_object_set_new(body, "mtime", json_integer((json_int_t)u->source_st.st_mtim.tv_sec));
        json_object_set_new(body, "mtime_ns", json_integer((json_int_t)u->source_st.st_mtim.tv_nsec));
    }
    if (body != NULL && u->source_hex[0] != '\0')
        json_object_set_new(body, "source_id", json_string(u->source_hex));
    if (body != NULL && u->sha_hex[0] != '\0')
        json_object_set_new(body, "sha256", json_string(u->sha_hex));
    else if (body != NULL && u->ask_digest)
        /* no digest yet: the server says when a file of this size is at the target */
        json_object_set_new(body, "ask_digest", json_true());
    if (body == NULL) {
        free(url);
        return FB_ERR_NOMEM;
    }
    rv = fbcp_http_request(u->c->http, &a, "POST", url, body, FBCP_MAX_JSON, retries, detail, detlen);
    json_decref(body);
    free(url);
    if (rv != FB_OK)
        return rv;
    if (a.status == 200 || a.status == 201) {
        rv = fbcp_upload_parse_session(u, a.json, 1, detail, detlen);
    } else {
        const char *target = json_string_value(json_object_get(a.json, "target"));

        if (target != NULL && strcmp(target, "directory") == 0)
            u->refused_by = FBCP_TARGET_DIRECTORY;
        else if (target != NULL && strcmp(target, "file") == 0)
            u->refused_by = FBCP_TARGET_FILE;
        rv = fbcp_http_problem(&a, detail, detlen);
    }
    fbcp_wipe_key(a.json);
    fbcp_http_answer_free(&a);
    return rv;
}

/* GET sessions/{id}; on 404 the session is created again. Fills U->missing. */
static fb_err fbcp_upload_status(fbcp_upload *u, int retries, char *detail, size_t detlen)
{
    fbcp_http_answer a;
    char *url = fbcp_url_concat(u->x.url->base, "/sessions/", u->x.session_id);
    fb_err rv;

    if (url == NULL)
        return FB_ERR_NOMEM;
    rv = fbcp_http_request(u->c->http, &a, "GET", url, NULL, FBCP_MAX_JSON, retries, detail, detlen);
    free(url);
    if (rv != FB_OK)
        return rv;
    fbcp_wipe_key(a.json);
    if (a.status == 200) {
        rv = fbcp_upload_parse_session(u, a.json, 0, detail, detlen);
    } else if (a.status == 404) {
        fbcp_trace(u->c->opts, "session %s is gone: creating it again", u->x.session_id);
        rv = fbcp_upload_create(u, retries, detail, detlen);
    } else if (fbcp_http_problem(&a, detail, detlen) == FB_ERR_CHANGED) {
        /* the server lost the partial file (deleted or truncated there): a new session starts
         * over, sending everything again */
        fbcp_warn("%s: the partial file on the server was deleted or changed: starting over", u->x.local);
        detail[0] = '\0';
        rv = fbcp_upload_create(u, retries, detail, detlen);
    } else {
        rv = fbcp_http_problem(&a, detail, detlen);
    }
    fbcp_http_answer_free(&a);
    return rv;
}

/* The transport's refresh hook: what of [off, off+len) does the server still miss? Called from
 * the transport's retry path, which counts the attempts itself (so no nested retries here). */
static fb_err fbcp_upload_refresh(fbcp_xfer *x, fbcp_ranges *out, uint64_t off, uint64_t len, char *detail,
                                  size_t detlen)
{
    fbcp_upload *u = x->ctx;
    fb_err rv = fbcp_upload_status(u, 0, detail, detlen);
    if (rv != FB_OK)
        return rv;
    if (u->done) {
        fbcp_ranges_clear(out);
        return FB_OK;
    }
    return fbcp_ranges_intersect(out, &u->missing, off, len);
}

/* fbcp_move's hook after a change of transport: everything the server still misses. */
static fb_err fbcp_upload_missing(fbcp_xfer *x, fbcp_ranges *out, char *detail, size_t detlen)
{
    fbcp_upload *u = x->ctx;
    fb_err rv = fbcp_upload_status(u, FBCP_RETRIES_DEFAULT, detail, detlen);

    if (rv != FB_OK)
        return rv;
    if (u->done) {
        fbcp_ranges_clear(out);
        return FB_OK;
    }
    return fbcp_ranges_copy(out, &u->missing);
}

static fb_err fbcp_upload_send_missing(fbcp_upload *u, char *detail, size_t detlen)
{
    if (u->missing.n == 0)
        return FB_OK;
    if (u->x.sw == NULL) {
        fb_err rv = fbcp_move_setup(u->c, &u->x, &u->sw, detail, detlen);
        if (rv != FB_OK)
            return rv;
    }
    return fbcp_move(u->c, &u->x, &u->missing, detail, detlen);
}

static fb_err fbcp_upload_commit(fbcp_upload *u, char *detail, size_t detlen)
{
    char *url = fbcp_url_concat(u->x.url->base, "/sessions/", u->x.session_id);
    char *curl = url != NULL ? fbcp_url_concat(url, "/commit", "") : NULL;
    fb_err rv = FB_ERR_INTERNAL;

    free(url);
    if (curl == NULL)
        return FB_ERR_NOMEM;
    /* bounded: each round either finishes or sends what the server says is missing */
    for (int round = 0; round < 8 && !fbcp_interrupted; round++) {
        fbcp_http_answer a;
        json_t *body = json_pack("{s:s}", "sha256", u->sha_hex);
        fb_err pe;

        if (body == NULL) {
            rv = FB_ERR_NOMEM;
            break;
        }
        fbcp_trace(u->c->opts, "commit session %s", u->x.session_id);
        rv = fbcp_http_request(u->c->http, &a, "POST", curl, body, FBCP_MAX_JSON, FBCP_RETRIES_DEFAULT,
                               detail, detlen);
        json_decref(body);
        if (rv != FB_OK)
            break;
        if (a.status == 200) {
            const char *state = json_string_value(json_object_get(a.json, "state"));
            rv = state != NULL && strcmp(state, "done") == 0 ? FB_OK : FB_ERR_PROTOCOL;
            if (rv != FB_OK)
                snprintf(detail, detlen, "commit answered without state done");
            else if (u->pack_request != NULL && u->commit_answer == NULL)
                u->commit_answer = json_incref(a.json); /* the result of each file */
            fbcp_http_answer_free(&a);
            break;
        }
        pe = fbcp_http_problem(&a, detail, detlen);
        fbcp_http_answer_free(&a);
        if (pe == FB_ERR_DIGEST_MISMATCH) {
            rv = pe; /* the caller starts over once, then names the cause */
            break;
        }
        if (pe == FB_ERR_INCOMPLETE || pe == FB_ERR_NOT_FOUND || pe == FB_ERR_SESSION_STATE) {
            /* something is missing, the session was lost, or another commit is running */
            fbcp_trace(u->c->opts, "commit: %s (%s): asking the session state", fb_err_message(pe), detail);
            rv = fbcp_upload_status(u, FBCP_RETRIES_DEFAULT, detail, detlen);
            if (rv != FB_OK)
                break;
            if (u->done) {
                rv = FB_OK;
                break;
            }
            if (pe == FB_ERR_SESSION_STATE && u->state != NULL && strcmp(u->state, "finalising") == 0) {
                fbcp_sleep_ms(1000);
                continue;
            }
            if (pe == FB_ERR_SESSION_STATE && u->state != NULL && strcmp(u->state, "active") != 0) {
                rv = pe;
                snprintf(detail, detlen, "session state is %s", u->state);
                break;
            }
            rv = fbcp_upload_send_missing(u, detail, detlen);
            if (rv != FB_OK)
                break;
            rv = FB_ERR_INCOMPLETE;
            snprintf(detail, detlen, "the server still missed data after %d commit attempts", round + 1);
            continue;
        }
        rv = pe;
        break;
    }
    free(curl);
    return rv;
}

static fb_err fbcp_upload_delete(fbcp_upload *u, char *detail, size_t detlen)
{
    fbcp_http_answer a;
    char *url = fbcp_url_concat(u->x.url->base, "/sessions/", u->x.session_id);
    fb_err rv;

    if (url == NULL)
        return FB_ERR_NOMEM;
    rv = fbcp_http_request(u->c->http, &a, "DELETE", url, NULL, FBCP_MAX_JSON, FBCP_RETRIES_DEFAULT, detail,
                           detlen);
    free(url);
    if (rv != FB_OK)
        return rv;
    if (a.status != 204 && a.status != 200 && a.status != 404)
        rv = fbcp_http_problem(&a, detail, detlen);
    fbcp_http_answer_free(&a);
    return rv;
}

/* The file's identity for POST sessions "source_id": SHA-256 over its st_dev, st_ino, size,
 * modification and change times (five little-endian 64-bit numbers). Another file, or this one
 * written since (even with its mtime set back: the change time cannot be), has another identity,
 * so the server does not resume progress made for other bytes. A chmod or rename also changes
 * the change time: then the upload starts over, which costs time but never correctness. */
static void fbcp_upload_source_id(char hex[FB_SHA256_HEX_LEN + 1], const struct stat *st)
{
    uint64_t v[5] = {(uint64_t)st->st_dev, (uint64_t)st->st_ino, (uint64_t)st->st_size,
                     fb_timespec_ns(&st->st_mtim), fb_timespec_ns(&st->st_ctim)};
    unsigned char buf[sizeof(v)], digest[FB_SHA256_LEN];
    unsigned int outlen = 0;

    for (size_t i = 0; i < 5; i++)
        for (size_t b = 0; b < 8; b++)
            buf[i * 8 + b] = (unsigned char)(v[i] >> (8 * b));
    if (EVP_Digest(buf, sizeof(buf), digest, &outlen, EVP_sha256(), NULL) == 1 && outlen == FB_SHA256_LEN)
        fb_hex_encode(hex, digest, FB_SHA256_LEN);
    else
        hex[0] = '\0'; /* no identity: the server resumes only another upload without one */
}

/* Sends what the server misses, finishes the digest (HASH, when it runs beside the upload) and
 * commits. */
static fb_err fbcp_upload_send_and_commit(fbcp_upload *u, fbcp_hash_job *hash, char *detail, size_t detlen)
{
    fb_err rv = fbcp_upload_send_missing(u, detail, detlen);
    struct stat now;

    if (rv != FB_OK)
        return rv;
    if (u->x.committed) {
        /* The request that carried the whole file committed it (Fallback-Commit): its digest was
         * computed before the data was read again to be sent, so the server's check against it
         * leaves no room for a mix of two versions; a change after both reads lands as cp's
         * would, as the version that was read. */
        fbcp_trace(u->c->opts, "session %s: committed with its data", u->x.session_id);
        return FB_OK;
    }
    if (hash->started) {
        fbcp_hash_finish(hash, 0);
        u->hash = NULL;
        fbcp_trace(u->c->opts, "sha256: %llu of %llu bytes hashed as they were sent, the rest read again",
                   (unsigned long long)hash->inline_bytes, (unsigned long long)u->x.size);
        if (hash->rv != FB_OK) {
            snprintf(detail, detlen, "cannot read the file to hash it");
            return FB_ERR_LOCAL_IO;
        }
        fb_hex_encode(u->sha_hex, hash->digest, FB_SHA256_LEN);
    }
    /* The digest only covers what was read: a file written meanwhile could land as a mix of two
     * versions with a matching digest. Like tar's "file changed as we read it", but an error:
     * the target is left as it was and the session is cancelled. */
    if (fstat(u->x.fd, &now) != 0 || now.st_size != u->source_st.st_size ||
        now.st_mtim.tv_sec != u->source_st.st_mtim.tv_sec ||
        now.st_mtim.tv_nsec != u->source_st.st_mtim.tv_nsec ||
        now.st_ctim.tv_sec != u->source_st.st_ctim.tv_sec ||
        now.st_ctim.tv_nsec != u->source_st.st_ctim.tv_nsec) {
        char ignored[FBCP_DETAIL_LEN];

        u->local_changed = 1;
        snprintf(detail, detlen, "the local file changed while it was read; not committed");
        fbcp_upload_delete(u, ignored, sizeof(ignored));
        return FB_ERR_DIGEST_MISMATCH;
    }
    return fbcp_upload_commit(u, detail, detlen);
}

/* The commit failed its digest: what the server holds is not what was read here. Either the
 * server's partial file held other bytes than its progress claimed (changed there, or progress of
 * another file), or the local file changed while it was read. Start over once: cancel the session
 * (the server drops its partial file and checkpoint), create it afresh, send and hash everything
 * again. A second mismatch can only be the local file changing under us. */
static fb_err fbcp_upload_start_over(fbcp_upload *u, fbcp_hash_job *hash, char *detail, size_t detlen)
{
    fb_err rv;

    fbcp_warn("%s: the data on the server did not match the local file; starting over", u->x.local);
    detail[0] = '\0';
    rv = fbcp_upload_delete(u, detail, detlen);
    if (rv != FB_OK)
        return rv;
    fbcp_hash_finish(hash, 1);
    memset(hash, 0, sizeof(*hash));
    hash->fd = u->x.fd;
    hash->size = u->x.size;
    u->sha_hex[0] = '\0';
    u->x.commit_sha = NULL; /* sent and committed apart from here on */
    u->x.committed = 0;
    if (fbcp_hash_start(hash) == FB_OK) {
        u->hash = hash;
    } else {
        rv = fb_sha256_fd(hash->digest, u->x.fd, u->x.size);
        if (rv != FB_OK)
            return rv;
        fb_hex_encode(u->sha_hex, hash->digest, FB_SHA256_LEN);
    }
    rv = fbcp_upload_create(u, FBCP_RETRIES_DEFAULT, detail, detlen);
    if (rv == FB_OK && u->done)
        return FB_OK;
    if (rv == FB_OK)
        rv = fbcp_upload_send_and_commit(u, hash, detail, detlen);
    if (rv == FB_ERR_DIGEST_MISMATCH)
        snprintf(detail, detlen,
                 "the local file changed while it was read (sent twice, its digest differed each time)");
    else if (rv == FB_OK)
        fbcp_warn("%s: started over after a digest mismatch on the server; now committed", u->x.local);
    return rv;
}

/* An upload of LOCAL (a file, or a pack's label) to REMOTE, with no file open yet. */
static void fbcp_upload_init(fbcp_upload *u, fbcp_hash_job *hash, fbcp_ctx *c, const fbcp_url *url,
                             const char *local, const char *remote)
{
    memset(u, 0, sizeof(*u));
    memset(hash, 0, sizeof(*hash));
    fbcp_ranges_init(&u->missing);
    u->c = c;
    u->x.direction = FBCP_UPLOAD;
    u->x.opts = c->opts;
    u->x.local = local;
    u->x.remote = remote;
    u->x.url = url;
    u->x.chunk_size = FBCP_DOWNLOAD_CHUNK;
    u->x.transport_name = c->transport->ops->name;
    u->x.poll_fd = -1;
    u->x.fd = -1;
    u->x.refresh = fbcp_upload_refresh;
    u->x.missing = fbcp_upload_missing;
    u->x.ctx = u;
}

fb_err fbcp_upload_file(fbcp_ctx *c, const fbcp_url *url, const char *local, const char *remote, int into_dir)
{
    fbcp_upload u;
    fbcp_hash_job hash;
    struct stat st;
    char detail[FBCP_DETAIL_LEN] = "";
    char *inside = NULL; /* REMOTE/<name of LOCAL> when REMOTE is a directory */
    fb_err rv;

    fbcp_upload_init(&u, &hash, c, url, local, remote);
    u.x.fd = open(local, O_RDONLY | O_CLOEXEC);
    if (u.x.fd < 0) {
        rv = errno == ENOENT ? FB_ERR_NOT_FOUND : FB_ERR_LOCAL_IO;
        snprintf(detail, sizeof(detail), "%s", strerror(errno));
        goto out;
    }
    if (fstat(u.x.fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rv = FB_ERR_LOCAL_IO;
        snprintf(detail, sizeof(detail), "not a regular file");
        goto out;
    }
    u.x.size = (uint64_t)st.st_size;
    u.mode = st.st_mode;
    u.source_st = st;
    fbcp_upload_source_id(u.source_hex, &st);
    hash.fd = u.x.fd;
    hash.size = u.x.size;

    /* The digest is computed beside the upload; only when the server finds a file of the same
     * size at the target (if_different) is it needed first, see below. A small file is hashed
     * first: it costs less than a thread, and the session request then carries the digest, so
     * an identical target is skipped in one round trip (a tree copied again). */
    if (u.x.size > FBCP_HASH_FIRST_MAX && fbcp_hash_start(&hash) == FB_OK) {
        u.hash = &hash;
    } else {
        rv = fb_sha256_fd(hash.digest, u.x.fd, u.x.size);
        if (rv != FB_OK)
            goto out;
        fb_hex_encode(u.sha_hex, hash.digest, FB_SHA256_LEN);
        u.x.commit_sha = u.sha_hex; /* known before the data moves: committed with it */
    }

    /* Only these first requests ask: a session re-created later (the server lost it) must not
     * turn into a question about a file that appeared at the target meanwhile. */
    u.ask_digest = (c->opts->overwrite == FBCP_OVERWRITE_IF_DIFFERENT ||
                    c->opts->overwrite == FBCP_OVERWRITE_IF_DIFFERENT_OLDER) &&
                   u.sha_hex[0] == '\0';
    rv = fbcp_upload_create(&u, FBCP_RETRIES_DEFAULT, detail, sizeof(detail));
    if (rv == FB_ERR_EXISTS && u.refused_by == FBCP_TARGET_DIRECTORY && into_dir) {
        /* like cp: an existing remote directory receives the file under its own name (asked
         * here rather than by a HEAD before every upload: a round trip saved on the others) */
        char *name = fbcp_basename(local);

        if (name == NULL || name[0] == '\0' || (inside = fbcp_path_join(remote, name)) == NULL) {
            rv = name != NULL && name[0] == '\0' ? FB_ERR_BAD_PATH : FB_ERR_NOMEM;
            free(name);
            goto out;
        }
        free(name);
        fbcp_trace(c->opts, "%s is a remote directory: uploading into it as %s", remote, inside);
        u.x.remote = inside;
        detail[0] = '\0';
        rv = fbcp_upload_create(&u, FBCP_RETRIES_DEFAULT, detail, sizeof(detail));
    }
    if (rv == FB_ERR_EXISTS && u.refused_by == FBCP_TARGET_FILE && hash.started) {
        /* if_different and a file of this size is there: the server compares before any data
         * moves, so it needs the digest now (the file is read twice only in this case) */
        fbcp_trace(c->opts, "a file of this size is at %s: hashing before asking again", u.x.remote);
        fbcp_upload_hash_hint(&u.x, u.x.size); /* no sender reads yet: hash it all now */
        fbcp_hash_finish(&hash, 0);
        u.hash = NULL;
        if (hash.rv != FB_OK) {
            rv = FB_ERR_LOCAL_IO;
            snprintf(detail, sizeof(detail), "cannot read the file to hash it");
            goto out;
        }
        fb_hex_encode(u.sha_hex, hash.digest, FB_SHA256_LEN);
        detail[0] = '\0';
        rv = fbcp_upload_create(&u, FBCP_RETRIES_DEFAULT, detail, sizeof(detail));
    }
    u.ask_digest = 0;
    if (rv == FB_OK && u.resumed && !c->opts->resume && !u.done) {
        fbcp_trace(c->opts, "--no-resume: cancelling the resumed session %s", u.x.session_id);
        rv = fbcp_upload_delete(&u, detail, sizeof(detail));
        if (rv == FB_OK)
            rv = fbcp_upload_create(&u, FBCP_RETRIES_DEFAULT, detail, sizeof(detail));
    }
    if (rv != FB_OK)
        goto out;
    if (u.done) {
        fbcp_event_skip(&u.x, u.skipped ? (u.skip_reason != NULL ? u.skip_reason : "identical") : "done");
        goto out;
    }
    u.x.bytes_skipped = u.x.size - fbcp_ranges_total(&u.missing);
    u.x.resumed = u.x.bytes_skipped > 0 || u.resumed;
    if (u.missing.n > 0) {
        rv = fbcp_move_setup(c, &u.x, &u.sw, detail, sizeof(detail));
        if (rv != FB_OK)
            goto out;
    }
    fbcp_event_start(&u.x);

    rv = fbcp_upload_send_and_commit(&u, &hash, detail, sizeof(detail));
    if (rv == FB_ERR_DIGEST_MISMATCH && !u.local_changed && !fbcp_interrupted)
        rv = fbcp_upload_start_over(&u, &hash, detail, sizeof(detail));
    if (rv != FB_OK)
        goto out;
    fbcp_event_done(&u.x, u.sha_hex);
out:
    /* The thread stops within a block (or a short wait): the digest is no longer needed. */
    fbcp_hash_finish(&hash, 1);
    u.hash = NULL;
    if (rv != FB_OK && !(fbcp_interrupted && rv == FB_ERR_CONNECTION_LOST))
        fbcp_report_error(&u.x, local, rv, detail);
    if (u.x.fd >= 0)
        close(u.x.fd);
    fbcp_move_cleanup(&u.x);
    free(u.x.session_id);
    free(u.x.data_url);
    free(u.state);
    free(inside);
    fbcp_ranges_free(&u.missing);
    return rv;
}

fb_err fbcp_upload_pack(fbcp_ctx *c, const fbcp_url *url, const char *label, const char *remote,
                        json_t *request, fbcp_pack_build_fn build, void *arg, json_t **panswer,
                        json_t **pcommit, fbcp_xfer *counts, char *detail, size_t detlen)
{
    fbcp_upload u;
    fbcp_hash_job hash; /* never started: the pack's digest is known before it is sent */
    char sha_hex[FB_SHA256_HEX_LEN + 1] = "";
    uint64_t size = 0;
    int fd = -1;
    fb_err rv;

    *panswer = NULL;
    *pcommit = NULL;
    fbcp_upload_init(&u, &hash, c, url, label, remote);
    u.pack_request = request;

    rv = fbcp_upload_create(&u, FBCP_RETRIES_DEFAULT, detail, detlen);
    if (rv != FB_OK)
        goto out;
    *panswer = json_incref(u.pack_answer);
    if (u.done)
        goto out; /* nothing to send: every file skipped (the answer says why) */
    rv = build(arg, u.pack_answer, &fd, &size, sha_hex, detail, detlen);
    if (rv != FB_OK)
        goto out;
    if (size != u.x.size || fd < 0) {
        rv = FB_ERR_PROTOCOL;
        snprintf(detail, detlen, "the pack holds %llu bytes, the server expects %llu",
                 (unsigned long long)size, (unsigned long long)u.x.size);
        goto out;
    }
    u.x.fd = fd;
    if (fstat(fd, &u.source_st) != 0) {
        rv = FB_ERR_LOCAL_IO;
        snprintf(detail, detlen, "%s", strerror(errno));
        goto out;
    }
    memcpy(u.sha_hex, sha_hex, sizeof(u.sha_hex));
    u.x.bytes_skipped = u.x.size - fbcp_ranges_total(&u.missing);
    u.x.resumed = u.x.bytes_skipped > 0 || u.resumed;
    if (u.x.resumed)
        fbcp_trace(c->opts, "%s: resuming, %llu bytes already on the server", label,
                   (unsigned long long)u.x.bytes_skipped);
    if (u.missing.n > 0) {
        rv = fbcp_move_setup(c, &u.x, &u.sw, detail, detlen);
        if (rv != FB_OK)
            goto out;
    }
    u.x.start_ns = u.x.last_progress_ns = u.x.rate_mark_ns = fb_time_mono_ns();
    rv = fbcp_upload_send_and_commit(&u, &hash, detail, detlen);
    if (rv == FB_OK && u.commit_answer == NULL && !u.done) {
        rv = FB_ERR_PROTOCOL;
        snprintf(detail, detlen, "the pack's commit answered no results");
    }
    *pcommit = json_incref(u.commit_answer);
out:
    if (counts != NULL)
        *counts = u.x;
    fbcp_move_cleanup(&u.x);
    free(u.x.session_id);
    free(u.x.data_url);
    free(u.state);
    json_decref(u.pack_answer);
    json_decref(u.commit_answer);
    fbcp_ranges_free(&u.missing);
    if (counts != NULL) {
        counts->session_id = counts->data_url = NULL;
        counts->udp = NULL;
        counts->sw = NULL;
        OPENSSL_cleanse(counts->key, sizeof(counts->key));
    }
    return rv;
}
