#!/bin/bash
# t_settings: every setting does what it says, or is refused (issue 19, items 4 and 5), against a
# real Apache with mod_fallback that starts a real udpd (FallbackDaemon on):
#
#   - enable_http false: a request over plain HTTP gets 403 naming the setting and no session key;
#     true: the same request works. enable_https false refuses HTTPS the same way;
#   - a <group> docroot: a system user (made for the test) in a system group lands in the group's
#     docroot;
#   - apachectl graceful reaches udpd: a new <user> docroot and a new rate cap are applied by the
#     same udpd process (an upload with --fallback never into the new docroot, the association's
#     rate in udpd's log); a new UDP port restarts udpd on that port; an upload running across a
#     graceful restart ends byte-identical;
#   - aspera.conf's <http_server> block with <CONF version="2"> loads in fbctl check and in Apache;
#     the seed's one-port example and cert_file/key_file are refused with a clear message;
#   - fbctl check warns about a missing or unwritable docroot;
#   - fbctl cancel ends fbcp with "Server refused request" (exit code 5) over UDP and over HTTPS.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=34
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

UDPD_BUILT=$SRCDIR/udpd/udpd
UDPD=$T_TMP/bin/udpd
HTTP_URL=http://127.0.0.1:$HTTP_PORT/fallback
XML=$DS_DIR/fallback.xml
SRC=$T_TMP/src
OUT=$T_TMP/out
mkdir -p "$SRC" "$OUT"
TEST_USER=fbt$$u
TEST_GROUP=fbt$$g
T_CLEANUP_EXTRA='test_account_remove'

# ---- helpers of this file -------------------------------------------------------------------------

test_account_remove() {
    if id "$TEST_USER" >/dev/null 2>&1; then userdel "$TEST_USER" >/dev/null 2>&1; fi
    if getent group "$TEST_GROUP" >/dev/null 2>&1; then groupdel "$TEST_GROUP" >/dev/null 2>&1; fi
}

# fbctl on this file's configuration.
fbctl_ds() {
    FB_SCHEMA=$DS_DIR/fallback.xsd "$FBCTL" -c "$XML" "$@"
}

apache_pid() {
    tr -dc 0-9 <"$DS_DIR/run/httpd.pid" 2>/dev/null
}

udpd_pid() {
    local ppid
    ppid=$(apache_pid)
    [ -n "$ppid" ] && pgrep -P "$ppid" -x udpd | head -n1
}

udpd_bound_on() {
    ss -Hlun "sport = :$1" 2>/dev/null | grep -q .
}

# Number of lines of error.log matching the extended regex $1.
log_count() {
    grep -c -E "$1" "$DS_DIR/error.log" 2>/dev/null || true
}

log_count_above() {
    [ "$(log_count "$1")" -gt "$2" ]
}

# graceful and wait until udpd has reloaded (one more UD00033 line than before).
graceful_reload() {
    local n
    n=$(log_count 'UD00033:')
    "$DEVSERVER" graceful --dir "$DS_DIR" --quiet || fail "graceful failed: $(tail -n 5 "$DS_DIR/error.log")"
    wait_for 10 log_count_above 'UD00033:' "$n" || fail "udpd did not reload after graceful: $(tail -n 8 "$DS_DIR/error.log")"
}

# set_xml SED-EXPRESSION: edits fallback.xml in place.
set_xml() {
    sed -i "$1" "$XML" || fail "sed $1"
}

# The generated fallback.xml, as the server started with it: every test begins from it.
XML_ORIG=$T_TMP/fallback.xml.orig

restore_xml() {
    cp "$XML_ORIG" "$XML"
}

# run_settings_test NAME FUNCTION: run_test, then, whatever the test did or where it stopped, the
# server is back on the original fallback.xml (so one failure cannot spill into the next test).
run_settings_test() {
    run_test "$@"
    if ! cmp -s "$XML" "$XML_ORIG" || [ "$(grep -c 'UD00016: listening' "$DS_DIR/error.log")" != "$UDPD_STARTS" ]; then
        restore_xml
        "$DEVSERVER" graceful --dir "$DS_DIR" --quiet >/dev/null 2>&1
        wait_for 10 udpd_bound_on "$UDP_PORT" || echo "# udpd not back on port $UDP_PORT"
        sleep 0.5
        UDPD_STARTS=$(grep -c 'UD00016: listening' "$DS_DIR/error.log")
    fi
}

