#!/bin/bash
# t_tree: trees of many files with fbcp -r against the real Apache, module and udpd (started and
# supervised by Apache, FallbackDaemon on), with the default configuration:
#   - 20,000 files (bench/make-tree: mostly 0 B - 16 KiB, a few of 1-4 MiB, nested 6 deep, empty
#     directories, names with spaces and UTF-8) up and down over UDP, then with --fallback force:
#     every file identical (diff -r), empty directories there, modification times kept (files and
#     directories), one "tree" summary, the small files in packs (a session per up to 1000 files);
#     the same command again skips every file as identical;
#   - symbolic links in a source tree: a link to a file is copied as that file, a link to a
#     directory is skipped with a warning;
#   - --overwrite older keeps a newer target and replaces an older one; --no-preserve-times;
#   - a file that changes while it is read is not committed (digest_mismatch, target untouched);
#   - a tree bigger than the whole session table (max_sessions 16, 32 files in flight) completes:
#     finished sessions give their slots to new ones, and a full table is waited for (Retry-After).
# Every tree is checked file by file against its source.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=30
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

UDPD_BUILT=${UDPD:-$SRCDIR/udpd/udpd}
UDPD=$T_TMP/bin/udpd
MAKE_TREE=$SRCDIR/bench/make-tree
BIG=$T_TMP/big
NFILES=${FB_TREE_FILES:-20000}

# times_of DIR: "relative-path seconds" of every file and directory below DIR, sorted (seconds:
# a download keeps whole seconds, Last-Modified has no more).
times_of() {
    (cd "$1" && find . -mindepth 1 -printf '%p %Ts\n' | LC_ALL=C sort)
}

# times_ns_of DIR: the same with nanoseconds (an upload keeps them).
times_ns_of() {
    (cd "$1" && find . -mindepth 1 -printf '%p %T@\n' | LC_ALL=C sort)
}

# assert_same_tree A B: same names, contents and empty directories (diff -r), and the same times.
assert_same_tree() {
    local a=$1 b=$2 out
    out=$(diff -r "$a" "$b" 2>&1 | head -n 5)
    [ -z "$out" ] || fail "trees differ: $out"
    out=$(diff <(times_of "$a") <(times_of "$b") | head -n 6)
    [ -z "$out" ] || fail "modification times differ (< source, > copy): $out"
}

# post_sessions: how many POST sessions the server has answered so far.
post_sessions() {
    grep -c '"POST [^"]*/sessions HTTP/1.1" ' "$DS_DIR/access.log"
}

# json_tree FILE FIELD: the field of the one "tree" event in FILE.
json_tree() {
    jq -s -r "map(select(.event == \"tree\")) | if length == 1 then .[0].$2 else \"events: \\(length)\" end" "$1"
}

# roundtrip MODE: the big tree up and down with --fallback MODE, each twice.
roundtrip() {
    local mode=$1 rc posts dest=$T_TMP/back-$1
    require_fbcp
    [ -d "$BIG" ] || fail "no source tree"
    access_log_settled
    posts=$(post_sessions)
    fbcp -r --fallback "$mode" --json "$BIG" "$URL/$mode/" >"$T_TMP/$mode.up1.json" 2>"$T_TMP/$mode.up1.err"
    rc=$?
    assert_eq 0 "$rc" "upload exit code ($(tail -n 3 "$T_TMP/$mode.up1.err"))"
    # small files went up in packs (up to 1000 files per session), the few big ones alone
    access_log_settled
    posts=$(($(post_sessions) - posts))
    assert_ge $((NFILES / 50)) "$posts" "sessions created for $NFILES files (packs)"
    assert_eq "$NFILES" "$(json_tree "$T_TMP/$mode.up1.json" done)" "files uploaded (tree event)"
    assert_eq 0 "$(json_tree "$T_TMP/$mode.up1.json" failed)" "files failed (tree event)"
    if [ "$mode" = auto ]; then
        assert_ne 0 "$(json_tree "$T_TMP/$mode.up1.json" bytes_udp)" "bytes over UDP"
    else
        assert_eq 0 "$(json_tree "$T_TMP/$mode.up1.json" bytes_udp)" "bytes over UDP with --fallback force"
    fi
    assert_same_tree "$BIG" "$DOCROOT/$mode/big"
    # an upload keeps the nanoseconds too
    out=$(diff <(times_ns_of "$BIG") <(times_ns_of "$DOCROOT/$mode/big") | head -n 4)
    [ -z "$out" ] || fail "upload: times differ in nanoseconds: $out"
    [ -z "$(find "$DOCROOT/$mode" -name '.*fbpart*' | head -n 3)" ] || fail "partial files left on the server"

    fbcp -r --fallback "$mode" --json "$BIG" "$URL/$mode/" >"$T_TMP/$mode.up2.json" 2>"$T_TMP/$mode.up2.err"
    rc=$?
    assert_eq 0 "$rc" "second upload exit code ($(tail -n 3 "$T_TMP/$mode.up2.err"))"
    assert_eq "$NFILES" "$(json_tree "$T_TMP/$mode.up2.json" skipped)" "second upload: files skipped"
    assert_eq 0 "$(json_tree "$T_TMP/$mode.up2.json" bytes)" "second upload: bytes moved"

    mkdir -p "$dest"
    fbcp -r --fallback "$mode" --json "$URL/$mode/big" "$dest/" >"$T_TMP/$mode.down1.json" 2>"$T_TMP/$mode.down1.err"
    rc=$?
    assert_eq 0 "$rc" "download exit code ($(tail -n 3 "$T_TMP/$mode.down1.err"))"
    assert_eq "$NFILES" "$(json_tree "$T_TMP/$mode.down1.json" done)" "files downloaded (tree event)"
    assert_same_tree "$BIG" "$dest/big"
    [ -z "$(find "$dest" -name '.*fbpart*' | head -n 3)" ] || fail "partial files left locally"

    fbcp -r --fallback "$mode" --json "$URL/$mode/big" "$dest/" >"$T_TMP/$mode.down2.json" 2>"$T_TMP/$mode.down2.err"
    rc=$?
    assert_eq 0 "$rc" "second download exit code ($(tail -n 3 "$T_TMP/$mode.down2.err"))"
    assert_eq "$NFILES" "$(json_tree "$T_TMP/$mode.down2.json" skipped)" "second download: files skipped"
    assert_same_tree "$BIG" "$dest/big"
    rm -rf "$dest"
}

