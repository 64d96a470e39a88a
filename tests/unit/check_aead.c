/* Unit tests for fb_aead: AES-GCM known answers (the GCM specification's test cases 4 and 16,
 * as in NIST's validation vectors), the RFC 5869 HKDF vector, the per-direction and per-phase
 * key schedule, and the failure modes (tampering, wrong key, reflection, missing keys). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "fb_aead.h"
#include "fb_config.h"
#include "fb_util.h"

static void unhex(uint8_t *out, size_t len, const char *hex)
{
    ck_assert_uint_eq(strlen(hex), 2 * len);
    ck_assert_int_eq(fb_hex_decode(out, len, hex), FB_OK);
}

static const char *KAT_PT = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
                            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
static const char *KAT_AAD = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
static const char *KAT_IV = "cafebabefacedbaddecaf888";

/* Runs one known-answer vector through a client context (seal) and a server context (open)
 * whose raw keys are the vector's key, with the IV pre-adjusted so that packet number 0 in
 * the client-to-server direction yields exactly the vector's nonce. */
static void run_kat(unsigned cipher, const char *key_hex, size_t keylen, const char *ct_hex,
                    const char *tag_hex)
{
    uint8_t key[32], iv[12], pt[60], aad[20], ct[60], tag[16], out[60 + 16], back[60];
    uint8_t session[32] = {0};
    fb_aead_ctx *client, *server;

    unhex(key, keylen, key_hex);
    unhex(iv, 12, KAT_IV);
    unhex(pt, 60, KAT_PT);
    unhex(aad, 20, KAT_AAD);
    unhex(ct, 60, ct_hex);
    unhex(tag, 16, tag_hex);
    iv[3] ^= (uint8_t)FB_AEAD_C2S; /* the nonce XORs the direction into byte 3 */
    ck_assert_int_eq(fb_aead_new(&client, session, FB_AEAD_CLIENT), FB_OK);
    ck_assert_int_eq(fb_aead_new(&server, session, FB_AEAD_SERVER), FB_OK);
    ck_assert_int_eq(fb_aead_set_raw_keys(client, FB_AEAD_DATA, cipher, key, iv, key, iv), FB_OK);
    ck_assert_int_eq(fb_aead_set_raw_keys(server, FB_AEAD_DATA, cipher, key, iv, key, iv), FB_OK);

    ck_assert_int_eq(fb_aead_seal(client, FB_AEAD_DATA, 0, aad, sizeof(aad), out, pt, sizeof(pt)), FB_OK);
    ck_assert_mem_eq(out, ct, sizeof(ct));
    ck_assert_mem_eq(out + 60, tag, sizeof(tag));
    ck_assert_int_eq(fb_aead_open(server, FB_AEAD_DATA, 0, aad, sizeof(aad), back, out, sizeof(out)), FB_OK);
    ck_assert_mem_eq(back, pt, sizeof(pt));
    fb_aead_free(client);
    fb_aead_free(server);
}

START_TEST(test_aes128_gcm_known_answer)
{
    run_kat(FB_CIPHER_AES128_GCM, "feffe9928665731c6d6a8f9467308308", 16,
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
            "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
            "5bc94fbc3221a5db94fae95ae7121a47");
}
END_TEST

START_TEST(test_aes256_gcm_known_answer)
{
    run_kat(FB_CIPHER_AES256_GCM, "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", 32,
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            "76fc6ece0f4e1768cddf8853bb2d551b");
}
END_TEST

