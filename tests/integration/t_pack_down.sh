#!/bin/bash
# t_pack_down: download packs (docs/HTTP-API.md, "Download packs"): many small files fetched as
# one download session, against the real Apache, module and udpd (FallbackDaemon on).
#   - curl: the pack answer (per entry offset, size, sha256, mtime, mtime_ns, mode; errors per
#     entry for a missing file, a directory, a path escape, a symlink out of the docroot), the
#     pack's bytes and digest from GET sessions/{id}/data (Range too), another user cannot read
#     them, the staging file is never listed nor reachable through files/ nor nameable in a pack,
#     DELETE removes it, stale ones are swept, bad requests are refused;
#   - fbcp -r down of a tree of a few hundred small files and a few bigger ones, over UDP and with
#     --fallback force: identical (diff -r), times kept, the small files moved in packs, the
#     second run skips every file; a server answering 404 to packs gets the files one by one.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=36
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

UDPD_BUILT=${UDPD:-$SRCDIR/udpd/udpd}
UDPD=$T_TMP/bin/udpd
PACK_DIR=..fbpack-down.fbpart.fbpart

# pack_post ROOT JSON-ARRAY: POST sessions for a download pack; prints the status.
pack_post() {
    api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"download\",\"path\":\"$1\",\"pack\":$2}"
}

staging_files() {
    find "$DOCROOT/$PACK_DIR" -type f 2>/dev/null | wc -l
}

# mtime_of FILE: "seconds nanoseconds", as JSON integers print them (no leading zeros: 18373810,
# not 018373810)
mtime_of() {
    stat -c '%.9Y' "$1" | awk -F. '{ printf "%s %d\n", $1, $2 }'
}

