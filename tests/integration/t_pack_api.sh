#!/bin/bash
# t_pack_api: upload packs (docs/HTTP-API.md, "Upload packs") driven by plain curl: many files in
# one session sent with PUT and committed, every file identical with its mtime and mode; the
# per-file decisions of the overwrite policies in the creation answer; a wrong pack digest (422,
# nothing lands) and a wrong digest of one file (only that file fails); bad requests; resume of
# the same pack; a pack over UDP through udpd; a full disk at commit (nothing lands); DELETE and
# listings never showing the pack's hidden files.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=35
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$T_TMP/src
mkdir -p "$SRC"
UDPD=${UDPD:-$SRCDIR/udpd/udpd}
UDP_CLIENT=${UDP_CLIENT:-$SRCDIR/tests/udp/udp_client}
[ -x "$UDPD" ] && cp "$UDPD" "$T_TMP/bin/udpd" && UDPD=$T_TMP/bin/udpd
[ -x "$UDP_CLIENT" ] && cp "$UDP_CLIENT" "$T_TMP/bin/udp_client" && UDP_CLIENT=$T_TMP/bin/udp_client
UDPD_LOG=$T_TMP/udpd.log
UDPD_PIDFILE=$T_TMP/udpd.pid
# pack_request SRCDIR ROOT OVERWRITE [BADSHA-PATH]: the POST sessions body for every file of
# SRCDIR (sorted), each with its size, sha256, mtime, mtime_ns and mode; BADSHA-PATH gets a wrong
# sha256. (jq and coreutils: python3 takes seconds to start on a loaded machine.)
pack_request() {
    local src=$1 root=$2 ow=$3 bad=${4:-}
    (
        cd "$src" || exit 1
        find . -type f -printf '%P\0' | sort -z >"$T_TMP/names"
        paste <(xargs -0 -r stat -c '%s %.9Y %a' <"$T_TMP/names") \
            <(xargs -0 -r sha256sum <"$T_TMP/names" | cut -c1-64) <(tr '\0' '\n' <"$T_TMP/names")
    ) | jq -R -s --arg root "$root" --arg ow "$ow" --arg bad "$bad" '
        [split("\n")[] | select(length > 0) | split("\t") as [$st, $sha, $path] | ($st | split(" ")) as [$size, $mt, $mode] |
         ($mt | split(".")) as [$s, $ns] |
         {path: $path, size: ($size | tonumber), sha256: (if $path == $bad then ("0" * 64) else $sha end),
          mtime: ($s | tonumber), mtime_ns: ($ns | tonumber), mode: ("0" + $mode)}] |
        {direction: "upload", path: $root, overwrite: $ow, pack: .}'
}

# pack_create SRCDIR ROOT OVERWRITE [BADSHA-PATH]: POST sessions for the pack; prints the status,
# the answer stays in $BODY (and a copy in $T_TMP/answer.json).
pack_create() {
    local st
    pack_request "$@" >"$T_TMP/req.json" || fail "cannot build the pack request"
    st=$(api POST sessions -H 'Content-Type: application/json' --data-binary "@$T_TMP/req.json")
    cp "$BODY" "$T_TMP/answer.json"
    echo "$st"
}

# pack_data SRCDIR: the data of the pack last created (the files with "send": true, in order), into
# $T_TMP/pack.bin.
pack_data() {
    (cd "$1" && jq -j '.pack[] | select(.send) | .path + "\u0000"' "$T_TMP/answer.json" | xargs -0 -r cat --) \
        >"$T_TMP/pack.bin" || fail "cannot build the pack data"
}

# pack_put_all ID [curl args]: PUT the whole of $T_TMP/pack.bin; prints the status.
pack_put_all() {
    local id=$1 size
    shift
    size=$(stat -c %s "$T_TMP/pack.bin")
    api PUT "sessions/$id/data" -H "Content-Range: bytes 0-$((size - 1))/$size" \
        -H 'Content-Type: application/octet-stream' --data-binary "@$T_TMP/pack.bin" "$@"
}

