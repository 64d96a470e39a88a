#!/bin/bash
# t_fbcp_udp: fbcp over the UDP fast path and its continuation over HTTPS, against a real Apache
# with mod_fallback and a real udpd on loopback.
#
#   - uploads and downloads of 0 B, 1 B, chunk size - 1, chunk size + 1 and 200 MiB of random data
#     go over UDP (--json: bytes_udp == size, bytes_http == 0) and arrive SHA-256 identical;
#   - UDP blocked from the start (udpd alive but silent: SIGSTOP): HTTPS carries the data, its
#     first byte within 3 s of the start (the --json "t" stamps);
#   - udpd not running: the server offers no UDP port and HTTPS starts at once;
#   - udpd killed mid-transfer: the rest goes over HTTPS, the file is identical;
#   - udpd restarted during the HTTPS leg: fbcp moves back to UDP ("transport" event http -> udp);
#   - without that HEAD a remote directory, a missing file and --overwrite never end as before
#     (exit 2, 9, 16), and the unused session is deleted;
#   - a UDP download asks no HEAD (the session's answer describes the file) and ends with udpd's
#     CLOSE(unchanged): no DELETE, the session is gone; a file rewritten during a UDP download
#     is noticed (HEAD) and fetched again;
#   - 10 transfers at once, UDP, HTTPS (--fallback=force) and switching ones;
#   - fbcp killed (SIGKILL) during a UDP upload and download: the next run resumes over UDP;
#   - --fallback=never with udpd down or blocked: exit code 4, "Connection lost".
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=45
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

UDPD=${UDPD:-$SRCDIR/udpd/udpd}
[ -x "$UDPD" ] && cp "$UDPD" "$T_TMP/bin/udpd" && UDPD=$T_TMP/bin/udpd
UDPD_LOG=$T_TMP/udpd.log
UDPD_PIDFILE=$T_TMP/udpd.pid
SRC=$T_TMP/src
OUT=$T_TMP/out
mkdir -p "$SRC" "$OUT"
T_CLEANUP_EXTRA='udpd_kill'

# ---- helpers of this file -------------------------------------------------------------------------

# udpd_term: SIGTERM (a clean stop: udpd clears its pid in the table, so the module offers no UDP
# port from then on) and wait until it is gone.
udpd_term() {
    local pid i
    pid=$(cat "$UDPD_PIDFILE" 2>/dev/null)
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$UDPD_PIDFILE"
}

# udpd_freeze / udpd_thaw: SIGSTOP / SIGCONT. A stopped udpd is "UDP blocked": its datagrams
# queue unanswered (no ICMP error), while the module still offers the port for about 5 s (until
# udpd's heartbeat in the table is stale).
udpd_freeze() {
    kill -STOP "$(cat "$UDPD_PIDFILE")"
}

udpd_thaw() {
    kill -CONT "$(cat "$UDPD_PIDFILE")"
}

# udpd_down: no udpd, and the module knows it at once (a clean exit clears udpd's pid in the table;
# after a SIGKILL the module would offer the port until the heartbeat is 5 s old).
udpd_down() {
    udpd_running || udpd_start
    udpd_term
}

