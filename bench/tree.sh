#!/bin/bash
# tree.sh: trees of many files: fbcp (over UDP, and forced over HTTPS) against rsync -a over ssh,
# scp -r and one tar stream, on loopback and through the emulated WAN link (bench/linkem).
#
#   bench/tree.sh [--cases LIST] [--tools LIST] [--trees LIST] [--files SMALL,BIG]
#                 [--directions up[,down]] [--timeout S] [--cc cubic|bbr] [--port N]
#                 [--dir DIR] [--out FILE] [--keep]
#
# Trees (bench/make-tree, the same bytes every time): small = 10,000 files of 4 KiB, big = 1,000
# files of 1 MiB, ~20 files per directory nested up to 6 deep, names with spaces and UTF-8.
# Tools:
#   fbcp-udp    fbcp -r (default --fallback auto: UDP through udpd, started by Apache)
#   fbcp-https  fbcp -r --fallback force
#   rsync       rsync -a over ssh (a private sshd, key-only root login, on PORT+2)
#   scp         scp -r over the same sshd (OpenSSH's default: the SFTP protocol)
#   tar-ssh     tar c | ssh HOST 'tar x' (one TCP stream, unpacked on the server)
#   tar-curl    tar c | curl -T - to a WebDAV PUT (mod_dav) of the same Apache: one HTTPS
#               stream; the server stores the tar file, it does not unpack it
# Cases: loopback (127.0.0.1, no emulator) and RATEM-RTTms-LOSSpct[-CC], e.g. 100M-50ms-1pct or
# 100M-50ms-1pct-bbr: bench/linkem-up --rate RATE --delay RTT/2 --loss LOSS (loss in each
# direction), server in namespace fbs, clients in fbc. CC is the congestion control of both
# namespaces for every TCP tool (and fbcp-https), default --cc (cubic, as a stock Debian);
# loopback uses the machine's own (not changed).
# Defaults: --cases loopback,100M-50ms-0pct,100M-50ms-1pct --tools all --trees small,big
# --files 10000,1000 --directions up --timeout 300 --port 8843 --dir /dev/shm (server files and
# client trees on tmpfs: the disk is not measured) --out bench/results/tree.json. An existing
# --out file keeps its other cases; a case run again replaces its old entry. The file is
# rewritten after every run, so an interrupted run keeps what it measured.
# Every run: wall time (process start to exit), files/s, MB/s (10^6 B/s), load average and the
# CPU steal during the run, the relay's counters on the link; the copy is compared with the
# source (diff -r) after the clock stops. A run still going at --timeout is stopped and recorded
# as "timeout" with what had arrived. Needs root and a built tree (make, make bench/linkem).
set -uo pipefail

SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$SRCDIR/bench/lib.sh"

CASES=loopback,100M-50ms-0pct,100M-50ms-1pct
ALL_TOOLS="fbcp-udp fbcp-https rsync scp tar-ssh tar-curl"
TOOLS=all
TREES=small,big
FILES=10000,1000
DIRECTIONS=up
TIMEOUT=300
CC=cubic
PORT=8843
BASE_DIR=/dev/shm
OUT=$SRCDIR/bench/results/tree.json
KEEP=0
SMALL_SIZE=4096
BIG_SIZE=1048576

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "tree.sh: $*" >&2; exit 2; }
need() { [ "$#" -ge 2 ] || die "$1 needs a value"; }
while [ "$#" -gt 0 ]; do
    case "$1" in
    --cases) need "$@"; CASES=$2; shift 2 ;;
    --tools) need "$@"; TOOLS=$2; shift 2 ;;
    --trees) need "$@"; TREES=$2; shift 2 ;;
    --files) need "$@"; FILES=$2; shift 2 ;;
    --directions) need "$@"; DIRECTIONS=$2; shift 2 ;;
    --timeout) need "$@"; TIMEOUT=$2; shift 2 ;;
    --cc) need "$@"; CC=$2; shift 2 ;;
    --port) need "$@"; PORT=$2; shift 2 ;;
    --dir) need "$@"; BASE_DIR=$2; shift 2 ;;
    --out) need "$@"; OUT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done

# ---- options -------------------------------------------------------------------------------------
[ "$TOOLS" = all ] && TOOLS=${ALL_TOOLS// /,}
IFS=, read -r -a TOOL_LIST <<<"$TOOLS"
IFS=, read -r -a TREE_LIST <<<"$TREES"
IFS=, read -r -a CASE_LIST <<<"$CASES"
IFS=, read -r -a DIR_LIST <<<"$DIRECTIONS"
for t in "${TOOL_LIST[@]}"; do
    case " $ALL_TOOLS " in *" $t "*) ;; *) die "unknown tool '$t' (tools: $ALL_TOOLS)" ;; esac
