#!/usr/bin/env python3
"""systemd integration, end to end.

1. The units in systemd/ pass `systemd-analyze verify` with no output at all
   (and a deliberately broken unit does not, so the check can fail), and
   carry the settings the operations README promises.
2. Under `systemd-socket-activate` the daemon serves on the socket it was
   passed (its own --port is a different, unused port).
3. With NOTIFY_SOCKET pointing at a datagram socket made here, the daemon
   sends READY=1 only once /health answers 200, WATCHDOG=1 at half of
   WATCHDOG_USEC, and STOPPING=1 on SIGTERM, then exits 0.

Parts 2 and 3 need the daemon (build/src/llorch-cpud) and the stories260k
model; without them the test fails (part 1 still runs and reports).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import BUILD, SHARED, SOURCE as SRC, binary, check, failures, free_port, http_get, model_path  # noqa: E402,F401

DAEMON = binary()
MODEL = model_path()


def daemon_args(port):
    return [DAEMON, "--model", MODEL, "--dtype", "f32", "--port", str(port),
            "--worker-id", "sd-test", "--callback-url", "http://localhost:9999/ready",
            "--log-format", "json", "--threads", "1"]


# ---- 1. units ---------------------------------------------------------------

def unit_text(name):
    with open(os.path.join(SRC, "systemd", name)) as f:
        return f.read()


def settings(text):
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def verify(paths):
    r = subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True,
                       timeout=120)
    return r.returncode, (r.stdout + r.stderr).strip()


def test_units_verify():
    if not shutil.which("systemd-analyze"):
        check(False, "systemd-analyze not installed (scripts/setup-deps installs systemd)")
        return
    exe = DAEMON if os.access(DAEMON, os.X_OK) else "/bin/true"
    with tempfile.TemporaryDirectory() as d:
        names = {"llorch-cpud.service": "llorch-cpud.service",
                 "llorch-cpud.socket": "llorch-cpud.socket",
                 "llorch-cpud@.service": "llorch-cpud@node0.service"}
        paths = []
        for src, dst in names.items():
            text = unit_text(src).replace("/usr/local/bin/llorch-cpud", exe)
            # the commented credential lines must stay valid when uncommented
            text = text.replace("#LoadCredential=", "LoadCredential=")
            text = text.replace("#Environment=LLORCH_API_KEY_FILE", "Environment=LLORCH_API_KEY_FILE")
            p = os.path.join(d, dst)
            with open(p, "w") as f:
                f.write(text)
            paths.append(p)
        rc, out = verify(paths)
        check(rc == 0 and out == "", f"systemd-analyze verify: rc={rc} output={out!r}")
        # the check itself can fail
        bad = os.path.join(d, "broken.service")
        with open(bad, "w") as f:
            f.write("[Service]\nType=notify\nExecStart=/bin/true\nWatchdogSecs=30\n")
        rc, out = verify([bad])
        check("WatchdogSecs" in out, f"verify did not flag a bad key: {out!r}")


def test_units_settings():
    svc = settings(unit_text("llorch-cpud.service"))
    tpl = settings(unit_text("llorch-cpud@.service"))
    sock = settings(unit_text("llorch-cpud.socket"))
    for name, s in (("llorch-cpud.service", svc), ("llorch-cpud@.service", tpl)):
        def has(k, v=None):
            ok = k in s and (v is None or v in s[k])
            check(ok, f"{name}: {k}={v or '…'}")
        has("Type", "notify")
        has("WatchdogSec")
        has("Restart", "on-failure")
        has("DynamicUser", "yes")
        has("ProtectSystem", "strict")
        has("PrivateTmp", "yes")
        has("NoNewPrivileges", "yes")
        check(s.get("MemoryDenyWriteExecute", ["no"]) == ["no"],
              f"{name}: MemoryDenyWriteExecute must stay off (oneDNN JIT)")
        check(int(s.get("LimitNOFILE", ["0"])[0]) >= 65536, f"{name}: LimitNOFILE high")
        check("oneDNN" in unit_text(name), f"{name}: says why MemoryDenyWriteExecute is off")
    check("/etc/llorch-cpud/%i.conf" in tpl.get("EnvironmentFile", []),
          "template: EnvironmentFile=/etc/llorch-cpud/%i.conf")
    check("CPUAffinity" in unit_text("llorch-cpud@.service") and
          "NUMAPolicy" in unit_text("llorch-cpud.service"), "CPU/NUMA hints documented")
    check(len(sock.get("ListenStream", [])) == 1, "socket: exactly one ListenStream")


# ---- 2. socket activation ----------------------------------------------------

def test_socket_activation():
    port = free_port()
    unused = free_port()
    env = dict(os.environ)
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID"):
        env.pop(k, None)
    p = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{port}",
                          *daemon_args(unused)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        # systemd-socket-activate starts the daemon on the first connection;
        # the connection waits in the backlog while the model loads.
        deadline = time.time() + 60
        status, body = 0, b""
        while time.time() < deadline:
            try:
                status, body = http_get(port, "/health", timeout=30)
                if status == 200:
                    break
            except (ConnectionError, OSError):
                pass
            time.sleep(0.1)
        check(status == 200, f"socket-activated daemon /health: {status} {body[:200]!r}")
        if status == 200:
            check(json.loads(body).get("status") == "healthy", f"health body {body[:200]!r}")
        try:
            with socket.create_connection(("127.0.0.1", unused), timeout=1):
                check(False, "--port was bound although a socket was passed")
        except OSError:
            pass
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
    check(p.returncode == 0, f"socket-activated daemon exit {p.returncode}: {err[-2000:]}")


# ---- 3. notifications and watchdog -------------------------------------------

def test_notify_watchdog_stopping():
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "notify")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(path)
        ns.settimeout(0.1)
        env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        for k in ("WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
            env.pop(k, None)
        p = subprocess.Popen(daemon_args(port), env=env, stderr=subprocess.PIPE, text=True)
        msgs = []
        ready_at = None
        health_at_ready = None
        try:
            deadline = time.time() + 60
            while time.time() < deadline and ready_at is None:
                try:
                    m = ns.recv(4096).decode()
                except socket.timeout:
                    if p.poll() is not None:
                        break
                    continue
                msgs.append(m)
                if "READY=1" in m.split("\n"):
                    ready_at = time.time()
                    # READY comes after listen: /health answers at once
                    health_at_ready = http_get(port, "/health")[0]
            check(ready_at is not None, f"no READY=1 (got {msgs})")
            check(health_at_ready == 200, f"/health at READY: {health_at_ready}")
            ready = [m for m in msgs if "READY=1" in m]
            if ready:
                check(f"MAINPID={p.pid}" in ready[0] and "STATUS=" in ready[0],
                      f"READY carries STATUS and MAINPID: {ready[0]!r}")
            # watchdog: every 200 ms; collect for 1.1 s
            t_end = time.time() + 1.1
            pings = []
            while time.time() < t_end:
                try:
                    m = ns.recv(4096).decode()
                except socket.timeout:
                    continue
                msgs.append(m)
                if m == "WATCHDOG=1":
                    pings.append(time.time())
            check(4 <= len(pings) <= 8, f"WATCHDOG=1 pings in 1.1 s at 200 ms: {len(pings)}")
            p.send_signal(signal.SIGTERM)
            stopping = False
            t_end = time.time() + 30
            while time.time() < t_end and not stopping:
                try:
                    m = ns.recv(4096).decode()
                except socket.timeout:
                    if p.poll() is not None:
                        # drain what is left
                        ns.settimeout(0)
                        try:
                            while True:
                                m = ns.recv(4096).decode()
                                msgs.append(m)
                                stopping = stopping or "STOPPING=1" in m.split("\n")
                        except (BlockingIOError, socket.timeout):
                            pass
                        break
                    continue
                msgs.append(m)
                stopping = "STOPPING=1" in m.split("\n")
            check(stopping, f"no STOPPING=1 after SIGTERM (got {msgs[-5:]})")
            try:
                _, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            check(p.returncode == 0, f"exit status after SIGTERM {p.returncode}: {err[-2000:]}")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            ns.close()


def main():
    test_units_verify()
    test_units_settings()
    if os.access(DAEMON, os.X_OK) and os.path.exists(MODEL):
        if shutil.which("systemd-socket-activate"):
            test_socket_activation()
        else:
            check(False, "systemd-socket-activate not installed")
        test_notify_watchdog_stopping()
    else:
        check(False, "daemon parts need build/src/llorch-cpud and stories260k.gguf")
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
