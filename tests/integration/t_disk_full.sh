#!/bin/bash
# t_disk_full: the docroot is a small tmpfs (8 MiB); a 16 MiB upload must fail with the disk_full
# exit code and the message "No space left on the server's disk", leave the target absent and
# keep the partial file (and its completed chunks) for a later resume; a curl PUT gets 507
# disk_full. Skipped (with a "skip" line) where mounting a tmpfs is not permitted.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=8
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$T_TMP/src
SMALL=$T_TMP/small
mkdir -p "$SRC" "$SMALL"
MOUNTED=0
if mount -t tmpfs -o size=8m,mode=0755 fbtest-small "$SMALL" 2>"$T_TMP/mount.err"; then
    MOUNTED=1
    T_CLEANUP_EXTRA="umount '$SMALL'"
fi

need_mount() {
    [ "$MOUNTED" = 1 ] || skip "mount -t tmpfs not permitted here: $(head -n1 "$T_TMP/mount.err")"
}

test_fbcp_disk_full() {
    local rc want msg
    need_mount
    require_fbcp
    mkrand "$SRC/big.bin" $((16 * CHUNK))
    fbcp --json "$SRC/big.bin" "$URL/big.bin" >"$T_TMP/full.json" 2>"$T_TMP/full.err"
    rc=$?
    want=$(exit_code_of disk_full)
    msg=$(message_of disk_full)
    assert_eq "No space left on the server's disk" "$msg" "message in lib/fb_err.h"
    assert_eq "$want" "$rc" "fbcp exit code ($(tail -n 2 "$T_TMP/full.err"))"
    grep -qF "$msg" "$T_TMP/full.err" || fail "stderr lacks \"$msg\": $(cat "$T_TMP/full.err")"
    assert_eq disk_full "$(jq -r 'select(.event == "error") | .code' "$T_TMP/full.json" | head -n1)" \
        "code in the error event"
    assert_no_file "$SMALL/big.bin"
    assert_file_exists "$SMALL/.big.bin.fbpart"
}

test_put_gives_507() {
    local id st size=$((6 * CHUNK)) first last i
    need_mount
    # The refused upload of the previous test left at most an empty partial file.
    if [ -e "$SMALL/.big.bin.fbpart" ]; then
        assert_eq 0 "$(stat -c %s "$SMALL/.big.bin.fbpart")" "nothing written by the refused upload"
        rm -f "$SMALL/.big.bin.fbpart"
    fi
    mkrand "$SRC/p.bin" "$size"
    id=$(new_session p.bin "$size") || exit 1
    st=$(put_range "$id" "$SRC/p.bin" 0 $((CHUNK - 1)))
    assert_eq 200 "$st" "first chunk fits"
    # Someone else fills the disk while the upload runs.
    dd if=/dev/zero of="$SMALL/filler" bs=1M count=8 2>/dev/null || true
    for ((i = 1; i < 6; i++)); do
        first=$((i * CHUNK))
        last=$((first + CHUNK - 1))
        st=$(put_range "$id" "$SRC/p.bin" "$first" "$last")
        [ "$st" = 200 ] || break
    done
    rm -f "$SMALL/filler"
    assert_problem 507 disk_full "$st"
    assert_no_file "$SMALL/p.bin"
    assert_file_exists "$SMALL/.p.bin.fbpart"
    # The chunks written before the disk filled stay complete.
    st=$(api GET "sessions/$id")
    assert_eq 200 "$st" "GET session"
    [ "$(jbody .received_bytes)" -ge "$CHUNK" ] || fail "completed chunks lost: $(cat "$BODY")"
    # Cancel frees the space.
    st=$(api DELETE "sessions/$id")
    assert_eq 204 "$st" "DELETE"
    assert_no_file "$SMALL/.p.bin.fbpart"
}

test_server_healthy_after() {
    local rc
    need_mount
    require_fbcp
    mkrand "$SRC/small.bin" $((2 * CHUNK + 5))
    fbcp "$SRC/small.bin" "$URL/small.bin" 2>"$T_TMP/small.err"
    rc=$?
    assert_eq 0 "$rc" "small upload after disk full ($(tail -n 2 "$T_TMP/small.err"))"
    assert_file_same "$SRC/small.bin" "$SMALL/small.bin"
}

if [ "$MOUNTED" = 1 ]; then
    ds_start_or_bail "all disk full tests" --docroot "$SMALL"
fi
run_test "fbcp upload larger than the free space: refused at once, disk_full exit code and message" test_fbcp_disk_full
run_test "PUT onto a full disk: 507 disk_full, completed chunks kept" test_put_gives_507
run_test "uploads work again once there is room" test_server_healthy_after
finish
