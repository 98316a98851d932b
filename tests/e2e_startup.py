#!/usr/bin/env python3
"""Start-up order, end to end, on a model big enough that packing its weights
takes seconds (made here with llorch-synth: llama, 10 layers, n_embd 1024,
q8_0, ~110 MB; packed to f32, ~420 MB).

1. Socket-activated (a listening socket made here, passed as fd 3 with
   LISTEN_FDS/LISTEN_PID) with a NOTIFY_SOCKET: /health answers 503
   {"status":"loading","model_loaded":false,"progress":p} at once, p in [0,1] and never
   decreasing, other endpoints 503, the load gauge below 1; then 200
   healthy. READY=1 comes only once loading is over (/health asked right
   after it answers 200) and after STATUS=loading model N% lines with
   EXTEND_TIMEOUT_USEC. stderr is a pipe: progress log lines (`progress`
   field, non-decreasing, one per tenth at most) between `listening` and
   `model loaded`.
2. Without socket activation the daemon also listens before loading (same
   503 loading), and SIGTERM while loading exits 0 promptly, never loaded.
3. A corrupt (truncated) model exits 1 at once with one error line; a load
   that fails at the end of packing (a KV cache too small for one block)
   exits 1 with one error line too, after /health said loading.
4. On a TTY with text logs: a progress bar on stderr ending at 100%.
"""
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from e2e_common import BUILD, binary, check, failures, request  # noqa: E402

SYNTH = os.path.join(BUILD, "tools", "llorch-synth")


def make_model(d):
    path = os.path.join(d, "big.gguf")
    subprocess.run([SYNTH, "-o", path, "--arch", "llama", "--n-embd", "1024", "--n-layer", "10",
                    "--n-head", "16", "--n-head-kv", "16", "--n-ff", "2048", "--type", "q8_0",
                    "--vocab", "builtin", "--seed", "7"], check=True, capture_output=True,
                   timeout=120)
    return path


def args(model, *extra, port="0", fmt="json", kv="16"):
    return [binary(), "--model", model, "--host", "127.0.0.1", "--port", port,
            "--worker-id", "startup", "--callback-url", "http://localhost:9999/ready",
            "--dtype", "f32", "--threads", "2", "--kv-cache-mb", kv, "--log-format", fmt,
            *extra]


def clean_env(**extra):
    env = dict(os.environ)
    for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
              "LISTEN_FDNAMES"):
        env.pop(k, None)
    env.update(extra)
    return env


