#!/bin/bash
# digest_cost.sh: what the SHA-256 digests cost an HTTPS upload on this machine.
# Every fbcp upload is hashed at both ends: fbcp hashes the file as it sends it and gives the
# digest at commit; the module hashes what it wrote and refuses a commit that does not match.
# To see what that costs, this script builds a scratch copy of the tree with
# -DFB_BENCH_UNSAFE_NO_DIGESTS (both ends then hash nothing and agree on the digest of no bytes,
# so nothing is verified; that build lives in a temporary directory and is never installed),
# starts one private Apache (scripts/devserver) with each build on 127.0.0.1, and runs ROUNDS
# rounds of, in turn:
#   a. curl download through the module's files/   (the reference rate of bench/https_loopback.sh)
#   b. fbcp upload, this tree's build                (digests at both ends)
#   c. fbcp upload, the scratch build                (no digests; what arrived is then compared
#                                                     with the source by sha256sum, untimed)
# It prints the medians (MB/s, 10^6 bytes/s) and the CPU seconds per GiB the whole machine spent
# on each (client and server share these cores), the uploads' ratios to (a), the rate an upload
# would reach keeping every core busy at b's cost, SHA-256's and AES-256-GCM's speed on one core
# (openssl speed) and the CPU steal during the rounds, and writes
# bench/results/digest_cost.json (or --out FILE).
#
#   bench/digest_cost.sh [--size MiB] [--rounds N] [--connections N] [--port N] [--out FILE]
#
# Files live on /dev/shm (the disk is not measured). Needs a built tree (make), root or the
# www-data user for Apache, and the build tools of scripts/install-deps.
set -euo pipefail

SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$SRCDIR/bench/lib.sh"
SIZE_MIB=1024
ROUNDS=5
CONNECTIONS=4
PORT=8643
OUT=$SRCDIR/bench/results/digest_cost.json
while [ "$#" -gt 0 ]; do
    case "$1" in
    --size) SIZE_MIB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "digest_cost: unknown option $1" >&2; exit 2 ;;
    esac
done
for v in "$SIZE_MIB" "$ROUNDS" "$CONNECTIONS" "$PORT"; do
    [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "digest_cost: not a positive number: $v" >&2; exit 2; }
done
[ "$PORT" -lt 65535 ] || { echo "digest_cost: --port must leave room for PORT+1" >&2; exit 2; }

FBCP=$SRCDIR/client/fbcp
MODULE=$SRCDIR/mod_fallback/.libs/mod_fallback.so
DEVSERVER=$SRCDIR/scripts/devserver
if [ ! -x "$FBCP" ] || [ ! -f "$MODULE" ]; then echo "digest_cost: build first (make)" >&2; exit 1; fi
for tool in curl jq awk sha256sum openssl git tar; do
    command -v "$tool" >/dev/null || { echo "digest_cost: $tool not found" >&2; exit 1; }
done