# Hidden pack files (partial, checkpoint, manifest, unpack temporaries) below DIR, one a line.
hidden_pack_files() {
    find "$1" -name '.*fbpack*' -o -name '*.fbpart*' 2>/dev/null
}

# facts DIR REL...: size, mtime (to the ns), mode and sha256 of each file, one line each.
facts() {
    local d=$1
    shift
    (cd "$d" && paste <(stat -c '%n %s %.9Y %a' -- "$@") <(sha256sum -- "$@" | cut -c1-64)) 2>&1
}

# assert_landed SRCDIR DSTDIR REL...: each file identical, with its mtime (to the ns) and mode (a
# few processes for all of them: a loaded machine runs each slowly).
assert_landed() {
    local s=$1 d=$2 a b
    shift 2
    a=$(facts "$s" "$@")
    b=$(facts "$d" "$@")
    [ "$a" = "$b" ] || fail "files differ: $(diff <(echo "$a") <(echo "$b") | head -n 6 | tr '\n' ' ')"
}

test_pack_many_files() {
    local t=$SRC/many st id n i size files
    mkdir -p "$t/a/b/c/d" "$t/with space" "$t/été"
    for ((i = 0; i < 40; i++)); do mkrand "$t/f$i.bin" $((RANDOM % 20000)); done
    for ((i = 0; i < 5; i++)); do mkrand "$t/a/b/c/d/deep$i" $((i * 1000 + 1)); done
    : >"$t/empty"
    mkrand "$t/with space/x y.bin" 3000
    mkrand "$t/été/fichier été ✓.txt" 777
    chmod 600 "$t/f1.bin"
    chmod 755 "$t/f2.bin"
    chmod 640 "$t/empty"
    touch -d '@1600000000.123456789' "$t/f3.bin"
    touch -d '@0' "$t/f4.bin"
    n=$(find "$t" -type f | wc -l)
    st=$(pack_create "$t" "packs/many" always)
    assert_eq 201 "$st" "create: $(head -c 300 "$BODY")"
    id=$(jbody .id)
    assert_eq "packs/many" "$(jbody .path)" "the answer's path is the pack's root"
    assert_eq "$n" "$(jq '[.pack[] | select(.send == true)] | length' "$BODY")" "every file to send"
    assert_eq "$(jq '[.pack[].path]' "$T_TMP/req.json")" "$(jq '[.pack[].path]' "$BODY")" "entries in request order"
    pack_data "$t"
    size=$(stat -c %s "$T_TMP/pack.bin")
    assert_eq "$size" "$(jbody .size)" "the session's size is the sum of the files'"
    # Offsets: each file's bytes start where the previous one's end.
    assert_eq true "$(jq --slurpfile r "$T_TMP/req.json" '
        [$r[0].pack[].size] as $s | [.pack[].offset] as $o |
        all(range(1; $o | length); $o[.] == $o[. - 1] + $s[. - 1]) and $o[0] == 0' "$BODY")" "offsets"
    # A listing of the root while the pack is under way shows none of its hidden files.
    st=$(api GET files/packs/many/)
    assert_eq 200 "$st" "listing of the pack's root"
    assert_eq 0 "$(jq '[.entries[]? | select(.name | startswith("."))] | length' "$BODY")" "hidden files listed"
    [ -n "$(hidden_pack_files "$DOCROOT/packs/many")" ] || fail "no partial/manifest while the pack is under way"
    # The whole pack in one PUT that commits it.
    st=$(pack_put_all "$id" -H "Fallback-Commit: sha256=$(sha "$T_TMP/pack.bin")")
    assert_eq 200 "$st" "PUT with Fallback-Commit: $(head -c 300 "$BODY")"
    cp "$BODY" "$T_TMP/commit.json"
    assert_eq "done" "$(jbody .state)" "state"
    assert_eq "$n" "$(jbody .committed)" "files committed"
    assert_eq 0 "$(jq .failed "$BODY")" "files failed"
    assert_eq "$(sha "$T_TMP/pack.bin")" "$(jbody .sha256)" "the pack's digest"
    assert_eq "$n" "$(jq '[.pack[] | select(.result == "committed")] | length' "$BODY")" "results"
    mapfile -t files < <(cd "$t" && find . -type f -printf '%P\n')
    assert_landed "$t" "$DOCROOT/packs/many" "${files[@]}"
    assert_eq "$(cd "$t" && find . | sort)" "$(cd "$DOCROOT/packs/many" && find . | sort)" "the tree's names"
    assert_eq "" "$(hidden_pack_files "$DOCROOT/packs")" "hidden files left after the commit"
    # Each file keeps its digest, as a single upload's does.
    st=$(api HEAD "files/packs/many/f5.bin" -I)
    assert_eq 200 "$st" "HEAD of a landed file"
    case "$(header Repr-Digest)" in sha-256=:*) ;; *) fail "no Repr-Digest on a file of a pack" ;; esac
    # A repeated commit: the same answer without the per-file results.
    st=$(commit "$id" "$(sha "$T_TMP/pack.bin")")
    assert_eq 200 "$st" "repeated commit"
    assert_eq "done|packs/many|" "$(jq -r '[.state, .path, (.pack // "" | tostring)] | join("|")' "$BODY")" "repeated"
}

