#!/bin/bash
# t_udp_security: hostile datagrams at a real udpd: random bytes, truncated, forged (one bit
# flipped), sealed with a wrong key, for unknown sessions, data-phase packets without a HELLO,
# and a real association's HELLO and DATA replayed from another address and on the association
# itself. Each is dropped and counted under its reason, and udpd sends nothing back (the client
# waits for answers with a receive timeout). HELLO_ACK is never larger than the HELLO.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=41
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

UDPD=${UDPD:-$SRCDIR/udpd/udpd}
UDP_CLIENT=${UDP_CLIENT:-$SRCDIR/tests/udp/udp_client}
[ -x "$UDPD" ] && cp "$UDPD" "$T_TMP/bin/udpd" && UDPD=$T_TMP/bin/udpd
[ -x "$UDP_CLIENT" ] && cp "$UDP_CLIENT" "$T_TMP/bin/udp_client" && UDP_CLIENT=$T_TMP/bin/udp_client
UDPD_LOG=$T_TMP/udpd.log
UDPD_PIDFILE=$T_TMP/udpd.pid
T_CLEANUP_EXTRA='udpd_stop'

# ---- helpers of this file (as in t_udp_transfer.sh) -------------------------------------------------

udpd_start() {
    local user_opt=() pid
    if [ "$(id -u)" = 0 ] && getent passwd www-data >/dev/null; then user_opt=(--user www-data); fi
    FB_SCHEMA=$DS_DIR/fallback.xsd "$UDPD" -c "$DS_DIR/fallback.xml" "${user_opt[@]}" --log-level debug \
        >>"$UDPD_LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$UDPD_PIDFILE"
    T_BG_PIDS+=("$pid")
    wait_for 10 grep -q "UD00016: listening" "$UDPD_LOG" || fail "udpd did not start: $(tail -n 5 "$UDPD_LOG")"
}

udpd_pid() {
    cat "$UDPD_PIDFILE" 2>/dev/null
}

udpd_stop() {
    local pid i
    pid=$(udpd_pid)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
}

# counter NAME: its value in udpd's counter lines after a SIGUSR1 (each call asks afresh).
counter() {
    local n
    n=$(grep -c "UD00051" "$UDPD_LOG")
    kill -USR1 "$(udpd_pid)"
    wait_for 5 more_lines "$n" || fail "udpd did not log its counters"
    grep -E 'UD0005[01]' "$UDPD_LOG" | tail -n 2 | grep -o " $1=[0-9]*" | tail -n 1 | cut -d= -f2
}

more_lines() {
    [ "$(grep -c "UD00051" "$UDPD_LOG")" -gt "$1" ]
}

# attack KIND COUNT: runs the client's attack; it must get no answer at all.
attack() {
    "$UDP_CLIENT" --host 127.0.0.1 --port "$UDP_PORT" --session "$T_TMP/session.json" --attack "$1" --count "$2" \
        --wait-ms 600 >"$T_TMP/attack.json" 2>"$T_TMP/attack.err"
    local rc=$?
    [ "$rc" = 0 ] || fail "attack $1: exit $rc, $(cat "$T_TMP/attack.json" "$T_TMP/attack.err")"
    assert_eq 0 "$(jq -r .answers "$T_TMP/attack.json")" "answers to $1"
}

# expect_growth NAME BEFORE MIN: counter NAME grew by at least MIN.
expect_growth() {
    local now
    now=$(counter "$1")
    [ "$now" -ge $(($2 + $3)) ] || fail "$1 went from $2 to $now, expected at least +$3"
}

# ---- tests ----------------------------------------------------------------------------------------

test_random_bytes() {
    local before
    before=$(counter dropped)
    attack random 60
    expect_growth dropped "$before" 60
}

test_truncated_hello() {
    local before
    before=$(counter truncated)
    attack truncated 16
    expect_growth truncated "$before" 16
}

test_forged_hello() {
    local before
    before=$(counter auth_failed)
    attack forged 20
    expect_growth auth_failed "$before" 20
}

test_wrong_key() {
    local before
    before=$(counter auth_failed)
    attack wrong-key 20
    expect_growth auth_failed "$before" 20
}

test_unknown_session() {
    local before
    before=$(counter unknown_session)
    attack unknown-session 20
    expect_growth unknown_session "$before" 20
}

test_data_without_hello() {
    local before
    before=$(counter no_keys)
    attack no-hello 20
    expect_growth no_keys "$before" 20
}

test_replay() {
    local hr wa rp
    hr=$(counter hello_replayed)
    wa=$(counter wrong_address)
    rp=$(counter replayed)
    attack replay 5
    [ "$(jq -r .hello_ack_len "$T_TMP/attack.json")" -le "$(jq -r .hello_len "$T_TMP/attack.json")" ] ||
        fail "HELLO_ACK larger than HELLO: $(cat "$T_TMP/attack.json")"
    sleep 0.3
    expect_growth hello_replayed "$hr" 5
    expect_growth wrong_address "$wa" 40
    expect_growth replayed "$rp" 8
}

# After all that, udpd still serves a real upload.
test_still_serving() {
    local size=300000 st
    mkrand "$T_TMP/after.bin" "$size"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"after.bin\",\"size\":$size}")
    assert_eq 201 "$st" "POST sessions"
    cp "$BODY" "$T_TMP/after.json"
    "$UDP_CLIENT" --host 127.0.0.1 --port "$UDP_PORT" --session "$T_TMP/after.json" --upload "$T_TMP/after.bin" \
        >"$T_TMP/after.out" 2>&1 || fail "upload failed: $(cat "$T_TMP/after.out")"
    st=$(commit "$(jq -r .id "$T_TMP/after.json")" "$(sha "$T_TMP/after.bin")")
    assert_eq 200 "$st" "commit"
    assert_file_same "$T_TMP/after.bin" "$DOCROOT/after.bin"
}

ds_start_or_bail udp_security
T_CURRENT=setup
[ -x "$UDPD" ] && [ -x "$UDP_CLIENT" ] || fail "udpd or tests/udp/udp_client not built"
udpd_start
# The session the attacks aim at: a real one, so that ids and keys are right where they must be.
st=$(api POST sessions -H 'Content-Type: application/json' \
    --data-binary '{"direction":"upload","path":"target.bin","size":100000}')
[ "$st" = 201 ] || fail "POST sessions: $st"
cp "$BODY" "$T_TMP/session.json"

run_test random_bytes test_random_bytes
run_test truncated_hello test_truncated_hello
run_test forged_hello test_forged_hello
run_test wrong_key test_wrong_key
run_test unknown_session test_unknown_session
run_test data_without_hello test_data_without_hello
run_test replay test_replay
run_test still_serving test_still_serving
udpd_stop
finish
