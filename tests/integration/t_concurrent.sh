#!/bin/bash
# t_concurrent: 20 fbcp uploads at once (2-5 MiB each, sizes not chunk-aligned), then 20 downloads
# at once; every file identical. Exercises the shared session table from many Apache threads.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=6
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$T_TMP/src
N=20
mkdir -p "$SRC" "$T_TMP/back"

test_20_uploads() {
    local i pids=() rc=0 size
    require_fbcp
    for ((i = 0; i < N; i++)); do
        size=$(((2 + i % 4) * CHUNK + i * 4099))
        mkrand "$SRC/f$i.bin" "$size"
    done
    for ((i = 0; i < N; i++)); do
        fbcp_bg /dev/null "$T_TMP/up$i.err" "$SRC/f$i.bin" "$URL/conc/f$i.bin"
        pids+=("$FBCP_PID")
    done
    for ((i = 0; i < N; i++)); do
        if ! wait "${pids[$i]}"; then
            note "upload $i failed: $(tail -n 2 "$T_TMP/up$i.err")"
            rc=1
        fi
    done
    assert_eq 0 "$rc" "every upload exits 0"
    for ((i = 0; i < N; i++)); do
        assert_file_same "$SRC/f$i.bin" "$DOCROOT/conc/f$i.bin"
    done
    [ -z "$(find "$DOCROOT/conc" -name '*.fbpart*')" ] || fail "partial files left: $(find "$DOCROOT/conc" -name '*.fbpart*')"
}

test_20_downloads() {
    local i pids=() rc=0
    require_fbcp
    for ((i = 0; i < N; i++)); do
        fbcp_bg /dev/null "$T_TMP/down$i.err" "$URL/conc/f$i.bin" "$T_TMP/back/f$i.bin"
        pids+=("$FBCP_PID")
    done
    for ((i = 0; i < N; i++)); do
        if ! wait "${pids[$i]}"; then
            note "download $i failed: $(tail -n 2 "$T_TMP/down$i.err")"
            rc=1
        fi
    done
    assert_eq 0 "$rc" "every download exits 0"
    for ((i = 0; i < N; i++)); do
        assert_file_same "$SRC/f$i.bin" "$T_TMP/back/f$i.bin"
    done
}

test_same_target_twice_at_once() {
    # Two uploads of different content and equal size to one path at once: the target is one
    # of the two whole files (the one whose fbcp succeeded), never a mix.
    local p1 p2 rc1 rc2 h
    require_fbcp
    mkrand "$SRC/a.bin" $((3 * CHUNK))
    mkrand "$SRC/b.bin" $((3 * CHUNK))
    fbcp_bg /dev/null "$T_TMP/a.err" "$SRC/a.bin" "$URL/conc/same.bin"
    p1=$FBCP_PID
    fbcp_bg /dev/null "$T_TMP/b.err" "$SRC/b.bin" "$URL/conc/same.bin"
    p2=$FBCP_PID
    wait "$p1"
    rc1=$?
    wait "$p2"
    rc2=$?
    note "exit codes $rc1 and $rc2"
    if [ "$rc1" != 0 ] && [ "$rc2" != 0 ]; then
        # Both may be refused (same path and size: the second resumes the first's session and
        # the digests then disagree), but then nothing may be in place.
        assert_no_file "$DOCROOT/conc/same.bin"
        return 0
    fi
    h=$(sha "$DOCROOT/conc/same.bin")
    assert_in "$h" "$(sha "$SRC/a.bin")" "$(sha "$SRC/b.bin")"
    if [ "$rc1" = 0 ] && [ "$rc2" != 0 ]; then assert_eq "$(sha "$SRC/a.bin")" "$h" "content of the winner"; fi
    if [ "$rc2" = 0 ] && [ "$rc1" != 0 ]; then assert_eq "$(sha "$SRC/b.bin")" "$h" "content of the winner"; fi
}

ds_start_or_bail "all concurrency tests"

run_test "20 fbcp uploads at once, all identical" test_20_uploads
run_test "20 fbcp downloads at once, all identical" test_20_downloads
run_test "two uploads to one path at once never mix" test_same_target_twice_at_once
finish
