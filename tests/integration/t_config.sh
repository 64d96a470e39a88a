#!/bin/bash
# t_config: one configuration for both sides. `apache2 -t` (apachectl configtest) accepts a
# configuration whose Listen matches fallback.xml and refuses, naming the port, one that does
# not; an invalid fallback.xml is refused with file:line. fbctl check, set-port (keeping
# comments) and sessions (listing a live session).
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=9
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

# configtest DIR: apache2 -t on DIR/httpd.conf with the schema beside it; output in $T_TMP/ct.out.
configtest() {
    FB_SCHEMA="$1/fallback.xsd" "$APACHE_BIN" -t -f "$1/httpd.conf" >"$T_TMP/ct.out" 2>&1
}

# gen_conf DIR [devserver options]: generate a devserver configuration without starting it.
gen_conf() {
    local d=$1
    shift
    "$DEVSERVER" conf --dir "$d" --https-port "$HTTPS_PORT" --http-port "$HTTP_PORT" --udp-port "$UDP_PORT" \
        --module "$MODULE" --quiet "$@" >/dev/null 2>"$T_TMP/gen.err" || fail "devserver conf failed: $(cat "$T_TMP/gen.err")"
}

test_configtest_ok() {
    local rc
    gen_conf "$T_TMP/ok"
    configtest "$T_TMP/ok"
    rc=$?
    assert_eq 0 "$rc" "apache2 -t exit code ($(cat "$T_TMP/ct.out"))"
    grep -q "Syntax OK" "$T_TMP/ct.out" || fail "no 'Syntax OK': $(cat "$T_TMP/ct.out")"
}

test_configtest_https_port_mismatch() {
    local rc other=$((HTTPS_PORT + 7))
    gen_conf "$T_TMP/ok"
    sed "s:<https_port>$HTTPS_PORT</https_port>:<https_port>$other</https_port>:" "$T_TMP/ok/fallback.xml" \
        >"$T_TMP/mismatch.xml"
    grep -q "<https_port>$other</https_port>" "$T_TMP/mismatch.xml" || fail "could not change the port"
    gen_conf "$T_TMP/mm" --fallback-xml "$T_TMP/mismatch.xml"
    grep -q "FallbackConfig $T_TMP/mismatch.xml" "$T_TMP/mm/httpd.conf" || fail "httpd.conf does not use the xml"
    configtest "$T_TMP/mm"
    rc=$?
    note "apache2 -t said: $(tr '\n' ' ' <"$T_TMP/ct.out")"
    assert_ne 0 "$rc" "apache2 -t exit code with mismatched ports"
    grep -q "Syntax OK" "$T_TMP/ct.out" && fail "said Syntax OK despite the mismatch"
    grep -q "$other" "$T_TMP/ct.out" || fail "the message does not name the configured port $other"
    return 0
}

test_configtest_http_port_mismatch() {
    local rc
    gen_conf "$T_TMP/ok"
    # enable_http with no matching Listen for http_port.
    sed "s:<enable_http>false</enable_http>:<enable_http>true</enable_http>:" "$T_TMP/ok/fallback.xml" \
        >"$T_TMP/http.xml"
    gen_conf "$T_TMP/hm" --fallback-xml "$T_TMP/http.xml"
    configtest "$T_TMP/hm"
    rc=$?
    note "apache2 -t said: $(tr '\n' ' ' <"$T_TMP/ct.out")"
    assert_ne 0 "$rc" "apache2 -t exit code with no Listen for the HTTP port"
    grep -q "$HTTP_PORT" "$T_TMP/ct.out" || fail "the message does not name the HTTP port $HTTP_PORT"
    # With --enable-http the devserver listens there too and all is well.
    gen_conf "$T_TMP/hok" --enable-http
    configtest "$T_TMP/hok"
    rc=$?
    assert_eq 0 "$rc" "apache2 -t with the HTTP listener ($(cat "$T_TMP/ct.out"))"
}

test_configtest_invalid_xml() {
    local rc
    gen_conf "$T_TMP/ok"
    sed "s:<port>$UDP_PORT</port>:<port>99999</port>:" "$T_TMP/ok/fallback.xml" >"$T_TMP/bad.xml"
    gen_conf "$T_TMP/bx" --fallback-xml "$T_TMP/bad.xml"
    configtest "$T_TMP/bx"
    rc=$?
    note "apache2 -t said: $(tr '\n' ' ' <"$T_TMP/ct.out")"
    assert_ne 0 "$rc" "apache2 -t exit code with an invalid fallback.xml"
    grep -q "bad.xml:[0-9]" "$T_TMP/ct.out" || fail "no file:line in the message"
    return 0
}

