#!/bin/bash
# https_loopback.sh: how fast the HTTPS data path is on loopback, against Apache's own default
# handler serving the same file. With a 1 GiB random file in a private devserver's docroot it
# measures (RUNS runs each, median):
#   a. curl download from Apache's default handler          https://127.0.0.1:P/static/FILE
#   b. curl download through mod_fallback                   https://127.0.0.1:P/fallback/files/FILE
#   c. fbcp download, --connections 1 and 4                 (to a file on tmpfs)
#   d. fbcp upload, --connections 1 and 4                   (from a file on tmpfs)
# and prints a table in MB/s (10^6 bytes/s) with the ratios the project aims for:
#   files/ >= 90% of the default handler;  fbcp upload >= 80% of the files/ download rate.
# Results also go to bench/results/https_loopback.json (or --out FILE).
#
#   bench/https_loopback.sh [--size MiB] [--runs N] [--port N] [--dir DIR] [--out FILE] [--keep]
#
# --dir puts the server's state and docroot there (default: a fresh directory on /dev/shm, so the
# disk is not what is measured; give a directory on disk to include it). Needs a built tree
# (make) and root or the www-data user for Apache (scripts/devserver).
set -euo pipefail

SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$SRCDIR/bench/lib.sh"
SIZE_MIB=1024
RUNS=3
PORT=8543
DIR=""
KEEP=0
OUT=$SRCDIR/bench/results/https_loopback.json
while [ "$#" -gt 0 ]; do
    case "$1" in
    --size) SIZE_MIB=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "https_loopback: unknown option $1" >&2; exit 2 ;;
    esac
done

FBCP=$SRCDIR/client/fbcp
DEVSERVER=$SRCDIR/scripts/devserver
[ -x "$FBCP" ] || { echo "https_loopback: build first (make): no $FBCP" >&2; exit 1; }
for tool in curl jq awk; do
    command -v "$tool" >/dev/null || { echo "https_loopback: $tool not found" >&2; exit 1; }
done