# Field KEY of the "done" event in the --json output FILE.
done_of() {
    jq -r "select(.event == \"done\") | .$2" "$1" | tail -n1
}

post_session_to() {
    local base=$1 path=$2
    req -u "$DS_USER:$DS_PASSWORD" -X POST -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"$path\",\"size\":10}" "$base/sessions"
}

# The id of the one active session of PATH, from fbctl sessions --json; empty if none (yet).
session_of() {
    fbctl_ds sessions --json 2>/dev/null | jq -r "select(.path == \"$1\" and .state == \"active\") | .id" |
        head -n1
}

# ---- tests ----------------------------------------------------------------------------------------

test_enable_http_both_ways() {
    local st
    # true: plain HTTP works (and answers a key: the admin chose that)
    st=$(post_session_to "$HTTP_URL" settings/http-on)
    assert_eq 201 "$st" "POST sessions over plain HTTP with enable_http true ($(head -c 200 "$BODY"))"
    [ -n "$(jbody .key)" ] || fail "no key in the answer over HTTP with enable_http true"
    # false: refused, with a problem document naming the setting, and no key anywhere in the answer
    set_xml 's:<enable_http>true</enable_http>:<enable_http>false</enable_http>:'
    graceful_reload
    st=$(post_session_to "$HTTP_URL" settings/http-off)
    assert_problem 403 insufficient_permissions "$st"
    assert_eq enable_http "$(jbody .setting)" "setting named in the problem document"
    grep -q 'enable_http is false' "$BODY" || fail "detail does not name enable_http: $(cat "$BODY")"
    if grep -q -i '"key"' "$BODY" "$HEADERS"; then fail "a key crossed plain HTTP: $(cat "$BODY")"; fi
    # every route, not only session creation
    st=$(req -u "$DS_USER:$DS_PASSWORD" "$HTTP_URL/files/anything")
    assert_problem 403 insufficient_permissions "$st"
    # HTTPS still works
    st=$(post_session_to "$URL" settings/https-on)
    assert_eq 201 "$st" "POST sessions over HTTPS with enable_http false"
    restore_xml
    graceful_reload
}

test_enable_https_false_refuses_tls() {
    local st
    set_xml 's:<enable_https>true</enable_https>:<enable_https>false</enable_https>:'
    graceful_reload
    st=$(post_session_to "$URL" settings/tls-off)
    assert_problem 403 insufficient_permissions "$st"
    assert_eq enable_https "$(jbody .setting)" "setting named in the problem document"
    if grep -q -i '"key"' "$BODY"; then fail "a key in a refused answer: $(cat "$BODY")"; fi
    st=$(post_session_to "$HTTP_URL" settings/plain-on)
    assert_eq 201 "$st" "POST sessions over plain HTTP with enable_https false"
    restore_xml
    graceful_reload
    st=$(post_session_to "$URL" settings/tls-back)
    assert_eq 201 "$st" "POST sessions over HTTPS once enable_https is true again"
}

test_group_docroot_from_system_groups() {
    [ "$(id -u)" = 0 ] || skip "needs root to create a system user and group"
    command -v useradd >/dev/null && command -v groupadd >/dev/null || skip "no useradd/groupadd"
    local gdir=$T_TMP/groupdocroot
    groupadd "$TEST_GROUP" || fail "groupadd $TEST_GROUP"
    useradd -M -N -g users -G "$TEST_GROUP" -s /usr/sbin/nologin "$TEST_USER" || fail "useradd $TEST_USER"
    "$DEVSERVER" adduser "$TEST_USER" pw-$$ --dir "$DS_DIR" --quiet || fail "devserver adduser"
    mkdir -p "$gdir"
    docroot_chown "$gdir"
    set_xml "s:</docroots>:<group name=\"$TEST_GROUP\">$gdir</group></docroots>:"
    fbctl_ds check >/dev/null 2>&1 || fail "fbctl check refuses the <group> entry: $(fbctl_ds check 2>&1 | tail -n 3)"
    graceful_reload
    mkrand "$SRC/g1" 3000
    (
        DS_USER=$TEST_USER DS_PASSWORD=pw-$$
        curl_upload "$SRC/g1" grouped/g1
    ) || exit 1
    assert_file_same "$SRC/g1" "$gdir/grouped/g1"
    assert_no_file "$DOCROOT/grouped/g1"
    # the demo user, in no such group, keeps the default docroot
    curl_upload "$SRC/g1" grouped/g1
    assert_file_same "$SRC/g1" "$DOCROOT/grouped/g1"
    restore_xml
    graceful_reload
}

