#!/bin/bash
# t_udp_transfer: uploads and downloads over the UDP fast path through a real udpd on loopback,
# for sessions created through the real Apache and mod_fallback, committed over HTTPS: SHA-256
# identical at both ends, byte counters right, chunks written over HTTP never resent over UDP,
# checkpoints written when udpd stops mid-upload and the upload resumed after a restart.
# The client is tests/udp/udp_client (the fb_xfer engines fbcp uses).
# shellcheck disable=SC2034,SC2317,SC2030,SC2031,SC2086
T_INDEX=40
# shellcheck source=tests/integration/lib.sh
. "$(dirname "$0")/lib.sh"

UDPD=${UDPD:-$SRCDIR/udpd/udpd}
UDP_CLIENT=${UDP_CLIENT:-$SRCDIR/tests/udp/udp_client}
[ -x "$UDPD" ] && cp "$UDPD" "$T_TMP/bin/udpd" && UDPD=$T_TMP/bin/udpd
[ -x "$UDP_CLIENT" ] && cp "$UDP_CLIENT" "$T_TMP/bin/udp_client" && UDP_CLIENT=$T_TMP/bin/udp_client
UDPD_LOG=$T_TMP/udpd.log
SRC=$T_TMP/src
mkdir -p "$SRC"
T_CLEANUP_EXTRA='udpd_stop'

# ---- helpers of this file ---------------------------------------------------------------------------

# udpd_start [udpd options]: udpd on this file's devserver configuration, as Apache's user when
# run as root; waits for its "listening" line. Its pid goes to a file, so the cleanup and later
# tests find it whichever subshell started it.
UDPD_PIDFILE=$T_TMP/udpd.pid
udpd_start() {
    local user_opt=() n pid
    if [ "$(id -u)" = 0 ] && getent passwd www-data >/dev/null; then user_opt=(--user www-data); fi
    n=$(grep -c "UD00016: listening" "$UDPD_LOG" 2>/dev/null)
    FB_SCHEMA=$DS_DIR/fallback.xsd "$UDPD" -c "$DS_DIR/fallback.xml" "${user_opt[@]}" --log-level debug "$@" \
        >>"$UDPD_LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$UDPD_PIDFILE"
    T_BG_PIDS+=("$pid")
    wait_for 10 udpd_listening_more "${n:-0}" || fail "udpd did not start: $(tail -n 5 "$UDPD_LOG")"
}

# True once the log has more than N "listening" lines.
udpd_listening_more() {
    [ "$(grep -c "UD00016: listening" "$UDPD_LOG")" -gt "$1" ]
}

udpd_pid() {
    cat "$UDPD_PIDFILE" 2>/dev/null
}

# udpd_stop: SIGTERM and wait until it is gone; UDPD_RC is its exit status when it is a child of
# this shell (else empty).
udpd_stop() {
    local pid i
    pid=$(udpd_pid)
    UDPD_RC=
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null
    UDPD_RC=$?
    if [ "$UDPD_RC" = 127 ]; then
        UDPD_RC=
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
}

# client ARGS...: the UDP driver against this udpd; stdout to $T_TMP/client.json.
client() {
    "$UDP_CLIENT" --host 127.0.0.1 --port "$UDP_PORT" "$@" >"$T_TMP/client.json" 2>"$T_TMP/client.err"
}

# The value of counter NAME in udpd's latest counter lines (SIGUSR1).
udpd_counter() {
    kill -USR1 "$(udpd_pid)"
    sleep 0.3
    grep -E 'UD0005[01]' "$UDPD_LOG" | tail -n 2 | grep -o " $1=[0-9]*" | tail -n 1 | cut -d= -f2
}

# new_download PATH: POST sessions for a download; the answer stays in $BODY.
new_download() {
    local st
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"download\",\"path\":\"$1\"}")
    assert_eq 201 "$st" "POST sessions (download $1): $(head -c 300 "$BODY")"
}

