"""The daemon streams llama.cpp's greedy continuation: for the f32 models of
every architecture the shared references cover (qwen2, phi3, llama untied and
tied), POST /execute with the reference prompt at temperature 0 in exact mode
(--dtype f32 --kv f32) and compare the streamed text with the detokenised
reference tokens, up to the first step whose top-1/top-2 gap is below 1e-4
(past a near-tie a correct engine may pick the other token)."""

import glob
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import BUILD, SHARED, Daemon, check_stream_shape, generate, model_path, run_tests  # noqa: E402

CLI = os.path.join(BUILD, "tools", "llorch-cli")
NEAR_TIE = 1e-4


def cli(*args):
    r = subprocess.run([CLI, *args], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def trusted_steps(ref):
    """How many greedy tokens are decided by a gap of at least NEAR_TIE."""
    for i, step in enumerate(ref["steps"][: len(ref["greedy_tokens"])]):
        if step[0][1] - step[1][1] < NEAR_TIE:
            return i
    return len(ref["greedy_tokens"])


def expected_text(model, prompt_ids, gen_ids):
    """What a stream that continues the prompt shows: the detokenised
    prompt+continuation minus the detokenised prompt (SPM's leading-space
    rule applies to the first piece only, so the prompt is a prefix)."""
    ids = lambda xs: ",".join(str(x) for x in xs)  # noqa: E731
    whole = cli("detokenize", "--model", model, "--ids", ids(prompt_ids + gen_ids))
    head = cli("detokenize", "--model", model, "--ids", ids(prompt_ids))
    assert whole.startswith(head), (whole[:80], head[:80])
    return whole[len(head):]


def check_model(stem):
    refs = sorted(glob.glob(os.path.join(SHARED, "reference", stem + "__p*.json")))
    assert len(refs) == 4, refs
    model = model_path(stem + ".gguf")
    compared = 0
    with Daemon("--dtype", "f32", "--kv", "f32", model=model) as d:
        for path in refs:
            with open(path) as f:
                ref = json.load(f)
            # The daemon tokenizes the prompt exactly as the reference did.
            ids = json.loads(cli("tokenize", "--model", model, "--bos", "--text", ref["prompt"]))
            assert ids == ref["prompt_tokens"], (path, ids[:8], ref["prompt_tokens"][:8])
            k = trusted_steps(ref)
            if k == 0:
                continue
            want = expected_text(model, ref["prompt_tokens"], ref["greedy_tokens"][:k])
            job = os.path.basename(path)
            status, _, objs, text = generate(d.port, job, ref["prompt"], k, temperature=0)
            assert status == 200, (path, status, text)
            check_stream_shape(objs, job)
            end = objs[-1]
            assert end["type"] == "end" and end["stop_reason"] == "max_tokens", (path, end)
            assert end["tokens_out"] == k, (path, end)
            try:
                want_s = want.decode("utf-8")
            except UnicodeDecodeError:
                # A partial character at the cut: compare what both sides
                # hold as whole characters.
                want_s = want.decode("utf-8", "ignore")
                text = text.replace("\ufffd", "")
            assert text == want_s, (path, k, text[:120], want_s[:120])
            compared += k
    # Every reference here has at least 8 trusted steps; a run that compared
    # nothing proves nothing.
    assert compared >= 4 * 8, (stem, compared)


def streams_qwen2_greedy_like_llama_cpp():
    check_model("qwen2-tiny-f32")


def streams_phi3_greedy_like_llama_cpp():
    check_model("phi3-tiny-f32")


def streams_llama_greedy_like_llama_cpp():
    check_model("llama-tiny-f32")


def streams_tied_llama_greedy_like_llama_cpp():
    check_model("llama-mid-f32")


if __name__ == "__main__":
    run_tests([
        streams_qwen2_greedy_like_llama_cpp,
        streams_phi3_greedy_like_llama_cpp,
        streams_llama_greedy_like_llama_cpp,
        streams_tied_llama_greedy_like_llama_cpp,
    ])