done
for t in "${TREE_LIST[@]}"; do case $t in small | big) ;; *) die "unknown tree '$t' (small, big)" ;; esac; done
for d in "${DIR_LIST[@]}"; do case $d in up | down) ;; *) die "unknown direction '$d' (up, down)" ;; esac; done
[[ $FILES =~ ^([0-9]+),([0-9]+)$ ]] || die "--files takes SMALL,BIG (file counts), e.g. 10000,1000"
SMALL_FILES=${BASH_REMATCH[1]}
BIG_FILES=${BASH_REMATCH[2]}
if [ "$SMALL_FILES" -lt 1 ] || [ "$BIG_FILES" -lt 1 ]; then die "--files: at least one file per tree"; fi
if ! [[ $TIMEOUT =~ ^[0-9]+$ ]] || [ "$TIMEOUT" -lt 1 ] || [ "$TIMEOUT" -gt 3600 ]; then
    die "--timeout takes 1..3600 seconds"
fi
if ! [[ $PORT =~ ^[0-9]+$ ]] || [ "$PORT" -lt 1024 ] || [ "$PORT" -gt 65530 ]; then die "--port takes 1024..65530"; fi
case $CC in cubic | bbr | reno) ;; *) die "--cc takes cubic, bbr or reno" ;; esac
# parse_case NAME: sets C_KIND (loopback|link), C_RATE, C_RTT, C_LOSS, C_CC, or fails.
parse_case() {
    C_RATE=0 C_RTT=0 C_LOSS=0 C_CC=""
    if [ "$1" = loopback ]; then C_KIND=loopback; return 0; fi
    [[ $1 =~ ^([0-9]+(\.[0-9]+)?)M-([0-9]+(\.[0-9]+)?)ms-([0-9]+(\.[0-9]+)?)pct(-(cubic|bbr|reno))?$ ]] || return 1
    C_KIND=link C_RATE=${BASH_REMATCH[1]} C_RTT=${BASH_REMATCH[3]} C_LOSS=${BASH_REMATCH[5]}
    C_CC=${BASH_REMATCH[8]:-$CC}
}
for c in "${CASE_LIST[@]}"; do
    parse_case "$c" || die "unknown case '$c' (loopback or RATEM-RTTms-LOSSpct[-cubic|-bbr], e.g. 100M-50ms-1pct)"
done

# ---- prerequisites -------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "tree.sh: needs root (Apache as www-data, sshd, namespaces)" >&2; exit 1; }
FBCP_BUILT=$SRCDIR/client/fbcp
MODULE_BUILT=$SRCDIR/mod_fallback/.libs/mod_fallback.so
UDPD_BUILT=$SRCDIR/udpd/udpd
DEVSERVER=$SRCDIR/scripts/devserver
MAKE_TREE=$SRCDIR/bench/make-tree
APACHE_MODDIR=${APACHE_MODDIR:-/usr/lib/apache2/modules}
for f in "$FBCP_BUILT" "$UDPD_BUILT"; do [ -x "$f" ] || { echo "tree.sh: build first (make): no $f" >&2; exit 1; }; done
[ -f "$MODULE_BUILT" ] || { echo "tree.sh: build first (make): no $MODULE_BUILT" >&2; exit 1; }
for t in jq curl tar openssl python3 diff timeout ss; do
    command -v "$t" >/dev/null || { echo "tree.sh: $t not found" >&2; exit 1; }
done
# why_not TOOL: why a tool cannot run here (empty: it can).
why_not() {
    case $1 in
    rsync) command -v rsync >/dev/null || { echo "rsync not installed (apt-get install rsync)"; return; } ;;
    tar-curl) [ -f "$APACHE_MODDIR/mod_dav_fs.so" ] || { echo "no mod_dav_fs in $APACHE_MODDIR"; return; } ;;
    esac
    case $1 in
    rsync | scp | tar-ssh)
        [ -x /usr/sbin/sshd ] || { echo "no /usr/sbin/sshd (apt-get install openssh-server)"; return; }
        command -v ssh >/dev/null && command -v scp >/dev/null || echo "no ssh client"
        ;;
    esac
}
for c in "${CASE_LIST[@]}"; do
    parse_case "$c"
    if [ "$C_KIND" = link ]; then
        [ -x "$SRCDIR/bench/linkem" ] || make -C "$SRCDIR" bench/linkem >/dev/null ||
            { echo "tree.sh: bench/linkem does not build" >&2; exit 1; }
        command -v ip >/dev/null || { echo "tree.sh: no ip(8)" >&2; exit 1; }
    fi
done

HTTPS_PORT=$PORT
UDP_PORT=$((PORT + 1))
SSH_PORT=$((PORT + 2))
USER_NAME=bench
PASSWORD=bench-password-$RANDOM$RANDOM
CLIENT_NS=fbc
SERVER_NS=fbs
LINK_IP=198.18.0.2
LINKEM_STATE=${LINKEM_STATE:-/run/linkem}
SCRATCH=$(mktemp -d "$BASE_DIR/fb-tree.XXXXXX") || die "cannot make a directory in $BASE_DIR"
chmod 755 "$SCRATCH"
RUNS=$SCRATCH/runs.jsonl
: >"$RUNS"
LINK_UP=0
SSHD_PID=""
DS_DIR=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

