"""The report of bench/wan: markdown tables (every case, each case, fairness, loopback) and
gnuplot plots of goodput against loss from the result files in OUT, written to OUT/report.md and
between the markers in docs/benchmarks.md."""

import glob
import os
import shutil

from .common import ALL_TOOLS, DOC_BEGIN, DOC_END, LATE_WARN, MIB, PLOT_GP, STEAL_WARN, load_json, log, run


def median_run(runs):
    """The run of median goodput among repeats of one tool and direction."""
    ok = [r for r in runs if r.get("goodput_mbit") is not None]
    if not ok:
        return runs[-1]
    ok.sort(key=lambda r: r["goodput_mbit"])
    return ok[(len(ok) - 1) // 2]


def starved(r):
    """The run competed with the hypervisor or the relay ran late: its figure says little."""
    link = r.get("link") or {}
    late = link.get("late_1ms_pkts", 0) / link["pkts_out"] if link.get("pkts_out") else 0
    return late > LATE_WARN or r.get("steal_share", 0) > STEAL_WARN


def group_runs(runs, spread=False):
    """The median run of each tool and direction, among the runs that were not starved when there
    is one (every tool is treated alike; all runs stay in the JSON); with spread, also (min, max,
    n, starved) of the goodput over all runs."""
    groups = {}
    for r in runs:
        groups.setdefault((r["tool"], r["direction"]), []).append(r)
    out = {}
    for k, v in groups.items():
        clean = [r for r in v if not starved(r)] or v
        if not spread:
            out[k] = median_run(clean)
            continue
        g = [r["goodput_mbit"] for r in v if r.get("goodput_mbit") is not None]
        out[k] = (median_run(clean), (min(g), max(g), len(g), sum(1 for r in v if starved(r))) if g else None)
    return out


def goodput_cell(r, sp):
    if r.get("goodput_mbit") is None:
        return "–"
    cell = f"{r['goodput_mbit']:.2f}"
    if sp and sp[2] > 1:
        cell += f" ({sp[0]:.1f}–{sp[1]:.1f}, {sp[2]} runs" + (f", {sp[3]} starved" if sp[3] else "") + ")"
    return cell


def tool_order(key):
    tool, direction = key
    order = ALL_TOOLS + ["curl-static", "curl-files", "curl-api", "iperf3"]
    return (order.index(tool) if tool in order else 99, direction)


def fnum(v, fmt="{:.1f}", none="–"):
    return none if v is None else fmt.format(v)


def fbytes(v):
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.1f} MB"
    if v >= 1e3:
        return f"{v / 1e3:.0f} kB"
    return f"{v:.0f} B"


def status_cell(r):
    st = r.get("status", "?")
    if st == "ok":
        return "ok"
    if st == "partial":
        return "partial (time limit)"
    if st == "not_available":
        return "not available"
    return "failed"


def late_cell(link):
    """Share of the data direction's packets the relay released more than 1 ms late."""
    if not link or not link.get("pkts_out"):
        return "–"
    return f"{link.get('late_1ms_pkts', 0) / link['pkts_out'] * 100:.1f} %"