# udp_upload NAME SIZE: a new session, the whole file over UDP, commit over HTTPS, compare.
udp_upload() {
    local name=$1 size=$2 id st
    mkrand "$SRC/$name" "$size"
    id=$(new_session "udp/$name" "$size")
    cp "$BODY" "$T_TMP/$name.session.json"
    client --session "$T_TMP/$name.session.json" --upload "$SRC/$name" --rate 200000000 ||
        fail "udp_client upload of $name failed: $(cat "$T_TMP/client.err")"
    st=$(api GET "sessions/$id")
    assert_eq 200 "$st" "GET session"
    assert_eq 0 "$(jbody .missing_bytes)" "missing bytes after the UDP upload"
    assert_eq "$size" "$(jq -r .bytes_udp "$BODY")" "bytes_udp"
    assert_eq 0 "$(jq -r .bytes_http "$BODY")" "bytes_http"
    st=$(commit "$id" "$(sha "$SRC/$name")")
    assert_eq 200 "$st" "commit: $(head -c 300 "$BODY")"
    assert_file_same "$SRC/$name" "$DOCROOT/udp/$name"
}

# ---- tests ----------------------------------------------------------------------------------------

test_upload_5m() {
    udp_upload five.bin 5000000
    [ "$(jq -r .sent_retx "$T_TMP/client.json")" -le 1000000 ] || fail "resent too much: $(cat "$T_TMP/client.json")"
}

# A complete upload is about to be committed: udpd does not checkpoint it when the client closes
# (its commit makes it durable), but writes the checkpoint about a second later if no commit came.
test_complete_upload_checkpoint_deferred() {
    local name=defer.bin size=20000 id st c0
    mkrand "$SRC/$name" "$size"
    id=$(new_session "udp/$name" "$size")
    cp "$BODY" "$T_TMP/$name.session.json"
    client --session "$T_TMP/$name.session.json" --upload "$SRC/$name" --rate 200000000 ||
        fail "udp_client upload of $name failed: $(cat "$T_TMP/client.err")"
    assert_no_file "$DOCROOT/udp/.$name.fbpart.ckpt"
    wait_for 5 test -f "$DOCROOT/udp/.$name.fbpart.ckpt" || fail "no checkpoint of an uncommitted upload after 5 s"
    st=$(commit "$id" "$(sha "$SRC/$name")")
    assert_eq 200 "$st" "commit: $(head -c 300 "$BODY")"
    assert_file_same "$SRC/$name" "$DOCROOT/udp/$name"
    assert_no_file "$DOCROOT/udp/.$name.fbpart.ckpt"
    # committed at once: no checkpoint is ever written
    name=defer2.bin
    mkrand "$SRC/$name" "$size"
    c0=$(udpd_counter checkpoints)
    id=$(new_session "udp/$name" "$size")
    cp "$BODY" "$T_TMP/$name.session.json"
    client --session "$T_TMP/$name.session.json" --upload "$SRC/$name" --rate 200000000 ||
        fail "udp_client upload of $name failed: $(cat "$T_TMP/client.err")"
    st=$(commit "$id" "$(sha "$SRC/$name")")
    assert_eq 200 "$st" "commit: $(head -c 300 "$BODY")"
    sleep 2
    assert_no_file "$DOCROOT/udp/.$name.fbpart.ckpt"
    assert_eq "$c0" "$(udpd_counter checkpoints)" "checkpoints written for an upload committed at once"
}

test_upload_edge_sizes() {
    udp_upload zero.bin 0
    udp_upload one.bin 1
    udp_upload chunk_minus.bin $((CHUNK - 1))
    udp_upload chunk.bin $CHUNK
    udp_upload chunk_plus.bin $((CHUNK + 1))
}

