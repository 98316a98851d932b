#!/usr/bin/env python3
"""Split GGUF files (llama.cpp's NAME-00001-of-0000N.gguf format), end to end:

1. `llorch-cli split --stages N` / `--layers A-B,...` writes N valid GGUF
   files, each with only its layers' tensors (the first also the embedding,
   the last the output norm and head) plus the metadata and the split keys;
   `llorch-cli inspect` of the first part sees the whole model.
2. The split model loaded from its first part gives the same prompt tokens,
   greedy tokens and logprobs (the JSON of `llorch-cli logits`, printed to 17
   digits, i.e. the same floats) as the whole file, for f32 and q8_0 models
   and 2, 3 and 4 parts.
3. A later part is refused with a message naming the first; a missing part
   is named.
4. The daemon serves the split model: the same greedy completion as from
   the whole file.
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from e2e_common import BUILD, Daemon, generate, model_path, run_tests  # noqa: E402

CLI = os.path.join(BUILD, "tools", "llorch-cli")
TMP = tempfile.mkdtemp(prefix="llorch-e2e-split-")


def cli(*args, ok=True):
    p = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120)
    if ok and p.returncode != 0:
        raise AssertionError("llorch-cli %s: %s" % (" ".join(args), p.stderr))
    return p


def split(model, prefix, *how):
    out = cli("split", "--model", model_path(model), "--out", os.path.join(TMP, prefix), *how)
    return [line.split(":")[0] for line in out.stdout.splitlines()]


def logits(path):
    out = cli("logits", "--model", path, "--prompt", "Once upon a time", "--steps", "6",
              "--top", "8", "--dtype", "f32")
    d = json.loads(out.stdout)
    d.pop("model", None)  # the file name
    return d


def tensors(path):
    d = json.loads(cli("inspect", path, "--json", "--tensors").stdout)
    return d


def test_split_writes_one_file_per_stage_with_only_its_tensors():
    parts = split("llama-mid-f32.gguf", "mid4", "--stages", "4")
    assert len(parts) == 4, parts
    assert [os.path.basename(p) for p in parts] == [
        "mid4-%05d-of-00004.gguf" % i for i in range(1, 5)]
    whole = tensors(model_path("llama-mid-f32.gguf"))
    joined = tensors(parts[0])
    whole_names = set(gguf_tensor_names(model_path("llama-mid-f32.gguf")))
    tied = "output.weight" not in whole_names
    # a head tied to the embedding: the last part carries it as output.weight
    assert joined["n_tensors"] == whole["n_tensors"] + tied, (joined["n_tensors"],
                                                             whole["n_tensors"])
    # each part alone: read its tensor names through the gguf layer (inspect
    # refuses a later part, so use python to read the tensor names)
    names = [set(gguf_tensor_names(p)) for p in parts]
    for i, ns in enumerate(names):
        layers = {int(n.split(".")[1]) for n in ns if n.startswith("blk.")}
        assert layers == {i}, (i, sorted(layers))
    assert "token_embd.weight" in names[0]
    assert "output_norm.weight" in names[3]
    assert "output.weight" in names[3]
    assert sum(len(n) for n in names) == whole["n_tensors"] + tied
    assert not set.intersection(*names)


def gguf_tensor_names(path):
    """Tensor names of one GGUF file, read with a minimal parser."""
    import struct
    with open(path, "rb") as f:
        data = f.read(1 << 22)
    pos = 4
    ver, n_t, n_kv = struct.unpack_from("<IQQ", data, pos)
    pos += 20
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_val(t, pos):
        if t == 8:
            (n,) = struct.unpack_from("<Q", data, pos)
            return pos + 8 + n
        if t == 9:
            et, cnt = struct.unpack_from("<IQ", data, pos)
            pos += 12
            for _ in range(cnt):
                pos = skip_val(et, pos)
            return pos
        return pos + sizes[t]
    for _ in range(n_kv):
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        (t,) = struct.unpack_from("<I", data, pos)
        pos = skip_val(t, pos + 4)
    names = []
    for _ in range(n_t):
        (n,) = struct.unpack_from("<Q", data, pos)
        names.append(data[pos + 8:pos + 8 + n].decode())
        pos += 8 + n
        (nd,) = struct.unpack_from("<I", data, pos)
        pos += 4 + 8 * nd + 4 + 8
    return names


def test_split_model_gives_the_same_logits_as_the_whole_file():
    for model, how in [("llama-mid-f32.gguf", ["--stages", "2"]),
                       ("llama-mid-f32.gguf", ["--stages", "3"]),
                       ("llama-mid-f32.gguf", ["--layers", "0-0,1-2,3-3"]),
                       ("llama-tiny-q8_0.gguf", ["--stages", "2"]),
                       ("qwen2-tiny-f32.gguf", ["--layers", "0-1"])]:
        prefix = model.split(".")[0] + "-" + "-".join(how).replace(",", "_")
        parts = split(model, prefix, *how)
        a, b = logits(model_path(model)), logits(parts[0])
        assert a == b, (model, how)
        assert len(a["steps"]) >= 6 and len(a["greedy_tokens"]) == 6


def test_later_part_refused_and_missing_part_named():
    parts = split("llama-tiny-f32.gguf", "tiny2", "--stages", "2")
    p = cli("logits", "--model", parts[1], "--tokens", "1,2", ok=False)
    assert p.returncode != 0
    assert "open the first part" in p.stderr and "-00001-of-00002.gguf" in p.stderr, p.stderr
    os.rename(parts[1], parts[1] + ".gone")
    p = cli("logits", "--model", parts[0], "--tokens", "1,2", ok=False)
    assert p.returncode != 0 and "tiny2-00002-of-00002.gguf" in p.stderr, p.stderr
    os.rename(parts[1] + ".gone", parts[1])
    p = cli("split", "--model", model_path("llama-tiny-f32.gguf"), "--out",
            os.path.join(TMP, "bad"), "--layers", "0-0,2-2", ok=False)
    assert p.returncode == 2 and "contiguous" in p.stderr, p.stderr


def test_daemon_serves_the_split_model_like_the_whole_file():
    parts = split("llama-mid-f32.gguf", "midd", "--stages", "2")
    outs = []
    for m in [model_path("llama-mid-f32.gguf"), parts[0]]:
        with Daemon(model=m) as d:
            st, _, objs, text = generate(d.port, "j", "Hello there", 8, temperature=0)
            assert st == 200, st
            outs.append(([o.get("t") for o in objs if o["type"] == "token"], text))
    assert len(outs[0][0]) == 8 and outs[0] == outs[1], outs


if __name__ == "__main__":
    try:
        run_tests([test_split_writes_one_file_per_stage_with_only_its_tensors,
                   test_split_model_gives_the_same_logits_as_the_whole_file,
                   test_later_part_refused_and_missing_part_named,
                   test_daemon_serves_the_split_model_like_the_whole_file])
    finally:
        subprocess.run(["rm", "-rf", TMP])
