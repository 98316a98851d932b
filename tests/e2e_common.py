"""Shared helpers for the end-to-end tests: start the real llorch-cpud on
127.0.0.1 with an ephemeral port (--port 0, the bound port is read from the
"listening" log line), wait for /health, plain HTTP requests, SSE streams
parsed into frames, raw socket exchanges, and a tiny test runner.
Python 3 standard library only."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("LLORCH_SOURCE", os.path.dirname(HERE))
BUILD = os.environ.get("LLORCH_BUILD", os.path.join(SOURCE, "build"))
SHARED = os.environ.get("LLORCH_SHARED", os.path.join(SOURCE, "..", "shared"))

ISO8601_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
STOP_REASONS = {"max_tokens", "eos", "stop_sequence", "cancelled", "error"}
ERROR_CODES = {"CANCELLED", "TIMEOUT", "INVALID_REQUEST", "INFERENCE_FAILED",
               "KV_EXHAUSTED", "CLIENT_TOO_SLOW", "SHUTTING_DOWN"}


def binary():
    """The daemon under test (LLORCH_CPUD_BIN overrides the build's)."""
    b = os.environ.get("LLORCH_CPUD_BIN")
    if b:
        return b
    return os.path.join(BUILD, "src", "llorch-cpud")


def model_path(name="stories260k.gguf"):
    return os.path.join(SHARED, "models", name)


# Checks that collect failures instead of stopping at the first one (tests
# that report every broken property of one daemon run).
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, flush=True)
    return cond