test_download() {
    local name=down.bin
    mkrand "$DOCROOT/$name" 7000001
    docroot_chown "$DOCROOT/$name"
    new_download "$name"
    cp "$BODY" "$T_TMP/down.session.json"
    client --session "$T_TMP/down.session.json" --download "$T_TMP/down.out" --rate 200000000 ||
        fail "udp_client download failed: $(cat "$T_TMP/client.err")"
    assert_file_same "$DOCROOT/$name" "$T_TMP/down.out"
    assert_eq 7 "$(jq -r .chunks "$T_TMP/client.json")" "chunks completed at the client"
}

# The end of a download (PROTOCOL.md 8.5): udpd answers the client's CLOSE(0); with UNCHANGED,
# and the session freed, only for the very file the session was created for.
test_download_end_vouched() {
    local id
    mkrand "$DOCROOT/end.bin" 3000000
    docroot_chown "$DOCROOT/end.bin"
    sleep 0.3 # older than the session by more than udpd's clock margin
    new_download end.bin
    id=$(jbody .id)
    cp "$BODY" "$T_TMP/end.session.json"
    client --session "$T_TMP/end.session.json" --download "$T_TMP/end.out" --rate 200000000 ||
        fail "udp_client download failed: $(cat "$T_TMP/client.err")"
    assert_file_same "$DOCROOT/end.bin" "$T_TMP/end.out"
    assert_eq true "$(jq -r .end_unchanged "$T_TMP/client.json")" "UNCHANGED in udpd's CLOSE"
    assert_eq 404 "$(api GET "sessions/$id")" "GET sessions/$id after the vouched end"
}

# After the session was created the path comes to name another file: a symlink swapped to a file
# of the same size whose change time is just as old, or the file rewritten in place. udpd serves
# what the path names now but must not vouch for it; the session stays for the client's checks.
test_download_end_not_vouched_for_another_file() {
    local id
    mkdir -p "$DOCROOT/swap"
    mkrand "$DOCROOT/swap/v1" 2000000
    mkrand "$DOCROOT/swap/v2" 2000000
    ln -sfn v1 "$DOCROOT/swap/cur"
    docroot_chown "$DOCROOT/swap"
    sleep 0.3
    new_download swap/cur
    id=$(jbody .id)
    cp "$BODY" "$T_TMP/swap.session.json"
    ln -sfn v2 "$DOCROOT/swap/cur.new" && mv -T "$DOCROOT/swap/cur.new" "$DOCROOT/swap/cur"
    client --session "$T_TMP/swap.session.json" --download "$T_TMP/swap.out" --rate 200000000 ||
        fail "udp_client download failed: $(cat "$T_TMP/client.err")"
    assert_file_same "$DOCROOT/swap/v2" "$T_TMP/swap.out"
    assert_eq true "$(jq -r .end_answered "$T_TMP/client.json")" "udpd answered the CLOSE"
    assert_eq false "$(jq -r .end_unchanged "$T_TMP/client.json")" "UNCHANGED for a swapped file"
    assert_eq 200 "$(api GET "sessions/$id")" "GET sessions/$id (not ended by udpd)"

    mkrand "$DOCROOT/swap/w" 2000000
    docroot_chown "$DOCROOT/swap/w"
    sleep 0.3
    new_download swap/w
    cp "$BODY" "$T_TMP/w.session.json"
    # new content in place: same inode, size and (restored) modification time; only the change
    # time, which no user can set, tells
    touch -r "$DOCROOT/swap/w" "$T_TMP/w.times"
    head -c 4096 /dev/urandom | dd of="$DOCROOT/swap/w" bs=4096 seek=0 conv=notrunc status=none
    touch -r "$T_TMP/w.times" "$DOCROOT/swap/w"
    assert_eq "$(stat -c %y "$T_TMP/w.times")" "$(stat -c %y "$DOCROOT/swap/w")" "modification time restored"
    client --session "$T_TMP/w.session.json" --download "$T_TMP/w.out" --rate 200000000 ||
        fail "udp_client download failed: $(cat "$T_TMP/client.err")"
    assert_eq false "$(jq -r .end_unchanged "$T_TMP/client.json")" "UNCHANGED for a file rewritten in place"
}

