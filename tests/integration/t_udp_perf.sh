#!/bin/bash
# t_udp_perf: loopback throughput of udpd for 1 GiB (FB_UDP_PERF_SIZE bytes) up and down, with the
# fair policy and the default 1452-byte datagrams: prints Gbit/s, and the CPU seconds udpd used
# (from /proc/PID/stat), and checks the file arrived intact. Skipped unless FB_UDP_PERF=1: it
# measures the machine more than the code, and takes a while. The numbers mean little on a
# loaded machine (other tests, or a VM with few cores where client and udpd share them).
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=42
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

UDPD=${UDPD:-$SRCDIR/udpd/udpd}
UDP_CLIENT=${UDP_CLIENT:-$SRCDIR/tests/udp/udp_client}
[ -x "$UDPD" ] && cp "$UDPD" "$T_TMP/bin/udpd" && UDPD=$T_TMP/bin/udpd
[ -x "$UDP_CLIENT" ] && cp "$UDP_CLIENT" "$T_TMP/bin/udp_client" && UDP_CLIENT=$T_TMP/bin/udp_client
SIZE=${FB_UDP_PERF_SIZE:-1073741824}
POLICY=${FB_UDP_PERF_POLICY:-fair}
DATAGRAM=${FB_UDP_PERF_DATAGRAM:-1452}
UDPD_LOG=$T_TMP/udpd.log
UDPD_PIDFILE=$T_TMP/udpd.pid
T_CLEANUP_EXTRA='[ -s "$UDPD_PIDFILE" ] && kill -TERM "$(cat "$UDPD_PIDFILE")" 2>/dev/null'

udpd_start() {
    local user_opt=() pid
    if [ "$(id -u)" = 0 ] && getent passwd www-data >/dev/null; then user_opt=(--user www-data); fi
    FB_SCHEMA=$DS_DIR/fallback.xsd "$UDPD" -c "$DS_DIR/fallback.xml" "${user_opt[@]}" >>"$UDPD_LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$UDPD_PIDFILE"
    T_BG_PIDS+=("$pid")
    wait_for 10 grep -q "UD00016: listening" "$UDPD_LOG" || fail "udpd did not start: $(tail -n 5 "$UDPD_LOG")"
}

# CPU time (s) of udpd so far.
udpd_cpu() {
    awk '{printf "%.2f\n", ($14 + $15) / 100}' "/proc/$(cat "$UDPD_PIDFILE")/stat"
}

test_throughput() {
    local c0 c1 id st
    [ "${FB_UDP_PERF:-0}" = 1 ] || skip "set FB_UDP_PERF=1 to measure"
    udpd_start
    mkrand "$T_TMP/big.bin" "$SIZE"
    id=$(new_session perf.bin "$SIZE")
    cp "$BODY" "$T_TMP/up.json"
    c0=$(udpd_cpu)
    "$UDP_CLIENT" --host 127.0.0.1 --port "$UDP_PORT" --session "$T_TMP/up.json" --upload "$T_TMP/big.bin" \
        --rate 2500000000 --policy "$POLICY" --datagram "$DATAGRAM" --timeout 30 >"$T_TMP/up.out" 2>&1 ||
        fail "upload failed: $(cat "$T_TMP/up.out")"
    c1=$(udpd_cpu)
    note "upload:   $(jq -r '"\(.gbit_s) Gbit/s in \(.seconds) s, resent \(.sent_retx) B, client CPU \(.cpu_s) s"' \
        "$T_TMP/up.out"), udpd CPU $(echo "$c1 - $c0" | bc) s (load $(cut -d' ' -f1 /proc/loadavg))"
    st=$(commit "$id" "$(sha "$T_TMP/big.bin")")
    assert_eq 200 "$st" "commit"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary '{"direction":"download","path":"perf.bin"}')
    assert_eq 201 "$st" "download session"
    cp "$BODY" "$T_TMP/down.json"
    c0=$(udpd_cpu)
    "$UDP_CLIENT" --host 127.0.0.1 --port "$UDP_PORT" --session "$T_TMP/down.json" --download "$T_TMP/back.bin" \
        --rate 2500000000 --policy "$POLICY" --datagram "$DATAGRAM" --timeout 30 >"$T_TMP/down.out" 2>&1 ||
        fail "download failed: $(cat "$T_TMP/down.out")"
    c1=$(udpd_cpu)
    note "download: $(jq -r '"\(.gbit_s) Gbit/s in \(.seconds) s, duplicates \(.dup) B, client CPU \(.cpu_s) s"' \
        "$T_TMP/down.out"), udpd CPU $(echo "$c1 - $c0" | bc) s (load $(cut -d' ' -f1 /proc/loadavg))"
    assert_file_same "$T_TMP/big.bin" "$T_TMP/back.bin"
}

ds_start_or_bail udp_perf
run_test throughput test_throughput
finish
