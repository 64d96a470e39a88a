/* assoc_world: the test world of check_assoc (one udpd-like server with one session in slot 0,
 * one client, two client addresses), and the steps the tests are written in: every datagram
 * goes through fb_assoc, the real codec and AEAD, and each answer is checked against
 * amplification. */
#ifndef ASSOC_WORLD_H
#define ASSOC_WORLD_H

#include "fb_assoc.h"

#define SID "0000000000112233445566778899aabb" /* slot 0 */
#define T0 1000000ull

typedef struct world {
    uint64_t rng;
    uint8_t key[32];
    uint8_t sid[FB_WIRE_SID_LEN];
    fb_assoc_server *srv;
    fb_assoc_server_params sp;
    fb_assoc_srv sess;
    int have_sess, lookups;
    fb_err admit;
    /* client */
    fb_aead_ctx *caead;
    fb_assoc_client c;
    fb_replay c_replay; /* the client's data-phase window (the caller's, in fbcp) */
    uint64_t c_pn;
    fb_assoc_addr a1, a2; /* two client addresses */
    /* the last datagrams */
    uint8_t hello[FB_WIRE_MAX_DATAGRAM];
    size_t hello_len;
    fb_assoc_out out;
} world;

/* The world's seeded generator (also for the tests' own random bytes), and one that fails. */
fb_err rnd(void *ctx, uint8_t *buf, size_t len);
fb_err rnd_fail(void *ctx, uint8_t *buf, size_t len);
/* IP:PORT as a normalised address (with garbage in the padding, which must not matter). */
void addr4(fb_assoc_addr *a, const char *ip, int port);
/* A client asking for CIPHER, fair policy, 50 MB/s (1 MB/s minimum), 1452-byte datagrams. */
void client_params(world *w, fb_assoc_client_params *p, unsigned cipher);
/* A server allowing ALLOWED_CIPHERS and every policy (no caps) and the client above. */
void world_init(world *w, unsigned allowed_ciphers);
void world_free(world *w);
/* The client's HELLO into w->hello. */
void client_hello(world *w, uint64_t now, int fresh);
/* A copy of BUF to the server from A; the answer (w->out) is never larger than BUF, and only
 * HELLOs are answered. */
fb_assoc_event server_in(world *w, const uint8_t *buf, size_t len, const fb_assoc_addr *a, uint64_t now);
/* A copy of BUF (at most 196 bytes) to the client. */
fb_assoc_client_event client_in(world *w, const uint8_t *buf, size_t len, uint64_t now);
/* A data-phase PROBE from the client under its data keys (what validates its address). */
size_t client_probe(world *w, uint8_t *buf, size_t cap);
/* HELLO, HELLO_ACK, then a data-phase packet that validates: the association runs. */
void associate(world *w, const fb_assoc_addr *from, uint64_t now);
/* The server sends a CLOSE on its running association; the client must open it. */
void server_to_client_works(world *w);

#endif
