#!/bin/bash
# t_tree_api: the server side of copying trees, driven by plain curl: finished sessions never
# block new ones (and a table full of live ones answers 503 with a short Retry-After),
# modification times kept on commit and shown in listings, empty directories made with MKCOL,
# the "older" overwrite policies, and listings of thousands of entries.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=33
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$T_TMP/src
mkdir -p "$SRC"

# upload_small NAME SIZE [extra JSON]: a whole one-chunk upload with curl; leaves the commit
# answer in $BODY and prints nothing. Fails the test on any error.
upload_small() {
    local name=$1 size=$2 extra=${3:-} id st
    mkrand "$SRC/$name.src" "$size"
    id=$(new_session "$name" "$size" "$extra")
    [ -n "$id" ] || fail "no session for $name: $(head -c 300 "$BODY")"
    if [ "$size" -gt 0 ]; then
        st=$(put_range "$id" "$SRC/$name.src" 0 $((size - 1)))
        assert_eq 200 "$st" "PUT $name"
    fi
    st=$(commit "$id" "$(sha "$SRC/$name.src")")
    assert_eq 200 "$st" "commit $name: $(head -c 300 "$BODY")"
}

# Restarts the server on a fresh session table of NSLOTS slots, at most PER_USER live ones each.
restart_with_slots() {
    local n=$1 per_user=$2 xml=$T_TMP/fallback-$1.xml
    ds_stop
    sed -e "s|</shm_path>|-$n</shm_path><max_sessions>$n</max_sessions><max_sessions_per_user>$per_user</max_sessions_per_user>|" \
        "$DS_DIR/fallback.xml" >"$xml"
    ds_start --fallback-xml "$xml" || fail "devserver did not start with max_sessions $n"
}

test_finished_sessions_never_block() {
    local i st ids=()
    restart_with_slots 4 3
    # Three times as many files as slots, one after the other: each finished session's slot is
    # taken by the next one although done_linger (300 s) has not passed, and finished sessions
    # do not count against the user's limit of 3 either.
    for ((i = 0; i < 12; i++)); do
        upload_small "many$i.bin" $((i * 100))
        assert_file_same "$SRC/many$i.bin.src" "$DOCROOT/many$i.bin"
    done
    # Three live sessions of demo: the user's limit (503, the same short Retry-After); one of
    # bob's fills the table: the next one of bob is 503 too.
    for ((i = 0; i < 3; i++)); do
        ids+=("$(new_session "live$i.bin" 10)")
    done
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data '{"direction":"upload","path":"live3.bin","size":10}')
    assert_problem 503 too_many_sessions "$st"
    assert_eq 2 "$(header Retry-After)" "Retry-After at the user's limit"
    "$DEVSERVER" adduser bob bob-password --dir "$DS_DIR" --quiet || fail "adduser failed"
    st=$(api_as bob bob-password POST sessions -H 'Content-Type: application/json' \
        --data '{"direction":"upload","path":"bob0.bin","size":10}')
    assert_eq 201 "$st" "bob's first session"
    st=$(api_as bob bob-password POST sessions -H 'Content-Type: application/json' \
        --data '{"direction":"upload","path":"bob1.bin","size":10}')
    assert_problem 503 too_many_sessions "$st"
    assert_eq 2 "$(header Retry-After)" "Retry-After of a full table"
    # One cancelled (failed/freed) and the next one fits again.
    st=$(api DELETE "sessions/${ids[0]}")
    assert_eq 204 "$st" "cancel one live session"
    new_session "live4.bin" 10 >/dev/null
}

