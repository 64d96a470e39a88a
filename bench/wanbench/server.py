"""The server side of bench/wan: a private Apache with mod_fallback (scripts/devserver) and
udpd beside it, from snapshots of the built binaries."""

import os
import re
import shutil
import subprocess
import time

from .common import (DEVSERVER, MODULE_BUILT, PASSWORD, SERVER_IP, UDPD_BUILT, USER, ns_cmd, run,
                     stop_process)


class Server:
    """A private Apache with mod_fallback (scripts/devserver), inside the server namespace for the
    WAN cases (it listens on 198.18.0.2 through --extra-conf), in the root namespace for loopback.
    Optionally udpd beside it (when fbcp, the snapshot the runs use, has a UDP transport). All
    of it in the server cgroup."""

    def __init__(self, work, cgroup, ns, ip, port, udp_port, logf, fbcp):
        self.work, self.cg, self.ns, self.ip, self.port, self.udp_port = work, cgroup, ns, ip, port, udp_port
        self.fbcp = fbcp
        self.dir = os.path.join(work, "ds")
        self.docroot = os.path.join(self.dir, "docroot")
        self.ca = os.path.join(self.dir, "cert.pem")
        self.logf = logf
        self.udpd = None
        self.udp_reason = None
        self.module = None

    @property
    def origin(self):
        return f"https://{self.ip}:{self.port}"

    @property
    def url(self):
        return f"{self.origin}/fallback"

    def _spawn(self, cmd, **kw):
        return subprocess.Popen(ns_cmd(self.ns, cmd), preexec_fn=self.cg.join_self, **kw)

    def start(self):
        os.makedirs(self.docroot, exist_ok=True)
        os.chmod(self.work, 0o755)
        # Snapshot the module: a rebuild in the tree during the run must not change what is measured.
        bindir = os.path.join(self.work, "bin")
        os.makedirs(bindir, exist_ok=True)
        self.module = os.path.join(bindir, "mod_fallback.so")
        shutil.copy(MODULE_BUILT, self.module)
        # Our own certificate, valid for the namespace address too (devserver keeps an existing one).
        key, cert = os.path.join(self.dir, "key.pem"), self.ca
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=localhost",
             "-addext", f"subjectAltName=DNS:localhost,IP:127.0.0.1,IP:{SERVER_IP}",
             "-keyout", key, "-out", cert])
        os.chmod(key, 0o600)
        common = ["--dir", self.dir, "--https-port", str(self.port), "--udp-port", str(self.udp_port),
                  "--user", USER, "--password", PASSWORD, "--module", self.module, "--quiet"]
        run([DEVSERVER, "conf"] + common)
        # udpd must be reachable on the address the client sees.
        xml = os.path.join(self.dir, "bench-fallback.xml")
        with open(os.path.join(self.dir, "fallback.xml")) as f:
            text = f.read()
        text = re.sub(r"<bind_address>[^<]*</bind_address>", f"<bind_address>{self.ip}</bind_address>", text)
        with open(xml, "w") as f:
            f.write(text)
        os.chmod(xml, 0o644)
        extra = []
        if self.ip != "127.0.0.1":
            conf = os.path.join(self.work, "bench-listen.conf")
            with open(conf, "w") as f:
                f.write(f"""# bench/wan: the same API on the server namespace's address
Listen {self.ip}:{self.port} https
<VirtualHost {self.ip}:{self.port}>
    ServerName {self.ip}
    SSLEngine on
    SSLCertificateFile "{cert}"
    SSLCertificateKeyFile "{key}"
    DocumentRoot "{self.docroot}"
    Alias /static "{self.docroot}"
    <Location /fallback>
        SetHandler fallback
        AuthType Basic
        AuthName fallback
        AuthBasicProvider file
        AuthUserFile {self.dir}/htpasswd
        Require valid-user
        LimitRequestBody 0
    </Location>
</VirtualHost>
""")
            extra = ["--extra-conf", conf]
        p = self._spawn([DEVSERVER, "start"] + common + ["--fallback-xml", xml] + extra,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = p.communicate(timeout=120)
        self.logf.write(out)
        if p.returncode != 0:
            raise RuntimeError(f"devserver start failed: {out.strip()[-500:]}")
        self.start_udpd(xml)

    def start_udpd(self, xml):
        """udpd beside Apache, if there is one and fbcp has a UDP transport; else the reason why not."""
        ver = run([self.fbcp, "--version"], check=False, quiet=True).stdout
        m = re.search(r"transports:\s*([^)]*)", ver)
        if not m or "udp" not in m.group(1):
            self.udp_reason = f"fbcp has no UDP transport ({ver.strip()})"
            return
        if not os.access(UDPD_BUILT, os.X_OK):
            self.udp_reason = "udpd not built (udpd/udpd)"
            return
        udpd = os.path.join(self.work, "bin", "udpd")
        shutil.copy(UDPD_BUILT, udpd)
        env = dict(os.environ, FB_SCHEMA=os.path.join(self.dir, "fallback.xsd"))
        errf = open(os.path.join(self.work, "udpd.log"), "w")
        cmd = [udpd, "-c", xml]
        if os.geteuid() == 0 and run(["getent", "passwd", "www-data"], check=False, quiet=True).returncode == 0:
            cmd += ["--user", "www-data"]  # as Apache (devserver runs it as www-data): one owner for the table
        self.udpd = self._spawn(cmd, stdout=errf, stderr=subprocess.STDOUT, env=env)
        time.sleep(1.0)
        if self.udpd.poll() is not None:
            errf.flush()
            with open(os.path.join(self.work, "udpd.log")) as f:
                lines = f.read().strip().splitlines()
            errors = [x for x in lines if " error " in x] or lines[-1:]
            self.udp_reason = f"udpd exited at once ({' '.join(errors)[-300:]})"
            self.udpd = None

    def stop(self):
        if self.udpd is not None:
            stop_process(self.udpd)
            self.udpd = None
        run([DEVSERVER, "stop", "--dir", self.dir, "--clean", "--quiet"], check=False, quiet=True)

    def chown_docroot(self):
        run(["chown", "-R", "www-data:", self.docroot], check=False, quiet=True)

    def clear_uploads(self):
        shutil.rmtree(os.path.join(self.docroot, "up"), ignore_errors=True)