test_pack_answer() {
    local st id p=$DOCROOT/p want got i
    mkdir -p "$p/sub" "$p/dir"
    printf 'hello pack\n' >"$p/a.txt"
    chmod 640 "$p/a.txt"
    touch -d '2021-02-03 04:05:06.123456789' "$p/a.txt"
    mkrand "$p/sub/b.bin" 3000
    : >"$p/empty"
    ln -s a.txt "$p/in"
    ln -s /etc/hostname "$p/out"
    docroot_chown "$p"
    st=$(pack_post p '[{"path":"a.txt"},{"path":"sub/b.bin"},{"path":"empty"},{"path":"missing.txt"},{"path":"dir"},{"path":"out"},{"path":"../escape.txt"},{"path":"/etc/passwd"},{"path":"in"}]')
    assert_eq 201 "$st" "pack answer: $(head -c 300 "$BODY")"
    cp "$BODY" "$T_TMP/pack.json"
    id=$(jbody .id)
    assert_eq p "$(jbody .path)" "the pack's path is its root"
    assert_eq 9 "$(jq '.pack | length' "$T_TMP/pack.json")" "one element per entry"
    assert_eq "a.txt|0|11|0640|$(sha "$p/a.txt")|1612325106|123456789" \
        "$(jq -r '.pack[0] | [.path, .offset, .size, .mode, .sha256, .mtime, .mtime_ns] | join("|")' "$T_TMP/pack.json")" "entry 0"
    assert_eq "sub/b.bin|11|3000|$(sha "$p/sub/b.bin")" \
        "$(jq -r '.pack[1] | [.path, .offset, .size, .sha256] | join("|")' "$T_TMP/pack.json")" "entry 1"
    assert_eq "$(mtime_of "$p/sub/b.bin")" "$(jq -r '.pack[1] | "\(.mtime) \(.mtime_ns)"' "$T_TMP/pack.json")" "entry 1 mtime"
    assert_eq "empty|3011|0|$(sha "$p/empty")" \
        "$(jq -r '.pack[2] | [.path, .offset, .size, .sha256] | join("|")' "$T_TMP/pack.json")" "entry 2 (empty)"
    assert_eq "not_found|not_found|path_escape|path_escape|path_escape" \
        "$(jq -r '[.pack[3,4,5,6,7].error] | join("|")' "$T_TMP/pack.json")" "errors of missing, dir, out, .., absolute"
    assert_eq "in|3011|11|$(sha "$p/a.txt")" \
        "$(jq -r '.pack[8] | [.path, .offset, .size, .sha256] | join("|")' "$T_TMP/pack.json")" "a symlink inside is followed"
    cat "$p/a.txt" "$p/sub/b.bin" "$p/a.txt" >"$T_TMP/pack.want"
    assert_eq 3022 "$(jbody .size)" "pack size"
    assert_eq "$(sha "$T_TMP/pack.want")" "$(jq -r .sha256 "$T_TMP/pack.json")" "pack sha256"
    [ -n "$(jq -r '.key // empty' "$T_TMP/pack.json")" ] || fail "no key"

    # the bytes over HTTP(S): whole, and a range
    st=$(api GET "sessions/$id/data")
    assert_eq 200 "$st" "GET data"
    assert_file_same "$T_TMP/pack.want" "$BODY"
    st=$(api GET "sessions/$id/data" -H 'Range: bytes=5-2000')
    assert_eq 206 "$st" "GET data with Range"
    assert_eq "bytes 5-2000/3022" "$(header Content-Range)" "Content-Range"
    tail -c +6 "$T_TMP/pack.want" | head -c 1996 >"$T_TMP/range.want"
    assert_file_same "$T_TMP/range.want" "$BODY"
    # another user: the session does not exist for them
    "$DEVSERVER" adduser bob bob-password --dir "$DS_DIR" --quiet || fail "adduser failed"
    st=$(api_as bob bob-password GET "sessions/$id/data")
    assert_problem 404 not_found "$st"

    # the staging file: one, never listed, never reachable by name
    assert_eq 1 "$(staging_files)" "staging files"
    name=$(basename "$(find "$DOCROOT/$PACK_DIR" -type f)")
    st=$(api GET files/)
    assert_eq 200 "$st" "listing"
    assert_eq "" "$(jq -r '.entries[].name | select(startswith("."))' "$BODY")" "hidden names listed"
    st=$(api GET "files/$PACK_DIR/$name")
    assert_problem 404 not_found "$st"
    st=$(api GET "files/$PACK_DIR/")
    assert_problem 404 not_found "$st"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"download\",\"path\":\"$PACK_DIR/$name\"}")
    assert_problem 400 bad_path "$st"
    st=$(pack_post "" "[{\"path\":\"$PACK_DIR/$name\"}]")
    assert_eq 200 "$st" "a pack naming the staging file"
    assert_eq "bad_path|0" "$(jq -r '"\(.pack[0].error)|\(.size)"' "$BODY")" "refused per entry, no session"
    assert_eq "" "$(jbody .id)" "no session for an empty pack"

    # DELETE ends the session and removes the staging file
    st=$(api DELETE "sessions/$id")
    assert_eq 204 "$st" "DELETE"
    assert_eq 0 "$(staging_files)" "staging files after DELETE"
    st=$(api GET "sessions/$id/data")
    assert_problem 404 not_found "$st"
}

test_pack_refusals() {
    local st big
    mkdir -p "$DOCROOT/r"
    printf x >"$DOCROOT/r/x"
    docroot_chown "$DOCROOT/r"
    st=$(pack_post r '[{"path":"x"},{"path":"x/"}]')
    assert_problem 400 bad_request "$st"
    [[ "$(jbody .detail)" == *"'r/x' twice"* ]] || fail "the duplicate is not named: $(jbody .detail)"
    st=$(pack_post r '[]')
    assert_problem 400 bad_request "$st"
    st=$(pack_post r '{"path":"x"}')
    assert_problem 400 bad_request "$st"
    st=$(pack_post r '[{"name":"x"}]')
    assert_problem 400 bad_request "$st"
    st=$(pack_post ../r '[{"path":"x"}]')
    assert_problem 403 path_escape "$st"
    # an upload session's data is not read with GET
    id=$(new_session up.bin 10)
    st=$(api GET "sessions/$id/data")
    assert_problem 405 method_not_allowed "$st"
    assert_eq PUT "$(header Allow)" "Allow"
    assert_eq 0 "$(staging_files)" "staging files left by refused packs"
}