test_download_zero_bytes() {
    : >"$DOCROOT/empty.bin"
    docroot_chown "$DOCROOT/empty.bin"
    new_download empty.bin
    cp "$BODY" "$T_TMP/empty.session.json"
    client --session "$T_TMP/empty.session.json" --download "$T_TMP/empty.out" ||
        fail "udp_client download failed: $(cat "$T_TMP/client.err")"
    assert_eq 0 "$(stat -c %s "$T_TMP/empty.out")" "size"
}

# 5 % of the datagrams lost in each direction: the files still arrive exactly, and the data
# resent stays near the loss (each hole about once per round trip).
# A paced upload (80 Mbit/s, about 6800 datagrams a second, one by one): udpd lets datagrams gather in the
# socket between reads instead of waking for each few (RX_GATHER_US), so a read takes several.
test_receive_gathers_datagrams() {
    local name=paced.bin size=$((12 * 1000 * 1000)) id st d0 r0 d1 r1
    mkrand "$SRC/$name" "$size"
    id=$(new_session "udp/$name" "$size")
    cp "$BODY" "$T_TMP/paced.session.json"
    d0=$(udpd_counter rx_dgrams)
    r0=$(udpd_counter rx_reads)
    client --session "$T_TMP/paced.session.json" --upload "$SRC/$name" --rate 10000000 --no-offload ||
        fail "paced upload failed: $(cat "$T_TMP/client.err")"
    d1=$(udpd_counter rx_dgrams)
    r1=$(udpd_counter rx_reads)
    [ -n "$d0" ] && [ -n "$r1" ] && [ "$r1" -gt "$r0" ] || fail "no rx_reads counter: $d0 $r0 $d1 $r1"
    echo "# $((d1 - d0)) datagrams in $((r1 - r0)) reads"
    # about 4.3 a read with the gathering, 2.0 without (datagrams come one by one, ~150 us apart)
    [ $(((d1 - d0) / (r1 - r0))) -ge 3 ] || fail "$((d1 - d0)) datagrams in $((r1 - r0)) reads: under 3 a read"
    st=$(commit "$id" "$(sha "$SRC/$name")")
    assert_eq 200 "$st" "commit: $(head -c 300 "$BODY")"
    assert_file_same "$SRC/$name" "$DOCROOT/udp/$name"
}

# A paced download (80 Mbit/s, about 6800 datagrams a second): udpd sleeps at least
# PACING_QUANTUM_US (1 ms) between pacing wake-ups and sends what came due as one batch, so a
# send call carries several datagrams (about 7; 1.7 with the old 250 us).
test_download_sends_in_batches() {
    local name=pacedown.bin size=$((12 * 1000 * 1000)) d0 s0 d1 s1
    mkrand "$SRC/$name" "$size"
    cp "$SRC/$name" "$DOCROOT/$name"
    docroot_chown "$DOCROOT/$name"
    new_download "$name"
    cp "$BODY" "$T_TMP/pacedown.session.json"
    d0=$(udpd_counter tx_dgrams)
    s0=$(udpd_counter tx_sends)
    client --session "$T_TMP/pacedown.session.json" --download "$T_TMP/pacedown.out" --rate 10000000 ||
        fail "paced download failed: $(cat "$T_TMP/client.err")"
    d1=$(udpd_counter tx_dgrams)
    s1=$(udpd_counter tx_sends)
    assert_file_same "$SRC/$name" "$T_TMP/pacedown.out"
    [ -n "$s0" ] && [ -n "$s1" ] && [ "$s1" -gt "$s0" ] || fail "no tx_sends counter: $d0 $s0 $d1 $s1"
    echo "# $((d1 - d0)) datagrams in $((s1 - s0)) send calls"
    [ $(((d1 - d0) / (s1 - s0))) -ge 4 ] || fail "$((d1 - d0)) datagrams in $((s1 - s0)) send calls: under 4 a call"
}