test_pack_skip_decisions() {
    local t=$SRC/skip d=$DOCROOT/packs/skip st id
    mkdir -p "$t" "$d/dir_in_way"
    printf 'same' >"$t/same.txt"
    printf 'same' >"$d/same.txt"
    touch -d '@1500000000' "$t/same.txt"
    touch -d '@1400000000' "$d/same.txt"
    printf 'new content' >"$t/diff.txt"
    printf 'old content' >"$d/diff.txt"
    printf 'fresh' >"$t/fresh.txt"
    printf 'x' >"$t/dir_in_way"
    docroot_chown "$DOCROOT/packs"
    # if_different: the identical file is skipped (and takes the entry's time), the others sent,
    # a directory in the way is an error for that file only.
    st=$(pack_create "$t" packs/skip if_different)
    assert_eq 201 "$st" "create: $(head -c 300 "$BODY")"
    assert_eq "error:exists:directory" "$(jq -r '.pack[] | select(.path == "dir_in_way") |
        "error:\(.error):\(.target)"' "$BODY")" "directory in the way"
    assert_eq "false:identical" "$(jq -r '.pack[] | select(.path == "same.txt") | "\(.send):\(.reason)"' "$BODY")" \
        "identical"
    assert_eq "1500000000" "$(stat -c %Y "$d/same.txt")" "the identical target took the entry's mtime"
    assert_eq "true|true" "$(jq -r '[.pack[] | select(.path == "diff.txt" or .path == "fresh.txt") | .send] |
        map(tostring) | join("|")' "$BODY")" "different and new files sent"
    id=$(jbody .id)
    pack_data "$t"
    st=$(pack_put_all "$id")
    assert_eq 200 "$st" "PUT"
    st=$(commit "$id" "$(sha "$T_TMP/pack.bin")")
    assert_eq 200 "$st" "commit: $(head -c 300 "$BODY")"
    assert_eq "2|0" "$(jq -r '"\(.committed)|\(.failed)"' "$BODY")" "committed|failed"
    assert_eq '["diff.txt","fresh.txt"]' "$(jq -c '[.pack[].path]' "$BODY")" "only the files sent in the commit"
    assert_landed "$t" "$d" diff.txt fresh.txt
    # older: a newer target is skipped; an older one replaced.
    rm -rf "$t" && mkdir -p "$t"
    printf 'a' >"$t/newer.txt" && touch -d '@1000000000' "$t/newer.txt"
    printf 'b' >"$t/older.txt" && touch -d '@1700000000' "$t/older.txt"
    printf 'N' >"$d/newer.txt" && touch -d '@1100000000' "$d/newer.txt"
    printf 'O' >"$d/older.txt" && touch -d '@1600000000' "$d/older.txt"
    docroot_chown "$d"
    st=$(pack_create "$t" packs/skip older)
    assert_eq 201 "$st" "create (older): $(head -c 300 "$BODY")"
    assert_eq "false:newer|true:null" "$(jq -r '[.pack[] | "\(.send):\(.reason)"] | join("|")' "$BODY")" "older"
    # never: an existing target is an error for that file; a new one is sent. Nothing to send at
    # all: 200, no session.
    rm -rf "$t" && mkdir -p "$t"
    printf 'z' >"$t/same.txt"
    st=$(pack_create "$t" packs/skip never)
    assert_eq 200 "$st" "create (never, nothing to send)"
    assert_eq "done|true||exists" "$(jq -r '"\(.state)|\(.skipped)|\(.id // "")|\(.pack[0].error)"' "$BODY")" \
        "a pack with nothing to send"
    assert_eq same "$(cat "$d/same.txt")" "the target under never is untouched"
}

test_pack_digest_mismatch() {
    local t=$SRC/mism d=$DOCROOT/packs/mism st id
    mkdir -p "$t/sub"
    mkrand "$t/one" 5000
    mkrand "$t/sub/two" 7000
    st=$(pack_create "$t" packs/mism never)
    assert_eq 201 "$st" "create"
    id=$(jbody .id)
    pack_data "$t"
    st=$(pack_put_all "$id")
    assert_eq 200 "$st" "PUT"
    st=$(commit "$id" "$(printf '%064d' 0)")
    assert_problem 422 digest_mismatch "$st"
    assert_no_file "$d/one"
    assert_no_file "$d/sub"
    st=$(api GET "sessions/$id")
    assert_eq active "$(jbody .state)" "the session stays active"
    st=$(commit "$id" "$(sha "$T_TMP/pack.bin")")
    assert_eq 200 "$st" "commit with the right digest: $(head -c 300 "$BODY")"
    assert_eq 2 "$(jbody .committed)" "committed"
    assert_file_same "$t/sub/two" "$d/sub/two"
    # A pack of empty files only: a session of 0 bytes, committed with the digest of nothing.
    rm -rf "$t" && mkdir -p "$t/e"
    : >"$t/e/z1"
    : >"$t/z2"
    st=$(pack_create "$t" packs/empty always)
    assert_eq 201 "$st" "create (empty files)"
    assert_eq 0 "$(jbody .size)" "size of a pack of empty files"
    st=$(commit "$(jbody .id)" "$(sha /dev/null)")
    assert_eq 200 "$st" "commit (empty files): $(head -c 300 "$BODY")"
    assert_landed "$t" "$DOCROOT/packs/empty" e/z1 z2
}

test_pack_entry_digest_wrong() {
    local t=$SRC/bad1 d=$DOCROOT/packs/bad1 st id
    mkdir -p "$t"
    mkrand "$t/a" 100
    mkrand "$t/b" 200
    mkrand "$t/c" 300
    st=$(pack_create "$t" packs/bad1 always b)
    assert_eq 201 "$st" "create"
    id=$(jbody .id)
    pack_data "$t"
    st=$(pack_put_all "$id" -H "Fallback-Commit: sha256=$(sha "$T_TMP/pack.bin")")
    assert_eq 200 "$st" "the pack commits: $(head -c 300 "$BODY")"
    assert_eq "2|1" "$(jq -r '"\(.committed)|\(.failed)"' "$BODY")" "committed|failed"
    assert_eq "failed:digest_mismatch" "$(jq -r '.pack[1] | "\(.result):\(.error)"' "$BODY")" "b's result"
    assert_no_file "$d/b"
    assert_file_same "$t/a" "$d/a"
    assert_file_same "$t/c" "$d/c"
    assert_eq "" "$(hidden_pack_files "$d")" "hidden files left"
}

# post_pack JSON: POST sessions with that body; prints the status.
post_pack() {
    api POST sessions -H 'Content-Type: application/json' --data-binary "$1"
}

test_pack_bad_input() {
    local st z h e
    z=$(printf '%064d' 0)
    e="\"size\":0,\"sha256\":\"$z\""
    h='{"direction":"upload","path":"packs/bad"'
    st=$(post_pack "$h,\"pack\":[{\"path\":\"../x\",$e}]}")
    assert_problem 403 path_escape "$st"
    st=$(post_pack "$h,\"pack\":[{\"path\":\"/etc/x\",$e}]}")
    assert_problem 403 path_escape "$st"
    st=$(post_pack "$h,\"pack\":[{\"path\":\"a\",$e},{\"path\":\"b\",$e},{\"path\":\"a\",$e}]}")
    assert_problem 400 bad_request "$st"
    case "$(jbody .detail)" in *'pack[2] ("a")'*twice*) ;; *) fail "duplicate not named: $(jbody .detail)" ;; esac
    st=$(post_pack "$h,\"pack\":[{\"path\":\"a\",\"size\":1}]}")
    assert_problem 400 bad_request "$st"
    case "$(jbody .detail)" in *sha256*) ;; *) fail "missing sha256 not named: $(jbody .detail)" ;; esac
    st=$(post_pack "$h,\"pack\":{\"path\":\"a\"}}")
    assert_problem 400 bad_request "$st"
    st=$(post_pack "$h,\"pack\":[]}")
    assert_problem 400 bad_request "$st"
    st=$(post_pack "$h,\"pack\":[\"a\"]}")
    assert_problem 400 bad_request "$st"
    st=$(post_pack "$h,\"size\":5,\"pack\":[{\"path\":\"a\",$e}]}")
    assert_problem 400 bad_request "$st"
    for p in '' 'dir/' '.x.fbpart' 'a//b' '.fbpack-0123456789abcdef0123456789abcdef'; do
        st=$(post_pack "$h,\"pack\":[{\"path\":\"$p\",$e}]}")
        assert_problem 400 bad_path "$st"
    done
    st=$(post_pack "$h,\"overwrite\":\"older\",\"pack\":[{\"path\":\"a\",$e}]}")
    assert_problem 400 bad_request "$st"
    st=$(post_pack "$h,\"pack\":[{\"path\":\"a\",$e,\"mode\":\"9\"}]}")
    assert_problem 400 bad_request "$st"
    # 10,001 files: 413 (the request itself fits this server's max_json_body of 2 MiB).
    jq -n --arg z "$z" '{direction: "upload", path: "packs/big",
        pack: [range(10001) | {path: "f\(.)", size: 0, sha256: $z}]}' >"$T_TMP/big.json"
    st=$(api POST sessions -H 'Content-Type: application/json' --data-binary "@$T_TMP/big.json")
    assert_problem 413 too_large "$st"
    assert_no_file "$DOCROOT/packs/bad"
    assert_no_file "$DOCROOT/packs/big"
}

