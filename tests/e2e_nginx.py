#!/usr/bin/env python3
"""Scaling out behind nginx: the README's example config (proxy_buffering off,
HTTP/1.1 keep-alive upstream, long read timeout) on 127.0.0.1 in front of two
workers.

- Streams through nginx are well-formed (started → token* → end) and spread
  over both workers (round robin, visible in each worker's /metrics).
- Frames are streamed as they are written: with --batch-window-ms 1500 the
  first step waits 1.5 s, yet the stream's first bytes (the `started` frame
  or a `: ping` comment every 100 ms) reach the client through nginx long
  before its end. (nginx 1.22 also forwards promptly with buffering on while
  the client keeps up; `proxy_buffering off` matters for slow clients, whose
  backpressure then reaches the worker's --sse-outbox-bytes bound instead of
  being spooled by nginx.)
- /health through nginx answers 200.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import BUILD, SHARED, binary, check, failures, free_port, http_get, model_path  # noqa: E402,F401

DAEMON = binary()
MODEL = model_path()
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


# The same server block as README.md's "Operations" section, with ports filled in.
NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream llorch {{
        server 127.0.0.1:{w1} max_fails=0;
        server 127.0.0.1:{w2} max_fails=0;
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 2m;
        location / {{
            proxy_pass http://llorch;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


class Daemon:
    def __init__(self, port, wid):
        self.port = port
        self.p = subprocess.Popen(
            [DAEMON, "--model", MODEL, "--dtype", "f32", "--port", str(port), "--threads", "1",
             "--worker-id", wid, "--callback-url", "http://localhost:9999/ready",
             "--batch-window-ms", "1500", "--ping-interval-ms", "100", "--log-level", "warn"],
            stderr=subprocess.DEVNULL)

    def wait_healthy(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if http_get(self.port, "/health")[0] == 200:
                    return True
            except OSError:
                pass
            if self.p.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


def stream(port, job_id, max_tokens):
    """POST /execute through nginx; returns (frames, t_first_byte, t_end, headers)."""
    body = json.dumps({"job_id": job_id, "prompt": "Once upon a time", "max_tokens": max_tokens,
                       "temperature": 0, "seed": 1})
    t0 = time.time()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", "/execute", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    headers = {k.lower(): v for k, v in r.getheaders()}
    first = None
    data = b""
    while True:
        chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
        if not chunk:
            break
        if first is None:
            first = time.time() - t0
        data += chunk
    end = time.time() - t0
    c.close()
    frames = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        if block.startswith(":"):
            frames.append(("comment", block))
            continue
        ev = re.search(r"^event: (\S+)$", block, re.M)
        dt = re.search(r"^data: (.*)$", block, re.M)
        frames.append((ev.group(1) if ev else None, json.loads(dt.group(1)) if dt else None))
    return r.status, frames, first, end, headers


def requests_on(port):
    _, text = http_get(port, "/metrics")
    n = 0
    for line in text.decode().splitlines():
        if line.startswith('llorch_http_requests_total{endpoint="/execute",status="200"}'):
            n += int(float(line.split()[-1]))
    return n


def main():
    if not (os.access(DAEMON, os.X_OK) and os.path.exists(MODEL)):
        print("FAIL: needs build/src/llorch-cpud and stories260k.gguf")
        return 1
    if not os.access(NGINX, os.X_OK):
        print("FAIL: nginx not installed (scripts/setup-deps installs it)")
        return 1
    w1, w2, port = free_port(), free_port(), free_port()
    d1, d2 = Daemon(w1, "w1"), Daemon(w2, "w2")
    tmp = tempfile.mkdtemp(prefix="llorch-nginx-")
    os.chmod(tmp, 0o755)
    user = "user root root;" if os.geteuid() == 0 else ""
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(d=tmp, w1=w1, w2=w2, port=port, user=user))
    ngx = None
    try:
        check(d1.wait_healthy() and d2.wait_healthy(), "both workers healthy")
        ngx = subprocess.Popen([NGINX, "-p", tmp, "-c", os.path.join(tmp, "nginx.conf")],
                               stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 10
        status = 0
        while time.time() < deadline and status != 200:
            try:
                status = http_get(port, "/health")[0]
            except OSError:
                time.sleep(0.05)
        check(status == 200, f"/health through nginx: {status}")

        # 1. streaming, not buffering: first bytes long before the end
        st, frames, first, end, headers = stream(port, "slow-1", 8)
        check(st == 200, f"status {st}")
        check(headers.get("content-type", "").startswith("text/event-stream"),
              f"content type {headers.get('content-type')}")
        check(first is not None and end - first >= 1.0,
              f"first bytes at {first} s, end at {end:.2f} s: nginx buffered the stream")
        events = [f[0] for f in frames if f[0] != "comment"]
        check(events[:1] == ["started"] and events[-1:] == ["end"] and
              all(e == "token" for e in events[1:-1]), f"frame order {events}")

        # 2. both workers serve (round robin), streams intact
        results = []

        def go(i):
            results.append(stream(port, f"rr-{i}", 4))

        threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for st, frames, _, _, _ in results:
            events = [f[0] for f in frames if f[0] != "comment"]
            check(st == 200 and events[0] == "started" and events[-1] == "end",
                  f"stream through nginx: {st} {events}")
            end_frame = [f[1] for f in frames if f[0] == "end"]
            check(end_frame and end_frame[0].get("tokens_out") == 4, f"end frame {end_frame}")
        n1, n2 = requests_on(w1), requests_on(w2)
        check(n1 >= 1 and n2 >= 1 and n1 + n2 == 5, f"requests per worker {n1} + {n2}")
    finally:
        if ngx is not None:
            ngx.send_signal(signal.SIGQUIT)
            try:
                _, err = ngx.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                ngx.kill()
                _, err = ngx.communicate()
            if failures:
                print(err[-2000:])
                try:
                    print(open(os.path.join(tmp, "error.log")).read()[-2000:])
                except OSError:
                    pass
        rc1, rc2 = d1.stop(), d2.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    check(rc1 == 0 and rc2 == 0, f"worker exit status {rc1}, {rc2}")
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
