#!/usr/bin/env python3
"""Pool-manager callback and heartbeats, end to end: the real daemon against a
real HTTP receiver started here on 127.0.0.1.

- The receiver fails the first two ready callbacks (503, then a dropped
  connection); the daemon retries with exponential back-off and the third
  attempt registers it. Every payload carries the contract's fields with the
  worker's real port; the first one arrives only once the worker accepts
  connections (listen → READY → callback).
- Heartbeats then reach <root>/v1/heartbeat every --heartbeat-interval.
- /health reports the pool-manager state; /metrics counts the attempts.
- An unreachable pool manager never stops serving: the worker answers /health
  200 and reports "failed" after its bounded retries.
- localhost:9999 is test mode: no callback, state "disabled".
- /metrics of the live daemon passes `promtool check metrics` and, with an
  API key configured, needs the bearer token like the rest of the API.
"""
import http.server
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


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Receiver:
    """A pool manager: records every POST; answers from a script per path
    (status code, or 'drop' to close the connection without answering)."""

    def __init__(self, script, worker_port):
        self.script = script
        self.worker_port = worker_port
        self.requests = []
        self.lock = threading.Lock()
        rx = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                with rx.lock:
                    k = sum(1 for r in rx.requests if r["path"] == self.path)
                    rx.requests.append({
                        "path": self.path, "t": time.time(), "body": body,
                        "content_type": self.headers.get("Content-Type"),
                        "worker_listening": port_open(rx.worker_port),
                    })
                answers = rx.script.get(self.path.split("?")[0], [200])
                answer = answers[min(k, len(answers) - 1)]
                if answer == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of(self, path):
        with self.lock:
            return [r for r in self.requests if r["path"].split("?")[0] == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Daemon:
    def __init__(self, port, *extra):
        self.port = port
        self.log = []
        self.p = subprocess.Popen(
            [DAEMON, "--model", MODEL, "--dtype", "f32", "--port", str(port), "--threads", "1",
             "--worker-id", "mgr-test", "--log-format", "json", *extra],
            stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stderr:
            self.log.append(line)

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

    def health(self):
        return json.loads(http_get(self.port, "/health")[1])

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.reader.join(timeout=5)
        return self.p.returncode


def wait_for(pred, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def pm_state(h):
    pm = h.get("pool_manager")
    return pm.get("status") if isinstance(pm, dict) else pm


def test_retries_payload_heartbeats():
    port = free_port()
    rx = Receiver({"/v1/workers/ready": [503, "drop", 200], "/v1/heartbeat": [200]}, port)
    d = Daemon(port, "--callback-url", f"http://127.0.0.1:{rx.port}/v1/workers/ready?pool=p1",
               "--callback-backoff-ms", "150", "--callback-max-retries", "4",
               "--heartbeat-interval", "1")
    try:
        check(d.wait_healthy(), "daemon became healthy")
        check(wait_for(lambda: len(rx.of("/v1/workers/ready")) >= 3, 30),
              f"three callback attempts (got {len(rx.of('/v1/workers/ready'))})")
        calls = rx.of("/v1/workers/ready")
        for i, c in enumerate(calls):
            check(c["path"] == "/v1/workers/ready?pool=p1", f"callback path {c['path']}")
            check(c["content_type"] == "application/json", f"content type {c['content_type']}")
            check(c["worker_listening"], f"callback {i} came before the worker listened")
            p = json.loads(c["body"])
            want = {"worker_id": "mgr-test", "url": f"http://127.0.0.1:{port}",
                    "uri": f"http://127.0.0.1:{port}", "model_ref": "stories260k.gguf",
                    "backend": "cpu", "device": 0, "vram_bytes": 0, "memory_type": "cpu",
                    "port": port}
            for k, v in want.items():
                check(p.get(k) == v, f"payload {k}={p.get(k)!r}, want {v!r}")
            check(isinstance(p.get("memory_bytes"), int) and p["memory_bytes"] > 0,
                  f"payload memory_bytes={p.get('memory_bytes')!r}")
        if len(calls) >= 3:
            g1 = calls[1]["t"] - calls[0]["t"]
            g2 = calls[2]["t"] - calls[1]["t"]
            check(g1 >= 0.14, f"first back-off {g1:.3f} s, want >= 0.15")
            check(g2 >= 0.29, f"second back-off {g2:.3f} s, want >= 0.30 (doubled)")
        check(wait_for(lambda: pm_state(d.health()) == "registered", 10),
              f"/health pool_manager registered: {d.health().get('pool_manager')}")
        check(wait_for(lambda: len(rx.of("/v1/heartbeat")) >= 2, 10), "two heartbeats")
        for hb in rx.of("/v1/heartbeat")[:2]:
            p = json.loads(hb["body"])
            check(p.get("worker_id") == "mgr-test", f"heartbeat worker_id {p}")
            check(p.get("health_status") == "healthy", f"heartbeat health_status {p}")
            check(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p.get("timestamp", "")),
                  f"heartbeat timestamp {p.get('timestamp')!r}")
        check(len(rx.of("/v1/workers/ready")) == 3, "no callback after registration")
        status, metrics = http_get(port, "/metrics")
        check(status == 200 and b"llorch_pool_manager_callback_attempts_total 3\n" in metrics
              and b"llorch_pool_manager_callback_failures_total 2\n" in metrics,
              "metrics count the callback attempts and failures")
    finally:
        rc = d.stop()
        rx.close()
    check(rc == 0, f"exit status {rc}")
    logs = [json.loads(l) for l in d.log if l.startswith("{")]
    check(any(l.get("msg", "").startswith("pool-manager callback failed; retrying") and
              l.get("level") == "warn" for l in logs), "retry is logged as a warning")
    check(any(l.get("msg") == "registered with the pool manager" for l in logs),
          "registration is logged")
    check(all(l.get("worker_id") == "mgr-test" for l in logs), "every line has worker_id")


def test_unreachable_pool_manager_never_stops_serving():
    port = free_port()
    dead = free_port()  # nobody listens there
    d = Daemon(port, "--callback-url", f"http://127.0.0.1:{dead}/ready",
               "--callback-backoff-ms", "50", "--callback-max-retries", "2")
    try:
        check(d.wait_healthy(), "daemon healthy without a pool manager")
        check(wait_for(lambda: pm_state(d.health()) == "failed", 15),
              f"/health pool_manager failed: {d.health().get('pool_manager')}")
        status, _ = http_get(port, "/health")
        check(status == 200, "/health still 200 after giving up")
    finally:
        rc = d.stop()
    check(rc == 0, f"exit status {rc}")
    check(any("giving up" in l for l in d.log), "giving up is logged")


def test_test_mode_sends_nothing():
    port = free_port()
    d = Daemon(port, "--callback-url", "http://localhost:9999/ready")
    try:
        check(d.wait_healthy(), "daemon healthy in test mode")
        check(pm_state(d.health()) == "disabled", f"test mode state {d.health()}")
    finally:
        rc = d.stop()
    check(rc == 0, f"exit status {rc}")


def test_advertise_url_is_the_payloads_url():
    port = free_port()
    rx = Receiver({"/ready": [200]}, port)
    d = Daemon(port, "--callback-url", f"http://127.0.0.1:{rx.port}/ready",
               "--advertise-url", "http://worker-7.example:18080")
    try:
        check(d.wait_healthy(), "daemon healthy with --advertise-url")
        check(wait_for(lambda: len(rx.of("/ready")) >= 1, 30), "one callback")
        if rx.of("/ready"):
            p = json.loads(rx.of("/ready")[0]["body"])
            check(p.get("url") == "http://worker-7.example:18080" and
                  p.get("uri") == "http://worker-7.example:18080",
                  f"payload url {p.get('url')!r} uri {p.get('uri')!r}")
    finally:
        rc = d.stop()
        rx.close()
    check(rc == 0, f"exit status {rc}")


def test_remote_pool_manager_and_loopback_listen_address_stop_start_up():
    port = free_port()
    # the default --host 127.0.0.1 cannot be reached from another host
    d = Daemon(port, "--callback-url", "http://pool-manager.example:9200/v1/workers/ready")
    try:
        rc = d.p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        rc = None
    d.stop()
    check(rc not in (0, None), f"start-up refused (exit status {rc})")
    text = "".join(d.log)
    check("pool-manager.example" in text and "--advertise-url" in text and "127.0.0.1" in text,
          f"the error names the pool manager, the address and the fix: {text[-400:]!r}")


def test_metrics_exposition_and_auth():
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        key = os.path.join(d, "key")
        with open(key, "w") as f:
            f.write("s3cret\n")
        os.chmod(key, 0o600)
        dm = Daemon(port, "--callback-url", "http://localhost:9999/ready", "--api-key-file", key)
        try:
            check(dm.wait_healthy(), "daemon healthy with an API key")
            status, _ = http_get(port, "/metrics")
            check(status == 401, f"/metrics without the key: {status}")
            status, text = http_get(port, "/metrics", headers={"Authorization": "Bearer s3cret"})
            check(status == 200, f"/metrics with the key: {status}")
            check(b"llorch_http_requests_total{endpoint=\"/metrics\",status=\"401\"} 1\n" in text,
                  "the 401 is counted")
            check(b"\nllorch_model_loaded 1\n" in text, "model loaded gauge")
            # One generation feeds the step histograms from the step driver.
            body = json.dumps({"job_id": "m1", "prompt": "Once", "max_tokens": 4,
                               "temperature": 0}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/execute", data=body,
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": "Bearer s3cret"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                stream = resp.read()
            check(b"event: end" in stream, f"generation ended: {stream[-200:]!r}")
            status, text = http_get(port, "/metrics", headers={"Authorization": "Bearer s3cret"})
            steps = re.search(rb"\nllorch_step_duration_seconds_count (\d+)\n", text)
            batches = re.search(rb"\nllorch_batch_size_count (\d+)\n", text)
            check(steps is not None and int(steps.group(1)) >= 4,
                  f"step histogram counts the steps: {steps and steps.group(0)!r}")
            check(batches is not None and steps is not None and batches.group(1) == steps.group(1),
                  "one batch-size sample per step")
            if shutil.which("promtool"):
                r = subprocess.run(["promtool", "check", "metrics"], input=text,
                                   capture_output=True, timeout=60)
                check(r.returncode == 0, f"promtool: {r.stdout[-500:]!r} {r.stderr[-500:]!r}")
        finally:
            rc = dm.stop()
    check(rc == 0, f"exit status {rc}")


def main():
    if not (os.access(DAEMON, os.X_OK) and os.path.exists(MODEL)):
        print("FAIL: needs build/src/llorch-cpud and stories260k.gguf")
        return 1
    test_retries_payload_heartbeats()
    test_unreachable_pool_manager_never_stops_serving()
    test_test_mode_sends_nothing()
    test_advertise_url_is_the_payloads_url()
    test_remote_pool_manager_and_loopback_listen_address_stop_start_up()
    test_metrics_exposition_and_auth()
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
