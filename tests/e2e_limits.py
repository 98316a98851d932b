"""HTTP limits and protocol handling against the real daemon: 413 (raw and
curl), 431, slowloris cut by the header timeout while others are served,
idle keep-alive close, the connection limit (503), pipelined requests
answered in order (streams included), HTTP/1.0, Expect: 100-continue."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import SHARED, Daemon, generate, raw_exchange, read_until, request, run_tests  # noqa: E402

D = None
MAX_BODY = 4096
ARGS = ("--max-body-bytes", str(MAX_BODY), "--max-header-bytes", "2048",
        "--header-timeout-ms", "700", "--idle-timeout-ms", "700", "--max-connections", "8")


def gen_body(job_id, max_tokens=3, pad=0):
    b = json.dumps({"job_id": job_id, "prompt": "Once", "max_tokens": max_tokens}).encode()
    return b + b" " * pad


def post_raw(path, body, extra=b""):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" + extra +
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def status_of(resp):
    return int(resp.split(b" ", 2)[1])


def test_body_over_the_limit_answers_413():
    body = b"x" * (MAX_BODY + 1)
    resp, _ = raw_exchange(D.port, post_raw(b"/execute", body), until=b"}}")
    assert status_of(resp) == 413, resp
    doc = json.loads(resp.split(b"\r\n\r\n", 1)[1])
    assert doc["error"]["code"] and "limit" in doc["error"]["message"], doc


def test_body_over_the_limit_answers_413_to_curl():
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(b"{" + b" " * (3 * MAX_BODY) + b"}")
        name = f.name
    try:
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                              "Content-Type: application/json", "--data-binary", "@" + name,
                              "http://127.0.0.1:%d/execute" % D.port],
                             capture_output=True, timeout=20).stdout.decode()
        assert out == "413", out
    finally:
        os.unlink(name)


def test_body_at_the_limit_is_accepted():
    body = gen_body("at-limit", 1)
    body += b" " * (MAX_BODY - len(body))
    assert len(body) == MAX_BODY
    resp, _ = raw_exchange(D.port, post_raw(b"/execute", body), until=b"0\r\n\r\n")
    assert status_of(resp) == 200, resp


def test_header_section_over_the_limit_answers_431():
    req = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * 3000 + b"\r\n\r\n"
    resp, closed = raw_exchange(D.port, req, until=b"}}")
    assert status_of(resp) == 431, resp


def test_slowloris_is_cut_by_the_header_timeout_while_others_are_served():
    slow = socket.create_connection(("127.0.0.1", D.port))
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")
    t0 = time.time()
    for _ in range(5):  # the trickle goes on; others are answered at once
        slow.sendall(b"X-A: b\r\n")
        t1 = time.time()
        st, _, _ = request(D.port, "GET", "/health", timeout=2)
        assert st == 200 and time.time() - t1 < 0.5
        time.sleep(0.05)
    resp, closed = read_until(slow, 5.0)
    elapsed = time.time() - t0
    slow.close()
    assert closed, resp
    assert status_of(resp) == 408, resp
    assert 0.5 < elapsed < 3.0, elapsed


def test_idle_keep_alive_connection_is_closed():
    s = socket.create_connection(("127.0.0.1", D.port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    resp, closed = read_until(s, 2.0, until=b"}")
    assert status_of(resp) == 200 and not closed
    t0 = time.time()
    rest, closed = read_until(s, 5.0)
    s.close()
    assert closed and rest == b"", rest
    assert 0.4 < time.time() - t0 < 3.0


def test_connections_over_the_limit_get_503_and_close():
    time.sleep(0.2)  # earlier tests' connections are gone
    held = [socket.create_connection(("127.0.0.1", D.port)) for _ in range(8)]
    time.sleep(0.1)
    resp, closed = raw_exchange(D.port, b"", timeout=3.0)
    assert closed and status_of(resp) == 503, resp
    held[0].sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    ok, _ = read_until(held[0], 2.0, until=b"}")
    assert status_of(ok) == 200, ok
    for s in held:
        s.close()
    time.sleep(0.1)
    assert request(D.port, "GET", "/health")[0] == 200


def test_pipelined_requests_are_answered_in_order():
    reqs = (b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n" +
            post_raw(b"/execute", gen_body("pipe-1")) +
            b"GET /v1/ready HTTP/1.1\r\nHost: t\r\n\r\n" +
            post_raw(b"/v1/inference", gen_body("pipe-2")) +
            b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n" +
            b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    resp, closed = raw_exchange(D.port, reqs, timeout=20.0)
    assert closed, resp
    text = resp.decode()
    marks = [text.find(m) for m in ('"status":"healthy"', "event: started", '{"ready":true}',
                                    "data: [DONE]", "NOT_FOUND")]
    assert all(m >= 0 for m in marks) and marks == sorted(marks), (marks, text)
    assert text.count("HTTP/1.1 ") == 6, text
    assert text.rfind('"status":"healthy"') > marks[-1], text


def test_http10_gets_an_answer_then_close():
    resp, closed = raw_exchange(D.port, b"GET /health HTTP/1.0\r\n\r\n")
    assert closed and status_of(resp) == 200, resp
    resp, closed = raw_exchange(D.port, post_raw(b"/execute", gen_body("h10")).replace(
        b"HTTP/1.1", b"HTTP/1.0"))
    assert closed and status_of(resp) == 200, resp
    assert b"Transfer-Encoding" not in resp and b"event: end" in resp, resp


def test_expect_100_continue_is_honoured():
    body = gen_body("exp")
    s = socket.create_connection(("127.0.0.1", D.port))
    head = post_raw(b"/execute", body, extra=b"Expect: 100-continue\r\n")
    s.sendall(head[:len(head) - len(body)])
    interim, _ = read_until(s, 2.0, until=b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
    s.sendall(body)
    resp, _ = read_until(s, 10.0, until=b"0\r\n\r\n")
    s.close()
    assert status_of(resp) == 200 and b"event: end" in resp, resp


def test_malformed_http_answers_400_and_closes():
    resp, closed = raw_exchange(D.port, b"BLAH\x01 / HTTP/1.1\r\n\r\n")
    assert closed and status_of(resp) == 400, resp


def test_step_budget_below_the_batch_size_still_serves():
    # The scheduler raises the per-step token budget to --max-batch; the
    # engine must be sized the same way or start-up fails.
    with Daemon("--step-tokens", "4", "--max-batch", "8") as d2:
        status, _, objs, text = generate(d2.port, "sb", "Once upon a time there was", 5,
                                         temperature=0)
        assert status == 200 and objs[-1]["type"] == "end", objs[-1:]
        assert objs[-1]["tokens_out"] == 5


def test_vocab_only_file_exits_1_before_listening():
    vocab = os.path.join(SHARED, "vocab", "qwen2-vocab.gguf")
    cmd = Daemon(model=vocab).cmdline()
    r = subprocess.run(cmd, capture_output=True, timeout=30)
    assert r.returncode == 1, r.returncode
    lines = r.stderr.decode().splitlines()
    errors = [json.loads(l) for l in lines if '"level":"error"' in l]
    assert len(errors) == 1 and "no weights" in errors[0]["error"], lines
    assert not any('"msg":"listening"' in l for l in lines), lines


def main():
    global D
    with Daemon(*ARGS) as d:
        D = d
        run_tests([
            test_body_over_the_limit_answers_413,
            test_body_over_the_limit_answers_413_to_curl,
            test_body_at_the_limit_is_accepted,
            test_header_section_over_the_limit_answers_431,
            test_slowloris_is_cut_by_the_header_timeout_while_others_are_served,
            test_idle_keep_alive_connection_is_closed,
            test_connections_over_the_limit_get_503_and_close,
            test_pipelined_requests_are_answered_in_order,
            test_http10_gets_an_answer_then_close,
            test_expect_100_continue_is_honoured,
            test_malformed_http_answers_400_and_closes,
            test_step_budget_below_the_batch_size_still_serves,
            test_vocab_only_file_exits_1_before_listening,
        ])


if __name__ == "__main__":
    main()
