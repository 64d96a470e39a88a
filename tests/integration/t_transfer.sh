#!/bin/bash
# t_transfer: fbcp uploads and downloads over HTTPS on loopback with the real Apache and module:
# the edge sizes around one chunk, 100 MiB of random data, and a directory tree with -r; every
# file SHA-256 identical at both ends. Downloads are also checked with plain curl. The sending
# side of the HTTPS data connections (fbcp uploading, the module serving a file) is paced.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=2
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$T_TMP/src
BACK=$T_TMP/back
mkdir -p "$SRC" "$BACK"

# roundtrip SIZE NAME: fbcp up, compare in the docroot, fbcp down, compare, curl down, compare.
roundtrip() {
    local size=$1 name=$2 rc st
    require_fbcp
    mkrand "$SRC/$name" "$size"
    fbcp --json "$SRC/$name" "$URL/sizes/$name" >"$T_TMP/$name.up.json" 2>"$T_TMP/$name.up.err"
    rc=$?
    assert_eq 0 "$rc" "fbcp upload exit code ($(tail -n 3 "$T_TMP/$name.up.err"))"
    assert_file_same "$SRC/$name" "$DOCROOT/sizes/$name"
    jq -s -e 'map(select(.event == "done")) | length == 1' "$T_TMP/$name.up.json" >/dev/null ||
        fail "not one done event in the --json output: $(cat "$T_TMP/$name.up.json")"
    assert_eq "$(sha "$SRC/$name")" "$(jq -r 'select(.event == "done") | .sha256' "$T_TMP/$name.up.json")" \
        "sha256 in the done event"
    fbcp --json "$URL/sizes/$name" "$BACK/$name" >"$T_TMP/$name.down.json" 2>"$T_TMP/$name.down.err"
    rc=$?
    assert_eq 0 "$rc" "fbcp download exit code ($(tail -n 3 "$T_TMP/$name.down.err"))"
    assert_file_same "$SRC/$name" "$BACK/$name"
    # No partial file or sidecar is left behind on either side.
    assert_no_file "$DOCROOT/sizes/.$name.fbpart"
    [ -z "$(find "$BACK" -name ".$name.fbpart*")" ] || fail "download left $(find "$BACK" -name ".$name.fbpart*")"
    st=$(api GET "files/sizes/$name")
    assert_eq 200 "$st" "curl GET"
    assert_file_same "$SRC/$name" "$BODY"
}

test_0() { roundtrip 0 zero.bin; }
test_1() { roundtrip 1 one.bin; }
test_chunk_minus_1() { roundtrip $((CHUNK - 1)) cm1.bin; }
test_chunk() { roundtrip $CHUNK c.bin; }
test_chunk_plus_1() { roundtrip $((CHUNK + 1)) cp1.bin; }
test_100m() { roundtrip $((100 * CHUNK)) big.bin; }

test_connections_1_and_8() {
    local rc
    require_fbcp
    mkrand "$SRC/conn.bin" $((9 * CHUNK + 17))
    for c in 1 8; do
        fbcp --connections "$c" "$SRC/conn.bin" "$URL/sizes/conn$c.bin" 2>"$T_TMP/conn.err"
        rc=$?
        assert_eq 0 "$rc" "upload with $c connections ($(tail -n 2 "$T_TMP/conn.err"))"
        assert_file_same "$SRC/conn.bin" "$DOCROOT/sizes/conn$c.bin"
        fbcp --connections "$c" "$URL/sizes/conn$c.bin" "$BACK/conn$c.bin" 2>"$T_TMP/conn.err"
        rc=$?
        assert_eq 0 "$rc" "download with $c connections ($(tail -n 2 "$T_TMP/conn.err"))"
        assert_file_same "$SRC/conn.bin" "$BACK/conn$c.bin"
    done
}

