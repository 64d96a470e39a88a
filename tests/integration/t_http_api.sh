#!/bin/bash
# t_http_api: the HTTP API of docs/HTTP-API.md driven by plain curl, the way any third-party
# client would use it: sessions, ranged PUTs, resume, commit, cancel, overwrite policies, and
# downloads through files/ with Range, multiple ranges, If-Range and conditional requests.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=3
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$T_TMP/src
mkdir -p "$SRC"

# upload_and_check SIZE NAME [per-request bytes]: curl upload, then compare and download back.
upload_and_check() {
    local size=$1 name=$2 step=${3:-$CHUNK} st
    mkrand "$SRC/$name" "$size"
    curl_upload "$SRC/$name" "up/$name" "$step"
    assert_file_same "$SRC/$name" "$DOCROOT/up/$name"
    st=$(api GET "files/up/$name")
    assert_eq 200 "$st" "GET files/up/$name"
    assert_file_same "$SRC/$name" "$BODY"
    assert_no_file "$DOCROOT/up/.$name.fbpart"
    assert_no_file "$DOCROOT/up/.$name.fbpart.ckpt"
}

test_upload_0() { upload_and_check 0 zero.bin; }
test_upload_1() { upload_and_check 1 one.bin; }
test_upload_chunk_minus_1() { upload_and_check $((CHUNK - 1)) cm1.bin; }
test_upload_chunk() { upload_and_check $CHUNK c.bin; }
test_upload_chunk_plus_1() { upload_and_check $((CHUNK + 1)) cp1.bin; }
# The whole 5 MiB + 3 B in one PUT, and in 2 MiB requests (several chunks per request).
test_upload_one_put() { upload_and_check $((5 * CHUNK + 3)) whole.bin $((64 * CHUNK)); }
test_upload_two_chunk_puts() { upload_and_check $((5 * CHUNK + 3)) two.bin $((2 * CHUNK)); }

# The PUT that completes a file writes no checkpoint (the commit follows and makes the file
# durable); a PUT that leaves data missing does.
test_complete_put_writes_no_checkpoint() {
    local id st size=$((CHUNK + 5000))
    mkrand "$SRC/nock.bin" "$size"
    id=$(new_session nock.bin "$size")
    st=$(put_range "$id" "$SRC/nock.bin" 0 $((size - 1)))
    assert_eq 200 "$st" "PUT the whole file"
    assert_eq true "$(jq -r .complete "$BODY")" "complete in PUT answer"
    assert_no_file "$DOCROOT/.nock.bin.fbpart.ckpt"
    st=$(commit "$id" "$(sha "$SRC/nock.bin")")
    assert_eq 200 "$st" "commit"
    assert_file_same "$SRC/nock.bin" "$DOCROOT/nock.bin"
    id=$(new_session nock2.bin "$size")
    st=$(put_range "$id" "$SRC/nock.bin" 0 $((CHUNK - 1)))
    assert_eq 200 "$st" "PUT the first chunk"
    assert_file_exists "$DOCROOT/.nock2.bin.fbpart.ckpt"
    st=$(put_range "$id" "$SRC/nock.bin" "$CHUNK" $((size - 1)))
    assert_eq 200 "$st" "PUT the rest"
    st=$(commit "$id" "$(sha "$SRC/nock.bin")")
    assert_eq 200 "$st" "commit"
    assert_no_file "$DOCROOT/.nock2.bin.fbpart.ckpt"
    assert_file_same "$SRC/nock.bin" "$DOCROOT/nock2.bin"
}