test_pack_resume() {
    local t=$SRC/res st id left
    mkdir -p "$t"
    mkrand "$t/r1" 700000
    mkrand "$t/r2" 700000
    mkrand "$t/r3" 700000
    st=$(pack_create "$t" packs/res always)
    assert_eq 201 "$st" "create"
    id=$(jbody .id)
    pack_data "$t"
    st=$(put_range "$id" "$T_TMP/pack.bin" 0 $((CHUNK - 1)))
    assert_eq 200 "$st" "PUT of the first chunk"
    # The same pack asked again (a client run again): the same session, only the rest missing.
    st=$(pack_create "$t" packs/res always)
    assert_eq 200 "$st" "create again: $(head -c 300 "$BODY")"
    assert_eq "$id" "$(jbody .id)" "the same session"
    assert_eq true "$(jbody .resumed)" "resumed"
    assert_eq "[[$CHUNK,$((2100000 - CHUNK))]]" "$(jq -c .missing "$BODY")" "missing"
    assert_eq 3 "$(jq '[.pack[] | select(.send)] | length' "$BODY")" "the pack answer again"
    st=$(put_range "$id" "$T_TMP/pack.bin" "$CHUNK" $((2100000 - 1)) \
        -H "Fallback-Commit: sha256=$(sha "$T_TMP/pack.bin")")
    assert_eq 200 "$st" "PUT of the rest with Fallback-Commit: $(head -c 300 "$BODY")"
    assert_eq 3 "$(jbody .committed)" "committed"
    assert_landed "$t" "$DOCROOT/packs/res" r1 r2 r3
    # The session lost (the administrator cancels it, as after a restart of the machine): the
    # same pack asked again resumes from the checkpoint beside the partial file.
    rm -rf "$DOCROOT/packs/res"
    st=$(pack_create "$t" packs/res always)
    assert_eq 201 "$st" "create after the files were removed"
    id=$(jbody .id)
    st=$(put_range "$id" "$T_TMP/pack.bin" 0 $((CHUNK - 1)))
    assert_eq 200 "$st" "PUT of the first chunk"
    require_fbctl
    FB_SCHEMA=$DS_DIR/fallback.xsd "$FBCTL" -c "$DS_DIR/fallback.xml" cancel "$id" >"$T_TMP/c.out" 2>&1 ||
        fail "fbctl cancel: $(cat "$T_TMP/c.out")"
    st=$(pack_create "$t" packs/res always)
    assert_eq 200 "$st" "create after the session was lost: $(head -c 300 "$BODY")"
    assert_ne "$id" "$(jbody .id)" "a new session"
    assert_eq true "$(jbody .resumed)" "resumed from the checkpoint"
    assert_eq "[[$CHUNK,$((2100000 - CHUNK))]]" "$(jq -c .missing "$BODY")" "missing after the checkpoint"
    id=$(jbody .id)
    st=$(put_range "$id" "$T_TMP/pack.bin" "$CHUNK" $((2100000 - 1)) \
        -H "Fallback-Commit: sha256=$(sha "$T_TMP/pack.bin")")
    assert_eq 200 "$st" "the rest: $(head -c 300 "$BODY")"
    assert_landed "$t" "$DOCROOT/packs/res" r1 r2 r3
    # Another pack to the same root (one file changed): another session.
    mkrand "$t/r3" 700000
    st=$(pack_create "$t" packs/res always)
    assert_eq 201 "$st" "a changed pack is a new session"
    assert_ne "$id" "$(jbody .id)" "session id"
    api DELETE "sessions/$(jbody .id)" >/dev/null
}

