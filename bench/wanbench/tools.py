"""The measured runs of bench/wan: one run of each tool (fbcp over UDP or HTTPS, curl, aria2c,
iperf3) with a deadline, between two accounting snapshots, and the figures derived from them."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

from .accounting import cpu_times_s, loadavg, tcp_counters, tun_tx_dropped
from .common import (CLIENT_NS, GIB, MIB, MSS, PASSWORD, SERVER_NS, USER, log, make_random_file, ns_cmd,
                     sha256_file, stop_process)


class Bench:
    """One setup (link or loopback) with its server, client directory and accounting."""

    def __init__(self, args, work, ns_client, link, server, cg_client, cg_server, logf):
        self.args, self.work, self.ns, self.link, self.srv = args, work, ns_client, link, server
        self.cgc, self.cgs, self.logf = cg_client, cg_server, logf
        self.cdir = os.path.join(work, "client")
        os.makedirs(self.cdir, exist_ok=True)
        self.counter = 0
        self.files = {}  # size -> (name in docroot, local path, sha256)
        self.iperf_srv = None

    # -- data

    def data_file(self, size):
        if size not in self.files:
            name = f"data-{size // MIB}M.bin"
            local = os.path.join(self.work, name)
            log(f"making a {size // MIB} MiB random file")
            digest = make_random_file(local, size)
            served = os.path.join(self.srv.docroot, name)
            shutil.copy(local, served)
            self.srv.chown_docroot()
            # Settled (an mtime in the past): Apache gives it a strong ETag, as any file at rest has.
            past = time.time() - 3600
            os.utime(served, (past, past))
            self.files[size] = (name, local, digest)
        return self.files[size]

    def spawn_client(self, cmd, **kw):
        return subprocess.Popen(ns_cmd(self.ns, cmd), preexec_fn=self.cgc.join_self, start_new_session=True, **kw)

    def unique(self, stem):
        self.counter += 1
        return f"{stem}-{self.counter}"

    # -- accounting around one run

    def snapshot(self):
        s = {"t": time.monotonic(), "cpu_client": self.cgc.cpu_s(), "cpu_server": self.cgs.cpu_s(),
             "busy": cpu_times_s()[0], "steal": cpu_times_s()[1], "loadavg": loadavg()}
        if self.link is not None:
            s["relay"] = self.link.relay_cpu()
            s["link"] = self.link.stats()
            s["tcp_client"] = tcp_counters(CLIENT_NS)
            s["tcp_server"] = tcp_counters(SERVER_NS)
            s["txdrop_client"] = tun_tx_dropped(CLIENT_NS, "fbc0")
            s["txdrop_server"] = tun_tx_dropped(SERVER_NS, "fbs0")
        return s

    def measured(self, tool, direction, cc, fn):
        """Runs fn() (which returns the tool's own figures) between two snapshots; derives the rest."""
        rec = {"tool": tool, "direction": direction, "cc": cc}
        if tool == "fbcp-udp" and self.srv.udp_reason:
            rec.update({"status": "not_available", "reason": self.srv.udp_reason, "cc": None})
            log(f"  {tool:13s} {direction:4s} not available: {self.srv.udp_reason}")
            return rec
        if self.link is not None and cc:
            self.link.set_cc(cc)
        time.sleep(0.5)  # let the previous run's last packets and FINs cross the link
        a = self.snapshot()
        try:
            rec.update(fn())
        except Exception as e:  # a broken tool must not stop the matrix
            rec.update({"status": "failed", "reason": f"{type(e).__name__}: {e}"[:400]})
        b = self.snapshot()
        if self.link is not None and self.link.relay_cpu() is None:
            # The relay is gone (on this shared machine the OOM killer once took it): every later
            # figure would be wrong, so the case stops here; the runs before it are saved.
            raise RuntimeError(f"the link relay (pid {self.link.pid}) died during {tool} {direction}")
        self.derive(rec, a, b)
        self.srv.clear_uploads()
        for name in os.listdir(self.cdir):
            p = os.path.join(self.cdir, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        g = rec.get("goodput_mbit")
        log(f"  {tool:13s} {direction:4s} {rec.get('status', '?'):9s} "
            + (f"{g:8.2f} Mbit/s" if g is not None else "") + f"  {rec.get('reason', '')}")
        return rec

    def derive(self, rec, a, b):
        wall = rec.get("wall_s")
        moved = rec.get("bytes")
        rec["cpu_client_s"] = round(b["cpu_client"] - a["cpu_client"], 3)
        rec["cpu_server_s"] = round(b["cpu_server"] - a["cpu_server"], 3)
        span = b["busy"] - a["busy"]
        relay = None
        if a.get("relay") is not None and b.get("relay") is not None:
            relay = round(b["relay"] - a["relay"], 3)
        rec["cpu_relay_s"] = relay
        rec["cpu_machine_busy_s"] = round(span, 3)
        rec["cpu_other_s"] = round(max(0.0, span - rec["cpu_client_s"] - rec["cpu_server_s"] - (relay or 0)), 3)
        rec["run_span_s"] = round(b["t"] - a["t"], 3)
        # Time the hypervisor took from the machine's CPUs meanwhile, as a share of what the
        # CPUs had: a starved guest's relay and senders run late, whatever the code does.
        rec["cpu_steal_s"] = round(b["steal"] - a["steal"], 3)
        if rec["run_span_s"] > 0:
            rec["steal_share"] = round(rec["cpu_steal_s"] / (rec["run_span_s"] * (os.cpu_count() or 1)), 4)
        rec["loadavg_before"] = a["loadavg"][0]
        rec["loadavg_after"] = b["loadavg"][0]
        if moved:
            gib = moved / GIB
            rec["cpu_client_s_per_gib"] = round(rec["cpu_client_s"] / gib, 2)
            rec["cpu_server_s_per_gib"] = round(rec["cpu_server_s"] / gib, 2)
        if moved is not None and wall:
            rec["goodput_mbit"] = round(moved * 8 / wall / 1e6, 3)
            if self.link is not None:
                rec["utilisation"] = round(rec["goodput_mbit"] / self.link.rate, 4)
        # The data's sender: the client for an upload, the server for a download.
        sender = "tcp_client" if rec["direction"] == "up" else "tcp_server"
        # Only on the link: on loopback the root namespace's counters include everyone's traffic.
        if self.link is not None and rec["tool"] != "fbcp-udp" and a.get(sender) and b.get(sender):
            segs = b[sender]["RetransSegs"] - a[sender]["RetransSegs"]
            if "retrans_segs" not in rec:  # iperf3 reports its own
                rec["retrans_segs"] = segs
            rec["retrans_bytes"] = rec["retrans_segs"] * MSS
            rec["retrans_source"] = rec.get("retrans_source", "RetransSegs x MSS (sender's namespace)")
        if a.get("link") and b.get("link"):
            d = "up" if rec["direction"] == "up" else "down"
            la, lb = a["link"][d], b["link"][d]
            keys = ["pkts_in", "bytes_in", "loss_pkts", "loss_bytes", "queue_drop_pkts", "queue_drop_bytes",
                    "pkts_out", "bytes_out", "ring_drop_pkts", "write_errors", "late_1ms_pkts"]
            link = {k: lb.get(k, 0) - la.get(k, 0) for k in keys}
            link["max_late_ms_since_start"] = lb.get("max_late_ms")
            link["relay_pinned_cpu"] = self.link.pinned_cpu
            for hist in ("idle_ms_by_gap", "queue_wait_pkts"):  # where the link's capacity went unused
                if isinstance(lb.get(hist), dict):
                    ha = la.get(hist) or {}
                    link[hist] = {k: round(v - ha.get(k, 0), 3) for k, v in lb[hist].items()}
            rev = "down" if d == "up" else "up"
            link["reverse_pkts_in"] = b["link"][rev].get("pkts_in", 0) - a["link"][rev].get("pkts_in", 0)
            link["reverse_loss_pkts"] = b["link"][rev].get("loss_pkts", 0) - a["link"][rev].get("loss_pkts", 0)
            ns_key = "txdrop_client" if d == "up" else "txdrop_server"
            if a.get(ns_key) is not None and b.get(ns_key) is not None:
                link["tun_tx_dropped"] = b[ns_key] - a[ns_key]
            rec["link"] = link
            rec["wire_bytes"] = link["bytes_in"]
            if moved:
                rec["wire_overhead"] = round(link["bytes_in"] / moved - 1, 4)

    # -- waiting with a deadline

    @staticmethod
    def wait_deadline(p, deadline, sig=signal.SIGINT, grace=20):
        """Waits for p until deadline (monotonic); then sends sig to its process group and waits
        grace seconds more, then SIGKILL. Returns (returncode, interrupted, t_stop)."""
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
            return p.returncode, False, time.monotonic()
        except subprocess.TimeoutExpired:
            pass
        t_stop = time.monotonic()
        try:
            os.killpg(p.pid, sig)
        except OSError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait(timeout=10)
        return p.returncode, True, t_stop

    # -- fbcp

    def fbcp_args(self, transport, policy):
        a = [self.args.fbcp, "--cacert", self.srv.ca, "-u", f"{USER}:{PASSWORD}", "--json", "-q"]
        if transport == "udp":
            a += ["--fallback=never", "--policy", policy]
            if self.args.udp_target_rate:
                a += ["--target-rate", self.args.udp_target_rate]
        else:
            a += ["--fallback=force"]
        for opt in self.args.fbcp_opt:
            a += opt.split()
        return a

    def fbcp_start(self, direction, size, transport, policy="fair"):
        name, local, digest = self.data_file(size)
        if direction == "up":
            remote = f"up/{self.unique('fbcp')}.bin"
            cmd = self.fbcp_args(transport, policy) + ["--overwrite", "always", local, f"{self.srv.url}/{remote}"]
            dest = None
        else:
            dest = os.path.join(self.cdir, self.unique("fbcp") + ".bin")
            cmd = self.fbcp_args(transport, policy) + [f"{self.srv.url}/{name}", dest]
        outf = tempfile.TemporaryFile(mode="w+", dir=self.work)
        errf = tempfile.TemporaryFile(mode="w+", dir=self.work)
        t0 = time.monotonic()
        p = self.spawn_client(cmd, stdout=outf, stderr=errf, text=True)
        return {"p": p, "t0": t0, "out": outf, "err": errf, "size": size, "digest": digest, "dest": dest}

    def fbcp_finish(self, h, limit):
        rc, interrupted, t_stop = self.wait_deadline(h["p"], h["t0"] + limit)
        wall = (t_stop if interrupted else time.monotonic()) - h["t0"]
        h["out"].seek(0)
        h["err"].seek(0)
        events = []
        for line in h["out"]:
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        err = h["err"].read().strip()
        done = [e for e in events if e.get("event") == "done"]
        prog = [e for e in events if e.get("event") == "progress"]
        errs = [e for e in events if e.get("event") == "error"]
        summ = [e for e in events if e.get("event") == "summary"]
        args = h["p"].args
        rec = {"file_bytes": h["size"], "exit_code": rc, "wall_s": round(wall, 3), "time_limit_s": limit,
               "transport": "https" if "--fallback=force" in args else "udp",
               "fbcp_options": [a for a in args[args.index(self.args.fbcp) + 5:] if not a.startswith(("/", "https:"))]}
        # A compact trace (seconds, bytes at the destination, smoothed rate): shows stalls and ramps.
        rec["progress"] = [[e.get("t"), e.get("position"), e.get("rate_bps")] for e in prog if "t" in e]
        trans = [e.get("transport") for e in events if e.get("event") == "transport"]
        if trans:
            rec["transport_events"] = trans
        if done and rc == 0:
            rec.update(status="ok", complete=True, bytes=h["size"], tool_seconds=done[-1].get("seconds"),
                       verified=done[-1].get("sha256") == h["digest"])
            if not rec["verified"]:
                rec.update(status="failed", reason="SHA-256 differs")
            for k in ("bytes_http", "bytes_udp", "retransmitted_bytes", "bytes_retransmitted"):
                if k in done[-1]:
                    rec["fbcp_" + k] = done[-1][k]
        else:
            moved = max([e.get("position", e.get("bytes", 0)) or 0 for e in prog] + [0])
            rec.update(status="partial" if interrupted else "failed", complete=False, bytes=moved,
                       bytes_source="last --json progress position")
            if interrupted:
                rec["reason"] = f"stopped at the {limit:g} s time limit"
            else:
                rec["reason"] = (errs[-1].get("message") if errs else err[-300:]) or f"exit {rc}"
        if summ:
            s = summ[-1]
            for k in ("retransmitted_bytes", "bytes_retransmitted", "bytes_udp", "bytes_http"):
                if k in s:
                    rec["fbcp_summary_" + k] = s[k]
        # fbcp is the sender of an upload only: a download's bytes_retransmitted counts duplicates
        # received (run_fbcp takes the sender's figure from udpd's log instead).
        for k in ("fbcp_bytes_retransmitted", "fbcp_summary_bytes_retransmitted"):
            if k in rec and h["dest"] is None:
                rec["retrans_bytes"] = rec[k]
                rec["retrans_source"] = "fbcp --json"
        h["out"].close()
        h["err"].close()
        return rec

    def run_fbcp(self, direction, size, transport, policy="fair"):
        if transport == "udp" and self.srv.udp_reason:
            return {"status": "not_available", "reason": self.srv.udp_reason, "file_bytes": size}
        log_path = os.path.join(self.srv.work, "udpd.log")
        log_off = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        h = self.fbcp_start(direction, size, transport, policy)
        rec = self.fbcp_finish(h, self.args.time_limit)
        if transport == "udp" and direction == "down" and os.path.exists(log_path):
            # fbcp's bytes_retransmitted of a download counts duplicates received; what the sender
            # sent again is in udpd's log line of the finished download.
            with open(log_path, errors="replace") as f:
                f.seek(log_off)
                found = re.findall(r"UD00027: .*complete: (\d+) bytes sent, (\d+) resent", f.read())
            if found:
                rec["udpd_bytes_sent"], rec["retrans_bytes"] = int(found[-1][0]), int(found[-1][1])
                rec["retrans_source"] = "udpd log: resent bytes of the download (UD00027)"
        return rec

    # -- curl

    def curl_base(self, limit):
        return ["curl", "-sS", "--cacert", self.srv.ca, "-u", f"{USER}:{PASSWORD}", "--max-time", f"{limit:g}"]

    def curl_down_start(self, size, path_kind="files", limit=None):
        name, _, digest = self.data_file(size)
        dest = os.path.join(self.cdir, self.unique("curl") + ".bin")
        url = f"{self.srv.url}/files/{name}" if path_kind == "files" else f"{self.srv.origin}/static/{name}"
        cmd = self.curl_base(limit or self.args.time_limit) + ["-o", dest, "-w",
                                                      "%{http_code} %{size_download} %{time_total} %{exitcode}", url]
        t0 = time.monotonic()
        p = self.spawn_client(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return {"p": p, "t0": t0, "dest": dest, "size": size, "digest": digest}

    def curl_down_finish(self, h, limit):
        rc, interrupted, t_stop = self.wait_deadline(h["p"], h["t0"] + limit + 15, sig=signal.SIGTERM)
        wall = (t_stop if interrupted else time.monotonic()) - h["t0"]
        out, err = h["p"].stdout.read(), h["p"].stderr.read()
        parts = out.split()
        rec = {"file_bytes": h["size"], "exit_code": rc, "wall_s": round(wall, 3), "time_limit_s": limit}
        got = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        code = parts[0] if parts else "?"
        rec["bytes"] = got
        if rc == 0 and code == "200" and got == h["size"]:
            rec.update(status="ok", complete=True, verified=sha256_file(h["dest"]) == h["digest"])
            if not rec["verified"]:
                rec.update(status="failed", reason="SHA-256 differs")
        elif rc == 28:
            rec.update(status="partial", complete=False, reason=f"stopped at the {limit:g} s time limit")
        else:
            rec.update(status="failed", complete=False, reason=f"HTTP {code}, curl exit {rc}: {err.strip()[-200:]}")
        return rec

    def run_curl_down(self, size, path_kind="files"):
        return self.curl_down_finish(self.curl_down_start(size, path_kind), self.args.time_limit)

    def curl_api(self, method, path, body, timeout=60):
        cmd = ["curl", "-sS", "--cacert", self.srv.ca, "-u", f"{USER}:{PASSWORD}", "--max-time", str(timeout),
               "-X", method, "-w", "\n%{http_code}"]
        if body is not None:
            cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        p = self.spawn_client(cmd + [f"{self.srv.url}/{path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        out, err = p.communicate(timeout=timeout + 15)
        text, _, code = out.rpartition("\n")
        try:
            doc = json.loads(text) if text.strip() else {}
        except ValueError:
            doc = {"raw": text[:200]}
        return code.strip(), doc, err

    def run_curl_up(self, size):
        """The whole upload the way any HTTP client can drive the API: POST sessions, one PUT of
        the whole file with Content-Range, POST commit (the server hashes the file). Timed from the
        first request to the commit's answer."""
        limit = self.args.time_limit
        _, local, digest = self.data_file(size)
        remote = f"up/{self.unique('curl')}.bin"
        t0 = time.monotonic()
        code, doc, err = self.curl_api("POST", "sessions", {"direction": "upload", "path": remote, "size": size,
                                                            "sha256": digest, "overwrite": "always"})
        if code not in ("200", "201") or "id" not in doc:
            return {"status": "failed", "reason": f"POST sessions: HTTP {code} {doc} {err.strip()[-200:]}",
                    "file_bytes": size}
        sid = doc["id"]
        left = max(1.0, limit - (time.monotonic() - t0))
        cmd = self.curl_base(left) + ["-T", local, "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
                                      "-H", f"Content-Range: bytes 0-{size - 1}/{size}",
                                      "-o", os.path.join(self.cdir, "put.answer"),
                                      "-w", "%{http_code} %{size_upload} %{time_total} %{exitcode}",
                                      f"{self.srv.url}/sessions/{sid}/data"]
        p = self.spawn_client(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rc, interrupted, t_stop = self.wait_deadline(p, t0 + limit + 15, sig=signal.SIGTERM)
        out, perr = p.stdout.read(), p.stderr.read()
        parts = out.split()
        code = parts[0] if parts else "?"
        rec = {"file_bytes": size, "exit_code": rc, "time_limit_s": limit}
        if rc == 0 and code == "200":
            ccode, cdoc, cerr = self.curl_api("POST", f"sessions/{sid}/commit", {"sha256": digest}, timeout=300)
            wall = time.monotonic() - t0
            if ccode == "200" and cdoc.get("state") == "done":
                rec.update(status="ok", complete=True, bytes=size, wall_s=round(wall, 3), verified=True)
            else:
                rec.update(status="failed", complete=False, bytes=0, wall_s=round(wall, 3),
                           reason=f"commit: HTTP {ccode} {cdoc} {cerr.strip()[-200:]}")
            return rec
        wall = (t_stop if interrupted else time.monotonic()) - t0
        # What the server has, not what curl pushed into its socket buffer.
        gcode, gdoc, _ = self.curl_api("GET", f"sessions/{sid}", None)
        got = gdoc.get("received_bytes", 0) if gcode == "200" else 0
        self.curl_api("DELETE", f"sessions/{sid}", None)
        rec.update(bytes=got, complete=False, wall_s=round(min(wall, limit), 3),
                   bytes_source="server's received_bytes (whole chunks)")
        if rc == 28:
            rec.update(status="partial", reason=f"stopped at the {limit:g} s time limit", wall_s=round(limit, 3))
        else:
            rec.update(status="failed", reason=f"PUT: HTTP {code}, curl exit {rc}: {perr.strip()[-200:]}")
        return rec

    # -- aria2c

    def run_aria2c(self, size, conns=16):
        if shutil.which("aria2c") is None:
            return {"status": "not_available", "reason": "aria2c not installed (apt-get install aria2)",
                    "file_bytes": size}
        limit = self.args.time_limit
        name, _, digest = self.data_file(size)
        outname = self.unique("aria2c") + ".bin"
        dest = os.path.join(self.cdir, outname)
        cmd = ["aria2c", f"-x{conns}", f"-s{conns}", "-k1M", "--file-allocation=none", "--allow-overwrite=true",
               "--auto-file-renaming=false", f"--ca-certificate={self.srv.ca}", f"--http-user={USER}",
               f"--http-passwd={PASSWORD}", "-d", self.cdir, "-o", outname, "--summary-interval=0",
               "--console-log-level=warn", "--max-tries=5", f"{self.srv.url}/files/{name}"]
        t0 = time.monotonic()
        p = self.spawn_client(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        rc, interrupted, t_stop = self.wait_deadline(p, t0 + limit)
        wall = (t_stop if interrupted else time.monotonic()) - t0
        out = p.stdout.read()
        rec = {"file_bytes": size, "exit_code": rc, "wall_s": round(wall, 3), "time_limit_s": limit,
               "connections": conns}
        if rc == 0 and not interrupted and os.path.exists(dest) and os.path.getsize(dest) == size:
            rec.update(status="ok", complete=True, bytes=size, verified=sha256_file(dest) == digest)
            if not rec["verified"]:
                rec.update(status="failed", reason="SHA-256 differs")
        else:
            # Written without preallocation, so the blocks allocated are the bytes received.
            got = min(size, os.stat(dest).st_blocks * 512) if os.path.exists(dest) else 0
            rec.update(bytes=got, complete=False, bytes_source="allocated blocks of the sparse output file",
                       status="partial" if interrupted else "failed",
                       reason=f"stopped at the {limit:g} s time limit" if interrupted else out.strip()[-300:])
        return rec

    # -- iperf3

    def iperf_server(self):
        if self.iperf_srv is None or self.iperf_srv.poll() is not None:
            ip = self.srv.ip
            self.iperf_srv = subprocess.Popen(ns_cmd(self.srv.ns, ["iperf3", "-s", "-B", ip, "-p", "5299"]),
                                              preexec_fn=self.cgs.join_self, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL)
            time.sleep(0.5)

    def stop_iperf(self):
        if self.iperf_srv is not None:
            stop_process(self.iperf_srv)
            self.iperf_srv = None

    def run_iperf3(self, cc, seconds=None, nbytes=None):
        self.iperf_server()
        cmd = ["iperf3", "-c", self.srv.ip, "-p", "5299", "-J", "-C", cc]
        cmd += ["-n", str(nbytes)] if nbytes else ["-t", f"{seconds:g}"]
        t0 = time.monotonic()
        p = self.spawn_client(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        limit = (seconds or self.args.time_limit) + 30
        rc, interrupted, _ = self.wait_deadline(p, t0 + limit)
        wall = time.monotonic() - t0
        out = p.stdout.read()
        try:
            doc = json.loads(out)
            end = doc["end"]
            recv, sent = end["sum_received"], end["sum_sent"]
        except (ValueError, KeyError):
            return {"status": "failed", "reason": f"iperf3 exit {rc}: {out.strip()[-300:]}", "wall_s": round(wall, 3)}
        return {"status": "ok", "complete": True, "bytes": recv["bytes"], "wall_s": round(recv["seconds"], 3),
                "process_wall_s": round(wall, 3), "retrans_segs": sent.get("retransmits", 0),
                "retrans_source": "iperf3 retransmits x MSS", "exit_code": rc,
                "iperf3_sender_cpu_pct": end.get("cpu_utilization_percent", {}).get("host_total"),
                "iperf3_receiver_cpu_pct": end.get("cpu_utilization_percent", {}).get("remote_total")}

    # -- one tool, by name

    def tool_run(self, tool, direction, size):
        cc_default = self.args.cc_default
        if tool == "fbcp-udp":
            return self.measured(tool, direction, None, lambda: self.run_fbcp(direction, size, "udp", "fair"))
        if tool == "fbcp-https":
            return self.measured(tool, direction, cc_default, lambda: self.run_fbcp(direction, size, "https"))
        if tool in ("curl-cubic", "curl-bbr"):
            cc = tool.split("-")[1]
            fn = (lambda: self.run_curl_up(size)) if direction == "up" else (lambda: self.run_curl_down(size))
            return self.measured(tool, direction, cc, fn)
        if tool == "aria2c-16":
            return self.measured(tool, direction, cc_default, lambda: self.run_aria2c(size))
        if tool in ("iperf3-cubic", "iperf3-bbr"):
            cc = tool.split("-")[1]
            return self.measured(tool, direction, cc, lambda: self.run_iperf3(cc, seconds=self.args.iperf_seconds))
        raise ValueError(tool)
