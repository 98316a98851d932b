"""End-to-end tests of the OpenAI-compatible API: the real daemon on
127.0.0.1 with the tiny shared models, driven by the official `openai` npm
package (tests/openai-client, installed here with npm ci from its lock file:
a failed install fails this test), by curl for the raw SSE framing, and by
plain HTTP for every error shape. Usage counts are checked against
`llorch-cli tokenize`, greedy text against /execute."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import (BUILD, HERE, Daemon, generate, get_json, model_path,  # noqa: E402
                        parse_sse, post_json, read_until, request, run_tests, wait_for)

CLIENT_DIR = os.path.join(HERE, "openai-client")
TINY = model_path("llama-tiny-f32.gguf")
TINY_ID = "llama-tiny-f32.gguf"
PROMPT = "Once upon a time"
ERROR_KEYS = {"message", "type", "param", "code"}

D = None  # the shared daemon (llama-tiny-f32)


# ---- helpers ----

def npm_install():
    """Installs the locked `openai` package unless it already is; any failure
    (no node, no npm, no registry) raises."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    assert node and npm, "node and npm are required (scripts/setup-deps installs nodejs npm)"
    lock = json.load(open(os.path.join(CLIENT_DIR, "package-lock.json")))
    want = lock["packages"]["node_modules/openai"]["version"]
    have_path = os.path.join(CLIENT_DIR, "node_modules", "openai", "package.json")
    if os.path.exists(have_path) and json.load(open(have_path))["version"] == want:
        return
    r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT_DIR,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, "npm ci failed:\n" + r.stdout + r.stderr
    assert json.load(open(have_path))["version"] == want


