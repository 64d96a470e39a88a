#!/bin/bash
# t_bad_input: hostile and broken requests. Each one must get the documented status and problem
# code, must not create the target, and must leave the partial upload resumable: at the end a
# correct PUT and commit of the same session completes the file. Path tricks (.., absolute paths,
# encoded dots, symlinks out of the docroot) must not read or write anything outside it.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=7
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$T_TMP/src
OUTSIDE=$T_TMP/outside
MARKER=TOPSECRET-$RANDOM$RANDOM
SIZE=$((3 * CHUNK + 100))
TARGET=$DOCROOT/bad/target.bin
mkdir -p "$SRC" "$OUTSIDE"
echo "$MARKER" >"$OUTSIDE/secret.txt"
chmod 755 "$OUTSIDE"
chmod 644 "$OUTSIDE/secret.txt"
mkrand "$SRC/target.bin" "$SIZE"
head -c 100 /dev/urandom >"$SRC/h100"

sid() { cat "$T_TMP/sid"; }

# The session is untouched: target absent, still active, MISSING as expected (jq -c of .missing).
assert_session_intact() {
    local want=$1 st
    assert_no_file "$TARGET"
    st=$(api GET "sessions/$(sid)")
    assert_eq 200 "$st" "session still there"
    assert_eq active "$(jbody .state)" "session state"
    assert_eq "$want" "$(jq -c .missing "$BODY")" "missing ranges"
}

# put_raw CONTENT_RANGE BODYFILE [curl args]: PUT with exactly this header and body.
put_raw() {
    local cr=$1 body=$2
    shift 2
    api PUT "sessions/$(sid)/data" -H "Content-Range: $cr" -H 'Content-Type: application/octet-stream' \
        --data-binary "@$body" "$@"
}

test_setup() {
    local id
    id=$(new_session bad/target.bin "$SIZE") || exit 1
    echo "$id" >"$T_TMP/sid"
    assert_session_intact "[[0,$SIZE]]"
}

test_malformed_content_range() {
    local cr st
    st=$(api PUT "sessions/$(sid)/data" -H 'Content-Type: application/octet-stream' --data-binary "@$SRC/h100")
    assert_problem 400 bad_range "$st"
    for cr in "bytes 0-99" "bytes=0-99/$SIZE" "bytes 99-0/$SIZE" "bytes -1-98/$SIZE" "bytes 0-/$SIZE" \
        "bytes a-99/$SIZE" "chars 0-99/$SIZE" "bytes 0 - 99/$SIZE" "bytes 0-99/$SIZE junk" "bytes 0-99/-$SIZE" \
        "bytes 0x0-99/$SIZE" "bytes */$SIZE" "bytes 0-99/" " " "bytes 0-99/${SIZE}0x"; do
        st=$(put_raw "$cr" "$SRC/h100")
        [ "$st" = 400 ] || fail "Content-Range '$cr': expected 400, got $st: $(head -c 200 "$BODY")"
        assert_problem 400 bad_range "$st"
    done
    # Overflowing numbers are malformed or unsatisfiable, never accepted.
    st=$(put_raw "bytes 0-18446744073709551616/$SIZE" "$SRC/h100")
    assert_in "$st" 400 416
    assert_session_intact "[[0,$SIZE]]"
}

test_out_of_bounds() {
    local st
    head -c 100 /dev/urandom >"$T_TMP/b100"
    st=$(put_raw "bytes $SIZE-$((SIZE + 99))/$SIZE" "$T_TMP/b100")
    assert_problem 416 range_not_satisfiable "$st"
    st=$(put_raw "bytes $((SIZE - 50))-$((SIZE + 49))/$SIZE" "$T_TMP/b100")
    assert_problem 416 range_not_satisfiable "$st"
    # SIZE must equal the session size.
    st=$(put_raw "bytes 0-99/$((SIZE + 1))" "$SRC/h100")
    assert_problem 416 range_not_satisfiable "$st"
    st=$(put_raw "bytes 0-99/$((SIZE - 1))" "$SRC/h100")
    assert_problem 416 range_not_satisfiable "$st"
    assert_session_intact "[[0,$SIZE]]"
}