START_TEST(test_hkdf_rfc5869_case_1)
{
    uint8_t ikm[22], salt[13], info[10], okm[42], want[42];

    memset(ikm, 0x0b, sizeof(ikm));
    unhex(salt, 13, "000102030405060708090a0b0c");
    unhex(info, 10, "f0f1f2f3f4f5f6f7f8f9");
    unhex(want, 42, "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
    ck_assert_int_eq(fb_aead_hkdf(okm, sizeof(okm), ikm, sizeof(ikm), salt, sizeof(salt), info, sizeof(info)),
                     FB_OK);
    ck_assert_mem_eq(okm, want, sizeof(want));
}
END_TEST

/* ---- the key schedule ------------------------------------------------------------------ */

static const uint8_t SESSION_KEY[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                                        17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static const uint8_t CNONCE[16] = {0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8,
                                   0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0};
static const uint8_t SNONCE[16] = {0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,
                                   0x59, 0x5a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f, 0x60};

static void pair(fb_aead_ctx **client, fb_aead_ctx **server, unsigned cipher)
{
    ck_assert_int_eq(fb_aead_new(client, SESSION_KEY, FB_AEAD_CLIENT), FB_OK);
    ck_assert_int_eq(fb_aead_new(server, SESSION_KEY, FB_AEAD_SERVER), FB_OK);
    if (cipher != 0) {
        ck_assert_int_eq(fb_aead_set_data_keys(*client, cipher, CNONCE, SNONCE), FB_OK);
        ck_assert_int_eq(fb_aead_set_data_keys(*server, cipher, CNONCE, SNONCE), FB_OK);
    }
}

START_TEST(test_direction_and_phase_keys_all_differ)
{
    fb_aead_ctx *c, *s;
    uint8_t k[4][32];
    size_t len[4];

    pair(&c, &s, FB_CIPHER_AES256_GCM);
    ck_assert_int_eq(fb_aead_export_key(k[0], &len[0], c, FB_AEAD_HANDSHAKE, FB_AEAD_C2S), FB_OK);
    ck_assert_int_eq(fb_aead_export_key(k[1], &len[1], c, FB_AEAD_HANDSHAKE, FB_AEAD_S2C), FB_OK);
    ck_assert_int_eq(fb_aead_export_key(k[2], &len[2], c, FB_AEAD_DATA, FB_AEAD_C2S), FB_OK);
    ck_assert_int_eq(fb_aead_export_key(k[3], &len[3], c, FB_AEAD_DATA, FB_AEAD_S2C), FB_OK);
    for (int i = 0; i < 4; i++) {
        ck_assert_uint_eq(len[i], 32);
        ck_assert_msg(memcmp(k[i], SESSION_KEY, 32) != 0, "key %d is the session key", i);
        for (int j = i + 1; j < 4; j++)
            ck_assert_msg(memcmp(k[i], k[j], 32) != 0, "keys %d and %d are equal", i, j);
    }
    /* Both ends derive the same keys. */
    for (int i = 0; i < 4; i++) {
        uint8_t other[32];
        size_t olen;

        ck_assert_int_eq(fb_aead_export_key(other, &olen, s, i < 2 ? FB_AEAD_HANDSHAKE : FB_AEAD_DATA,
                                            i % 2 == 0 ? FB_AEAD_C2S : FB_AEAD_S2C),
                         FB_OK);
        ck_assert_mem_eq(other, k[i], 32);
    }
    fb_aead_free(c);
    fb_aead_free(s);
}
END_TEST

START_TEST(test_data_keys_depend_on_cipher_and_nonces)
{
    fb_aead_ctx *a, *b;
    uint8_t ka[32], kb[32], n2[16];
    size_t la, lb;

    pair(&a, &b, FB_CIPHER_AES256_GCM);
    ck_assert_int_eq(fb_aead_set_data_keys(b, FB_CIPHER_AES128_GCM, CNONCE, SNONCE), FB_OK);
    ck_assert_int_eq(fb_aead_export_key(ka, &la, a, FB_AEAD_DATA, FB_AEAD_C2S), FB_OK);
    ck_assert_int_eq(fb_aead_export_key(kb, &lb, b, FB_AEAD_DATA, FB_AEAD_C2S), FB_OK);
    ck_assert_uint_eq(la, 32);
    ck_assert_uint_eq(lb, 16);
    ck_assert_int_ne(memcmp(ka, kb, 16), 0);
    ck_assert_uint_eq(fb_aead_cipher(b), FB_CIPHER_AES128_GCM);

    memcpy(n2, SNONCE, 16);
    n2[15] ^= 1;
    ck_assert_int_eq(fb_aead_set_data_keys(b, FB_CIPHER_AES256_GCM, CNONCE, n2), FB_OK);
    ck_assert_int_eq(fb_aead_export_key(kb, &lb, b, FB_AEAD_DATA, FB_AEAD_C2S), FB_OK);
    ck_assert_int_ne(memcmp(ka, kb, 32), 0);
    ck_assert_int_eq(fb_aead_set_data_keys(b, 0x40, CNONCE, SNONCE), FB_ERR_CONFIG);
    ck_assert_uint_eq(fb_aead_cipher(b), FB_CIPHER_AES256_GCM); /* the failed call changed nothing */
    fb_aead_free(a);
    fb_aead_free(b);
}
END_TEST

START_TEST(test_round_trip_each_way_and_reflection_fails)
{
    static const unsigned ciphers[] = {FB_CIPHER_AES128_GCM, FB_CIPHER_AES256_GCM, FB_CIPHER_NONE};

    for (size_t ci = 0; ci < sizeof(ciphers) / sizeof(ciphers[0]); ci++) {
        fb_aead_ctx *c, *s;
        uint8_t hdr[28], msg[100], sealed[116], back[100];

        memset(hdr, 0xab, sizeof(hdr));
        for (size_t i = 0; i < sizeof(msg); i++)
            msg[i] = (uint8_t)i;
        pair(&c, &s, ciphers[ci]);
        for (int phase = FB_AEAD_HANDSHAKE; phase <= FB_AEAD_DATA; phase++) {
            /* client -> server */
            ck_assert_int_eq(fb_aead_seal(c, phase, 7, hdr, sizeof(hdr), sealed, msg, sizeof(msg)), FB_OK);
            ck_assert_int_eq(fb_aead_open(s, phase, 7, hdr, sizeof(hdr), back, sealed, sizeof(sealed)),
                             FB_OK);
            ck_assert_mem_eq(back, msg, sizeof(msg));
            /* A packet reflected back at its sender never authenticates. */
            ck_assert_int_eq(fb_aead_open(c, phase, 7, hdr, sizeof(hdr), back, sealed, sizeof(sealed)),
                             FB_ERR_AUTH);
            /* The packet number is bound: the same bytes under another number fail. */
            ck_assert_int_eq(fb_aead_open(s, phase, 8, hdr, sizeof(hdr), back, sealed, sizeof(sealed)),
                             FB_ERR_AUTH);
            /* server -> client */
            ck_assert_int_eq(fb_aead_seal(s, phase, 7, hdr, sizeof(hdr), sealed, msg, sizeof(msg)), FB_OK);
            ck_assert_int_eq(fb_aead_open(c, phase, 7, hdr, sizeof(hdr), back, sealed, sizeof(sealed)),
                             FB_OK);
            ck_assert_mem_eq(back, msg, sizeof(msg));
            ck_assert_int_eq(fb_aead_open(s, phase, 7, hdr, sizeof(hdr), back, sealed, sizeof(sealed)),
                             FB_ERR_AUTH);
        }
        fb_aead_free(c);
        fb_aead_free(s);
    }
}
END_TEST

START_TEST(test_aes_gcm_hides_the_body_and_none_does_not)
{
    fb_aead_ctx *c, *s;
    uint8_t msg[64], sealed[80];

    memset(msg, 'A', sizeof(msg));
    pair(&c, &s, FB_CIPHER_AES128_GCM);
    ck_assert_int_eq(fb_aead_seal(c, FB_AEAD_DATA, 1, NULL, 0, sealed, msg, sizeof(msg)), FB_OK);
    ck_assert_int_ne(memcmp(sealed, msg, sizeof(msg)), 0);
    ck_assert_int_eq(fb_aead_set_data_keys(c, FB_CIPHER_NONE, CNONCE, SNONCE), FB_OK);
    ck_assert_int_eq(fb_aead_set_data_keys(s, FB_CIPHER_NONE, CNONCE, SNONCE), FB_OK);
    ck_assert_int_eq(fb_aead_seal(c, FB_AEAD_DATA, 1, NULL, 0, sealed, msg, sizeof(msg)), FB_OK);
    ck_assert_mem_eq(sealed, msg, sizeof(msg)); /* integrity only: the body is in clear */
    sealed[10] ^= 0x20;                         /* ... but it is authenticated */
    ck_assert_int_eq(fb_aead_open(s, FB_AEAD_DATA, 1, NULL, 0, msg, sealed, sizeof(sealed)), FB_ERR_AUTH);
    fb_aead_free(c);
    fb_aead_free(s);
}
END_TEST

START_TEST(test_every_flipped_bit_fails)
{
    fb_aead_ctx *c, *s;
    uint8_t hdr[28], msg[40], sealed[56], work[56], hwork[28], back[40];

    memset(hdr, 0x11, sizeof(hdr));
    memset(msg, 0x22, sizeof(msg));
    pair(&c, &s, FB_CIPHER_AES256_GCM);
    ck_assert_int_eq(fb_aead_seal(c, FB_AEAD_DATA, 99, hdr, sizeof(hdr), sealed, msg, sizeof(msg)), FB_OK);
    for (size_t bit = 0; bit < 8 * sizeof(sealed); bit++) {
        memcpy(work, sealed, sizeof(work));
        work[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        ck_assert_int_eq(fb_aead_open(s, FB_AEAD_DATA, 99, hdr, sizeof(hdr), back, work, sizeof(work)),
                         FB_ERR_AUTH);
    }
    for (size_t bit = 0; bit < 8 * sizeof(hdr); bit++) {
        memcpy(hwork, hdr, sizeof(hwork));
        hwork[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        ck_assert_int_eq(
            fb_aead_open(s, FB_AEAD_DATA, 99, hwork, sizeof(hwork), back, sealed, sizeof(sealed)),
            FB_ERR_AUTH);
    }
    /* And the untouched packet still opens (the context recovers from failures). */
    ck_assert_int_eq(fb_aead_open(s, FB_AEAD_DATA, 99, hdr, sizeof(hdr), back, sealed, sizeof(sealed)),
                     FB_OK);
    fb_aead_free(c);
    fb_aead_free(s);
}
END_TEST

START_TEST(test_wrong_session_key_fails)
{
    fb_aead_ctx *c, *other;
    uint8_t wrong[32], msg[16] = {0}, sealed[32], back[16];

    memcpy(wrong, SESSION_KEY, 32);
    wrong[31] ^= 0x80;
    ck_assert_int_eq(fb_aead_new(&c, SESSION_KEY, FB_AEAD_CLIENT), FB_OK);
    ck_assert_int_eq(fb_aead_new(&other, wrong, FB_AEAD_SERVER), FB_OK);
    ck_assert_int_eq(fb_aead_seal(c, FB_AEAD_HANDSHAKE, 1, NULL, 0, sealed, msg, sizeof(msg)), FB_OK);
    ck_assert_int_eq(fb_aead_open(other, FB_AEAD_HANDSHAKE, 1, NULL, 0, back, sealed, sizeof(sealed)),
                     FB_ERR_AUTH);
    fb_aead_free(c);
    fb_aead_free(other);
}
END_TEST

START_TEST(test_data_phase_needs_data_keys)
{
    fb_aead_ctx *c, *s;
    uint8_t msg[16] = {0}, sealed[32], back[16];

    pair(&c, &s, 0);
    ck_assert_int_eq(fb_aead_has_data_keys(c), 0);
    ck_assert_uint_eq(fb_aead_cipher(c), 0);
    ck_assert_int_eq(fb_aead_seal(c, FB_AEAD_DATA, 1, NULL, 0, sealed, msg, sizeof(msg)),
                     FB_ERR_SESSION_STATE);
    ck_assert_int_eq(fb_aead_open(s, FB_AEAD_DATA, 1, NULL, 0, back, sealed, sizeof(sealed)),
                     FB_ERR_SESSION_STATE);
    /* Too short to hold a tag. */
    ck_assert_int_eq(fb_aead_open(s, FB_AEAD_HANDSHAKE, 1, NULL, 0, back, sealed, 15), FB_ERR_AUTH);
    fb_aead_free(c);
    fb_aead_free(s);
}
END_TEST

START_TEST(test_new_association_invalidates_old_packets)
{
    fb_aead_ctx *c, *s;
    uint8_t msg[16] = {7}, sealed[32], back[16], n2[16];

    pair(&c, &s, FB_CIPHER_AES128_GCM);
    ck_assert_int_eq(fb_aead_seal(c, FB_AEAD_DATA, 0, NULL, 0, sealed, msg, sizeof(msg)), FB_OK);
    memcpy(n2, CNONCE, 16);
    n2[0] ^= 0xff;
    ck_assert_int_eq(fb_aead_set_data_keys(s, FB_CIPHER_AES128_GCM, n2, SNONCE), FB_OK);
    /* Packet number 0 again, but under new keys: the old packet (a replay) does not open. */
    ck_assert_int_eq(fb_aead_open(s, FB_AEAD_DATA, 0, NULL, 0, back, sealed, sizeof(sealed)), FB_ERR_AUTH);
    fb_aead_free(c);
    fb_aead_free(s);
}
END_TEST

START_TEST(test_in_place_seal_and_open)
{
    fb_aead_ctx *c, *s;
    uint8_t buf[1400 + 16], orig[1400];

    for (size_t i = 0; i < sizeof(orig); i++)
        orig[i] = (uint8_t)(i * 7);
    memcpy(buf, orig, sizeof(orig));
    pair(&c, &s, FB_CIPHER_AES256_GCM);
    ck_assert_int_eq(fb_aead_seal(c, FB_AEAD_DATA, 12345, NULL, 0, buf, buf, sizeof(orig)), FB_OK);
    ck_assert_int_ne(memcmp(buf, orig, sizeof(orig)), 0);
    ck_assert_int_eq(fb_aead_open(s, FB_AEAD_DATA, 12345, NULL, 0, buf, buf, sizeof(buf)), FB_OK);
    ck_assert_mem_eq(buf, orig, sizeof(orig));
    fb_aead_free(c);
    fb_aead_free(s);
}
END_TEST

static Suite *aead_suite(void)
{
    Suite *s = suite_create("fb_aead");
    TCase *kat = tcase_create("known answers");
    TCase *keys = tcase_create("key schedule");

    tcase_add_test(kat, test_aes128_gcm_known_answer);
    tcase_add_test(kat, test_aes256_gcm_known_answer);
    tcase_add_test(kat, test_hkdf_rfc5869_case_1);
    suite_add_tcase(s, kat);
    tcase_add_test(keys, test_direction_and_phase_keys_all_differ);
    tcase_add_test(keys, test_data_keys_depend_on_cipher_and_nonces);
    tcase_add_test(keys, test_round_trip_each_way_and_reflection_fails);
    tcase_add_test(keys, test_aes_gcm_hides_the_body_and_none_does_not);
    tcase_add_test(keys, test_every_flipped_bit_fails);
    tcase_add_test(keys, test_wrong_session_key_fails);
    tcase_add_test(keys, test_data_phase_needs_data_keys);
    tcase_add_test(keys, test_new_association_invalidates_old_packets);
    tcase_add_test(keys, test_in_place_seal_and_open);
    suite_add_tcase(s, keys);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(aead_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
