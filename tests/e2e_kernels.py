"""Kernel levels and weight classes through the real daemon: each shared
file (F16 and Q4_0 included, which used to need AVX-512 or were expanded to
int8), and tiny llorch-synth models of the classes no shared file has (the
Q4_K_M mix of Q4_K and Q6_K, Q5_K, Q4_1, Q5_0, Q5_1), is served in its own
class by default, at every level this CPU runs;
the level is forced with --isa or LLORCH_ISA and reported in the start-up
log and /health; a level above the CPU's is refused at start-up naming what
the CPU runs."""

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import BUILD, Daemon, binary, generate, get_json, model_path, run_tests  # noqa: E402


def cpu_levels():
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    levels = ["scalar"]
    if {"avx2", "fma", "f16c"} <= flags:
        levels.append("avx2")
        if "avx_vnni" in flags or {"avx512_vnni", "avx512vl"} <= flags:
            levels.append("avxvnni")
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            levels.append("avx512")
    return levels


LEVELS = cpu_levels()


def loaded_line(d, timeout=60.0):
    # /health answers while the model still loads (model_loaded: false), so
    # the line may come after the daemon counts as started.
    deadline = time.time() + timeout
    while True:
        for line in list(d.log_lines):
            if '"model loaded"' in line:
                return json.loads(line)
        if time.time() > deadline:
            raise AssertionError("no 'model loaded' line:\n" + "\n".join(d.log_lines))
        time.sleep(0.05)


def text_of(port, job):
    st, _, objs, text = generate(port, job, "Once upon a time", 8, temperature=0)
    assert st == 200 and objs[-1]["type"] == "end" and objs[-1]["tokens_out"] == 8, (st, objs)
    return text


def test_every_shared_class_serves_natively_at_every_level():
    for level in LEVELS:
        for name in ("llama-tiny-f16.gguf", "llama-tiny-q4_0.gguf", "llama-tiny-q8_0.gguf",
                     "stories260k.gguf"):
            with Daemon("--dtype", "native", "--isa", level, model=model_path(name)) as d:
                st, doc = get_json(d.port, "/health")
                assert st == 200, doc
                caps = doc["capabilities"]
                assert caps["dtype"] == "native" and caps["isa"] == level, (name, caps)
                line = loaded_line(d)
                assert line["isa"] == level and line["matmul"] == "llorch", line
                assert len(text_of(d.port, "k-%s-%s" % (level, name))) > 0
    skipped = [lv for lv in ("avx2", "avxvnni", "avx512") if lv not in LEVELS]
    if skipped:
        print("skipped levels (this CPU lacks them): " + ", ".join(skipped))


# The classes no shared file has, as llorch-synth writes them: K types need
# rows of 256; the 32-block types run at the tiny preset's width.
SYNTH_CLASSES = [
    ("q4_k_m", ["--n-embd", "256", "--n-ff", "256", "--n-head", "4", "--n-head-kv", "2"]),
    ("q5_k", ["--n-embd", "256", "--n-ff", "256", "--n-head", "4", "--n-head-kv", "2"]),
    ("q4_1", ["--n-ff", "128"]),
    ("q5_0", ["--n-ff", "128"]),
    ("q5_1", ["--n-ff", "128"]),
]


