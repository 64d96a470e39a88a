"""Accounting for bench/wan: the CPU each side used (one cgroup v2 group per side), the CPU
of a process and of the whole machine (busy and steal, from /proc), and the TCP and TUN
counters of a namespace."""

import os
import signal
import time

from .common import Skip, log, ns_cmd, run


class Cgroup:
    """One cgroup v2 group per side: every process of that side (and its children) goes in it, so
    cpu.stat counts all of them (all Apache children, curl's several invocations, ...)."""

    def __init__(self, name):
        root = None
        for cand in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            if os.path.exists(os.path.join(cand, "cgroup.procs")) and os.path.exists(
                    os.path.join(cand, "cgroup.controllers")):
                root = cand
                break
        if root is None:
            raise Skip("no cgroup v2 hierarchy (needed for the CPU accounting)")
        self.path = os.path.join(root, f"fbwan-{name}-{os.getpid()}")
        os.makedirs(self.path, exist_ok=True)
        if not os.path.exists(os.path.join(self.path, "cpu.stat")):
            raise Skip(f"{self.path} has no cpu.stat")

    def join_self(self):
        """Moves the calling process into the group (used in preexec_fn)."""
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    def cpu_s(self):
        with open(os.path.join(self.path, "cpu.stat")) as f:
            for line in f:
                k, v = line.split()
                if k == "usage_usec":
                    return int(v) / 1e6
        return 0.0

    def pids(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def remove(self):
        # Only empty groups can go; whatever is left was started by this harness (bounded wait).
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                pids = self.pids()
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.1)
        log(f"warning: could not remove {self.path}")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def cpu_times_s():
    """CPU seconds the whole machine (all cores) spent busy, and the seconds the hypervisor
    took from this guest ("steal": a virtual CPU that wanted to run and did not), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    steal = v[7] if len(v) > 7 else 0
    return (sum(v[:8]) - idle - steal) / CLK_TCK, steal / CLK_TCK


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def tcp_counters(ns):
    """RetransSegs and OutSegs of namespace ns (None: this namespace)."""
    out = run(ns_cmd(ns, ["cat", "/proc/net/snmp"]), quiet=True).stdout.splitlines()
    tcp = [line.split()[1:] for line in out if line.startswith("Tcp:")]
    if len(tcp) < 2:
        return {}
    d = dict(zip(tcp[0], tcp[1]))
    return {"RetransSegs": int(d.get("RetransSegs", 0)), "OutSegs": int(d.get("OutSegs", 0))}


def tun_tx_dropped(ns, dev):
    p = run(ns_cmd(ns, ["cat", f"/sys/class/net/{dev}/statistics/tx_dropped"]), check=False, quiet=True)
    try:
        return int(p.stdout.strip())
    except ValueError:
        return None