test_graceful_applies_docroot_and_rate_cap_in_udpd() {
    local before after newroot=$T_TMP/newroot size=$((6 * CHUNK)) rc id line
    before=$(udpd_pid)
    [ -n "$before" ] || fail "no udpd child of Apache"
    mkdir -p "$newroot"
    docroot_chown "$newroot"
    set_xml "s:</docroots>:<user name=\"$DS_USER\">$newroot</user></docroots>:"
    set_xml "s:<sessions>:<transfer><target_rate_cap_kbps>40000</target_rate_cap_kbps></transfer>\n  <sessions>:"
    graceful_reload
    after=$(udpd_pid)
    assert_eq "$before" "$after" "udpd pid after graceful (reloaded, not restarted)"
    grep -q -E "UD00033: configuration .* reloaded.*: target_rate_cap_kbps 40000, .* 2 docroots" "$DS_DIR/error.log" ||
        fail "udpd's reload line does not show the new cap and docroot: $(grep UD00033 "$DS_DIR/error.log" | tail -n1)"
    mkrand "$SRC/cap" "$size"
    fbcp --json -q --fallback never --overwrite always "$SRC/cap" "$URL/capped/cap" >"$OUT/cap.json" 2>"$OUT/cap.err"
    rc=$?
    [ "$rc" = 0 ] || fail "upload over UDP into the new docroot: exit $rc: $(cat "$OUT/cap.err")"
    assert_file_same "$SRC/cap" "$newroot/capped/cap"
    assert_eq "$size" "$(done_of "$OUT/cap.json" bytes_udp)" "bytes over UDP"
    # the association's rate is capped at 40000 kbit/s = 5000000 B/s; cipher and policy by name
    line=$(grep -E "UD00025: session [0-9a-f]+: upload of 'capped/cap'" "$DS_DIR/error.log" | tail -n1)
    [ -n "$line" ] || fail "no UD00025 line for the upload"
    case "$line" in
    *"cipher aes-128-gcm, policy fair, rate "*"..5000000 B/s"*) ;;
    *) fail "udpd's association line: $line" ;;
    esac
    restore_xml
    graceful_reload
}