SCRATCH=$(mktemp -d /dev/shm/fb-bench.XXXXXX)
chmod 755 "$SCRATCH"
DIR=${DIR:-$SCRATCH/ds}
USER_NAME=bench
PASSWORD=bench-password-$RANDOM$RANDOM
cleanup() {
    "$DEVSERVER" stop --dir "$DIR" --clean --quiet >/dev/null 2>&1 || true
    if [ "$KEEP" = 1 ]; then echo "kept $SCRATCH and $DIR"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT

# Snapshot the programs: a rebuild in the tree during the run must not change what is measured.
MODULE=$SRCDIR/mod_fallback/.libs/mod_fallback.so
[ -f "$MODULE" ] || { echo "https_loopback: build first (make): no $MODULE" >&2; exit 1; }
mkdir -p "$SCRATCH/bin"
cp "$FBCP" "$SCRATCH/bin/fbcp"
cp "$MODULE" "$SCRATCH/bin/mod_fallback.so"
FBCP=$SCRATCH/bin/fbcp
"$DEVSERVER" start --dir "$DIR" --https-port "$PORT" --user "$USER_NAME" --password "$PASSWORD" \
    --module "$SCRATCH/bin/mod_fallback.so" --quiet
DOCROOT=$DIR/docroot
CA=$DIR/cert.pem
ORIGIN=https://127.0.0.1:$PORT
URL=$ORIGIN/fallback
SIZE=$((SIZE_MIB * 1024 * 1024))
NAME=bench-$SIZE_MIB.bin

warm_guest_memory

echo "preparing a $SIZE_MIB MiB random file"
head -c "$SIZE" /dev/urandom >"$SCRATCH/$NAME"
cp "$SCRATCH/$NAME" "$DOCROOT/$NAME"
# Settled (an mtime in the past) so Apache gives it a strong ETag, as any file at rest has.
touch -d '-1 hour' "$DOCROOT/$NAME"
if [ "$(id -u)" = 0 ] && getent passwd www-data >/dev/null; then chown -R www-data: "$DOCROOT"; fi
SHA=$(sha256sum "$SCRATCH/$NAME" | cut -d' ' -f1)


# curl_rate URL [curl args]: MB/s of one download to /dev/null (curl's own average speed).
curl_rate() {
    local url=$1 out
    shift
    out=$(curl -sS --fail --cacert "$CA" -o /dev/null -w '%{size_download} %{speed_download}' "$@" "$url")
    [ "${out%% *}" = "$SIZE" ] || { echo "https_loopback: $url gave ${out%% *} bytes, not $SIZE" >&2; exit 1; }
    awk -v s="${out#* }" 'BEGIN { printf "%.1f\n", s / 1e6 }'
}

# fbcp_rate ARGS...: MB/s of one fbcp transfer, from the seconds in its --json done event.
fbcp_rate() {
    local json=$SCRATCH/fbcp.json secs
    if ! "$FBCP" --cacert "$CA" -u "$USER_NAME:$PASSWORD" --json -q "$@" >"$json" 2>"$SCRATCH/fbcp.err"; then
        echo "https_loopback: fbcp $* failed: $(tail -n 2 "$SCRATCH/fbcp.err")" >&2
        exit 1
    fi
    secs=$(jq -r 'select(.event == "done") | .seconds' "$json" | head -n1)
    [ "$(jq -r 'select(.event == "done") | .sha256' "$json" | head -n1)" = "$SHA" ] ||
        { echo "https_loopback: fbcp $* moved different bytes" >&2; exit 1; }
    mbps "$SIZE" "$secs"
}

declare -A RESULT=() SAMPLES=()

measure() {
    local key=$1 label=$2 i v list=""
    shift 2
    for ((i = 1; i <= RUNS; i++)); do
        v=$("$@" "$i") || exit 1
        list="$list $v"
        printf '  %-34s run %d: %8s MB/s\n' "$label" "$i" "$v" >&2
    done
    SAMPLES[$key]=$list
    RESULT[$key]=$(median_of "$list")
}

run_static() { curl_rate "$ORIGIN/static/$NAME"; }
run_files() { curl_rate "$URL/files/$NAME" -u "$USER_NAME:$PASSWORD"; }
run_fbcp_down() {
    rm -f "$SCRATCH/down.bin" "$SCRATCH/.down.bin.fbpart" "$SCRATCH/.down.bin.fbpart.json"
    fbcp_rate --connections "$1" "$URL/$NAME" "$SCRATCH/down.bin"
}
run_fbcp_up() {
    local conns=$1 run=$2 v
    v=$(fbcp_rate --connections "$conns" --overwrite always "$SCRATCH/$NAME" "$URL/up/c$conns-r$run.bin")
    rm -f "$DOCROOT/up/c$conns-r$run.bin"
    echo "$v"
}

echo "measuring ($RUNS runs each, $SIZE_MIB MiB, https://127.0.0.1:$PORT on $(nproc) cores)"
measure static "a. curl, default handler /static/" run_static
measure files "b. curl, mod_fallback files/" run_files
measure down1 "c. fbcp download, 1 connection" run_fbcp_down 1
measure down4 "c. fbcp download, 4 connections" run_fbcp_down 4
measure up1 "d. fbcp upload, 1 connection" run_fbcp_up 1
measure up4 "d. fbcp upload, 4 connections" run_fbcp_up 4

verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t) ? "yes" : "NO" }'; }
R_FILES=$(ratio "${RESULT[files]}" "${RESULT[static]}")
R_UP1=$(ratio "${RESULT[up1]}" "${RESULT[files]}")
R_UP4=$(ratio "${RESULT[up4]}" "${RESULT[files]}")
BEST_UP=${RESULT[up4]}
R_UP=$R_UP4
if awk -v a="${RESULT[up1]}" -v b="${RESULT[up4]}" 'BEGIN { exit !(a > b) }'; then BEST_UP=${RESULT[up1]}; R_UP=$R_UP1; fi
# Like for like: fbcp both ways, each end hashing the file (SHA-256) and writing it. curl's
# download does neither, so the goal's ratio above is the stricter one.
BEST_DOWN=$(awk -v a="${RESULT[down1]}" -v b="${RESULT[down4]}" 'BEGIN { print (a > b) ? a : b }')
R_UP_FBCP=$(ratio "$BEST_UP" "$BEST_DOWN")