test_mtime_kept_on_commit() {
    local st id before size=$((CHUNK + 5))
    # Seconds and nanoseconds land on the target, set before the rename.
    upload_small mt.bin 300 ',"mtime":1600000000,"mtime_ns":123456789'
    assert_eq "1600000000.123456789" "$(stat -c %.9Y "$DOCROOT/mt.bin")" "mtime of the committed file"
    # GET and HEAD: Last-Modified (Apache's, whole seconds) and X-Fallback-Mtime with the ns.
    st=$(api HEAD files/mt.bin -I)
    assert_eq 200 "$st" "HEAD mt.bin"
    assert_eq "Sun, 13 Sep 2020 12:26:40 GMT" "$(header Last-Modified)" "Last-Modified"
    assert_eq "1600000000.123456789" "$(header X-Fallback-Mtime)" "X-Fallback-Mtime"
    # mtime without mtime_ns: whole seconds; 0 (the epoch) is a time like any other.
    upload_small mt0.bin 10 ',"mtime":0'
    assert_eq "0.000000000" "$(stat -c %.9Y "$DOCROOT/mt0.bin")" "mtime 0"
    # Without mtime the file gets the commit's time, even when its data came long before.
    mkrand "$SRC/late.bin" 100
    id=$(new_session late.bin 100)
    st=$(put_range "$id" "$SRC/late.bin" 0 99)
    assert_eq 200 "$st" "PUT late.bin"
    touch -d '2001-01-01' "$DOCROOT/.late.bin.fbpart"
    before=$(date +%s)
    st=$(commit "$id" "$(sha "$SRC/late.bin")")
    assert_eq 200 "$st" "commit late.bin"
    assert_ge "$(stat -c %Y "$DOCROOT/late.bin")" "$before" "mtime of a file committed without mtime"
    # The checkpoint records the time (version 4, flag 2, the 8 bytes after the header and the
    # 48-byte identity block).
    mkrand "$SRC/ck.bin" "$size"
    id=$(new_session ck.bin "$size" ',"mtime":1500000000,"mtime_ns":7')
    st=$(put_range "$id" "$SRC/ck.bin" 0 $((CHUNK - 1)))
    assert_eq 200 "$st" "PUT the first chunk of ck.bin"
    assert_eq 4 "$(od -An -tu4 -j8 -N4 "$DOCROOT/.ck.bin.fbpart.ckpt" | tr -d ' ')" "checkpoint version"
    assert_eq 2 "$(od -An -tu4 -j36 -N4 "$DOCROOT/.ck.bin.fbpart.ckpt" | tr -d ' ')" "checkpoint flags"
    # after the 40-byte header and the 48-byte identity block (lib/fb_checkpoint.c)
    assert_eq 1500000000000000007 "$(od -An -tu8 -j88 -N8 "$DOCROOT/.ck.bin.fbpart.ckpt" | tr -d ' ')" \
        "checkpoint source mtime"
    api DELETE "sessions/$id" >/dev/null
}

test_mtime_bad_values() {
    local st v
    for v in '"mtime":-1' '"mtime":1.5' '"mtime":"1600000000"' '"mtime":10000000000' \
        '"mtime":1,"mtime_ns":1000000000' '"mtime":1,"mtime_ns":-1' '"mtime":1,"mtime_ns":"5"' '"mtime_ns":5'; do
        st=$(api POST sessions -H 'Content-Type: application/json' \
            --data "{\"direction\":\"upload\",\"path\":\"badmt.bin\",\"size\":1,$v}")
        assert_problem 400 bad_request "$st"
    done
    assert_no_file "$DOCROOT/.badmt.bin.fbpart"
}

test_listing_mtimes() {
    local st
    mkdir -p "$DOCROOT/lt/sub"
    echo hi >"$DOCROOT/lt/f.txt"
    touch -d '@1400000000.5' "$DOCROOT/lt/f.txt"
    touch -d '@1300000000.25' "$DOCROOT/lt/sub"
    docroot_chown "$DOCROOT/lt"
    st=$(api GET files/lt/)
    assert_eq 200 "$st" "GET files/lt/"
    assert_eq '[["f.txt","file",3,1400000000,500000000],["sub","dir",null,1300000000,250000000]]' \
        "$(jq -c '[.entries[] | [.name, .type, .size, .mtime, .mtime_ns]]' "$BODY")" "listing times"
    # The download session answer has them too.
    st=$(api POST sessions -H 'Content-Type: application/json' --data '{"direction":"download","path":"lt/f.txt"}')
    assert_eq 201 "$st" "download session"
    assert_eq "1400000000 500000000" "$(jq -r '"\(.mtime) \(.mtime_ns)"' "$BODY")" "download answer times"
}