# PUT with Fallback-Commit: the request that completes the file commits it too, with the same
# checks as POST commit; one that leaves data missing is an ordinary PUT.
test_put_with_commit() {
    local id st size=$((CHUNK + 5000)) good
    mkrand "$SRC/pc.bin" "$size"
    good=$(sha "$SRC/pc.bin")
    id=$(new_session pc/one.bin "$size")
    st=$(put_range "$id" "$SRC/pc.bin" 0 $((size - 1)) -H "Fallback-Commit: sha256=$good")
    assert_eq 200 "$st" "PUT the whole file with Fallback-Commit: $(head -c 300 "$BODY")"
    assert_eq done "$(jbody .state)" "state in the PUT answer"
    assert_eq "$good" "$(jbody .sha256)" "sha256 in the PUT answer"
    assert_file_same "$SRC/pc.bin" "$DOCROOT/pc/one.bin"
    assert_no_file "$DOCROOT/pc/.one.bin.fbpart"
    st=$(commit "$id" "$good")
    assert_eq 200 "$st" "a commit after it is idempotent"
    # the first chunk: an ordinary PUT answer; the rest: committed
    id=$(new_session pc/two.bin "$size")
    st=$(put_range "$id" "$SRC/pc.bin" 0 $((CHUNK - 1)) -H "Fallback-Commit: sha256=$good")
    assert_eq 200 "$st" "PUT the first chunk with Fallback-Commit"
    assert_eq false "$(jq -r .complete "$BODY")" "complete after the first chunk"
    assert_no_file "$DOCROOT/pc/two.bin"
    st=$(put_range "$id" "$SRC/pc.bin" "$CHUNK" $((size - 1)) -H "Fallback-Commit: sha256=$good")
    assert_eq 200 "$st" "PUT the rest with Fallback-Commit"
    assert_eq done "$(jbody .state)" "state after the rest"
    assert_file_same "$SRC/pc.bin" "$DOCROOT/pc/two.bin"
    # another digest: refused like POST commit, nothing in place, the session can still commit
    id=$(new_session pc/bad.bin "$size")
    st=$(put_range "$id" "$SRC/pc.bin" 0 $((size - 1)) -H "Fallback-Commit: sha256=$(printf '%064d' 0)")
    assert_problem 422 digest_mismatch "$st"
    assert_no_file "$DOCROOT/pc/bad.bin"
    st=$(commit "$id" "$good")
    assert_eq 200 "$st" "commit with the right digest afterwards"
    assert_file_same "$SRC/pc.bin" "$DOCROOT/pc/bad.bin"
    # a malformed header is refused before the body is taken
    id=$(new_session pc/mal.bin "$size")
    for v in "$good" "sha256=${good:0:63}" "sha256=${good:0:63}g" "md5=$good"; do
        st=$(put_range "$id" "$SRC/pc.bin" 0 $((size - 1)) -H "Fallback-Commit: $v")
        assert_problem 400 bad_request "$st"
    done
    st=$(api GET "sessions/$id")
    assert_eq "$size" "$(jbody .missing_bytes)" "nothing written by refused PUTs"
    api DELETE "sessions/$id" >/dev/null
}