udpd_running() {
    local pid
    pid=$(cat "$UDPD_PIDFILE" 2>/dev/null)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# Field KEY of the "done" event in the --json output FILE.
done_of() {
    jq -r "select(.event == \"done\") | .$2" "$1" | tail -n1
}

# "from>to:reason" of every transport event of FILE, space separated.
switches_of() {
    jq -r 'select(.event == "transport") | "\(.from)>\(.to):\(.reason)"' "$1" | tr '\n' ' ' | sed 's/ $//'
}

# has_event FILE FROM TO: a transport event FROM -> TO was written.
has_switch() {
    [ "$(jq -r "select(.event == \"transport\" and .from == \"$2\" and .to == \"$3\") | .to" "$1" 2>/dev/null |
        head -n1)" = "$3" ]
}

# Uploads SRC/NAME to REMOTE over what fbcp chooses; --json into OUT/NAME.up.json. Extra args follow.
up() {
    local name=$1 remote=$2 rc
    shift 2
    fbcp --json -q --overwrite always "$@" "$SRC/$name" "$URL/$remote" >"$OUT/$name.up.json" 2>"$OUT/$name.up.err"
    rc=$?
    [ "$rc" = 0 ] || fail "upload of $name: exit $rc: $(cat "$OUT/$name.up.err")"
}

# Downloads REMOTE to OUT/NAME; --json into OUT/NAME.down.json. Extra args follow.
down() {
    local remote=$1 name=$2 rc
    shift 2
    rm -f "$OUT/$name"
    fbcp --json -q "$@" "$URL/$remote" "$OUT/$name" >"$OUT/$name.down.json" 2>"$OUT/$name.down.err"
    rc=$?
    [ "$rc" = 0 ] || fail "download of $remote: exit $rc: $(cat "$OUT/$name.down.err")"
}

# assert_over_udp JSON SIZE: the whole file went over UDP (bytes_udp == SIZE, bytes_http == 0),
# without any change of transport.
assert_over_udp() {
    local json=$1 size=$2
    assert_eq "$size" "$(done_of "$json" bytes_udp)" "bytes_udp in $(basename "$json")"
    assert_eq 0 "$(done_of "$json" bytes_http)" "bytes_http in $(basename "$json")"
    assert_eq "" "$(switches_of "$json")" "transport events in $(basename "$json")"
    if [ "$size" -gt 0 ]; then
        assert_eq udp "$(done_of "$json" transport)" "transport of the done event"
    fi
}

mkdata() {
    [ -f "$SRC/$1" ] || mkrand "$SRC/$1" "$2"
}

# ---- tests ----------------------------------------------------------------------------------------

# --fallback never: under auto, files up to 64 KiB do not use UDP (see the next test).
test_udp_small_sizes() {
    local size name
    for size in 0 1 $((CHUNK - 1)) $((CHUNK + 1)); do
        name=s$size
        mkdata "$name" "$size"
        up "$name" "udp/$name" --fallback never
        assert_file_same "$SRC/$name" "$DOCROOT/udp/$name"
        assert_over_udp "$OUT/$name.up.json" "$size"
        assert_eq "$(sha "$SRC/$name")" "$(done_of "$OUT/$name.up.json" sha256)" "sha256 of the done event"
        down "udp/$name" "$name" --fallback never
        assert_file_same "$SRC/$name" "$OUT/$name"
        assert_over_udp "$OUT/$name.down.json" "$size"
    done
}

# docs/fbcp.md "Small files": under --fallback auto a file of at most 64 KiB moves over HTTPS
# (no UDP association, no transport event), a bigger one over UDP.
test_auto_small_files_over_https() {
    local name=k64 size=65536
    mkdata "$name" "$size"
    up "$name" "udp/$name"
    assert_file_same "$SRC/$name" "$DOCROOT/udp/$name"
    assert_eq 0 "$(done_of "$OUT/$name.up.json" bytes_udp)" "$name up: bytes_udp"
    assert_eq "$size" "$(done_of "$OUT/$name.up.json" bytes_http)" "$name up: bytes_http"
    assert_eq http "$(jq -r 'select(.event == "start") | .transport' "$OUT/$name.up.json")" "$name up: transport at start"
    assert_eq "" "$(switches_of "$OUT/$name.up.json")" "$name up: transport events"
    down "udp/$name" "$name"
    assert_file_same "$SRC/$name" "$OUT/$name"
    assert_eq 0 "$(done_of "$OUT/$name.down.json" bytes_udp)" "$name down: bytes_udp"
    name=k64p1
    mkdata "$name" $((size + 1))
    up "$name" "udp/$name"
    assert_over_udp "$OUT/$name.up.json" $((size + 1))
    down "udp/$name" "$name"
    assert_over_udp "$OUT/$name.down.json" $((size + 1))
}

test_udp_200m() {
    mkdata big 209715200
    up big udp/big
    assert_file_same "$SRC/big" "$DOCROOT/udp/big"
    assert_over_udp "$OUT/big.up.json" 209715200
    down udp/big big
    assert_file_same "$SRC/big" "$OUT/big"
    assert_over_udp "$OUT/big.down.json" 209715200
    # no partial file or sidecar is left behind
    assert_no_file "$OUT/.big.fbpart"
    assert_no_file "$OUT/.big.fbpart.json"
}

# Every event carries "t" (seconds since the start), "transport", "bytes_udp" and "bytes_http".
test_events_carry_t_and_counts() {
    local bad
    mkdata e20 20971520
    up e20 udp/e20
    bad=$(jq -c 'select((.t | type) != "number" or (has("bytes_udp") | not) or (has("bytes_http") | not)
        or (has("transport") | not))' "$OUT/e20.up.json")
    [ -z "$bad" ] || fail "events without t/transport/bytes_udp/bytes_http: $bad"
    assert_eq udp "$(jq -r 'select(.event == "start") | .transport' "$OUT/e20.up.json")" "transport at start"
    # t never goes back
    jq -r '.t' "$OUT/e20.up.json" | sort -c -g || fail "t is not monotonic"
}

# UDP blocked from the start: the first HTTPS byte within 3 s of the start.
test_blocked_from_start_goes_https() {
    local t_switch t_first size=52428800
    udpd_running || udpd_start
    sleep 1.2 # a fresh heartbeat: the module offers the UDP port for the next 5 s at least
    udpd_freeze
    mkdata b50 $size
    up b50 udp/b50
    assert_file_same "$SRC/b50" "$DOCROOT/udp/b50"
    assert_eq "udp>http:no_answer" "$(switches_of "$OUT/b50.up.json")" "transport events"
    assert_eq $size "$(done_of "$OUT/b50.up.json" bytes_http)" "bytes_http"
    assert_eq 0 "$(done_of "$OUT/b50.up.json" bytes_udp)" "bytes_udp"
    t_switch=$(jq -r 'select(.event == "transport") | .t' "$OUT/b50.up.json")
    # the first event that shows HTTPS bytes (progress is written at most twice a second, so it
    # may trail the first byte by up to 0.5 s: the bound holds all the more for the byte itself)
    t_first=$(jq -r 'select(.bytes_http > 0) | .t' "$OUT/b50.up.json" | head -n1)
    note "upload: switch at $t_switch s, first HTTPS bytes seen at $t_first s"
    awk -v t="$t_first" 'BEGIN { exit !(t <= 3.0) }' || fail "first HTTPS bytes at $t_first s (> 3 s)"

    udpd_thaw
    sleep 1.2
    udpd_freeze
    down udp/b50 b50
    assert_file_same "$SRC/b50" "$OUT/b50"
    assert_eq "udp>http:no_answer" "$(switches_of "$OUT/b50.down.json")" "transport events (download)"
    assert_eq $size "$(done_of "$OUT/b50.down.json" bytes_http)" "bytes_http (download)"
    t_first=$(jq -r 'select(.bytes_http > 0) | .t' "$OUT/b50.down.json" | head -n1)
    note "download: first HTTPS bytes seen at $t_first s"
    awk -v t="$t_first" 'BEGIN { exit !(t <= 3.0) }' || fail "first HTTPS bytes at $t_first s (> 3 s)"
    udpd_thaw
    udpd_term
}

# udpd not running at all: the session offers no UDP port, HTTPS carries everything at once.
test_udpd_down_https_at_once() {
    local size=52428800 t_first
    udpd_down
    mkdata b50 $size
    up b50 udp/d50
    assert_file_same "$SRC/b50" "$DOCROOT/udp/d50"
    assert_eq http "$(jq -r 'select(.event == "start") | .transport' "$OUT/b50.up.json")" "transport at start"
    assert_eq "" "$(switches_of "$OUT/b50.up.json")" "transport events"
    assert_eq $size "$(done_of "$OUT/b50.up.json" bytes_http)" "bytes_http"
    t_first=$(jq -r 'select(.bytes_http > 0) | .t' "$OUT/b50.up.json" | head -n1)
    awk -v t="$t_first" 'BEGIN { exit !(t <= 1.0) }' || fail "first HTTPS bytes at $t_first s (> 1 s)"
    down udp/d50 d50
    assert_file_same "$SRC/b50" "$OUT/d50"
    assert_eq http "$(jq -r 'select(.event == "start") | .transport' "$OUT/d50.down.json")" "transport at start"
    assert_eq $size "$(done_of "$OUT/d50.down.json" bytes_http)" "bytes_http (download)"
}

# wait_udp_bytes JSON N: waits (bounded) until a progress event shows more than N bytes over UDP.
udp_bytes_over() {
    [ "$(jq -r 'select(.bytes_udp != null) | .bytes_udp' "$1" 2>/dev/null | tail -n1)" -gt "$2" ] 2>/dev/null
}

# fbcp_wait PID: its exit status.
fbcp_wait() {
    local rc
    wait "$1"
    rc=$?
    return $rc
}

# Kills udpd mid-transfer (after some MiB went over UDP); the transfer finishes over HTTPS.
test_killed_midway_continues_https() {
    local size=104857600 pid rc
    udpd_running || udpd_start
    mkdata k100 $size
    fbcp_bg "$OUT/k100.up.json" "$OUT/k100.up.err" --json -q --overwrite always --limit-rate 20m \
        "$SRC/k100" "$URL/udp/k100"
    pid=$FBCP_PID
    wait_for 20 udp_bytes_over "$OUT/k100.up.json" 10000000 || fail "no UDP progress: $(tail -n 2 "$OUT/k100.up.json")"
    udpd_kill
    fbcp_wait "$pid"
    rc=$?
    assert_eq 0 "$rc" "fbcp exit status ($(cat "$OUT/k100.up.err"))"
    assert_file_same "$SRC/k100" "$DOCROOT/udp/k100"
    assert_eq "udp>http:lost" "$(switches_of "$OUT/k100.up.json")" "transport events"
    assert_ge "$(done_of "$OUT/k100.up.json" bytes_udp)" 10000000 "bytes_udp"
    assert_ge "$(done_of "$OUT/k100.up.json" bytes_http)" 1 "bytes_http"

    udpd_start
    fbcp_bg "$OUT/k100.down.json" "$OUT/k100.down.err" --json -q --limit-rate 20m "$URL/udp/k100" "$OUT/k100"
    pid=$FBCP_PID
    wait_for 20 udp_bytes_over "$OUT/k100.down.json" 10000000 || fail "no UDP progress (download)"
    udpd_kill
    fbcp_wait "$pid"
    rc=$?
    assert_eq 0 "$rc" "fbcp exit status, download ($(cat "$OUT/k100.down.err"))"
    assert_file_same "$SRC/k100" "$OUT/k100"
    assert_eq "udp>http:lost" "$(switches_of "$OUT/k100.down.json")" "transport events (download)"
    assert_ge "$(done_of "$OUT/k100.down.json" bytes_http)" 1 "bytes_http (download)"
}

# A UDP download of a file older than its session ends with udpd's CLOSE(unchanged): the file is
# vouched for and the session freed over UDP, so fbcp sends neither a second HEAD nor a DELETE.
test_udp_download_end_confirmed() {
    local id heads deletes
    udpd_running || udpd_start
    mkdata conf 3000000
    mkdir -p "$DOCROOT/udp"
    cp "$SRC/conf" "$DOCROOT/udp/conf"
    docroot_chown "$DOCROOT/udp"
    sleep 0.3 # older than its session by more than udpd's clock margin (50 ms)
    heads=$(access_count HEAD /files/udp/conf)
    deletes=$(access_count DELETE /sessions/)
    down udp/conf conf -v
    assert_file_same "$SRC/conf" "$OUT/conf"
    assert_over_udp "$OUT/conf.down.json" 3000000
    grep -q "udpd: the file is unchanged, the session ended" "$OUT/conf.down.err" ||
        fail "no confirmation from udpd: $(tail -n 3 "$OUT/conf.down.err")"
    sleep 0.5 # Apache logs a request after answering it: give a late DELETE time to show
    # the session's answer described the file: no HEAD before it either
    grep -q "describes the file: no HEAD" "$OUT/conf.down.err" ||
        fail "fbcp asked HEAD first: $(grep -i head "$OUT/conf.down.err" | head -n 3)"
    assert_eq "$heads" "$(access_count HEAD /files/udp/conf)" "HEAD requests (none at all)"
    assert_eq "$deletes" "$(access_count DELETE /sessions/)" "DELETE requests"
    wait_for 5 grep -q "UD00063: .*'udp/conf' confirmed unchanged" "$UDPD_LOG" || fail "no UD00063 in udpd's log"
    # the session is gone from the table, not left to expire
    id=$(grep -o "session [0-9a-f]*: download of 'udp/conf' confirmed" "$UDPD_LOG" | tail -n1 | cut -d' ' -f2 | tr -d :)
    [ -n "$id" ] || fail "no session id in udpd's log"
    assert_eq 404 "$(api GET "sessions/$id")" "GET sessions/$id after the end"
}

# A paced download whose datagrams come a few at a time (udpd without GSO, 80 Mbit/s, about 6800
# a second): fbcp lets them gather in the socket between reads instead of waking for each few.
# The same download with the gathering off (FBCP_UDP_RX_GATHER_US=0) and with a 4 ms window: the
# window must cut the reads at least in half (1902 against 378 on an idle machine; udpd sends
# bursts of about 7 datagrams a millisecond, so without gathering a read takes about 4).
test_udp_download_gathers_datagrams() {
    local line reads_off reads_on
    udpd_kill
    udpd_start --no-offload
    mkdata paced 12000000
    mkdir -p "$DOCROOT/udp"
    cp "$SRC/paced" "$DOCROOT/udp/paced"
    docroot_chown "$DOCROOT/udp"
    paced_reads() {
        FBCP_UDP_RX_GATHER_US=$1 down udp/paced paced -v --target-rate 80M
        assert_file_same "$SRC/paced" "$OUT/paced"
        assert_over_udp "$OUT/paced.down.json" 12000000
        line=$(grep -o "[0-9]* datagrams in [0-9]* reads" "$OUT/paced.down.err" | tail -n 1)
        echo "# gathering $1 us: $line" >&2
        [ -n "$line" ] || fail "no read count: $(tail -n 3 "$OUT/paced.down.err")"
        line=${line##*in }
        echo "${line%% *}"
    }
    reads_off=$(paced_reads 0)
    reads_on=$(paced_reads 4000)
    [ "$reads_off" -gt 0 ] && [ $((reads_on * 2)) -lt "$reads_off" ] ||
        fail "$reads_on reads with a 4 ms gathering window, $reads_off without"
    udpd_kill
    udpd_start
}

# A paced upload (80 Mbit/s, about 6800 datagrams a second): fbcp sleeps at least 1 ms between
# pacing wake-ups (FBCP_UDP_MIN_SLEEP_US) and sends what came due as one batch, so a send call
# carries several datagrams (about 7; one or two with the old 150 us).
test_udp_upload_sends_in_batches() {
    local line dgrams calls
    udpd_running || udpd_start
    mkdata pacedup 12000000
    up pacedup udp/pacedup -v --target-rate 80M
    assert_over_udp "$OUT/pacedup.up.json" 12000000
    line=$(grep -o "[0-9]* datagrams in [0-9]* send calls" "$OUT/pacedup.up.err" | tail -n 1)
    echo "# $line"
    [ -n "$line" ] || fail "no send count: $(tail -n 3 "$OUT/pacedup.up.err")"
    dgrams=${line%% *}
    calls=${line##*in }
    calls=${calls%% *}
    [ "$calls" -gt 0 ] && [ $((dgrams / calls)) -ge 4 ] || fail "$line: under 4 a call"
}

# Without a HEAD first, the session request meets the unusual cases: they still end as they did
# with a HEAD (a directory without -r: usage, exit 2; a missing file: not_found, exit 9), and a
# session created before the local overwrite policy refused the download is deleted, not left.
test_udp_download_without_head_edge_cases() {
    local rc deletes
    udpd_running || udpd_start
    mkdata edge 100000
    mkdir -p "$DOCROOT/udp/sub"
    cp "$SRC/edge" "$DOCROOT/udp/edge"
    docroot_chown "$DOCROOT/udp"
    fbcp --json -q "$URL/udp/sub" "$OUT/edge-dir" >/dev/null 2>"$OUT/edge-dir.err"
    rc=$?
    assert_eq 2 "$rc" "exit status for a remote directory ($(cat "$OUT/edge-dir.err"))"
    grep -q "is a remote directory (use -r)" "$OUT/edge-dir.err" || fail "message: $(cat "$OUT/edge-dir.err")"
    fbcp --json -q "$URL/udp/no-such-file" "$OUT/edge-missing" >/dev/null 2>"$OUT/edge-missing.err"
    rc=$?
    assert_eq 9 "$rc" "exit status for a missing file ($(cat "$OUT/edge-missing.err"))"
    [ ! -e "$OUT/edge-missing" ] || fail "a missing remote file left a local one"
    echo keep >"$OUT/edge-kept"
    deletes=$(access_count DELETE /sessions/)
    fbcp --json -q -v --overwrite never "$URL/udp/edge" "$OUT/edge-kept" >/dev/null 2>"$OUT/edge-kept.err"
    rc=$?
    assert_eq 16 "$rc" "exit status with --overwrite never ($(tail -n 2 "$OUT/edge-kept.err"))"
    assert_eq keep "$(cat "$OUT/edge-kept")" "the local file kept"
    grep -q "describes the file: no HEAD" "$OUT/edge-kept.err" || fail "no session first: $(cat "$OUT/edge-kept.err")"
    sleep 0.5 # Apache logs a request after answering it
    assert_eq $((deletes + 1)) "$(access_count DELETE /sessions/)" "the unused session deleted"
}

# The file changes on the server (same size, rewritten in place) during a UDP download: udpd does
# not vouch for it, fbcp's HEAD sees another ETag, starts over once and ends with the new content.
test_udp_download_of_a_changing_file() {
    local pid rc
    udpd_running || udpd_start
    mkdata chg 20000000
    mkdir -p "$DOCROOT/udp"
    cp "$SRC/chg" "$DOCROOT/udp/chg"
    docroot_chown "$DOCROOT/udp"
    sleep 0.3
    fbcp_bg "$OUT/chg.down.json" "$OUT/chg.down.err" --json --limit-rate 5m "$URL/udp/chg" "$OUT/chg"
    pid=$FBCP_PID
    wait_for 20 udp_bytes_over "$OUT/chg.down.json" 2000000 || fail "no UDP progress: $(tail -n 2 "$OUT/chg.down.err")"
    # new content, same size, same inode
    head -c 1000000 /dev/urandom | dd of="$DOCROOT/udp/chg" bs=1000000 seek=0 conv=notrunc status=none
    touch -d '+2 seconds' "$DOCROOT/udp/chg" # another Last-Modified and ETag for certain
    fbcp_wait "$pid"
    rc=$?
    assert_eq 0 "$rc" "fbcp exit status ($(cat "$OUT/chg.down.err"))"
    grep -q "changed on the server" "$OUT/chg.down.err" || fail "the change went unnoticed: $(cat "$OUT/chg.down.err")"
    assert_file_same "$DOCROOT/udp/chg" "$OUT/chg"
}

# udpd killed, then started again while HTTPS carries the data: fbcp returns to UDP.
test_restarted_udpd_brings_udp_back() {
    local size=104857600 pid rc json dir
    mkdata r100 $size
    for dir in up down; do
        json=$OUT/r100.$dir.json
        udpd_running || udpd_start
        if [ $dir = up ]; then
            fbcp_bg "$json" "$OUT/r100.$dir.err" --json -q --overwrite always --limit-rate 16m --request-size 2m \
                "$SRC/r100" "$URL/udp/r100"
        else
            rm -f "$OUT/r100"
            fbcp_bg "$json" "$OUT/r100.$dir.err" --json -q --limit-rate 16m --request-size 2m \
                "$URL/udp/r100" "$OUT/r100"
        fi
        pid=$FBCP_PID
        wait_for 20 udp_bytes_over "$json" 8000000 || fail "$dir: no UDP progress"
        udpd_kill
        wait_for 10 has_switch "$json" udp http || fail "$dir: no change to HTTPS: $(switches_of "$json")"
        udpd_start
        fbcp_wait "$pid"
        rc=$?
        assert_eq 0 "$rc" "$dir: fbcp exit status ($(cat "$OUT/r100.$dir.err"))"
        if [ $dir = up ]; then
            assert_file_same "$SRC/r100" "$DOCROOT/udp/r100"
        else
            assert_file_same "$SRC/r100" "$OUT/r100"
        fi
        assert_eq "udp>http:lost http>udp:answered" "$(switches_of "$json")" "$dir: transport events"
        assert_eq udp "$(done_of "$json" transport)" "$dir: transport at the end"
        assert_ge "$(done_of "$json" bytes_http)" 1 "$dir: bytes_http"
        # the bytes after the return went over UDP again
        assert_ge "$(done_of "$json" bytes_udp)" \
            "$(($(jq -r 'select(.event == "transport" and .to == "udp") | .bytes_udp' "$json") + 1))" \
            "$dir: bytes_udp after the return"
    done
}

# all_done FILE...: every file has a done or error event.
all_finished() {
    local f
    for f in "$@"; do
        grep -q '"event":"\(done\|error\)"' "$f" 2>/dev/null || return 1
    done
}

# 10 transfers at once: 4 over UDP, 3 over HTTPS (--fallback=force), 3 slow ones that switch to
# HTTPS when udpd is killed while they run.
test_ten_at_once() {
    local i pids=() fast=() slow=() forced=() f rc
    udpd_running || udpd_start
    for i in 1 2 3 4 5 6 7; do mkdata c$i $((10485760 + i * 1000003)); done
    for i in 8 9 10; do mkdata c$i $((31457280 + i * 1000003)); done
    # over UDP: uploads 1-2, downloads 3-4 (of files uploaded here first, over HTTPS)
    for i in 3 4 7; do
        fbcp --json -q --fallback=force --overwrite always "$SRC/c$i" "$URL/many/c$i" >/dev/null 2>&1 ||
            fail "seed upload c$i"
    done
    fbcp_bg "$OUT/c1.json" "$OUT/c1.err" --json -q --overwrite always "$SRC/c1" "$URL/many/c1"
    pids+=("$FBCP_PID")
    fbcp_bg "$OUT/c2.json" "$OUT/c2.err" --json -q --overwrite always "$SRC/c2" "$URL/many/c2"
    pids+=("$FBCP_PID")
    fbcp_bg "$OUT/c3.json" "$OUT/c3.err" --json -q "$URL/many/c3" "$OUT/c3"
    pids+=("$FBCP_PID")
    fbcp_bg "$OUT/c4.json" "$OUT/c4.err" --json -q "$URL/many/c4" "$OUT/c4"
    pids+=("$FBCP_PID")
    fast=(1 2 3 4)
    # HTTPS only: uploads 5-6, download 7
    fbcp_bg "$OUT/c5.json" "$OUT/c5.err" --json -q --fallback=force --overwrite always "$SRC/c5" "$URL/many/c5"
    pids+=("$FBCP_PID")
    fbcp_bg "$OUT/c6.json" "$OUT/c6.err" --json -q --fallback=force --overwrite always "$SRC/c6" "$URL/many/c6"
    pids+=("$FBCP_PID")
    fbcp_bg "$OUT/c7.json" "$OUT/c7.err" --json -q --fallback=force "$URL/many/c7" "$OUT/c7"
    pids+=("$FBCP_PID")
    forced=(5 6 7)
    # slow ones (about 15 s at 2 MiB/s each) that will switch: uploads 8-10
    for i in 8 9 10; do
        fbcp_bg "$OUT/c$i.json" "$OUT/c$i.err" --json -q --overwrite always --limit-rate 2m "$SRC/c$i" \
            "$URL/many/c$i"
        pids+=("$FBCP_PID")
    done
    slow=(8 9 10)
    # the fast ones finish over UDP, then udpd dies under the slow ones
    wait_for 60 all_finished "$OUT/c1.json" "$OUT/c2.json" "$OUT/c3.json" "$OUT/c4.json" ||
        fail "the UDP transfers did not finish"
    for i in "${slow[@]}"; do
        wait_for 20 udp_bytes_over "$OUT/c$i.json" 1000000 || fail "c$i: no UDP progress"
    done
    all_finished "$OUT/c8.json" || all_finished "$OUT/c9.json" || all_finished "$OUT/c10.json" &&
        fail "a slow transfer finished before udpd was killed (machine too slow for this test?)"
    udpd_kill
    for f in "${pids[@]}"; do
        wait "$f"
        rc=$?
        [ "$rc" = 0 ] || fail "a transfer failed with $rc: $(cat "$OUT"/c*.err)"
    done
    for i in 1 2 5 6 8 9 10; do assert_file_same "$SRC/c$i" "$DOCROOT/many/c$i"; done
    for i in 3 4 7; do assert_file_same "$SRC/c$i" "$OUT/c$i"; done
    for i in "${fast[@]}"; do assert_over_udp "$OUT/c$i.json" "$(stat -c %s "$SRC/c$i")"; done
    for i in "${forced[@]}"; do
        assert_eq "$(stat -c %s "$SRC/c$i")" "$(done_of "$OUT/c$i.json" bytes_http)" "c$i: bytes_http"
        assert_eq 0 "$(done_of "$OUT/c$i.json" bytes_udp)" "c$i: bytes_udp"
        assert_eq "" "$(switches_of "$OUT/c$i.json")" "c$i: transport events"
        assert_eq http "$(jq -r 'select(.event == "start") | .transport' "$OUT/c$i.json")" "c$i: start transport"
    done
    for i in "${slow[@]}"; do
        assert_eq "udp>http:lost" "$(switches_of "$OUT/c$i.json")" "c$i: transport events"
        assert_ge "$(done_of "$OUT/c$i.json" bytes_udp)" 1000000 "c$i: bytes_udp"
        assert_ge "$(done_of "$OUT/c$i.json" bytes_http)" 1 "c$i: bytes_http"
    done
}

# fbcp killed during a UDP transfer: the same command again resumes, over UDP.
test_killed_fbcp_resumes_over_udp() {
    local size=157286400 dir json
    udpd_running || udpd_start
    mkdata k150 $size
    for dir in up down; do
        json=$OUT/k150.$dir.json
        if [ $dir = up ]; then
            fbcp_bg "$json" /dev/null --json -q --limit-rate 40m "$SRC/k150" "$URL/udp/k150"
        else
            rm -f "$OUT/k150" "$OUT/.k150.fbpart" "$OUT/.k150.fbpart.json"
            fbcp_bg "$json" /dev/null --json -q --limit-rate 40m "$URL/udp/k150" "$OUT/k150"
        fi
        # past the first download checkpoint (64 MiB)
        wait_for 30 udp_bytes_over "$json" 75000000 || fail "$dir: no UDP progress"
        kill -KILL "$FBCP_PID"
        wait "$FBCP_PID" 2>/dev/null
        if [ $dir = up ]; then
            fbcp --json -q "$SRC/k150" "$URL/udp/k150" >"$json" 2>"$OUT/k150.err" || fail "$dir: $(cat "$OUT/k150.err")"
            assert_file_same "$SRC/k150" "$DOCROOT/udp/k150"
        else
            fbcp --json -q "$URL/udp/k150" "$OUT/k150" >"$json" 2>"$OUT/k150.err" || fail "$dir: $(cat "$OUT/k150.err")"
            assert_file_same "$SRC/k150" "$OUT/k150"
        fi
        assert_eq true "$(jq -r 'select(.event == "start") | .resumed' "$json")" "$dir: resumed"
        assert_ge "$(jq -r 'select(.event == "start") | .bytes_skipped' "$json")" 67108864 "$dir: bytes_skipped"
        assert_eq 0 "$(done_of "$json" bytes_http)" "$dir: bytes_http"
        assert_le "$(done_of "$json" bytes_udp)" $((size - 67108864)) "$dir: bytes_udp"
        assert_eq "" "$(switches_of "$json")" "$dir: transport events"
    done
}

test_never_with_udpd_down_fails() {
    local rc msg t0 t1
    udpd_down
    mkdata n1 1048576
    fbcp --fallback=never --overwrite always "$SRC/n1" "$URL/udp/n1" >"$OUT/n1.out" 2>"$OUT/n1.err"
    rc=$?
    assert_eq "$(exit_code_of connection_lost)" "$rc" "exit code (upload)"
    msg=$(message_of connection_lost)
    grep -q "fbcp: .*n1: $msg (" "$OUT/n1.err" || fail "no '$msg' on stderr: $(cat "$OUT/n1.err")"
    assert_no_file "$DOCROOT/udp/n1"
    # udpd alive but not answering: Connection lost after --udp-timeout
    udpd_start
    sleep 1.2
    udpd_freeze
    t0=$(date +%s%N)
    fbcp --fallback=never --udp-timeout 1.5 --overwrite always "$SRC/n1" "$URL/udp/n1" >"$OUT/n1.out" 2>"$OUT/n1.err"
    rc=$?
    t1=$(date +%s%N)
    udpd_kill
    assert_eq 4 "$rc" "exit code (blocked)"
    grep -q "fbcp: .*n1: $msg (no answer over UDP from 127.0.0.1:$UDP_PORT within 1.5 s)" "$OUT/n1.err" ||
        fail "stderr: $(cat "$OUT/n1.err")"
    assert_ge $(((t1 - t0) / 1000000)) 1500 "ms until the failure"
    assert_no_file "$DOCROOT/udp/n1"
    # a download the same way, and its JSON error event
    fbcp --json -q --fallback=never "$URL/udp/s1" "$OUT/n1.dl" >"$OUT/n1.dl.json" 2>"$OUT/n1.dl.err"
    rc=$?
    assert_eq 4 "$rc" "exit code (download)"
    assert_eq connection_lost "$(jq -r 'select(.event == "error") | .code' "$OUT/n1.dl.json")" "error code"
    assert_no_file "$OUT/n1.dl"
}

test_ciphers() {
    local c
    udpd_running || udpd_start
    mkdata ci 3000000
    for c in aes-128-gcm aes-256-gcm; do
        fbcp -v --json --overwrite always --cipher "$c" "$SRC/ci" "$URL/udp/ci-$c" >"$OUT/ci-$c.json" \
            2>"$OUT/ci-$c.err" || fail "--cipher $c: $(cat "$OUT/ci-$c.err")"
        assert_file_same "$SRC/ci" "$DOCROOT/udp/ci-$c"
        assert_over_udp "$OUT/ci-$c.json" 3000000
    done
    grep -q 'accepted: cipher aes-128-gcm,' "$OUT/ci-aes-128-gcm.err" || fail "AES-128-GCM not negotiated"
    grep -q 'accepted: cipher aes-256-gcm,' "$OUT/ci-aes-256-gcm.err" || fail "AES-256-GCM not negotiated"
    # a cipher the server does not allow (none, by default): the server picks an AES-GCM one
    fbcp -v --json --overwrite always --cipher none "$SRC/ci" "$URL/udp/ci-none" >"$OUT/ci-none.json" \
        2>"$OUT/ci-none.err" || fail "--cipher none: $(cat "$OUT/ci-none.err")"
    assert_file_same "$SRC/ci" "$DOCROOT/udp/ci-none"
    grep -q -E 'accepted: cipher aes-(128|256)-gcm,' "$OUT/ci-none.err" || fail "no AES-GCM cipher chosen for 'none'"
    fbcp --cipher rot13 "$SRC/ci" "$URL/udp/x" 2>/dev/null
    assert_eq 2 "$?" "exit code of an unknown cipher"
}

# ---- run ------------------------------------------------------------------------------------------

need() {
    skip "$1"
}

if [ ! -x "$UDPD" ] || ! command -v jq >/dev/null; then
    for t in "UDP 0 B, 1 B, chunk +-1" "UDP 200 MiB" "events carry t and counts" "UDP blocked: HTTPS within 3 s" \
        "udpd not running: HTTPS at once" "fbcp killed: resumed over UDP" \
        "udpd killed: HTTPS finishes" "udpd restarted: back to UDP" "10 at once" "never: Connection lost" \
        "ciphers"; do
        run_test "$t" need "udpd/udpd not built or jq missing"
    done
    finish
fi
ds_start_or_bail "devserver"
require_fbcp
udpd_start

run_test "UDP upload and download of 0 B, 1 B, chunk size -1 and +1" test_udp_small_sizes
run_test "--fallback auto: 64 KiB over HTTPS, 64 KiB + 1 over UDP" test_auto_small_files_over_https
run_test "UDP upload and download of 200 MiB" test_udp_200m
run_test "a paced UDP download reads its datagrams in batches" test_udp_download_gathers_datagrams
run_test "a paced UDP upload sends its datagrams in batches" test_udp_upload_sends_in_batches
run_test "every event carries t, transport, bytes_udp, bytes_http" test_events_carry_t_and_counts
run_test "--cipher aes-128-gcm, aes-256-gcm; none is the server's choice" test_ciphers
run_test "UDP blocked from the start: HTTPS carries the data within 3 s" test_blocked_from_start_goes_https
run_test "udpd not running: no UDP port offered, HTTPS at once" test_udpd_down_https_at_once
run_test "udpd killed mid-transfer: HTTPS finishes, identical" test_killed_midway_continues_https
run_test "udpd restarted during the HTTPS leg: back to UDP" test_restarted_udpd_brings_udp_back
run_test "UDP download: no HEAD before the session, ends with udpd's CLOSE(unchanged), no DELETE" test_udp_download_end_confirmed
run_test "UDP download without HEAD: directory, missing file, --overwrite never as before" test_udp_download_without_head_edge_cases
run_test "a file rewritten during a UDP download: noticed, fetched again" test_udp_download_of_a_changing_file
run_test "10 transfers at once: UDP, HTTPS and switching" test_ten_at_once
run_test "fbcp killed during UDP transfers: resumed over UDP" test_killed_fbcp_resumes_over_udp
run_test "--fallback=never with udpd down: exit 4, Connection lost" test_never_with_udpd_down_fails
finish
