#!/bin/bash
# t_resume_identity: a resume continues the same content only (issue 19, item 6).
# An upload of A is killed with SIGKILL mid-transfer (slowed with --limit-rate), then another
# upload goes to the same name: a different file B of the same size, B differing from A only in
# its middle MiB with A's mtime (touch -r), A again after its partial file was deleted or
# truncated on the server: each time the second fbcp run lands the new content byte-identical on
# its first try, over UDP (a real udpd) and over HTTPS (--fallback force). And A again after a
# received chunk of the server's partial file was changed in place: the commit fails its digest
# and fbcp starts over once by itself, naming the cause.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=27
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

UDPD=${UDPD:-$SRCDIR/udpd/udpd}
UDPD_LOG=$T_TMP/udpd.log
UDPD_PIDFILE=$T_TMP/udpd.pid
SRC=$T_TMP/src
mkdir -p "$SRC"
SIZE=$((20 * CHUNK))
T_CLEANUP_EXTRA='udpd_kill'

# transport_args MODE: fbcp options for "udp" (UDP first, as by default) or "https" (forced).
transport_args() {
    if [ "$1" = https ]; then echo "--fallback force"; else echo "--fallback auto"; fi
}

# interrupt FILE NAME MODE: uploads FILE to NAME slowly and kills fbcp with SIGKILL after part of
# it arrived (the partial file and some progress stay on the server).
interrupt() {
    local file=$1 name=$2 mode=$3 pid
    fbcp_bg "$T_TMP/$name.1.json" "$T_TMP/$name.1.err" --json $(transport_args "$mode") --limit-rate 4M \
        "$file" "$URL/$name"
    pid=$FBCP_PID
    sleep 2.5
    kill -0 "$pid" 2>/dev/null || fail "fbcp ended before the kill: $(cat "$T_TMP/$name.1.err")"
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null
    sleep 0.5 # let Apache and udpd notice and checkpoint
    assert_no_file "$DOCROOT/$name"
    assert_file_exists "$DOCROOT/.$name.fbpart"
    if [ "$mode" = udp ]; then
        [ "$(jq -s '[.[] | select(.event == "progress" or .event == "transport") | .bytes_udp // 0] | max // 0' \
            "$T_TMP/$name.1.json")" -gt 0 ] || note "no UDP progress event before the kill (UDP may have been slow to start)"
    fi
}

# rerun FILE NAME MODE: the second run; it must succeed on its first try, byte-identical, without
# having to start over after a failed commit (unless ALLOW_RESTART=1), and leave no partial file.
rerun() {
    local file=$1 name=$2 mode=$3 rc
    fbcp --json $(transport_args "$mode") "$file" "$URL/$name" >"$T_TMP/$name.2.json" 2>"$T_TMP/$name.2.err"
    rc=$?
    assert_eq 0 "$rc" "second run exit code ($(tail -n 3 "$T_TMP/$name.2.err"))"
    assert_file_same "$file" "$DOCROOT/$name"
    if [ "${ALLOW_RESTART:-0}" != 1 ] && grep -q "did not match" "$T_TMP/$name.2.err"; then
        fail "the upload needed a commit failure to start over: $(cat "$T_TMP/$name.2.err")"
    fi
    assert_no_file "$DOCROOT/.$name.fbpart"
    assert_no_file "$DOCROOT/.$name.fbpart.ckpt"
}

# other_file_same_size MODE: A interrupted, then a different B of the same size to the same name.
other_file_same_size() {
    local mode=$1 name=ab-$1.bin
    mkrand "$SRC/a-$mode" "$SIZE"
    mkrand "$SRC/b-$mode" "$SIZE"
    interrupt "$SRC/a-$mode" "$name" "$mode"
    rerun "$SRC/b-$mode" "$name" "$mode"
    assert_ne true "$(jq -r 'select(.event == "start") | .resumed' "$T_TMP/$name.2.json" | head -n1)" \
        "the upload of B did not resume A's progress"
}

test_other_file_udp() { other_file_same_size udp; }
test_other_file_https() { other_file_same_size https; }