test_tree_udp() { roundtrip auto; }
test_tree_https() { roundtrip force; }

test_symlinks() {
    local rc src=$T_TMP/links
    require_fbcp
    mkdir -p "$src/real-dir" "$T_TMP/outside"
    printf 'target\n' >"$src/real.txt"
    printf 'inside\n' >"$src/real-dir/in.txt"
    printf 'outside\n' >"$T_TMP/outside/o.txt"
    ln -s real.txt "$src/link-to-file"
    ln -s ../outside "$src/link-to-dir"
    ln -s missing "$src/dangling"
    fbcp -r "$src" "$URL/" >"$T_TMP/links.out" 2>"$T_TMP/links.err"
    rc=$?
    assert_eq 0 "$rc" "exit code ($(cat "$T_TMP/links.err"))"
    assert_file_same "$src/real.txt" "$DOCROOT/links/link-to-file"
    [ -f "$DOCROOT/links/link-to-file" ] && [ ! -L "$DOCROOT/links/link-to-file" ] ||
        fail "the link to a file did not arrive as a regular file"
    assert_no_file "$DOCROOT/links/link-to-dir"
    assert_no_file "$DOCROOT/links/dangling"
    grep -q "link-to-dir: skipped: symbolic link to a directory" "$T_TMP/links.err" ||
        fail "no warning for the link to a directory: $(cat "$T_TMP/links.err")"
    grep -q "dangling: skipped" "$T_TMP/links.err" || fail "no warning for the dangling link"
}

test_overwrite_older() {
    local rc src=$T_TMP/older
    require_fbcp
    mkdir -p "$src" "$DOCROOT/older"
    printf 'new source\n' >"$src/a.txt"
    printf 'new source\n' >"$src/b.txt"
    touch -d '2020-01-02 00:00:00' "$src/a.txt" "$src/b.txt"
    printf 'newer target\n' >"$DOCROOT/older/a.txt"
    touch -d '2021-01-01 00:00:00' "$DOCROOT/older/a.txt"
    printf 'older target\n' >"$DOCROOT/older/b.txt"
    touch -d '2019-01-01 00:00:00' "$DOCROOT/older/b.txt"
    docroot_chown "$DOCROOT/older"
    fbcp -r --overwrite older --json "$src" "$URL/" >"$T_TMP/older.json" 2>"$T_TMP/older.err"
    rc=$?
    assert_eq 0 "$rc" "exit code ($(cat "$T_TMP/older.err"))"
    assert_eq "newer target" "$(cat "$DOCROOT/older/a.txt")" "a newer target is kept"
    assert_eq "new source" "$(cat "$DOCROOT/older/b.txt")" "an older target is replaced"
    assert_eq "newer" "$(jq -r 'select(.event == "skip") | .reason' "$T_TMP/older.json")" "skip reason"
    # the same policy downloading: the local a.txt is older than the server's, b.txt is not
    touch -d '2018-01-01 00:00:00' "$src/a.txt"
    touch -d '2030-01-01 00:00:00' "$src/b.txt"
    fbcp -r --overwrite older "$URL/older" "$T_TMP/" 2>"$T_TMP/older.err"
    rc=$?
    assert_eq 0 "$rc" "download exit code ($(cat "$T_TMP/older.err"))"
    assert_eq "newer target" "$(cat "$src/a.txt")" "an older local file is replaced"
    assert_eq "new source" "$(cat "$src/b.txt")" "a newer local file is kept"
}

