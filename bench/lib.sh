# shellcheck shell=bash
# bench/lib.sh: helpers shared by the loopback benchmark scripts (sourced, not run).

# warm_guest_memory: a virtual machine pays for the first touch of each guest memory page (on
# this kind of machine, writing 1 GiB into fresh page cache took 2-2.6 s against 0.3 s once the
# memory had been used). That cost belongs to the VM, not to the code measured, and it would
# land on whichever run writes first: touch and free some memory once (WARM_MIB, default 4096)
# so every run starts warm.
warm_guest_memory() {
    echo "warming guest memory (${WARM_MIB:-4096} MiB)"
    python3 -c '
import mmap, sys
n = int(sys.argv[1]) << 20
m = mmap.mmap(-1, n)
for i in range(0, n, 4096):
    m[i] = 1
m.close()
' "${WARM_MIB:-4096}" || true
}

# median_of "N N ...": the median of a space-separated list of numbers (0 for none)
median_of() {
    tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) { print 0; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# json_numbers "N N ...": the list as a JSON array of numbers
json_numbers() { tr ' ' '\n' <<<"$1" | grep . | jq -s -c 'map(tonumber)'; }

# mbps BYTES SECONDS: MB/s (10^6 bytes per second), one decimal; 0 for no time
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s <= 0) { print 0; exit } printf "%.1f\n", b / s / 1e6 }'; }

# ratio A B: A / B with two decimals; 0 when B is not positive
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b <= 0) print 0; else printf "%.2f\n", a / b }'; }
