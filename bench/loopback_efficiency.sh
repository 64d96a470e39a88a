#!/bin/bash
# loopback_efficiency.sh: CPU cost of moving data on this machine, without the link emulator.
# A 1 GiB random file goes over 127.0.0.1 between a private Apache with mod_fallback
# (scripts/devserver) and the clients, and each run's CPU seconds per GiB are measured on each
# side (one cgroup v2 group for the client, one for Apache and udpd):
#   fbcp over UDP (download, upload; "not available" while this build has no UDP transport)
#   fbcp over HTTPS (--fallback=force; download, upload)
#   curl from Apache's default handler (/static/) and from the module's files/ (download)
#   curl upload through the sessions API (one PUT of the whole file, then commit)
#   iperf3 TCP (1 GiB), the kernel's own cost
# Files live on /dev/shm by default so the disk is not what is measured.
# Results: bench/results/loopback-efficiency.json and a table in docs/benchmarks.md.
#
#   bench/loopback_efficiency.sh [--size MiB] [--repeat N] [--port N] [--tmp DIR] [other bench/wan options]
#
# This is `bench/wan --loopback`; see bench/wan --help. Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=/dev/shm
args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --tmp) tmp=$2; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
    esac
done
exec "$here/wan" --loopback --tmp "$tmp" "${args[@]}"