test_pack_entry_limit() {
    local st xml=$T_TMP/big-json.xml
    # 10,000 entries are allowed, 10,001 are not (a body limit big enough for both)
    ds_stop
    sed -e 's|</sessions>|<max_json_body>262144</max_json_body></sessions>|' "$DS_DIR/fallback.xml" >"$xml"
    grep -q '<max_json_body>262144' "$xml" || fail "could not set max_json_body"
    ds_start --extra-conf "$T_TMP/daemon.conf" --fallback-xml "$xml" || fail "devserver did not start"
    jq -cn '{direction: "download", path: "", pack: [range(10001) | {path: "n\(.)"}]}' >"$T_TMP/10001.json"
    jq -c '.pack |= .[:10000]' "$T_TMP/10001.json" >"$T_TMP/10000.json"
    st=$(api POST sessions -H 'Content-Type: application/json' --data-binary "@$T_TMP/10001.json")
    assert_problem 413 too_large "$st"
    assert_in "a pack has at most 10000 entries" "$(jbody .detail)"
    st=$(api POST sessions -H 'Content-Type: application/json' --data-binary "@$T_TMP/10000.json")
    assert_eq 200 "$st" "10,000 entries (all missing: no session)"
    assert_eq 10000 "$(jq '[.pack[] | select(.error == "not_found")] | length' "$BODY")" "per-entry errors"
    ds_stop
    ds_start --extra-conf "$T_TMP/daemon.conf" || fail "devserver did not start again"
}

test_stale_staging_swept() {
    local st old=0123456789abcdef0123456789abcdef fresh=fedcba9876543210fedcba9876543210
    mkdir -p "$DOCROOT/$PACK_DIR" "$DOCROOT/s"
    printf 'old\n' >"$DOCROOT/$PACK_DIR/$old"
    printf 'fresh\n' >"$DOCROOT/$PACK_DIR/$fresh"
    printf 'not ours\n' >"$DOCROOT/$PACK_DIR/keep.txt"
    # older than idle_timeout (86400 s): a killed client's
    touch -d '3 days ago' "$DOCROOT/$PACK_DIR/$old" "$DOCROOT/$PACK_DIR/keep.txt"
    touch -d '2 hours ago' "$DOCROOT/$PACK_DIR/$fresh"
    printf 'data\n' >"$DOCROOT/s/f"
    docroot_chown "$DOCROOT/$PACK_DIR" "$DOCROOT/s"
    st=$(pack_post s '[{"path":"f"}]')
    assert_eq 201 "$st" "pack"
    assert_no_file "$DOCROOT/$PACK_DIR/$old"
    assert_file_exists "$DOCROOT/$PACK_DIR/$fresh"
    assert_file_exists "$DOCROOT/$PACK_DIR/keep.txt"
    grep -q 'FB00951: removed 1 download pack staging file' "$DS_DIR/error.log" ||
        fail "no log line for the sweep"
    st=$(api DELETE "sessions/$(jbody .id)")
    assert_eq 204 "$st" "DELETE"
    rm -f "$DOCROOT/$PACK_DIR/$fresh" "$DOCROOT/$PACK_DIR/keep.txt"
}

# json_tree FILE FIELD: the field of the one "tree" event in FILE.
json_tree() {
    jq -s -r "map(select(.event == \"tree\")) | if length == 1 then .[0].$2 else \"events: \\(length)\" end" "$1"
}

# times_of DIR: "relative-path seconds" of every file and directory below DIR, sorted.
times_of() {
    (cd "$1" && find . -mindepth 1 -printf '%p %Ts\n' | LC_ALL=C sort)
}

# The served tree: a few hundred small files (make-tree), one of exactly 1 MiB (the largest a
# pack takes), bigger ones that go alone.
make_served_tree() {
    local t=$DOCROOT/tree
    [ -d "$t" ] && return 0
    "$SRCDIR/bench/make-tree" "$t" --files 400 --depth 4 --empty-dirs 2 >/dev/null || fail "make-tree"
    mkrand "$t/exactly 1 MiB.bin" 1048576
    mkrand "$t/one byte more.bin" 1048577
    mkrand "$t/3 MiB.bin" 3145728
    touch -d '2022-03-04 05:06:07.5' "$t/exactly 1 MiB.bin"
    docroot_chown "$t"
    NFILES=$(find "$t" -type f | wc -l)
}