# --transfers N (files one by one: --no-packs): with 1, each file is done before the next one starts; with 4, four files of a
# slowed-down run are all under way before the first is done.
test_transfers() {
    local rc src=$T_TMP/inflight i n
    require_fbcp
    mkdir -p "$src"
    for i in 1 2 3 4; do mkrand "$src/f$i.bin" $((256 * 1024)); done
    for n in 1 4; do
        fbcp -r --no-packs --transfers "$n" --fallback force --limit-rate 1m --json "$src" "$URL/inflight$n/" \
            >"$T_TMP/inflight$n.json" 2>"$T_TMP/inflight$n.err"
        rc=$?
        assert_eq 0 "$rc" "--transfers $n: exit code ($(cat "$T_TMP/inflight$n.err"))"
        assert_same_tree "$src" "$DOCROOT/inflight$n/inflight"
    done
    # the most files under way at once, from the order of the start and done events
    assert_eq 1 "$(jq -s '[foreach (.[] | select(.event == "start" or .event == "done")) as $e (0;
        if $e.event == "start" then . + 1 else . - 1 end)] | max' "$T_TMP/inflight1.json")" "files at once with --transfers 1"
    assert_eq 4 "$(jq -s '[foreach (.[] | select(.event == "start" or .event == "done")) as $e (0;
        if $e.event == "start" then . + 1 else . - 1 end)] | max' "$T_TMP/inflight4.json")" "files at once with --transfers 4"
}

# --overwrite if_different,older: an older identical target is skipped (and takes the source's
# time), an older different one replaced, a newer different one kept.
test_overwrite_if_different_older() {
    local rc src=$T_TMP/ido
    require_fbcp
    mkdir -p "$src" "$DOCROOT/ido"
    printf 'same\n' >"$src/same.txt"
    printf 'source\n' >"$src/older.txt"
    printf 'source\n' >"$src/newer.txt"
    touch -d '2020-06-01 00:00:00' "$src/same.txt" "$src/older.txt" "$src/newer.txt"
    printf 'same\n' >"$DOCROOT/ido/same.txt"
    printf 'old target\n' >"$DOCROOT/ido/older.txt"
    printf 'new target\n' >"$DOCROOT/ido/newer.txt"
    touch -d '2019-01-01 00:00:00' "$DOCROOT/ido/same.txt" "$DOCROOT/ido/older.txt"
    touch -d '2021-01-01 00:00:00' "$DOCROOT/ido/newer.txt"
    docroot_chown "$DOCROOT/ido"
    fbcp -r --overwrite if_different,older --json "$src" "$URL/" >"$T_TMP/ido.json" 2>"$T_TMP/ido.err"
    rc=$?
    assert_eq 0 "$rc" "exit code ($(cat "$T_TMP/ido.err"))"
    assert_eq "source" "$(cat "$DOCROOT/ido/older.txt")" "an older different target is replaced"
    assert_eq "new target" "$(cat "$DOCROOT/ido/newer.txt")" "a newer target is kept"
    assert_eq "identical newer" "$(jq -r -s '[.[] | select(.event == "skip") | .reason] | sort | join(" ")' "$T_TMP/ido.json")" \
        "skip reasons"
}

test_no_preserve_times() {
    local rc src=$T_TMP/notimes
    require_fbcp
    mkdir -p "$src"
    printf 'x\n' >"$src/f.txt"
    touch -d '2001-01-01 00:00:00' "$src/f.txt"
    fbcp -r --no-preserve-times "$src" "$URL/" 2>"$T_TMP/notimes.err"
    rc=$?
    assert_eq 0 "$rc" "exit code ($(cat "$T_TMP/notimes.err"))"
    assert_ge "$(stat -c %Y "$DOCROOT/notimes/f.txt")" "$(($(date +%s) - 600))" "the target has the time of its upload"
    fbcp -r "$src" "$URL/" 2>"$T_TMP/notimes.err"
    assert_eq "$(stat -c %Y "$src/f.txt")" "$(stat -c %Y "$DOCROOT/notimes/f.txt")" "kept by default"
    # the last of the two options wins
    fbcp -r --no-preserve-times "$URL/notimes" "$T_TMP/notimes-back/" 2>"$T_TMP/notimes.err"
    assert_ge "$(stat -c %Y "$T_TMP/notimes-back/f.txt")" "$(($(date +%s) - 600))" "download without times"
    fbcp -r --no-preserve-times --preserve-times "$URL/notimes" "$T_TMP/notimes-back2/" 2>"$T_TMP/notimes.err"
    assert_eq "$(stat -c %Y "$src/f.txt")" "$(stat -c %Y "$T_TMP/notimes-back2/f.txt")" "--preserve-times after it"
}

