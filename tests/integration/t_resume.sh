#!/bin/bash
# t_resume: interrupted transfers resume without re-sending what the server already has.
# fbcp is killed with SIGKILL mid-upload (slowed with --limit-rate), then run again: the file
# ends identical and the second run sends at most what the server reported missing right after
# the kill plus one chunk per connection. Also an interrupted download resumes.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=4
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$T_TMP/src
mkdir -p "$SRC"
CONNS=4

# session_id_of JSONFILE REMOTE: the session id from fbcp's events, or from fbctl sessions.
session_id_of() {
    local id
    id=$(jq -r 'select(.event == "start") | (.session // .session_id // .id // empty)' "$1" 2>/dev/null | head -n1)
    if [ -z "$id" ] && [ -x "$FBCTL" ]; then
        id=$("$FBCTL" -c "$DS_DIR/fallback.xml" sessions --json 2>/dev/null |
            jq -r --arg p "$2" '(if type == "array" then .[] else (.sessions[]? // .) end)
                | select(.path == $p) | .id' 2>/dev/null | head -n1)
    fi
    printf '%s' "$id"
}

test_kill_and_resume_upload() {
    local size=$((20 * CHUNK)) pid id missing rc sent st
    require_fbcp
    mkrand "$SRC/k.bin" "$size"
    fbcp_bg "$T_TMP/run1.json" "$T_TMP/run1.err" --json --connections $CONNS --limit-rate 4M "$SRC/k.bin" "$URL/k.bin"
    pid=$FBCP_PID
    sleep 2
    kill -0 "$pid" 2>/dev/null || fail "fbcp ended before the kill (rate limit not applied?): $(cat "$T_TMP/run1.err")"
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null
    sleep 0.5 # let Apache notice the dropped connections and checkpoint
    assert_no_file "$DOCROOT/k.bin"
    assert_file_exists "$DOCROOT/.k.bin.fbpart"
    id=$(session_id_of "$T_TMP/run1.json" k.bin)
    if [ -n "$id" ]; then
        st=$(api GET "sessions/$id")
        assert_eq 200 "$st" "GET sessions/$id after the kill"
    else
        note "no session id from fbcp --json or fbctl sessions; asking with a resuming POST"
        id=$(new_session k.bin "$size" ",\"sha256\":\"$(sha "$SRC/k.bin")\"") || exit 1
        assert_eq true "$(jq -r .resumed "$BODY")" "resumed"
    fi
    missing=$(missing_bytes)
    note "missing after the kill: $missing of $size bytes"
    [ "$missing" -lt "$size" ] || fail "nothing was received before the kill (missing $missing)"
    [ "$missing" -gt 0 ] || fail "everything arrived before the kill; slow the first run down"
    fbcp --json --connections $CONNS "$SRC/k.bin" "$URL/k.bin" >"$T_TMP/run2.json" 2>"$T_TMP/run2.err"
    rc=$?
    assert_eq 0 "$rc" "second run exit code ($(tail -n 3 "$T_TMP/run2.err"))"
    assert_file_same "$SRC/k.bin" "$DOCROOT/k.bin"
    sent=$(jq -r 'select(.event == "done") | .bytes_http' "$T_TMP/run2.json" | head -n1)
    [ -n "$sent" ] || sent=$(jq -r 'select(.event == "summary") | .bytes_http' "$T_TMP/run2.json" | head -n1)
    [[ "$sent" =~ ^[0-9]+$ ]] || fail "no bytes_http in the second run's done/summary event"
    note "second run sent $sent bytes over HTTP (bound $missing + $CONNS chunks)"
    assert_le "$sent" $((missing + CONNS * CHUNK)) "bytes sent by the second run"
    assert_eq true "$(jq -r 'select(.event == "start") | .resumed' "$T_TMP/run2.json" | head -n1)" \
        "start event of the second run says resumed"
    assert_no_file "$DOCROOT/.k.bin.fbpart"
    assert_no_file "$DOCROOT/.k.bin.fbpart.ckpt"
}

test_sigint_exit_code() {
    local pid rc
    require_fbcp
    mkrand "$SRC/int.bin" $((8 * CHUNK))
    fbcp_bg /dev/null "$T_TMP/int.err" --limit-rate 1M "$SRC/int.bin" "$URL/int.bin"
    pid=$FBCP_PID
    sleep 1
    kill -INT "$pid"
    wait "$pid"
    rc=$?
    assert_eq 130 "$rc" "exit code after SIGINT"
    assert_no_file "$DOCROOT/int.bin"
    # And it resumes.
    fbcp "$SRC/int.bin" "$URL/int.bin" 2>"$T_TMP/int2.err" || fail "resume after SIGINT: $(cat "$T_TMP/int2.err")"
    assert_file_same "$SRC/int.bin" "$DOCROOT/int.bin"
}

# start_download NAME SIZE RATE: a settled file in the docroot and fbcp downloading it, slowed.
start_download() {
    mkdir -p "$DOCROOT/dl" "$T_TMP/back"
    mkrand "$DOCROOT/dl/$1" "$2"
    touch -d '-1 min' "$DOCROOT/dl/$1" # settled: a strong ETag (see t_transfer for fresh files)
    docroot_chown "$DOCROOT/dl"
    fbcp_bg "$T_TMP/$1.1.json" "$T_TMP/$1.1.err" --json --connections $CONNS --limit-rate "$3" \
        "$URL/dl/$1" "$T_TMP/back/$1"
}

# finish_download NAME: run the download again; it must resume (skip what the first run kept),
# end identical, and send only the rest.
finish_download() {
    local name=$1 size rc sent skipped
    size=$(stat -c %s "$DOCROOT/dl/$name")
    assert_no_file "$T_TMP/back/$name"
    assert_file_exists "$T_TMP/back/.$name.fbpart"
    assert_file_exists "$T_TMP/back/.$name.fbpart.json"
    fbcp --json --connections $CONNS "$URL/dl/$name" "$T_TMP/back/$name" >"$T_TMP/$name.2.json" 2>"$T_TMP/$name.2.err"
    rc=$?
    assert_eq 0 "$rc" "second download ($(tail -n 3 "$T_TMP/$name.2.err"))"
    assert_file_same "$DOCROOT/dl/$name" "$T_TMP/back/$name"
    assert_eq true "$(jq -r 'select(.event == "start") | .resumed' "$T_TMP/$name.2.json")" "resumed"
    sent=$(jq -r 'select(.event == "done") | .bytes_http' "$T_TMP/$name.2.json" | head -n1)
    skipped=$(jq -r 'select(.event == "done") | .bytes_skipped' "$T_TMP/$name.2.json" | head -n1)
    if ! [[ "$sent" =~ ^[0-9]+$ ]] || ! [[ "$skipped" =~ ^[0-9]+$ ]]; then fail "no bytes_http/bytes_skipped in the done event"; fi
    note "second download: $skipped bytes kept, $sent bytes fetched of $size"
    [ "$skipped" -gt 0 ] || fail "nothing of the first run was kept"
    assert_eq "$size" $((sent + skipped)) "fetched + kept"
    assert_no_file "$T_TMP/back/.$name.fbpart"
    assert_no_file "$T_TMP/back/.$name.fbpart.json"
}

test_sigint_and_resume_download() {
    # SIGINT: fbcp writes its sidecar on the way out, so the rerun fetches only the rest.
    local pid rc
    require_fbcp
    start_download i.bin $((20 * CHUNK)) 4M
    pid=$FBCP_PID
    sleep 2
    kill -0 "$pid" 2>/dev/null || fail "download ended before the interrupt"
    kill -INT "$pid"
    wait "$pid"
    rc=$?
    assert_eq 130 "$rc" "exit code after SIGINT"
    finish_download i.bin
}

test_kill_and_resume_download() {
    # SIGKILL: only the last periodic checkpoint (every 64 MiB, docs/fbcp.md) survives, so the
    # first run must get well past 64 MiB before the kill.
    local pid
    require_fbcp
    start_download k.bin $((128 * CHUNK)) 32M
    pid=$FBCP_PID
    sleep 3
    kill -0 "$pid" 2>/dev/null || fail "download ended before the kill"
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null
    finish_download k.bin
}

ds_start_or_bail "all resume tests"

run_test "fbcp killed mid-upload resumes, sending only what is missing" test_kill_and_resume_upload
run_test "fbcp interrupted with SIGINT exits 130 and resumes" test_sigint_exit_code
run_test "fbcp interrupted mid-download resumes from its sidecar" test_sigint_and_resume_download
run_test "fbcp killed mid-download resumes from the last checkpoint" test_kill_and_resume_download
finish