echo
printf '%-40s %12s\n' "median of $RUNS runs, $SIZE_MIB MiB" "MB/s"
printf '%-40s %12s\n' "----------------------------------------" "------------"
printf '%-40s %12s\n' "a. curl, Apache default handler" "${RESULT[static]}"
printf '%-40s %12s\n' "b. curl, mod_fallback files/" "${RESULT[files]}"
printf '%-40s %12s\n' "c. fbcp download, 1 connection" "${RESULT[down1]}"
printf '%-40s %12s\n' "c. fbcp download, 4 connections" "${RESULT[down4]}"
printf '%-40s %12s\n' "d. fbcp upload, 1 connection" "${RESULT[up1]}"
printf '%-40s %12s\n' "d. fbcp upload, 4 connections" "${RESULT[up4]}"
echo
echo "files/ / default handler = $R_FILES   (goal >= 0.90: $(verdict "$R_FILES" 0.90))"
echo "fbcp upload / files/ download = $R_UP (best of 1 and 4 connections; 1: $R_UP1, 4: $R_UP4)   (goal >= 0.80: $(verdict "$R_UP" 0.80))"
echo "fbcp upload / fbcp download = $R_UP_FBCP (best of each; both ends hash and write the file, curl does neither)"

mkdir -p "$(dirname "$OUT")"
samples_json() { json_numbers "${SAMPLES[$1]}"; }
jq -n \
    --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg host "$(uname -srm)" --argjson cores "$(nproc)" \
    --arg apache "$(/usr/sbin/apache2 -v 2>/dev/null | sed -n 's/^Server version: //p')" \
    --arg openssl "$(openssl version)" \
    --arg commit "$(git -C "$SRCDIR" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --argjson size "$SIZE" --argjson runs "$RUNS" --arg dir "$DIR" \
    --argjson static "${RESULT[static]}" --argjson files "${RESULT[files]}" \
    --argjson down1 "${RESULT[down1]}" --argjson down4 "${RESULT[down4]}" \
    --argjson up1 "${RESULT[up1]}" --argjson up4 "${RESULT[up4]}" \
    --argjson s_static "$(samples_json static)" --argjson s_files "$(samples_json files)" \
    --argjson s_down1 "$(samples_json down1)" --argjson s_down4 "$(samples_json down4)" \
    --argjson s_up1 "$(samples_json up1)" --argjson s_up4 "$(samples_json up4)" \
    --argjson r_files "$R_FILES" --argjson r_up "$R_UP" --argjson r_up1 "$R_UP1" --argjson r_up4 "$R_UP4" \
    --argjson best_up "$BEST_UP" --argjson r_up_fbcp "$R_UP_FBCP" \
    '{benchmark: "https_loopback", date: $date, commit: $commit, host: $host, cores: $cores,
      apache: $apache, openssl: $openssl, file_bytes: $size, runs: $runs, state_dir: $dir,
      unit: "MB/s (10^6 bytes per second), median of runs",
      results: {curl_default_handler: $static, curl_module_files: $files,
                fbcp_download_1: $down1, fbcp_download_4: $down4,
                fbcp_upload_1: $up1, fbcp_upload_4: $up4},
      samples: {curl_default_handler: $s_static, curl_module_files: $s_files,
                fbcp_download_1: $s_down1, fbcp_download_4: $s_down4,
                fbcp_upload_1: $s_up1, fbcp_upload_4: $s_up4},
      ratios: {files_vs_default_handler: $r_files, files_goal: 0.90, files_ok: ($r_files >= 0.90),
               upload_vs_files_download: $r_up, upload_1_vs_files: $r_up1, upload_4_vs_files: $r_up4,
               best_upload: $best_up, upload_goal: 0.80, upload_ok: ($r_up >= 0.80),
               upload_vs_fbcp_download: $r_up_fbcp}}' \
    >"$OUT"
echo "written: $OUT"