test_mkcol_makes_directories() {
    local st
    st=$(api MKCOL files/empty)
    assert_eq 201 "$st" "MKCOL a new directory: $(head -c 300 "$BODY")"
    [ -d "$DOCROOT/empty" ] || fail "no directory made"
    assert_eq 755 "$(stat -c %a "$DOCROOT/empty")" "directory mode"
    assert_eq true "$(jq -r .created "$BODY")" "created"
    assert_eq dir "$(jbody .type)" "type"
    assert_eq /fallback/files/empty "$(header Location)" "Location"
    # Idempotent: a re-run of a tree copy finds it there.
    st=$(api MKCOL files/empty/)
    assert_eq 200 "$st" "MKCOL of an existing directory"
    assert_eq false "$(jq -r .created "$BODY")" "created the second time"
    # Parents included, names with spaces and UTF-8.
    st=$(api MKCOL "files/deep/er%20one/%C3%A9t%C3%A9")
    assert_eq 201 "$st" "MKCOL with parents"
    [ -d "$DOCROOT/deep/er one/été" ] || fail "nested directory not made"
    assert_eq "deep/er one/été" "$(jbody .path)" "path"
    assert_eq 0 "$(find "$DOCROOT/deep" -type f | wc -l)" "nothing but directories"
    # The docroot itself: there already, and its time is the admin's.
    local before
    before=$(stat -c %.9Y "$DOCROOT")
    st=$(api MKCOL files/ -H 'X-Fallback-Mtime: 1000')
    assert_eq 200 "$st" "MKCOL of the docroot"
    assert_eq "$before" "$(stat -c %.9Y "$DOCROOT")" "docroot time unchanged"
    # The listing shows it as a directory.
    st=$(api GET files/deep/)
    assert_eq '[["er one","dir"]]' "$(jq -c '[.entries[] | [.name, .type]]' "$BODY")" "listing of deep/"
}

test_mkcol_mtime() {
    local st
    st=$(api MKCOL files/timed -H 'X-Fallback-Mtime: 1500000000.5')
    assert_eq 201 "$st" "MKCOL with a time"
    assert_eq 1500000000.500000000 "$(stat -c %.9Y "$DOCROOT/timed")" "directory mtime"
    assert_eq "1500000000 500000000" "$(jq -r '"\(.mtime) \(.mtime_ns)"' "$BODY")" "mtime in the answer"
    # Again on the existing directory (after its files were copied into it): the time is set.
    touch "$DOCROOT/timed/newfile"
    st=$(api MKCOL files/timed -H 'X-Fallback-Mtime: 1400000000.000000042')
    assert_eq 200 "$st" "MKCOL of the existing directory with a time"
    assert_eq 1400000000.000000042 "$(stat -c %.9Y "$DOCROOT/timed")" "directory mtime set again"
    # Without the header the time is the file system's (now).
    st=$(api MKCOL files/untimed)
    assert_eq 201 "$st" "MKCOL without a time"
    assert_ge "$(stat -c %Y "$DOCROOT/untimed")" $(($(date +%s) - 60)) "mtime of a directory made now"
    for v in 'abc' '-1' '1.' '1.1234567890' '10000000000' '1 2' '1,5' '0x10'; do
        st=$(api MKCOL files/badtime -H "X-Fallback-Mtime: $v")
        assert_problem 400 bad_request "$st"
    done
    assert_no_file "$DOCROOT/badtime"
}

