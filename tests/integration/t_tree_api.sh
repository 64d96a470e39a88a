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

# Restarts the server on a fresh session table of NSLOTS slots.
restart_with_slots() {
    local n=$1 xml=$T_TMP/fallback-$1.xml
    ds_stop
    sed -e "s|</shm_path>|-$n</shm_path><max_sessions>$n</max_sessions>|" "$DS_DIR/fallback.xml" >"$xml"
    ds_start --fallback-xml "$xml" || fail "devserver did not start with max_sessions $n"
}

test_finished_sessions_never_block() {
    local i st ids=()
    restart_with_slots 4
    # Three times as many files as slots, one after the other: each finished session's slot is
    # taken by the next one although done_linger (300 s) has not passed.
    for ((i = 0; i < 12; i++)); do
        upload_small "many$i.bin" $((i * 100))
        assert_file_same "$SRC/many$i.bin.src" "$DOCROOT/many$i.bin"
    done
    # Four live sessions fill the table: the fifth is 503 with a short Retry-After.
    for ((i = 0; i < 4; i++)); do
        ids+=("$(new_session "live$i.bin" 10)")
    done
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data '{"direction":"upload","path":"live4.bin","size":10}')
    assert_problem 503 too_many_sessions "$st"
    assert_eq 2 "$(header Retry-After)" "Retry-After of a full table"
    # One cancelled (failed/freed) and the next one fits again.
    st=$(api DELETE "sessions/${ids[0]}")
    assert_eq 204 "$st" "cancel one live session"
    new_session "live4.bin" 10 >/dev/null
}

ds_start_or_bail "all tree API tests"

run_test "finished sessions never block a new one; a full table says Retry-After: 2" test_finished_sessions_never_block
finish
