#!/bin/bash
# t_daemon: FallbackDaemon on, with the real udpd. The Apache parent starts udpd; a udpd killed
# with SIGKILL is replaced within about 2 s; a graceful restart keeps the same udpd process; a stop
# leaves no udpd behind. Skipped (with a message) only when udpd/udpd is not built.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=21
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

UDPD_BUILT=$SRCDIR/udpd/udpd
UDPD=$T_TMP/bin/udpd

# The Apache parent of this file's devserver.
apache_pid() {
    tr -dc 0-9 <"$DS_DIR/run/httpd.pid" 2>/dev/null
}

# Pids of the udpd processes the Apache parent runs (once they have exec'ed udpd).
udpd_children() {
    local ppid
    ppid=$(apache_pid)
    [ -n "$ppid" ] || return 0
    pgrep -P "$ppid" -x udpd || true
}

# Every process running this file's udpd binary, whoever its parent is.
udpd_anywhere() {
    pgrep -f "^$UDPD " || true
}

one_udpd() {
    [ "$(udpd_children | wc -l)" = 1 ]
}

# Waits for exactly one udpd child and prints its pid.
wait_one_udpd() {
    wait_for "$1" one_udpd || fail "expected one udpd child of Apache (pid $(apache_pid)), found [$(udpd_children | tr '\n' ' ')]"
    udpd_children
}

udp_port_bound() {
    ss -Hlun "sport = :$UDP_PORT" 2>/dev/null | grep -q .
}

test_start_runs_udpd() {
    local pid args
    pid=$(wait_one_udpd 10) || exit 1
    args=$(tr '\0' ' ' <"/proc/$pid/cmdline")
    case "$args" in
    "$UDPD -c $DS_DIR/fallback.xml -f"*) ;;
    *) fail "udpd command line: '$args'" ;;
    esac
    if [ "$(id -u)" = 0 ] && getent passwd www-data >/dev/null; then
        case "$args" in *" --user www-data"*) ;; *) fail "udpd not told Apache's User: '$args'" ;; esac
    fi
    wait_for 10 udp_port_bound || fail "udpd (pid $pid) does not listen on UDP port $UDP_PORT"
    # A real udpd, not one that dies at once and is restarted again and again.
    sleep 1.5
    assert_eq "$pid" "$(udpd_children)" "udpd pid 1.5 s later"
    grep -q 'FB00720:' "$DS_DIR/error.log" || fail "no FB00720 (started) line in error.log"
}

test_killed_udpd_is_replaced() {
    local old new t0 t1 i
    old=$(wait_one_udpd 5) || exit 1
    t0=$(date +%s%N)
    kill -KILL "$old"
    new=""
    for ((i = 0; i < 50; i++)); do
        new=$(udpd_children)
        if [ -n "$new" ] && [ "$new" != "$old" ]; then break; fi
        new=""
        sleep 0.1
    done
    t1=$(date +%s%N)
    [ -n "$new" ] || fail "no new udpd within 5 s of SIGKILL to $old"
    note "new udpd $new after $(((t1 - t0) / 1000000)) ms"
    assert_le $(((t1 - t0) / 1000000)) 2500 "ms until the new udpd"
    kill -0 "$old" 2>/dev/null && fail "the killed udpd $old still exists (not reaped)"
    grep -q "FB00702: .*udpd (pid $old) died" "$DS_DIR/error.log" || fail "no FB00702 line for pid $old"
    assert_eq 1 "$(udpd_children | wc -l)" "udpd children after the restart"
    wait_for 10 udp_port_bound || fail "the new udpd does not listen on UDP port $UDP_PORT"
}

test_graceful_keeps_udpd() {
    local before after apid
    before=$(wait_one_udpd 5) || exit 1
    apid=$(apache_pid)
    "$DEVSERVER" graceful --dir "$DS_DIR" --quiet || fail "graceful failed"
    assert_eq "$apid" "$(apache_pid)" "Apache parent pid after graceful"
    sleep 1.5
    after=$(udpd_children)
    assert_eq "$before" "$after" "udpd pid after graceful"
    kill -0 "$before" 2>/dev/null || fail "udpd $before is gone after graceful"
    grep -q "FB00704: .*udpd (pid $before) kept" "$DS_DIR/error.log" || fail "no FB00704 line for pid $before"
    # The new generation watches it again: killing it now still brings a new one.
    kill -KILL "$before"
    wait_for 5 sh -c "p=\$(pgrep -P $apid -x udpd); [ -n \"\$p\" ] && [ \"\$p\" != $before ]" ||
        fail "udpd not replaced after graceful + SIGKILL"
}

test_stop_leaves_no_udpd() {
    local pid left
    pid=$(wait_one_udpd 5) || exit 1
    ds_stop || fail "stop failed"
    if kill -0 "$pid" 2>/dev/null; then fail "udpd $pid still runs after stop"; fi
    left=$(udpd_anywhere)
    [ -z "$left" ] || fail "udpd processes left after stop: $left"
    grep -q "FB00721: .*udpd (pid $pid) stopped" "$DS_DIR/error.log" || fail "no FB00721 line for pid $pid"
}

skip_all() {
    skip "$UDPD_BUILT not built (make udpd/udpd)"
}

if [ ! -x "$UDPD_BUILT" ]; then
    for t in "start runs udpd" "SIGKILLed udpd replaced within 2 s" "graceful keeps the same udpd" \
        "stop leaves no udpd"; do
        run_test "$t" skip_all
    done
    finish
fi

# A private copy, so a rebuild in the tree cannot change the binary under the test.
cp "$UDPD_BUILT" "$UDPD" || { echo "not ok - copy udpd"; exit 1; }
cat >"$T_TMP/daemon.conf" <<EOF
FallbackDaemon on
FallbackDaemonPath $UDPD
LogLevel warn fallback:info
EOF

ds_start_or_bail "all daemon tests" --extra-conf "$T_TMP/daemon.conf"

run_test "start runs udpd (Apache's child, -c fallback.xml -f --user, UDP port bound)" test_start_runs_udpd
run_test "SIGKILLed udpd replaced within 2 s" test_killed_udpd_is_replaced
run_test "graceful keeps the same udpd" test_graceful_keeps_udpd
run_test "stop leaves no udpd" test_stop_leaves_no_udpd
finish