test_mkcol_conflicts_and_refusals() {
    local st
    echo data >"$DOCROOT/plain.txt"
    docroot_chown "$DOCROOT/plain.txt"
    st=$(api MKCOL files/plain.txt)
    assert_problem 409 exists "$st"
    assert_eq file "$(jbody .target)" "target of a file in the way"
    assert_eq data "$(cat "$DOCROOT/plain.txt")" "the file is untouched"
    st=$(api MKCOL files/plain.txt/sub)
    assert_problem 409 exists "$st"
    assert_eq file "$(jbody .target)" "target of a file as a parent"
    # Path checks as for files/: Apache removes dot segments from URLs before the module sees
    # them (404 or 405 outside the route, or 400); whatever answers, nothing is made outside.
    local u
    for u in "files/../../escaped" "files/a/%2e%2e/%2e%2e/%2e%2e/escaped" "files/%2e%2e/%2e%2e/escaped" \
        "files/..%2f..%2fescaped"; do
        st=$(req --path-as-is -u "$DS_USER:$DS_PASSWORD" -X MKCOL "$URL/$u")
        assert_in "$st" 400 403 404 405
        if [ "$st" = 403 ]; then assert_problem 403 path_escape "$st"; fi
    done
    assert_eq "" "$(find "$T_TMP" -name escaped)" "nothing named escaped made anywhere"
    st=$(api MKCOL "files/.x.bin.fbpart")
    assert_problem 400 bad_path "$st"
    # Never through a symlink out of the docroot; one that stays inside is followed.
    mkdir -p "$T_TMP/outside"
    ln -sfn "$T_TMP/outside" "$DOCROOT/out"
    ln -sfn empty "$DOCROOT/inside"
    ln -sfn nowhere "$DOCROOT/dangling"
    st=$(api MKCOL files/out)
    assert_problem 403 path_escape "$st"
    st=$(api MKCOL files/out/sub/deeper)
    assert_problem 403 path_escape "$st"
    assert_eq 0 "$(find "$T_TMP/outside" -mindepth 1 | wc -l)" "nothing made outside"
    st=$(api MKCOL files/inside)
    assert_eq 200 "$st" "a symlink to a directory inside"
    st=$(api MKCOL files/dangling)
    assert_problem 409 exists "$st"
    # A body is refused; so is a request without credentials; the Allow header names MKCOL.
    st=$(api MKCOL files/withbody --data-binary 'x')
    assert_problem 400 bad_request "$st"
    st=$(api MKCOL files/withbody -H 'Transfer-Encoding: chunked' --data-binary 'x')
    assert_problem 400 bad_request "$st"
    assert_no_file "$DOCROOT/withbody"
    st=$(req -X MKCOL "$URL/files/noauth")
    assert_eq 401 "$st" "MKCOL without credentials"
    assert_no_file "$DOCROOT/noauth"
    st=$(api PUT files/x.bin --data-binary x)
    assert_problem 405 method_not_allowed "$st"
    assert_eq "GET, HEAD, MKCOL" "$(header Allow)" "Allow of files/"
}

# target NAME CONTENT-FILE MTIME: a file in the docroot, owned as Apache would own it, with a time.
target() {
    cp "$2" "$DOCROOT/$1"
    touch -d "@$3" "$DOCROOT/$1"
    docroot_chown "$DOCROOT/$1"
}

# post_upload NAME SIZE EXTRA-JSON: POST sessions; prints the status, answer in $BODY.
post_upload() {
    api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"$1\",\"size\":$2$3}"
}

# assert_skipped REASON STATUS: the last answer is the skip document with that reason.
assert_skipped() {
    assert_eq 200 "$2" "skip answer: $(head -c 300 "$BODY")"
    assert_eq true "$(jq -r .skipped "$BODY")" "skipped"
    assert_eq done "$(jbody .state)" "state of a skipped upload"
    assert_eq "$1" "$(jbody .reason)" "reason"
    assert_eq "" "$(jbody .id)" "no session for a skipped upload"
}

test_overwrite_older() {
    local st
    mkrand "$SRC/old.src" 50
    mkrand "$SRC/new.src" 60
    # An older target is replaced, and gets the source's time.
    target ow1.bin "$SRC/old.src" 1000000000
    upload_small ow1.bin 70 ',"overwrite":"older","mtime":1600000000'
    assert_file_same "$SRC/ow1.bin.src" "$DOCROOT/ow1.bin"
    assert_eq 1600000000 "$(stat -c %Y "$DOCROOT/ow1.bin")" "time of the replaced file"
    # A newer target is kept, untouched; so is one of the same age (to the nanosecond).
    target ow2.bin "$SRC/new.src" 1700000000
    st=$(post_upload ow2.bin 70 ',"overwrite":"older","mtime":1600000000')
    assert_skipped newer "$st"
    assert_file_same "$SRC/new.src" "$DOCROOT/ow2.bin"
    assert_eq 1700000000 "$(stat -c %Y "$DOCROOT/ow2.bin")" "time of the kept file"
    assert_no_file "$DOCROOT/.ow2.bin.fbpart"
    st=$(post_upload ow2.bin 70 ',"overwrite":"older","mtime":1700000000,"mtime_ns":0')
    assert_skipped newer "$st"
    st=$(post_upload ow2.bin 70 ',"overwrite":"older","mtime":1700000000,"mtime_ns":1')
    assert_eq 201 "$st" "a target older by one nanosecond is replaced"
    api DELETE "sessions/$(jbody .id)" >/dev/null
    # No target: an ordinary upload.
    upload_small ow3.bin 5 ',"overwrite":"older","mtime":1600000000'
    assert_file_same "$SRC/ow3.bin.src" "$DOCROOT/ow3.bin"
    # The older policies need the time.
    for v in older 'if_different,older'; do
        st=$(post_upload ow2.bin 70 ",\"overwrite\":\"$v\"")
        assert_problem 400 bad_request "$st"
    done
    st=$(post_upload ow2.bin 70 ',"overwrite":"newer","mtime":1')
    assert_problem 400 bad_request "$st"
}

