"""Slow readers and many idle streams against the real daemon.

- A stream whose client stops reading is cut once its outbox passes
  --sse-outbox-bytes: the job is cancelled with CLIENT_TOO_SLOW (metrics by
  code, the log), its slot and KV blocks come back, the connection is closed
  even though the client never reads (a short grace, then closed), and a
  client that reads soon enough sees the error frame as the stream's last
  event. /execute, /v1/inference and the OpenAI stream alike. Meanwhile
  another client's stream runs to its end and /health answers at once.
  --sse-sndbuf-bytes 4096 keeps the kernel's share small (its autotuned
  send buffer of megabytes would otherwise swallow a whole 2048-token
  stream, and the outbox would never fill); the slow client's own receive
  buffer is shrunk with SO_RCVBUF for the same reason.
- 1000 streams queued behind --max-batch 2 are held cheaply: /health keeps
  answering quickly, the daemon's memory grows by little per stream, and it
  raised its soft open-file limit (started here at 256) to the hard one, or
  it could not hold 1000 connections at all.
"""

import json
import os
import re
import resource
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import (Daemon, check_stream_shape, events_of, generate, get_json,  # noqa: E402
                        parse_sse, read_until, request, run_tests, wait_for)

PROMPT = "Once upon a time"
# stories260k at temperature 0 runs the whole 2048 tokens (~75 KB of frames)
# without meeting EOS; its trained context of 512 is widened for it.
SLOW_ARGS = ("--ctx", "2100", "--max-batch", "4", "--sse-outbox-bytes", "8192",
             "--sse-sndbuf-bytes", "4096")
LONG = {"prompt": PROMPT, "max_tokens": 2048, "temperature": 0}
GRACE_S = 2.0  # SSE_CUT_GRACE_MS
# The reading stream beside it: still running when the slow one is cut
# (~250 tokens in, as both advance one token per step), quick under ASan.
FAST_TOKENS = 512


def metric(port, name, labels=""):
    st, _, body = request(port, "GET", "/metrics")
    assert st == 200, st
    m = re.search(r"^%s%s (\d+)$" % (re.escape(name), re.escape(labels)), body.decode(),
                  re.MULTILINE)
    assert m, (name, labels)
    return int(m.group(1))


def too_slow_count(port):
    return metric(port, "llorch_job_errors_total", '{code="CLIENT_TOO_SLOW"}')