test_lossy_path() {
    local name=lossy.bin size=$((16 * CHUNK)) id st retx
    mkrand "$SRC/$name" "$size"
    id=$(new_session "udp/$name" "$size")
    cp "$BODY" "$T_TMP/lossy.session.json"
    client --session "$T_TMP/lossy.session.json" --upload "$SRC/$name" --rate 30000000 --drop 0.05 --seed 7 ||
        fail "lossy upload failed: $(cat "$T_TMP/client.err")"
    retx=$(jq -r .sent_retx "$T_TMP/client.json")
    [ "$retx" -le $((size / 10)) ] || fail "resent $retx bytes of $size at 5 % loss: $(cat "$T_TMP/client.json")"
    st=$(commit "$id" "$(sha "$SRC/$name")")
    assert_eq 200 "$st" "commit: $(head -c 300 "$BODY")"
    assert_file_same "$SRC/$name" "$DOCROOT/udp/$name"
    new_download "udp/$name"
    cp "$BODY" "$T_TMP/lossy.down.json"
    client --session "$T_TMP/lossy.down.json" --download "$T_TMP/lossy.out" --rate 30000000 --drop 0.05 --seed 8 ||
        fail "lossy download failed: $(cat "$T_TMP/client.err")"
    assert_file_same "$SRC/$name" "$T_TMP/lossy.out"
    [ "$(jq -r .dup "$T_TMP/client.json")" -le $((size / 10)) ] || fail "too many duplicates: $(cat "$T_TMP/client.json")"
}

# Chunks written over HTTP are reported by udpd's FEEDBACK: a client that ignores the session's
# missing list and offers the whole file sends (almost) none of them.
test_http_chunks_not_resent_over_udp() {
    local name=mixed.bin size=$((8 * CHUNK)) id st sent
    mkrand "$SRC/$name" "$size"
    id=$(new_session "udp/$name" "$size")
    for c in 0 2 4 6; do
        st=$(put_range "$id" "$SRC/$name" $((c * CHUNK)) $(((c + 1) * CHUNK - 1)))
        assert_eq 200 "$st" "PUT chunk $c"
    done
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"udp/$name\",\"size\":$size}")
    assert_eq 200 "$st" "resume the session"
    jq 'del(.missing)' "$BODY" >"$T_TMP/mixed.session.json"
    client --session "$T_TMP/mixed.session.json" --upload "$SRC/$name" --rate 50000000 ||
        fail "udp_client failed: $(cat "$T_TMP/client.err")"
    sent=$(jq -r .sent_new "$T_TMP/client.json")
    # Before the first FEEDBACK (one round trip on loopback) a little goes out blind.
    [ "$sent" -le $((4 * CHUNK + CHUNK / 2)) ] || fail "sent $sent bytes for 4 missing chunks"
    st=$(api GET "sessions/$id")
    assert_eq $((4 * CHUNK)) "$(jq -r .bytes_udp "$BODY")" "bytes_udp"
    assert_eq $((4 * CHUNK)) "$(jq -r .bytes_http "$BODY")" "bytes_http"
    st=$(commit "$id" "$(sha "$SRC/$name")")
    assert_eq 200 "$st" "commit: $(head -c 300 "$BODY")"
    assert_file_same "$SRC/$name" "$DOCROOT/udp/$name"
}