test_overwrite_if_different_older() {
    local st
    mkrand "$SRC/same.src" 80
    mkrand "$SRC/other.src" 80
    # Older but identical (the digest says so): skipped, and not touched, not even its time.
    target id1.bin "$SRC/same.src" 1000000000
    st=$(post_upload id1.bin 80 ",\"overwrite\":\"if_different,older\",\"mtime\":1600000000,\"sha256\":\"$(sha "$SRC/same.src")\"")
    assert_skipped identical "$st"
    # identical content: not replaced, but it takes the source's time (as rsync -a gives it)
    assert_eq 1600000000 "$(stat -c %Y "$DOCROOT/id1.bin")" "time of the identical file"
    # Older and different: replaced.
    target id2.bin "$SRC/other.src" 1000000000
    cp "$SRC/same.src" "$SRC/id2.bin.src"
    local id
    id=$(new_session id2.bin 80 ",\"overwrite\":\"if_different,older\",\"mtime\":1600000000,\"sha256\":\"$(sha "$SRC/same.src")\"")
    st=$(put_range "$id" "$SRC/same.src" 0 79)
    assert_eq 200 "$st" "PUT id2.bin"
    st=$(commit "$id" "$(sha "$SRC/same.src")")
    assert_eq 200 "$st" "commit id2.bin"
    assert_file_same "$SRC/same.src" "$DOCROOT/id2.bin"
    # Older, another size: replaced (no digest needed to tell).
    target id3.bin "$SRC/other.src" 1000000000
    upload_small id3.bin 81 ',"overwrite":"if_different,older","mtime":1600000000'
    assert_file_same "$SRC/id3.bin.src" "$DOCROOT/id3.bin"
    # Newer and different: skipped as newer.
    target id4.bin "$SRC/other.src" 1700000000
    st=$(post_upload id4.bin 80 ",\"overwrite\":\"if_different,older\",\"mtime\":1600000000,\"sha256\":\"$(sha "$SRC/same.src")\"")
    assert_skipped newer "$st"
    assert_file_same "$SRC/other.src" "$DOCROOT/id4.bin"
    # Older, same size, no digest, ask_digest: the question of if_different.
    target id5.bin "$SRC/other.src" 1000000000
    st=$(post_upload id5.bin 80 ',"overwrite":"if_different,older","mtime":1600000000,"ask_digest":true')
    assert_problem 409 exists "$st"
    assert_eq file "$(jbody .target)" "target of the digest question"
    # Plain if_different says why it skipped too.
    st=$(post_upload id1.bin 80 ",\"overwrite\":\"if_different\",\"sha256\":\"$(sha "$SRC/same.src")\"")
    assert_skipped identical "$st"
}