# fetch_tree MODE: fbcp -r of the served tree with --fallback MODE, twice.
fetch_tree() {
    local mode=$1 rc dest=$T_TMP/dest-$1 packs0 out
    require_fbcp
    make_served_tree
    NFILES=$(find "$DOCROOT/tree" -type f | wc -l)
    packs0=$(grep -c 'FB00950: download pack session' "$DS_DIR/error.log")
    mkdir -p "$dest"
    fbcp -r --fallback "$mode" --json "$URL/tree" "$dest/" >"$T_TMP/$mode.1.json" 2>"$T_TMP/$mode.1.err"
    rc=$?
    assert_eq 0 "$rc" "exit code ($(tail -n 3 "$T_TMP/$mode.1.err"))"
    assert_eq "$NFILES" "$(json_tree "$T_TMP/$mode.1.json" done)" "files done (tree event)"
    assert_eq 0 "$(json_tree "$T_TMP/$mode.1.json" failed)" "files failed"
    # every byte counted once (over UDP a big file's datagrams received twice count again)
    if [ "$mode" = force ]; then
        assert_eq "$(find "$DOCROOT/tree" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')" \
            "$(json_tree "$T_TMP/$mode.1.json" bytes)" "bytes (tree event)"
    else
        assert_ge "$(json_tree "$T_TMP/$mode.1.json" bytes)" \
            "$(find "$DOCROOT/tree" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')" "bytes (tree event)"
    fi
    assert_eq "$NFILES" "$(jq -s '[.[] | select(.event == "done")] | length' "$T_TMP/$mode.1.json")" "one done event per file"
    out=$(diff -r "$DOCROOT/tree" "$dest/tree" 2>&1 | head -n 5)
    [ -z "$out" ] || fail "trees differ: $out"
    out=$(diff <(times_of "$DOCROOT/tree") <(times_of "$dest/tree") | head -n 6)
    [ -z "$out" ] || fail "modification times differ (< server, > copy): $out"
    # a file of a pack keeps the nanoseconds too
    assert_eq "$(stat -c %.9Y "$DOCROOT/tree/exactly 1 MiB.bin")" "$(stat -c %.9Y "$dest/tree/exactly 1 MiB.bin")" \
        "nanoseconds of a packed file"
    [ -z "$(find "$dest" -name '.*fbpart*' | head -n 3)" ] || fail "partial files left locally"
    # the small files went in packs: a few sessions, not hundreds
    access_log_settled
    assert_ge "$(($(grep -c 'FB00950: download pack session' "$DS_DIR/error.log") - packs0))" 1 "pack sessions"
    assert_le "$(($(grep -c 'FB00950: download pack session' "$DS_DIR/error.log") - packs0))" 3 "pack sessions"
    if [ "$mode" = auto ]; then
        # the packed files' bytes came over UDP too
        assert_ge "$(jq -s '[.[] | select(.event == "done" and .total <= 16384 and .bytes_udp > 0)] | length' \
            "$T_TMP/$mode.1.json")" 300 "small files with bytes over UDP"
    else
        assert_eq 0 "$(json_tree "$T_TMP/$mode.1.json" bytes_udp)" "bytes over UDP with --fallback force"
        assert_ge "$(access_count GET /data)" 1 "GET sessions/{id}/data"
    fi
    assert_eq 0 "$(staging_files)" "staging files left on the server"

    # again: every file is there, identical: all skipped, nothing asked for in a pack
    packs0=$(grep -c 'FB00950: download pack session' "$DS_DIR/error.log")
    fbcp -r --fallback "$mode" --json "$URL/tree" "$dest/" >"$T_TMP/$mode.2.json" 2>"$T_TMP/$mode.2.err"
    rc=$?
    assert_eq 0 "$rc" "second run exit code ($(tail -n 3 "$T_TMP/$mode.2.err"))"
    assert_eq "$NFILES" "$(json_tree "$T_TMP/$mode.2.json" skipped)" "second run: files skipped"
    assert_eq 0 "$(json_tree "$T_TMP/$mode.2.json" bytes)" "second run: bytes moved"
    assert_eq "$packs0" "$(grep -c 'FB00950: download pack session' "$DS_DIR/error.log")" "second run: no pack made"
    rm -rf "$dest"
}

