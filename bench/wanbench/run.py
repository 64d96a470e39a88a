"""The modes of bench/wan: one case of the matrix (every tool through one link), fairness
(two flows at once) and loopback efficiency, each in a Setup torn down whatever happens; the
environment record and the result files they write."""

import datetime
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .accounting import Cgroup, loadavg
from .common import (ALL_TOOLS, CLIENT_NS, DOWNLOAD_ONLY, GIB, MIB, SERVER_IP, SERVER_NS, SRCDIR, UPLOAD_ONLY,
                     auto_size, fmt_case, load_json, log, write_json)
from .link import Link, relay_cpu
from .server import Server
from .tools import Bench


def first_line(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def environment(fbcp):
    commit = first_line(["git", "-C", SRCDIR, "rev-parse", "--short", "HEAD"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit, "host": " ".join(os.uname()[i] for i in (0, 2, 4)), "cores": os.cpu_count(),
        "loadavg_at_start": loadavg(),
        "versions": {"fbcp": first_line([fbcp, "--version"]), "curl": first_line(["curl", "--version"]),
                     "aria2c": first_line(["aria2c", "--version"]), "iperf3": first_line(["iperf3", "--version"]),
                     "apache": first_line(["/usr/sbin/apache2", "-v"]), "openssl": first_line(["openssl", "version"])},
        "note": "shared 2-core VM: other work ran at the same time; cpu_other_s and loadavg in each run show it",
    }


def merge_runs(old, new):
    """Runs of a new invocation replace the runs of the same tool and direction in an old file."""
    keys = {(r["tool"], r["direction"]) for r in new}
    return [r for r in (old or []) if (r["tool"], r["direction"]) not in keys] + new


class Setup:
    """Everything one case needs, torn down in reverse whatever happens."""

    def __init__(self, args, mode, case=None):
        self.args, self.mode, self.case = args, mode, case
        self.work = tempfile.mkdtemp(prefix="fbwan.", dir=args.tmp)
        os.chmod(self.work, 0o755)
        self.logf = open(os.path.join(self.work, "setup.log"), "w")
        self.link = self.srv = self.bench = None
        self.cgc = self.cgs = None

    def __enter__(self):
        try:
            self.cgc, self.cgs = Cgroup("client"), Cgroup("server")
            if self.mode == "wan":
                rate, rtt, loss = self.case
                self.link = Link(rate, rtt, loss, self.args.seed, self.logf, relay_cpu(self.args))
                self.link.up()
                self.link.set_cc(self.args.cc_default)
                self.srv = Server(self.work, self.cgs, SERVER_NS, SERVER_IP, self.args.port, self.args.udp_port,
                                  self.logf, self.args.fbcp)
                ns = CLIENT_NS
            else:
                self.srv = Server(self.work, self.cgs, None, "127.0.0.1", self.args.port, self.args.udp_port,
                                  self.logf, self.args.fbcp)
                ns = None
            self.srv.start()
            self.bench = Bench(self.args, self.work, ns, self.link, self.srv, self.cgc, self.cgs, self.logf)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if self.bench is not None:
            self.bench.stop_iperf()
        if self.srv is not None:
            self.srv.stop()
        if self.link is not None:
            stats = os.path.join(self.work, "linkem-final.json")
            self.link.down(save_stats=stats)
            self.final_link_stats = load_json(stats)
        for cg in (self.cgc, self.cgs):
            if cg is not None:
                cg.remove()
        self.logf.close()
        if self.args.keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        return False


def run_case(args, case):
    rate, rtt, loss = case
    size = (args.size or auto_size(rate)) * MIB
    path = os.path.join(args.out, f"wan-{fmt_case(rate, rtt, loss)}.json")
    log(f"=== case {fmt_case(rate, rtt, loss)}: file {size // MIB} MiB, time limit {args.time_limit:g} s")
    runs = []
    env = environment(args.fbcp)
    with Setup(args, "wan", case) as s:
        b = s.bench
        for tool in args.tools:
            for direction in args.directions:
                if (tool in DOWNLOAD_ONLY and direction != "down") or (tool in UPLOAD_ONLY and direction != "up"):
                    continue
                for rep in range(args.repeat):
                    r = b.tool_run(tool, direction, size)
                    r["repeat"] = rep
                    runs.append(r)
                    # Saved after every run: an interrupted matrix keeps what it measured.
                    env["loadavg_now"] = loadavg()
                    old_doc = load_json(path) or {}
                    old_case = old_doc.get("case", {})
                    commands = old_case.get("commands", [old_case["command"]] if "command" in old_case else [])
                    if " ".join(sys.argv) not in commands:
                        commands = commands + [" ".join(sys.argv)]
                    doc = {"benchmark": "wan", "schema": 1, "env": env,
                           "case": {"rate_mbit": rate, "rtt_ms": rtt, "loss_pct": loss,
                                    "loss_applies": "each direction, independent (bench/linkem --loss)",
                                    "seed": args.seed, "file_bytes": size, "time_limit_s": args.time_limit,
                                    "cc_default": args.cc_default, "queue": "linkem default (100 ms at the rate)",
                                    "commands": commands},
                           "runs": merge_runs(old_doc.get("runs"), runs)}
                    write_json(path, doc)
    log(f"written {path}")
    return path


FAIR_PAIRS = [
    ("fbcp fair + fbcp fair", [("fbcp-udp", "fair"), ("fbcp-udp", "fair")]),
    ("fbcp fair + CUBIC", [("fbcp-udp", "fair"), ("curl-cubic", None)]),
    ("fbcp low + CUBIC", [("fbcp-udp", "low"), ("curl-cubic", None)]),
    ("fbcp high + fbcp fair", [("fbcp-udp", "high"), ("fbcp-udp", "fair")]),
    # References that need no UDP: two CUBIC flows, and fbcp over HTTPS (4 connections) beside one.
    ("CUBIC + CUBIC (reference)", [("curl-cubic", None), ("curl-cubic", None)]),
    ("fbcp HTTPS (4 conn.) + CUBIC (reference)", [("fbcp-https", None), ("curl-cubic", None)]),
]


def run_fairness(args):
    rate, rtt, loss = args.fair_case
    dur = args.fair_seconds
    size = (args.size or max(16, 2 ** math.ceil(math.log2(rate * 1e6 / 8 * dur * 1.5 / MIB)))) * MIB
    size = min(size, 4 * GIB)
    path = os.path.join(args.out, f"fairness-{fmt_case(rate, rtt, loss)}.json")
    log(f"=== fairness at {fmt_case(rate, rtt, loss)}: {dur:g} s per pair, downloads of {size // MIB} MiB")
    results = []
    with Setup(args, "wan", args.fair_case) as s:
        b = s.bench
        b.data_file(size)
        chosen = [FAIR_PAIRS[i - 1] for i in args.pairs] if args.pairs else FAIR_PAIRS
        for label, flows in chosen:
            missing = [t for t, _ in flows if t == "fbcp-udp" and b.srv.udp_reason]
            if missing:
                results.append({"pair": label, "status": "not_available", "reason": b.srv.udp_reason})
                log(f"  {label}: not available ({b.srv.udp_reason})")
                continue
            s.link.set_cc("cubic")
            time.sleep(1)
            a_link = s.link.stats()
            handles = []
            for tool, policy in flows:
                if tool == "curl-cubic":
                    handles.append(("curl", b.curl_down_start(size, limit=dur)))
                else:
                    handles.append(("fbcp", b.fbcp_start("down", size, "udp" if tool == "fbcp-udp" else "https",
                                                         policy or "fair")))
            flows_out = []
            for (kind, h), (tool, policy) in zip(handles, flows):
                # Every flow runs exactly dur seconds (curl's --max-time is the harness time limit).
                # curl stops itself at --max-time (and then still prints its figures); fbcp gets SIGINT.
                extra = 15 if kind == "curl" else 0
                rc, interrupted, t_stop = b.wait_deadline(h["p"], h["t0"] + dur + extra,
                                                          sig=signal.SIGTERM if kind == "curl" else signal.SIGINT)
                if kind == "curl":
                    out = h["p"].stdout.read().split()
                    got = int(out[1]) if len(out) >= 2 and out[1].isdigit() else 0
                    r = {"bytes": got, "complete": got == size}
                else:
                    h["p"].returncode = rc
                    r = b.fbcp_finish(h, dur)
                wall = (t_stop if interrupted else time.monotonic()) - h["t0"]
                flows_out.append({"tool": tool, "policy": policy, "bytes": r.get("bytes", 0),
                                  "seconds": round(wall, 3), "complete": r.get("complete", False),
                                  "goodput_mbit": round(r.get("bytes", 0) * 8 / max(wall, 1e-3) / 1e6, 3)})
            b_link = s.link.stats()
            total = sum(f["bytes"] for f in flows_out) or 1
            for f in flows_out:
                f["share"] = round(f["bytes"] / total, 4)
            xs = [f["goodput_mbit"] for f in flows_out]
            jain = (sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))) if any(xs) else None
            rec = {"pair": label, "status": "ok", "flows": flows_out, "jain_index": round(jain, 4) if jain else None,
                   "link_utilisation": round(sum(xs) / rate, 4)}
            if a_link and b_link:
                rec["queue_drop_pkts_down"] = b_link["down"]["queue_drop_pkts"] - a_link["down"]["queue_drop_pkts"]
            results.append(rec)
            log(f"  {label}: " + ", ".join(f"{f['tool']}{'/' + f['policy'] if f['policy'] else ''} "
                                             f"{f['goodput_mbit']:.1f} Mbit/s ({f['share'] * 100:.0f} %)"
                                             for f in flows_out))
            for name in os.listdir(b.cdir):
                p = os.path.join(b.cdir, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    doc = {"benchmark": "fairness", "schema": 1, "env": environment(args.fbcp),
           "case": {"rate_mbit": rate, "rtt_ms": rtt, "loss_pct": loss, "seconds": dur, "file_bytes": size,
                    "direction": "down (all flows share the server->client queue)", "command": " ".join(sys.argv)},
           "pairs": results}
    old = load_json(path) if args.pairs and os.path.exists(path) else None
    if old:  # a subset of pairs: keep the others' earlier results, in FAIR_PAIRS order
        ran = {r["pair"]: r for r in results}
        prev = {r["pair"]: r for r in old.get("pairs", [])}
        doc["pairs"] = [ran.get(label) or prev[label] for label, _ in FAIR_PAIRS if label in ran or label in prev]
    write_json(path, doc)
    log(f"written {path}")
    return path


def run_loopback(args):
    size = (args.size or 1024) * MIB
    path = os.path.join(args.out, "loopback-efficiency.json")
    log(f"=== loopback efficiency: {size // MIB} MiB, files on {args.tmp}")
    runs = []
    with Setup(args, "loopback") as s:
        b = s.bench
        b.data_file(size)
        plan = [("fbcp-udp", "down"), ("fbcp-udp", "up"), ("fbcp-https", "down"), ("fbcp-https", "up"),
                ("curl-static", "down"), ("curl-files", "down"), ("curl-api", "up"), ("iperf3", "up")]
        if args.tools != ALL_TOOLS:  # --tools given: only those (loopback names included)
            plan = [p for p in plan if p[0] in args.tools]
        plan = [p for p in plan if p[1] in args.directions]
        cc = open("/proc/sys/net/ipv4/tcp_congestion_control").read().strip()
        for tool, direction in plan:
            for rep in range(args.repeat):
                if tool == "fbcp-udp":
                    fn = lambda d=direction: b.run_fbcp(d, size, "udp", "fair")  # noqa: E731
                elif tool == "fbcp-https":
                    fn = lambda d=direction: b.run_fbcp(d, size, "https")  # noqa: E731
                elif tool == "curl-static":
                    fn = lambda: b.run_curl_down(size, "static")  # noqa: E731
                elif tool == "curl-files":
                    fn = lambda: b.run_curl_down(size, "files")  # noqa: E731
                elif tool == "curl-api":
                    fn = lambda: b.run_curl_up(size)  # noqa: E731
                else:
                    fn = lambda: b.run_iperf3(cc, nbytes=size)  # noqa: E731
                r = b.measured(tool, direction, None, fn)
                r["cc"] = cc
                r["repeat"] = rep
                runs.append(r)
    doc = {"benchmark": "loopback", "schema": 1, "env": environment(args.fbcp),
           "case": {"file_bytes": size, "where": f"127.0.0.1, files on {args.tmp}", "cc": cc,
                    "command": " ".join(sys.argv)}, "runs": runs}
    write_json(path, doc)
    log(f"written {path}")
    return path

