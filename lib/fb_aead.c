/* fb_aead: AES-GCM packet protection and HKDF key schedule for the UDP fast path.
 * See fb_aead.h for the key schedule and docs/PROTOCOL.md section 4 for the exact labels. */
#include "fb_aead.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include "fb_config.h"

#define AEAD_MAX_KEY 32

typedef struct aead_keyset {
    int set;
    unsigned cipher; /* fb_cipher bit */
    size_t keylen;
    uint8_t key[2][AEAD_MAX_KEY]; /* [0] client->server, [1] server->client */
    uint8_t iv[2][FB_AEAD_NONCE_LEN];
    EVP_CIPHER_CTX *evp[2]; /* pre-keyed: encrypt for our direction, decrypt for the peer's */
} aead_keyset;

struct fb_aead_ctx {
    fb_aead_role role;
    uint8_t session_key[FB_AEAD_SESSION_KEY_LEN];
    aead_keyset ks[2]; /* [FB_AEAD_HANDSHAKE], [FB_AEAD_DATA] */
};

static int dir_index(fb_aead_dir dir)
{
    return dir == FB_AEAD_C2S ? 0 : 1;
}

static fb_aead_dir own_dir(const fb_aead_ctx *ctx)
{
    return ctx->role == FB_AEAD_CLIENT ? FB_AEAD_C2S : FB_AEAD_S2C;
}

static fb_aead_dir peer_dir(const fb_aead_ctx *ctx)
{
    return ctx->role == FB_AEAD_CLIENT ? FB_AEAD_S2C : FB_AEAD_C2S;
}

fb_err fb_aead_hkdf(uint8_t *out, size_t outlen, const uint8_t *ikm, size_t ikmlen, const uint8_t *salt,
                    size_t saltlen, const uint8_t *info, size_t infolen)
{
    EVP_KDF *kdf = NULL;
    EVP_KDF_CTX *kctx = NULL;
    OSSL_PARAM params[5], *p = params;
    fb_err rc = FB_ERR_INTERNAL;

    if (out == NULL || ikm == NULL || outlen == 0 || (info == NULL && infolen > 0) ||
        (salt == NULL && saltlen > 0))
        return FB_ERR_INTERNAL;
    kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    if (kdf == NULL)
        goto done;
    kctx = EVP_KDF_CTX_new(kdf);
    if (kctx == NULL)
        goto done;
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, ikmlen);
    if (saltlen > 0)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen);
    if (infolen > 0)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen);
    *p = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(kctx, out, outlen, params) != 1)
        goto done;
    rc = FB_OK;
done:
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    return rc;
}

static const char *cipher_label(unsigned cipher)
{
    switch (cipher) {
    case FB_CIPHER_NONE:
        return "none";
    case FB_CIPHER_AES128_GCM:
        return "aes128gcm";
    case FB_CIPHER_AES256_GCM:
        return "aes256gcm";
    default:
        return NULL;
    }
}

/* The labels are part of the protocol (PROTOCOL.md 4.2): "fb1 <phase> <dir> <cipher> key|iv". */
static fb_err derive_one(uint8_t *out, size_t outlen, const uint8_t *session_key, const uint8_t *salt,
                         size_t saltlen, const char *phase, fb_aead_dir dir, unsigned cipher,
                         const char *what)
{
    char info[64];
    int n = snprintf(info, sizeof(info), "fb1 %s %s %s %s", phase, dir == FB_AEAD_C2S ? "c2s" : "s2c",
                     cipher_label(cipher), what);

    if (n <= 0 || (size_t)n >= sizeof(info))
        return FB_ERR_INTERNAL;
    return fb_aead_hkdf(out, outlen, session_key, FB_AEAD_SESSION_KEY_LEN, salt, saltlen,
                        (const uint8_t *)info, (size_t)n);
}

static void keyset_clear(aead_keyset *ks)
{
    for (int i = 0; i < 2; i++) {
        EVP_CIPHER_CTX_free(ks->evp[i]); /* EVP wipes its key schedule on free */
        ks->evp[i] = NULL;
    }
    OPENSSL_cleanse(ks, sizeof(*ks));
}

/* GMAC for FB_CIPHER_NONE still needs a block cipher: it runs AES-256-GCM over AAD only. */
static const EVP_CIPHER *evp_cipher_for(unsigned cipher)
{
    return cipher == FB_CIPHER_AES128_GCM ? EVP_aes_128_gcm() : EVP_aes_256_gcm();
}

