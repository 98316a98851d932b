"""Resumable streams against the real daemon: every frame's id
(<job id>:<index>, escaped), a resumable stream cut at random frames and
bytes (after a held-back partial UTF-8 character of llama-tiny's random
byte tokens, and before the first frame, during prefill) and resumed with
Last-Event-ID gives exactly the frames of an uninterrupted run (temperature
0, and seeded sampling), on /execute and /v1/inference; the errors (unknown,
not resumable, expired, second reader, id past the end, malformed id, auth);
/cancel of a detached job; a journal over its bound; expiry cancelling the
job and freeing its KV blocks; --resume-grace-ms 0; the metrics."""

import http.client
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import (Daemon, Stream, check_stream_shape, events_of, get_json,  # noqa: E402
                        model_path, post_json, request, run_tests, wait_for)

TINY = model_path("llama-tiny-f32.gguf")  # random weights: byte tokens, partial UTF-8


def body(job_id, **kw):
    b = {"job_id": job_id, "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}
    b.update(kw)
    return b


def comparable(objs):
    """A stream's objects without what differs between two runs of one job."""
    out = []
    for o in objs:
        o = dict(o)
        for k in ("started_at", "decode_time_ms"):
            o.pop(k, None)
        out.append(o)
    return out


def whole(port, path, b, headers=None):
    s = Stream(port, path, b, headers=headers)
    assert s.status == 200, (s.status, s.resp.read())
    frames = s.read_all()
    s.close()
    return frames


def cut_after(port, path, b, n_frames, extra_bytes=0, headers=None):
    """Reads n_frames whole frames (and extra_bytes of the next), then
    drops the connection. Returns the frames read."""
    s = Stream(port, path, b, headers=headers)
    assert s.status == 200, s.status
    got = []
    for _ in range(n_frames):
        f = s.next_frame()
        if f is None:
            break
        got.append(f)
    if extra_bytes:
        s.resp.read(extra_bytes)
    s.close()
    return got


def resume(port, job_id, last_id=None, path="/execute/", headers=None, retry_409=True):
    """GET the rest of a stream: (status, frames or error document)."""
    deadline = time.time() + 5
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        h = dict(headers or {})
        if last_id is not None:
            h["Last-Event-ID"] = last_id
        conn.request("GET", path + job_id.replace("%", "%25").replace(" ", "%20").replace("/", "%2F"),
                     headers=h)
        r = conn.getresponse()
        if r.status != 200:
            data = r.read()
            conn.close()
            # the server may not have seen the old connection close yet
            if r.status == 409 and retry_409 and time.time() < deadline:
                time.sleep(0.02)
                continue
            return r.status, json.loads(data) if data else None
        data = r.read().decode("utf-8")
        conn.close()
        from e2e_common import parse_sse
        return 200, parse_sse(data)


def test_every_frame_carries_its_job_id_and_index():
    with Daemon() as d:
        for path, jid, enc in (("/execute", "ids-1", "ids-1"), ("/v1/inference", "a b:c%d", "a%20b%3Ac%25d")):
            frames = [f for f in whole(d.port, path, body(jid, max_tokens=6)) if f["data"] != "[DONE]"]
            assert frames, frames
            for k, f in enumerate(frames):
                assert f["id"] == "%s:%d" % (enc, k), (k, f)


def run_cut_and_resume(d, path, b, k, extra, rnd):
    ref = [f for f in whole(d.port, path, dict(b, job_id=b["job_id"] + "-ref"))]
    jid = b["job_id"]
    got = cut_after(d.port, path, dict(b, resumable=True), k, extra)
    last = got[-1]["id"] if got else None
    st, rest = resume(d.port, jid, last, path=path + "/")
    assert st == 200, (st, rest)
    joined = got + rest
    ids = [f["id"] for f in joined if f["id"] is not None]
    assert ids == ["%s:%d" % (jid, i) for i in range(len(ids))], ids
    a, r = events_of(joined), events_of(ref)
    for o in r:
        if o.get("type") == "started":
            o["job_id"] = jid
    assert comparable(a) == comparable(r), (k, extra, comparable(a), comparable(r))
    check_stream_shape(a, jid)
    if path == "/v1/inference":
        assert joined[-1]["data"] == "[DONE]", joined[-3:]
    return len(ref)


def test_cut_at_random_frames_resumes_exactly_greedy_and_seeded():
    # llama-mid is slow enough that most cuts land while the job still runs
    # (the rest after it ended: its frames are kept for the grace either way).
    rnd = random.Random(7)
    with Daemon("--max-batch", "4", model=model_path("llama-mid-f32.gguf")) as d:
        n = 0
        for temp in (0, 0.9):
            for trial in range(5):
                path = "/execute" if trial % 2 == 0 else "/v1/inference"
                b = body("cut-%s-%d" % (temp, trial), temperature=temp, seed=1234 + trial, max_tokens=40)
                k = rnd.randint(1, 38)
                n += run_cut_and_resume(d, path, b, k, rnd.choice([0, 0, 5, 17]), rnd)
        assert n > 0


def test_cut_after_every_frame_of_a_byte_token_stream():
    # llama-tiny at temperature 2 with seed 109 samples a UTF-8 lead byte
    # (a byte token) as its 12th token: the detokenizer holds it back (that
    # token has no frame; the next frame starts with U+FFFD), so one cut
    # falls while a partial character is held.
    with Daemon("--max-batch", "4", model=TINY) as d:
        b = body("bytes", temperature=2.0, seed=109, max_tokens=16)
        ref = events_of(whole(d.port, "/execute", dict(b, job_id="bytes-ref")))
        toks = [o for o in ref if o["type"] == "token"]
        assert ref[-1]["tokens_out"] > len(toks) or any("\ufffd" in o["t"] for o in toks), ref
        n_frames = len(ref)
        for k in range(1, n_frames):
            jb = dict(b, job_id="bytes-%d" % k)
            run_cut_and_resume(d, "/execute", jb, k, 0, None)


def test_cut_during_prefill_resumes_from_the_first_frame():
    with Daemon("--max-batch", "2", model=model_path("llama-mid-f32.gguf")) as d:
        long_prompt = "Once upon a time there was a little cat. " * 40
        b = body("prefill", prompt=long_prompt, max_tokens=4)
        ref = events_of(whole(d.port, "/execute", dict(b, job_id="prefill-ref")))
        s = Stream(d.port, "/execute", dict(b, resumable=True))
        s.close()  # before any frame: the prompt is still being read
        st, rest = resume(d.port, "prefill")
        assert st == 200, (st, rest)
        got = events_of(rest)
        for o in ref:
            if o["type"] == "started":
                o["job_id"] = "prefill"
        assert comparable(got) == comparable(ref), (got, ref)


def test_resume_errors_are_clear():
    with Daemon("--resume-grace-ms", "3000", model=TINY) as d:
        st, doc = resume(d.port, "never")
        assert st == 404 and doc["error"]["code"] == "RESUME_NOT_FOUND", (st, doc)
        # not resumable: a cut cancels as before
        cut_after(d.port, "/execute", body("plain", max_tokens=150), 2)
        st, doc = resume(d.port, "plain")
        assert st == 404, (st, doc)
        # a second reader while the first is attached
        s = Stream(d.port, "/execute", body("two", max_tokens=150, resumable=True))
        s.next_frame()
        st, doc = resume(d.port, "two", retry_409=False)
        assert st == 409 and doc["error"]["code"] == "STREAM_ATTACHED", (st, doc)
        s.close()
        # past the end, malformed, another job's id
        st, doc = resume(d.port, "two", "two:999999")
        assert st == 400 and doc["error"]["code"] == "LAST_EVENT_ID_PAST_END", (st, doc)
        for bad in ("two", "two:x", "other:1", "two:-1", "two:99999999999999999999999"):
            st, doc = resume(d.port, "two", bad)
            assert st == 400 and doc["error"]["code"] == "INVALID_LAST_EVENT_ID", (bad, st, doc)
        # a held id cannot be reused while it may be resumed
        st, h, doc, raw = post_json(d.port, "/execute", body("two", resumable=True))
        assert st == 409, (st, raw)
        st, rest = resume(d.port, "two", "two:0")
        assert st == 200 and events_of(rest)[-1]["type"] == "end", rest[-2:]
        # ended, it is kept for its grace: from its last id there is nothing more
        st, more = resume(d.port, "two", rest[-1]["id"])
        assert st == 200 and more == [], (st, more)
        st, doc = resume(d.port, "bad%2Fslash")
        assert st == 404, (st, doc)


def test_resume_needs_the_same_auth():
    with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
        f.write("k3y\n")
        keyfile = f.name
    try:
        ok = {"Authorization": "Bearer k3y"}
        with Daemon("--api-key-file", keyfile, model=TINY) as d:
            cut_after(d.port, "/execute", body("auth", max_tokens=150, resumable=True), 2, headers=ok)
            st, doc = resume(d.port, "auth", "auth:1")
            assert st == 401, (st, doc)
            st, rest = resume(d.port, "auth", "auth:1", headers=ok)
            assert st == 200 and events_of(rest)[-1]["type"] == "end", rest[-2:]
    finally:
        os.unlink(keyfile)


def test_cancel_of_a_detached_job_ends_it_with_cancelled():
    with Daemon(model=model_path("llama-mid-f32.gguf")) as d:
        got = cut_after(d.port, "/execute", body("cx", max_tokens=400, resumable=True), 2)
        st = post_json(d.port, "/cancel", {"job_id": "cx"})[0]
        assert st == 202, st
        st, rest = resume(d.port, "cx", got[-1]["id"])
        assert st == 200, (st, rest)
        objs = events_of(rest)
        assert objs[-1]["type"] == "error" and objs[-1]["code"] == "CANCELLED", objs[-2:]


def idle(d):
    doc = get_json(d.port, "/health")[1]
    ok = doc["live_jobs"] == 0 and doc["kv"]["blocks_used"] == 0 and doc["slots_busy"] == 0
    return doc if ok else None


def metric(d, name):
    st, _, text = request(d.port, "GET", "/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_expiry_cancels_the_job_and_frees_its_kv():
    with Daemon("--resume-grace-ms", "300", model=model_path("llama-mid-f32.gguf")) as d:
        cut_after(d.port, "/execute", body("exp", max_tokens=400, resumable=True), 2)
        doc = get_json(d.port, "/health")[1]
        assert doc["live_jobs"] == 1, doc
        assert wait_for(lambda: idle(d), timeout=10), get_json(d.port, "/health")[1]
        st, doc = resume(d.port, "exp")
        assert st == 404, (st, doc)
        assert metric(d, "llorch_stream_resume_expired_total") == 1
        # a job that ends while detached is dropped too when its grace ends
        # (counted as expired only if it was still running then, which a
        # loaded machine may make it)
        cut_after(d.port, "/execute", body("exp2", max_tokens=2, resumable=True), 1)
        assert wait_for(lambda: idle(d), timeout=10), get_json(d.port, "/health")[1]
        assert resume(d.port, "exp2")[0] == 404
        assert metric(d, "llorch_stream_resume_expired_total") in (1, 2)


def test_a_journal_over_its_bound_stops_being_resumable_cleanly():
    with Daemon("--resume-job-bytes", "4096", model=TINY) as d:
        # attached all along: the whole stream still arrives
        objs = events_of(whole(d.port, "/execute", body("big", max_tokens=200, resumable=True, temperature=1.5)))
        assert objs[-1]["type"] == "end" and objs[-1]["tokens_out"] > 40, objs[-1]
        # cut past the bound: nothing to resume, the job is cancelled
        cut_after(d.port, "/execute", body("big2", max_tokens=200, resumable=True, temperature=1.5), 60)
        assert wait_for(lambda: idle(d), timeout=10), get_json(d.port, "/health")[1]
        st, doc = resume(d.port, "big2")
        assert st == 404, (st, doc)


def test_grace_zero_keeps_todays_behaviour():
    with Daemon("--resume-grace-ms", "0", model=model_path("llama-mid-f32.gguf")) as d:
        cut_after(d.port, "/execute", body("g0", max_tokens=400, resumable=True), 2)
        assert wait_for(lambda: idle(d), timeout=10), get_json(d.port, "/health")[1]
        st, doc = resume(d.port, "g0")
        assert st == 404, (st, doc)


def test_header_asks_for_a_grace_and_metrics_count_resumes():
    with Daemon(model=TINY) as d:
        got = cut_after(d.port, "/v1/inference", body("hdr", max_tokens=12), 3,
                        headers={"X-Resume-Grace-Ms": "2000"})
        # from the first frame: the two after it were kept and are replayed
        st, rest = resume(d.port, "hdr", got[0]["id"], path="/v1/inference/")
        assert st == 200 and rest[-1]["data"] == "[DONE]", rest[-2:]
        assert [f["data"] for f in rest[:2]] == [f["data"] for f in got[1:3]], (rest[:2], got)
        assert metric(d, "llorch_stream_resumes_total") == 1
        assert metric(d, "llorch_stream_replayed_frames_total") >= 2
        st, h, doc, raw = post_json(d.port, "/execute", body("hdr2"), headers={"X-Resume-Grace-Ms": "soon"})
        assert st == 400, (st, raw)


def chat_text(frames):
    """The content of a chat stream's chunks, and its finish reason."""
    text, fin = "", None
    for f in frames:
        if f["data"] and f["data"] != "[DONE]":
            c = json.loads(f["data"])["choices"][0]
            text += c["delta"].get("content") or ""
            fin = c["finish_reason"] or fin
    return text, fin


def test_openai_chat_stream_resumes_with_its_chunk_id():
    with Daemon(model=model_path("llama-mid-f32.gguf")) as d:
        req = {"messages": [{"role": "user", "content": "Tell a story"}], "max_tokens": 30,
               "temperature": 0, "stream": True}
        ref = whole(d.port, "/v1/chat/completions", req)
        assert all(f["id"] is None for f in ref), ref[:2]  # not resumable: the wire form as before
        for k in (1, 3, 7):
            got = cut_after(d.port, "/v1/chat/completions", dict(req, resumable=True), k, 5)
            cid = json.loads(got[0]["data"])["id"]
            assert [f["id"] for f in got] == ["%s:%d" % (cid, i) for i in range(len(got))], got
            st, rest = resume(d.port, cid, got[-1]["id"], path="/v1/chat/completions/")
            assert st == 200, (st, rest)
            assert rest[-1]["data"] == "[DONE]", rest[-2:]
            assert chat_text(got + rest) == chat_text(ref), (chat_text(got + rest), chat_text(ref))
        st, doc = resume(d.port, "chatcmpl-nope", path="/v1/chat/completions/")
        assert st == 404 and doc["error"]["code"] == "resume_not_found", (st, doc)
        # a completion id is not a chat stream, and worker jobs are not OpenAI streams
        st, doc = resume(d.port, cid, path="/v1/completions/")
        assert st == 404, (st, doc)
        st, doc = resume(d.port, cid, path="/execute/")
        assert st == 404, (st, doc)


if __name__ == "__main__":
    run_tests([
        test_every_frame_carries_its_job_id_and_index,
        test_cut_at_random_frames_resumes_exactly_greedy_and_seeded,
        test_cut_after_every_frame_of_a_byte_token_stream,
        test_cut_during_prefill_resumes_from_the_first_frame,
        test_resume_errors_are_clear,
        test_resume_needs_the_same_auth,
        test_cancel_of_a_detached_job_ends_it_with_cancelled,
        test_expiry_cancels_the_job_and_frees_its_kv,
        test_a_journal_over_its_bound_stops_being_resumable_cleanly,
        test_grace_zero_keeps_todays_behaviour,
        test_header_asks_for_a_grace_and_metrics_count_resumes,
        test_openai_chat_stream_resumes_with_its_chunk_id,
    ])