SCRATCH=$(mktemp -d /dev/shm/fb-digest-cost.XXXXXX)
chmod 755 "$SCRATCH"
USER_NAME=bench
PASSWORD=bench-password-$RANDOM$RANDOM
cleanup() {
    local d
    for d in with without; do
        "$DEVSERVER" stop --dir "$SCRATCH/$d" --clean --quiet >/dev/null 2>&1 || true
    done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

# The scratch build: this tree's sources (tracked and new files, no build products), built
# with the digests taken out. Only the client and the module are needed.
echo "building a scratch copy without digests (-DFB_BENCH_UNSAFE_NO_DIGESTS)"
mkdir -p "$SCRATCH/src"
(cd "$SRCDIR" && git ls-files -z --cached --others --exclude-standard |
    tar --null --no-recursion --ignore-failed-read -T - -cf - 2>/dev/null) | tar xf - -C "$SCRATCH/src"
if ! (cd "$SCRATCH/src" && ./autogen.sh && ./configure CPPFLAGS=-DFB_BENCH_UNSAFE_NO_DIGESTS &&
    make -j"$(nproc)" client/fbcp mod_fallback/mod_fallback.la) >"$SCRATCH/build.log" 2>&1; then
    tail -n 20 "$SCRATCH/build.log" >&2
    echo "digest_cost: the scratch build failed" >&2
    exit 1
fi
# The switch must have reached both ends: each prints a #warning when compiled with it.
for f in lib/fb_digest.c client/fbcp_upload_hash.c; do
    grep -q "$f:[0-9:]* warning: #warning \"FB_BENCH_UNSAFE_NO_DIGESTS" "$SCRATCH/build.log" ||
        { echo "digest_cost: the scratch build did not take the switch in $f" >&2; exit 1; }
done

# Snapshot both builds, so a rebuild in the tree during the run changes nothing measured.
mkdir -p "$SCRATCH/bin"
cp "$FBCP" "$SCRATCH/bin/fbcp-with"
cp "$MODULE" "$SCRATCH/bin/mod-with.so"
cp "$SCRATCH/src/client/fbcp" "$SCRATCH/bin/fbcp-without"
cp "$SCRATCH/src/mod_fallback/.libs/mod_fallback.so" "$SCRATCH/bin/mod-without.so"
rm -rf "$SCRATCH/src"

declare -A PORT_OF=([with]=$PORT [without]=$((PORT + 1)))
for d in with without; do
    "$DEVSERVER" start --dir "$SCRATCH/$d" --https-port "${PORT_OF[$d]}" --udp-port "${PORT_OF[$d]}" \
        --user "$USER_NAME" --password "$PASSWORD" --module "$SCRATCH/bin/mod-$d.so" --quiet >/dev/null
done

SIZE=$((SIZE_MIB * 1024 * 1024))
NAME=bench-$SIZE_MIB.bin
echo "preparing a $SIZE_MIB MiB random file"
head -c "$SIZE" /dev/urandom >"$SCRATCH/$NAME"
cp "$SCRATCH/$NAME" "$SCRATCH/with/docroot/$NAME"
touch -d '-1 hour' "$SCRATCH/with/docroot/$NAME" # settled: a strong ETag, as any file at rest
if [ "$(id -u)" = 0 ] && getent passwd www-data >/dev/null; then
    chown -R www-data: "$SCRATCH/with/docroot" "$SCRATCH/without/docroot"
fi
SHA=$(sha256sum "$SCRATCH/$NAME" | cut -d' ' -f1)

warm_guest_memory

# MB/s of one curl download through files/ (to /dev/null, like bench/https_loopback.sh).
download_rate() {
    local out
    out=$(curl -sS --fail --cacert "$SCRATCH/with/cert.pem" -u "$USER_NAME:$PASSWORD" -o /dev/null \
        -w '%{size_download} %{speed_download}' "https://127.0.0.1:$PORT/fallback/files/$NAME")
    [ "${out%% *}" = "$SIZE" ] || { echo "digest_cost: the download gave ${out%% *} bytes" >&2; exit 1; }
    awk -v s="${out#* }" 'BEGIN { printf "%.1f\n", s / 1e6 }'
}

# upload_rate with|without ROUND: MB/s of one fbcp upload, from its --json done event. The file
# stays for check_upload, which runs after the CPU count of the transfer stopped.
upload_rate() {
    local d=$1 target=up-$2.bin json=$SCRATCH/fbcp-$1.json secs
    if ! "$SCRATCH/bin/fbcp-$d" --cacert "$SCRATCH/$d/cert.pem" -u "$USER_NAME:$PASSWORD" --json -q \
        --connections "$CONNECTIONS" "$SCRATCH/$NAME" "https://127.0.0.1:${PORT_OF[$d]}/fallback/$target" \
        >"$json" 2>"$SCRATCH/fbcp.err"; then
        echo "digest_cost: fbcp ($d digests) failed: $(tail -n 2 "$SCRATCH/fbcp.err")" >&2
        exit 1
    fi
    secs=$(jq -r 'select(.event == "done") | .seconds' "$json" | head -n1)
    mbps "$SIZE" "$secs"
}

# check_upload with|without ROUND: with digests, fbcp reports the digest the server accepted;
# without, the bytes that arrived are compared here, so a fast but wrong transfer cannot count.
check_upload() {
    local d=$1 target=$SCRATCH/$1/docroot/up-$2.bin
    if [ "$d" = with ]; then
        [ "$(jq -r 'select(.event == "done") | .sha256' "$SCRATCH/fbcp-$d.json" | head -n1)" = "$SHA" ] ||
            { echo "digest_cost: fbcp moved different bytes" >&2; exit 1; }
    else
        [ "$(sha256sum "$target" | cut -d' ' -f1)" = "$SHA" ] ||
            { echo "digest_cost: the upload without digests arrived different" >&2; exit 1; }
    fi
    rm -f "$target"
}

# /proc/stat, all CPUs, in ticks: busy (user, nice, system, irq, softirq), steal, total
cpu_stat() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $2 + $3 + $4 + $7 + $8, $9, t; exit }' /proc/stat; }
HZ=$(getconf CLK_TCK)

