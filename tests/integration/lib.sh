# lib.sh: helpers for the integration tests (sourced by tests/integration/t_*.sh).
#
# Every test file starts its own private Apache with the built mod_fallback (scripts/devserver)
# in its own temporary directory on its own ports, so files are independent and may run in
# parallel. A file sets T_INDEX (unique small number) before sourcing this file; its ports are
# BASE + {0: https, 1: http, 2: udp, 3-9: the file's own use} with BASE = 20000 + 10 * T_INDEX,
# or 1000, 2000, ... above that when another run on this machine holds that block (a reservation
# directory in /tmp/fbit-ports, released on exit).
#
# A test is a shell function run with `run_test NAME FUNCTION` in a subshell: an assertion that
# fails prints a diagnostic ("# ...") and exits the subshell, so the test stops at its first
# failure and the file goes on with the next test. Output is TAP-like: "ok - NAME",
# "not ok - NAME", "ok - NAME # SKIP reason". `finish` prints the file's counts and sets the
# exit status.
#
# shellcheck shell=bash disable=SC2034,SC2030,SC2031,SC2119,SC2120,SC2001

set -uo pipefail

SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FBCP=${FBCP:-$SRCDIR/client/fbcp}
FBCTL=${FBCTL:-$SRCDIR/tools/fbctl}
DEVSERVER=$SRCDIR/scripts/devserver
APACHE_BIN=${APACHE_BIN:-/usr/sbin/apache2}
CHUNK=1048576

: "${T_INDEX:?set T_INDEX before sourcing lib.sh}"