cleanup() {
    stop_servers
    if [ "$LINK_UP" = 1 ]; then "$SRCDIR/bench/linkem-down" --quiet || true; fi
    if [ "$KEEP" = 1 ]; then echo "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
trap 'echo "tree.sh: interrupted" >&2; exit 130' INT TERM

# Snapshot the programs: a rebuild in the tree during the run must not change what is measured.
mkdir -p "$SCRATCH/bin"
cp "$FBCP_BUILT" "$UDPD_BUILT" "$MODULE_BUILT" "$SCRATCH/bin/"
FBCP=$SCRATCH/bin/fbcp
UDPD=$SCRATCH/bin/udpd
MODULE=$SCRATCH/bin/mod_fallback.so

# One certificate valid for both addresses (devserver keeps an existing one).
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:$LINK_IP" \
    -keyout "$SCRATCH/key.pem" -out "$SCRATCH/cert.pem" 2>/dev/null || die "openssl req failed"
CA=$SCRATCH/cert.pem

# ssh: a host key and a client key of our own; the system's sshd and its configuration are never
# touched (sshd runs from $SCRATCH/ssh/sshd_config, key-only root login on $SSH_PORT).
mkdir -p "$SCRATCH/ssh"
chmod 700 "$SCRATCH/ssh"
ssh-keygen -q -t ed25519 -N '' -f "$SCRATCH/ssh/host_ed25519" -C tree-bench-host
ssh-keygen -q -t ed25519 -N '' -f "$SCRATCH/ssh/client_ed25519" -C tree-bench-client
cp "$SCRATCH/ssh/client_ed25519.pub" "$SCRATCH/ssh/authorized_keys"
SSH_CFG=$SCRATCH/ssh/config

# ---- trees ---------------------------------------------------------------------------------------
tree_files() { if [ "$1" = small ]; then echo "$SMALL_FILES"; else echo "$BIG_FILES"; fi; }
tree_size() { if [ "$1" = small ]; then echo "$SMALL_SIZE"; else echo "$BIG_SIZE"; fi; }
mkdir -p "$SCRATCH/src"
for t in "${TREE_LIST[@]}"; do
    log "making tree $t: $(tree_files "$t") files of $(tree_size "$t") B"
    "$MAKE_TREE" "$SCRATCH/src/$t" --files "$(tree_files "$t")" --size "$(tree_size "$t")" >/dev/null ||
        die "make-tree failed"
done

# ---- measurement helpers -------------------------------------------------------------------------
# cpu_sample: "total idle steal" jiffies of all CPUs (/proc/stat).
cpu_sample() {
    awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $5 + $6, $9; exit }' /proc/stat
}
load1() { cut -d' ' -f1 /proc/loadavg; }

# link_snapshot FILE: the relay's statistics now (SIGUSR1, then the rewritten stats.json).
link_snapshot() {
    local pid before i
    : >"$1"
    [ "$LINK_UP" = 1 ] || return 0
    pid=$(head -n1 "$LINKEM_STATE/linkem.pid" 2>/dev/null) || return 0
    before=$(stat -c %Y.%y "$LINKEM_STATE/stats.json" 2>/dev/null || echo none)
    kill -USR1 "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 200; i++)); do
        if [ "$(stat -c %Y.%y "$LINKEM_STATE/stats.json" 2>/dev/null || echo none)" != "$before" ] &&
            jq -e . "$LINKEM_STATE/stats.json" >"$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.01
    done
    : >"$1"
}

# in_ns NS CMD...: CMD inside namespace NS (or here for an empty NS).
in_ns() {
    local ns=$1
    shift
    if [ -n "$ns" ]; then ip netns exec "$ns" "$@"; else "$@"; fi
}

# arrived DIR: "files bytes" of the regular files below DIR, leaving out hidden ones (fbcp's
# partial files, rsync's temporary files; the trees have no hidden names).
arrived() {
    if [ -e "$1" ]; then
        find "$1" -type f ! -name '.*' -printf '%s\n' | awk '{ s += $1; n++ } END { print n + 0, s + 0 }'
    else
        echo "0 0"
    fi
}

