"""bench/wan: the WAN benchmark harness.

Runs, through the same emulated link (bench/linkem-up: namespaces fbc = client 198.18.0.1 and
fbs = server 198.18.0.2), a matrix of cases (rate x RTT x loss) and for each case these tools:

  fbcp-udp     fbcp over UDP, policy fair (--fallback=never), upload and download
  fbcp-https   fbcp forced over HTTPS (--fallback=force), upload and download
  curl-cubic   curl over HTTPS to the same Apache (PUT sessions/{id}/data, GET files/), TCP CUBIC
  curl-bbr     the same with BBR
  aria2c-16    aria2c with 16 connections, download
  iperf3-cubic iperf3 TCP (client -> server), the raw TCP ceiling, CUBIC
  iperf3-bbr   the same with BBR

For each run it records goodput (file bytes over wall time), link utilisation (goodput / link
rate), retransmitted bytes (TCP: RetransSegs x MSS in the sender's namespace; fbcp-udp: what fbcp
reports, else none), the bytes the sender put on the wire (from the relay's statistics) and the
CPU seconds per GiB of client and server (cgroup v2 cpu.stat of one cgroup per side), plus the CPU
the rest of the machine used meanwhile (contention). Results go to OUT/wan-<case>.json; a report
(markdown tables, gnuplot PNG of goodput against loss for each RTT) is regenerated from every
result file in OUT, and written into docs/benchmarks.md between markers.

Other modes: --fairness (two flows at once through one link, each flow's share) and --loopback
(no emulator: 1 GiB over HTTPS (and UDP) on 127.0.0.1, CPU seconds per GiB on each side, beside
Apache's default handler and iperf3).

Every run is capped by --time-limit (default 60 s): an unfinished transfer is stopped and its
goodput is the bytes moved so far over the time limit. Needs root. Exit 77 (with a "skip:" line)
when the benchmark cannot run here: not root, no network namespaces, no cgroup v2, or the link is
in use by another run.

  bench/wan --quick                         the small CI case
  bench/wan --case 100,50,1 [--case ...]    cases RATE_MBIT,RTT_MS,LOSS_PCT
  bench/wan --matrix default                the default matrix (long: about 13 x 5-10 minutes)
  bench/wan --fairness [--fair-case 100,50,0]
  bench/wan --loopback
  bench/wan --report                        only regenerate the report from OUT
options: --tools a,b,c  --directions up,down  --time-limit S  --size MIB  --out DIR  --seed N
         --cc-default cubic|bbr  --repeat N  --docs FILE|none  --iperf-seconds S  --keep
"""

# The package behind the command bench/wan (a thin script that calls cli.main); one concern a
# module:
#   common      paths, constants, small helpers (log, commands, namespaces, files, JSON)
#   accounting  CPU and packet accounting: one cgroup v2 group per side, /proc and /sys counters
#   link        the emulated link (bench/linkem-up, -down), the relay's CPU, may-we-run checks
#   server      the private Apache with mod_fallback (scripts/devserver) and udpd
#   tools       one measured run of each tool (fbcp, curl, aria2c, iperf3) and its derived figures
#   run         the modes (a case, fairness, loopback), the environment record, the result files
#   report      tables and plots from the result files, and the block in docs/benchmarks.md
#   cli         the command line
