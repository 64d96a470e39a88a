"""The emulated link of bench/wan: bench/linkem-up and linkem-down around one case in the
namespaces fbc and fbs, congestion control of both namespaces, the relay's statistics and the
CPU it is pinned to, and the checks that the benchmark may run here at all."""

import argparse
import json
import os
import shutil
import signal
import time

from .accounting import proc_cpu_s
from .common import (CLIENT_NS, LINKEM_BIN, LINKEM_DOWN, LINKEM_STATE, LINKEM_UP, SERVER_NS, SRCDIR, Skip, log,
                     ns_cmd, run)


class Link:
    """bench/linkem-up / linkem-down around one case; statistics snapshots by SIGUSR1."""

    def __init__(self, rate, rtt, loss, seed, logf, pinned_cpu=None):
        self.rate, self.rtt, self.loss, self.seed = rate, rtt, loss, seed
        self.pinned_cpu = pinned_cpu
        self.logf = logf
        self.pid = None
        self.saved_allowed_cc = None

    def up(self):
        if not os.access(LINKEM_BIN, os.X_OK):
            run(["make", "-C", SRCDIR, "bench/linkem"], timeout=600)
        args = [LINKEM_UP, "--rate", f"{self.rate:g}", "--delay", f"{self.rtt / 2:g}", "--seed", str(self.seed)]
        if self.loss > 0:
            args += ["--loss", f"{self.loss:g}"]
        if self.pinned_cpu is not None:
            args += ["--cpu-up", str(self.pinned_cpu), "--cpu-down", str(self.pinned_cpu)]
        p = run(args, check=False, quiet=True)
        self.logf.write(p.stdout + p.stderr)
        if p.returncode != 0:
            raise RuntimeError(f"linkem-up failed: {(p.stderr or p.stdout).strip()[-400:]}")
        with open(os.path.join(LINKEM_STATE, "linkem.pid")) as f:
            self.pid = int(f.read().split()[0])
        for ns in (CLIENT_NS, SERVER_NS):
            # A fresh TCP state for every connection: no ssthresh cached from the previous run.
            run(ns_cmd(ns, ["sysctl", "-q", "-w", "net.ipv4.tcp_no_metrics_save=1"]), check=False)
        log(f"link up: {self.rate:g} Mbit/s, RTT {self.rtt:g} ms, loss {self.loss:g} % each way (relay {self.pid})")

    def set_cc(self, cc):
        """Default congestion control of both namespaces. A namespace may only pick an algorithm
        in the (global) allowed list, so the list is widened for the moment of the change and put
        back at once."""
        if self.pid is None:
            return
        key = "net.ipv4.tcp_allowed_congestion_control"
        allowed = run(["sysctl", "-n", key]).stdout.strip()
        if self.saved_allowed_cc is None:
            self.saved_allowed_cc = allowed
        try:
            if cc not in allowed.split():
                run(["sysctl", "-q", "-w", f"{key}={allowed} {cc}"])
            for ns in (CLIENT_NS, SERVER_NS):
                run(ns_cmd(ns, ["sysctl", "-q", "-w", f"net.ipv4.tcp_congestion_control={cc}"]))
                run(ns_cmd(ns, ["ip", "tcp_metrics", "flush"]), check=False, quiet=True)
        finally:
            run(["sysctl", "-q", "-w", f"{key}={self.saved_allowed_cc}"], check=False)

    def stats(self):
        """A fresh statistics snapshot of the relay (counters since its start)."""
        path = os.path.join(LINKEM_STATE, "stats.json")
        try:
            before = os.stat(path).st_mtime_ns
        except OSError:
            before = 0
        try:
            os.kill(self.pid, signal.SIGUSR1)
        except OSError:
            return None
        for _ in range(200):  # up to 2 s
            try:
                if os.stat(path).st_mtime_ns != before:
                    with open(path) as f:
                        return json.load(f)
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        return None

    def relay_cpu(self):
        return proc_cpu_s(self.pid) if self.pid else None

    def down(self, save_stats=None):
        args = [LINKEM_DOWN, "--quiet"]
        if save_stats:
            args += ["--save-stats", save_stats]
        p = run(args, check=False, quiet=True)
        self.logf.write(p.stdout + p.stderr)
        self.pid = None


def link_in_use():
    pidfile = os.path.join(LINKEM_STATE, "linkem.pid")
    try:
        with open(pidfile) as f:
            pid = int(f.read().split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return pidfile.encode() in f.read().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False


def check_can_run(need_netns=True):
    if os.geteuid() != 0:
        raise Skip("not root")
    if need_netns:
        if shutil.which("ip") is None:
            raise Skip("no ip(8)")
        if link_in_use():
            raise Skip(f"the emulated link is in use by another run ({LINKEM_STATE}/linkem.pid)")
        probe = f"fbwanprobe{os.getpid()}"
        p = run(["ip", "netns", "add", probe], check=False, quiet=True)
        if p.returncode != 0:
            raise Skip(f"cannot create network namespaces ({p.stderr.strip()})")
        run(["ip", "netns", "del", probe], check=False, quiet=True)
        if not os.path.exists("/dev/net/tun"):
            raise Skip("no /dev/net/tun")


def relay_cpu(args):
    """The CPU both relay threads are pinned to, or None (--relay-cpu none, or a single CPU).

    The relay runs at real-time priority and, at 500 Mbit/s, keeps about two thirds of a core
    busy. Left free to run anywhere it preempts whichever process shares its CPU at that moment;
    a user-space sender (fbcp, udpd) then stalls for milliseconds and the link idles, while
    kernel TCP, sending from softirq context, hardly notices. Pinned to one CPU it still costs
    the machine the same, but the endpoints' scheduler moves them away from it."""
    v = args.relay_cpu
    if v == "none":
        return None
    if v == "last":
        n = os.cpu_count() or 1
        return n - 1 if n >= 2 else None
    return v


def relay_cpu_option(text):
    """--relay-cpu: 'last', 'none' or the number of an online CPU."""
    if text in ("last", "none"):
        return text
    if not text.isdigit() or int(text) >= (os.cpu_count() or 1):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not 'last', 'none' or a CPU number below {os.cpu_count() or 1}")
    return int(text)