test_overwrite_older_checked_again_at_commit() {
    local st id
    mkrand "$SRC/c.src" 40
    target oc.bin "$SRC/c.src" 1000000000
    mkrand "$SRC/oc.bin.src" 40
    id=$(new_session oc.bin 40 ',"overwrite":"older","mtime":1600000000')
    st=$(put_range "$id" "$SRC/oc.bin.src" 0 39)
    assert_eq 200 "$st" "PUT oc.bin"
    # Meanwhile someone writes a newer version of the target.
    touch -d @1700000000 "$DOCROOT/oc.bin"
    st=$(commit "$id" "$(sha "$SRC/oc.bin.src")")
    assert_problem 409 exists "$st"
    assert_eq newer "$(jbody .reason)" "reason of the refused commit"
    assert_file_same "$SRC/c.src" "$DOCROOT/oc.bin"
    assert_eq 1700000000 "$(stat -c %Y "$DOCROOT/oc.bin")" "the newer target's time"
    st=$(api GET "sessions/$id")
    assert_eq active "$(jbody .state)" "the session stays active"
    # Older again (restored from a backup, say): the same session commits.
    touch -d @1100000000 "$DOCROOT/oc.bin"
    st=$(commit "$id" "$(sha "$SRC/oc.bin.src")")
    assert_eq 200 "$st" "commit once the target is older"
    assert_file_same "$SRC/oc.bin.src" "$DOCROOT/oc.bin"
}

# list_time DIR: the fastest of three listings of files/DIR/, in milliseconds; the last one stays
# in $BODY.
list_time() {
    local i t best=999999999
    for i in 1 2 3; do
        t=$(curl -sS --cacert "$CA" --max-time 60 -u "$DS_USER:$DS_PASSWORD" -o "$BODY" -w '%{time_total}' \
            "$URL/files/$1/") || fail "listing $1 failed"
        t=$(awk -v t="$t" 'BEGIN { printf "%d", t * 1000 }')
        [ "$t" -lt "$best" ] && best=$t
    done
    echo "$best"
}

test_big_listings() {
    local t2 t20
    mkdir -p "$DOCROOT/l2k" "$DOCROOT/l20k"
    (cd "$DOCROOT/l2k" && seq -f 'f-%06g' 1 2000 | xargs touch) || fail "cannot make 2,000 files"
    # Names with spaces and UTF-8, as real trees have.
    (cd "$DOCROOT/l20k" && seq -f 'fichier été %06g.bin' 1 20000 | tr '\n' '\0' | xargs -0 touch) ||
        fail "cannot make 20,000 files"
    t2=$(list_time l2k)
    t20=$(list_time l20k)
    note "listing 2,000 entries: $t2 ms, 20,000 entries: $t20 ms, $(stat -c %s "$BODY") bytes"
    assert_eq 20000 "$(jq '.entries | length' "$BODY")" "entries listed"
    assert_eq false "$(jq '.truncated // false' "$BODY")" "not truncated"
    assert_eq "fichier été 000001.bin|fichier été 020000.bin|file" \
        "$(jq -r '[.entries[0].name, .entries[-1].name, .entries[0].type] | join("|")' "$BODY")" "first, last, type"
    assert_eq 20000 "$(jq '[.entries[] | select(.mtime != null and .mtime_ns != null and .size == 0)] | length' "$BODY")" \
        "every entry has its size and time"
    # Linear: ten times the entries take about ten times as long (quadratic would be 100).
    assert_le "$t20" 10000 "milliseconds for 20,000 entries"
    assert_le "$t20" $((30 * (t2 + 5))) "20,000 entries against 2,000 (ms)"
}

ds_start_or_bail "all tree API tests"

run_test "MKCOL makes a directory and its parents, 201 then 200" test_mkcol_makes_directories
run_test "MKCOL sets X-Fallback-Mtime, also on an existing directory" test_mkcol_mtime
run_test "MKCOL: 409 for a file in the way, path checks, symlinks, bodies, auth, Allow" test_mkcol_conflicts_and_refusals

run_test "mtime and mtime_ns kept on commit, shown by HEAD, recorded in the checkpoint" test_mtime_kept_on_commit
run_test "bad mtime values -> 400 bad_request" test_mtime_bad_values
run_test "listings and download answers give mtime and mtime_ns for every entry" test_listing_mtimes

run_test "overwrite older: older replaced, newer and same age skipped, mtime required" test_overwrite_older
run_test "overwrite if_different,older: identical and newer skipped, different+older replaced" test_overwrite_if_different_older
run_test "overwrite older is checked again at commit: 409 exists, reason newer" test_overwrite_older_checked_again_at_commit
run_test "listings of 2,000 and 20,000 entries, linear" test_big_listings
run_test "finished sessions never block a new one; a full table says Retry-After: 2" test_finished_sessions_never_block
finish