test_tree() {
    local rc
    require_fbcp
    mkdir -p "$SRC/tree/a/b/c" "$SRC/tree/empty-dir-sibling" "$SRC/tree/d"
    mkrand "$SRC/tree/top.bin" 12345
    : >"$SRC/tree/empty.txt"
    mkrand "$SRC/tree/a/one.bin" $((CHUNK + 1))
    : >"$SRC/tree/a/b/empty2.txt"
    mkrand "$SRC/tree/a/b/c/deep.bin" 777
    mkrand "$SRC/tree/d/x.bin" 1
    printf 'some text\n' >"$SRC/tree/empty-dir-sibling/t.txt"
    fbcp -r "$SRC/tree" "$URL/" 2>"$T_TMP/tree.up.err"
    rc=$?
    assert_eq 0 "$rc" "fbcp -r upload ($(tail -n 3 "$T_TMP/tree.up.err"))"
    assert_tree_same "$SRC/tree" "$DOCROOT/tree"
    fbcp -r "$URL/tree" "$BACK/" 2>"$T_TMP/tree.down.err"
    rc=$?
    assert_eq 0 "$rc" "fbcp -r download ($(tail -n 3 "$T_TMP/tree.down.err"))"
    assert_tree_same "$SRC/tree" "$BACK/tree"
}

# The default policy, if_different, without a HEAD first: a file of more than 1 MiB is hashed
# while it is sent, so the session request (ask_digest) answers "target": "file" when a file of
# the same size is there; only then fbcp hashes its file before asking again, and the server skips
# an identical one. Another size is simply replaced. A file of at most 1 MiB is hashed before the
# first request, which carries the digest: an identical one is skipped in one request.
test_upload_again_is_idempotent() {
    local rc heads puts posts
    require_fbcp
    heads=$(access_count HEAD /files/)
    puts=$(access_count PUT /data)
    # Same content again: identical, skipped, no data sent, exit 0.
    fbcp -v --json "$SRC/cp1.bin" "$URL/sizes/cp1.bin" >"$T_TMP/again.json" 2>"$T_TMP/again.err"
    rc=$?
    assert_eq 0 "$rc" "second upload ($(tail -n 2 "$T_TMP/again.err"))"
    assert_file_same "$SRC/cp1.bin" "$DOCROOT/sizes/cp1.bin"
    assert_eq identical "$(jq -r 'select(.event == "skip") | .reason' "$T_TMP/again.json")" "skip event"
    grep -q "a file of this size is at sizes/cp1.bin: hashing before asking again" "$T_TMP/again.err" ||
        fail "no digest asked for: $(grep -i -e hash -e session "$T_TMP/again.err" | head -n 5)"
    assert_eq "$puts" "$(access_count PUT /data)" "PUT requests (no data for an identical file)"
    # A small file: one session request with the digest, skipped.
    posts=$(access_count POST /sessions)
    fbcp -v --json "$SRC/c.bin" "$URL/sizes/c.bin" >"$T_TMP/again1.json" 2>"$T_TMP/again1.err"
    rc=$?
    assert_eq 0 "$rc" "small file again ($(tail -n 2 "$T_TMP/again1.err"))"
    assert_eq identical "$(jq -r 'select(.event == "skip") | .reason' "$T_TMP/again1.json")" "skip event (small)"
    assert_eq $((posts + 1)) "$(access_count POST /sessions)" "session requests for a small identical file"
    # The same size, other content: hashed first, then replaced.
    mkrand "$SRC/c2.bin" "$(stat -c %s "$SRC/cp1.bin")"
    fbcp -v "$SRC/c2.bin" "$URL/sizes/cp1.bin" 2>"$T_TMP/again2.err"
    rc=$?
    assert_eq 0 "$rc" "same size, other content ($(tail -n 2 "$T_TMP/again2.err"))"
    assert_file_same "$SRC/c2.bin" "$DOCROOT/sizes/cp1.bin"
    grep -q "hashing before asking again" "$T_TMP/again2.err" || fail "the digest was not asked for"
    # Another size: nothing to compare, replaced without hashing first.
    mkrand "$SRC/c3.bin" $((CHUNK + 5000))
    fbcp -v "$SRC/c3.bin" "$URL/sizes/cp1.bin" 2>"$T_TMP/again3.err"
    rc=$?
    assert_eq 0 "$rc" "another size ($(tail -n 2 "$T_TMP/again3.err"))"
    assert_file_same "$SRC/c3.bin" "$DOCROOT/sizes/cp1.bin"
    if grep -q "hashing before asking again" "$T_TMP/again3.err"; then fail "hashed first for another size"; fi
    assert_eq "$heads" "$(access_count HEAD /files/)" "HEAD requests (none)"
    cp "$SRC/cp1.bin" "$DOCROOT/sizes/cp1.bin" # as before, for the tests after this one
}