test_session_document() {
    local id st size=$((3 * CHUNK + 10))
    mkrand "$SRC/doc.bin" "$size"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"doc.bin\",\"size\":$size}")
    assert_eq 201 "$st" "status of a new session"
    id=$(jbody .id)
    [[ "$id" =~ ^[0-9a-f]{32}$ ]] || fail "id '$id' is not 32 hex digits"
    assert_eq 64 "$(jbody .key | tr -d '\n' | wc -c)" "key length (hex)"
    assert_eq upload "$(jbody .direction)" "direction"
    assert_eq doc.bin "$(jbody .path)" "path"
    assert_eq "$size" "$(jbody .size)" "size"
    assert_eq "$CHUNK" "$(jbody .chunk_size)" "chunk_size"
    assert_eq active "$(jbody .state)" "state"
    assert_eq false "$(jq -r .resumed "$BODY")" "resumed"
    assert_eq "[[0,$size]]" "$(jq -c .missing "$BODY")" "missing"
    assert_eq "" "$(jbody .udp.port)" "no UDP endpoint advertised while udpd is not running"
    assert_eq "/fallback/sessions/$id" "$(jbody .location)" "location"
    # One chunk in; GET shows progress and no key.
    st=$(put_range "$id" "$SRC/doc.bin" "$CHUNK" $((2 * CHUNK - 1)))
    assert_eq 200 "$st" "PUT chunk 1"
    assert_eq "$CHUNK" "$(jbody .received_bytes)" "received_bytes in PUT answer"
    assert_eq $((size - CHUNK)) "$(jbody .missing_bytes)" "missing_bytes in PUT answer"
    assert_eq false "$(jq -r .complete "$BODY")" "complete in PUT answer"
    st=$(api GET "sessions/$id")
    assert_eq 200 "$st" "GET session"
    assert_eq "" "$(jbody .key)" "key must not be in GET"
    assert_eq "[[0,$CHUNK],[$((2 * CHUNK)),$((CHUNK + 10))]]" "$(jq -c .missing "$BODY")" "missing after chunk 1"
    assert_eq "$CHUNK" "$(jbody .received_bytes)" "received_bytes"
    assert_eq "$CHUNK" "$(jbody .bytes_http)" "bytes_http"
    assert_eq 0 "$(jbody .bytes_udp)" "bytes_udp"
    # Commit before complete: 409 incomplete, nothing in place.
    st=$(commit "$id" "$(sha "$SRC/doc.bin")")
    assert_problem 409 incomplete "$st"
    assert_no_file "$DOCROOT/doc.bin"
    assert_file_exists "$DOCROOT/.doc.bin.fbpart"
    # Resume by a new POST for the same path and size: only what is missing.
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"doc.bin\",\"size\":$size}")
    assert_eq 200 "$st" "resuming POST"
    assert_eq true "$(jq -r .resumed "$BODY")" "resumed"
    assert_eq "[[0,$CHUNK],[$((2 * CHUNK)),$((CHUNK + 10))]]" "$(jq -c .missing "$BODY")" "missing when resumed"
    local id2
    id2=$(jbody .id)
    # Finish on the id the resume gave; commit twice (idempotent).
    st=$(put_range "$id2" "$SRC/doc.bin" 0 $((CHUNK - 1)))
    assert_eq 200 "$st" "PUT chunk 0"
    st=$(put_range "$id2" "$SRC/doc.bin" $((2 * CHUNK)) $((size - 1)))
    assert_eq 200 "$st" "PUT chunks 2-3"
    assert_eq true "$(jq -r .complete "$BODY")" "complete"
    st=$(commit "$id2" "$(sha "$SRC/doc.bin")")
    assert_eq 200 "$st" "commit"
    assert_eq "$(sha "$SRC/doc.bin")" "$(jbody .sha256)" "sha256 in commit answer"
    assert_eq "$size" "$(jbody .size)" "size in commit answer"
    st=$(commit "$id2" "$(sha "$SRC/doc.bin")")
    assert_eq 200 "$st" "second commit is idempotent"
    assert_eq "done" "$(jbody .state)" "state of second commit"
    assert_file_same "$SRC/doc.bin" "$DOCROOT/doc.bin"
    assert_eq 644 "$(stat -c %a "$DOCROOT/doc.bin")" "mode of committed file"
    st=$(api GET "sessions/$id2")
    assert_eq 200 "$st" "GET done session"
    assert_eq "done" "$(jbody .state)" "state"
    # DELETE of a done session is refused.
    st=$(api DELETE "sessions/$id2")
    assert_problem 409 session_state "$st"
}

test_chunked_put() {
    local id st size=$((2 * CHUNK))
    mkrand "$SRC/chunked.bin" "$size"
    id=$(new_session chunked.bin "$size") || exit 1
    # The whole range with chunked transfer coding (no Content-Length).
    st=$(api PUT "sessions/$id/data" -H "Content-Range: bytes 0-$((size - 1))/$size" \
        -H 'Transfer-Encoding: chunked' -H 'Content-Type: application/octet-stream' \
        --data-binary "@$SRC/chunked.bin")
    assert_eq 200 "$st" "chunked PUT: $(head -c 200 "$BODY")"
    st=$(commit "$id" "$(sha "$SRC/chunked.bin")")
    assert_eq 200 "$st" "commit"
    assert_file_same "$SRC/chunked.bin" "$DOCROOT/chunked.bin"
}

test_parallel_puts() {
    local id st size=$((8 * CHUNK + 123)) i pids=() rc=0
    mkrand "$SRC/par.bin" "$size"
    id=$(new_session par.bin "$size") || exit 1
    for i in 0 1 2 3; do
        (
            BODY=$T_TMP/par.$i.body HEADERS=$T_TMP/par.$i.hdr
            first=$((i * 2 * CHUNK))
            last=$((first + 2 * CHUNK - 1))
            [ "$i" = 3 ] && last=$((size - 1))
            st=$(put_range "$id" "$SRC/par.bin" "$first" "$last")
            [ "$st" = 200 ] || { echo "# PUT $first-$last: $st $(cat "$BODY")" >&2; exit 1; }
        ) &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || rc=1; done
    assert_eq 0 "$rc" "parallel PUTs"
    st=$(api GET "sessions/$id")
    assert_eq "[]" "$(jq -c '.missing // []' "$BODY")" "missing after parallel PUTs"
    st=$(commit "$id" "$(sha "$SRC/par.bin")")
    assert_eq 200 "$st" "commit"
    assert_file_same "$SRC/par.bin" "$DOCROOT/par.bin"
}