/* Keys and IVs in KS must already be filled; creates the pre-keyed EVP contexts. */
static fb_err keyset_arm(aead_keyset *ks, const fb_aead_ctx *ctx)
{
    for (int i = 0; i < 2; i++) {
        int enc = (i == 0 ? FB_AEAD_C2S : FB_AEAD_S2C) == own_dir(ctx);

        ks->evp[i] = EVP_CIPHER_CTX_new();
        if (ks->evp[i] == NULL)
            return FB_ERR_NOMEM;
        if (EVP_CipherInit_ex(ks->evp[i], evp_cipher_for(ks->cipher), NULL, ks->key[i], NULL, enc) != 1)
            return FB_ERR_INTERNAL;
    }
    ks->set = 1;
    return FB_OK;
}

static fb_err keyset_build(aead_keyset *ks, const fb_aead_ctx *ctx, const char *phase, unsigned cipher,
                           const uint8_t *salt, size_t saltlen)
{
    fb_err rc = FB_OK;

    memset(ks, 0, sizeof(*ks));
    ks->cipher = cipher;
    ks->keylen = cipher == FB_CIPHER_AES128_GCM ? 16 : 32;
    for (int i = 0; i < 2 && rc == FB_OK; i++) {
        fb_aead_dir dir = i == 0 ? FB_AEAD_C2S : FB_AEAD_S2C;

        rc = derive_one(ks->key[i], ks->keylen, ctx->session_key, salt, saltlen, phase, dir, cipher, "key");
        if (rc == FB_OK)
            rc = derive_one(ks->iv[i], FB_AEAD_NONCE_LEN, ctx->session_key, salt, saltlen, phase, dir, cipher,
                            "iv");
    }
    if (rc == FB_OK)
        rc = keyset_arm(ks, ctx);
    if (rc != FB_OK)
        keyset_clear(ks);
    return rc;
}

fb_err fb_aead_new(fb_aead_ctx **pctx, const uint8_t session_key[FB_AEAD_SESSION_KEY_LEN], fb_aead_role role)
{
    fb_aead_ctx *ctx;
    fb_err rc;

    *pctx = NULL;
    if (session_key == NULL || (role != FB_AEAD_CLIENT && role != FB_AEAD_SERVER))
        return FB_ERR_INTERNAL;
    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return FB_ERR_NOMEM;
    ctx->role = role;
    memcpy(ctx->session_key, session_key, FB_AEAD_SESSION_KEY_LEN);
    rc = keyset_build(&ctx->ks[FB_AEAD_HANDSHAKE], ctx, "hs", FB_CIPHER_AES256_GCM, NULL, 0);
    if (rc != FB_OK) {
        fb_aead_free(ctx);
        return rc;
    }
    *pctx = ctx;
    return FB_OK;
}

fb_err fb_aead_set_data_keys(fb_aead_ctx *ctx, unsigned cipher,
                             const uint8_t client_nonce[FB_AEAD_HELLO_NONCE_LEN],
                             const uint8_t server_nonce[FB_AEAD_HELLO_NONCE_LEN])
{
    uint8_t salt[2 * FB_AEAD_HELLO_NONCE_LEN];
    aead_keyset fresh;
    fb_err rc;

    if (ctx == NULL || client_nonce == NULL || server_nonce == NULL)
        return FB_ERR_INTERNAL;
    if (cipher_label(cipher) == NULL)
        return FB_ERR_CONFIG;
    memcpy(salt, client_nonce, FB_AEAD_HELLO_NONCE_LEN);
    memcpy(salt + FB_AEAD_HELLO_NONCE_LEN, server_nonce, FB_AEAD_HELLO_NONCE_LEN);
    /* Build aside, then swap, so a failure leaves the old association usable. */
    rc = keyset_build(&fresh, ctx, "data", cipher, salt, sizeof(salt));
    if (rc == FB_OK) {
        keyset_clear(&ctx->ks[FB_AEAD_DATA]);
        ctx->ks[FB_AEAD_DATA] = fresh;
        OPENSSL_cleanse(&fresh, sizeof(fresh));
    }
    OPENSSL_cleanse(salt, sizeof(salt));
    return rc;
}