# True if no TCP listener and no UDP socket uses any of the ten ports from $1.
port_block_free() {
    local p
    for ((p = $1; p < $1 + 10; p++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then return 1; fi
        if [ -n "$(ss -Hlun "sport = :$p" 2>/dev/null)" ]; then return 1; fi
    done
    return 0
}

# Picks and reserves this file's port block (see the top of this file).
reserve_ports() {
    local k base d pid
    if [ -n "${FB_TEST_PORT_BASE:-}" ]; then
        BASE_PORT=$((FB_TEST_PORT_BASE + 10 * T_INDEX))
        return 0
    fi
    mkdir -p /tmp/fbit-ports
    for ((k = 0; k < 12; k++)); do
        base=$((20000 + 1000 * k + 10 * T_INDEX))
        d=/tmp/fbit-ports/$base
        if ! mkdir "$d" 2>/dev/null; then
            pid=$(cat "$d/pid" 2>/dev/null || true)
            # A reservation whose owner is gone is stale.
            if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then continue; fi
            rm -rf "$d"
            mkdir "$d" 2>/dev/null || continue
        fi
        echo $$ >"$d/pid"
        if port_block_free "$base"; then
            BASE_PORT=$base
            T_PORT_RESERVATION=$d
            return 0
        fi
        rm -rf "$d"
    done
    echo "# no free block of 10 ports for T_INDEX $T_INDEX" >&2
    BASE_PORT=$((20000 + 10 * T_INDEX))
}
T_PORT_RESERVATION=""
reserve_ports
HTTPS_PORT=$BASE_PORT
HTTP_PORT=$((BASE_PORT + 1))
UDP_PORT=$((BASE_PORT + 2))

# Nothing from the caller's environment may change how curl or fbcp trust certificates or reach
# the server.
unset CURL_CA_BUNDLE SSL_CERT_FILE SSL_CERT_DIR http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
export NO_PROXY='*' no_proxy='*'

T_NAME=$(basename "$0" .sh)
T_TMP=$(mktemp -d "/tmp/fbit-$T_NAME.XXXXXX")
chmod 755 "$T_TMP"

# Snapshot the built programs, so that a rebuild in the tree while a test runs (or a graceful
# restart, which loads the module again) cannot mix versions or find a half-written file.
MODULE=${FB_TEST_MODULE:-$SRCDIR/mod_fallback/.libs/mod_fallback.so}
mkdir -p "$T_TMP/bin"
if [ -f "$MODULE" ] && cp "$MODULE" "$T_TMP/bin/mod_fallback.so" 2>/dev/null; then MODULE=$T_TMP/bin/mod_fallback.so; fi
if [ -x "$FBCP" ] && cp "$FBCP" "$T_TMP/bin/fbcp" 2>/dev/null; then FBCP=$T_TMP/bin/fbcp; fi
if [ -x "$FBCTL" ] && cp "$FBCTL" "$T_TMP/bin/fbctl" 2>/dev/null; then FBCTL=$T_TMP/bin/fbctl; fi
DS_DIR=$T_TMP/ds
DOCROOT=$DS_DIR/docroot
CA=$DS_DIR/cert.pem
DS_USER=demo
DS_PASSWORD=demo-password
URL=https://127.0.0.1:$HTTPS_PORT/fallback
ORIGIN=https://127.0.0.1:$HTTPS_PORT
DS_RUNNING=0
T_PASSED=0
T_FAILED=0
T_SKIPPED=0
T_BG_PIDS=()

# ---- lifecycle -----------------------------------------------------------------------------------

cleanup() {
    local p
    for p in "${T_BG_PIDS[@]}"; do
        kill -KILL "$p" 2>/dev/null || true
    done
    # Tests may start and stop the server inside their subshells: stop whatever runs.
    if [ -f "$DS_DIR/devserver.env" ]; then
        "$DEVSERVER" stop --dir "$DS_DIR" --clean --quiet >/dev/null 2>&1 || true
    fi
    if [ -n "${T_CLEANUP_EXTRA:-}" ]; then eval "$T_CLEANUP_EXTRA" || true; fi
    if [ -n "$T_PORT_RESERVATION" ]; then rm -rf "$T_PORT_RESERVATION"; fi
    if [ "${FB_KEEP_TMP:-0}" = 1 ] || { [ "$T_FAILED" -gt 0 ] && [ "${FB_KEEP_FAILED:-0}" = 1 ]; }; then
        echo "# kept $T_TMP"
    else
        rm -rf "$T_TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts the devserver for this file; extra arguments go to `scripts/devserver start`.
ds_start() {
    local out
    if ! port_free "$HTTPS_PORT"; then
        echo "# port $HTTPS_PORT is in use (by another program?)" >&2
        return 1
    fi
    if ! out=$("$DEVSERVER" start --dir "$DS_DIR" --https-port "$HTTPS_PORT" --http-port "$HTTP_PORT" \
        --udp-port "$UDP_PORT" --user "$DS_USER" --password "$DS_PASSWORD" --module "$MODULE" --quiet "$@" 2>&1); then
        echo "$out" | sed 's/^/# /' >&2
        return 1
    fi
    DS_RUNNING=1
}

ds_stop() {
    "$DEVSERVER" stop --dir "$DS_DIR" --quiet "$@" >/dev/null 2>&1
    DS_RUNNING=0
}

# Starts the devserver (extra arguments go to devserver start) or, if that fails, reports one
# failure named LABEL and exits. Usage: ds_start_or_bail LABEL [devserver options]
ds_start_or_bail() {
    local label=$1
    shift
    if ds_start "$@"; then return 0; fi
    echo "not ok - $label # devserver did not start"
    T_FAILED=$((T_FAILED + 1))
    finish
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

run_test() {
    local name=$1 fn=$2 rc
    (
        set -u
        T_CURRENT=$name
        "$fn"
    )
    rc=$?
    case $rc in
    0)
        echo "ok - $name"
        T_PASSED=$((T_PASSED + 1))
        ;;
    77)
        echo "ok - $name # SKIP $(cat "$T_TMP/.skip" 2>/dev/null || echo skipped)"
        T_SKIPPED=$((T_SKIPPED + 1))
        ;;
    *)
        echo "not ok - $name"
        T_FAILED=$((T_FAILED + 1))
        ;;
    esac
    rm -f "$T_TMP/.skip"
}

# Prints the file's counts and exits with the file's status.
finish() {
    echo "# $T_NAME: $T_PASSED passed, $T_FAILED failed, $T_SKIPPED skipped"
    if [ "$T_FAILED" -gt 0 ]; then
        if [ -f "$DS_DIR/error.log" ]; then
            echo "# last lines of $DS_DIR/error.log:"
            tail -n 15 "$DS_DIR/error.log" | sed 's/^/#   /'
        fi
        exit 1
    fi
    exit 0
}

# ---- assertions (inside a test: they end the test on failure) -----------------------------------

fail() {
    echo "# $T_CURRENT: $*" >&2
    exit 1
}

skip() {
    echo "$*" >"$T_TMP/.skip"
    exit 77
}

note() {
    echo "# $*" >&2
}

assert_eq() {
    local expected=$1 actual=$2 what=${3:-value}
    [ "$expected" = "$actual" ] || fail "$what: expected '$expected', got '$actual'"
}

assert_ne() {
    local unexpected=$1 actual=$2 what=${3:-value}
    [ "$unexpected" != "$actual" ] || fail "$what: did not expect '$actual'"
}

assert_le() {
    local a=$1 b=$2 what=${3:-value}
    [ "$a" -le "$b" ] || fail "$what: expected $a <= $b"
}

assert_ge() {
    local a=$1 b=$2 what=${3:-value}
    [ "$a" -ge "$b" ] || fail "$what: expected $a >= $b"
}

# assert_in VALUE ALT1 ALT2...: VALUE is one of the alternatives.
assert_in() {
    local v=$1 a
    shift
    for a in "$@"; do [ "$v" = "$a" ] && return 0; done
    fail "expected one of [$*], got '$v'"
}

assert_file_exists() {
    [ -e "$1" ] || fail "expected $1 to exist"
}

assert_no_file() {
    if [ -e "$1" ] || [ -L "$1" ]; then fail "expected $1 not to exist"; fi
}

sha() {
    sha256sum "$1" | cut -d' ' -f1
}

assert_file_same() {
    local a=$1 b=$2 ha hb
    [ -f "$a" ] || fail "missing file $a"
    [ -f "$b" ] || fail "missing file $b"
    ha=$(sha "$a")
    hb=$(sha "$b")
    [ "$ha" = "$hb" ] || fail "SHA-256 differs: $a ($ha, $(stat -c %s "$a") B) vs $b ($hb, $(stat -c %s "$b") B)"
}

# assert_tree_same DIR1 DIR2: same relative file names, types and contents.
assert_tree_same() {
    local a=$1 b=$2 la lb
    la=$(cd "$a" && find . -mindepth 1 \( -type f -printf 'f %p\n' -o -type d -printf 'd %p\n' \) | sort)
    lb=$(cd "$b" && find . -mindepth 1 \( -type f -printf 'f %p\n' -o -type d -printf 'd %p\n' \) | sort)
    [ "$la" = "$lb" ] || fail "trees differ: $a: [$(echo "$la" | tr '\n' ' ')] vs $b: [$(echo "$lb" | tr '\n' ' ')]"
    local f
    while read -r _ f; do
        assert_file_same "$a/$f" "$b/$f"
    done < <(cd "$a" && find . -type f -printf 'f %p\n')
}

# ---- data ----------------------------------------------------------------------------------------

# mkrand FILE SIZE: SIZE random bytes.
mkrand() {
    head -c "$2" /dev/urandom >"$1"
}

# Makes a file in the docroot owned by the Apache user (as Apache would have made it).
docroot_chown() {
    if [ "$(id -u)" = 0 ] && getent passwd www-data >/dev/null; then chown -R www-data: "$@"; fi
}

# Exit code of an error name from lib/fb_err.h ("authentication_failed" -> 8).
exit_code_of() {
    sed -n "s/.*X(FB_[A-Z_]*, \"$1\", [0-9]*, \([0-9]*\),.*/\1/p" "$SRCDIR/lib/fb_err.h" | head -n1
}

# Message of an error name from lib/fb_err.h.
message_of() {
    sed -n "s/.*X(FB_[A-Z_]*, \"$1\", [0-9]*, [0-9]*, \"\(.*\)\").*/\1/p" "$SRCDIR/lib/fb_err.h" | head -n1
}

# ---- HTTP ----------------------------------------------------------------------------------------

# Last answer of `api`/`req`: body and headers in files, status printed.
BODY=$T_TMP/last.body
HEADERS=$T_TMP/last.headers

# req [curl args...]: one curl request with our CA; prints the status, keeps body and headers.
req() {
    curl -sS --cacert "$CA" --max-time 120 -o "$BODY" -D "$HEADERS" -w '%{http_code}' "$@" 2>"$T_TMP/last.curlerr" ||
        true
}

# api METHOD PATH [curl args...]: request to $URL/PATH as the test user.
api() {
    local method=$1 path=$2
    shift 2
    req -u "$DS_USER:$DS_PASSWORD" -X "$method" "$@" "$URL/$path"
}

# api_as USER PASSWORD METHOD PATH [curl args...]
api_as() {
    local u=$1 p=$2 method=$3 path=$4
    shift 4
    req -u "$u:$p" -X "$method" "$@" "$URL/$path"
}

# http_status METHOD URL [curl args...]: status only (no auth unless given).
http_status() {
    local method=$1 url=$2
    shift 2
    curl -s --cacert "$CA" --max-time 60 -o /dev/null -w '%{http_code}' -X "$method" "$@" "$url" || true
}

# access_count METHOD PATH-PART: requests in the private Apache's access log so far whose request
# line has both.
access_count() {
    access_log_settled
    grep -F "\"$1 " "$DS_DIR/access.log" | grep -c -F "$2"
}

# Apache writes a request's access-log line after its answer: a client that has exited may
# still have lines to come. A marker request made now and seen in the log means they are in.
access_log_settled() {
    local marker=settle-$RANDOM$RANDOM
    curl -s --cacert "$CA" --max-time 30 -o /dev/null "$URL/files/$marker" || true
    wait_for 5 grep -q -F "$marker" "$DS_DIR/access.log" || fail "the access log did not show $marker"
}

# Field of the last JSON body (jq filter), empty if absent or not JSON.
jbody() {
    jq -r "$1 // empty" "$BODY" 2>/dev/null || true
}

header() {
    grep -i "^$1:" "$HEADERS" | tail -n1 | cut -d: -f2- | sed 's/^ *//; s/\r$//'
}

# assert_problem STATUS CODE GOT_STATUS: the last answer is STATUS with a problem+json document
# whose code is CODE (CODE "" skips the code check).
assert_problem() {
    local want=$1 code=$2 got=$3 ct
    if [ "$got" != "$want" ]; then
        fail "expected HTTP $want${code:+ ($code)}, got $got: $(head -c 300 "$BODY" 2>/dev/null)"
    fi
    [ -n "$code" ] || return 0
    ct=$(header Content-Type)
    case "$ct" in application/problem+json*) ;; *) fail "expected application/problem+json, got '$ct'" ;; esac
    assert_eq "$code" "$(jbody .code)" "problem code"
    assert_eq "$want" "$(jbody .status)" "problem status"
}