# udpd stopped mid-upload checkpoints and exits 0; the upload resumes from the checkpoint, over
# UDP again, after a restart of udpd; nothing is lost.
test_stop_mid_upload_checkpoints_and_resumes() {
    local name=resume.bin size=$((40 * CHUNK)) id st held cpid
    trap 'udpd_stop' EXIT
    # A udpd of this subshell, so that its exit status can be read.
    udpd_stop
    udpd_start
    mkrand "$SRC/$name" "$size"
    id=$(new_session "udp/$name" "$size" ',"mtime":1234567890,"mtime_ns":5')
    cp "$BODY" "$T_TMP/resume.session.json"
    # 10 MB/s: four seconds for 40 MiB; stop udpd after about one.
    "$UDP_CLIENT" --host 127.0.0.1 --port "$UDP_PORT" --session "$T_TMP/resume.session.json" --upload "$SRC/$name" \
        --rate 10000000 --policy fixed --timeout 3 >"$T_TMP/client1.json" 2>"$T_TMP/client1.err" &
    cpid=$!
    sleep 1.2
    udpd_stop
    assert_eq 0 "$UDPD_RC" "udpd exit status after SIGTERM"
    wait "$cpid"
    assert_eq 4 "$?" "the client's exit status when udpd is gone (connection lost)"
    grep -q "UD00034: signal 15: stopping" "$UDPD_LOG" || fail "no stop message"
    assert_file_exists "$DOCROOT/udp/.$name.fbpart.ckpt"
    # udpd's checkpoint records the client file's time too (flag 2, the 8 bytes after the header
    # and the 48-byte identity block).
    assert_eq 2 "$(od -An -tu4 -j36 -N4 "$DOCROOT/udp/.$name.fbpart.ckpt" | tr -d ' ')" "checkpoint flags"
    assert_eq 1234567890000000005 "$(od -An -tu8 -j88 -N8 "$DOCROOT/udp/.$name.fbpart.ckpt" | tr -d ' ')" \
        "checkpoint source mtime"
    st=$(api GET "sessions/$id")
    held=$(jq -r .received_bytes "$BODY")
    [ "$held" -ge $((5 * CHUNK)) ] && [ "$held" -lt "$size" ] || fail "received_bytes $held after one second"
    udpd_start
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"udp/$name\",\"size\":$size}")
    assert_eq 200 "$st" "resume"
    cp "$BODY" "$T_TMP/resume2.session.json"
    client --session "$T_TMP/resume2.session.json" --upload "$SRC/$name" --rate 200000000 ||
        fail "resumed upload failed: $(cat "$T_TMP/client.err")"
    [ "$(jq -r .sent_new "$T_TMP/client.json")" -le $((size - held)) ] || fail "resent what was held"
    st=$(commit "$id" "$(sha "$SRC/$name")")
    assert_eq 200 "$st" "commit: $(head -c 300 "$BODY")"
    assert_file_same "$SRC/$name" "$DOCROOT/udp/$name"
    assert_eq 1234567890.000000005 "$(stat -c %.9Y "$DOCROOT/udp/$name")" "mtime of the committed file"
    assert_no_file "$DOCROOT/udp/.$name.fbpart.ckpt"
}

# A client that dies mid-upload is replaced by a new one (another port, a new HELLO): the new
# association takes over once its first packet authenticates, and the upload completes.
test_new_client_takes_over() {
    local name=takeover.bin size=$((12 * CHUNK)) id st cpid
    mkrand "$SRC/$name" "$size"
    id=$(new_session "udp/$name" "$size")
    cp "$BODY" "$T_TMP/takeover.session.json"
    "$UDP_CLIENT" --host 127.0.0.1 --port "$UDP_PORT" --session "$T_TMP/takeover.session.json" --upload "$SRC/$name" \
        --rate 5000000 --policy fixed >/dev/null 2>&1 &
    cpid=$!
    sleep 0.8
    kill -KILL "$cpid"
    wait "$cpid" 2>/dev/null
    st=$(api POST sessions -H 'Content-Type: application/json' \
        --data-binary "{\"direction\":\"upload\",\"path\":\"udp/$name\",\"size\":$size}")
    assert_eq 200 "$st" "resume"
    cp "$BODY" "$T_TMP/takeover2.session.json"
    client --session "$T_TMP/takeover2.session.json" --upload "$SRC/$name" --rate 100000000 ||
        fail "second client failed: $(cat "$T_TMP/client.err")"
    grep -q "session $id: association with .* ended: replaced by a new association" "$UDPD_LOG" ||
        fail "the old association was not replaced"
    st=$(commit "$id" "$(sha "$SRC/$name")")
    assert_eq 200 "$st" "commit: $(head -c 300 "$BODY")"
    assert_file_same "$SRC/$name" "$DOCROOT/udp/$name"
}