void fb_aead_free(fb_aead_ctx *ctx)
{
    if (ctx == NULL)
        return;
    keyset_clear(&ctx->ks[0]);
    keyset_clear(&ctx->ks[1]);
    OPENSSL_cleanse(ctx, sizeof(*ctx));
    free(ctx);
}

fb_aead_role fb_aead_role_of(const fb_aead_ctx *ctx)
{
    return ctx->role;
}

int fb_aead_has_data_keys(const fb_aead_ctx *ctx)
{
    return ctx != NULL && ctx->ks[FB_AEAD_DATA].set;
}

unsigned fb_aead_cipher(const fb_aead_ctx *ctx)
{
    return fb_aead_has_data_keys(ctx) ? ctx->ks[FB_AEAD_DATA].cipher : 0;
}

static void make_nonce(uint8_t nonce[FB_AEAD_NONCE_LEN], const aead_keyset *ks, fb_aead_dir dir, uint64_t pn)
{
    const uint8_t *iv = ks->iv[dir_index(dir)];

    nonce[0] = iv[0];
    nonce[1] = iv[1];
    nonce[2] = iv[2];
    nonce[3] = (uint8_t)(iv[3] ^ (uint8_t)dir);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (uint8_t)(iv[4 + i] ^ (uint8_t)(pn >> (56 - 8 * i)));
}

static const aead_keyset *keyset_for(const fb_aead_ctx *ctx, fb_aead_phase phase)
{
    if (ctx == NULL || (phase != FB_AEAD_HANDSHAKE && phase != FB_AEAD_DATA) || !ctx->ks[phase].set)
        return NULL;
    return &ctx->ks[phase];
}

fb_err fb_aead_seal(const fb_aead_ctx *ctx, fb_aead_phase phase, uint64_t pn, const uint8_t *aad,
                    size_t aadlen, uint8_t *out, const uint8_t *pt, size_t ptlen)
{
    const aead_keyset *ks = keyset_for(ctx, phase);
    uint8_t nonce[FB_AEAD_NONCE_LEN];
    EVP_CIPHER_CTX *evp;
    int outl = 0;

    if (ks == NULL)
        return FB_ERR_SESSION_STATE;
    if (aadlen > INT_MAX || ptlen > INT_MAX - FB_AEAD_TAG_LEN || (ptlen > 0 && (pt == NULL || out == NULL)))
        return FB_ERR_INTERNAL;
    evp = ks->evp[dir_index(own_dir(ctx))];
    make_nonce(nonce, ks, own_dir(ctx), pn);
    if (EVP_EncryptInit_ex(evp, NULL, NULL, NULL, nonce) != 1)
        return FB_ERR_INTERNAL;
    if (aadlen > 0 && EVP_EncryptUpdate(evp, NULL, &outl, aad, (int)aadlen) != 1)
        return FB_ERR_INTERNAL;
    if (ks->cipher == FB_CIPHER_NONE) {
        if (ptlen > 0 && EVP_EncryptUpdate(evp, NULL, &outl, pt, (int)ptlen) != 1)
            return FB_ERR_INTERNAL;
        if (ptlen > 0 && out != pt)
            memmove(out, pt, ptlen);
    } else if (ptlen > 0) {
        if (EVP_EncryptUpdate(evp, out, &outl, pt, (int)ptlen) != 1 || (size_t)outl != ptlen)
            return FB_ERR_INTERNAL;
    }
    if (EVP_EncryptFinal_ex(evp, out + ptlen, &outl) != 1)
        return FB_ERR_INTERNAL;
    if (EVP_CIPHER_CTX_ctrl(evp, EVP_CTRL_GCM_GET_TAG, FB_AEAD_TAG_LEN, out + ptlen) != 1)
        return FB_ERR_INTERNAL;
    return FB_OK;
}

