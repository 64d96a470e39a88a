"""Paths, constants and small helpers every part of bench/wan uses: logging, running a helper
command (in a namespace), making and hashing the data file, reading and writing result JSON."""

import hashlib
import json
import math
import os
import subprocess
import time

SRCDIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(SRCDIR, "bench")
LINKEM_UP = os.path.join(BENCH, "linkem-up")
LINKEM_DOWN = os.path.join(BENCH, "linkem-down")
LINKEM_BIN = os.path.join(BENCH, "linkem")
DEVSERVER = os.path.join(SRCDIR, "scripts", "devserver")
FBCP_BUILT = os.path.join(SRCDIR, "client", "fbcp")
UDPD_BUILT = os.path.join(SRCDIR, "udpd", "udpd")
MODULE_BUILT = os.path.join(SRCDIR, "mod_fallback", ".libs", "mod_fallback.so")
PLOT_GP = os.path.join(BENCH, "plot.gp")
DEFAULT_OUT = os.path.join(BENCH, "results")
DEFAULT_DOCS = os.path.join(SRCDIR, "docs", "benchmarks.md")
LINKEM_STATE = os.environ.get("LINKEM_STATE", "/run/linkem")

CLIENT_NS, SERVER_NS = "fbc", "fbs"
CLIENT_IP, SERVER_IP = "198.18.0.1", "198.18.0.2"
MSS = 1448  # MTU 1500 - 20 (IP) - 20 (TCP) - 12 (timestamps): the bytes one retransmitted segment carries
GIB = 1 << 30
MIB = 1 << 20
USER, PASSWORD = "bench", "bench-password"
ALL_TOOLS = ["fbcp-udp", "fbcp-https", "curl-cubic", "curl-bbr", "aria2c-16", "iperf3-cubic", "iperf3-bbr"]
DOWNLOAD_ONLY = {"aria2c-16"}
UPLOAD_ONLY = {"iperf3-cubic", "iperf3-bbr"}  # iperf3 runs client -> server only
DEFAULT_MATRIX = [(100, rtt, loss) for rtt in (10, 50, 200) for loss in (0, 0.1, 1, 5)] + [(500, 100, 1)]
QUICK_CASE = (20, 20, 0)
QUICK_TOOLS = ["fbcp-udp", "fbcp-https", "curl-cubic"]
LOOPBACK_ONLY_TOOLS = ["curl-static", "curl-files", "curl-api", "iperf3"]
LATE_WARN = 0.05  # runs whose relay released more than this share of packets > 1 ms late are flagged
STEAL_WARN = 0.05  # ... and runs during which the hypervisor took more than this share of the CPUs
DOC_BEGIN = "<!-- BEGIN bench/wan report (generated: edit bench/wan, not this block) -->"
DOC_END = "<!-- END bench/wan report -->"


class Skip(Exception):
    """The benchmark cannot run on this machine (exit 77)."""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, check=True, quiet=False, timeout=300, **kw):
    """Runs a short helper command and returns its CompletedProcess (text)."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-500:]}")
    if not quiet and p.returncode != 0:
        log(f"warning: {' '.join(cmd)} -> {p.returncode}: {p.stderr.strip()[-300:]}")
    return p


def stop_process(p):
    """Stops a server process this harness started: SIGTERM, 10 s to exit, then SIGKILL."""
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def ns_cmd(ns, cmd):
    return ["ip", "netns", "exec", ns] + cmd if ns else cmd


def fmt_case(rate, rtt, loss):
    return f"{rate:g}M-{rtt:g}ms-{loss:g}pct"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MIB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def make_random_file(path, size):
    """SIZE random bytes (not compressible: TLS and disks see real data); returns the SHA-256."""
    h = hashlib.sha256()
    with open("/dev/urandom", "rb") as src, open(path, "wb") as dst:
        left = size
        while left > 0:
            b = src.read(min(left, 4 * MIB))
            dst.write(b)
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def auto_size(rate_mbit, target_s=15.0):
    """A power-of-two file size (MiB) that takes about target_s at the link rate (4 MiB..1 GiB)."""
    mib = rate_mbit * 1e6 / 8 * target_s / MIB
    return int(min(1024, max(4, 2 ** round(math.log2(max(mib, 1))))))


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