# new_session PATH SIZE [extra JSON members]: POST sessions for an upload; sets nothing, prints the
# id. The whole answer stays in $BODY.
new_session() {
    local path=$1 size=$2 extra=${3:-} st
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"$path\",\"size\":$size$extra}")
    case $st in 200 | 201) ;; *) fail "POST sessions for $path: HTTP $st: $(head -c 300 "$BODY")" ;; esac
    jbody .id
}

# put_range ID FILE FIRST LAST [curl args]: PUT bytes FIRST..LAST of FILE; prints the status.
put_range() {
    local id=$1 file=$2 first=$3 last=$4 size piece
    shift 4
    size=$(stat -c %s "$file")
    piece=$T_TMP/piece.$BASHPID
    tail -c +$((first + 1)) "$file" | head -c $((last - first + 1)) >"$piece"
    api PUT "sessions/$id/data" -H "Content-Range: bytes $first-$last/$size" \
        -H 'Content-Type: application/octet-stream' --data-binary "@$piece" "$@"
    rm -f "$piece"
}

# commit ID SHA256: POST commit; prints the status.
commit() {
    api POST "sessions/$1/commit" -H 'Content-Type: application/json' --data-binary "{\"sha256\":\"$2\"}"
}

# curl_upload FILE REMOTE [per-request bytes]: the whole upload with curl only, the way any client
# can drive the API: POST sessions, PUT each missing range, commit. Fails the test on any error.
curl_upload() {
    local file=$1 remote=$2 step=${3:-$CHUNK} size id st off len end first last
    size=$(stat -c %s "$file")
    id=$(new_session "$remote" "$size")
    [ -n "$id" ] || fail "no id in session answer: $(cat "$BODY")"
    local missing
    missing=$(jq -r '.missing[]? | "\(.[0]) \(.[1])"' "$BODY")
    while read -r off len; do
        [ -n "$off" ] || continue
        end=$((off + len))
        first=$off
        while [ "$first" -lt "$end" ]; do
            last=$((first + step - 1))
            [ "$last" -lt "$end" ] || last=$((end - 1))
            st=$(put_range "$id" "$file" "$first" "$last")
            [ "$st" = 200 ] || fail "PUT $first-$last/$size: HTTP $st: $(head -c 300 "$BODY")"
            first=$((last + 1))
        done
    done <<<"$missing"
    st=$(commit "$id" "$(sha "$file")")
    [ "$st" = 200 ] || fail "commit $remote: HTTP $st: $(head -c 300 "$BODY")"
    assert_eq "done" "$(jbody .state)" "state after commit"
}