# A cipher the configuration does not allow (none, by default) is replaced by an allowed one.
test_cipher_negotiated() {
    local name=cipher.bin
    mkrand "$SRC/$name" 100000
    new_session "udp/$name" 100000 >/dev/null
    cp "$BODY" "$T_TMP/cipher.session.json"
    client --session "$T_TMP/cipher.session.json" --upload "$SRC/$name" --cipher none ||
        fail "upload failed: $(cat "$T_TMP/client.err")"
    assert_eq 2 "$(jq -r .cipher "$T_TMP/client.json")" "cipher granted (AES-128-GCM)"
    client --session "$T_TMP/cipher.session.json" --upload "$SRC/$name" --cipher aes256 ||
        fail "upload failed: $(cat "$T_TMP/client.err")"
    assert_eq 4 "$(jq -r .cipher "$T_TMP/client.json")" "cipher granted (AES-256-GCM, allowed)"
}

# The slot's state wins: after a cancel over HTTPS udpd drops the session's datagrams.
test_cancelled_session_is_dropped() {
    local name=cancel.bin id st before after
    mkrand "$SRC/$name" 3000000
    id=$(new_session "udp/$name" 3000000)
    cp "$BODY" "$T_TMP/cancel.session.json"
    st=$(api DELETE "sessions/$id")
    assert_eq 204 "$st" "DELETE"
    before=$(udpd_counter unknown_session)
    client --session "$T_TMP/cancel.session.json" --upload "$SRC/$name" --timeout 2
    assert_eq 4 "$?" "client exit status (no answer)"
    after=$(udpd_counter unknown_session)
    [ "$after" -gt "$before" ] || fail "unknown_session did not grow ($before -> $after)"
}

test_heartbeat_and_reload() {
    local n
    kill -HUP "$(udpd_pid)"
    wait_for 5 grep -q "UD00033: configuration .* reloaded" "$UDPD_LOG" || fail "no reload message"
    kill -0 "$(udpd_pid)" || fail "udpd died on SIGHUP"
    n=$(grep -c "UD00016" "$UDPD_LOG")
    [ "$n" -ge 1 ] || fail "no listening line"
    if grep -q "key" <(grep -v "UD0005" "$UDPD_LOG" | grep -i '"key"\|key=[0-9a-f]'); then fail "a key in the log"; fi
}

# A reload applies to the associations after it: with only AES-256-GCM allowed now, a client asking
# for AES-128-GCM gets AES-256-GCM; with the file as it was, AES-128-GCM again.
reloads_more() {
    [ "$(grep -c "UD00033: configuration .* reloaded" "$UDPD_LOG")" -gt "$1" ]
}
test_reload_applies_to_new_associations() {
    local name=reload.bin xml=$DS_DIR/fallback.xml n
    mkrand "$SRC/$name" 100000
    new_session "udp/$name" 100000 >/dev/null
    cp "$BODY" "$T_TMP/reload.session.json"
    cp "$xml" "$T_TMP/fallback.xml.orig"
    sed -i 's#<docroots>#<transfer><allowed_ciphers>aes-256-gcm</allowed_ciphers></transfer>\n  <docroots>#' "$xml"
    n=$(grep -c "UD00033: configuration .* reloaded" "$UDPD_LOG")
    kill -HUP "$(udpd_pid)"
    wait_for 5 reloads_more "$n" || fail "no reload message"
    grep "UD00033" "$UDPD_LOG" | tail -n 1 | grep -q "ciphers aes-256-gcm," || fail "reload did not take the ciphers"
    client --session "$T_TMP/reload.session.json" --upload "$SRC/$name" --cipher aes128 ||
        fail "upload failed: $(cat "$T_TMP/client.err")"
    assert_eq 4 "$(jq -r .cipher "$T_TMP/client.json")" "cipher granted after the reload (AES-256-GCM)"
    cp "$T_TMP/fallback.xml.orig" "$xml"
    kill -HUP "$(udpd_pid)"
    wait_for 5 reloads_more "$((n + 1))" || fail "no second reload message"
    client --session "$T_TMP/reload.session.json" --upload "$SRC/$name" --cipher aes128 ||
        fail "upload failed: $(cat "$T_TMP/client.err")"
    assert_eq 2 "$(jq -r .cipher "$T_TMP/client.json")" "cipher granted after reloading the old file (AES-128-GCM)"
}