test_cancel() {
    local id st size=$((2 * CHUNK))
    mkrand "$SRC/cancel.bin" "$size"
    id=$(new_session cancel.bin "$size") || exit 1
    st=$(put_range "$id" "$SRC/cancel.bin" 0 $((CHUNK - 1)))
    assert_eq 200 "$st" "PUT"
    assert_file_exists "$DOCROOT/.cancel.bin.fbpart"
    st=$(api DELETE "sessions/$id")
    assert_eq 204 "$st" "DELETE"
    assert_no_file "$DOCROOT/.cancel.bin.fbpart"
    assert_no_file "$DOCROOT/.cancel.bin.fbpart.ckpt"
    assert_no_file "$DOCROOT/cancel.bin"
    st=$(api GET "sessions/$id")
    assert_problem 404 not_found "$st"
    st=$(put_range "$id" "$SRC/cancel.bin" $CHUNK $((2 * CHUNK - 1)))
    assert_problem 404 not_found "$st"
}

test_overwrite_policies() {
    local st size=1000 digest
    mkrand "$SRC/ow.bin" $size
    curl_upload "$SRC/ow.bin" ow.bin
    digest=$(sha "$SRC/ow.bin")
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"ow.bin\",\"size\":$size,\"overwrite\":\"never\"}")
    assert_problem 409 exists "$st"
    assert_eq "" "$(jbody .target)" "no target member when a file is in the way"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"ow.bin\",\"size\":$size,\"overwrite\":\"if_different\",\"sha256\":\"$digest\"}")
    assert_eq 200 "$st" "if_different with the same content"
    assert_eq "done" "$(jbody .state)" "state"
    assert_eq true "$(jq -r .skipped "$BODY")" "skipped"
    assert_eq "" "$(jq -c '.missing // empty | select(length > 0)' "$BODY")" "no missing ranges"
    # ask_digest: under if_different without sha256, a file of the same size is not replaced
    # but answered 409 "target": "file" (ask again with the digest); another size is replaced,
    # and without ask_digest if_different without sha256 replaces as before.
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"ow.bin\",\"size\":$size,\"overwrite\":\"if_different\",\"ask_digest\":true}")
    assert_problem 409 exists "$st"
    assert_eq file "$(jbody .target)" "the problem's target member"
    assert_file_same "$SRC/ow.bin" "$DOCROOT/ow.bin"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"ow.bin\",\"size\":$size,\"overwrite\":\"if_different\",\"ask_digest\":\"yes\"}")
    assert_problem 400 bad_request "$st"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"ow.bin\",\"size\":$((size + 1)),\"overwrite\":\"if_different\",\"ask_digest\":true}")
    assert_eq 201 "$st" "ask_digest, another size"
    api DELETE "sessions/$(jbody .id)" >/dev/null
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"ow.bin\",\"size\":$size,\"overwrite\":\"if_different\"}")
    assert_eq 201 "$st" "if_different without sha256 nor ask_digest"
    api DELETE "sessions/$(jbody .id)" >/dev/null
    assert_file_same "$SRC/ow.bin" "$DOCROOT/ow.bin"
    # A directory is never the target, whatever the policy; the problem says it is a directory
    # (a client copying like cp then uploads into it), and nothing is created in it.
    mkdir -p "$DOCROOT/owdir"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"owdir\",\"size\":$size,\"overwrite\":\"always\"}")
    assert_problem 409 exists "$st"
    assert_eq directory "$(jbody .target)" "the problem's target member"
    assert_eq "" "$(ls -A "$DOCROOT/owdir")" "the directory's contents"
    # Different content replaces with "always" (the default).
    mkrand "$SRC/ow2.bin" $size
    cp "$SRC/ow2.bin" "$SRC/ow.bin"
    curl_upload "$SRC/ow.bin" ow.bin
    assert_file_same "$SRC/ow2.bin" "$DOCROOT/ow.bin"
}

test_mode() {
    local id st
    printf 'hello\n' >"$SRC/mode.txt"
    id=$(new_session mode.txt 6 ',"mode":"0600"') || exit 1
    st=$(put_range "$id" "$SRC/mode.txt" 0 5)
    assert_eq 200 "$st" "PUT"
    st=$(commit "$id" "$(sha "$SRC/mode.txt")")
    assert_eq 200 "$st" "commit"
    assert_eq 600 "$(stat -c %a "$DOCROOT/mode.txt")" "mode"
}

# ---- downloads -------------------------------------------------------------------------------------