def case_table(doc):
    c = doc["case"]
    lines = [f"#### {c['rate_mbit']:g} Mbit/s, RTT {c['rtt_ms']:g} ms, loss {c['loss_pct']:g} % "
             f"(file {c['file_bytes'] // MIB} MiB, limit {c['time_limit_s']:g} s, {doc['env']['date']}, "
             f"commit {doc['env']['commit']})", "",
             "| tool | dir | cc | status | goodput Mbit/s | util. | retrans. | wire overhead | "
             "CPU s/GiB client | CPU s/GiB server | CPU other s | late pkts | steal |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, (r, sp) in sorted(group_runs(doc["runs"], spread=True).items(), key=lambda kv: tool_order(kv[0])):
        if r.get("status") == "not_available":
            lines.append(f"| {key[0]} | {key[1]} | – | not available |" + " – |" * 9)
            continue
        link = r.get("link") or {}
        util = r.get("utilisation")
        wo = r.get("wire_overhead")
        lines.append("| " + " | ".join([
            key[0], key[1], r.get("cc") or "–", status_cell(r), goodput_cell(r, sp),
            fnum(util * 100 if util is not None else None, "{:.0f} %"), fbytes(r.get("retrans_bytes")),
            fnum(wo * 100 if wo is not None else None, "{:.1f} %"),
            fnum(r.get("cpu_client_s_per_gib")), fnum(r.get("cpu_server_s_per_gib")),
            fnum(r.get("cpu_other_s")), late_cell(link),
            fnum(r["steal_share"] * 100 if "steal_share" in r else None, "{:.1f} %")]) + " |")
    na = {r.get("reason") for r in doc["runs"] if r.get("status") == "not_available"}
    for reason in sorted(x for x in na if x):
        lines.append(f"\nNot available: {' '.join(reason.split())}.")
    return "\n".join(lines)


def summary_table(docs):
    """Goodput (Mbit/s) of every tool and direction (rows) in every case (columns)."""
    docs = sorted(docs, key=lambda d: (d["case"]["rate_mbit"], d["case"]["rtt_ms"], d["case"]["loss_pct"]))
    keys = set()
    per = []
    for d in docs:
        g = group_runs(d["runs"])
        keys |= set(g)
        per.append(g)
    head = ["tool", "dir"] + [f"{d['case']['rate_mbit']:g}M {d['case']['rtt_ms']:g}ms {d['case']['loss_pct']:g}%"
                              for d in docs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * len(docs)]
    for key in sorted(keys, key=tool_order):
        cells = []
        for g in per:
            r = g.get(key)
            if r is None:
                cells.append(" ")
            elif r.get("status") == "not_available":
                cells.append("n/a")
            elif r.get("goodput_mbit") is None:
                cells.append("failed")
            else:
                cells.append(f"{r['goodput_mbit']:.1f}" + ("*" if r.get("status") == "partial" else "")
                             + ("!" if r.get("status") == "failed" else "") + ("†" if starved(r) else ""))
        lines.append("| " + " | ".join([key[0], key[1]] + cells) + " |")
    return "\n".join(lines)


def write_plots(docs, out):
    """One PNG per link rate: goodput against loss, one panel per RTT, one line per tool+direction."""
    pngs = []
    if shutil.which("gnuplot") is None:
        log("gnuplot not found: no plot (apt-get install gnuplot-nox)")
        return pngs
    by_rate = {}
    for d in docs:
        by_rate.setdefault(d["case"]["rate_mbit"], []).append(d)
    for rate, ds in sorted(by_rate.items()):
        rtts = sorted({d["case"]["rtt_ms"] for d in ds})
        if all(sum(1 for d in ds if d["case"]["rtt_ms"] == rtt) < 2 for rtt in rtts):
            continue  # one loss rate per RTT: nothing to draw a line through (the table has it)
        keys = sorted({k for d in ds for k, r in group_runs(d["runs"]).items() if r.get("goodput_mbit") is not None},
                      key=tool_order)
        if not keys:
            continue
        datfiles = []
        for rtt in rtts:
            rows = sorted((d for d in ds if d["case"]["rtt_ms"] == rtt), key=lambda d: d["case"]["loss_pct"])
            dat = os.path.join(out, f"plot-{rate:g}M-{rtt:g}ms.dat")
            with open(dat, "w") as f:
                f.write("loss " + " ".join(f"{t}/{dr}" for t, dr in keys) + "\n")
                for d in rows:
                    g = group_runs(d["runs"])
                    vals = [g.get(k, {}).get("goodput_mbit") for k in keys]
                    f.write(f"{d['case']['loss_pct']:g} " + " ".join("?" if v is None else f"{v:.3f}" for v in vals)
                            + "\n")
            datfiles.append(dat)
        png = os.path.join(out, f"wan-goodput-{rate:g}M.png")
        gp_args = ["gnuplot", "-e", f"datafiles='{' '.join(datfiles)}'; rtts='{' '.join(f'{r:g}' for r in rtts)}'; "
                                    f"ncols={len(keys) + 1}; rate='{rate:g}'; out='{png}'", PLOT_GP]
        p = run(gp_args, check=False, quiet=True)
        if p.returncode != 0:
            log(f"gnuplot failed: {p.stderr.strip()[-300:]}")
        else:
            pngs.append(png)
    return pngs


def fairness_table(doc):
    c = doc["case"]
    lines = [f"#### Fairness: {c['rate_mbit']:g} Mbit/s, RTT {c['rtt_ms']:g} ms, loss {c['loss_pct']:g} %, "
             f"{c['seconds']:g} s, downloads ({doc['env']['date']}, commit {doc['env']['commit']})", "",
             "| pair | flow 1 | share | flow 2 | share | total util. | Jain index |", "|---|---|---:|---|---:|---:|---:|"]
    for p in doc["pairs"]:
        if p.get("status") != "ok":
            lines.append(f"| {p['pair']} | not available | | | | | |")
            continue
        f1, f2 = p["flows"]
        name = lambda f: f["tool"] + (f"/{f['policy']}" if f.get("policy") else "")  # noqa: E731
        lines.append(f"| {p['pair']} | {name(f1)} {f1['goodput_mbit']:.1f} Mbit/s | {f1['share'] * 100:.0f} % | "
                     f"{name(f2)} {f2['goodput_mbit']:.1f} Mbit/s | {f2['share'] * 100:.0f} % | "
                     f"{p['link_utilisation'] * 100:.0f} % | {fnum(p.get('jain_index'), '{:.2f}')} |")
    reasons = {p.get("reason") for p in doc["pairs"] if p.get("status") == "not_available"}
    for r in sorted(x for x in reasons if x):
        lines.append(f"\nNot available: {' '.join(r.split())}.")
    return "\n".join(lines)


def loopback_table(doc):
    c = doc["case"]
    lines = [f"#### Loopback, {c['file_bytes'] // MIB} MiB, {c['where']}, cc {c['cc']} "
             f"({doc['env']['date']}, commit {doc['env']['commit']})", "",
             "| what | dir | status | goodput Mbit/s | CPU s/GiB client | CPU s/GiB server | CPU other s |",
             "|---|---|---|---:|---:|---:|---:|"]
    names = {"curl-static": "curl, Apache default handler (/static/)", "curl-files": "curl, module files/",
             "curl-api": "curl, module sessions API (PUT)", "iperf3": "iperf3 TCP",
             "fbcp-https": "fbcp, HTTPS (4 connections)", "fbcp-udp": "fbcp, UDP"}
    for key, r in sorted(group_runs(doc["runs"]).items(), key=lambda kv: tool_order(kv[0])):
        lines.append("| " + " | ".join([names.get(key[0], key[0]), key[1], status_cell(r),
                                         fnum(r.get("goodput_mbit"), "{:.0f}"), fnum(r.get("cpu_client_s_per_gib"), "{:.2f}"),
                                         fnum(r.get("cpu_server_s_per_gib"), "{:.2f}"), fnum(r.get("cpu_other_s"))]) + " |")
    na = {r.get("reason") for r in doc["runs"] if r.get("status") == "not_available"}
    for reason in sorted(x for x in na if x):
        lines.append(f"\nNot available: {' '.join(reason.split())}.")
    return "\n".join(lines)


def report(args):
    out = args.out
    wan = [d for d in (load_json(p) for p in sorted(glob.glob(os.path.join(out, "wan-*.json")))) if d]
    fair = [d for d in (load_json(p) for p in sorted(glob.glob(os.path.join(out, "fairness-*.json")))) if d]
    loop = load_json(os.path.join(out, "loopback-efficiency.json"))
    parts = []
    if wan:
        pngs = write_plots(wan, out)
        parts += ["### Goodput in Mbit/s, every case", "",
                  "`*` = stopped at the time limit (goodput from the bytes moved so far); `n/a` = not available "
                  f"in this build; `†` = the relay released more than {LATE_WARN * 100:.0f} % of the run's packets "
                  f"more than 1 ms late, or the hypervisor took more than {STEAL_WARN * 100:.0f} % of the CPUs' time "
                  "(steal) during the run (CPU starved: distrust the figure). With several runs the median "
                  "is taken over those that were not starved, when there is one (both kinds are in the "
                  "JSON and in each case's range).", "", summary_table(wan), ""]
        for png in pngs:
            rel = os.path.relpath(png, os.path.dirname(os.path.abspath(args.docs)) if args.docs else out)
            parts += [f"![goodput against loss]({rel})", ""]
        parts += ["### Each case", ""]
        for d in sorted(wan, key=lambda d: (d["case"]["rate_mbit"], d["case"]["rtt_ms"], d["case"]["loss_pct"])):
            parts += [case_table(d), ""]
    if fair:
        parts += ["### Fairness", ""] + [fairness_table(d) + "\n" for d in fair]
    if loop:
        parts += ["### Loopback efficiency", "", loopback_table(loop), ""]
    text = "\n".join(parts).rstrip() + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    log(f"report: {os.path.join(out, 'report.md')}")
    if args.docs:
        try:
            with open(args.docs) as f:
                doc = f.read()
        except OSError:
            doc = "# Benchmarks\n\n" + DOC_BEGIN + "\n" + DOC_END + "\n"
        if DOC_BEGIN in doc and DOC_END in doc:
            head, rest = doc.split(DOC_BEGIN, 1)
            _, tail = rest.split(DOC_END, 1)
            doc = head + DOC_BEGIN + "\n\n" + text + "\n" + DOC_END + tail
        else:
            doc = doc.rstrip() + "\n\n" + DOC_BEGIN + "\n\n" + text + "\n" + DOC_END + "\n"
        with open(args.docs, "w") as f:
            f.write(doc)
        log(f"updated {args.docs}")