# ---- fbcp / fbctl --------------------------------------------------------------------------------

require_fbcp() {
    [ -x "$FBCP" ] || fail "fbcp not built ($FBCP)"
}

require_fbctl() {
    [ -x "$FBCTL" ] || fail "fbctl not built ($FBCTL)"
}

# fbcp with the test server's CA and credentials; extra arguments follow.
fbcp() {
    "$FBCP" --cacert "$CA" -u "$DS_USER:$DS_PASSWORD" "$@"
}

# fbcp_bg OUT ERR ARGS...: fbcp in the background with stdout to OUT and stderr to ERR; FBCP_PID is
# the pid of fbcp itself (not of a subshell), so it can be killed.
fbcp_bg() {
    local out=$1 err=$2
    shift 2
    "$FBCP" --cacert "$CA" -u "$DS_USER:$DS_PASSWORD" "$@" >"$out" 2>"$err" &
    FBCP_PID=$!
    T_BG_PIDS+=("$FBCP_PID")
}

# Sum of the lengths in a JSON "missing" list of the last body.
missing_bytes() {
    jq '[.missing[]?[1]] | add // 0' "$BODY"
}

# ---- udpd started by a test (UDPD, UDPD_LOG and UDPD_PIDFILE set by the file) -------------------

# udpd_start [ARGS]: udpd on the devserver's fallback.xml (as Apache's user when run as root, so that it
# may open the session table and write the partial files); waits for its "listening" line.
udpd_start() {
    local user_opt=() n pid
    if [ "$(id -u)" = 0 ] && getent passwd www-data >/dev/null; then user_opt=(--user www-data); fi
    n=$(grep -c "UD00016: listening" "$UDPD_LOG" 2>/dev/null)
    FB_SCHEMA=$DS_DIR/fallback.xsd "$UDPD" -c "$DS_DIR/fallback.xml" -f "${user_opt[@]}" "$@" >>"$UDPD_LOG" 2>&1 &
    pid=$!
    disown "$pid" # no "Killed" job message when a test kills it
    echo "$pid" >"$UDPD_PIDFILE"
    T_BG_PIDS+=("$pid")
    wait_for 10 udpd_listening_more "${n:-0}" || fail "udpd did not start: $(tail -n 5 "$UDPD_LOG")"
}