test_fbcp_tree_udp() { fetch_tree auto; }
test_fbcp_tree_https() { fetch_tree force; }

# --no-packs: every file in its own download session; no pack is asked for.
test_fbcp_no_packs_option() {
    local rc dest=$T_TMP/dest-noopt packs0 out
    require_fbcp
    [ -d "$DOCROOT/tree" ] || fail "no tree on the server"
    packs0=$(grep -c 'FB00950: download pack session' "$DS_DIR/error.log")
    mkdir -p "$dest"
    fbcp -r --no-packs --fallback force --json "$URL/tree" "$dest/" >"$T_TMP/noopt.json" 2>"$T_TMP/noopt.err"
    rc=$?
    assert_eq 0 "$rc" "exit code ($(tail -n 3 "$T_TMP/noopt.err"))"
    out=$(diff -r "$DOCROOT/tree" "$dest/tree" 2>&1 | head -n 5)
    [ -z "$out" ] || fail "trees differ: $out"
    access_log_settled
    assert_eq "$packs0" "$(grep -c 'FB00950: download pack session' "$DS_DIR/error.log")" "pack sessions with --no-packs"
    rm -rf "$dest"
}

# A server that refuses the pack request (here: 413, its JSON limit below a pack's request) gets
# the files one by one.
test_fbcp_without_packs() {
    local rc xml=$T_TMP/small-json.xml dest=$T_TMP/dest-nopack out
    require_fbcp
    make_served_tree
    ds_stop
    sed -e 's|</sessions>|<max_json_body>1024</max_json_body></sessions>|' "$DS_DIR/fallback.xml" >"$xml"
    grep -q '<max_json_body>1024' "$xml" || fail "could not set max_json_body"
    ds_start --extra-conf "$T_TMP/daemon.conf" --fallback-xml "$xml" || fail "devserver did not start"
    mkdir -p "$dest"
    fbcp -r --fallback force --json "$URL/tree" "$dest/" >"$T_TMP/nopack.json" 2>"$T_TMP/nopack.err"
    rc=$?
    assert_eq 0 "$rc" "exit code ($(tail -n 3 "$T_TMP/nopack.err"))"
    out=$(diff -r "$DOCROOT/tree" "$dest/tree" 2>&1 | head -n 5)
    [ -z "$out" ] || fail "trees differ: $out"
    assert_eq 0 "$(json_tree "$T_TMP/nopack.json" failed)" "files failed"
    access_log_settled
    assert_ge "$(grep -c '"POST [^"]*/sessions HTTP/1.1" 413 ' "$DS_DIR/access.log")" 1 "413 answers to the pack request"
    assert_ge "$(access_count HEAD /files/tree/)" 300 "files fetched one by one"
    ds_stop
    ds_start --extra-conf "$T_TMP/daemon.conf" || fail "devserver did not start again"
    rm -rf "$dest"
}

supervised_udpd "download packs"
udp_port_bound() {
    ss -Hlun "sport = :$UDP_PORT" 2>/dev/null | grep -q .
}
ds_start_or_bail "all download pack tests" --extra-conf "$T_TMP/daemon.conf"
wait_for 10 udp_port_bound || echo "# udpd does not listen on UDP port $UDP_PORT"

run_test "a pack answer: offsets, sizes, digests, times, modes, errors per entry; data; DELETE" test_pack_answer
run_test "bad pack requests are refused; GET data of an upload is 405" test_pack_refusals
run_test "stale staging files are swept when a pack is made" test_stale_staging_swept
run_test "10,000 entries per pack, 10,001 are too many" test_pack_entry_limit
run_test "fbcp -r down over UDP: small files in packs, identical, times kept; again: all skipped" test_fbcp_tree_udp
run_test "fbcp -r down with --fallback force: the same over HTTPS (GET sessions/{id}/data)" test_fbcp_tree_https
run_test "fbcp -r --no-packs down: every file in its own session" test_fbcp_no_packs_option
run_test "a server that refuses packs (413) gets the files one by one" test_fbcp_without_packs
finish