test_upload_across_graceful_identical() {
    local size=$((24 * CHUNK)) pid rc i
    mkrand "$SRC/across" "$size"
    # 64 Mbit/s: about 3 s, so the graceful restart happens in the middle
    "$FBCP" --cacert "$CA" -u "$DS_USER:$DS_PASSWORD" --json -q --overwrite always --policy fixed \
        --target-rate 64M "$SRC/across" "$URL/across/file" >"$OUT/across.json" 2>"$OUT/across.err" &
    pid=$!
    T_BG_PIDS+=("$pid")
    wait_for 10 sh -c "[ -n \"\$(FB_SCHEMA=$DS_DIR/fallback.xsd $FBCTL -c $XML sessions --json 2>/dev/null | jq -r 'select(.path == \"across/file\") | .id')\" ]" ||
        fail "the upload's session did not appear"
    sleep 0.5
    graceful_reload
    for ((i = 0; i < 600; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && fail "upload still running 60 s after the graceful restart"
    wait "$pid"
    rc=$?
    [ "$rc" = 0 ] || fail "upload across graceful: exit $rc: $(cat "$OUT/across.err")"
    assert_file_same "$SRC/across" "$DOCROOT/across/file"
}

test_new_udp_port_restarts_udpd() {
    local before after newport=$((BASE_PORT + 3))
    before=$(udpd_pid)
    set_xml "s:<port>$UDP_PORT</port>:<port>$newport</port>:"
    "$DEVSERVER" graceful --dir "$DS_DIR" --quiet || fail "graceful failed"
    wait_for 10 udpd_bound_on "$newport" || fail "no udpd on the new port $newport: $(tail -n 5 "$DS_DIR/error.log")"
    after=$(udpd_pid)
    assert_ne "$before" "$after" "udpd pid after a change of its port"
    kill -0 "$before" 2>/dev/null && fail "the old udpd $before still runs"
    grep -q "FB00705: .*stopping udpd (pid $before): its settings changed" "$DS_DIR/error.log" ||
        fail "no FB00705 line saying why udpd $before was restarted"
    restore_xml
    "$DEVSERVER" graceful --dir "$DS_DIR" --quiet || fail "graceful failed"
    wait_for 10 udpd_bound_on "$UDP_PORT" || fail "no udpd back on port $UDP_PORT"
}

# The seed's block, as the seed text shows it (8080/8443), loads in fbctl check.
test_seed_block_loads_in_fbctl() {
    cat >"$T_TMP/seed.xml" <<'EOF'
<?xml version='1.0' encoding='UTF-8'?>
<CONF version="2">
    <http_server>
        <http_port>8080</http_port>
        <enable_http>1</enable_http>
        <https_port>8443</https_port>
        <enable_https>1</enable_https>
    </http_server>
</CONF>
EOF
    FB_SCHEMA=$DS_DIR/fallback.xsd "$FBCTL" -c "$T_TMP/seed.xml" check >"$T_TMP/seed.out" 2>&1 ||
        fail "fbctl check on the seed's block: $(cat "$T_TMP/seed.out")"
    grep -q '^version = 2$' "$T_TMP/seed.out" || fail "version not shown: $(cat "$T_TMP/seed.out")"
    grep -q '^http_server.enable_http = true$' "$T_TMP/seed.out" || fail "enable_http not read"
    # the seed's port-change example gives both the same number: refused, with the line and why
    cat >"$T_TMP/seed2.xml" <<'EOF'
<?xml version='1.0' encoding='UTF-8'?>
<CONF version="2">
<http_server>
    <http_port>1234</http_port>
    <https_port>1234</https_port>
    <enable_http>true</enable_http>
    <enable_https>true</enable_https>
</http_server>
</CONF>
EOF
    local rc
    FB_SCHEMA=$DS_DIR/fallback.xsd "$FBCTL" -c "$T_TMP/seed2.xml" check >"$T_TMP/seed2.out" 2>&1
    rc=$?
    assert_eq "$(exit_code_of config)" "$rc" "fbctl check exit code on one port for both"
    grep -q "seed2.xml:5: http_port and https_port are both 1234: one port cannot serve plain HTTP and HTTPS" \
        "$T_TMP/seed2.out" || fail "message: $(cat "$T_TMP/seed2.out")"
}

# The same block, with this server's ports, as Apache's fallback.xml: Apache loads it (graceful)
# and serves the fallback over both schemes, as the block says.
test_seed_block_loads_in_apache() {
    local st
    awk -v http="$HTTP_PORT" -v https="$HTTPS_PORT" '
        /<\?xml/ { print "<?xml version='"'"'1.0'"'"' encoding='"'"'UTF-8'"'"'?>"; next }
        /<CONF version/ { print "<CONF version=\"2\">"; next }
        /<http_server>/ { skip = 1
            print "    <http_server>"
            print "        <http_port>" http "</http_port>"
            print "        <enable_http>1</enable_http>"
            print "        <https_port>" https "</https_port>"
            print "        <enable_https>1</enable_https>"
            print "    </http_server>"
            next }
        /<\/http_server>/ { skip = 0; next }
        !skip { print }' "$XML_ORIG" >"$XML"
    grep -q '<CONF version="2">' "$XML" || fail "the seed's root is missing: $(head -n 3 "$XML")"
    fbctl_ds check >/dev/null 2>"$T_TMP/seed3.err" || fail "fbctl check: $(cat "$T_TMP/seed3.err")"
    graceful_reload
    grep -q "FB00001" "$DS_DIR/error.log" && fail "Apache refused the file: $(grep FB00001 "$DS_DIR/error.log" | tail -n1)"
    st=$(post_session_to "$URL" seed/https)
    assert_eq 201 "$st" "POST sessions over HTTPS with the seed's block"
    st=$(post_session_to "$HTTP_URL" seed/http)
    assert_eq 201 "$st" "POST sessions over plain HTTP with the seed's block (enable_http 1)"
    restore_xml
    graceful_reload
}

# cert_file/key_file (aspera.conf has them) are refused in fbctl and in Apache, pointing at mod_ssl.
test_cert_file_refused_pointing_at_mod_ssl() {
    local rc
    sed "s:<enable_https>true</enable_https>:<enable_https>true</enable_https>\n    <cert_file>/etc/ssl/c.pem</cert_file>:" \
        "$XML" >"$T_TMP/cert.xml"
    FB_SCHEMA=$DS_DIR/fallback.xsd "$FBCTL" -c "$T_TMP/cert.xml" check >"$T_TMP/cert.out" 2>&1
    rc=$?
    assert_eq "$(exit_code_of config)" "$rc" "fbctl check exit code with cert_file"
    grep -q -E "cert.xml:[0-9]+: Element 'cert_file': not supported here: .*SSLCertificateFile" "$T_TMP/cert.out" ||
        fail "message: $(cat "$T_TMP/cert.out")"
    cp "$T_TMP/cert.xml" "$XML"
    "$DEVSERVER" configtest --dir "$DS_DIR" >"$T_TMP/cert.apache" 2>&1
    rc=$?
    restore_xml
    assert_ne 0 "$rc" "apache2 -t with cert_file"
    grep -q "SSLCertificateFile" "$T_TMP/cert.apache" || fail "apache2 -t output: $(cat "$T_TMP/cert.apache")"
}

test_fbctl_check_warns_about_docroots() {
    local ro=$T_TMP/ro-docroot
    mkdir -p "$ro"
    chmod 755 "$ro"
    sed "s:</docroots>:<user name=\"ghost\">$T_TMP/missing-docroot</user><user name=\"ro\">$ro</user></docroots>:" \
        "$XML" >"$T_TMP/dr.xml"
    FB_SCHEMA=$DS_DIR/fallback.xsd "$FBCTL" -c "$T_TMP/dr.xml" check >"$T_TMP/dr.out" 2>"$T_TMP/dr.err" ||
        fail "fbctl check: $(cat "$T_TMP/dr.err")"
    grep -q -E "dr.xml:[0-9]+: docroot $T_TMP/missing-docroot \(user ghost\) does not exist" "$T_TMP/dr.err" ||
        fail "no warning about the missing docroot: $(cat "$T_TMP/dr.err")"
    if [ "$(id -u)" = 0 ] && getent passwd www-data >/dev/null; then
        APACHE_RUN_USER=www-data FB_SCHEMA=$DS_DIR/fallback.xsd "$FBCTL" -c "$T_TMP/dr.xml" check \
            >"$T_TMP/dr2.out" 2>"$T_TMP/dr2.err" || fail "fbctl check: $(cat "$T_TMP/dr2.err")"
        grep -q "docroot $ro (user ro) is not writable by user www-data" "$T_TMP/dr2.err" ||
            fail "no warning about the unwritable docroot: $(cat "$T_TMP/dr2.err")"
        grep -q "docroot $DOCROOT (default)" "$T_TMP/dr2.err" && fail "a warning about the good docroot: $(cat "$T_TMP/dr2.err")"
        grep -q "docroots checked as user www-data" "$T_TMP/dr2.out" || fail "$(cat "$T_TMP/dr2.out")"
    fi
}

# cancel_during NAME FBCP-ARGS...: uploads a file slowly, cancels its session with fbctl, and
# expects fbcp to end with "Server refused request" and its exit code.
cancel_during() {
    local name=$1 pid rc id i
    shift
    mkrand "$SRC/$name" $((32 * CHUNK))
    "$FBCP" --cacert "$CA" -u "$DS_USER:$DS_PASSWORD" --overwrite always "$@" "$SRC/$name" "$URL/cancel/$name" \
        >"$OUT/$name.out" 2>"$OUT/$name.err" &
    pid=$!
    T_BG_PIDS+=("$pid")
    id=""
    for ((i = 0; i < 100; i++)); do
        id=$(session_of "cancel/$name")
        [ -z "$id" ] || break
        sleep 0.1
    done
    [ -n "$id" ] || fail "the upload's session did not appear: $(cat "$OUT/$name.err")"
    sleep 1
    kill -0 "$pid" 2>/dev/null || fail "fbcp ended before the cancel: $(cat "$OUT/$name.err")"
    fbctl_ds cancel "$id" >"$OUT/$name.cancel" 2>&1 || fail "fbctl cancel: $(cat "$OUT/$name.cancel")"
    for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && fail "fbcp still runs 20 s after the cancel"
    wait "$pid"
    rc=$?
    assert_eq "$(exit_code_of server_refused)" "$rc" "fbcp exit code after fbctl cancel ($(cat "$OUT/$name.err"))"
    grep -q "Server refused request" "$OUT/$name.err" || fail "fbcp's message: $(cat "$OUT/$name.err")"
    grep -q "not in a state" "$OUT/$name.err" && fail "fbcp's message: $(cat "$OUT/$name.err")"
    assert_no_file "$DOCROOT/cancel/$name"
}

test_cancel_over_udp() {
    cancel_during viaudp --fallback never --policy fixed --target-rate 40M
    grep -q "UD00070: session .*: cancelled on the server" "$DS_DIR/error.log" || fail "no UD00070 line in udpd's log"
}

test_cancel_over_udp_auto() {
    cancel_during viaauto --policy fixed --target-rate 40M
}

test_cancel_over_https() {
    cancel_during viahttps --fallback force --limit-rate 5m
}

# ---- main -----------------------------------------------------------------------------------------

if [ ! -x "$UDPD_BUILT" ]; then
    echo "not ok - udpd not built ($UDPD_BUILT)"
    T_FAILED=1
    finish
fi
cp "$UDPD_BUILT" "$UDPD" || { echo "not ok - copy udpd"; exit 1; }
cat >"$T_TMP/daemon.conf" <<EOF
FallbackDaemon on
FallbackDaemonPath $UDPD
LogLevel warn fallback:info
EOF

ds_start_or_bail "all settings tests" --enable-http --extra-conf "$T_TMP/daemon.conf"
wait_for 10 udpd_bound_on "$UDP_PORT" || { echo "not ok - udpd did not start"; T_FAILED=1; finish; }
cp "$XML" "$XML_ORIG"
UDPD_STARTS=$(grep -c 'UD00016: listening' "$DS_DIR/error.log")

run_settings_test "enable_http true serves plain HTTP; false refuses it (403, setting named, no key)" test_enable_http_both_ways
run_settings_test "enable_https false refuses HTTPS (403, setting named)" test_enable_https_false_refuses_tls
run_settings_test "a <group> docroot takes a user of that system group" test_group_docroot_from_system_groups
run_settings_test "graceful: udpd applies a new <user> docroot and rate cap (same process, UDP only)" \
    test_graceful_applies_docroot_and_rate_cap_in_udpd
run_settings_test "an upload running across a graceful restart ends byte-identical" test_upload_across_graceful_identical
run_settings_test "graceful with a new UDP port restarts udpd on it" test_new_udp_port_restarts_udpd
run_settings_test "aspera.conf's <CONF version=2> <http_server> block loads; one port for both is refused" \
    test_seed_block_loads_in_fbctl
run_settings_test "aspera.conf's block with this server's ports loads in Apache (graceful) and serves both schemes" \
    test_seed_block_loads_in_apache
run_settings_test "cert_file refused in fbctl check and apache2 -t, pointing at SSLCertificateFile" \
    test_cert_file_refused_pointing_at_mod_ssl
run_settings_test "fbctl check warns about a missing or unwritable docroot" test_fbctl_check_warns_about_docroots
run_settings_test "fbctl cancel: Server refused request over UDP (--fallback never)" test_cancel_over_udp
run_settings_test "fbctl cancel: Server refused request over UDP (--fallback auto)" test_cancel_over_udp_auto
run_settings_test "fbctl cancel: Server refused request over HTTPS" test_cancel_over_https
finish