# measure KIND COMMAND...: COMMAND prints a rate (MB/s); keeps it in RATES[KIND] and, in
# CPU[KIND], the CPU seconds per GiB the whole machine spent meanwhile (both ends, every
# process: client and server share these cores).
declare -A RATES=() CPU=()
measure() {
    local kind=$1 b0 b1 v
    shift
    read -r b0 _ < <(cpu_stat)
    v=$("$@")
    read -r b1 _ < <(cpu_stat)
    RATES[$kind]+=" $v"
    CPU[$kind]+=" $(awk -v t="$((b1 - b0))" -v hz="$HZ" -v b="$SIZE" 'BEGIN { printf "%.2f\n", t / hz / (b / 1073741824) }')"
}
last() { local a; read -ra a <<<"$1"; echo "${a[-1]}"; }

KINDS=(down with without)
echo "measuring ($ROUNDS rounds, $SIZE_MIB MiB, $CONNECTIONS connections, 127.0.0.1 on $(nproc) cores)"
read -r _ steal0 total0 < <(cpu_stat)
for ((r = 1; r <= ROUNDS; r++)); do
    measure down download_rate
    measure with upload_rate with "$r"
    check_upload with "$r"
    measure without upload_rate without "$r"
    check_upload without "$r"
    printf '  round %d: download %7s (%s CPU-s/GiB)   upload %7s (%s)   without digests %7s (%s) MB/s\n' "$r" \
        "$(last "${RATES[down]}")" "$(last "${CPU[down]}")" "$(last "${RATES[with]}")" "$(last "${CPU[with]}")" \
        "$(last "${RATES[without]}")" "$(last "${CPU[without]}")"
done
read -r _ steal1 total1 < <(cpu_stat)
STEAL=$(awk -v s="$((steal1 - steal0))" -v t="$((total1 - total0))" 'BEGIN { printf "%.1f\n", (t > 0) ? 100 * s / t : 0 }')

declare -A M=() MC=()
for k in "${KINDS[@]}"; do
    M[$k]=$(median_of "${RATES[$k]}")
    MC[$k]=$(median_of "${CPU[$k]}")
done
R_WITH=$(ratio "${M[with]}" "${M[down]}")
R_WITHOUT=$(ratio "${M[without]}" "${M[down]}")
# The most an upload could reach here if it kept every core busy all the time: the cores'
# seconds divided by its CPU seconds per GiB.
CORES=$(nproc)
CEILING=$(awk -v c="$CORES" -v s="${MC[with]}" 'BEGIN { if (s <= 0) print 0; else printf "%.1f\n", c * 1073.741824 / s }')
R_CEILING=$(ratio "$CEILING" "${M[down]}")
# one core's speed, MB/s: 1 MiB blocks for SHA-256, TLS records (16 KiB) for AES-GCM
speed() {
    openssl speed -seconds 1 -bytes "$2" -evp "$1" 2>/dev/null |
        awk -v alg="$1" 'tolower($1) == tolower(alg) { v = $NF; sub(/k$/, "", v); printf "%.0f\n", v * 1000 / 1e6 }'
}
SHA_MBPS=$(speed sha256 1048576)
AES_MBPS=$(speed aes-256-gcm 16384)

