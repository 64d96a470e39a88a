"""The command line of bench/wan: options, their checks, and the order of the modes."""

import argparse
import os
import shutil
import signal
import sys
import tempfile

from . import __doc__ as DESCRIPTION
from .common import (ALL_TOOLS, DEFAULT_DOCS, DEFAULT_MATRIX, DEFAULT_OUT, FBCP_BUILT, LOOPBACK_ONLY_TOOLS,
                     MODULE_BUILT, QUICK_CASE, QUICK_TOOLS, Skip, fmt_case, log)
from .link import check_can_run, relay_cpu_option
from .report import report
from .run import run_case, run_fairness, run_loopback


def parse_case(text):
    try:
        rate, rtt, loss = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a case is RATE_MBIT,RTT_MS,LOSS_PCT, not '{text}'")
    if rate <= 0 or rtt < 0 or not 0 <= loss < 100:
        raise argparse.ArgumentTypeError(f"bad case '{text}'")
    return (rate, rtt, loss)


def main():
    ap = argparse.ArgumentParser(prog="bench/wan", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the small CI case: 20 Mbit/s, 20 ms, 0 %%, 4 MiB, "
                    "fbcp (UDP if available, HTTPS) and curl CUBIC")
    ap.add_argument("--case", type=parse_case, action="append", default=[], help="RATE_MBIT,RTT_MS,LOSS_PCT")
    ap.add_argument("--matrix", choices=["default"], help="100 Mbit/s x {10,50,200} ms x {0,0.1,1,5} %% + 500x100x1")
    ap.add_argument("--fairness", action="store_true", help="two flows at once, each flow's share")
    ap.add_argument("--fair-case", type=parse_case, default=(100, 50, 0))
    ap.add_argument("--fair-seconds", type=float, default=40)
    ap.add_argument("--pairs", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="with --fairness: only these pairs (1-based, in the order of the report, e.g. 2,3); "
                         "the other pairs' results in the JSON are kept")
    ap.add_argument("--loopback", action="store_true", help="1 GiB on 127.0.0.1, CPU seconds per GiB")
    ap.add_argument("--report", action="store_true", help="only regenerate the report from OUT")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help="comma list of: " + ", ".join(ALL_TOOLS) +
                    "; with --loopback also " + ", ".join(LOOPBACK_ONLY_TOOLS))
    ap.add_argument("--directions", default="up,down")
    ap.add_argument("--time-limit", type=float, default=60, help="seconds per run (default 60)")
    ap.add_argument("--iperf-seconds", type=float, default=15)
    ap.add_argument("--size", type=int, help="file size in MiB (default: about 15 s at the link rate)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each tool; the median is reported (of the "
                    "runs not starved of CPU, when there is one)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--relay-cpu", default="last", type=relay_cpu_option,
                    help="CPU to pin both link relay threads to: a number, 'last' (default: the "
                    "highest-numbered CPU, when there are two or more) or 'none'")
    ap.add_argument("--cc-default", choices=["cubic", "bbr"], default="cubic",
                    help="congestion control for fbcp-https and aria2c (default cubic)")
    ap.add_argument("--udp-target-rate", default=None,
                    help="fbcp-udp --target-rate (default: none, fbcp's and the server's default)")
    ap.add_argument("--fbcp-opt", action="append", default=[],
                    help="extra fbcp options for every fbcp run, e.g. '--connections 8' (repeatable)")
    ap.add_argument("--port", type=int, default=8643, help="HTTPS port of the private Apache")
    ap.add_argument("--udp-port", type=int, default=33101)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--docs", default=None, help="markdown file to update (default: docs/benchmarks.md when "
                    "--out is bench/results and not --quick; 'none' for no file)")
    ap.add_argument("--tmp", default="/tmp", help="where the server's docroot and client files go")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    if args.docs is None:
        args.docs = DEFAULT_DOCS if (os.path.abspath(args.out) == DEFAULT_OUT and not args.quick) else None
    elif args.docs == "none":
        args.docs = None
    args.tools = [t for t in args.tools.split(",") if t]
    args.directions = [d for d in args.directions.split(",") if d]
    known = ALL_TOOLS + (LOOPBACK_ONLY_TOOLS if args.loopback else [])
    bad = [t for t in args.tools if t not in known] + [d for d in args.directions if d not in ("up", "down")]
    if bad:
        ap.error(f"unknown tools or directions: {bad}")
    if args.repeat < 1 or args.time_limit <= 0:
        ap.error("--repeat >= 1 and --time-limit > 0")

    cases = list(args.case)
    if args.quick:
        cases.append(QUICK_CASE)
        if args.tools == ALL_TOOLS:
            args.tools = QUICK_TOOLS
        args.size = args.size or 4
        args.time_limit = min(args.time_limit, 60)
    if args.matrix == "default":
        cases += DEFAULT_MATRIX
    if not (cases or args.fairness or args.loopback or args.report):
        ap.error("nothing to do: --quick, --case, --matrix default, --fairness, --loopback or --report")

    args.fbcp = FBCP_BUILT  # the fbcp every run uses: a snapshot of it once a run is due
    stop = {"sig": None}

    def on_signal(sig, _frame):
        stop["sig"] = sig
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    work_bin = None
    try:
        if cases or args.fairness or args.loopback:
            check_can_run(need_netns=bool(cases or args.fairness))
            for need in (FBCP_BUILT, MODULE_BUILT):
                if not os.path.exists(need):
                    raise RuntimeError(f"build first (make): no {need}")
            for tool in ("curl", "openssl", "iperf3"):
                if shutil.which(tool) is None:
                    raise Skip(f"{tool} not installed")
            # Snapshot fbcp: a rebuild during a long matrix must not change what is measured.
            work_bin = tempfile.mkdtemp(prefix="fbwan-bin.", dir=args.tmp)
            os.chmod(work_bin, 0o755)
            args.fbcp = os.path.join(work_bin, "fbcp")
            shutil.copy(FBCP_BUILT, args.fbcp)
        failed = 0
        for case in cases:
            try:
                run_case(args, case)
            except RuntimeError as e:  # a case that cannot go on (setup failed, relay died): next one
                log(f"case {fmt_case(*case)} abandoned: {e}")
                failed += 1
        if args.fairness:
            run_fairness(args)
        if args.loopback:
            run_loopback(args)
        if not args.quick or args.report:
            report(args)
        if failed:
            log(f"{failed} case(s) abandoned")
            return 1
    except Skip as e:
        print(f"skip: {e}", flush=True)
        return 77
    except KeyboardInterrupt:
        log("interrupted; torn down")
        return 130
    except RuntimeError as e:
        print(f"bench/wan: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if work_bin:
            shutil.rmtree(work_bin, ignore_errors=True)
    return 0
