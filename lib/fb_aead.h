/* fb_aead: packet protection for the UDP fast path (docs/PROTOCOL.md section 4).
 *
 * Every datagram is sealed with AES-GCM (OpenSSL EVP). Keys are never the 256-bit session key
 * itself: HKDF-SHA-256 (OpenSSL EVP_KDF "HKDF") derives one key and one IV per direction
 * (client->server, server->client) and per phase:
 *
 *   handshake phase (HELLO, HELLO_ACK): AES-256-GCM, keys from the session key alone;
 *   data phase (DATA, FEEDBACK, CLOSE, PROBE): the negotiated cipher, keys from the session key
 *     salted with the HELLO's client nonce and the HELLO_ACK's server nonce, so each UDP
 *     association has fresh keys and packet numbers can restart at 0 without nonce reuse.
 *
 * The 96-bit GCM nonce is the direction's IV XOR (direction, packet number): unique per key as
 * long as a sender never reuses a packet number under one association (the protocol's rule).
 * FB_CIPHER_NONE means integrity only: the body travels in clear but is authenticated (GMAC
 * under the AES-256-GCM data key), so unauthenticated datagrams are still dropped.
 *
 * A context holds pre-keyed EVP contexts, so sealing a packet costs no key schedule. It is not
 * thread-safe: use one context per thread (they are cheap to create). Pure code: no I/O, no
 * clock; key material is wiped with OPENSSL_cleanse when freed. */
#ifndef FB_AEAD_H
#define FB_AEAD_H

#include <stddef.h>
#include <stdint.h>

#include "fb_err.h"

#define FB_AEAD_SESSION_KEY_LEN 32
#define FB_AEAD_TAG_LEN 16
#define FB_AEAD_NONCE_LEN 12
#define FB_AEAD_HELLO_NONCE_LEN 16 /* client and server nonces of the handshake */

/* Which end of the association this context is: it seals with its own direction's key and
 * opens with the peer's, so a reflected packet never authenticates. */
typedef enum fb_aead_role { FB_AEAD_CLIENT = 1, FB_AEAD_SERVER = 2 } fb_aead_role;

/* Direction of a packet; part of the nonce and of the key derivation label. */
typedef enum fb_aead_dir { FB_AEAD_C2S = 1, FB_AEAD_S2C = 2 } fb_aead_dir;

typedef enum fb_aead_phase { FB_AEAD_HANDSHAKE = 0, FB_AEAD_DATA = 1 } fb_aead_phase;

typedef struct fb_aead_ctx fb_aead_ctx;

/* Creates a context for ROLE with the handshake keys derived from SESSION_KEY (32 bytes).
 * Data keys are absent until fb_aead_set_data_keys. FB_ERR_NOMEM or FB_ERR_INTERNAL. */
fb_err fb_aead_new(fb_aead_ctx **pctx, const uint8_t session_key[FB_AEAD_SESSION_KEY_LEN], fb_aead_role role);

/* Derives the data-phase keys for CIPHER (one of FB_CIPHER_NONE, FB_CIPHER_AES128_GCM,
 * FB_CIPHER_AES256_GCM from fb_config.h) from the session key and the two handshake nonces.
 * May be called again (a new association replaces the keys). FB_ERR_CONFIG for an unknown
 * cipher. */
fb_err fb_aead_set_data_keys(fb_aead_ctx *ctx, unsigned cipher,
                             const uint8_t client_nonce[FB_AEAD_HELLO_NONCE_LEN],
                             const uint8_t server_nonce[FB_AEAD_HELLO_NONCE_LEN]);

/* Wipes every key and frees the context. NULL is allowed. */
void fb_aead_free(fb_aead_ctx *ctx);

fb_aead_role fb_aead_role_of(const fb_aead_ctx *ctx);
/* 1 once data keys are set. */
int fb_aead_has_data_keys(const fb_aead_ctx *ctx);
/* The data-phase cipher (fb_cipher bit), 0 before fb_aead_set_data_keys. */
unsigned fb_aead_cipher(const fb_aead_ctx *ctx);

/* Seals a packet this context sends. AAD (the packet header) is authenticated; PT (PTLEN bytes)
 * is encrypted into OUT (or, for FB_CIPHER_NONE, copied in clear and authenticated), followed
 * by the 16-byte tag: OUT needs PTLEN + FB_AEAD_TAG_LEN bytes. OUT may equal PT (in place); no
 * other overlap. FB_ERR_SESSION_STATE when the phase's keys are not set. */
fb_err fb_aead_seal(const fb_aead_ctx *ctx, fb_aead_phase phase, uint64_t pn, const uint8_t *aad,
                    size_t aadlen, uint8_t *out, const uint8_t *pt, size_t ptlen);

/* Opens a packet the peer sent: IN is CTLEN bytes of ciphertext followed by the tag (so
 * CTLEN >= FB_AEAD_TAG_LEN); the CTLEN - 16 plaintext bytes go to OUT, which may equal IN.
 * FB_ERR_AUTH if the tag does not verify (OUT then holds garbage and must not be used),
 * FB_ERR_SESSION_STATE when the phase's keys are not set. */
fb_err fb_aead_open(const fb_aead_ctx *ctx, fb_aead_phase phase, uint64_t pn, const uint8_t *aad,
                    size_t aadlen, uint8_t *out, const uint8_t *in, size_t ctlen);

/* HKDF-SHA-256 (RFC 5869, extract then expand) through EVP_KDF "HKDF". SALT may be NULL/0. */
fb_err fb_aead_hkdf(uint8_t *out, size_t outlen, const uint8_t *ikm, size_t ikmlen, const uint8_t *salt,
                    size_t saltlen, const uint8_t *info, size_t infolen);

/* Installs explicit keys and IVs for PHASE instead of derived ones: for known-answer tests and
 * interoperability vectors only (with packet number 0 the nonce is IV XOR (0,0,0,dir,0...)). */
fb_err fb_aead_set_raw_keys(fb_aead_ctx *ctx, fb_aead_phase phase, unsigned cipher, const uint8_t *key_c2s,
                            const uint8_t iv_c2s[FB_AEAD_NONCE_LEN], const uint8_t *key_s2c,
                            const uint8_t iv_s2c[FB_AEAD_NONCE_LEN]);

/* Copies the key (up to 32 bytes, *PLEN set) this context would use for PHASE and DIR.
 * For tests and diagnostics only: callers must wipe the copy. */
fb_err fb_aead_export_key(uint8_t out[32], size_t *plen, const fb_aead_ctx *ctx, fb_aead_phase phase,
                          fb_aead_dir dir);

#endif