echo
printf '%-44s %10s %12s\n' "median of $ROUNDS rounds, $SIZE_MIB MiB" "MB/s" "CPU-s/GiB"
printf '%-44s %10s %12s\n' "a. curl download through files/" "${M[down]}" "${MC[down]}"
printf '%-44s %10s %12s\n' "b. fbcp upload (SHA-256 at both ends)" "${M[with]}" "${MC[with]}"
printf '%-44s %10s %12s\n' "c. fbcp upload without digests (scratch)" "${M[without]}" "${MC[without]}"
echo
echo "upload / download = $R_WITH; without digests = $R_WITHOUT"
echo "an upload keeping all $CORES cores busy at b's CPU cost: $CEILING MB/s = $R_CEILING of the download"
echo "one core: SHA-256 ${SHA_MBPS:-?} MB/s, AES-256-GCM ${AES_MBPS:-?} MB/s; CPU steal during the rounds $STEAL %"

mkdir -p "$(dirname "$OUT")"
jq -n \
    --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg commit "$(git -C "$SRCDIR" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --arg host "$(uname -srm)" --argjson cores "$CORES" --arg openssl "$(openssl version)" \
    --argjson size "$SIZE" --argjson rounds "$ROUNDS" --argjson conns "$CONNECTIONS" \
    --argjson down "${M[down]}" --argjson with "${M[with]}" --argjson without "${M[without]}" \
    --argjson c_down "${MC[down]}" --argjson c_with "${MC[with]}" --argjson c_without "${MC[without]}" \
    --argjson s_down "$(json_numbers "${RATES[down]}")" --argjson s_with "$(json_numbers "${RATES[with]}")" \
    --argjson s_without "$(json_numbers "${RATES[without]}")" \
    --argjson sc_down "$(json_numbers "${CPU[down]}")" --argjson sc_with "$(json_numbers "${CPU[with]}")" \
    --argjson sc_without "$(json_numbers "${CPU[without]}")" \
    --argjson r_with "$R_WITH" --argjson r_without "$R_WITHOUT" --argjson steal "$STEAL" \
    --argjson ceiling "$CEILING" --argjson r_ceiling "$R_CEILING" \
    --argjson sha "${SHA_MBPS:-null}" --argjson aes "${AES_MBPS:-null}" \
    '{benchmark: "digest_cost", date: $date, commit: $commit, host: $host, cores: $cores,
      openssl: $openssl, file_bytes: $size, rounds: $rounds, connections: $conns,
      where: "127.0.0.1, files on /dev/shm", steal_pct: $steal,
      unit: "MB/s (10^6 bytes per second), median of rounds; CPU seconds per GiB of the whole machine",
      one_core_mb_per_s: {sha256: $sha, aes_256_gcm: $aes},
      results: {curl_download_files: $down, fbcp_upload: $with, fbcp_upload_without_digests: $without},
      cpu_s_per_gib: {curl_download_files: $c_down, fbcp_upload: $c_with, fbcp_upload_without_digests: $c_without},
      samples: {curl_download_files: $s_down, fbcp_upload: $s_with, fbcp_upload_without_digests: $s_without},
      cpu_samples: {curl_download_files: $sc_down, fbcp_upload: $sc_with, fbcp_upload_without_digests: $sc_without},
      ratios: {upload_vs_download: $r_with, upload_without_digests_vs_download: $r_without,
               upload_all_cores_busy_mb_per_s: $ceiling, upload_all_cores_busy_vs_download: $r_ceiling}}' >"$OUT"
echo "written: $OUT"
