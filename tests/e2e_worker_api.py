"""The worker contract end to end against the real daemon: /health shapes,
/v1/ready, both stream framings with their event order and JSON shapes, every
validation rule (400 list, 422, 415, malformed JSON, empty body, invalid
UTF-8), 409, cancel in both forms, 404/405, bearer auth, and the shutdown
endpoint."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import (Daemon, Stream, check_stream_shape, events_of, generate,  # noqa: E402
                        get_json, post_json, raw_exchange, request, run_tests, wait_for)

D = None  # the shared daemon
PROMPT = "Once upon a time"


def body(**kw):
    b = {"job_id": "v", "prompt": PROMPT, "max_tokens": 4}
    b.update(kw)
    return {k: v for k, v in b.items() if v is not DROP}


DROP = object()


def test_health_has_the_contract_shape():
    for path in ("/health", "/v1/health"):
        st, doc = get_json(D.port, path)
        assert st == 200, (st, doc)
        assert doc["status"] == "healthy" and doc["model_loaded"] is True, doc
        assert doc["vram_bytes"] == 0 and doc["memory_type"] == "cpu", doc
        assert isinstance(doc["memory_bytes"], int) and doc["memory_bytes"] > 0, doc
        for k in ("model", "arch"):
            assert isinstance(doc[k], str) and doc[k], doc
        for k in ("slots_total", "slots_busy", "queue_depth"):
            assert isinstance(doc[k], int), doc
        assert doc["slots_total"] >= 1 and isinstance(doc["capabilities"], dict), doc


def test_ready_says_true():
    st, doc = get_json(D.port, "/v1/ready")
    assert st == 200 and doc == {"ready": True}, (st, doc)


def test_execute_stream_has_headers_order_and_shapes():
    s = Stream(D.port, "/execute", body(job_id="shape-1", max_tokens=5, temperature=0))
    assert s.status == 200
    assert s.headers["content-type"] == "text/event-stream", s.headers
    assert s.headers["cache-control"] == "no-cache", s.headers
    assert s.headers["x-accel-buffering"] == "no", s.headers
    assert s.headers["transfer-encoding"] == "chunked", s.headers
    frames = s.read_all()
    s.close()
    for f in frames:
        if f["comment"] is None:
            assert f["event"] is not None, f
            assert json.loads(f["data"])["type"] == f["event"], f
    objs = events_of(frames)
    check_stream_shape(objs, "shape-1")
    assert objs[0]["type"] == "started", objs
    assert objs[-1]["type"] == "end", objs
    assert objs[-1]["stop_reason"] in ("max_tokens", "eos"), objs
    assert objs[-1]["tokens_out"] <= 5, objs
    if objs[-1]["stop_reason"] == "max_tokens":
        assert objs[-1]["tokens_out"] == 5, objs


def test_inference_stream_is_data_only_and_ends_with_done():
    s = Stream(D.port, "/v1/inference", body(job_id="shape-2", max_tokens=3, temperature=0))
    assert s.status == 200
    assert s.headers["content-type"] == "text/event-stream", s.headers
    frames = s.read_all()
    s.close()
    data_frames = [f for f in frames if f["comment"] is None]
    for f in data_frames:
        assert f["event"] is None, f
    assert data_frames[-1]["data"] == "[DONE]", frames
    check_stream_shape(events_of(frames), "shape-2")


def test_both_framings_give_the_same_greedy_text():
    _, _, a, ta = generate(D.port, "same-a", PROMPT, 8, temperature=0)
    _, _, b, tb = generate(D.port, "same-b", PROMPT, 8, path="/v1/inference", temperature=0)
    assert ta == tb, (ta, tb)
    assert a[-1]["tokens_out"] == b[-1]["tokens_out"], (a[-1], b[-1])


def test_stream_connection_is_reused_after_the_terminal_event():
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", D.port, timeout=10)
    for k in range(3):
        c.request("POST", "/execute", body=json.dumps(body(job_id="reuse-%d" % k, max_tokens=2)),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200
        text = r.read().decode()
        assert "event: end" in text or "event: error" in text, text
    c.request("GET", "/health")
    r = c.getresponse()
    assert r.status == 200
    r.read()
    c.close()


def expect_violations(b, want):
    st, h, doc, raw = post_json(D.port, "/execute", b)
    assert st == 400, (st, raw)
    got = [(e["field"], e["constraint"]) for e in doc["errors"]]
    assert got == want, (got, want)
    return doc["errors"]


def test_each_field_out_of_range_is_listed_with_its_constraint():
    cases = [
        (dict(job_id=""), [("job_id", "non_empty")]),
        (dict(prompt=""), [("prompt", "length(1..=32768)")]),
        (dict(prompt="é" * 32769), [("prompt", "length(1..=32768)")]),
        (dict(max_tokens=0), [("max_tokens", "range(1..=2048)")]),
        (dict(max_tokens=2049), [("max_tokens", "range(1..=2048)")]),
        (dict(temperature=-0.1), [("temperature", "range(0.0..=2.0)")]),
        (dict(temperature=2.5), [("temperature", "range(0.0..=2.0)")]),
        (dict(top_p=1.01), [("top_p", "range(0.0..=1.0)")]),
        (dict(top_p=-1), [("top_p", "range(0.0..=1.0)")]),
        (dict(repetition_penalty=2.1), [("repetition_penalty", "range(0.0..=2.0)")]),
        (dict(min_p=1.5), [("min_p", "range(0.0..=1.0)")]),
        (dict(stop=["a", "b", "c", "d", "e"]), [("stop", "max_count(4)")]),
        (dict(stop=["x" * 101]), [("stop[0]", "max_length(100)")]),
    ]
    for kw, want in cases:
        errs = expect_violations(body(**kw), want)
        for e in errs:
            assert isinstance(e["message"], str) and e["message"], e
            if e["field"] == "prompt" or e["field"].startswith("stop"):
                assert "value" not in e, e
            else:
                assert "value" in e, e


def test_boundaries_are_inclusive():
    for kw in (dict(max_tokens=1), dict(temperature=0.0), dict(temperature=2.0), dict(top_p=0),
               dict(top_p=1), dict(min_p=0), dict(min_p=1), dict(repetition_penalty=0),
               dict(repetition_penalty=2), dict(stop=["x" * 100, "a", "b", "c"]),
               dict(prompt="é" * 32768, max_tokens=1), dict(top_k=0), dict(seed=0)):
        st, frames, objs, text = generate(D.port, "inc", kw.pop("prompt", PROMPT),
                                          kw.pop("max_tokens", 1), **kw)
        assert st == 200, (kw, st, text)
        assert objs[-1]["type"] in ("end", "error"), objs


def test_message_reads_like_the_contract():
    errs = expect_violations(body(temperature=3), [("temperature", "range(0.0..=2.0)")])
    assert errs[0]["message"] == "temperature must be at most 2.0 (got 3)", errs
    assert errs[0]["value"] == 3, errs


def test_every_violation_is_listed_in_field_order():
    b = {"job_id": "", "prompt": "", "max_tokens": 0, "temperature": 3, "top_p": 2,
         "repetition_penalty": 5, "min_p": -1, "stop": ["", "a", "b", "c", "d"]}
    got = expect_violations(b, [("job_id", "non_empty"), ("prompt", "length(1..=32768)"),
                                ("max_tokens", "range(1..=2048)"),
                                ("temperature", "range(0.0..=2.0)"), ("top_p", "range(0.0..=1.0)"),
                                ("repetition_penalty", "range(0.0..=2.0)"),
                                ("min_p", "range(0.0..=1.0)"), ("stop", "max_count(4)"),
                                ("stop[0]", "non_empty")])
    assert len(got) == 9


def expect_error(status, raw_body, content_type="application/json", code=None, contains=None):
    st, h, data = request(D.port, "POST", "/execute", body=raw_body,
                          headers={"Content-Type": content_type} if content_type else {})
    assert st == status, (st, data)
    doc = json.loads(data)
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    if code:
        assert doc["error"]["code"] == code, doc
    if contains:
        assert contains in doc["error"]["message"], doc
    return doc


def test_missing_required_fields_answer_422_naming_the_field():
    for f in ("job_id", "prompt", "max_tokens"):
        b = body()
        del b[f]
        expect_error(422, json.dumps(b).encode(), contains=f)


def test_wrong_types_answer_422_naming_the_field():
    for f, v in (("job_id", 5), ("prompt", ["x"]), ("max_tokens", "4"), ("max_tokens", 4.5),
                 ("temperature", "hot"), ("top_p", True), ("top_k", 1.5), ("seed", "42"),
                 ("stop", [1]), ("stop", {"a": 1}), ("min_p", [0])):
        expect_error(422, json.dumps(body(**{f: v})).encode(), contains=f)
    expect_error(422, b"[1,2]")


def test_malformed_json_answers_400_with_the_byte_offset():
    doc = expect_error(400, b'{"job_id": "x", "prompt": }', contains="byte offset 26")
    assert doc["error"]["code"] == "INVALID_JSON", doc


def test_empty_body_answers_400():
    expect_error(400, b"", code="INVALID_JSON", contains="byte offset 0")


def test_invalid_utf8_in_the_prompt_is_rejected_with_field_and_offset():
    raw = b'{"job_id":"u","max_tokens":2,"prompt":"ab\xff"}'
    doc = expect_error(400, raw, code="INVALID_UTF8")
    assert "prompt" in doc["error"]["message"], doc
    assert "byte offset %d" % raw.index(b"\xff") in doc["error"]["message"], doc


def test_wrong_content_type_answers_415():
    expect_error(415, json.dumps(body()).encode(), content_type="text/plain")
    expect_error(415, json.dumps(body()).encode(), content_type=None)
    st, _, _ = request(D.port, "POST", "/execute", body=json.dumps(body(job_id="ct", max_tokens=1)).encode(),
                       headers={"Content-Type": "application/json; charset=utf-8"})
    assert st == 200


def test_unknown_fields_are_ignored():
    st, _, objs, _ = generate(D.port, "unk", PROMPT, 1, whatever={"x": 1}, model="m")
    assert st == 200 and objs[-1]["type"] == "end", objs


def blockers(n):
    """n long jobs ahead in the queue (the daemon runs one job at a time), so
    that a job submitted next stays queued for a while."""
    return [Stream(D.port, "/execute", body(job_id="blk-%d" % i, max_tokens=400, temperature=0))
            for i in range(n)]


def finish(streams):
    for s in streams:
        s.read_all()
        s.close()


def test_duplicate_running_job_id_answers_409():
    ahead = blockers(1)
    s = Stream(D.port, "/execute", body(job_id="dup", max_tokens=4))
    assert s.status == 200
    st, h, doc, raw = post_json(D.port, "/execute", body(job_id="dup", max_tokens=1))
    assert st == 409, (st, raw)
    assert doc["error"]["code"] and "dup" in doc["error"]["message"], doc
    objs = events_of(s.read_all())
    s.close()
    finish(ahead)
    assert objs[-1]["type"] == "end", objs


def test_cancel_ends_the_stream_with_cancelled():
    ahead = blockers(2)
    s = Stream(D.port, "/execute", body(job_id="c1", max_tokens=4))
    assert s.status == 200
    st, h, doc, raw = post_json(D.port, "/cancel", {"job_id": "c1"})
    objs = events_of(s.read_all())
    s.close()
    finish(ahead)
    assert st == 202, (st, raw)
    check_stream_shape(objs, "c1")
    assert objs[-1]["type"] == "error" and objs[-1]["code"] == "CANCELLED", objs


def test_cancel_unknown_job_answers_404():
    st, h, doc, raw = post_json(D.port, "/cancel", {"job_id": "nope"})
    assert st == 404, (st, raw)
    st, h, doc, raw = post_json(D.port, "/cancel", {})
    assert st == 422, (st, raw)


def test_delete_inference_cancels_with_204():
    ahead = blockers(2)
    s = Stream(D.port, "/v1/inference", body(job_id="d/1 x", max_tokens=4))
    assert s.status == 200
    st, _, data = request(D.port, "DELETE", "/v1/inference/d%2F1%20x")
    frames = s.read_all()
    s.close()
    finish(ahead)
    assert st == 204 and data == b"", (st, data)
    objs = events_of(frames)
    assert frames[-1]["data"] == "[DONE]", frames
    assert objs[-1]["type"] == "error" and objs[-1]["code"] == "CANCELLED", objs
    st, _, _ = request(D.port, "DELETE", "/v1/inference/never")
    assert st == 404


def test_unknown_path_404_and_wrong_method_405_with_allow():
    st, h, data = request(D.port, "GET", "/nope")
    assert st == 404 and json.loads(data)["error"]["code"], (st, data)
    st, h, data = request(D.port, "GET", "/execute")
    assert st == 405 and h["allow"] == "POST", (st, h)
    st, h, data = request(D.port, "POST", "/health")
    assert st == 405 and h["allow"] == "GET", (st, h)
    st, h, data = request(D.port, "PUT", "/v1/inference/abc")
    assert st == 405 and h["allow"] == "GET, DELETE", (st, h)  # GET resumes a stream


def test_curl_sees_the_same_stream():
    out = subprocess.run(["curl", "-sN", "-H", "Content-Type: application/json", "-d",
                          json.dumps(body(job_id="curl", max_tokens=2)),
                          "http://127.0.0.1:%d/execute" % D.port],
                         capture_output=True, timeout=20).stdout.decode()
    assert out.startswith("event: started\ndata: {\"type\":\"started\""), out
    assert "\nevent: end\ndata: {\"type\":\"end\"" in out, out


def test_bearer_auth_guards_everything_but_health():
    with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
        f.write("s3cret-key\n")
        keyfile = f.name
    try:
        with Daemon("--api-key-file", keyfile) as d:
            assert request(d.port, "GET", "/health")[0] == 200
            assert request(d.port, "GET", "/v1/health")[0] == 200
            st, h, data = request(d.port, "GET", "/v1/ready")
            assert st == 401 and "bearer" in h.get("www-authenticate", "").lower(), (st, h)
            for hdr in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-key"},
                        {"Authorization": "Bearer s3cret-ke"}):
                st, _, _, _ = post_json(d.port, "/execute", body(job_id="a"), headers=hdr)
                assert st == 401, (hdr, st)
            assert post_json(d.port, "/cancel", {"job_id": "a"})[0] == 401
            assert request(d.port, "DELETE", "/v1/inference/a")[0] == 401
            assert request(d.port, "POST", "/v1/shutdown")[0] == 401
            ok = {"Authorization": "Bearer s3cret-key"}
            assert request(d.port, "GET", "/v1/ready", headers=ok)[0] == 200
            s = Stream(d.port, "/execute", body(job_id="a", max_tokens=1), headers=ok)
            assert s.status == 200
            s.read_all()
            s.close()
    finally:
        os.unlink(keyfile)


def test_shutdown_endpoint_drains_and_exits_zero():
    d = Daemon().start()
    try:
        st, h, doc, raw = post_json(d.port, "/v1/admin/shutdown", {})
        assert st == 202, (st, raw)
        rc = d.wait(20)
        assert rc == 0, (rc, d.log_lines[-5:])
    finally:
        d.kill()


def main():
    global D
    with Daemon("--max-batch", "1", "--max-queue", "16") as d:
        D = d
        run_tests([
            test_health_has_the_contract_shape,
            test_ready_says_true,
            test_execute_stream_has_headers_order_and_shapes,
            test_inference_stream_is_data_only_and_ends_with_done,
            test_both_framings_give_the_same_greedy_text,
            test_stream_connection_is_reused_after_the_terminal_event,
            test_each_field_out_of_range_is_listed_with_its_constraint,
            test_boundaries_are_inclusive,
            test_message_reads_like_the_contract,
            test_every_violation_is_listed_in_field_order,
            test_missing_required_fields_answer_422_naming_the_field,
            test_wrong_types_answer_422_naming_the_field,
            test_malformed_json_answers_400_with_the_byte_offset,
            test_empty_body_answers_400,
            test_invalid_utf8_in_the_prompt_is_rejected_with_field_and_offset,
            test_wrong_content_type_answers_415,
            test_unknown_fields_are_ignored,
            test_duplicate_running_job_id_answers_409,
            test_cancel_ends_the_stream_with_cancelled,
            test_cancel_unknown_job_answers_404,
            test_delete_inference_cancels_with_204,
            test_unknown_path_404_and_wrong_method_405_with_allow,
            test_curl_sees_the_same_stream,
            test_bearer_auth_guards_everything_but_health,
            test_shutdown_endpoint_drains_and_exits_zero,
        ])


if __name__ == "__main__":
    main()