test_overlap_complete_chunk() {
    local st
    st=$(put_range "$(sid)" "$SRC/target.bin" 0 $((CHUNK - 1)))
    assert_eq 200 "$st" "PUT chunk 0"
    assert_session_intact "[[$CHUNK,$((SIZE - CHUNK))]]"
    # Rewriting part of chunk 0, or a range straddling into it, is refused.
    st=$(put_raw "bytes 0-99/$SIZE" "$SRC/h100")
    assert_problem 416 range_not_satisfiable "$st"
    st=$(put_range "$(sid)" "$SRC/target.bin" $((CHUNK - 50)) $((CHUNK + 49)))
    assert_problem 416 range_not_satisfiable "$st"
    st=$(put_range "$(sid)" "$SRC/target.bin" 0 $((CHUNK - 1)))
    assert_problem 416 range_not_satisfiable "$st"
    # Garbage must not have reached chunk 0: the first 100 bytes of the partial are the real ones.
    cmp -s <(head -c 100 "$DOCROOT/bad/.target.bin.fbpart") <(head -c 100 "$SRC/target.bin") ||
        fail "chunk 0 of the partial file was overwritten"
    assert_session_intact "[[$CHUNK,$((SIZE - CHUNK))]]"
}

test_body_length_differs() {
    local st first=$CHUNK last=$((2 * CHUNK - 1))
    head -c 500 /dev/urandom >"$T_TMP/b500"
    head -c 2000 /dev/urandom >"$T_TMP/b2000"
    # Content-Length shorter than the range.
    st=$(put_raw "bytes $first-$((first + 999))/$SIZE" "$T_TMP/b500")
    assert_problem 400 bad_range "$st"
    # Content-Length longer than the range.
    st=$(put_raw "bytes $first-$((first + 999))/$SIZE" "$T_TMP/b2000")
    assert_problem 400 bad_range "$st"
    # Chunked body that ends early.
    st=$(put_raw "bytes $first-$((first + 999))/$SIZE" "$T_TMP/b500" -H 'Transfer-Encoding: chunked')
    assert_problem 400 bad_range "$st"
    # A whole chunk's range with a short chunked body must not mark the chunk complete.
    st=$(put_raw "bytes $first-$last/$SIZE" "$T_TMP/b500" -H 'Transfer-Encoding: chunked')
    assert_problem 400 bad_range "$st"
    assert_session_intact "[[$CHUNK,$((SIZE - CHUNK))]]"
}

# A body that ends before its range does: whatever whole chunks it brought are kept (the module
# gathers a quarter MiB before each write; the last, partial gathering must not be lost). The
# range starts 100 bytes into chunk 0, so chunk 1 ends inside a gathering, and the body stops 50
# bytes into chunk 2: chunk 1 is complete only if that last gathering was written.
test_body_ending_early_keeps_whole_chunks() {
    local id st size=$((3 * CHUNK)) end=$((2 * CHUNK + 50))
    id=$(new_session bad/early.bin "$size") || fail "no session"
    mkrand "$SRC/early.bin" "$size"
    tail -c +101 "$SRC/early.bin" | head -c $((end - 100)) >"$T_TMP/early.body"
    st=$(api PUT "sessions/$id/data" -H "Content-Range: bytes 100-$((size - 1))/$size" \
        -H 'Content-Type: application/octet-stream' -H 'Transfer-Encoding: chunked' \
        --data-binary "@$T_TMP/early.body")
    assert_problem 400 bad_range "$st"
    st=$(api GET "sessions/$id")
    assert_eq 200 "$st" "session after the short body"
    assert_eq "[[0,$CHUNK],[$((2 * CHUNK)),$CHUNK]]" "$(jq -c .missing "$BODY")" "missing after the short body"
    cmp -s <(tail -c +$((CHUNK + 1)) "$DOCROOT/bad/.early.bin.fbpart" | head -c "$CHUNK") \
        <(tail -c +$((CHUNK + 1)) "$SRC/early.bin" | head -c "$CHUNK") ||
        fail "chunk 1 of the partial file differs from what was sent"
    assert_no_file "$DOCROOT/bad/early.bin"
    st=$(api DELETE "sessions/$id")
    assert_in "$st" 200 204
}

