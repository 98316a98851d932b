"""A bounded soak (LLORCH_SOAK_SECONDS of load, default 20, under a minute in
all) against the real daemon, in the release and the ASan+UBSan builds:
concurrent clients on /execute, /v1/inference and the OpenAI chat stream that
read whole streams, cut them at a random byte (mid-frame included), cancel
them (POST /cancel, DELETE /v1/inference/{id}), fire bursts past the
queue bound (503 with Retry-After), and cut resumable streams, then resume
them with Last-Event-ID (or leave them to expire). Every whole stream has the contract's
shape; at the end the daemon holds 0 KV blocks, 0 running or queued
sequences and 0 live jobs (/health; kept frames expired), exits 0 on SIGTERM, and its stderr holds
no sanitizer report."""

import json
import os
import random
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import (Daemon, Stream, check_stream_shape, events_of, get_json,  # noqa: E402
                        parse_sse, post_json, request, run_tests, wait_for)

SECONDS = float(os.environ.get("LLORCH_SOAK_SECONDS", "20"))
CLIENTS = 10
PROMPTS = ["Once upon a time", "The cat sat", "Tom and Lily went to the park", "é漢🙂 said", "A"]
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer")


def body(job_id, rnd):
    b = {"job_id": job_id, "prompt": rnd.choice(PROMPTS), "max_tokens": rnd.randint(1, 40),
         "temperature": rnd.choice([0, 0.8, 1.5]), "seed": rnd.randint(0, 1 << 40)}
    if rnd.random() < 0.2:
        b["stop"] = [rnd.choice(["e", "the", "\n"])]
    return b


def raw_post(port, path, obj):
    """Sends a request on a raw socket; returns the socket (response unread)."""
    data = json.dumps(obj).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    return s