# ---- servers -------------------------------------------------------------------------------------
# start_servers KIND: Apache with mod_fallback and udpd (FallbackDaemon on), a WebDAV directory
# for tar-curl, and sshd; inside the server namespace for a link case.
start_servers() {
    local kind=$1 ip=127.0.0.1 ns="" conf xml i
    if [ "$kind" = link ]; then ip=$LINK_IP ns=$SERVER_NS; fi
    DS_DIR=$SCRATCH/ds
    DOCROOT=$DS_DIR/docroot
    PUTDIR=$SCRATCH/put
    SSH_DEST=$SCRATCH/sshdest
    mkdir -p "$DS_DIR" "$DOCROOT" "$PUTDIR" "$SCRATCH/davlock" "$SSH_DEST"
    cp "$SCRATCH/cert.pem" "$SCRATCH/key.pem" "$DS_DIR/"
    chmod 600 "$DS_DIR/key.pem"
    chown www-data: "$PUTDIR" "$SCRATCH/davlock"
    local common=(--dir "$DS_DIR" --https-port "$HTTPS_PORT" --udp-port "$UDP_PORT" --user "$USER_NAME"
        --password "$PASSWORD" --module "$MODULE" --quiet)
    "$DEVSERVER" conf "${common[@]}" >/dev/null || return 1
    xml=$DS_DIR/tree-fallback.xml
    sed "s#<bind_address>[^<]*</bind_address>#<bind_address>$ip</bind_address>#" "$DS_DIR/fallback.xml" >"$xml"
    chmod 644 "$xml"
    conf=$SCRATCH/tree-extra.conf
    cat >"$conf" <<EOF
# bench/tree.sh: udpd started and supervised by Apache; a WebDAV directory for tar | curl -T
FallbackDaemon on
FallbackDaemonPath $UDPD
LoadModule dav_module $APACHE_MODDIR/mod_dav.so
LoadModule dav_fs_module $APACHE_MODDIR/mod_dav_fs.so
DavLockDB "$SCRATCH/davlock/lock"
Alias /put "$PUTDIR"
<Directory "$PUTDIR">
    Dav On
    AuthType Basic
    AuthName put
    AuthBasicProvider file
    AuthUserFile $DS_DIR/htpasswd
    Require valid-user
    LimitRequestBody 0
</Directory>
EOF
    if [ "$kind" = link ]; then
        cat >>"$conf" <<EOF
Listen $ip:$HTTPS_PORT https
<VirtualHost $ip:$HTTPS_PORT>
    ServerName $ip
    SSLEngine on
    SSLCertificateFile "$DS_DIR/cert.pem"
    SSLCertificateKeyFile "$DS_DIR/key.pem"
    DocumentRoot "$DOCROOT"
    Alias /static "$DOCROOT"
    <Location /fallback>
        SetHandler fallback
        AuthType Basic
        AuthName fallback
        AuthBasicProvider file
        AuthUserFile $DS_DIR/htpasswd
        Require valid-user
        LimitRequestBody 0
    </Location>
</VirtualHost>
EOF
    fi
    in_ns "$ns" "$DEVSERVER" start "${common[@]}" --fallback-xml "$xml" --extra-conf "$conf" ||
        { echo "tree.sh: devserver did not start (see $DS_DIR/error.log)" >&2; return 1; }
    ORIGIN=https://$ip:$HTTPS_PORT
    URL=$ORIGIN/fallback
    # udpd (Apache's child) listens before the first transfer asks for it.
    for ((i = 0; i < 100; i++)); do
        [ -n "$(in_ns "$ns" ss -Hlun "sport = :$UDP_PORT" 2>/dev/null)" ] && break
        sleep 0.1
    done
    [ "$i" -lt 100 ] || log "warning: udpd does not listen on UDP port $UDP_PORT (fbcp-udp will fall back)"

    if [ -x /usr/sbin/sshd ]; then
        mkdir -p /run/sshd # sshd's privilege-separation directory (Debian's service makes it too)
        cat >"$SCRATCH/ssh/sshd_config" <<EOF
# bench/tree.sh: a private sshd; the system's is not touched
Port $SSH_PORT
ListenAddress $ip
HostKey $SCRATCH/ssh/host_ed25519
PidFile $SCRATCH/ssh/sshd.pid
AuthorizedKeysFile $SCRATCH/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
        local sshd=(/usr/sbin/sshd -D -f "$SCRATCH/ssh/sshd_config" -E "$SCRATCH/ssh/sshd.log")
        if [ -n "$ns" ]; then ip netns exec "$ns" "${sshd[@]}" & else "${sshd[@]}" & fi
        SSHD_PID=$! # ip netns exec execs sshd: the same process
        printf '[%s]:%s %s\n' "$ip" "$SSH_PORT" "$(cut -d' ' -f1-2 "$SCRATCH/ssh/host_ed25519.pub")" \
            >"$SCRATCH/ssh/known_hosts"
        cat >"$SSH_CFG" <<EOF
Host bench
    HostName $ip
    Port $SSH_PORT
    User root
    IdentityFile $SCRATCH/ssh/client_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $SCRATCH/ssh/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 20
EOF
        for ((i = 0; i < 50; i++)); do
            in_ns "$CLIENT_IN" ssh -F "$SSH_CFG" bench true 2>/dev/null && break
            sleep 0.2
        done
        [ "$i" -lt 50 ] || { echo "tree.sh: private sshd does not answer (see $SCRATCH/ssh/sshd.log)" >&2; return 1; }
    fi
}

stop_servers() {
    if [ -n "$SSHD_PID" ]; then
        kill "$SSHD_PID" 2>/dev/null
        wait "$SSHD_PID" 2>/dev/null
        SSHD_PID=""
    fi
    if [ -n "$DS_DIR" ]; then
        "$DEVSERVER" stop --dir "$DS_DIR" --clean --quiet >/dev/null 2>&1 || true
        rm -rf "$DS_DIR" "$SCRATCH/put" "$SCRATCH/sshdest" "$SCRATCH/davlock"
        DS_DIR=""
    fi
}

# link_in_use: another run holds the emulated link (its relay is alive).
link_in_use() {
    local pid
    pid=$(head -n1 "$LINKEM_STATE/linkem.pid" 2>/dev/null | tr -cd 0-9)
    [ -n "$pid" ] && tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$LINKEM_STATE/linkem.pid"
}