test_fbctl_check() {
    local rc
    require_fbctl
    gen_conf "$T_TMP/fb" --no-module
    "$FBCTL" -c "$T_TMP/fb/fallback.xml" check >"$T_TMP/check.out" 2>&1
    rc=$?
    assert_eq 0 "$rc" "fbctl check on a good file ($(cat "$T_TMP/check.out"))"
    grep -q "$HTTPS_PORT" "$T_TMP/check.out" || fail "effective settings lack the https port"
    grep -q "$DS_DIR/docroot\|$T_TMP/fb/docroot" "$T_TMP/check.out" || fail "effective settings lack the docroot"
    # Bad: a value out of range, and broken XML.
    sed "s:<port>$UDP_PORT</port>:<port>0</port>:" "$T_TMP/fb/fallback.xml" >"$T_TMP/fb/bad1.xml"
    "$FBCTL" -c "$T_TMP/fb/bad1.xml" check >"$T_TMP/check.out" 2>&1
    rc=$?
    assert_eq "$(exit_code_of config)" "$rc" "fbctl check exit code on a bad value"
    grep -q "bad1.xml:[0-9][0-9]*" "$T_TMP/check.out" || fail "no file:line: $(cat "$T_TMP/check.out")"
    head -n 5 "$T_TMP/fb/fallback.xml" >"$T_TMP/fb/bad2.xml"
    "$FBCTL" -c "$T_TMP/fb/bad2.xml" check >"$T_TMP/check.out" 2>&1
    rc=$?
    assert_eq "$(exit_code_of config)" "$rc" "fbctl check exit code on broken XML"
    grep -q "bad2.xml" "$T_TMP/check.out" || fail "the message does not name the file: $(cat "$T_TMP/check.out")"
}

test_fbctl_set_port_keeps_comments() {
    local rc before
    require_fbctl
    cp "$SRCDIR/conf/fallback.xml" "$T_TMP/shipped.xml"
    cp "$SRCDIR/conf/fallback.xsd" "$T_TMP/fallback.xsd"
    before=$(grep -c '<!--' "$T_TMP/shipped.xml")
    [ "$before" -gt 3 ] || fail "the shipped fallback.xml has few comments ($before)"
    "$FBCTL" -c "$T_TMP/shipped.xml" set-port https 9443 >"$T_TMP/sp.out" 2>&1
    rc=$?
    assert_eq 0 "$rc" "set-port exit code ($(cat "$T_TMP/sp.out"))"
    grep -q '<https_port>9443</https_port>' "$T_TMP/shipped.xml" || fail "port not changed"
    assert_eq "$before" "$(grep -c '<!--' "$T_TMP/shipped.xml")" "number of comments"
    # Only that line changed.
    assert_eq 1 "$(diff "$SRCDIR/conf/fallback.xml" "$T_TMP/shipped.xml" | grep -c '^>')" "changed lines"
    xmllint --noout --schema "$T_TMP/fallback.xsd" "$T_TMP/shipped.xml" 2>/dev/null || fail "result invalid"
    "$FBCTL" -c "$T_TMP/shipped.xml" set-port http 8081 >"$T_TMP/sp.out" 2>&1 || fail "set-port http: $(cat "$T_TMP/sp.out")"
    grep -q '<http_port>8081</http_port>' "$T_TMP/shipped.xml" || fail "http port not changed"
    # An invalid port leaves the file untouched.
    cp "$T_TMP/shipped.xml" "$T_TMP/shipped.before"
    "$FBCTL" -c "$T_TMP/shipped.xml" set-port https 70000 >"$T_TMP/sp.out" 2>&1
    rc=$?
    assert_ne 0 "$rc" "set-port 70000 must fail"
    cmp -s "$T_TMP/shipped.xml" "$T_TMP/shipped.before" || fail "file changed by a refused set-port"
}

test_fbctl_sessions_lists_live_session() {
    local id st rc
    require_fbctl
    ds_start || fail "devserver did not start"
    id=$(new_session live/one.bin $((5 * CHUNK))) || exit 1
    "$FBCTL" -c "$DS_DIR/fallback.xml" sessions >"$T_TMP/s.out" 2>&1
    rc=$?
    assert_eq 0 "$rc" "fbctl sessions ($(cat "$T_TMP/s.out"))"
    grep -q "$id" "$T_TMP/s.out" || fail "session $id not listed: $(cat "$T_TMP/s.out")"
    grep -q "live/one.bin" "$T_TMP/s.out" || fail "path not listed"
    "$FBCTL" -c "$DS_DIR/fallback.xml" sessions --json >"$T_TMP/s.json" 2>&1 || fail "sessions --json failed"
    assert_eq "active" "$(jq -r --arg id "$id" 'select(.id == $id) | .state' "$T_TMP/s.json")" "state in --json"
    assert_eq "$DS_USER" "$(jq -r --arg id "$id" 'select(.id == $id) | .user' "$T_TMP/s.json")" "user in --json"
    assert_eq "live/one.bin" "$(jq -r --arg id "$id" 'select(.id == $id) | .path' "$T_TMP/s.json")" "path"
    # The key is never shown.
    st=$(api GET "sessions/$id")
    grep -qi '"key"' "$T_TMP/s.json" && fail "fbctl shows session keys"
    # cancel: the client sees the session fail.
    "$FBCTL" -c "$DS_DIR/fallback.xml" cancel "$id" >"$T_TMP/c.out" 2>&1 || fail "cancel: $(cat "$T_TMP/c.out")"
    st=$(api GET "sessions/$id")
    assert_eq 200 "$st" "GET cancelled session"
    assert_eq failed "$(jbody .state)" "state after fbctl cancel"
}

run_test "apache2 -t with matching ports: Syntax OK" test_configtest_ok
run_test "apache2 -t with Listen != https_port fails naming the port" test_configtest_https_port_mismatch
run_test "apache2 -t with enable_http and no HTTP Listen fails naming the port" test_configtest_http_port_mismatch
run_test "apache2 -t with an invalid fallback.xml fails with file:line" test_configtest_invalid_xml
run_test "fbctl check on good and bad configurations" test_fbctl_check
run_test "fbctl set-port keeps comments and refuses invalid ports" test_fbctl_set_port_keeps_comments
run_test "fbctl sessions lists a live session; cancel fails it" test_fbctl_sessions_lists_live_session
finish