test_pack_delete() {
    local t=$SRC/del d=$DOCROOT/packs/del st id
    mkdir -p "$t"
    mkrand "$t/x" $((CHUNK + 10))
    mkrand "$t/y" 10
    st=$(pack_create "$t" packs/del always)
    assert_eq 201 "$st" "create"
    id=$(jbody .id)
    pack_data "$t"
    st=$(put_range "$id" "$T_TMP/pack.bin" 0 $((CHUNK - 1)))
    assert_eq 200 "$st" "PUT of the first chunk"
    # Partial, checkpoint and manifest are there, hidden: not listed, not served, not writable.
    assert_eq 3 "$(hidden_pack_files "$d" | wc -l)" "partial, checkpoint and manifest: $(hidden_pack_files "$d")"
    st=$(api GET files/packs/del/)
    assert_eq 200 "$st" "listing"
    assert_eq "[]" "$(jq -c '.entries' "$BODY")" "nothing listed"
    st=$(api GET "files/packs/del/$(basename "$(hidden_pack_files "$d" | grep manifest)")")
    assert_problem 404 not_found "$st"
    st=$(api DELETE "sessions/$id")
    assert_eq 204 "$st" "DELETE"
    assert_eq "" "$(hidden_pack_files "$d")" "hidden files after DELETE"
}