# middle_mib_changed MODE: A interrupted, then the same local file with only its middle MiB
# rewritten in place and its modification time set back (touch -r): same path, inode, size and
# mtime. Its change time differs, so its identity does.
middle_mib_changed() {
    local mode=$1 name=mid-$1.bin f=$SRC/mid-$1
    mkrand "$f" "$SIZE"
    touch -r "$f" "$T_TMP/mid-$mode.ref"
    interrupt "$f" "$name" "$mode"
    head -c "$CHUNK" /dev/urandom | dd of="$f" bs="$CHUNK" seek=10 conv=notrunc status=none
    touch -r "$T_TMP/mid-$mode.ref" "$f"
    assert_eq "$(stat -c %Y.%y "$T_TMP/mid-$mode.ref")" "$(stat -c %Y.%y "$f")" "mtime set back"
    rerun "$f" "$name" "$mode"
}

test_middle_mib_udp() { middle_mib_changed udp; }
test_middle_mib_https() { middle_mib_changed https; }

# partial_lost MODE HOW: A interrupted, its partial file deleted or truncated on the server, then A
# again: byte-identical.
partial_lost() {
    local mode=$1 how=$2 name=lost-$2-$1.bin
    mkrand "$SRC/$name" "$SIZE"
    interrupt "$SRC/$name" "$name" "$mode"
    if [ "$how" = deleted ]; then
        rm -f "$DOCROOT/.$name.fbpart"
    else
        truncate -s "$CHUNK" "$DOCROOT/.$name.fbpart"
    fi
    rerun "$SRC/$name" "$name" "$mode"
}

test_partial_deleted_udp() { partial_lost udp deleted; }
test_partial_truncated_udp() { partial_lost udp truncated; }
test_partial_deleted_https() { partial_lost https deleted; }
test_partial_truncated_https() { partial_lost https truncated; }