test_changed_while_read() {
    local rc src=$T_TMP/changing.bin i
    require_fbcp
    mkrand "$src" $((8 * CHUNK))
    fbcp_bg "$T_TMP/changing.json" "$T_TMP/changing.err" --json --fallback force --limit-rate 2m "$src" "$URL/changing.bin"
    # write into the part already sent once the upload is under way
    for ((i = 0; i < 100; i++)); do
        grep -q '"event":"progress"' "$T_TMP/changing.json" 2>/dev/null && break
        sleep 0.1
    done
    printf 'changed' | dd of="$src" bs=1 seek=10 conv=notrunc status=none
    wait "$FBCP_PID"
    rc=$?
    assert_eq "$(exit_code_of digest_mismatch)" "$rc" "exit code ($(cat "$T_TMP/changing.err"))"
    grep -q "the local file changed while it was read" "$T_TMP/changing.err" ||
        fail "the message does not say why: $(cat "$T_TMP/changing.err")"
    assert_no_file "$DOCROOT/changing.bin"
}

# A table of 16 slots, 32 files in flight, 120 files, each in its own session (--no-packs).
test_small_table() {
    local rc src=$T_TMP/many
    require_fbcp
    ds_stop --clean
    sed 's#<sessions>#<sessions><max_sessions>16</max_sessions>#' "$DS_DIR/fallback.xml" >"$T_TMP/small.xml"
    grep -q '<max_sessions>16' "$T_TMP/small.xml" || fail "could not set max_sessions"
    ds_start --extra-conf "$T_TMP/daemon.conf" --fallback-xml "$T_TMP/small.xml" || fail "devserver did not start"
    wait_for 10 udp_port_bound || fail "udpd does not listen"
    sleep 1
    "$MAKE_TREE" "$src" --files 120 --size 3000 --depth 2 >/dev/null || fail "make-tree"
    for mode in auto force; do
        fbcp -r --no-packs --transfers 32 --fallback "$mode" --json "$src" "$URL/many-$mode/" >"$T_TMP/many.json" 2>"$T_TMP/many.err"
        rc=$?
        assert_eq 0 "$rc" "$mode: exit code ($(tail -n 3 "$T_TMP/many.err"))"
        assert_same_tree "$src" "$DOCROOT/many-$mode/many"
    done
    # the table was full at times (32 files for 16 slots): those requests were answered 503 with
    # Retry-After, waited for, and asked again
    access_log_settled
    assert_ge "$(grep -c '"POST [^"]*/sessions HTTP/1.1" 503 ' "$DS_DIR/access.log")" 1 "503 answers to POST sessions"
}

supervised_udpd "trees"
"$MAKE_TREE" "$BIG" --files "$NFILES" --empty-dirs 5 >"$T_TMP/make-tree.out" || { echo "not ok - make-tree"; exit 1; }
udp_port_bound() {
    ss -Hlun "sport = :$UDP_PORT" 2>/dev/null | grep -q .
}
ds_start_or_bail "all tree tests" --extra-conf "$T_TMP/daemon.conf"
# udpd (Apache's child) listens before the first upload asks for it; its heartbeat follows
wait_for 10 udp_port_bound || echo "# udpd does not listen on UDP port $UDP_PORT"
sleep 1

run_test "$NFILES files up and down over UDP, twice: identical, times kept, then all skipped" test_tree_udp
run_test "$NFILES files up and down with --fallback force, twice: identical, times kept, then all skipped" test_tree_https
run_test "symbolic links: to a file copied as the file, to a directory skipped with a warning" test_symlinks
run_test "--overwrite older: a newer target is kept, an older one replaced (both directions)" test_overwrite_older
run_test "--overwrite if_different,older: identical and newer kept, older different replaced" test_overwrite_if_different_older
run_test "--transfers: one file at a time with 1, four under way with 4" test_transfers
run_test "--no-preserve-times: the target gets its upload's time" test_no_preserve_times
run_test "a file that changes while it is read is not committed" test_changed_while_read
run_test "a tree of 120 files through a table of 16 slots with 32 files in flight" test_small_table
finish