# The pack of an interrupted run is rarely asked for again (the next run forms its packs anew):
# its hidden files, untouched for idle_timeout, go when another pack of that root is made; a
# recent one stays.
test_pack_stale_swept() {
    local t=$SRC/stale d=$DOCROOT/packs/stale st old
    mkdir -p "$t"
    mkrand "$t/a" 1000
    st=$(pack_create "$t" packs/stale always)
    assert_eq 201 "$st" "create the first pack"
    old=$(hidden_pack_files "$d" | grep -c 'fbpack')
    assert_eq 2 "$old" "the first pack's partial file and manifest: $(hidden_pack_files "$d")"
    hidden_pack_files "$d" | xargs -r touch -h -d '3 days ago'
    old=$(hidden_pack_files "$d" | sort)
    mkrand "$t/b" 1000
    st=$(pack_create "$t" packs/stale always)
    assert_eq 201 "$st" "create a second pack (another file set)"
    for f in $old; do
        assert_no_file "$f"
    done
    assert_eq 2 "$(hidden_pack_files "$d" | wc -l)" "the second pack's files stay: $(hidden_pack_files "$d")"
    grep -q 'FB00912: removed 1 upload pack' "$DS_DIR/error.log" || fail "no FB00912 line in the error log"
    # a pack asked for again is fresh: its files stay though a third pack is made
    hidden_pack_files "$d" | xargs -r touch -h -d '3 days ago'
    st=$(pack_create "$t" packs/stale always)
    assert_in "$st" 200 201
    mkrand "$t/c" 1000
    st=$(pack_create "$t" packs/stale always)
    assert_eq 201 "$st" "create a third pack"
    assert_eq 4 "$(hidden_pack_files "$d" | wc -l)" "the second and third packs' files: $(hidden_pack_files "$d")"
}

