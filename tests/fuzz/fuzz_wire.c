/* libFuzzer target for the UDP datagram decoder (fb_wire). Build with `make fuzz` (clang,
 * -fsanitize=fuzzer,address,undefined), run e.g. `tests/fuzz/fuzz_wire -max_total_time=300`.
 *
 * The first input byte picks a mode:
 *   even: the rest is a datagram as it would arrive from the network (exercises the cheap
 *         header checks and the AEAD; random bytes essentially never authenticate);
 *   odd:  the rest, after a type byte and a flags byte, is a plaintext BODY that is sealed
 *         under the right key before decoding, i.e. what a peer holding the session key could
 *         send: this reaches the field validation behind the tag.
 * Whenever a decode succeeds, re-encoding the decoded packet must give back the exact same
 * datagram (the encoding is canonical and sealing is deterministic). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fb_aead.h"
#include "fb_config.h"
#include "fb_wire.h"

static fb_aead_ctx *client, *server;
static fb_replay window;
static uint8_t dgram[FB_WIRE_MAX_DATAGRAM + 16], work[FB_WIRE_MAX_DATAGRAM + 16],
    again[FB_WIRE_MAX_DATAGRAM + 16];

static void init_once(void)
{
    static const uint8_t key[32] = {9, 8, 7, 6, 5, 4, 3, 2, 1};
    static const uint8_t cn[16] = {1}, sn[16] = {2};

    if (client != NULL)
        return;
    if (fb_aead_new(&client, key, FB_AEAD_CLIENT) != FB_OK ||
        fb_aead_new(&server, key, FB_AEAD_SERVER) != FB_OK ||
        fb_aead_set_data_keys(client, FB_CIPHER_AES128_GCM, cn, sn) != FB_OK ||
        fb_aead_set_data_keys(server, FB_CIPHER_AES128_GCM, cn, sn) != FB_OK)
        abort();
    fb_replay_init(&window);
}

static void check_reencode(const fb_wire_pkt *pkt, const uint8_t *orig, size_t len, const fb_aead_ctx *sender)
{
    size_t len2 = 0;

    if (fb_wire_encode(again, sizeof(again), &len2, pkt, sender) != FB_OK)
        abort(); /* a packet we accepted must be one we can produce */
    if (len2 != len || memcmp(again, orig, len) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fb_wire_pkt pkt;
    fb_wire_hdr hdr;
    fb_wire_reason why;
    size_t len;
    int from_server;

    init_once();
    if (size < 1)
        return 0;
    if ((data[0] & 1) == 0) {
        len = size - 1 > FB_WIRE_MAX_DATAGRAM + 8 ? FB_WIRE_MAX_DATAGRAM + 8 : size - 1;
        memcpy(dgram, data + 1, len);
        from_server = (data[0] & 2) != 0;
    } else {
        uint8_t type, flags;
        uint64_t pn = 0;
        size_t body, hl;
        const fb_aead_ctx *sender;

        if (size < 3)
            return 0;
        type = data[1];
        flags = data[2];
        body = size - 3;
        if (type < FB_WIRE_HELLO || type > FB_WIRE_PROBE || body > FB_WIRE_MAX_DATAGRAM - FB_WIRE_OVERHEAD)
            return 0;
        from_server = type == FB_WIRE_HELLO_ACK;
        sender = from_server ? server : client;
        for (size_t i = 0; i < 8 && i < body; i++)
            pn = (pn << 8) | data[3 + i];
        dgram[0] = FB_WIRE_VERSION_BYTE;
        dgram[1] = type;
        dgram[2] = flags;
        if (type == FB_WIRE_DATA) {
            /* the short header: slot index, low 32 bits of the packet number (without a replay
             * window the receiver restores exactly those) */
            hl = FB_WIRE_DATA_HEADER_LEN;
            pn &= 0xffffffffu;
            memset(dgram + 3, 0x5a, 4);
            for (int i = 0; i < 4; i++)
                dgram[7 + i] = (uint8_t)(pn >> (24 - 8 * i));
        } else {
            hl = FB_WIRE_HEADER_LEN;
            dgram[3] = 0;
            memset(dgram + 4, 0x5a, FB_WIRE_SID_LEN);
            for (int i = 0; i < 8; i++)
                dgram[20 + i] = (uint8_t)(pn >> (56 - 8 * i));
        }
        memcpy(dgram + hl, data + 3, body);
        if (fb_aead_seal(sender, fb_wire_type_phase((fb_wire_type)type), pn, dgram, hl, dgram + hl, dgram + hl,
                         body) != FB_OK)
            abort();
        len = hl + body + FB_WIRE_TAG_LEN;
    }
    (void)fb_wire_peek_header(&hdr, &why, dgram, len);
    memcpy(work, dgram, len);
    /* Without the replay window, so that the re-encoding check sees every accepted packet. */
    if (fb_wire_open(&pkt, &why, work, len, from_server ? client : server, NULL) == FB_OK) {
        if (why != FB_WIRE_R_NONE)
            abort();
        check_reencode(&pkt, dgram, len, from_server ? server : client);
    } else if (why == FB_WIRE_R_NONE || why >= FB_WIRE_R__COUNT) {
        abort();
    }
    /* Again through the replay window, which must never crash or accept a repeat. */
    memcpy(work, dgram, len);
    if (fb_wire_open(&pkt, &why, work, len, from_server ? client : server, &window) == FB_OK &&
        fb_wire_type_phase((fb_wire_type)pkt.hdr.type) == FB_AEAD_DATA) {
        memcpy(work, dgram, len);
        if (fb_wire_open(&pkt, &why, work, len, from_server ? client : server, &window) == FB_OK)
            abort();
    }
    return 0;
}