# changed_in_place: A interrupted over HTTPS (four connections: chunks complete past the first
# gap), then one chunk the session counts as received, past that gap, overwritten in place on the
# server (same inode, same size): nothing the identity or the partial-file checks can see. The
# commit fails its digest and fbcp starts over once by itself, saying why. (Within the completed
# front, which the server's running digest has already folded in, such a change would not be seen
# by the commit at all; past the gap the commit reads the chunk.)
test_changed_in_place_https() {
    local name=inplace.bin id st chunk
    require_fbctl
    mkrand "$SRC/$name" "$SIZE"
    interrupt "$SRC/$name" "$name" https
    id=$("$FBCTL" -c "$DS_DIR/fallback.xml" sessions --json 2>/dev/null |
        jq -r --arg p "$name" '(if type == "array" then .[] else (.sessions[]? // .) end)
            | select(.path == $p and .state == "active") | .id' 2>/dev/null | head -n1)
    [ -n "$id" ] || fail "no active session for $name in fbctl sessions"
    st=$(api GET "sessions/$id")
    assert_eq 200 "$st" "GET sessions/$id"
    # the first chunk after the first missing range, if it is not missing itself
    chunk=$(jq -r --argjson c "$CHUNK" --argjson n "$SIZE" '(.missing[0] | .[0] + .[1]) as $e
        | if $e < $n and ([.missing[] | select(.[0] <= $e and $e < .[0] + .[1])] | length) == 0
          then ($e / $c | floor) else empty end' "$BODY")
    [ -n "$chunk" ] || fail "no received chunk past the first gap: $(jq -c .missing "$BODY")"
    note "overwriting received chunk $chunk of the server's partial file"
    head -c "$CHUNK" /dev/urandom | dd of="$DOCROOT/.$name.fbpart" bs="$CHUNK" seek="$chunk" conv=notrunc status=none
    ALLOW_RESTART=1 rerun "$SRC/$name" "$name" https
    grep -q "the data on the server did not match the local file; starting over" "$T_TMP/$name.2.err" ||
        fail "no message naming the cause: $(cat "$T_TMP/$name.2.err")"
}

# repr_digest_of FILE: the Repr-Digest value (RFC 9530) for FILE's bytes.
repr_digest_of() {
    printf 'sha-256=:%s:' "$(openssl dgst -sha256 -binary "$1" | base64 -w0)"
}

# Repr-Digest: kept at commit, served by files/ (HEAD and GET) while the file is unchanged; fbcp
# refuses a download whose bytes do not match it (over HTTPS and UDP), and a file changed later
# (even with its mtime set back) is served without one.
test_repr_digest() {
    local name=dg.bin st want rc mode
    mkrand "$SRC/$name" $((3 * CHUNK))
    fbcp --fallback force "$SRC/$name" "$URL/$name" 2>"$T_TMP/dg.err" || fail "upload: $(cat "$T_TMP/dg.err")"
    want=$(repr_digest_of "$SRC/$name")
    st=$(api HEAD "files/$name" -I)
    assert_eq 200 "$st" "HEAD files/$name"
    assert_eq "$want" "$(header Repr-Digest)" "Repr-Digest on HEAD"
    st=$(api GET "files/$name" -r 0-99)
    assert_eq 206 "$st" "ranged GET files/$name"
    assert_eq "$want" "$(header Repr-Digest)" "Repr-Digest on a ranged GET"
    # A download checks the file it wrote against it and succeeds.
    fbcp --fallback force "$URL/$name" "$T_TMP/dg-ok" 2>"$T_TMP/dg-ok.err" || fail "download: $(cat "$T_TMP/dg-ok.err")"
    assert_file_same "$SRC/$name" "$T_TMP/dg-ok"

    # Changed in place behind the module's back, mtime set back, within the moment after the
    # commit that the kept digest allows: the digest is stale but still served; fbcp refuses.
    mkrand "$SRC/c.bin" $((3 * CHUNK))
    fbcp --fallback force "$SRC/c.bin" "$URL/c.bin" 2>"$T_TMP/c.err" || fail "upload: $(cat "$T_TMP/c.err")"
    touch -r "$DOCROOT/c.bin" "$T_TMP/c.ref"
    head -c 4096 /dev/urandom | dd of="$DOCROOT/c.bin" bs=4096 seek=100 conv=notrunc status=none
    touch -r "$T_TMP/c.ref" "$DOCROOT/c.bin"
    api HEAD "files/c.bin" -I >/dev/null
    assert_eq "$(repr_digest_of "$SRC/c.bin")" "$(header Repr-Digest)" "the stale digest (within the commit's moment)"
    for mode in https udp; do
        fbcp $(transport_args "$mode") "$URL/c.bin" "$T_TMP/c-$mode" 2>"$T_TMP/c-$mode.err"
        rc=$?
        assert_eq "$(exit_code_of digest_mismatch)" "$rc" "exit code of a download not matching Repr-Digest ($mode)"
        grep -q "Repr-Digest" "$T_TMP/c-$mode.err" || fail "message does not name the digest: $(cat "$T_TMP/c-$mode.err")"
        assert_no_file "$T_TMP/c-$mode"
        assert_no_file "$T_TMP/.c-$mode.fbpart"
        assert_no_file "$T_TMP/.c-$mode.fbpart.json"
    done

    # Changed later (mtime set back again): its change time gives it away; no digest is served,
    # and the download (nothing to check against) is the server's file.
    sleep 2.5
    head -c 4096 /dev/urandom | dd of="$DOCROOT/$name" bs=4096 seek=3 conv=notrunc status=none
    touch -r "$SRC/$name" "$DOCROOT/$name" 2>/dev/null || true
    st=$(api HEAD "files/$name" -I)
    assert_eq 200 "$st" "HEAD files/$name after the change"
    assert_eq "" "$(header Repr-Digest)" "no Repr-Digest for a file changed after its commit"
    fbcp --fallback force "$URL/$name" "$T_TMP/dg-later" 2>"$T_TMP/dg-later.err" || fail "download: $(cat "$T_TMP/dg-later.err")"
    assert_file_same "$DOCROOT/$name" "$T_TMP/dg-later"
}

# download_changed_partial MODE: a download interrupted (SIGINT: fbcp writes its sidecar with
# each written chunk's SHA-256), then its local partial file changed in a chunk the sidecar
# claims; the rerun fetches that chunk again and the result is the server's file.
download_changed_partial() {
    local mode=$1 name=dlc-$1.bin pid rc sent
    mkdir -p "$DOCROOT/dl" "$T_TMP/back"
    mkrand "$DOCROOT/dl/$name" "$SIZE"
    touch -d '-1 min' "$DOCROOT/dl/$name" # settled: a strong ETag
    docroot_chown "$DOCROOT/dl"
    fbcp_bg "$T_TMP/$name.1.json" "$T_TMP/$name.1.err" --json $(transport_args "$mode") --limit-rate 4M \
        "$URL/dl/$name" "$T_TMP/back/$name"
    pid=$FBCP_PID
    sleep 2.5
    kill -0 "$pid" 2>/dev/null || fail "download ended before the interrupt: $(cat "$T_TMP/$name.1.err")"
    kill -INT "$pid"
    wait "$pid"
    rc=$?
    assert_eq 130 "$rc" "exit code after SIGINT"
    assert_file_exists "$T_TMP/back/.$name.fbpart.json"
    [ "$(jq -r '.chunk_sha256 | length' "$T_TMP/back/.$name.fbpart.json")" -ge 64 ] ||
        fail "the sidecar records no chunk digest: $(head -c 300 "$T_TMP/back/.$name.fbpart.json")"
    # chunk 0 is claimed (the first chunk always arrives first): change it
    head -c "$CHUNK" /dev/urandom | dd of="$T_TMP/back/.$name.fbpart" bs="$CHUNK" conv=notrunc status=none
    fbcp --json $(transport_args "$mode") "$URL/dl/$name" "$T_TMP/back/$name" >"$T_TMP/$name.2.json" 2>"$T_TMP/$name.2.err"
    rc=$?
    assert_eq 0 "$rc" "second download ($(tail -n 3 "$T_TMP/$name.2.err"))"
    assert_file_same "$DOCROOT/dl/$name" "$T_TMP/back/$name"
    grep -q "changed since they were written: fetching them again" "$T_TMP/$name.2.err" ||
        fail "no word of the changed chunk: $(cat "$T_TMP/$name.2.err")"
    assert_eq true "$(jq -r 'select(.event == "start") | .resumed' "$T_TMP/$name.2.json" | head -n1)" \
        "the rest was resumed"
    assert_no_file "$T_TMP/back/.$name.fbpart"
    assert_no_file "$T_TMP/back/.$name.fbpart.json"
}

test_download_changed_partial_udp() { download_changed_partial udp; }
test_download_changed_partial_https() { download_changed_partial https; }

# ---- the server's rules, driven with curl (docs/HTTP-API.md, "Resuming") ----

SRC_A=$(printf 'a%.0s' {1..64})
SRC_B=$(printf 'b%.0s' {1..64})

# api_session NAME SOURCE_ID: POST sessions for a 4 MiB upload of NAME with that source_id; prints
# the HTTP status (the answer is in $BODY).
api_session() {
    api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"$1\",\"size\":$((4 * CHUNK)),\"source_id\":\"$2\"}"
}

# two_chunks NAME: a session of NAME (source A) with its first two chunks received; prints its id.
two_chunks() {
    local name=$1 id st
    mkrand "$SRC/$name" $((4 * CHUNK))
    st=$(api_session "$name" "$SRC_A")
    assert_eq 201 "$st" "POST sessions $name ($(head -c 200 "$BODY"))"
    id=$(jbody .id)
    st=$(put_range "$id" "$SRC/$name" 0 $((2 * CHUNK - 1)))
    assert_eq 200 "$st" "PUT of the first two chunks"
    printf '%s' "$id"
}

# cancelled_two_chunks NAME: the same, then the session failed by the admin (fbctl cancel keeps
# the partial file and its checkpoint), so only the checkpoint can resume it.
cancelled_two_chunks() {
    local id
    id=$(two_chunks "$1")
    "$FBCTL" -c "$DS_DIR/fallback.xml" cancel "$id" >/dev/null || fail "fbctl cancel $id"
    assert_file_exists "$DOCROOT/.$1.fbpart.ckpt"
}

assert_fresh() {
    assert_eq 201 "$1" "a fresh session ($(head -c 200 "$BODY"))"
    assert_eq false "$(jq -r .resumed "$BODY")" "resumed"
    assert_eq $((4 * CHUNK)) "$(missing_bytes)" "missing bytes: everything"
}

test_checkpoint_resumes_only_the_same_source_and_inode() {
    local st
    require_fbctl
    st=$(api_session bad.bin xyz)
    assert_problem 400 bad_request "$st"

    cancelled_two_chunks cp-same.bin
    st=$(api_session cp-same.bin "$SRC_A")
    assert_eq 200 "$st" "the same source resumes the checkpoint ($(head -c 200 "$BODY"))"
    assert_eq true "$(jq -r .resumed "$BODY")" "resumed"
    assert_eq $((2 * CHUNK)) "$(missing_bytes)" "missing bytes after the resume"

    cancelled_two_chunks cp-other.bin
    assert_fresh "$(api_session cp-other.bin "$SRC_B")"

    cancelled_two_chunks cp-none.bin
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"cp-none.bin\",\"size\":$((4 * CHUNK))}")
    assert_fresh "$st"

    cancelled_two_chunks cp-deleted.bin
    rm -f "$DOCROOT/.cp-deleted.bin.fbpart"
    assert_fresh "$(api_session cp-deleted.bin "$SRC_A")"

    cancelled_two_chunks cp-replaced.bin
    cp -p "$DOCROOT/.cp-replaced.bin.fbpart" "$DOCROOT/.cp-replaced.copy" # owner and mode kept
    mv "$DOCROOT/.cp-replaced.copy" "$DOCROOT/.cp-replaced.bin.fbpart" # the same bytes, another inode
    assert_fresh "$(api_session cp-replaced.bin "$SRC_A")"
}

test_live_session_resumes_only_the_same_source_and_partial() {
    local id st
    id=$(two_chunks live-same.bin)
    st=$(api_session live-same.bin "$SRC_A")
    assert_eq 200 "$st" "the same source joins the live session"
    assert_eq "$id" "$(jbody .id)" "the same session"

    id=$(two_chunks live-other.bin)
    assert_fresh "$(api_session live-other.bin "$SRC_B")"
    assert_ne "$id" "$(jbody .id)" "a new session"
    api GET "sessions/$id" >/dev/null
    assert_eq failed "$(jbody .state)" "the superseded session"

    id=$(two_chunks live-deleted.bin)
    rm -f "$DOCROOT/.live-deleted.bin.fbpart"
    st=$(api GET "sessions/$id")
    assert_problem 412 changed "$st"
    assert_fresh "$(api_session live-deleted.bin "$SRC_A")"

    id=$(two_chunks live-truncated.bin)
    truncate -s "$CHUNK" "$DOCROOT/.live-truncated.bin.fbpart"
    assert_fresh "$(api_session live-truncated.bin "$SRC_A")"
    api GET "sessions/$id" >/dev/null
    assert_eq failed "$(jbody .state)" "the session whose partial file was truncated"
}

ds_start_or_bail "all resume identity tests"
require_fbcp
udpd_start

run_test "A interrupted, B of the same size to the same name lands identical (UDP)" test_other_file_udp
run_test "A interrupted, B of the same size to the same name lands identical (HTTPS)" test_other_file_https
run_test "only the middle MiB changed, mtime set back: lands identical (UDP)" test_middle_mib_udp
run_test "only the middle MiB changed, mtime set back: lands identical (HTTPS)" test_middle_mib_https
run_test "partial file deleted on the server: the rerun completes identical (UDP)" test_partial_deleted_udp
run_test "partial file truncated on the server: the rerun completes identical (UDP)" test_partial_truncated_udp
run_test "partial file deleted on the server: the rerun completes identical (HTTPS)" test_partial_deleted_https
run_test "partial file truncated on the server: the rerun completes identical (HTTPS)" test_partial_truncated_https
run_test "partial file changed in place: the commit fails, fbcp starts over once and says why" test_changed_in_place_https
run_test "POST sessions: a checkpoint resumes only for the same source_id and partial inode" test_checkpoint_resumes_only_the_same_source_and_inode
run_test "POST/GET sessions: a live session continues only with the same source_id and partial file" test_live_session_resumes_only_the_same_source_and_partial
run_test "Repr-Digest served for committed files, stale ones not; fbcp refuses bytes that do not match" test_repr_digest
run_test "a download resumed into a changed local partial file ends identical (UDP)" test_download_changed_partial_udp
run_test "a download resumed into a changed local partial file ends identical (HTTPS)" test_download_changed_partial_https
finish