class Soak:
    def __init__(self, d):
        self.d = d
        self.lock = threading.Lock()
        self.counts = {}
        self.errors = []
        self.deadline = time.time() + SECONDS

    def count(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def fail(self, what):
        with self.lock:
            self.errors.append(what)

    def whole(self, rnd, jid):
        path = rnd.choice(["/execute", "/v1/inference"])
        s = Stream(self.d.port, path, body(jid, rnd))
        try:
            if s.status == 503:
                self.count("queue_full")
                return
            if s.status != 200:
                self.fail("%s: status %d" % (jid, s.status))
                return
            objs = events_of(s.read_all())
            try:
                check_stream_shape(objs, jid, "execute" if path == "/execute" else "inference")
            except AssertionError as e:
                self.fail("%s: bad stream %r" % (jid, e))
            self.count("whole")
        finally:
            s.close()

    def chat(self, rnd, jid):
        obj = {"messages": [{"role": "user", "content": rnd.choice(PROMPTS)}],
               "max_tokens": rnd.randint(1, 30), "stream": True, "temperature": 0}
        s = Stream(self.d.port, "/v1/chat/completions", obj)
        try:
            if s.status == 429:
                self.count("queue_full")
                return
            frames = s.read_all()
            if s.status != 200 or not frames or frames[-1]["data"] != "[DONE]":
                self.fail("%s: chat status %d, last %r" % (jid, s.status, frames[-1:]))
            self.count("chat")
        finally:
            s.close()

    def cut(self, rnd, jid):
        s = raw_post(self.d.port, rnd.choice(["/execute", "/v1/inference"]), body(jid, rnd))
        want = rnd.randint(1, 3000)  # bytes, so the cut lands anywhere, mid-frame too
        got = b""
        try:
            while len(got) < want:
                chunk = s.recv(min(4096, want - len(got)))
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        if rnd.random() < 0.5:  # an abortive close (RST) half the time
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        self.count("cut")

    def cancel(self, rnd, jid):
        path = rnd.choice(["/execute", "/v1/inference"])
        s = Stream(self.d.port, path, body(jid, rnd) | {"max_tokens": 200})
        try:
            if s.status != 200:
                self.count("queue_full" if s.status == 503 else "cancel_refused")
                return
            s.next_frame()
            if path == "/execute":
                st = post_json(self.d.port, "/cancel", {"job_id": jid})[0]
                ok = st in (202, 404)
            else:
                st = request(self.d.port, "DELETE", "/v1/inference/" + jid)[0]
                ok = st in (204, 404)
            if not ok:
                self.fail("%s: cancel answered %d" % (jid, st))
            objs = events_of(s.read_all())
            try:
                check_stream_shape(objs, jid)
            except AssertionError as e:
                self.fail("%s: bad cancelled stream %r" % (jid, e))
            if objs and objs[-1]["type"] == "error":
                if objs[-1]["code"] != "CANCELLED":
                    self.fail("%s: cancelled with %r" % (jid, objs[-1]))
                self.count("cancelled")
        finally:
            s.close()

    def resume(self, rnd, jid):
        path = rnd.choice(["/execute", "/v1/inference"])
        s = Stream(self.d.port, path, body(jid, rnd) | {"resumable": True})
        try:
            if s.status == 503:
                self.count("queue_full")
                return
            got = []
            for _ in range(rnd.randint(0, 12)):
                f = s.next_frame()
                if f is None:
                    break
                got.append(f)
            if rnd.random() < 0.5:
                s.resp.read(rnd.randint(1, 30))  # the cut lands inside a frame
        finally:
            s.close()
        if rnd.random() < 0.2:
            self.count("left_to_expire")
            return
        last = next((f["id"] for f in reversed(got) if f["id"]), None)  # [DONE] has none
        h = {"Last-Event-ID": last} if last else {}
        deadline = time.time() + 5
        while True:
            st, _, data = request(self.d.port, "GET", path + "/" + jid, headers=h, timeout=30)
            if st != 409 or time.time() > deadline:  # 409: the old connection not yet seen closed
                break
            time.sleep(0.02)
        if st != 200:
            self.fail("%s: resume answered %d %r" % (jid, st, data[:200]))
            return
        rest = parse_sse(data.decode("utf-8"))
        joined = got + rest
        ids = [f["id"] for f in joined if f["id"] is not None]
        if ids != ["%s:%d" % (jid, i) for i in range(len(ids))]:
            self.fail("%s: ids %r" % (jid, ids))
        try:
            check_stream_shape(events_of(joined), jid)
        except AssertionError as e:
            self.fail("%s: bad resumed stream %r" % (jid, e))
        self.count("resumed")

    def burst(self, rnd, jid):
        socks = [raw_post(self.d.port, "/execute", body("%s-%d" % (jid, k), rnd)) for k in range(24)]
        for s in socks:
            try:
                s.settimeout(10)
                head = s.recv(4096)
                if head.startswith(b"HTTP/1.1 503"):
                    if b"Retry-After:" not in head:
                        self.fail("%s: 503 without Retry-After" % jid)
                    self.count("queue_full")
                elif not head.startswith(b"HTTP/1.1 200"):
                    self.fail("%s: burst answered %r" % (jid, head[:40]))
            except OSError as e:
                self.fail("%s: burst %r" % (jid, e))
            s.close()
        self.count("burst")

    def client(self, i):
        rnd = random.Random(1000 + i)
        n = 0
        while time.time() < self.deadline:
            jid = "soak-%d-%d" % (i, n)
            n += 1
            action = rnd.choices([self.whole, self.chat, self.cut, self.cancel, self.burst,
                                  self.resume], [4, 1, 4, 2, 0.4, 3])[0]
            try:
                action(rnd, jid)
            except Exception as e:  # noqa: BLE001 - every failure is reported
                self.fail("%s: %s %r" % (jid, action.__name__, e))


def test_soak_ends_with_nothing_left():
    with Daemon("--max-batch", "6", "--max-queue", "6", "--ping-interval-ms", "200",
                "--resume-grace-ms", "1500") as d:
        soak = Soak(d)
        threads = [threading.Thread(target=soak.client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SECONDS + 60)
        print("soak:", json.dumps(soak.counts, sort_keys=True), flush=True)
        assert not soak.errors, soak.errors[:10]
        for what in ("whole", "cut", "cancelled", "queue_full", "chat", "resumed"):
            assert soak.counts.get(what, 0) > 0, (what, soak.counts)

        def idle():
            doc = get_json(d.port, "/health")[1]
            ok = (doc["slots_busy"] == 0 and doc["queue_depth"] == 0 and doc["live_jobs"] == 0
                  and doc["kv"]["blocks_used"] == 0 and doc["kv"]["seqs_active"] == 0)
            return doc if ok else None
        doc = wait_for(idle, timeout=20)
        assert doc, get_json(d.port, "/health")[1]
        st, _, metrics = request(d.port, "GET", "/metrics")
        assert st == 200 and b"\nllorch_kv_blocks_used 0\n" in metrics, metrics[:2000]
        rc = d.stop(timeout=30)
        assert rc == 0, (rc, d.log_lines[-20:])
        reports = [l for l in d.log_lines if any(m in l for m in SANITIZER_MARKS)]
        assert not reports, reports[:20]


if __name__ == "__main__":
    run_tests([test_soak_ends_with_nothing_left])
