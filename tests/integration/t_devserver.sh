#!/bin/bash
# t_devserver: scripts/devserver itself: start, status, static files, auth on /fallback,
# graceful, stop, a second instance beside the first, and the module loading.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=1
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

test_start_serves_static() {
    ds_start --no-module || fail "devserver start --no-module failed"
    "$DEVSERVER" status --dir "$DS_DIR" >/dev/null || fail "status says not running"
    mkrand "$DOCROOT/s.bin" 100000
    local st
    st=$(req "$ORIGIN/static/s.bin")
    assert_eq 200 "$st" "GET /static/s.bin"
    assert_file_same "$DOCROOT/s.bin" "$BODY"
    st=$(req -H 'Range: bytes=10-19' "$ORIGIN/static/s.bin")
    assert_eq 206 "$st" "ranged GET /static"
    assert_eq 10 "$(stat -c %s "$BODY")" "range length"
    # Certificate: trusted through cert.pem for both names the tests use.
    st=$(http_status GET "https://localhost:$HTTPS_PORT/static/s.bin")
    assert_eq 200 "$st" "GET via localhost name"
}

test_fallback_location_needs_auth() {
    local st
    st=$(http_status GET "$URL/sessions")
    assert_eq 401 "$st" "no credentials"
    st=$(http_status GET "$URL/sessions" -u "$DS_USER:wrong")
    assert_eq 401 "$st" "wrong password"
}

test_graceful_keeps_serving() {
    local pid1 pid2
    pid1=$(cat "$DS_DIR/run/httpd.pid")
    "$DEVSERVER" graceful --dir "$DS_DIR" --quiet || fail "graceful failed"
    pid2=$(cat "$DS_DIR/run/httpd.pid")
    assert_eq "$pid1" "$pid2" "parent pid after graceful"
    assert_eq 200 "$(http_status GET "$ORIGIN/static/s.bin")" "static after graceful"
}

test_second_instance_beside() {
    local d2=$T_TMP/ds2 port=$((HTTPS_PORT + 5)) st
    "$DEVSERVER" start --no-module --dir "$d2" --https-port "$port" --quiet || fail "second start failed"
    T_CLEANUP_EXTRA="'$DEVSERVER' stop --dir '$d2' --clean --quiet >/dev/null 2>&1"
    st=$(curl -s --cacert "$d2/cert.pem" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/static/")
    assert_in "$st" 200 403 404
    assert_ne "$(grep -o 'shm_path>[^<]*' "$DS_DIR/fallback.xml")" \
        "$(grep -o 'shm_path>[^<]*' "$d2/fallback.xml")" "shm paths of two instances"
    "$DEVSERVER" stop --dir "$d2" --clean --quiet || fail "second stop failed"
    "$DEVSERVER" status --dir "$d2" >/dev/null && fail "second instance still running"
    assert_eq 200 "$(http_status GET "$ORIGIN/static/s.bin")" "first instance unaffected"
}

test_stop_and_restart() {
    local pid
    pid=$(cat "$DS_DIR/run/httpd.pid")
    ds_stop || fail "stop failed"
    kill -0 "$pid" 2>/dev/null && fail "pid $pid still alive after stop"
    "$DEVSERVER" status --dir "$DS_DIR" >/dev/null && fail "status says running after stop"
    assert_eq 000 "$(http_status GET "$ORIGIN/static/s.bin")" "port closed after stop"
    # A start without options reuses the saved settings (same port).
    "$DEVSERVER" start --no-module --dir "$DS_DIR" --quiet || fail "restart with saved settings failed"
    DS_RUNNING=1
    assert_eq 200 "$(http_status GET "$ORIGIN/static/s.bin")" "static after start"
    ds_stop
}

test_extra_conf_and_users() {
    local d3=$T_TMP/ds3 port=$((HTTPS_PORT + 6)) st
    mkdir -p "$T_TMP/extra"
    echo extra >"$T_TMP/extra/x.txt"
    cat >"$T_TMP/extra.conf" <<EOF
Alias /extra "$T_TMP/extra"
<Directory "$T_TMP/extra">
    Require all granted
</Directory>
EOF
    "$DEVSERVER" start --no-module --dir "$d3" --https-port "$port" --extra-conf "$T_TMP/extra.conf" \
        --user alice --password alice-pw --quiet || fail "start with --extra-conf failed"
    T_CLEANUP_EXTRA="'$DEVSERVER' stop --dir '$d3' --clean --quiet >/dev/null 2>&1"
    st=$(curl -s --cacert "$d3/cert.pem" -o "$BODY" -w '%{http_code}' "https://127.0.0.1:$port/extra/x.txt")
    assert_eq 200 "$st" "GET /extra from --extra-conf"
    assert_eq extra "$(cat "$BODY")" "content"
    # --user/--password and adduser: both users authenticate on /fallback (404 without the module).
    "$DEVSERVER" adduser bob bob-pw --dir "$d3" --quiet || fail "adduser failed"
    for cred in alice:alice-pw bob:bob-pw; do
        st=$(curl -s --cacert "$d3/cert.pem" -o /dev/null -w '%{http_code}' -u "$cred" "https://127.0.0.1:$port/fallback/x")
        assert_eq 404 "$st" "authenticated as ${cred%%:*}"
    done
    st=$(curl -s --cacert "$d3/cert.pem" -o /dev/null -w '%{http_code}' -u alice:wrong "https://127.0.0.1:$port/fallback/x")
    assert_eq 401 "$st" "wrong password"
    "$DEVSERVER" stop --dir "$d3" --clean --quiet || fail "stop failed"
}

test_module_loads() {
    [ -f "$MODULE" ] || fail "mod_fallback not built"
    ds_start || fail "devserver start with the module failed: $(tail -n 5 "$DS_DIR/error.log")"
    grep -q '^LoadModule fallback_module ' "$DS_DIR/httpd.conf" || fail "no LoadModule line"
    assert_eq 401 "$(http_status GET "$URL/sessions")" "module location without credentials"
    local st
    st=$(api GET "files/")
    assert_eq 200 "$st" "authenticated listing of the docroot"
    grep -q '\[fallback:\(emerg\|alert\|crit\|error\)\]' "$DS_DIR/error.log" &&
        fail "errors from the module in error.log: $(grep '\[fallback:' "$DS_DIR/error.log" | tail -n 3)"
    return 0
}

run_test "devserver start serves static files over TLS" test_start_serves_static
run_test "devserver /fallback requires Basic auth" test_fallback_location_needs_auth
run_test "devserver graceful keeps the parent and serves" test_graceful_keeps_serving
run_test "devserver second instance runs beside the first" test_second_instance_beside
run_test "devserver stop and start with saved settings" test_stop_and_restart
run_test "devserver --extra-conf, --user/--password and adduser" test_extra_conf_and_users
run_test "devserver starts Apache with mod_fallback loaded" test_module_loads
finish