class Stderr:
    """Collects a child's stderr lines on a thread."""

    def __init__(self, proc):
        self.lines = []
        self.t = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self.t.start()

    def _run(self, proc):
        for raw in proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def json(self):
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"msg": "(not json) " + line})
        return out

    def wait_msg(self, prefix, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for o in self.json():
                if o.get("msg", "").startswith(prefix):
                    return o
            time.sleep(0.02)
        return None


def stop(proc, timeout=20):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def poll_health_until_ready(port, proc, timeout=60):
    """(status, body, time) of every /health answer until the first 200."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            st, _, body = request(port, "GET", "/health", timeout=5)
        except OSError:
            time.sleep(0.02)
            continue
        seen.append((st, body, time.time()))
        if st == 200:
            break
        time.sleep(0.02)
    return seen


def check_loading_answers(seen, what):
    loading = [(st, b) for st, b, _ in seen if st == 503]
    check(len(loading) >= 3, f"{what}: /health answered 503 while loading ({len(loading)} times)")
    last = -1.0
    for st, b in loading:
        try:
            o = json.loads(b)
        except ValueError:
            check(False, f"{what}: 503 body is not JSON: {b[:200]!r}")
            return
        ok = (set(o) == {"status", "model_loaded", "progress"} and o["status"] == "loading"
              and o["model_loaded"] is False)
        check(ok, f"{what}: 503 body {o}")
        p = o.get("progress", -1)
        check(isinstance(p, (int, float)) and 0.0 <= p <= 1.0, f"{what}: progress {p} in [0,1]")
        check(p >= last, f"{what}: progress went back from {last} to {p}")
        last = p
    check(any(json.loads(b)["progress"] > 0 for _, b in loading),
          f"{what}: progress never moved past 0")
    check(seen and seen[-1][0] == 200, f"{what}: /health never answered 200 "
          f"({[s for s, _, _ in seen[-3:]]})")
    if seen and seen[-1][0] == 200:
        check(json.loads(seen[-1][1]).get("status") == "healthy", f"{what}: 200 body")
    statuses = [st for st, _, _ in seen]
    tail = statuses[statuses.index(503):] if 503 in statuses else []
    check(tail[-1:] == [200] and all(st == 503 for st in tail[:-1]),
          f"{what}: answers from the first 503 on: only 503s, then 200: {sorted(set(tail))}")


def check_progress_lines(log, what):
    msgs = [o.get("msg", "") for o in log]
    prog = [o for o in log if o.get("msg") == "loading model: progress"]
    check(len(prog) >= 3, f"{what}: progress log lines: {len(prog)}")
    check(len(prog) <= 10, f"{what}: at most one progress line per tenth: {len(prog)}")
    vals = [o.get("progress") for o in prog]
    check(all(isinstance(v, (int, float)) and 0 < v <= 1 for v in vals), f"{what}: {vals}")
    check(vals == sorted(vals) and len(set(int(v * 10) for v in vals)) == len(vals),
          f"{what}: progress lines increase, one per tenth: {vals}")
    check(all("elapsed_ms" in o for o in prog), f"{what}: progress lines carry elapsed_ms")
    try:
        i_listen = next(i for i, m in enumerate(msgs) if m.startswith("listening"))
        i_loaded = msgs.index("model loaded")
        i_prog = [i for i, m in enumerate(msgs) if m == "loading model: progress"]
        check(i_listen < min(i_prog) and max(i_prog) < i_loaded,
              f"{what}: order listening < progress < model loaded: {msgs}")
    except (StopIteration, ValueError):
        check(False, f"{what}: missing listening/model loaded lines: {msgs}")


# ---- 1. socket activation + NOTIFY_SOCKET ------------------------------------

def test_socket_activated(model, d):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    port = lsock.getsockname()[1]
    npath = os.path.join(d, "notify")
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(npath)
    notes = []  # (time, message)
    stop_rx = threading.Event()

    def rx():
        ns.settimeout(0.05)
        while not stop_rx.is_set():
            try:
                m = ns.recv(4096).decode()
            except socket.timeout:
                continue
            t = time.time()
            notes.append((t, m))
            if "READY=1" in m.split("\n"):
                # READY=1 means serving: /health must say so right now
                try:
                    notes.append((t, "HEALTH-AT-READY %d" % request(port, "GET", "/health")[0]))
                except OSError as e:
                    notes.append((t, "HEALTH-AT-READY error %s" % e))

    rxt = threading.Thread(target=rx, daemon=True)
    rxt.start()
    # fd 3 in the child, LISTEN_PID = the child's pid (sh execs the daemon)
    fd = lsock.fileno()
    cmd = ["sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@" 3<&%d' % fd, "sh",
           *args(model, port="1")]  # --port is ignored when a socket is passed
    t0 = time.time()
    p = subprocess.Popen(cmd, env=clean_env(LISTEN_FDS="1", NOTIFY_SOCKET=npath),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, pass_fds=(fd,))
    lsock.close()  # the child has its copy
    err = Stderr(p)
    try:
        # the first /health is answered while loading, without waiting for it
        st, _, body = request(port, "GET", "/health", timeout=5)
        check(st == 503 and json.loads(body).get("status") == "loading",
              f"first /health: {st} {body[:200]!r}")
        check(time.time() - t0 < 2.0, "first /health answered at once")
        # other endpoints refuse while loading
        st, _, body = request(port, "POST", "/execute",
                              {"job_id": "j", "prompt": "hi", "max_tokens": 1})
        check(st == 503, f"/execute while loading: {st} {body[:200]!r}")
        st, _, body = request(port, "POST", "/v1/completions",
                              {"model": "big.gguf", "prompt": "hi", "max_tokens": 1})
        check(st == 503, f"/v1/completions while loading: {st} {body[:200]!r}")
        st, _, body = request(port, "GET", "/v1/ready")
        check(st == 503 and json.loads(body) == {"ready": False}, f"/v1/ready: {st} {body!r}")
        st, _, body = request(port, "GET", "/metrics")
        text = body.decode()
        check(st == 200 and "\nllorch_model_loaded 0\n" in text, "metrics while loading: loaded 0")
        gauge = [ln for ln in text.splitlines() if ln.startswith("llorch_model_load_progress ")]
        check(gauge and 0 <= float(gauge[0].split()[1]) < 1, f"load gauge while loading {gauge}")
        check(not any("READY=1" in m for _, m in notes), "READY=1 before loading finished")

        seen = poll_health_until_ready(port, p)
        check_loading_answers(seen, "socket-activated")
        deadline = time.time() + 10
        while time.time() < deadline and not any(m.startswith("HEALTH-AT") for _, m in notes):
            time.sleep(0.02)
        msgs = [m for _, m in notes]
        ready = [i for i, m in enumerate(msgs) if "READY=1" in m.split("\n")]
        check(len(ready) == 1, f"one READY=1: {msgs}")
        check("HEALTH-AT-READY 200" in msgs, f"/health right after READY=1: {msgs[-3:]}")
        status = [m for m in msgs if m.startswith("STATUS=loading model ") and "%" in m]
        check(len(status) >= 3, f"STATUS=loading model N% lines: {len(status)}")
        pcts = [int(m.split("STATUS=loading model ")[1].split("%")[0]) for m in status]
        check(pcts == sorted(pcts) and pcts and pcts[-1] == 100, f"STATUS percentages {pcts}")
        check(all("EXTEND_TIMEOUT_USEC=" in m for m in status), "STATUS lines extend the timeout")
        if ready and status:
            i_last_status = max(i for i, m in enumerate(msgs) if m in status)
            check(i_last_status < ready[0], "READY=1 after every loading STATUS")
        st, _, body = request(port, "GET", "/metrics")
        check("\nllorch_model_loaded 1\n" in body.decode(), "metrics after loading: loaded 1")
        st, _, body = request(port, "POST", "/execute",
                              {"job_id": "j", "prompt": "hi", "max_tokens": 2})
        check(st == 200, f"/execute once ready: {st}")
    finally:
        rc = stop(p)
        stop_rx.set()
        rxt.join(2)
        ns.close()
    check(rc == 0, f"socket-activated exit status {rc}")
    err.t.join(2)
    log = err.json()
    check(any(o.get("msg") == "listening on the socket passed by systemd" for o in log),
          "listened on the passed socket")
    check_progress_lines(log, "socket-activated logs")


# ---- 2. own socket; SIGTERM while loading ----------------------------------

def test_own_socket_then_sigterm_while_loading(model):
    p = subprocess.Popen(args(model), env=clean_env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = Stderr(p)
    try:
        o = err.wait_msg("listening", 20)
        check(o is not None and "port" in o, "listening line before loading")
        if o is None:
            return
        st, _, body = request(o["port"], "GET", "/health")
        check(st == 503 and json.loads(body).get("status") == "loading",
              f"own socket: /health while loading {st} {body[:100]!r}")
        check(err.wait_msg("loading model: progress", 20) is not None, "a progress line")
        t = time.time()
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(10)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.time() - t
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err.t.join(2)
    msgs = [x.get("msg") for x in err.json()]
    check(rc == 0, f"SIGTERM while loading: exit {rc}: {msgs}")
    check(took < 3.0, f"SIGTERM while loading: exited in {took:.2f} s")
    check("model loaded" not in msgs, "SIGTERM while loading: the model was not loaded")
    check("shutting down: loading stopped" in msgs, f"says loading stopped: {msgs}")


# ---- 3. failures --------------------------------------------------------------

def error_lines(log):
    return [o for o in log if o.get("level") == "error"]


def test_corrupt_model(model, d):
    bad = os.path.join(d, "truncated.gguf")
    with open(model, "rb") as src, open(bad, "wb") as dst:
        dst.write(src.read(1 << 20))
    t = time.time()
    p = subprocess.run(args(bad), env=clean_env(), stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
    lines = p.stderr.decode().splitlines()
    log = [json.loads(x) for x in lines]
    errs = error_lines(log)
    check(p.returncode == 1, f"truncated model: exit {p.returncode}")
    check(time.time() - t < 5, "truncated model: fails at once")
    check(len(errs) == 1 and errs[0]["msg"] == "model load failed" and errs[0].get("error"),
          f"truncated model: one error line: {lines}")
    check(not any(o.get("msg", "").startswith("listening") for o in log),
          "truncated model: never listened")


def test_port_in_use(model):
    # a second worker on a port already taken says so, in the system's words
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        p = subprocess.run(args(model, port=str(port)), env=clean_env(), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30)
    finally:
        taken.close()
    log = [json.loads(x) for x in p.stderr.decode().splitlines()]
    errs = error_lines(log)
    check(p.returncode == 1, f"port in use: exit {p.returncode}")
    check(len(errs) == 1 and errs[0]["msg"] == "listen failed" and
          "address already in use" in errs[0].get("error", "") and str(port) in errs[0].get("error", ""),
          f"port in use: one error line naming the reason and the port: {errs}")


def test_load_fails_at_the_end(model):
    # 10 layers x 16 heads x 64 x f32 x 16 tokens x K,V = 1.25 MiB per KV
    # block: a 1 MiB cache holds none, found after every weight is packed
    p = subprocess.Popen(args(model, kv="1"), env=clean_env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = Stderr(p)
    try:
        o = err.wait_msg("listening", 20)
        if check(o is not None, "late failure: listening"):
            st, _, body = request(o["port"], "GET", "/health")
            check(st == 503 and b"loading" in body, f"late failure: loading first: {st}")
        rc = p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err.t.join(2)
    log = err.json()
    errs = error_lines(log)
    check(rc == 1, f"late failure: exit {rc}")
    check(len(errs) == 1 and errs[0]["msg"] == "model load failed" and
          "KV cache" in errs[0].get("error", ""), f"late failure: one error line: {errs}")
    check(not any(x.get("msg") == "model loaded" for x in log), "late failure: not loaded")


# ---- 4. the progress bar on a TTY ---------------------------------------------

def test_tty_progress_bar(model):
    master, slave = pty.openpty()
    p = subprocess.Popen(args(model, fmt="text"), env=clean_env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = b""
    try:
        deadline = time.time() + 60
        while time.time() < deadline and b"model loaded" not in out:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
            if p.poll() is not None:
                break
    finally:
        rc = stop(p)
        try:
            while True:
                r, _, _ = select.select([master], [], [], 0.2)
                if not r:
                    break
                chunk = os.read(master, 65536)
                if not chunk:
                    break
                out += chunk
        except OSError:
            pass
        os.close(master)
    text = out.decode("utf-8", "replace")
    check(rc == 0, f"tty run exit {rc}")
    check("\rloading model [" in text, f"tty: a progress bar: {text[:300]!r}")
    check("] 100%" in text, "tty: the bar reaches 100%")
    check("loading model: progress" not in text, "tty: no progress log lines with the bar")
    bar_end = text.rfind("] 100%")
    check(bar_end < text.find("model loaded"), "tty: the bar ends before `model loaded`")


def main():
    if not os.access(binary(), os.X_OK) or not os.access(SYNTH, os.X_OK):
        print("FAIL: needs build/src/llorch-cpud and build/tools/llorch-synth")
        return 1
    with tempfile.TemporaryDirectory() as d:
        model = make_model(d)
        for name, fn in (("socket-activated", lambda: test_socket_activated(model, d)),
                         ("sigterm while loading", lambda: test_own_socket_then_sigterm_while_loading(model)),
                         ("corrupt model", lambda: test_corrupt_model(model, d)),
                         ("port in use", lambda: test_port_in_use(model)),
                         ("late failure", lambda: test_load_fails_at_the_end(model)),
                         ("tty bar", lambda: test_tty_progress_bar(model))):
            t = time.time()
            n = len(failures)
            fn()
            print(f"{name}: {'ok' if len(failures) == n else 'FAILED'} ({time.time() - t:.1f} s)",
                  flush=True)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
