#!/bin/bash
# t_restart: Apache restarts during transfers. A graceful restart (children of both generations
# share the session table) must not disturb an upload or a download; the session table and live
# sessions survive it; after a hard restart (stop + start) fbcp retries and completes from the
# checkpoint.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=5
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$T_TMP/src
mkdir -p "$SRC" "$T_TMP/back"

test_graceful_mid_upload() {
    local pid rc
    require_fbcp
    mkrand "$SRC/g.bin" $((24 * CHUNK))
    fbcp_bg "$T_TMP/g.json" "$T_TMP/g.err" --json --limit-rate 8M "$SRC/g.bin" "$URL/g.bin"
    pid=$FBCP_PID
    sleep 1.5
    kill -0 "$pid" 2>/dev/null || fail "upload ended before the graceful restart"
    "$DEVSERVER" graceful --dir "$DS_DIR" --quiet || fail "graceful failed"
    sleep 0.5
    "$DEVSERVER" graceful --dir "$DS_DIR" --quiet || fail "second graceful failed"
    wait "$pid"
    rc=$?
    assert_eq 0 "$rc" "fbcp exit code ($(tail -n 3 "$T_TMP/g.err"))"
    assert_file_same "$SRC/g.bin" "$DOCROOT/g.bin"
}

test_graceful_mid_download() {
    local pid rc
    require_fbcp
    mkrand "$DOCROOT/gd.bin" $((24 * CHUNK))
    touch -d '-1 min' "$DOCROOT/gd.bin" # settled: a strong ETag (see t_transfer for fresh files)
    docroot_chown "$DOCROOT/gd.bin"
    fbcp_bg "$T_TMP/gd.json" "$T_TMP/gd.err" --json --limit-rate 8M "$URL/gd.bin" "$T_TMP/back/gd.bin"
    pid=$FBCP_PID
    sleep 1.5
    kill -0 "$pid" 2>/dev/null || fail "download ended before the graceful restart"
    "$DEVSERVER" graceful --dir "$DS_DIR" --quiet || fail "graceful failed"
    wait "$pid"
    rc=$?
    assert_eq 0 "$rc" "fbcp exit code ($(tail -n 3 "$T_TMP/gd.err"))"
    assert_file_same "$DOCROOT/gd.bin" "$T_TMP/back/gd.bin"
}

test_session_survives_graceful() {
    local id st size=$((3 * CHUNK)) shm_inode1 shm_inode2 shm
    mkrand "$SRC/s.bin" "$size"
    id=$(new_session s.bin "$size") || exit 1
    st=$(put_range "$id" "$SRC/s.bin" 0 $((CHUNK - 1)))
    assert_eq 200 "$st" "PUT chunk 0"
    shm=$(sed -n 's:.*<shm_path>\(.*\)</shm_path>.*:\1:p' "$DS_DIR/fallback.xml")
    assert_file_exists "$shm"
    shm_inode1=$(stat -c %i "$shm")
    "$DEVSERVER" graceful --dir "$DS_DIR" --quiet || fail "graceful failed"
    shm_inode2=$(stat -c %i "$shm")
    assert_eq "$shm_inode1" "$shm_inode2" "session table inode after graceful (never recreated)"
    st=$(api GET "sessions/$id")
    assert_eq 200 "$st" "GET session after graceful"
    assert_eq "$CHUNK" "$(jbody .received_bytes)" "received bytes kept"
    st=$(put_range "$id" "$SRC/s.bin" $CHUNK $((size - 1)))
    assert_eq 200 "$st" "PUT the rest after graceful"
    st=$(commit "$id" "$(sha "$SRC/s.bin")")
    assert_eq 200 "$st" "commit after graceful"
    assert_file_same "$SRC/s.bin" "$DOCROOT/s.bin"
}