fb_err fb_aead_open(const fb_aead_ctx *ctx, fb_aead_phase phase, uint64_t pn, const uint8_t *aad,
                    size_t aadlen, uint8_t *out, const uint8_t *in, size_t ctlen)
{
    const aead_keyset *ks = keyset_for(ctx, phase);
    uint8_t nonce[FB_AEAD_NONCE_LEN], tag[FB_AEAD_TAG_LEN];
    size_t ptlen;
    EVP_CIPHER_CTX *evp;
    int outl = 0;

    if (ks == NULL)
        return FB_ERR_SESSION_STATE;
    if (in == NULL || ctlen < FB_AEAD_TAG_LEN || ctlen > INT_MAX || aadlen > INT_MAX)
        return FB_ERR_AUTH;
    ptlen = ctlen - FB_AEAD_TAG_LEN;
    if (ptlen > 0 && out == NULL)
        return FB_ERR_INTERNAL;
    /* Copy the tag first: with OUT == IN the tag bytes stay put, but keep it simple and safe. */
    memcpy(tag, in + ptlen, FB_AEAD_TAG_LEN);
    evp = ks->evp[dir_index(peer_dir(ctx))];
    make_nonce(nonce, ks, peer_dir(ctx), pn);
    if (EVP_DecryptInit_ex(evp, NULL, NULL, NULL, nonce) != 1)
        return FB_ERR_INTERNAL;
    if (aadlen > 0 && EVP_DecryptUpdate(evp, NULL, &outl, aad, (int)aadlen) != 1)
        return FB_ERR_INTERNAL;
    if (ks->cipher == FB_CIPHER_NONE) {
        if (ptlen > 0 && EVP_DecryptUpdate(evp, NULL, &outl, in, (int)ptlen) != 1)
            return FB_ERR_INTERNAL;
        if (ptlen > 0 && out != in)
            memmove(out, in, ptlen);
    } else if (ptlen > 0) {
        if (EVP_DecryptUpdate(evp, out, &outl, in, (int)ptlen) != 1 || (size_t)outl != ptlen)
            return FB_ERR_INTERNAL;
    }
    if (EVP_CIPHER_CTX_ctrl(evp, EVP_CTRL_GCM_SET_TAG, FB_AEAD_TAG_LEN, tag) != 1)
        return FB_ERR_INTERNAL;
    if (EVP_DecryptFinal_ex(evp, out != NULL ? out + ptlen : tag, &outl) != 1)
        return FB_ERR_AUTH;
    return FB_OK;
}

fb_err fb_aead_set_raw_keys(fb_aead_ctx *ctx, fb_aead_phase phase, unsigned cipher, const uint8_t *key_c2s,
                            const uint8_t iv_c2s[FB_AEAD_NONCE_LEN], const uint8_t *key_s2c,
                            const uint8_t iv_s2c[FB_AEAD_NONCE_LEN])
{
    aead_keyset fresh;
    fb_err rc;

    if (ctx == NULL || (phase != FB_AEAD_HANDSHAKE && phase != FB_AEAD_DATA) || key_c2s == NULL ||
        key_s2c == NULL || iv_c2s == NULL || iv_s2c == NULL)
        return FB_ERR_INTERNAL;
    if (cipher_label(cipher) == NULL)
        return FB_ERR_CONFIG;
    memset(&fresh, 0, sizeof(fresh));
    fresh.cipher = cipher;
    fresh.keylen = cipher == FB_CIPHER_AES128_GCM ? 16 : 32;
    memcpy(fresh.key[0], key_c2s, fresh.keylen);
    memcpy(fresh.key[1], key_s2c, fresh.keylen);
    memcpy(fresh.iv[0], iv_c2s, FB_AEAD_NONCE_LEN);
    memcpy(fresh.iv[1], iv_s2c, FB_AEAD_NONCE_LEN);
    rc = keyset_arm(&fresh, ctx);
    if (rc != FB_OK) {
        keyset_clear(&fresh);
        return rc;
    }
    keyset_clear(&ctx->ks[phase]);
    ctx->ks[phase] = fresh;
    OPENSSL_cleanse(&fresh, sizeof(fresh));
    return FB_OK;
}

fb_err fb_aead_export_key(uint8_t out[32], size_t *plen, const fb_aead_ctx *ctx, fb_aead_phase phase,
                          fb_aead_dir dir)
{
    const aead_keyset *ks = keyset_for(ctx, phase);

    *plen = 0;
    if (ks == NULL)
        return FB_ERR_SESSION_STATE;
    if (dir != FB_AEAD_C2S && dir != FB_AEAD_S2C)
        return FB_ERR_INTERNAL;
    memcpy(out, ks->key[dir_index(dir)], ks->keylen);
    *plen = ks->keylen;
    return FB_OK;
}