test_json_path_escape() {
    local p st
    for p in "../x.bin" "../../outside/x.bin" "a/../../x.bin" "/etc/x.bin" "/x.bin" ".." "a/.."; do
        st=$(api POST sessions -H 'Content-Type: application/json' \
            --data-binary "{\"direction\":\"upload\",\"path\":\"$p\",\"size\":10}")
        [ "$st" = 403 ] || fail "path '$p': expected 403, got $st: $(head -c 200 "$BODY")"
        assert_problem 403 path_escape "$st"
    done
    for p in "a//b.bin" "a/./b.bin" "./b.bin" "a\\nb" "a\\u0001b"; do
        st=$(api POST sessions -H 'Content-Type: application/json' \
            --data-binary "{\"direction\":\"upload\",\"path\":\"$p\",\"size\":10}")
        [ "$st" = 400 ] || fail "path '$p': expected 400, got $st: $(head -c 200 "$BODY")"
        assert_problem 400 bad_path "$st"
    done
    # Downloads too.
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary '{"direction":"download","path":"../../outside/secret.txt"}')
    assert_problem 403 path_escape "$st"
    grep -q "$MARKER" "$BODY" && fail "secret leaked"
    # NUL inside a JSON string: refused either as broken JSON or as a bad path.
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary '{"direction":"upload","path":"a\u0000b","size":10}')
    assert_eq 400 "$st" "NUL in the path"
    assert_in "$(jbody .code)" bad_path bad_request
    local d
    for d in / /etc "$T_TMP" "$DS_DIR" "$OUTSIDE"; do
        assert_no_file "$d/x.bin"
        assert_no_file "$d/.x.bin.fbpart"
    done
    assert_session_intact "[[$CHUNK,$((SIZE - CHUNK))]]"
}

test_url_path_escape() {
    local u st
    mkdir -p "$DOCROOT/sub"
    docroot_chown "$DOCROOT/sub"
    # What Apache does with each: it normalises /../ and %2e%2e itself (400 when the result would
    # leave the URL root, or a different URL), and refuses %2f (AllowEncodedSlashes Off) with
    # 404. Whatever answers, nothing outside may be read.
    for u in "files/../../outside/secret.txt" "files/sub/../../../outside/secret.txt" \
        "files/%2e%2e/%2e%2e/outside/secret.txt" "files/%2E%2E/%2E%2E/outside/secret.txt" \
        "files/..%2f..%2foutside%2fsecret.txt" "files/%2e%2e%2f%2e%2e%2foutside%2fsecret.txt" \
        "files/sub/%2e%2e/%2e%2e/%2e%2e/outside/secret.txt" "files/.%2e/.%2e/outside/secret.txt" \
        "files//etc/passwd" "files/%2fetc%2fpasswd" "files/..%5c..%5coutside%5csecret.txt" \
        "files/%252e%252e/%252e%252e/outside/secret.txt" "files/..;/..;/outside/secret.txt"; do
        st=$(req --path-as-is -u "$DS_USER:$DS_PASSWORD" "$URL/$u")
        note "GET $u -> $st"
        assert_in "$st" 400 403 404
        if grep -aq "$MARKER" "$BODY" || grep -aq '^root:' "$BODY"; then fail "$u leaked a file outside the docroot"; fi
        if [ "$st" = 403 ]; then assert_problem 403 path_escape "$st"; fi
    done
    # What reached the module (it answers problem+json; Apache's own refusals are HTML): the
    # path after Apache's normalisation, which must hold no dot segment.
    local reached
    wait_for 5 grep -q 'files/..;/..;/outside' "$DS_DIR/access.log" || fail "access log not written"
    reached=$(grep 'GET /fallback/files/' "$DS_DIR/access.log" | grep 'ct=application/problem+json' |
        sed -n 's/.* uri=\([^ ]*\) .*/\1/p')
    note "paths that reached the module: $(echo "$reached" | tr '\n' ' ')"
    if grep -qE '(^|/)\.\.?(/|$)' <<<"$reached"; then fail "a dot segment reached the module: $reached"; fi
    # Encoded dots that Apache decodes and merges must reach the module as a normalised path:
    # files/sub/%2e%2e/x is files/x.
    printf 'inside\n' >"$DOCROOT/in.txt"
    docroot_chown "$DOCROOT/in.txt"
    st=$(req --path-as-is -u "$DS_USER:$DS_PASSWORD" "$URL/files/sub/%2e%2e/in.txt")
    note "GET files/sub/%2e%2e/in.txt -> $st"
    if [ "$st" = 200 ]; then assert_eq inside "$(cat "$BODY")" "normalised path content"; else assert_in "$st" 400 403 404; fi
}