test_hard_restart_mid_upload() {
    local pid rc
    require_fbcp
    mkrand "$SRC/h.bin" $((24 * CHUNK))
    fbcp_bg "$T_TMP/h.json" "$T_TMP/h.err" --json --retries 20 --limit-rate 8M "$SRC/h.bin" "$URL/h.bin"
    pid=$FBCP_PID
    sleep 1.5
    kill -0 "$pid" 2>/dev/null || fail "upload ended before the restart"
    ds_stop || fail "stop failed"
    sleep 1
    ds_start || fail "start failed"
    wait "$pid"
    rc=$?
    assert_eq 0 "$rc" "fbcp exit code after a hard restart ($(tail -n 3 "$T_TMP/h.err"))"
    assert_file_same "$SRC/h.bin" "$DOCROOT/h.bin"
}

test_checkpoint_survives_lost_table() {
    # The table is a cache: with Apache stopped and the table file removed (machine reboot),
    # a new session for the same path and size resumes from the checkpoint beside the partial.
    local id st size=$((4 * CHUNK)) shm
    mkrand "$SRC/c.bin" "$size"
    id=$(new_session c.bin "$size") || exit 1
    st=$(put_range "$id" "$SRC/c.bin" 0 $((2 * CHUNK - 1)))
    assert_eq 200 "$st" "PUT chunks 0-1"
    shm=$(sed -n 's:.*<shm_path>\(.*\)</shm_path>.*:\1:p' "$DS_DIR/fallback.xml")
    ds_stop --clean || fail "stop failed"
    assert_no_file "$shm"
    ds_start || fail "start failed"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"c.bin\",\"size\":$size}")
    assert_eq 200 "$st" "resuming POST after the table was lost"
    assert_eq true "$(jq -r .resumed "$BODY")" "resumed"
    assert_eq "[[$((2 * CHUNK)),$((2 * CHUNK))]]" "$(jq -c .missing "$BODY")" "missing from the checkpoint"
    id=$(jbody .id)
    st=$(put_range "$id" "$SRC/c.bin" $((2 * CHUNK)) $((size - 1)))
    assert_eq 200 "$st" "PUT the rest"
    st=$(commit "$id" "$(sha "$SRC/c.bin")")
    assert_eq 200 "$st" "commit"
    assert_file_same "$SRC/c.bin" "$DOCROOT/c.bin"
}

test_table_deleted_mid_upload() {
    # DESIGN fault test: the segment is deleted during a transfer and Apache restarted
    # (stop + start: the new server makes a new, empty table). fbcp's session is gone (404); it
    # creates a new one, the server resumes from the checkpoint, and the file ends identical.
    local pid rc shm
    require_fbcp
    mkrand "$SRC/t.bin" $((24 * CHUNK))
    shm=$(sed -n 's:.*<shm_path>\(.*\)</shm_path>.*:\1:p' "$DS_DIR/fallback.xml")
    fbcp_bg "$T_TMP/t.json" "$T_TMP/t.err" --json --retries 20 --limit-rate 8M "$SRC/t.bin" "$URL/t.bin"
    pid=$FBCP_PID
    sleep 1.5
    kill -0 "$pid" 2>/dev/null || fail "upload ended before the table was deleted"
    ds_stop || fail "stop failed"
    rm -f "$shm"
    ds_start || fail "start failed"
    wait "$pid"
    rc=$?
    assert_eq 0 "$rc" "fbcp exit code after the table was lost ($(tail -n 3 "$T_TMP/t.err"))"
    assert_file_same "$SRC/t.bin" "$DOCROOT/t.bin"
}

ds_start_or_bail "all restart tests"

run_test "graceful restart mid-upload: upload completes identical" test_graceful_mid_upload
run_test "graceful restart mid-download: download completes identical" test_graceful_mid_download
run_test "session and session table survive graceful" test_session_survives_graceful
run_test "hard restart mid-upload: fbcp retries and completes" test_hard_restart_mid_upload
run_test "checkpoint resumes after the session table is lost" test_checkpoint_survives_lost_table
run_test "session table deleted mid-upload: fbcp re-creates the session and completes" test_table_deleted_mid_upload
finish