# One file to a name without a trailing slash: no HEAD first, the session request finds out
# whether the name is a directory; onto an existing remote directory the file lands under its own
# name, like cp, also with the default policy (if_different), and there an identical file of the
# same size is skipped: into the directory first, the small file's digest with that request.
test_upload_to_a_name_or_a_directory() {
    local heads rc
    require_fbcp
    mkrand "$SRC/named.bin" 70000
    heads=$(access_count HEAD /files/)
    fbcp --overwrite always "$SRC/named.bin" "$URL/named/file.bin" 2>"$T_TMP/named.err"
    rc=$?
    assert_eq 0 "$rc" "upload to a new name ($(tail -n 3 "$T_TMP/named.err"))"
    assert_file_same "$SRC/named.bin" "$DOCROOT/named/file.bin"
    assert_eq "$heads" "$(access_count HEAD /files/)" "HEAD requests"
    fbcp -v --overwrite always "$SRC/named.bin" "$URL/named" 2>"$T_TMP/named.dir.err"
    rc=$?
    assert_eq 0 "$rc" "upload onto a directory ($(tail -n 3 "$T_TMP/named.dir.err"))"
    assert_file_same "$SRC/named.bin" "$DOCROOT/named/named.bin"
    [ -d "$DOCROOT/named" ] || fail "the directory was replaced"
    grep -q "named is a remote directory: uploading into it as named/named.bin" "$T_TMP/named.dir.err" ||
        fail "no second session request: $(grep -i -e session -e HEAD "$T_TMP/named.dir.err" | head -n 5)"
    assert_eq "$heads" "$(access_count HEAD /files/)" "HEAD requests"
    mkrand "$SRC/named2.bin" 1000
    cp "$SRC/named2.bin" "$SRC/named.bin"
    fbcp "$SRC/named.bin" "$URL/named" 2>"$T_TMP/named.ifd.err"
    rc=$?
    assert_eq 0 "$rc" "upload onto a directory, if_different ($(tail -n 3 "$T_TMP/named.ifd.err"))"
    assert_file_same "$SRC/named2.bin" "$DOCROOT/named/named.bin"
    fbcp -v --json "$SRC/named.bin" "$URL/named" >"$T_TMP/named.same.json" 2>"$T_TMP/named.same.err"
    rc=$?
    assert_eq 0 "$rc" "the same file onto the directory again ($(tail -n 3 "$T_TMP/named.same.err"))"
    grep -q "named is a remote directory: uploading into it as named/named.bin" "$T_TMP/named.same.err" ||
        fail "not into the directory: $(head -n 5 "$T_TMP/named.same.err")"
    # a small file: its digest went with the session request, so no question about it
    if grep -q "hashing before asking again" "$T_TMP/named.same.err"; then fail "a small file hashed twice"; fi
    assert_eq identical "$(jq -r 'select(.event == "skip") | .reason' "$T_TMP/named.same.json")" "skip event"
    assert_eq "$heads" "$(access_count HEAD /files/)" "HEAD requests"
}