test_symlink_escape() {
    local st
    ln -s "$OUTSIDE" "$DOCROOT/link"
    ln -s "$OUTSIDE/secret.txt" "$DOCROOT/secretlink"
    ln -s /etc "$DOCROOT/etclink"
    mkdir -p "$DOCROOT/real"
    printf 'ok\n' >"$DOCROOT/real/f.txt"
    ln -s real "$DOCROOT/inlink"
    docroot_chown "$DOCROOT/real"
    for u in files/link/secret.txt files/secretlink files/etclink/passwd files/link files/link/; do
        st=$(api GET "$u")
        assert_problem 403 path_escape "$st"
        if grep -aq "$MARKER" "$BODY" || grep -aq '^root:' "$BODY"; then fail "$u leaked a file outside the docroot"; fi
    done
    st=$(api GET files/inlink/f.txt)
    assert_eq 200 "$st" "symlink staying inside is followed"
    assert_eq ok "$(cat "$BODY")" "content through the inside symlink"
    # Uploads through an escaping symlink create nothing outside.
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary '{"direction":"upload","path":"link/new.bin","size":10}')
    assert_problem 403 path_escape "$st"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary '{"direction":"upload","path":"link/deeper/new.bin","size":10}')
    assert_problem 403 path_escape "$st"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary '{"direction":"download","path":"secretlink"}')
    assert_problem 403 path_escape "$st"
    # Uploading onto the link's own name may be refused, or may replace the link (rename never
    # follows it); either way the file it points to stays untouched.
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary '{"direction":"upload","path":"secretlink","size":10}')
    note "upload onto the escaping symlink's name -> $st"
    if [ "$st" = 201 ]; then
        local lid
        lid=$(jbody .id)
        printf '0123456789' >"$T_TMP/ten"
        st=$(put_range "$lid" "$T_TMP/ten" 0 9)
        assert_eq 200 "$st" "PUT onto the link's name"
        st=$(commit "$lid" "$(sha "$T_TMP/ten")")
        note "commit onto the escaping symlink's name -> $st"
        if [ "$st" = 200 ]; then
            [ -L "$DOCROOT/secretlink" ] && fail "commit left the symlink in place but said done"
            assert_file_same "$T_TMP/ten" "$DOCROOT/secretlink"
        else
            assert_in "$st" 403 409
        fi
    else
        assert_in "$st" 403 409
    fi
    assert_eq "$MARKER" "$(cat "$OUTSIDE/secret.txt")" "secret unchanged"
    assert_eq "secret.txt" "$(find "$OUTSIDE" -mindepth 1 -printf '%P ' | sed 's/ $//')" "nothing created outside"
}