test_pack_disk_full() {
    local t=$SRC/full st id
    [ "$MOUNTED" = 1 ] || skip "mount -t tmpfs not permitted here: $(head -n1 "$T_TMP/mount.err")"
    mkdir -p "$t"
    mkrand "$t/p1" 1000000
    mkrand "$t/p2" 1000000
    mkrand "$t/p3" 1000000
    # The pack (3 MB) fits the 4 MiB file system; its files landed beside it do not.
    st=$(pack_create "$t" small/full always)
    assert_eq 201 "$st" "create: $(head -c 300 "$BODY")"
    id=$(jbody .id)
    pack_data "$t"
    st=$(pack_put_all "$id")
    assert_eq 200 "$st" "PUT"
    st=$(commit "$id" "$(sha "$T_TMP/pack.bin")")
    assert_problem 507 disk_full "$st"
    assert_eq "" "$(cd "$SMALL/full" && find . -mindepth 1 ! -name '.*')" "files landed"
    assert_eq "" "$(find "$SMALL/full" -name '*.unpack')" "temporaries left"
    assert_eq 1 "$(find "$SMALL/full" -name '.*.fbpart' | wc -l)" "the pack's partial file is kept"
    st=$(api GET "sessions/$id")
    assert_eq active "$(jbody .state)" "the session stays active"
    mount -o remount,size=16m "$SMALL" || fail "cannot grow the tmpfs"
    st=$(commit "$id" "$(sha "$T_TMP/pack.bin")")
    assert_eq 200 "$st" "commit once there is room: $(head -c 300 "$BODY")"
    assert_eq 3 "$(jbody .committed)" "committed"
    assert_landed "$t" "$SMALL/full" p1 p2 p3
}

