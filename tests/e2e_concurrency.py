"""Concurrency against the real daemon: 50 simultaneous greedy streams give
the same texts as single runs, /health stays fast while every slot is busy,
a client that disconnects mid-stream frees its slot and KV blocks (seen in
/health), and a full queue answers 503 with Retry-After."""

import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import (Daemon, Stream, check_stream_shape, generate, get_json,  # noqa: E402
                        model_path, post_json, run_tests, wait_for)

PROMPTS = ["Once upon a time", "The cat", "Tom and Lily went", "A big red ball", "She said"]
N_STREAMS = 50
MAX_TOKENS = 24


def test_fifty_concurrent_streams_match_single_greedy_runs():
    with Daemon("--max-batch", "16", "--max-queue", "64") as d:
        ref = {}
        for k, p in enumerate(PROMPTS):
            st, _, objs, text = generate(d.port, "ref-%d" % k, p, MAX_TOKENS, temperature=0)
            assert st == 200 and objs[-1]["type"] == "end", objs
            ref[p] = (text, objs[-1]["tokens_out"])
        results = [None] * N_STREAMS
        health_lat = []
        stop = threading.Event()

        def run(i):
            p = PROMPTS[i % len(PROMPTS)]
            path = "/execute" if i % 2 == 0 else "/v1/inference"
            results[i] = (p, generate(d.port, "c-%d" % i, p, MAX_TOKENS, path=path, temperature=0))

        def poll_health():
            while not stop.is_set():
                t0 = time.time()
                st, doc = get_json(d.port, "/health")
                health_lat.append((time.time() - t0, st, doc["slots_busy"]))
                time.sleep(0.01)

        hp = threading.Thread(target=poll_health)
        hp.start()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(N_STREAMS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stop.set()
        hp.join()
        for i, r in enumerate(results):
            assert r is not None, i
            p, (st, frames, objs, text) = r
            assert st == 200, (i, st, text)
            check_stream_shape(objs, "c-%d" % i)
            assert objs[-1]["type"] == "end", objs[-1]
            assert (text, objs[-1]["tokens_out"]) == ref[p], (i, text, ref[p])
        assert health_lat and all(st == 200 for _, st, _ in health_lat), health_lat
        assert max(l for l, _, _ in health_lat) < 1.0, max(health_lat)
        st, doc = get_json(d.port, "/health")
        assert doc["slots_busy"] == 0 and doc["queue_depth"] == 0, doc


def test_disconnect_mid_stream_frees_the_slot_and_kv():
    # llama-mid is slow enough that a whole generation takes a while; the
    # same request first runs to its end to measure how long that is.
    with Daemon("--max-batch", "4", model=model_path("llama-mid-f32.gguf")) as d:
        req = {"prompt": PROMPTS[0], "max_tokens": 480, "temperature": 0}
        t0 = time.time()
        st, _, objs, _ = generate(d.port, "whole", PROMPTS[0], 480, temperature=0)
        full = time.time() - t0
        assert st == 200 and objs[-1]["type"] == "end", objs
        t0 = time.time()
        s = Stream(d.port, "/execute", dict(req, job_id="gone"))
        assert s.status == 200
        assert s.next_frame() is not None and s.next_frame() is not None  # started, a token
        doc = get_json(d.port, "/health")[1]
        assert doc["slots_busy"] == 1 and doc["kv"]["blocks_used"] > 0, doc
        s.conn.sock.shutdown(socket.SHUT_RDWR)
        s.close()

        def freed():
            doc = get_json(d.port, "/health")[1]
            return doc["slots_busy"] == 0 and doc["queue_depth"] == 0 and \
                doc["kv"]["blocks_used"] == 0 and doc["kv"]["seqs_active"] == 0
        assert wait_for(freed, 5, interval=0.005), get_json(d.port, "/health")
        assert time.time() - t0 < 0.6 * full, (time.time() - t0, full)
        # the job_id is free again: the job really ended
        st, _, objs, _ = generate(d.port, "gone", PROMPTS[0], 2, temperature=0)
        assert st == 200 and objs[-1]["type"] == "end", objs


def test_full_queue_answers_503_with_retry_after():
    with Daemon("--max-batch", "1", "--max-queue", "1") as d:
        long = {"prompt": PROMPTS[0], "max_tokens": 400, "temperature": 0}
        a = Stream(d.port, "/execute", dict(long, job_id="q-a"))
        a.next_frame()
        b = Stream(d.port, "/execute", dict(long, job_id="q-b"))
        st, h, doc, raw = post_json(d.port, "/execute", dict(long, job_id="q-c"))
        a_objs = [f for f in a.read_all()]
        a.close()
        b.read_all()
        b.close()
        assert st == 503, (st, raw)
        assert h.get("retry-after"), h
        assert doc["error"]["code"], doc


def test_queued_stream_gets_pings_until_its_first_token():
    with Daemon("--max-batch", "1", "--max-queue", "16", "--ping-interval-ms", "100") as d:
        long = {"prompt": PROMPTS[0], "max_tokens": 480, "temperature": 0}
        ahead = [Stream(d.port, "/execute", dict(long, job_id="ahead-%d" % i)) for i in range(6)]
        last = Stream(d.port, "/v1/inference", dict(long, job_id="last", max_tokens=3))
        t0 = time.time()
        frames = last.read_all()
        waited = time.time() - t0
        last.close()
        for s in ahead:
            s.close()
        kinds = ["ping" if f["comment"] == "ping" else json.loads(f["data"])["type"]
                 if f["data"] != "[DONE]" else "done" for f in frames]
        assert waited > 0.3, waited  # it really waited behind the others
        assert kinds.count("ping") >= 1, kinds
        first_token = kinds.index("token")
        assert "ping" not in kinds[first_token:], kinds
        assert kinds[-1] == "done", kinds


def main():
    run_tests([
        test_fifty_concurrent_streams_match_single_greedy_runs,
        test_disconnect_mid_stream_frees_the_slot_and_kv,
        test_full_queue_answers_503_with_retry_after,
        test_queued_stream_gets_pings_until_its_first_token,
    ])


if __name__ == "__main__":
    main()