test_download_fresh_file() {
    # Apache marks the ETag of a file modified within the last second weak, and a weak ETag
    # never matches If-Range (RFC 9110 13.1.5). A download that starts while the file is that
    # fresh and runs past the second must still complete (first seen as "the server sent the
    # whole file instead of the range").
    local rc i
    require_fbcp
    for i in 1 2 3; do
        mkrand "$DOCROOT/fresh$i.bin" $((4 * CHUNK))
        docroot_chown "$DOCROOT/fresh$i.bin"
        fbcp --connections 2 --limit-rate 3M "$URL/fresh$i.bin" "$BACK/fresh$i.bin" 2>"$T_TMP/fresh.err"
        rc=$?
        assert_eq 0 "$rc" "download $i of a fresh file ($(tail -n 2 "$T_TMP/fresh.err"))"
        assert_file_same "$DOCROOT/fresh$i.bin" "$BACK/fresh$i.bin"
    done
}

# paced_conn FILTER: an established TCP connection matching the ss FILTER has a maximum pacing
# rate set (ss prints "pacing_rate RATE/MAX"): fb_sock_tcp_pace was applied to it. A socket
# without one prints "pacing_rate RATE" alone.
paced_conn() {
    ss -tni state established "$1" 2>/dev/null | grep -Eq 'pacing_rate [0-9.]+[kMG]?bps/'
}

# expect_paced FILTER WHAT FBCP-ARGS...: while a rate-limited fbcp runs with FBCP-ARGS, a paced
# connection matching the ss FILTER shows up (WHAT names it in the failure).
expect_paced() {
    local filter=$1 what=$2 pid
    shift 2
    fbcp_bg "$T_TMP/pace.out" "$T_TMP/pace.err" --fallback=force --limit-rate 2M "$@"
    pid=$FBCP_PID
    wait_for 10 paced_conn "$filter" ||
        fail "no paced connection ($what): $(ss -tni state established "$filter")"
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true # killed: its status is not the point
}

# The sending side of every HTTPS data connection is paced by the kernel (docs/fbcp.md): fbcp's
# sockets while it uploads, the module's while it serves a file.
test_connections_are_paced() {
    require_fbcp
    command -v ss >/dev/null || skip "ss (iproute2) not installed"
    mkrand "$SRC/pace.bin" $((32 * CHUNK)) # 16 s at 2 MB/s: longer than the wait
    expect_paced "( dport = :$HTTPS_PORT )" "fbcp, uploading" --overwrite always "$SRC/pace.bin" "$URL/pace/pace.bin"
    cp "$SRC/pace.bin" "$DOCROOT/pace.bin"
    docroot_chown "$DOCROOT/pace.bin"
    touch -d '-1 minute' "$DOCROOT/pace.bin" # an older file: a strong ETag, If-Range as usual
    expect_paced "( sport = :$HTTPS_PORT )" "the module, serving a file" "$URL/pace.bin" "$BACK/pace.bin"
}

ds_start_or_bail "all fbcp transfer tests"

run_test "fbcp up/down 0 B" test_0
run_test "fbcp up/down 1 B" test_1
run_test "fbcp up/down 1048575 B" test_chunk_minus_1
run_test "fbcp up/down 1048576 B" test_chunk
run_test "fbcp up/down 1048577 B" test_chunk_plus_1
run_test "fbcp up/down 100 MiB random" test_100m
run_test "fbcp up/down with 1 and 8 connections" test_connections_1_and_8
run_test "fbcp -r directory tree up and down" test_tree
run_test "fbcp upload of the same file again" test_upload_again_is_idempotent
run_test "fbcp upload of one file: no HEAD, into an existing remote directory like cp" test_upload_to_a_name_or_a_directory
run_test "fbcp download of a file written a moment ago (weak ETag)" test_download_fresh_file
run_test "HTTPS data connections are paced on the sending side" test_connections_are_paced
finish