test_pack_over_udp() {
    local t=$SRC/udp st id
    if [ ! -x "$UDPD" ] || [ ! -x "$UDP_CLIENT" ]; then fail "udpd or tests/udp/udp_client not built"; fi
    udpd_start
    mkdir -p "$t/d"
    mkrand "$t/u1" 300000
    mkrand "$t/d/u2" 900000
    : >"$t/d/u3"
    mkrand "$t/u4" 5
    st=$(pack_create "$t" packs/udp always)
    assert_eq 201 "$st" "create: $(head -c 300 "$BODY")"
    [ -n "$(jbody .udp.port)" ] || fail "no udp member while udpd runs: $(head -c 300 "$BODY")"
    id=$(jbody .id)
    pack_data "$t"
    "$UDP_CLIENT" --host 127.0.0.1 --port "$UDP_PORT" --session "$T_TMP/answer.json" --upload "$T_TMP/pack.bin" \
        --timeout 20 >"$T_TMP/udp.out" 2>&1 || fail "UDP upload failed: $(tail -n 3 "$T_TMP/udp.out")"
    st=$(commit "$id" "$(sha "$T_TMP/pack.bin")")
    assert_eq 200 "$st" "commit: $(head -c 300 "$BODY")"
    assert_eq "4|0" "$(jq -r '"\(.committed)|\(.failed)"' "$BODY")" "committed|failed"
    assert_landed "$t" "$DOCROOT/packs/udp" u1 d/u2 d/u3 u4
    st=$(api GET "sessions/$id")
    assert_ne 0 "$(jbody .bytes_udp)" "bytes over UDP"
    udpd_kill
}

# The devserver's fallback.xml with a bigger max_json_body, for the request of 10,001 files (written
# here rather than edited after a first start: each start of Apache costs seconds).
mkdir -p "$DOCROOT"
mkdir -p "$DS_DIR"
cat >"$DS_DIR/fallback.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<CONF version="1">
  <http_server><http_port>$HTTP_PORT</http_port><https_port>$HTTPS_PORT</https_port></http_server>
  <udp><port>$UDP_PORT</port><bind_address>127.0.0.1</bind_address></udp>
  <sessions>
    <shm_path>/dev/shm/fallback-$(printf '%s' "$DS_DIR" | sha256sum | cut -c1-16)</shm_path>
    <max_json_body>2097152</max_json_body>
  </sessions>
  <docroots><default>$DOCROOT</default></docroots>
</CONF>
EOF
# A full disk at commit: a small tmpfs below the docroot (the test is skipped where mounting is not
# permitted).
SMALL=$DOCROOT/small
mkdir -p "$SMALL"
MOUNTED=0
if mount -t tmpfs -o size=4m,mode=0777 fbtest-pack-small "$SMALL" 2>"$T_TMP/mount.err"; then
    MOUNTED=1
    T_CLEANUP_EXTRA="udpd_kill; umount '$SMALL'"
fi

ds_start_or_bail "all pack API tests" --fallback-xml "$DS_DIR/fallback.xml"
[ -n "$T_CLEANUP_EXTRA" ] || T_CLEANUP_EXTRA=udpd_kill

run_test "a pack of many files (nested, empty, UTF-8, spaces) lands identical with mtime and mode" test_pack_many_files
run_test "per-file decisions: identical, newer, exists, a directory in the way" test_pack_skip_decisions
run_test "a wrong pack digest: 422, nothing lands, then the right one commits" test_pack_digest_mismatch
run_test "a file whose own sha256 is wrong fails alone, the others land" test_pack_entry_digest_wrong
run_test "bad packs: escape, duplicates, missing sha256, not an array, too many files" test_pack_bad_input
run_test "the same pack asked again resumes its session, or its checkpoint once the session is lost" test_pack_resume
run_test "a pack sent over UDP through udpd, committed over HTTPS" test_pack_over_udp
run_test "a full disk at commit: 507, nothing lands, the session commits once there is room" test_pack_disk_full
run_test "DELETE removes the pack's hidden files; listings never show them" test_pack_delete
run_test "the hidden files of a pack untouched for idle_timeout go when another pack is made" test_pack_stale_swept
finish