def slow_client(port, path, body):
    """Sends a stream request from a socket with a tiny receive buffer, reads
    the response head, then reads nothing more (until the test says)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    head = b""
    while b"\r\n\r\n" not in head:
        c = s.recv(1)
        assert c, head
        head += c
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"text/event-stream" in head, head
    return s


def dechunk(raw):
    """The body of a chunked response, as far as it goes (a cut connection
    may end inside a chunk); and whether the terminating chunk was seen."""
    out, pos = b"", 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return out, False
        n = int(raw[pos:eol], 16)
        if n == 0:
            return out, True
        out += raw[eol + 2:eol + 2 + n]
        if eol + 2 + n + 2 > len(raw):
            return out, False
        pos = eol + 2 + n + 2


class HealthPoller:
    """GET /health every 20 ms in a thread; keeps (latency, status)."""

    def __init__(self, port):
        self.port, self.samples = port, []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            t0 = time.time()
            st, _ = get_json(self.port, "/health")
            self.samples.append((time.time() - t0, st))
            self.stop.wait(0.02)

    def finish(self):
        self.stop.set()
        self.t.join()
        return self.samples


def cut_scenario(path, body, read_soon):
    """One slow reader beside one fast stream; the slow client reads as soon
    as the cut shows in the metrics (read_soon), or only after the daemon has
    closed its connection. Returns (slow client's bytes, daemon log)."""
    with Daemon(*SLOW_ARGS) as d:
        hp = HealthPoller(d.port)
        slow = slow_client(d.port, path, body)
        fast = {}
        ft = threading.Thread(target=lambda: fast.update(
            r=generate(d.port, "fast", PROMPT, FAST_TOKENS, temperature=0)))
        ft.start()
        assert wait_for(lambda: too_slow_count(d.port) == 1, 15, interval=0.01), \
            "no CLIENT_TOO_SLOW:\n" + "\n".join(d.log_lines[-20:])
        raw, closed = b"", False
        if read_soon:
            raw, closed = read_until(slow, 10)
        ft.join(30)
        assert not ft.is_alive(), "the fast stream stalled"

        def freed():
            doc = get_json(d.port, "/health")[1]
            return doc["slots_busy"] == 0 and doc["queue_depth"] == 0 and \
                doc["kv"]["blocks_used"] == 0 and doc["kv"]["seqs_active"] == 0
        assert wait_for(freed, 10, interval=0.01), get_json(d.port, "/health")
        if not read_soon:
            # Never read, yet the daemon lets go of the connection after the
            # grace: only the /metrics request's own connection stays.
            assert wait_for(lambda: metric(d.port, "llorch_http_connections") == 1,
                            GRACE_S + 8, interval=0.05), "cut connection still open"
            raw, closed = read_until(slow, 10)
        slow.close()
        samples = hp.finish()
        st, _, objs, _ = fast["r"]
        assert st == 200, fast
        check_stream_shape(objs, "fast")
        assert objs[-1]["type"] == "end" and objs[-1]["tokens_out"] == FAST_TOKENS, objs[-1]
        assert samples and all(s == 200 for _, s in samples), samples
        assert max(lat for lat, _ in samples) < 0.5, max(samples)
        assert too_slow_count(d.port) == 1
        assert closed, "the cut connection was not closed"
        log = list(d.log_lines)
    return raw, log


def cut_stream(raw):
    """(frames, ended): the whole frames a cut stream delivered, and whether
    its response ended properly (then they include the error frame; else the
    client resumed too late, or TCP's zero-window probing delayed it past
    the grace, and the connection closed with bytes still unsent)."""
    body, ended = dechunk(raw)
    text = body.decode("utf-8", "replace")
    if not ended:
        text = text[:text.rfind("\n\n") + 2]
    print("  cut stream %s: %d bytes" % ("ended" if ended else "truncated", len(raw)), flush=True)
    return parse_sse(text), ended


def job_log(log, job_id):
    out = []
    for line in log:
        try:
            o = json.loads(line)
        except ValueError:
            continue
        if o.get("job_id") == job_id:
            out.append(o)
    return out


def test_execute_slow_reader_is_cut_with_client_too_slow():
    raw, log = cut_scenario("/execute", dict(LONG, job_id="slow-x"), True)
    frames, ended = cut_stream(raw)
    objs = events_of(frames)
    assert objs and objs[0]["type"] == "started", objs[:2]
    toks = [o for o in objs if o["type"] == "token"]
    assert 0 < len(toks) < 2048, len(toks)
    if ended:
        check_stream_shape(objs, "slow-x")
        assert objs[-1]["type"] == "error" and objs[-1]["code"] == "CLIENT_TOO_SLOW", objs[-1]
        assert frames[-1]["event"] == "error", frames[-1]
    else:
        assert all(o["type"] in ("started", "token") for o in objs), objs[-1]
    lines = job_log(log, "slow-x")
    assert any(o["msg"].startswith("stream cut") and o["level"] == "warn" for o in lines), lines
    assert any(o.get("code") == "CLIENT_TOO_SLOW" and o["msg"] == "job ended with an error"
               for o in lines), lines
    assert not any(o["msg"] == "job done" for o in lines), lines


def test_inference_slow_reader_gets_the_error_then_done():
    raw, _ = cut_scenario("/v1/inference", dict(LONG, job_id="slow-i"), True)
    frames, ended = cut_stream(raw)
    assert all(f["event"] is None for f in frames), frames[:3]
    objs = events_of(frames)
    assert objs and objs[0]["type"] == "started", objs[:2]
    if ended:
        check_stream_shape(objs, "slow-i")
        assert objs[-1]["type"] == "error" and objs[-1]["code"] == "CLIENT_TOO_SLOW", objs[-1]
        assert frames[-1]["data"] == "[DONE]", frames[-2:]


def test_openai_slow_reader_gets_an_error_chunk():
    raw, log = cut_scenario("/v1/completions", dict(LONG, stream=True), True)
    frames, ended = cut_stream(raw)
    chunks = [json.loads(f["data"]) for f in frames if f["data"] and f["data"] != "[DONE]"]
    assert chunks and chunks[0]["object"] == "text_completion", chunks[:1]
    # logged as a worker stream is: the warning, then the job's error line
    lines = job_log(log, chunks[0]["id"])
    assert any(o["msg"].startswith("stream cut") and o["level"] == "warn" and
               o["api"] == "openai" for o in lines), lines
    assert any(o.get("code") == "client_too_slow" and o["msg"] == "job ended with an error"
               for o in lines), lines
    assert all("error" not in c for c in chunks[:-1]), chunks[-3:]
    if ended:
        assert chunks[-1]["error"]["code"] == "client_too_slow", chunks[-1]
        assert frames[-1]["data"] == "[DONE]", frames[-2:]


def test_reader_that_never_reads_is_disconnected_after_the_grace():
    raw, _ = cut_scenario("/execute", dict(LONG, job_id="mute"), False)
    # What the kernel held still arrives, then the end of the connection.
    assert b"event: started" in raw, raw[:200]


# ---- many idle streams ----

N_IDLE = 1000


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def nofile_limits(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return soft, hard
    raise AssertionError("no open-files line")


def test_thousand_queued_streams_are_held_cheaply():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = N_IDLE + 200
    assert hard == resource.RLIM_INFINITY or hard >= want, (soft, hard)
    ours = soft if soft == resource.RLIM_INFINITY or soft >= want else want
    # The daemon inherits a soft limit of 256 and must raise it itself.
    d = Daemon("--max-batch", "2", "--max-queue", "2048", "--ctx", "2100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        d.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ours, hard))
    socks = []
    try:
        lsoft, lhard = nofile_limits(d.proc.pid)
        assert lsoft == lhard, (lsoft, lhard)
        rss0 = rss_kib(d.proc.pid)
        for i in range(N_IDLE):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
            data = json.dumps(dict(LONG, job_id="idle-%d" % i)).encode()
            s.sendall(b"POST /execute HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
            socks.append(s)

        def ended():
            st, _, body = request(d.port, "GET", "/metrics")
            return sum(int(n) for n in re.findall(r"^llorch_job(?:s|_errors)_total\{\S+\} (\d+)$",
                                                  body.decode(), re.MULTILINE))

        def all_held():
            # the two running jobs may finish (and the next ones start) meanwhile
            doc = get_json(d.port, "/health")[1]
            return doc["slots_busy"] + doc["queue_depth"] + ended() == N_IDLE
        assert wait_for(all_held, 15, interval=0.05), (get_json(d.port, "/health"), ended())
        lat = []
        for _ in range(20):
            t0 = time.time()
            st, doc = get_json(d.port, "/health")
            lat.append(time.time() - t0)
            assert st == 200 and doc["queue_depth"] > N_IDLE // 2, doc
            time.sleep(0.01)
        grown = rss_kib(d.proc.pid) - rss0
        print("  /health max %.1f ms, median %.1f ms; RSS +%d KiB for %d streams"
              % (max(lat) * 1e3, sorted(lat)[len(lat) // 2] * 1e3, grown, N_IDLE), flush=True)
        assert max(lat) < 0.2, sorted(lat)[-3:]
        assert grown < N_IDLE * 64, grown  # KiB: under 64 KiB a stream
        # Every stream has its head and ping timer; closing them all cancels
        # every job and frees every slot.
        for s in socks:
            s.close()
        socks = []

        def freed():
            doc = get_json(d.port, "/health")[1]
            return doc["slots_busy"] == 0 and doc["queue_depth"] == 0
        assert wait_for(freed, 15, interval=0.05), get_json(d.port, "/health")
    finally:
        for s in socks:
            s.close()
        rc = d.stop(timeout=15)
    assert rc == 0, rc


def main():
    run_tests([
        test_execute_slow_reader_is_cut_with_client_too_slow,
        test_inference_slow_reader_gets_the_error_then_done,
        test_openai_slow_reader_gets_an_error_chunk,
        test_reader_that_never_reads_is_disconnected_after_the_grace,
        test_thousand_queued_streams_are_held_cheaply,
    ])


if __name__ == "__main__":
    main()