# Without GSO/GRO (as on kernels or devices without them) the same transfers work.
test_without_offload() {
    local name=plain.bin
    udpd_stop
    udpd_start --no-offload
    grep -q "GRO off, GSO off" "$UDPD_LOG" || fail "offload still on"
    mkrand "$SRC/$name" 3000000
    new_session "udp/$name" 3000000 >/dev/null
    cp "$BODY" "$T_TMP/plain.session.json"
    client --session "$T_TMP/plain.session.json" --upload "$SRC/$name" --no-offload --rate 100000000 ||
        fail "upload failed: $(cat "$T_TMP/client.err")"
    st=$(commit "$(jq -r .id "$T_TMP/plain.session.json")" "$(sha "$SRC/$name")")
    assert_eq 200 "$st" "commit"
    assert_file_same "$SRC/$name" "$DOCROOT/udp/$name"
    new_download "udp/$name"
    cp "$BODY" "$T_TMP/plain.down.json"
    client --session "$T_TMP/plain.down.json" --download "$T_TMP/plain.out" --no-offload --rate 100000000 ||
        fail "download failed: $(cat "$T_TMP/client.err")"
    assert_file_same "$SRC/$name" "$T_TMP/plain.out"
    udpd_stop
}

# Nothing went wrong on udpd's side in all of the above (checkpoints, writes), and no key leaked.
test_udpd_log_clean() {
    local bad
    kill -USR1 "$(udpd_pid)" 2>/dev/null
    sleep 0.3
    bad=$(grep -E "UD00060|UD00061|UD00022|UD00026|UD00028|UD00035" "$UDPD_LOG" | head -n 3)
    [ -z "$bad" ] || fail "udpd reported problems: $bad"
    grep -q "checkpoints=[1-9]" "$UDPD_LOG" || fail "no checkpoint was written"
    if grep -q "checkpoint_errors=[1-9]" "$UDPD_LOG"; then fail "checkpoint errors counted"; fi
}

ds_start_or_bail udp_transfer
T_CURRENT=setup
[ -x "$UDPD" ] && [ -x "$UDP_CLIENT" ] || fail "udpd or tests/udp/udp_client not built"
udpd_start
run_test upload_5m test_upload_5m
run_test upload_edge_sizes test_upload_edge_sizes
run_test complete_upload_checkpoint_deferred test_complete_upload_checkpoint_deferred
run_test download test_download
run_test download_end_vouched test_download_end_vouched
run_test download_end_not_vouched_for_another_file test_download_end_not_vouched_for_another_file
run_test download_zero_bytes test_download_zero_bytes
run_test lossy_path test_lossy_path
run_test receive_gathers_datagrams test_receive_gathers_datagrams
run_test download_sends_in_batches test_download_sends_in_batches
run_test http_chunks_not_resent_over_udp test_http_chunks_not_resent_over_udp
run_test new_client_takes_over test_new_client_takes_over
run_test cipher_negotiated test_cipher_negotiated
run_test cancelled_session_is_dropped test_cancelled_session_is_dropped
run_test heartbeat_and_reload test_heartbeat_and_reload
run_test reload_applies_to_new_associations test_reload_applies_to_new_associations
run_test stop_mid_upload_checkpoints_and_resumes test_stop_mid_upload_checkpoints_and_resumes
run_test without_offload test_without_offload
run_test udpd_log_clean test_udpd_log_clean
udpd_stop
finish