def synth_model(tmp, ty, shape):
    path = os.path.join(tmp, "m-%s.gguf" % ty)
    subprocess.run([os.path.join(BUILD, "tools", "llorch-synth"), "-o", path, "--n-layer", "2",
                    "--vocab", "builtin", "--type", ty] + shape,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def test_synthetic_classes_serve_natively_at_every_level():
    with tempfile.TemporaryDirectory() as tmp:
        paths = {ty: synth_model(tmp, ty, shape) for ty, shape in SYNTH_CLASSES}
        for level in LEVELS:
            for ty, path in paths.items():
                with Daemon("--dtype", "native", "--isa", level, model=path) as d:
                    line = loaded_line(d)
                    assert line["isa"] == level and line["matmul"] == "llorch", (ty, line)
                    assert line["dtype"] == "native", (ty, line)
                    assert len(text_of(d.port, "s-%s-%s" % (level, ty))) > 0
        # kept in its class: Q4_K/Q6_K take 4.5/6.6 bits a weight, int8 8.5
        sizes = {}
        for dtype in ("native", "int8"):
            with Daemon("--dtype", dtype, model=paths["q4_k_m"]) as d:
                sizes[dtype] = loaded_line(d)["weight_bytes"]
        assert sizes["native"] < sizes["int8"] * 0.75, sizes


def test_native_reads_fewer_bytes_than_int8_for_4_bit_files():
    sizes = {}
    for dtype in ("native", "int8"):
        with Daemon("--dtype", dtype, model=model_path("llama-tiny-q4_0.gguf")) as d:
            sizes[dtype] = loaded_line(d)["weight_bytes"]
    # Q4_0: 18 bytes per 32 weights against Q8_0's 34 (the F16 ffn_down is
    # the same in both)
    assert sizes["native"] < sizes["int8"] * 0.75, sizes


def mapping_rss_kib(pid, path):
    """Resident KiB of the daemon's mappings of path (from smaps)."""
    rss, inside = 0, False
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:
                inside = line.rstrip("\n").endswith(" " + path)
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
    return rss


def test_repacked_weights_give_their_file_pages_back():
    # Q8_0 and Q4_0 rows are regrouped into memory of the weight's own above
    # the scalar level; the file's pages of those tensors must then leave
    # memory, or a served file costs twice its size. At the scalar level the
    # weights are read in place, so the mapping stays resident after a step.
    synth = os.path.join(BUILD, "tools", "llorch-synth")
    with tempfile.TemporaryDirectory() as tmp:
        for ty in ("q8_0", "q4_0"):
            path = os.path.join(tmp, "m-%s.gguf" % ty)
            subprocess.run([synth, "-o", path, "--arch", "llama", "--n-embd", "512", "--n-layer", "4",
                            "--n-head", "8", "--n-head-kv", "8", "--n-ff", "1536", "--n-ctx", "256",
                            "--n-vocab", "1024", "--vocab", "builtin", "--type", ty],
                           check=True, stdout=subprocess.DEVNULL)
            size_kib = os.path.getsize(path) // 1024
            for level in LEVELS:
                with Daemon("--dtype", "native", "--isa", level, model=path) as d:
                    loaded_line(d)
                    text_of(d.port, "rss-%s-%s" % (ty, level))
                    rss = mapping_rss_kib(d.proc.pid, path)
                print("%s %-6s file %6d KiB, its mapping resident after a request %6d KiB"
                      % (ty, level, size_kib, rss))
                if level == "scalar":
                    assert rss > size_kib * 0.8, (ty, level, rss, size_kib)
                else:
                    assert rss < size_kib * 0.25, (ty, level, rss, size_kib)


def test_env_forces_the_level_like_the_flag():
    with Daemon(env={"LLORCH_ISA": "scalar"}) as d:
        assert loaded_line(d)["isa"] == "scalar"
        assert get_json(d.port, "/health")[1]["capabilities"]["isa"] == "scalar"


def test_a_level_above_the_cpu_is_refused_naming_what_it_runs():
    missing = [lv for lv in ("avx512", "avxvnni", "avx2") if lv not in LEVELS]
    if not missing:
        print("skipped: this CPU runs every level")
        return
    p = subprocess.run([binary(), "--model", model_path(), "--port", "0", "--host", "127.0.0.1",
                        "--callback-url", "http://localhost:9999/ready", "--isa", missing[0],
                        "--log-format", "text"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    err = p.stderr.decode()
    assert p.returncode != 0, err
    assert "not one this CPU runs" in err and "it runs: " + ", ".join(LEVELS) in err, err


def main():
    run_tests([
        test_every_shared_class_serves_natively_at_every_level,
        test_synthetic_classes_serve_natively_at_every_level,
        test_native_reads_fewer_bytes_than_int8_for_4_bit_files,
        test_repacked_weights_give_their_file_pages_back,
        test_env_forces_the_level_like_the_flag,
        test_a_level_above_the_cpu_is_refused_naming_what_it_runs,
    ])


if __name__ == "__main__":
    main()