# A file whose bytes are easy to check: line N is N zero-padded to 5 digits (6 bytes a line).
make_lines() {
    mkdir -p "$DOCROOT/dl"
    seq -w 0 99999 >"$DOCROOT/dl/lines.txt"
    mkrand "$DOCROOT/dl/rand.bin" $((3 * CHUNK + 7))
    # Apache gives a weak ETag (never matching If-Range) to a file modified within the last
    # second; these files are meant to be settled.
    touch -d '-1 min' "$DOCROOT/dl/lines.txt" "$DOCROOT/dl/rand.bin"
    docroot_chown "$DOCROOT/dl"
}

test_files_get_head() {
    make_lines
    local st
    st=$(api GET files/dl/rand.bin)
    assert_eq 200 "$st" "GET"
    assert_file_same "$DOCROOT/dl/rand.bin" "$BODY"
    st=$(api HEAD files/dl/rand.bin -I)
    assert_eq 200 "$st" "HEAD"
    assert_eq $((3 * CHUNK + 7)) "$(header Content-Length)" "Content-Length"
    assert_eq bytes "$(header Accept-Ranges)" "Accept-Ranges"
    [ -n "$(header ETag)" ] || fail "no ETag"
    [ -n "$(header Last-Modified)" ] || fail "no Last-Modified"
    case "$(header ETag)" in W/*) fail "weak ETag for a settled file: $(header ETag)" ;; esac
}

test_files_single_ranges() {
    local st
    st=$(api GET files/dl/lines.txt -H 'Range: bytes=600-611')
    assert_eq 206 "$st" "Range 600-611"
    assert_eq "00100
00101" "$(cat "$BODY")" "bytes 600-611"
    assert_eq "bytes 600-611/600000" "$(header Content-Range)" "Content-Range"
    st=$(api GET files/dl/lines.txt -H 'Range: bytes=-6')
    assert_eq 206 "$st" "suffix range"
    assert_eq "99999" "$(cat "$BODY")" "last line"
    st=$(api GET files/dl/rand.bin -H "Range: bytes=$CHUNK-")
    assert_eq 206 "$st" "open range"
    cmp -s "$BODY" <(tail -c +$((CHUNK + 1)) "$DOCROOT/dl/rand.bin") || fail "open range content differs"
    st=$(api GET files/dl/lines.txt -H 'Range: bytes=600000-600010')
    assert_eq 416 "$st" "range beyond the end"
}

test_files_multiple_ranges() {
    local st ct
    st=$(api GET files/dl/lines.txt -H 'Range: bytes=0-5,60-65,599994-599999')
    assert_eq 206 "$st" "multiple ranges"
    ct=$(header Content-Type)
    case "$ct" in multipart/byteranges*) ;; *) fail "Content-Type '$ct' is not multipart/byteranges" ;; esac
    grep -aq '^Content-[Rr]ange: bytes 0-5/600000' "$BODY" || fail "part 0-5 missing"
    grep -aq '^Content-[Rr]ange: bytes 60-65/600000' "$BODY" || fail "part 60-65 missing"
    grep -aq '^Content-[Rr]ange: bytes 599994-599999/600000' "$BODY" || fail "last part missing"
    grep -aq '^00000$' "$BODY" || fail "data of part 0-5 missing"
    grep -aq '^00010$' "$BODY" || fail "data of part 60-65 missing"
    grep -aq '^99999$' "$BODY" || fail "data of the last part missing"
}

test_files_if_range() {
    local st etag
    st=$(api HEAD files/dl/rand.bin -I)
    etag=$(header ETag)
    [ -n "$etag" ] || fail "no ETag"
    st=$(api GET files/dl/rand.bin -H 'Range: bytes=100-199' -H "If-Range: $etag")
    assert_eq 206 "$st" "If-Range with the current ETag"
    assert_eq 100 "$(stat -c %s "$BODY")" "partial length"
    cmp -s "$BODY" <(tail -c +101 "$DOCROOT/dl/rand.bin" | head -c 100) || fail "range content differs"
    st=$(api GET files/dl/rand.bin -H 'Range: bytes=100-199' -H 'If-Range: "not-the-etag"')
    assert_eq 200 "$st" "If-Range with a wrong ETag"
    assert_file_same "$DOCROOT/dl/rand.bin" "$BODY"
    st=$(api GET files/dl/rand.bin -H "If-None-Match: $etag")
    assert_eq 304 "$st" "If-None-Match with the current ETag"
    # A changed file gets a new ETag, and the old one no longer gives a range.
    sleep 1
    mkrand "$DOCROOT/dl/rand.bin" $((3 * CHUNK + 7))
    docroot_chown "$DOCROOT/dl/rand.bin"
    st=$(api GET files/dl/rand.bin -H 'Range: bytes=100-199' -H "If-Range: $etag")
    assert_eq 200 "$st" "If-Range with the ETag of the old content"
    assert_file_same "$DOCROOT/dl/rand.bin" "$BODY"
}

test_files_listing() {
    local st
    mkdir -p "$DOCROOT/ls/sub"
    printf 'abc' >"$DOCROOT/ls/b.txt"
    : >"$DOCROOT/ls/a.txt"
    printf 'partial' >"$DOCROOT/ls/.c.bin.fbpart"
    printf 'ckpt' >"$DOCROOT/ls/.c.bin.fbpart.ckpt"
    docroot_chown "$DOCROOT/ls"
    for p in files/ls files/ls/; do
        st=$(api GET "$p")
        assert_eq 200 "$st" "GET $p"
        assert_eq ls "$(jbody .path)" "path of $p"
        assert_eq '["a.txt","b.txt","sub"]' "$(jq -c '[.entries[].name]' "$BODY")" "names in $p"
        assert_eq '["file","file","dir"]' "$(jq -c '[.entries[].type]' "$BODY")" "types in $p"
        assert_eq 3 "$(jq -r '.entries[1].size' "$BODY")" "size of b.txt"
        [ "$(jq -r '.entries[1].mtime' "$BODY")" -gt 1600000000 ] || fail "mtime of b.txt"
    done
    st=$(api GET "files/")
    assert_eq 200 "$st" "GET files/"
    jq -e '.entries | map(.name) | index("ls") != null' "$BODY" >/dev/null || fail "ls not in the root listing"
    st=$(api GET "files/ls/.c.bin.fbpart")
    assert_eq 404 "$st" "a partial file is never served"
    grep -q partial "$BODY" && fail "partial content leaked"
    st=$(api GET "files/ls/.c.bin.fbpart.ckpt")
    assert_eq 404 "$st" "a checkpoint file is never served"
    st=$(api GET "files/ls/nope.bin")
    assert_problem 404 not_found "$st"
}

test_download_session() {
    local st
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary '{"direction":"download","path":"dl/lines.txt"}')
    assert_eq 201 "$st" "download session"
    assert_eq 600000 "$(jbody .size)" "size"
    [ -n "$(jbody .etag)" ] || fail "no etag"
    [ -n "$(jbody .mtime)" ] || fail "no mtime"
    assert_eq false "$(jq 'has("missing")' "$BODY")" "no missing in a download answer"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary '{"direction":"download","path":"dl/absent.bin"}')
    assert_problem 404 not_found "$st"
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary '{"direction":"download","path":"dl"}')
    assert_problem 404 not_found "$st"
}

ds_start_or_bail "all HTTP API tests"

run_test "curl upload 0 B" test_upload_0
run_test "curl upload 1 B" test_upload_1
run_test "curl upload chunk-1 B" test_upload_chunk_minus_1
run_test "curl upload chunk B" test_upload_chunk
run_test "curl upload chunk+1 B" test_upload_chunk_plus_1
run_test "curl upload 5 MiB+3 in one PUT" test_upload_one_put
run_test "curl upload 5 MiB+3 in 2 MiB PUTs" test_upload_two_chunk_puts
run_test "a PUT that completes the file writes no checkpoint; one that leaves data missing does" test_complete_put_writes_no_checkpoint
run_test "PUT with Fallback-Commit: commits the file it completes, same checks as POST commit" test_put_with_commit
run_test "session document, progress, incomplete commit, resume, idempotent commit" test_session_document
run_test "PUT with chunked transfer coding" test_chunked_put
run_test "four PUTs of disjoint ranges at once" test_parallel_puts
run_test "DELETE cancels and removes the partial file" test_cancel
run_test "overwrite never/if_different/always" test_overwrite_policies
run_test "mode of the committed file" test_mode
run_test "files/ GET and HEAD with validators" test_files_get_head
run_test "files/ single ranges" test_files_single_ranges
run_test "files/ multiple ranges (multipart/byteranges)" test_files_multiple_ranges
run_test "files/ If-Range and If-None-Match" test_files_if_range
run_test "files/ directory listing hides partial files" test_files_listing
run_test "download session answer" test_download_session
finish