udpd_listening_more() {
    [ "$(grep -c "UD00016: listening" "$UDPD_LOG")" -gt "$1" ]
}

# udpd_kill: SIGKILL (a crash: no goodbye to anyone) and wait until it is gone.
udpd_kill() {
    local pid i
    pid=$(cat "$UDPD_PIDFILE" 2>/dev/null)
    [ -n "$pid" ] || return 0
    kill -KILL "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$UDPD_PIDFILE"
}

# Waits (bounded, 0.1 s steps) until the command succeeds. wait_for SECONDS CMD...
wait_for() {
    local n=$(($1 * 10)) i
    shift
    for ((i = 0; i < n; i++)); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    return 1
}

# supervised_udpd NAME [CONF-LINE...]: copies the built udpd ($UDPD_BUILT) to $UDPD (a private
# copy a test may replace or kill) and writes $T_TMP/daemon.conf, which has Apache start and
# supervise it, with the CONF-LINEs after; without a built udpd it prints
# "not ok - NAME # udpd not built" and exits.
supervised_udpd() {
    local name=$1 line
    shift
    if [ ! -x "$UDPD_BUILT" ]; then
        echo "not ok - $name # udpd not built"
        exit 1
    fi
    mkdir -p "$(dirname "$UDPD")"
    cp "$UDPD_BUILT" "$UDPD" || { echo "not ok - copy udpd"; exit 1; }
    {
        echo "FallbackDaemon on"
        echo "FallbackDaemonPath $UDPD"
        for line in "$@"; do echo "$line"; done
    } >"$T_TMP/daemon.conf"
}
