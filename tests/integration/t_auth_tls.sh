#!/bin/bash
# t_auth_tls: fbcp's documented exit codes for a wrong password (authentication_failed) and for
# a server certificate it cannot verify (tls_error), and that --insecure and .netrc work.
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=10
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

SRC=$T_TMP/src
mkdir -p "$SRC"
printf 'hello\n' >"$SRC/a.txt"

test_wrong_password() {
    local rc
    require_fbcp
    "$FBCP" --cacert "$CA" -u "$DS_USER:wrong-password" "$SRC/a.txt" "$URL/a.txt" >/dev/null 2>"$T_TMP/e"
    rc=$?
    assert_eq "$(exit_code_of authentication_failed)" "$rc" "exit code ($(cat "$T_TMP/e"))"
    grep -qF "$(message_of authentication_failed)" "$T_TMP/e" || fail "message: $(cat "$T_TMP/e")"
    "$FBCP" --cacert "$CA" -u "nobody:x" "$URL/a.txt" "$T_TMP/a.txt" >/dev/null 2>"$T_TMP/e"
    rc=$?
    assert_eq "$(exit_code_of authentication_failed)" "$rc" "download exit code ($(cat "$T_TMP/e"))"
    assert_no_file "$DOCROOT/a.txt"
    assert_no_file "$T_TMP/a.txt"
}

test_no_credentials() {
    local rc
    require_fbcp
    HOME=$T_TMP/nohome "$FBCP" --cacert "$CA" "$SRC/a.txt" "$URL/a.txt" >/dev/null 2>"$T_TMP/e"
    rc=$?
    assert_eq "$(exit_code_of authentication_failed)" "$rc" "exit code ($(cat "$T_TMP/e"))"
}

test_untrusted_certificate() {
    local rc
    require_fbcp
    "$FBCP" -u "$DS_USER:$DS_PASSWORD" "$SRC/a.txt" "$URL/a.txt" >/dev/null 2>"$T_TMP/e"
    rc=$?
    assert_eq "$(exit_code_of tls_error)" "$rc" "exit code without --cacert ($(cat "$T_TMP/e"))"
    grep -qF "$(message_of tls_error)" "$T_TMP/e" || fail "message: $(cat "$T_TMP/e")"
    # A CA that did not sign the server's certificate.
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=other -keyout "$T_TMP/ok.key" \
        -out "$T_TMP/other.pem" >/dev/null 2>&1 || fail "openssl failed"
    "$FBCP" --cacert "$T_TMP/other.pem" -u "$DS_USER:$DS_PASSWORD" "$SRC/a.txt" "$URL/a.txt" >/dev/null 2>"$T_TMP/e"
    rc=$?
    assert_eq "$(exit_code_of tls_error)" "$rc" "exit code with another CA ($(cat "$T_TMP/e"))"
    assert_no_file "$DOCROOT/a.txt"
}

test_insecure_and_netrc() {
    local rc
    require_fbcp
    "$FBCP" --insecure -u "$DS_USER:$DS_PASSWORD" "$SRC/a.txt" "$URL/a.txt" >/dev/null 2>"$T_TMP/e"
    rc=$?
    assert_eq 0 "$rc" "--insecure ($(cat "$T_TMP/e"))"
    assert_file_same "$SRC/a.txt" "$DOCROOT/a.txt"
    mkdir -p "$T_TMP/home"
    printf 'machine 127.0.0.1 login %s password %s\n' "$DS_USER" "$DS_PASSWORD" >"$T_TMP/home/.netrc"
    chmod 600 "$T_TMP/home/.netrc"
    HOME=$T_TMP/home "$FBCP" --cacert "$CA" "$URL/a.txt" "$T_TMP/b.txt" >/dev/null 2>"$T_TMP/e"
    rc=$?
    assert_eq 0 "$rc" "credentials from ~/.netrc ($(cat "$T_TMP/e"))"
    assert_file_same "$SRC/a.txt" "$T_TMP/b.txt"
}

test_connection_refused() {
    local rc port=$((HTTPS_PORT + 9))
    require_fbcp
    "$FBCP" --cacert "$CA" -u "$DS_USER:$DS_PASSWORD" --retries 0 "$SRC/a.txt" \
        "https://127.0.0.1:$port/fallback/a.txt" >/dev/null 2>"$T_TMP/e"
    rc=$?
    assert_eq "$(exit_code_of connection_lost)" "$rc" "exit code with nothing listening ($(cat "$T_TMP/e"))"
}

ds_start_or_bail "all auth and TLS tests"

run_test "wrong password -> authentication_failed exit code" test_wrong_password
run_test "no credentials -> authentication_failed exit code" test_no_credentials
run_test "untrusted certificate -> tls_error exit code" test_untrusted_certificate
run_test "--insecure and ~/.netrc work" test_insecure_and_netrc
run_test "nothing listening -> connection_lost exit code" test_connection_refused
finish