# set_cc CC: default congestion control of both namespaces. A namespace may only choose an
# algorithm in the global allowed list, so (as bench/wan does) the list is widened for the moment
# of the change and put back at once; the root namespace's default is never changed.
set_cc() {
    local key=net.ipv4.tcp_allowed_congestion_control allowed ns rc=0
    allowed=$(sysctl -n "$key")
    case " $allowed " in *" $1 "*) ;; *) sysctl -q -w "$key=$allowed $1" || return 1 ;; esac
    for ns in "$CLIENT_NS" "$SERVER_NS"; do
        ip netns exec "$ns" sysctl -q -w "net.ipv4.tcp_congestion_control=$1" || rc=1
    done
    sysctl -q -w "$key=$allowed" || true
    return $rc
}

link_up() {
    local i last_cpu args
    for ((i = 0; i < 60; i++)); do
        link_in_use || break
        [ "$i" = 0 ] && log "the emulated link is in use by another run; waiting (up to 10 min)"
        sleep 10
    done
    link_in_use && { echo "tree.sh: the emulated link is still in use by another run" >&2; return 1; }
    args=(--rate "$C_RATE" --delay "$(awk -v r="$C_RTT" 'BEGIN { printf "%g", r / 2 }')" --seed 1)
    awk -v l="$C_LOSS" 'BEGIN { exit !(l > 0) }' && args+=(--loss "$C_LOSS")
    # The relay's threads on the last CPU, as bench/wan does by default (docs/linkem.md, Timing).
    last_cpu=$(($(nproc) - 1))
    [ "$last_cpu" -ge 1 ] && args+=(--cpu-up "$last_cpu" --cpu-down "$last_cpu")
    # Without ping(8) linkem-up cannot check the link; the private sshd's first login below does.
    command -v ping >/dev/null || args+=(--no-ping)
    "$SRCDIR/bench/linkem-up" "${args[@]}" >"$SCRATCH/linkem-up.out" 2>&1 ||
        { cat "$SCRATCH/linkem-up.out" >&2; return 1; }
    LINK_UP=1
    for ns in "$CLIENT_NS" "$SERVER_NS"; do
        # a fresh TCP state for every connection: no ssthresh cached from the previous run
        ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_no_metrics_save=1
    done
    set_cc "$C_CC" || { echo "tree.sh: cannot set congestion control $C_CC in the namespaces" >&2; return 1; }
}

link_down() {
    [ "$LINK_UP" = 1 ] || return 0
    "$SRCDIR/bench/linkem-down" --quiet --save-stats "$SCRATCH/link-$1.json" || true
    LINK_UP=0
}

# ---- one run -------------------------------------------------------------------------------------
N=0
# command_for TOOL DIRECTION TREE WORK: prints nothing; sets CMD (argv for bash -c), DEST (where
# the tree lands) and CHECK (the directory to compare with the source after the run).
command_for() {
    local tool=$1 dir=$2 tree=$3 work=$4 src_parent=$SCRATCH/src ssh="ssh -F $SSH_CFG"
    local fbcp_base="$FBCP -r --json -q --cacert $CA -u $USER_NAME:$PASSWORD"
    local srv_src=$DOCROOT/src
    case $tool in fbcp-https) fbcp_base="$fbcp_base --fallback force" ;; esac
    if [ "$dir" = up ]; then
        case $tool in
        fbcp-udp | fbcp-https)
            DEST=$DOCROOT/$work
            CMD=("$fbcp_base \"\$1\" \"\$2\" >\"\$3\"" _ "$src_parent/$tree" "$URL/$work/" "$SCRATCH/fbcp.json") ;;
        rsync)
            DEST=$SSH_DEST/$work
            mkdir -p "$DEST"
            CMD=("rsync -a -e \"$ssh\" \"\$1\" \"bench:\$2/\"" _ "$src_parent/$tree" "$DEST") ;;
        scp)
            DEST=$SSH_DEST/$work
            mkdir -p "$DEST"
            CMD=("scp -q -r -F $SSH_CFG \"\$1\" \"bench:\$2/\"" _ "$src_parent/$tree" "$DEST") ;;
        tar-ssh)
            DEST=$SSH_DEST/$work
            mkdir -p "$DEST"
            CMD=("tar cf - -C \"\$1\" \"\$2\" | $ssh bench \"tar xf - -C '\$3'\"" _ "$src_parent" "$tree" "$DEST") ;;
        tar-curl)
            DEST=$SCRATCH/untar-$work
            CMD=("tar cf - -C \"\$1\" \"\$2\" | curl -sS --fail --cacert $CA -u $USER_NAME:$PASSWORD -T - \"\$3\" -o /dev/null"
                _ "$src_parent" "$tree" "$ORIGIN/put/$work.tar") ;;
        esac
        CHECK=$DEST/$tree
    else
        DEST=$SCRATCH/client/$work
        mkdir -p "$DEST"
        CHECK=$DEST/$tree
        case $tool in
        fbcp-udp | fbcp-https)
            CMD=("$fbcp_base \"\$1\" \"\$2/\" >\"\$3\"" _ "$URL/src/$tree" "$DEST" "$SCRATCH/fbcp.json") ;;
        rsync) CMD=("rsync -a -e \"$ssh\" \"bench:\$1\" \"\$2/\"" _ "$srv_src/$tree" "$DEST") ;;
        scp) CMD=("scp -q -r -F $SSH_CFG \"bench:\$1\" \"\$2/\"" _ "$srv_src/$tree" "$DEST") ;;
        tar-ssh) CMD=("$ssh bench \"tar cf - -C '\$1' '\$2'\" | tar xf - -C \"\$3\"" _ "$srv_src" "$tree" "$DEST") ;;
        tar-curl)
            CMD=("curl -sS --fail --cacert $CA \"\$1\" | tar xf - -C \"\$2\"" _ "$ORIGIN/static/src-$tree.tar" "$DEST") ;;
        esac
    fi
}