test_other_users_session() {
    local st
    "$DEVSERVER" adduser bob bob-password --dir "$DS_DIR" --quiet || fail "adduser failed"
    st=$(api_as bob bob-password GET "sessions/$(sid)")
    assert_problem 404 not_found "$st"
    st=$(req -u bob:bob-password -X PUT -H "Content-Range: bytes $CHUNK-$((CHUNK + 99))/$SIZE" \
        --data-binary "@$SRC/h100" "$URL/sessions/$(sid)/data")
    assert_problem 404 not_found "$st"
    st=$(req -u bob:bob-password -X POST -H 'Content-Type: application/json' \
        --data-binary "{\"sha256\":\"$(sha "$SRC/target.bin")\"}" "$URL/sessions/$(sid)/commit")
    assert_problem 404 not_found "$st"
    st=$(api_as bob bob-password DELETE "sessions/$(sid)")
    assert_problem 404 not_found "$st"
    # A made-up id is 404 for its "owner" too.
    st=$(api GET "sessions/00000000deadbeefdeadbeefdeadbeef")
    assert_problem 404 not_found "$st"
    st=$(api GET "sessions/not-an-id")
    assert_in "$st" 400 404
    assert_session_intact "[[$CHUNK,$((SIZE - CHUNK))]]"
}

test_oversized_json() {
    local st
    {
        printf '{"direction":"upload","path":"big.bin","size":10,"pad":"'
        head -c 70000 /dev/zero | tr '\0' 'a'
        printf '"}'
    } >"$T_TMP/big.json"
    st=$(api POST sessions -H 'Content-Type: application/json' --data-binary "@$T_TMP/big.json")
    assert_problem 413 too_large "$st"
    st=$(api POST "sessions/$(sid)/commit" -H 'Content-Type: application/json' --data-binary "@$T_TMP/big.json")
    assert_problem 413 too_large "$st"
    assert_no_file "$DOCROOT/big.bin"
    assert_session_intact "[[$CHUNK,$((SIZE - CHUNK))]]"
}

test_broken_json() {
    local body st
    for body in '{"direction":"upload",' 'not json' '[1,2]' '"upload"' '{"direction":"upload"}}'; do
        st=$(api POST sessions -H 'Content-Type: application/json' --data-binary "$body")
        [ "$st" = 400 ] || fail "body '$body': expected 400, got $st: $(head -c 200 "$BODY")"
        assert_problem 400 bad_request "$st"
    done
    # Well-formed JSON with missing or wrong members: 400 with some code.
    for body in '{}' '{"direction":"upload","path":5,"size":10}' '{"direction":"upload","path":"j.bin","size":"10"}' \
        '{"direction":"upload","path":"j.bin"}' '{"direction":"upload","path":"j.bin","size":-1}' \
        '{"direction":"sideways","path":"j.bin","size":10}' \
        '{"direction":"upload","path":"j.bin","size":10,"overwrite":"maybe"}' \
        '{"direction":"upload","path":"j.bin","size":10,"sha256":"xyz"}' \
        '{"direction":"upload","path":"j.bin","size":10,"mode":"rwx"}'; do
        st=$(api POST sessions -H 'Content-Type: application/json' --data-binary "$body")
        [ "$st" = 400 ] || fail "body '$body': expected 400, got $st: $(head -c 200 "$BODY")"
        [ -n "$(jbody .code)" ] || fail "body '$body': no code in the problem document"
        assert_problem 400 "$(jbody .code)" "$st"
    done
    st=$(api POST "sessions/$(sid)/commit" -H 'Content-Type: application/json' --data-binary '{"sha256":')
    assert_problem 400 bad_request "$st"
    st=$(api POST "sessions/$(sid)/commit" -H 'Content-Type: application/json' --data-binary '{"sha256":"abc"}')
    assert_problem 400 bad_request "$st"
    assert_no_file "$DOCROOT/j.bin"
    assert_session_intact "[[$CHUNK,$((SIZE - CHUNK))]]"
}

test_methods_and_endpoints() {
    local st
    st=$(api PATCH sessions)
    assert_problem 405 method_not_allowed "$st"
    st=$(api PUT "files/x.bin" --data-binary x)
    assert_problem 405 method_not_allowed "$st"
    st=$(api GET "sessions/$(sid)/data")
    assert_problem 405 method_not_allowed "$st"
    st=$(api GET "nonsense")
    assert_problem 404 not_found "$st"
    assert_session_intact "[[$CHUNK,$((SIZE - CHUNK))]]"
}