def free_port():
    """A port that was free a moment ago on 127.0.0.1 (for peers that cannot
    bind port 0 and report it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=5.0, headers=None):
    """GET on 127.0.0.1 with urllib: (status, body bytes), errors included."""
    import urllib.error
    import urllib.request
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Daemon:
    """One llorch-cpud process. Use as a context manager; stop() returns the
    exit status. Every stderr line is kept in .log_lines."""

    def __init__(self, *args, model=None, env=None, ready_timeout=30.0):
        self.args = list(args)
        self.model = model or model_path()
        self.env = env
        self.ready_timeout = ready_timeout
        self.proc = None
        self.port = None
        self.log_lines = []
        self._port_seen = threading.Event()
        self._reader = None

    def cmdline(self):
        base = [binary(), "--model", self.model, "--host", "127.0.0.1", "--port", "0",
                "--worker-id", "e2e", "--callback-url", "http://localhost:9999/ready",
                "--dtype", "f32", "--threads", "2", "--kv-cache-mb", "16",
                "--log-format", "json"]
        return base + self.args

    def _read_stderr(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log_lines.append(line)
            if self.port is None and '"listening"' in line:
                try:
                    self.port = int(json.loads(line)["port"])
                    self._port_seen.set()
                except (ValueError, KeyError):
                    pass
        self._port_seen.set()

    def start(self):
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(self.cmdline(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._port_seen.wait(self.ready_timeout) or self.port is None:
            self.kill()
            raise RuntimeError("daemon did not start listening:\n" + "\n".join(self.log_lines))
        deadline = time.time() + self.ready_timeout
        while time.time() < deadline:
            try:
                st, _, _ = request(self.port, "GET", "/health", timeout=2)
                if st == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("daemon never became healthy:\n" + "\n".join(self.log_lines))

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=20.0):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("daemon did not exit within %.0f s" % timeout)
        if self._reader:
            self._reader.join(2)
        return rc

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            try:
                rc = self.stop(timeout=15)
            except AssertionError:
                rc = None
            if exc[0] is None and rc != 0:
                raise AssertionError("daemon exited with %r:\n%s" % (rc, "\n".join(self.log_lines[-30:])))
        return False


def request(port, method, path, body=None, headers=None, timeout=10.0):
    """One request on a fresh connection: (status, headers lower-cased, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = dict(headers or {})
            headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def get_json(port, path, headers=None):
    st, h, body = request(port, "GET", path, headers=headers)
    return st, json.loads(body) if body else None


def post_json(port, path, obj, headers=None, timeout=10.0):
    st, h, body = request(port, "POST", path, body=obj, headers=headers, timeout=timeout)
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = None
    return st, h, doc, body


def parse_sse(text):
    """Frames of an SSE body: dicts with 'event' (or None), 'data' (str or None),
    'id' (or None) and 'comment' (for ': ...' frames)."""
    frames = []
    for block in text.split("\n\n"):
        if not block:
            continue
        fr = {"event": None, "data": None, "comment": None, "id": None}
        data = []
        for line in block.split("\n"):
            if line.startswith(":"):
                fr["comment"] = line[1:].strip()
            elif line.startswith("event: "):
                fr["event"] = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line.startswith("id: "):
                fr["id"] = line[4:]
        if data:
            fr["data"] = "\n".join(data)
        frames.append(fr)
    return frames


class Stream:
    """A generation stream read frame by frame (POST /execute or /v1/inference)."""

    def __init__(self, port, path, obj, headers=None, timeout=30.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        self.conn.request("POST", path, body=json.dumps(obj).encode(), headers=hdrs)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}
        self.frames = []

    def next_frame(self):
        """The next frame, or None at the end of the body."""
        lines = []
        while True:
            line = self.resp.readline()
            if not line:
                return None
            line = line.decode("utf-8")
            if line == "\n":
                if lines:
                    fr = parse_sse("".join(lines) + "\n")[0]
                    self.frames.append(fr)
                    return fr
                continue
            lines.append(line)

    def read_all(self):
        while self.next_frame() is not None:
            pass
        return self.frames

    def close(self):
        self.conn.close()


def events_of(frames):
    """The JSON objects of a stream's data frames (skips comments and [DONE])."""
    out = []
    for f in frames:
        if f["data"] and f["data"] != "[DONE]":
            out.append(json.loads(f["data"]))
    return out


def generate(port, job_id, prompt, max_tokens, path="/execute", **params):
    """A whole generation: (status, frames, objects, text)."""
    body = {"job_id": job_id, "prompt": prompt, "max_tokens": max_tokens}
    body.update(params)
    s = Stream(port, path, body)
    if s.status != 200:
        data = s.resp.read()
        s.close()
        return s.status, [], [], data.decode("utf-8", "replace")
    frames = s.read_all()
    s.close()
    objs = events_of(frames)
    text = "".join(o["t"] for o in objs if o["type"] == "token")
    return s.status, frames, objs, text


def raw_exchange(port, data, timeout=5.0, until=None):
    """Sends bytes on a fresh socket and reads until the peer closes, `until`
    appears, or timeout. Returns (bytes, closed_by_peer)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        if data:
            s.sendall(data)
        return read_until(s, timeout, until)
    finally:
        s.close()


def read_until(s, timeout, until=None, count=1):
    buf = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        s.settimeout(max(0.01, deadline - time.time()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return buf, True
        if not chunk:
            return buf, True
        buf += chunk
        if until is not None and buf.count(until) >= count:
            return buf, False
    return buf, False


def wait_for(pred, timeout=10.0, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def check_stream_shape(objs, job_id, mode="execute"):
    """started → token* → exactly one of end|error, with the contract's fields."""
    assert objs, "empty stream"
    terminal = objs[-1]
    assert terminal["type"] in ("end", "error"), terminal
    for o in objs[:-1]:
        assert o["type"] in ("started", "token"), o
    types = [o["type"] for o in objs]
    if "started" in types:
        assert types.index("started") == 0, types
        assert types.count("started") == 1, types
        st = objs[0]
        assert st["job_id"] == job_id, st
        assert isinstance(st["model"], str) and st["model"], st
        assert ISO8601_UTC.match(st["started_at"]), st
    toks = [o for o in objs if o["type"] == "token"]
    for k, t in enumerate(toks):
        assert set(t) == {"type", "t", "i"}, t
        assert isinstance(t["t"], str), t
        assert t["i"] == k, (k, t)
    if terminal["type"] == "end":
        assert terminal["stop_reason"] in STOP_REASONS, terminal
        assert isinstance(terminal["tokens_out"], int) and terminal["tokens_out"] >= 0, terminal
        assert isinstance(terminal["decode_time_ms"], int), terminal
        if terminal["stop_reason"] == "stop_sequence":
            assert isinstance(terminal.get("stop_sequence_matched"), str), terminal
        else:
            # the contract's `end` always has the field: null when no stop matched
            assert "stop_sequence_matched" in terminal, terminal
            assert terminal["stop_sequence_matched"] is None, terminal
    else:
        assert terminal["code"] in ERROR_CODES, terminal
        assert isinstance(terminal["message"], str), terminal


def run_tests(tests):
    """Runs test functions in order; prints one line each; exits non-zero on
    any failure."""
    failed = 0
    for t in tests:
        t0 = time.time()
        try:
            t()
            print("ok   %-60s %.2fs" % (t.__name__, time.time() - t0), flush=True)
        except Exception:
            failed += 1
            print("FAIL %-60s %.2fs" % (t.__name__, time.time() - t0), flush=True)
            traceback.print_exc()
    print("%d passed, %d failed" % (len(tests) - failed, failed), flush=True)
    sys.exit(1 if failed else 0)