# run_one CASE TOOL DIRECTION TREE
run_one() {
    local case=$1 tool=$2 dir=$3 tree=$4 why work rc t0 t1 c0 c1 l0 l1 wall status reason=""
    local files bytes got_files got_bytes verified=false note="" fbcp_json='{}' link_json=null
    files=$(tree_files "$tree")
    bytes=$((files * $(tree_size "$tree")))
    why=$(why_not "$tool")
    if [ -n "$why" ]; then
        log "  $tool $dir $tree: not available: $why"
        jq -n -c --arg case "$case" --arg tool "$tool" --arg dir "$dir" --arg tree "$tree" --arg why "$why" \
            '{case: $case, tool: $tool, direction: $dir, tree: $tree, status: "not_available", reason: $why}' >>"$RUNS"
        return 0
    fi
    N=$((N + 1))
    work=run-$N
    command_for "$tool" "$dir" "$tree" "$work"
    rm -f "$SCRATCH/fbcp.json"
    sleep 0.5 # the previous run's last packets and FINs cross the link
    [ "$LINK_UP" = 1 ] && in_ns "$CLIENT_NS" ip tcp_metrics flush 2>/dev/null && in_ns "$SERVER_NS" ip tcp_metrics flush 2>/dev/null
    link_snapshot "$SCRATCH/link-a.json"
    l0=$(load1)
    c0=$(cpu_sample)
    t0=$(date +%s.%N)
    in_ns "$CLIENT_IN" timeout -k 10 "$TIMEOUT" bash -c "${CMD[@]}" 2>"$SCRATCH/run.err"
    rc=$?
    t1=$(date +%s.%N)
    c1=$(cpu_sample)
    l1=$(load1)
    link_snapshot "$SCRATCH/link-b.json"
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    # tar-curl's upload arrives as one tar file: unpack it (after the clock) to compare
    if [ "$tool" = tar-curl ] && [ "$dir" = up ]; then
        mkdir -p "$DEST"
        [ -f "$PUTDIR/$work.tar" ] && tar xf "$PUTDIR/$work.tar" -C "$DEST" 2>/dev/null
    fi
    read -r got_files got_bytes < <(arrived "$CHECK")
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        status=timeout
        reason="stopped at the $TIMEOUT s time limit"
    elif [ "$rc" != 0 ]; then
        status=failed
        reason="exit $rc: $(tail -n 3 "$SCRATCH/run.err" | tr '\n' ' ' | cut -c1-300)"
    else
        status=ok
    fi
    if [ "$status" = ok ]; then
        if diff -rq "$SCRATCH/src/$tree" "$CHECK" >"$SCRATCH/diff.out" 2>&1; then
            verified=true
        else
            status=failed
            reason="the copy differs from the source: $(head -n 2 "$SCRATCH/diff.out" | tr '\n' ' ' | cut -c1-300)"
        fi
    fi
    if [ -s "$SCRATCH/fbcp.json" ]; then
        fbcp_json=$(jq -s -c '(map(select(.event == "summary")) | last // {}) as $s
            | { files: $s.files, done: $s.done, skipped: $s.skipped, failed: $s.failed, seconds: $s.seconds,
                bytes_udp: $s.bytes_udp, bytes_http: $s.bytes_http, bytes_retransmitted: $s.bytes_retransmitted,
                exit_code: $s.exit_code }' "$SCRATCH/fbcp.json" 2>/dev/null || echo '{}')
        if [ "$tool" = fbcp-udp ] && [ "$(jq -r '.bytes_http // 0' <<<"$fbcp_json")" != 0 ]; then
            note="part of the data went over HTTPS (fbcp's automatic fallback)"
        fi
    fi
    if [ -s "$SCRATCH/link-a.json" ] && [ -s "$SCRATCH/link-b.json" ]; then
        local d=up
        [ "$dir" = down ] && d=down
        link_json=$(jq -n -c --arg d "$d" --slurpfile a "$SCRATCH/link-a.json" --slurpfile b "$SCRATCH/link-b.json" '
            ($a[0][$d]) as $x | ($b[0][$d]) as $y
            | reduce ("pkts_in", "bytes_in", "loss_pkts", "queue_drop_pkts", "pkts_out", "late_1ms_pkts",
                      "ring_drop_pkts") as $k ({}; .[$k] = (($y[$k] // 0) - ($x[$k] // 0)))
            | .max_late_ms_since_start = $y.max_late_ms')
    fi
    local cc cmd_text=${CMD[0]} k
    for ((k = ${#CMD[@]} - 1; k >= 2; k--)); do cmd_text=${cmd_text//\$$((k - 1))/${CMD[k]}}; done
    cmd_text=${cmd_text//$PASSWORD/PASSWORD}
    cmd_text=${cmd_text//$SCRATCH/\$W}
    if [ "$LINK_UP" = 1 ]; then
        cc=$(ip netns exec "$CLIENT_NS" sysctl -n net.ipv4.tcp_congestion_control)
    else
        cc=$(sysctl -n net.ipv4.tcp_congestion_control)
    fi
    jq -n -c --arg case "$case" --arg tool "$tool" --arg dir "$dir" --arg tree "$tree" --arg status "$status" \
        --arg reason "$reason" --arg note "$note" --arg cc "$cc" --argjson files "$files" --argjson bytes "$bytes" \
        --argjson wall "$wall" --argjson gf "$got_files" --argjson gb "$got_bytes" --argjson verified "$verified" \
        --argjson limit "$TIMEOUT" --argjson rc "$rc" --argjson l0 "$l0" --argjson l1 "$l1" \
        --arg c0 "$c0" --arg c1 "$c1" --argjson fbcp "$fbcp_json" --argjson link "$link_json" \
        --arg cmd "$cmd_text" '
        ($c0 | split(" ") | map(tonumber)) as $a | ($c1 | split(" ") | map(tonumber)) as $b
        | (($b[0] - $a[0]) | if . > 0 then . else 1 end) as $tot
        | (if $status == "ok" then $wall else $limit end) as $span
        | {case: $case, tool: $tool, direction: $dir, tree: $tree, status: $status, exit_code: $rc,
           files: $files, bytes: $bytes, wall_s: $wall, time_limit_s: $limit,
           files_arrived: $gf, bytes_arrived: $gb, verified: $verified,
           files_per_s: ((if $status == "ok" then $files else $gf end) / $span * 10 | round / 10),
           mb_per_s: ((if $status == "ok" then $bytes else $gb end) / $span / 1e6 * 100 | round / 100),
           tcp_cc: (if ($tool | startswith("fbcp-udp")) then null else $cc end),
           loadavg_before: $l0, loadavg_after: $l1,
           cpu_steal_share: (($b[2] - $a[2]) / $tot * 1000 | round / 1000),
           cpu_busy_share: (($tot - ($b[1] - $a[1]) - ($b[2] - $a[2])) / $tot * 1000 | round / 1000),
           command: $cmd}
        + (if $reason != "" then {reason: $reason} else {} end)
        + (if $note != "" then {note: $note} else {} end)
        + (if $fbcp != {} then {fbcp: $fbcp} else {} end)
        + (if $link != null then {link: $link} else {} end)' >>"$RUNS"
    log "$(jq -r -s 'last | "  \(.tool) \(.direction) \(.tree): \(.status) \(.wall_s) s, \(.files_per_s) files/s, \(.mb_per_s) MB/s (load \(.loadavg_before), steal \(.cpu_steal_share * 100) %)\(if .reason then " - " + .reason else "" end)"' "$RUNS")"
    # clean up what arrived (not timed)
    rm -rf "$DEST" "$PUTDIR/$work.tar" "$SCRATCH/untar-$work"
    write_out
}

# ---- the result file -----------------------------------------------------------------------------
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
COMMIT=$(git -C "$SRCDIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
versions_json() {
    jq -n -c --arg fbcp "$("$FBCP" --version 2>&1 | head -n1)" \
        --arg rsync "$(rsync --version 2>/dev/null | head -n1)" --arg ssh "$(ssh -V 2>&1)" \
        --arg tar "$(tar --version | head -n1)" --arg curl "$(curl --version | head -n1)" \
        --arg apache "$(/usr/sbin/apache2 -v 2>/dev/null | head -n1)" --arg kernel "$(uname -r)" \
        --arg cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)" --argjson nproc "$(nproc)" \
        '{fbcp: $fbcp, rsync: $rsync, openssh: $ssh, tar: $tar, curl: $curl, apache: $apache, kernel: $kernel,
          cpu: $cpu, cpus: $nproc}'
}
VERSIONS=$(versions_json)
CASE_META=$SCRATCH/cases.jsonl
: >"$CASE_META"

# write_out: OUT = the cases of an earlier OUT not run now, plus this run's cases with their runs
# and the goals of issue 19 evaluated.
write_out() {
    local old='{"cases": []}' tmp
    if [ -s "$OUT" ] && jq -e '.benchmark == "tree"' "$OUT" >/dev/null 2>&1; then old=$(cat "$OUT"); fi
    mkdir -p "$(dirname "$OUT")"
    tmp=$OUT.tmp.$$
    jq -n --argjson old "$old" --slurpfile meta "$CASE_META" --slurpfile runs "$RUNS" \
        --argjson versions "$VERSIONS" --arg started "$STARTED" --arg commit "$COMMIT" \
        --arg finished "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --argjson timeout "$TIMEOUT" \
        --argjson sf "$SMALL_FILES" --argjson bf "$BIG_FILES" --argjson ss "$SMALL_SIZE" --argjson bs "$BIG_SIZE" '
        def run_of($rs; $t; $d; $tr): [$rs[] | select(.tool == $t and .direction == $d and .tree == $tr)] | last;
        def goals($c; $rs):
          [ $rs[] | select((.tool | startswith("fbcp")) and .tree == "small" and .status != "not_available")
            | . as $r
            | if $c.kind == "loopback" then
                {tool: .tool, direction: .direction, goal: "at least 2,000 small files per second on loopback",
                 files_per_s: .files_per_s, met: (.status == "ok" and .files_per_s >= 2000)}
              else
                (1.5 * .bytes * 8 / ($c.rate_mbit * 1e6) + 1) as $lim
                | (run_of($rs; "rsync"; .direction; "small")) as $rsync
                | (run_of($rs; "scp"; .direction; "small")) as $scp
                | def ahead($o): if $o == null or $o.status == "not_available" then null
                                 else ($r.status == "ok" and ($o.status != "ok" or $r.wall_s < $o.wall_s)) end;
                {tool: .tool, direction: .direction,
                 goal: "small tree within 1.5 x its bytes at the link rate + 1 s, ahead of rsync and scp",
                 limit_s: ($lim * 100 | round / 100), wall_s: .wall_s,
                 within_limit: (.status == "ok" and .wall_s <= $lim),
                 ahead_of_rsync: ahead($rsync), ahead_of_scp: ahead($scp)}
                | .met = (.within_limit and .ahead_of_rsync != false and .ahead_of_scp != false)
              end ];
        ($meta | map(.case)) as $now
        | {benchmark: "tree", version: 1, started: $started, finished: $finished, commit: $commit,
           host: $versions,
           trees: {small: {files: $sf, file_bytes: $ss}, big: {files: $bf, file_bytes: $bs}},
           time_limit_s: $timeout,
           cases: ([$old.cases[] | select(.case as $c | $now | index($c) | not)]
                   + [$meta[] | . as $c | ($c + {runs: [$runs[] | select(.case == $c.case)]})
                      | . + {goals: goals(.; .runs)}])}' >"$tmp" && mv "$tmp" "$OUT"
}

# ---- main ----------------------------------------------------------------------------------------
for case in "${CASE_LIST[@]}"; do
    parse_case "$case"
    log "case $case"
    CLIENT_IN=""
    if [ "$C_KIND" = link ]; then
        link_up || { echo "tree.sh: case $case: the link did not come up" >&2; continue; }
        CLIENT_IN=$CLIENT_NS
        log "link up: $C_RATE Mbit/s, RTT $C_RTT ms, loss $C_LOSS % each way, TCP congestion control $C_CC"
    fi
    if ! start_servers "$C_KIND"; then
        stop_servers
        link_down "$case"
        continue
    fi
    jq -n -c --arg case "$case" --arg kind "$C_KIND" --argjson rate "$C_RATE" --argjson rtt "$C_RTT" \
        --argjson loss "$C_LOSS" --arg cc "${C_CC:-$(sysctl -n net.ipv4.tcp_congestion_control)}" \
        --arg started "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg dir "$BASE_DIR" \
        '{case: $case, kind: $kind, started: $started, files_on: $dir, tcp_cc: $cc}
         + (if $kind == "link" then {rate_mbit: $rate, rtt_ms: $rtt, loss_pct: $loss} else {} end)' >>"$CASE_META"
    for dir in "${DIR_LIST[@]}"; do
        if [ "$dir" = down ]; then
            # the server's copy of each tree (and a tar of it for tar-curl), made before the clock
            mkdir -p "$DOCROOT/src"
            for tree in "${TREE_LIST[@]}"; do
                cp -a "$SCRATCH/src/$tree" "$DOCROOT/src/"
                tar cf "$DOCROOT/src-$tree.tar" -C "$SCRATCH/src" "$tree"
            done
            chown -R www-data: "$DOCROOT"
        fi
        for tree in "${TREE_LIST[@]}"; do
            for tool in "${TOOL_LIST[@]}"; do
                run_one "$case" "$tool" "$dir" "$tree"
            done
        done
    done
    stop_servers
    link_down "$case"
done
write_out
echo
printf '%-22s %-4s %-5s %-10s %-8s %9s %9s %8s %6s %6s %s\n' case dir tree tool status wall_s files/s MB/s load steal cc
jq -r '.cases[] | .case as $c | .runs[] | select(.status != "not_available")
    | [$c, .direction, .tree, .tool, .status, .wall_s, .files_per_s, .mb_per_s, .loadavg_before,
       ((.cpu_steal_share * 1000 | round) / 10 | tostring) + "%", (.tcp_cc // "-")] | @tsv' "$OUT" |
    awk -F'\t' '{ printf "%-22s %-4s %-5s %-10s %-8s %9s %9s %8s %6s %6s %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }'
echo
jq -r '.cases[] | .case as $c | .goals[] | "goal \($c) \(.direction) \(.tool): \(if .met then "met" else "NOT met" end)"
    + (if .limit_s then " (wall \(.wall_s) s, limit \(.limit_s) s, ahead of rsync: \(.ahead_of_rsync), of scp: \(.ahead_of_scp))"
       else " (\(.files_per_s) files/s)" end)' "$OUT"
echo "results: $OUT"