def sdk(port, op, params=None, key="none"):
    """One call through the openai npm package: the SDK's object, or
    {"error": {...}} for an API error."""
    env = dict(os.environ, OPENAI_BASE_URL="http://127.0.0.1:%d/v1" % port, OPENAI_API_KEY=key)
    r = subprocess.run(["node", os.path.join(CLIENT_DIR, "client.mjs"), op,
                        json.dumps(params or {})], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def cli():
    return os.path.join(BUILD, "tools", "llorch-cli")


def n_tokens(text, special=False):
    args = [cli(), "tokenize", "--model", TINY, "--bos", "--text", text]
    if special:
        args.insert(-2, "--special")
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return len(json.loads(r.stdout))


def chatml(messages):
    out = "".join("<|im_start|>%s\n%s<|im_end|>\n" % (m["role"], m["content"]) for m in messages)
    return out + "<|im_start|>assistant\n"


def check_error(status, headers, doc, want_status, param=None, code=None, type_=None):
    assert status == want_status, (status, doc)
    assert headers.get("content-type", "").startswith("application/json"), headers
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    e = doc["error"]
    assert set(e) == ERROR_KEYS, e
    assert isinstance(e["message"], str) and e["message"], e
    assert isinstance(e["type"], str) and e["type"], e
    assert e["param"] == param, (param, e)
    if code is not None:
        assert e["code"] == code, (code, e)
    if type_ is not None:
        assert e["type"] == type_, (type_, e)
    return e


def completion(port, **body):
    st, h, doc, raw = post_json(port, "/v1/completions", body)
    assert st == 200, (st, raw)
    return doc


def curl_stream(port, path, body):
    """The raw bytes of a streamed response as curl sees them, with headers."""
    r = subprocess.run(["curl", "-sS", "-N", "-D", "-", "-H", "Content-Type: application/json",
                        "-d", json.dumps(body), "http://127.0.0.1:%d%s" % (port, path)],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    head, _, body_bytes = r.stdout.partition(b"\r\n\r\n")
    return head.decode(), body_bytes.decode("utf-8")


def chunks_of(sse_text):
    """Checks the framing (only `data: ` frames, one [DONE] last) and returns
    the JSON chunks."""
    assert sse_text.endswith("data: [DONE]\n\n"), sse_text[-200:]
    frames = parse_sse(sse_text)
    out = []
    for i, f in enumerate(frames):
        assert f["event"] is None and f["comment"] is None, f
        assert f["data"] is not None, f
        if f["data"] == "[DONE]":
            assert i == len(frames) - 1, frames
        else:
            out.append(json.loads(f["data"]))
    for block in sse_text.split("\n\n")[:-1]:
        assert block.startswith("data: ") and "\n" not in block, block
    return out


# ---- models ----

def test_sdk_lists_and_retrieves_the_one_model():
    doc = sdk(D.port, "models.list")
    assert len(doc["data"]) == 1, doc
    m = doc["data"][0]
    assert m["id"] == TINY_ID and m["object"] == "model", m
    assert isinstance(m["created"], int) and m["created"] > 1600000000, m
    assert isinstance(m["owned_by"], str) and m["owned_by"], m
    assert sdk(D.port, "models.retrieve", {"id": TINY_ID})["id"] == TINY_ID
    err = sdk(D.port, "models.retrieve", {"id": "gpt-4"})["error"]
    assert err["status"] == 404 and err["class"] == "NotFoundError", err
    assert err["code"] == "model_not_found", err


def test_models_list_has_the_list_shape():
    st, doc = get_json(D.port, "/v1/models")
    assert st == 200 and doc["object"] == "list" and isinstance(doc["data"], list), doc
    st, h, body = request(D.port, "GET", "/v1/models/nope")
    check_error(st, h, json.loads(body), 404, param="model", code="model_not_found")


# ---- completions ----

def test_sdk_greedy_completion_equals_execute_and_counts_tokens():
    res = sdk(D.port, "completions", {"model": TINY_ID, "prompt": PROMPT, "max_tokens": 12,
                                      "temperature": 0})
    assert res["object"] == "text_completion" and res["id"].startswith("cmpl-"), res
    assert res["model"] == TINY_ID and isinstance(res["created"], int), res
    ch = res["choices"]
    assert len(ch) == 1 and ch[0]["index"] == 0 and ch[0]["logprobs"] is None, ch
    st, _, _, text = generate(D.port, "oai-ref-1", PROMPT, 12, temperature=0)
    assert st == 200
    assert ch[0]["text"] == text, (ch[0]["text"], text)
    u = res["usage"]
    assert u["prompt_tokens"] == n_tokens(PROMPT), u
    if ch[0]["finish_reason"] == "length":
        assert u["completion_tokens"] == 12, u
    else:
        assert ch[0]["finish_reason"] == "stop" and u["completion_tokens"] <= 12, res
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], u


def job_log_lines(job_id):
    out = []
    for line in list(D.log_lines):
        try:
            o = json.loads(line)
        except ValueError:
            continue
        if o.get("job_id") == job_id:
            out.append(o)
    return out


def test_every_openai_job_is_logged_like_a_worker_job():
    doc = completion(D.port, prompt=PROMPT, max_tokens=3, temperature=0)
    lines = []

    def logged():
        lines[:] = job_log_lines(doc["id"])
        return any(o["msg"] == "job done" for o in lines)
    assert wait_for(logged, 5), lines
    done = [o for o in lines if o["msg"] == "job done"][0]
    assert done["api"] == "openai" and done["tokens_out"] == 3, done
    assert done["stop_reason"] == "max_tokens" and done["client_gone"] is False, done
    for k in ("tokens_in", "ttft_ms", "decode_time_ms"):
        assert isinstance(done[k], int), done
    # an error is logged with the OpenAI wire code
    st, h, doc, raw = post_json(D.port, "/v1/completions",
                                {"prompt": " ".join(["hello"] * 300), "max_tokens": 4})
    assert st == 400, doc

    def error_logged():
        return any(o.get("api") == "openai" and o["msg"] == "job ended with an error" and
                   o.get("code") == "context_length_exceeded"
                   for o in (json.loads(x) for x in list(D.log_lines) if x.startswith("{")))
    assert wait_for(error_logged, 5), D.log_lines[-5:]


def requests_by_label():
    st, _, body = request(D.port, "GET", "/metrics")
    assert st == 200, st
    out = {}
    for m in re.finditer(r'^llorch_http_requests_total\{endpoint="([^"]*)",status="\d+"\} (\d+)$',
                         body.decode(), re.MULTILINE):
        out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
    return out


def test_every_route_is_counted_under_its_own_label():
    bad = json.dumps({"max_tokens": -1}).encode()
    ct = {"Content-Type": "application/json"}
    calls = [  # (method, path, body, label)
        ("GET", "/health", None, "/health"),
        ("GET", "/v1/health", None, "/health"),
        ("GET", "/v1/ready", None, "/v1/ready"),
        ("POST", "/execute", bad, "/execute"),
        ("POST", "/v1/inference", bad, "/v1/inference"),
        ("DELETE", "/v1/inference/no-such-job", None, "/v1/inference/{job_id}"),
        ("POST", "/cancel", json.dumps({"job_id": "no-such-job"}).encode(), "/cancel"),
        ("GET", "/v1/shutdown", None, "/v1/shutdown"),        # 405: still its route
        ("GET", "/v1/admin/shutdown", None, "/v1/shutdown"),
        ("GET", "/v1/models", None, "/v1/models"),
        ("GET", "/v1/models/" + TINY_ID, None, "/v1/models/{id}"),
        ("GET", "/models", None, "/models"),
        ("POST", "/v1/completions", bad, "/v1/completions"),
        ("POST", "/completions", bad, "/completions"),
        ("POST", "/v1/chat/completions", bad, "/v1/chat/completions"),
        ("POST", "/chat/completions", bad, "/chat/completions"),
        ("GET", "/no/such/route", None, "other"),
    ]
    want = {}
    for _, _, _, label in calls:
        want[label] = want.get(label, 0) + 1
    before = requests_by_label()
    for method, path, body, _ in calls:
        request(D.port, method, path, body, ct if body else None)
    after = requests_by_label()
    # the /metrics scrape itself counts under its own label
    want["/metrics"] = 1
    for label, n in want.items():
        assert after.get(label, 0) - before.get(label, 0) == n, (label, before.get(label),
                                                                  after.get(label))


def test_max_tokens_defaults_to_16():
    doc = completion(D.port, prompt=PROMPT, temperature=0)
    assert doc["usage"]["completion_tokens"] == 16, doc
    assert doc["choices"][0]["finish_reason"] == "length", doc


def test_sdk_streamed_completion_equals_the_whole_one_with_usage_last():
    params = {"model": TINY_ID, "prompt": PROMPT, "max_tokens": 10, "temperature": 0}
    whole = sdk(D.port, "completions", params)
    chunks = sdk(D.port, "completions", dict(params, stream=True,
                                             stream_options={"include_usage": True}))["chunks"]
    assert len(chunks) >= 3, chunks
    *body, last = chunks
    assert last["choices"] == [] and last["usage"] == whole["usage"], last
    for c in body:
        assert c["object"] == "text_completion" and c["id"] == body[0]["id"], c
        assert c["usage"] is None, c
    assert [c["choices"][0]["finish_reason"] for c in body][-1] == "length", body
    assert all(c["choices"][0]["finish_reason"] is None for c in body[:-1]), body
    text = "".join(c["choices"][0]["text"] for c in body)
    assert text == whole["choices"][0]["text"], (text, whole)


def test_stream_without_include_usage_has_no_usage_chunk():
    head, raw = curl_stream(D.port, "/v1/completions",
                            {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True})
    chunks = chunks_of(raw)
    assert all("usage" not in c for c in chunks), chunks
    assert all(len(c["choices"]) == 1 for c in chunks), chunks


def test_curl_sees_data_frames_and_done():
    head, raw = curl_stream(D.port, "/v1/completions",
                            {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "stream": True,
                             "stream_options": {"include_usage": True}})
    assert head.startswith("HTTP/1.1 200"), head
    low = head.lower()
    assert "content-type: text/event-stream" in low and "cache-control: no-cache" in low, head
    chunks = chunks_of(raw)
    assert chunks[-1]["usage"]["completion_tokens"] == 6, chunks[-1]


def test_token_id_prompts_in_every_form():
    ids = [1, 9038, 2501, 263, 931]  # "Once upon a time" with BOS
    ref = completion(D.port, prompt=PROMPT, max_tokens=5, temperature=0)
    for form in (ids, [ids]):
        doc = completion(D.port, prompt=form, max_tokens=5, temperature=0)
        assert doc["usage"]["prompt_tokens"] == len(ids), doc
        assert doc["choices"][0]["text"] == ref["choices"][0]["text"], (doc, ref)
    doc = completion(D.port, prompt=[PROMPT], max_tokens=5, temperature=0)
    assert doc["choices"][0]["text"] == ref["choices"][0]["text"], doc


def test_echo_prepends_the_prompt():
    ref = completion(D.port, prompt=PROMPT, max_tokens=5, temperature=0)
    doc = completion(D.port, prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    assert doc["choices"][0]["text"] == PROMPT + ref["choices"][0]["text"], doc
    head, raw = curl_stream(D.port, "/v1/completions", {"prompt": PROMPT, "max_tokens": 5,
                                                        "temperature": 0, "echo": True,
                                                        "stream": True})
    text = "".join(c["choices"][0]["text"] for c in chunks_of(raw))
    assert text == doc["choices"][0]["text"], (text, doc)


def test_stop_string_ends_with_finish_reason_stop():
    ref = completion(D.port, prompt=PROMPT, max_tokens=16, temperature=0)["choices"][0]["text"]
    stop = ref[len(ref) // 2:len(ref) // 2 + 3]
    cut = ref[:ref.index(stop)]
    for stops in (stop, [stop, "zzzzqqq"]):
        doc = completion(D.port, prompt=PROMPT, max_tokens=16, temperature=0, stop=stops)
        assert doc["choices"][0]["text"] == cut, (doc, cut, stop)
        assert doc["choices"][0]["finish_reason"] == "stop", doc


def test_same_seed_same_sample_other_params_accepted():
    body = dict(prompt=PROMPT, max_tokens=8, temperature=0.9, top_p=0.95, top_k=40, min_p=0.01,
                repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.5, seed=7,
                user="u-1")
    a = completion(D.port, **body)["choices"][0]["text"]
    b = completion(D.port, **body)["choices"][0]["text"]
    assert a == b, (a, b)


def test_legacy_logprobs_shape():
    doc = completion(D.port, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    ch = doc["choices"][0]
    lp = ch["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}, lp
    n = doc["usage"]["completion_tokens"]
    assert all(len(lp[k]) == n for k in lp), lp
    assert "".join(lp["tokens"]) == ch["text"], (lp["tokens"], ch["text"])
    for k in range(n):
        top = lp["top_logprobs"][k]
        assert isinstance(top, dict) and 1 <= len(top) <= 3, top
        assert lp["token_logprobs"][k] <= 0, lp
        # greedy: the chosen token is the most likely one
        assert abs(max(top.values()) - lp["token_logprobs"][k]) < 1e-4, (top, lp)
    offs = lp["text_offset"]
    assert offs[0] == 0 and all(offs[i] < offs[i + 1] for i in range(n - 1)), offs
    for k, t in enumerate(lp["tokens"]):  # character offsets into the text
        if "\ufffd" not in t:
            assert ch["text"][offs[k]:offs[k] + len(t)] == t, (k, t, offs, ch["text"])
    doc = completion(D.port, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=0)
    lp = doc["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == 3 and lp["top_logprobs"] == [{}, {}, {}], lp


def test_sdk_streamed_completion_carries_logprobs_per_chunk():
    chunks = sdk(D.port, "completions", {"model": TINY_ID, "prompt": PROMPT, "max_tokens": 4,
                                         "temperature": 0, "logprobs": 2, "stream": True})["chunks"]
    with_lp = [c for c in chunks if c["choices"][0]["logprobs"]]
    assert len(with_lp) == 4, chunks
    for c in with_lp:
        lp = c["choices"][0]["logprobs"]
        assert len(lp["tokens"]) == 1 and len(lp["top_logprobs"][0]) == 2, lp


# ---- chat ----

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello"}]


def test_sdk_chat_whole_and_streamed_agree_and_count_tokens():
    params = {"model": TINY_ID, "messages": MSGS, "max_tokens": 8, "temperature": 0}
    res = sdk(D.port, "chat", params)
    assert res["object"] == "chat.completion" and res["id"].startswith("chatcmpl-"), res
    ch = res["choices"][0]
    assert ch["message"]["role"] == "assistant" and isinstance(ch["message"]["content"], str), ch
    assert ch["finish_reason"] in ("length", "stop"), ch
    assert res["usage"]["prompt_tokens"] == n_tokens(chatml(MSGS), special=True), res["usage"]
    chunks = sdk(D.port, "chat", dict(params, stream=True,
                                      stream_options={"include_usage": True}))["chunks"]
    *body, last = chunks
    assert last["usage"] == res["usage"] and last["choices"] == [], last
    assert body[0]["choices"][0]["delta"]["role"] == "assistant", body[0]
    for c in body:
        assert c["object"] == "chat.completion.chunk" and c["id"] == body[0]["id"], c
    assert body[-1]["choices"][0]["finish_reason"] == ch["finish_reason"], body[-1]
    assert all(c["choices"][0]["finish_reason"] is None for c in body[:-1]), body
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in body)
    assert text == ch["message"]["content"], (text, ch)


def test_chat_text_parts_render_like_a_string():
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    a = sdk(D.port, "chat", {"model": TINY_ID, "messages": parts, "max_tokens": 4,
                             "temperature": 0})
    b = sdk(D.port, "chat", {"model": TINY_ID, "messages": [{"role": "user", "content": "Hello"}],
                             "max_tokens": 4, "temperature": 0})
    assert a["choices"][0]["message"] == b["choices"][0]["message"], (a, b)
    assert a["usage"] == b["usage"], (a, b)


def test_chat_without_max_tokens_runs_to_the_context():
    doc = post_json(D.port, "/v1/chat/completions", {"messages": MSGS, "temperature": 0})[2]
    u = doc["usage"]
    assert u["total_tokens"] <= 256, u  # llama-tiny's context
    if doc["choices"][0]["finish_reason"] == "length":
        assert u["total_tokens"] == 256, u
    st, h, doc2, raw = post_json(D.port, "/v1/chat/completions",
                                 {"messages": MSGS, "temperature": 0, "max_completion_tokens": 3})
    assert st == 200 and doc2["usage"]["completion_tokens"] <= 3, raw


def test_chat_logprobs_shape():
    doc = post_json(D.port, "/v1/chat/completions",
                    {"messages": MSGS, "max_tokens": 4, "temperature": 0, "logprobs": True,
                     "top_logprobs": 2})[2]
    lp = doc["choices"][0]["logprobs"]
    assert lp["refusal"] is None and len(lp["content"]) == doc["usage"]["completion_tokens"], lp
    for e in lp["content"]:
        assert set(e) == {"token", "logprob", "bytes", "top_logprobs"}, e
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"], e
        assert len(e["top_logprobs"]) == 2 and abs(e["top_logprobs"][0]["logprob"] -
                                                   e["logprob"]) < 1e-4, e
    doc = post_json(D.port, "/v1/chat/completions", {"messages": MSGS, "max_tokens": 2})[2]
    assert doc["choices"][0]["logprobs"] is None, doc


def test_forced_chat_template_is_used():
    with Daemon("--chat-template", "llama2", model=TINY) as d:
        doc = post_json(d.port, "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2})[2]
        assert doc["usage"]["prompt_tokens"] == n_tokens("[INST] Hello [/INST]", True), doc


def test_unknown_chat_template_name_stops_start_up():
    d = Daemon("--chat-template", "nonesuch", model=TINY)
    try:
        d.start()
        raise AssertionError("the daemon started with an unknown --chat-template")
    except RuntimeError:
        pass
    finally:
        d.kill()
    log = "\n".join(d.log_lines)
    assert "nonesuch" in log and "chatml" in log, log


# ---- errors ----

BAD_COMPLETIONS = [
    # (body, status, param, code)
    ({"prompt": PROMPT, "temperature": 2.5}, 400, "temperature", None),
    ({"prompt": PROMPT, "temperature": -0.1}, 400, "temperature", None),
    ({"prompt": PROMPT, "temperature": "hot"}, 400, "temperature", None),
    ({"prompt": PROMPT, "top_p": 1.5}, 400, "top_p", None),
    ({"prompt": PROMPT, "top_k": -1}, 400, "top_k", None),
    ({"prompt": PROMPT, "min_p": 2}, 400, "min_p", None),
    ({"prompt": PROMPT, "repetition_penalty": 3}, 400, "repetition_penalty", None),
    ({"prompt": PROMPT, "presence_penalty": 2.5}, 400, "presence_penalty", None),
    ({"prompt": PROMPT, "frequency_penalty": -3}, 400, "frequency_penalty", None),
    ({"prompt": PROMPT, "max_tokens": 0}, 400, "max_tokens", None),
    ({"prompt": PROMPT, "max_tokens": 2049}, 400, "max_tokens", None),
    ({"prompt": PROMPT, "max_tokens": "many"}, 400, "max_tokens", None),
    ({"prompt": PROMPT, "n": 2}, 400, "n", "unsupported_value"),
    ({"prompt": PROMPT, "n": 0}, 400, "n", None),
    ({"prompt": PROMPT, "best_of": 3}, 400, "best_of", None),
    ({"prompt": PROMPT, "seed": -1}, 400, "seed", None),
    ({"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ({"prompt": PROMPT, "stop": [""]}, 400, "stop", None),
    ({"prompt": PROMPT, "stop": "x" * 101}, 400, "stop", None),
    ({"prompt": PROMPT, "stop": 5}, 400, "stop", None),
    ({"prompt": PROMPT, "logprobs": 21}, 400, "logprobs", None),
    ({"prompt": PROMPT, "logprobs": 1, "echo": True}, 400, "echo", "unsupported_value"),
    ({"prompt": PROMPT, "stream": "yes"}, 400, "stream", None),
    ({"prompt": PROMPT, "logit_bias": {"50": 10}}, 400, "logit_bias", "unsupported_parameter"),
    ({"prompt": PROMPT, "user": 5}, 400, "user", None),
    ({}, 400, "prompt", None),
    ({"prompt": ""}, 400, "prompt", None),
    ({"prompt": "x" * 32769}, 400, "prompt", None),
    ({"prompt": ["a", "b"]}, 400, "prompt", "unsupported_value"),
    ({"prompt": []}, 400, "prompt", None),
    ({"prompt": [1, -5]}, 400, "prompt", None),
    ({"prompt": [1, 32000]}, 400, "prompt", None),
    ({"prompt": {"text": "a"}}, 400, "prompt", None),
    ({"prompt": [1] * 257}, 400, "prompt", "context_length_exceeded"),
    ({"prompt": PROMPT, "model": "gpt-4"}, 404, "model", "model_not_found"),
]

BAD_CHATS = [
    ({}, 400, "messages", None),
    ({"messages": []}, 400, "messages", None),
    ({"messages": "hi"}, 400, "messages", None),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role", None),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", None),
    ({"messages": [{"content": "x"}]}, 400, "messages[0].role", None),
    ({"messages": [{"role": "user"}]}, 400, "messages[0].content", None),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", None),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages[0].content[0]", "unsupported_content_type"),
    ({"messages": MSGS, "response_format": {"type": "json_object"}}, 400, "response_format",
     "unsupported_value"),
    ({"messages": MSGS, "top_logprobs": 2}, 400, "top_logprobs", None),
    ({"messages": MSGS, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs", None),
    ({"messages": MSGS, "max_completion_tokens": 0}, 400, "max_completion_tokens", None),
    ({"messages": MSGS, "temperature": 3}, 400, "temperature", None),
    ({"messages": MSGS, "n": 3}, 400, "n", "unsupported_value"),
    ({"messages": MSGS, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools",
     "unsupported_parameter"),
    ({"messages": MSGS, "model": "nope"}, 404, "model", "model_not_found"),
    ({"messages": [{"role": "user", "content": "x" * 40000}]}, 400, "messages", None),
]


def test_every_invalid_completion_gets_the_openai_error_shape():
    for body, status, param, code in BAD_COMPLETIONS:
        st, h, doc, raw = post_json(D.port, "/v1/completions", body)
        try:
            check_error(st, h, doc, status, param=param, code=code)
        except AssertionError:
            raise AssertionError("%r -> %s %s" % (body, st, raw))


def test_every_invalid_chat_gets_the_openai_error_shape():
    for body, status, param, code in BAD_CHATS:
        st, h, doc, raw = post_json(D.port, "/v1/chat/completions", body)
        try:
            check_error(st, h, doc, status, param=param, code=code)
        except AssertionError:
            raise AssertionError("%r -> %s %s" % (body, st, raw))


def test_range_messages_read_like_the_worker_contract():
    st, h, doc, _ = post_json(D.port, "/v1/completions", {"prompt": PROMPT, "temperature": 3})
    assert doc["error"]["message"] == "temperature must be at most 2.0 (got 3)", doc
    assert doc["error"]["type"] == "invalid_request_error", doc


def test_malformed_json_and_non_objects_answer_400():
    for raw_body in (b"{", b"[1,2]", b"", b"\"x\""):
        st, h, body = request(D.port, "POST", "/v1/completions", body=raw_body,
                              headers={"Content-Type": "application/json"})
        check_error(st, h, json.loads(body), 400)


def test_prompt_longer_than_the_context_is_a_400_even_when_streamed():
    long_prompt = " ".join(["hello"] * 300)  # ~300 tokens > 256
    for stream in (False, True):
        st, h, doc, raw = post_json(D.port, "/v1/completions",
                                    {"prompt": long_prompt, "max_tokens": 4, "stream": stream})
        check_error(st, h, doc, 400, param="prompt", code="context_length_exceeded")
    st, h, doc, raw = post_json(D.port, "/v1/completions",
                                {"prompt": PROMPT, "max_tokens": 2000, "stream": True})
    check_error(st, h, doc, 400, param="prompt", code="context_length_exceeded")


def test_sdk_raises_bad_request_with_param():
    err = sdk(D.port, "completions", {"model": TINY_ID, "prompt": PROMPT, "top_p": 7})["error"]
    assert err["status"] == 400 and err["class"] == "BadRequestError", err
    assert err["param"] == "top_p" and err["type"] == "invalid_request_error", err


def test_unknown_fields_are_ignored():
    doc = completion(D.port, prompt=PROMPT, max_tokens=2, temperature=0, frobnicate={"x": [1]},
                     suffix=None, logit_bias={}, stream_options={"include_usage": True})
    assert doc["usage"]["completion_tokens"] == 2, doc
    st, h, doc, raw = post_json(D.port, "/v1/chat/completions",
                                {"messages": [dict(MSGS[1], name="bob")], "max_tokens": 2,
                                 "response_format": {"type": "text"}, "whatever": 1})
    assert st == 200, raw


def test_wrong_method_and_unknown_route():
    st, h, body = request(D.port, "GET", "/v1/completions")
    assert st == 405 and "POST" in h.get("allow", ""), (st, h)
    st, h, body = request(D.port, "GET", "/v1/nonesuch")
    assert st == 404 and "error" in json.loads(body), body


def test_bearer_auth_guards_the_openai_routes():
    with tempfile.NamedTemporaryFile("w", suffix=".key", delete=False) as f:
        f.write("s3cret\n")
        keyfile = f.name
    try:
        with Daemon("--api-key-file", keyfile, model=TINY) as d:
            for method, path, body in (("GET", "/v1/models", None),
                                       ("POST", "/v1/completions", {"prompt": "x"}),
                                       ("POST", "/v1/chat/completions", {"messages": MSGS})):
                st, h, raw = request(d.port, method, path, body=body)
                check_error(st, h, json.loads(raw), 401, code="invalid_api_key")
                assert h.get("www-authenticate", "").lower().startswith("bearer"), h
            err = sdk(d.port, "models.list", key="wrong")["error"]
            assert err["status"] == 401 and err["class"] == "AuthenticationError", err
            res = sdk(d.port, "completions", {"model": TINY_ID, "prompt": PROMPT,
                                              "max_tokens": 2}, key="s3cret")
            assert res["usage"]["completion_tokens"] == 2, res
    finally:
        os.unlink(keyfile)


# ---- disconnects and load ----

def raw_post(port, path, body):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = json.dumps(body).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    return s


def health(port):
    return get_json(port, "/health")[1]


def test_disconnect_mid_stream_frees_the_slot():
    # llama-mid is slow enough that a whole generation takes a while; the
    # same request first runs to its end to measure how long that is.
    with Daemon("--max-batch", "4", model=model_path("llama-mid-f32.gguf")) as d:
        body = {"prompt": PROMPT, "max_tokens": 480, "temperature": 0}
        for path, extra in (("/v1/completions", {}), ("/v1/chat/completions", None)):
            if extra is None:
                b = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 400,
                     "temperature": 0}
            else:
                b = dict(body)
            t0 = time.time()
            st, _, doc, raw = post_json(d.port, path, b, timeout=60)
            full = time.time() - t0
            assert st == 200 and doc["choices"][0]["finish_reason"] == "length", raw[:300]
            for stream in (True, False):
                t0 = time.time()
                s = raw_post(d.port, path, dict(b, stream=stream))
                if stream:
                    got, closed = read_until(s, 10, b"data: ", count=3)
                    assert b"200 OK" in got and not closed, got
                else:
                    assert wait_for(lambda: health(d.port)["slots_busy"] == 1, 5, 0.002)
                s.shutdown(socket.SHUT_RDWR)
                s.close()

                def freed():
                    h = health(d.port)
                    return h["slots_busy"] == 0 and h["queue_depth"] == 0 and \
                        h["kv"]["seqs_active"] == 0
                assert wait_for(freed, 5, interval=0.005), health(d.port)
                assert time.time() - t0 < 0.6 * full, (path, stream, time.time() - t0, full)


def test_full_queue_answers_429_with_retry_after():
    with Daemon("--max-batch", "1", "--max-queue", "1", model=model_path("llama-mid-f32.gguf")) as d:
        long = {"prompt": PROMPT, "max_tokens": 480, "temperature": 0, "stream": True}
        a = raw_post(d.port, "/v1/completions", long)
        read_until(a, 10, b"data: ")
        b = raw_post(d.port, "/v1/completions", long)
        assert wait_for(lambda: health(d.port)["queue_depth"] == 1, 5, 0.002), health(d.port)
        st, h, doc, raw = post_json(d.port, "/v1/completions", long)
        a.close()
        b.close()
        check_error(st, h, doc, 429, code="queue_full")
        assert h.get("retry-after"), h
        assert wait_for(lambda: health(d.port)["slots_busy"] == 0, 5), health(d.port)


def test_queued_stream_gets_its_head_and_pings_before_its_first_token():
    with Daemon("--max-batch", "1", "--ping-interval-ms", "100",
                model=model_path("llama-mid-f32.gguf")) as d:
        long = {"prompt": PROMPT, "max_tokens": 480, "temperature": 0, "stream": True}
        ahead = [raw_post(d.port, "/v1/completions", long) for _ in range(3)]
        read_until(ahead[0], 10, b"data: ")
        last = raw_post(d.port, "/v1/chat/completions",
                        {"messages": MSGS, "max_tokens": 2, "temperature": 0, "stream": True})
        got, _ = read_until(last, 30, b"data: [DONE]\n\n")
        for s in ahead + [last]:
            s.close()
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        role = body.index(b'"role":"assistant"')
        m = re.search(rb'"delta":\{"content":"[^"]', body)  # the first token's chunk
        first_content = m.start() if m else -1
        pings = body.count(b": ping\n\n")
        assert pings >= 1 and body.index(b": ping") > role, body[:400]
        assert first_content < 0 or b": ping" not in body[first_content:], body[-400:]
        assert body.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), body[-200:]  # chunked


def test_shutdown_ends_openai_streams_and_exits_zero():
    d = Daemon("--drain-timeout-ms", "200", model=model_path("llama-mid-f32.gguf")).start()
    try:
        body = {"prompt": PROMPT, "max_tokens": 480, "temperature": 0, "stream": True}
        s = raw_post(d.port, "/v1/completions", body)
        read_until(s, 10, b"data: ")
        w = raw_post(d.port, "/v1/chat/completions",  # whole response, in the queue or running
                     {"messages": MSGS, "max_tokens": 400, "temperature": 0})
        d.send_signal(signal.SIGTERM)
        got, closed = read_until(s, 15, b"data: [DONE]\n\n")
        s.close()
        w.close()
        # cut by the drain deadline (200 ms, shorter than the generation)
        assert b'"code":"shutting_down"' in got and b"data: [DONE]" in got, got[-300:]
        assert d.wait(20) == 0, "\n".join(d.log_lines[-20:])
    finally:
        d.kill()


def main():
    global D
    npm_install()
    D = Daemon(model=TINY).start()
    try:
        run_tests([
            test_sdk_lists_and_retrieves_the_one_model,
            test_models_list_has_the_list_shape,
            test_sdk_greedy_completion_equals_execute_and_counts_tokens,
            test_every_openai_job_is_logged_like_a_worker_job,
            test_every_route_is_counted_under_its_own_label,
            test_max_tokens_defaults_to_16,
            test_sdk_streamed_completion_equals_the_whole_one_with_usage_last,
            test_stream_without_include_usage_has_no_usage_chunk,
            test_curl_sees_data_frames_and_done,
            test_token_id_prompts_in_every_form,
            test_echo_prepends_the_prompt,
            test_stop_string_ends_with_finish_reason_stop,
            test_same_seed_same_sample_other_params_accepted,
            test_legacy_logprobs_shape,
            test_sdk_streamed_completion_carries_logprobs_per_chunk,
            test_sdk_chat_whole_and_streamed_agree_and_count_tokens,
            test_chat_text_parts_render_like_a_string,
            test_chat_without_max_tokens_runs_to_the_context,
            test_chat_logprobs_shape,
            test_forced_chat_template_is_used,
            test_unknown_chat_template_name_stops_start_up,
            test_every_invalid_completion_gets_the_openai_error_shape,
            test_every_invalid_chat_gets_the_openai_error_shape,
            test_range_messages_read_like_the_worker_contract,
            test_malformed_json_and_non_objects_answer_400,
            test_prompt_longer_than_the_context_is_a_400_even_when_streamed,
            test_sdk_raises_bad_request_with_param,
            test_unknown_fields_are_ignored,
            test_wrong_method_and_unknown_route,
            test_bearer_auth_guards_the_openai_routes,
            test_disconnect_mid_stream_frees_the_slot,
            test_full_queue_answers_429_with_retry_after,
            test_queued_stream_gets_its_head_and_pings_before_its_first_token,
            test_shutdown_ends_openai_streams_and_exits_zero,
        ])
    except SystemExit as e:
        # the shared daemon must exit cleanly too (the ASan build checks leaks)
        rc = D.stop()
        if rc != 0:
            print("FAIL the shared daemon exited with %r:\n%s" % (rc, "\n".join(D.log_lines[-30:])))
            sys.exit(1)
        raise e
    finally:
        D.kill()


if __name__ == "__main__":
    main()