test_wrong_digest() {
    local st
    st=$(put_range "$(sid)" "$SRC/target.bin" $CHUNK $((SIZE - 1)))
    assert_eq 200 "$st" "PUT the rest"
    assert_eq true "$(jq -r .complete "$BODY")" "complete"
    st=$(commit "$(sid)" 0000000000000000000000000000000000000000000000000000000000000000)
    assert_problem 422 digest_mismatch "$st"
    assert_no_file "$TARGET"
    assert_file_exists "$DOCROOT/bad/.target.bin.fbpart"
    st=$(api GET "sessions/$(sid)")
    assert_eq active "$(jbody .state)" "state after digest mismatch"
}

test_completes_after_all_that() {
    local st
    st=$(commit "$(sid)" "$(sha "$SRC/target.bin")")
    assert_eq 200 "$st" "correct commit: $(head -c 200 "$BODY")"
    assert_file_same "$SRC/target.bin" "$TARGET"
    # Nothing outside the docroot changed.
    assert_eq "secret.txt" "$(find "$OUTSIDE" -mindepth 1 -printf '%P ' | sed 's/ $//')" "files outside"
}

test_per_user_session_limit() {
    local st i ids=()
    # Three live sessions per user: the fourth is refused; other users are unaffected.
    sed -i 's|</shm_path>|</shm_path><max_sessions_per_user>3</max_sessions_per_user>|' "$DS_DIR/fallback.xml"
    "$DEVSERVER" graceful --dir "$DS_DIR" --quiet >/dev/null 2>&1 || fail "graceful failed"
    # The setup session of this file is one of demo's: two more fit.
    for i in 1 2; do
        st=$(api POST sessions -H 'Content-Type: application/json' \
            --data "{\"direction\":\"upload\",\"path\":\"limit$i.bin\",\"size\":10}")
        assert_eq 201 "$st" "session $i of demo"
        ids+=("$(jbody .id)")
    done
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data '{"direction":"upload","path":"limit3.bin","size":10}')
    assert_problem 503 too_many_sessions "$st"
    st=$(api_as bob bob-password POST sessions -H 'Content-Type: application/json' \
        --data '{"direction":"upload","path":"bob.bin","size":10}')
    assert_eq 201 "$st" "another user still gets a session"
    for i in "${ids[@]}"; do api DELETE "sessions/$i" >/dev/null; done
    sed -i 's|<max_sessions_per_user>3</max_sessions_per_user>||' "$DS_DIR/fallback.xml"
    "$DEVSERVER" graceful --dir "$DS_DIR" --quiet >/dev/null 2>&1 || fail "graceful failed"
}

ds_start_or_bail "all bad input tests"

run_test "setup: an upload session" test_setup
run_test "malformed Content-Range -> 400 bad_range" test_malformed_content_range
run_test "range outside the file or wrong size -> 416" test_out_of_bounds
run_test "range overlapping a complete chunk -> 416, chunk intact" test_overlap_complete_chunk
run_test "body length differing from the range -> 400 bad_range" test_body_length_differs
run_test "a body ending before its range keeps the whole chunks it brought" test_body_ending_early_keeps_whole_chunks
run_test "'..' and absolute JSON paths -> 403 path_escape, bad syntax -> 400 bad_path" test_json_path_escape
run_test "encoded and literal dot segments in files/ URLs read nothing outside" test_url_path_escape
run_test "symlinks out of the docroot -> 403 path_escape" test_symlink_escape
run_test "another user's session -> 404" test_other_users_session
run_test "oversized JSON -> 413 too_large" test_oversized_json
run_test "broken JSON -> 400 bad_request" test_broken_json
run_test "unknown methods and endpoints -> 405/404" test_methods_and_endpoints
run_test "one user cannot take every session slot -> 503 too_many_sessions" test_per_user_session_limit
run_test "wrong digest -> 422 digest_mismatch, target absent, session active" test_wrong_digest
run_test "the same session completes correctly afterwards" test_completes_after_all_that
finish
