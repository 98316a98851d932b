#!/usr/bin/env python3
"""One model split by layers over MPI ranks, end to end on 127.0.0.1:
`mpirun --allow-run-as-root --oversubscribe -np S+1 llorch-cpud --pipeline ...`.

1. With 2 stages (-np 3) and 4 stages (-np 5), from the whole file and from
   split files, with micro-batches (one group per stage) and without
   (--pipeline-groups 1), concurrent greedy and seeded requests (with a
   shared long prefix, so prefix reuse happens on the coordinator and every
   stage) give the same text, tokens and log-probs (printed to float
   precision) as one process; /health lists the stages and the groups.
2. A stage killed mid-stream ends the whole pipeline within seconds: the
   streaming client gets an `error` frame (INFERENCE_FAILED, the stage lost)
   and its connection closes, /health answers 503 "failed" meanwhile, rank 0
   says so in its log, and mpirun exits non-zero; no hang.
Skipped (exit 77) when the build has no MPI or mpirun is missing.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from e2e_common import (BUILD, Daemon, Stream, binary, events_of, model_path,  # noqa: E402
                        post_json, get_json, run_tests)

MODEL = "llama-mid-f32.gguf"  # 4 layers
MPIRUN = shutil.which("mpirun")
LONG = ("Once upon a time there was a little robot who lived in a quiet town by the sea "
        "and every morning it walked to the harbour to count the boats. ")
PROMPTS = [LONG + "One day", LONG + "The boats", "Hello there", "In the beginning"]


def has_mpi():
    cfg = os.path.join(BUILD, "include", "llorch", "config.h")
    try:
        return MPIRUN is not None and "LLORCH_HAVE_MPI 1" in open(cfg).read()
    except OSError:
        return False


class Pipeline(Daemon):
    """models: one file per rank instead of model for all (MPMD: each rank
    its own --model)."""

    def __init__(self, n_stages, *args, model=None, models=None):
        # Open MPI keeps allocations of MPI_Init until exit: no leak report
        # from the sanitizer build for those
        env = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1"}
        super().__init__(*args, model=model, env=env, ready_timeout=60.0)
        self.n_stages = n_stages
        self.models = models

    def cmdline(self):
        mpi = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "--mca", "btl",
               "self,vader,tcp", "--bind-to", "none"]
        base = super().cmdline()
        app = base[:1] + ["--pipeline"] + base[1:] + ["--threads", "1"]
        if not self.models:
            return mpi + ["-np", str(self.n_stages + 1)] + app
        out = mpi
        for i, m in enumerate(self.models):
            out += (([":"] if i else []) + ["-np", "1"] +
                    [m if a == self.model else a for a in app])
        return out

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        """SIGTERM to rank 0: it drains, stops the stages, mpirun exits 0
        (mpirun itself forwards a SIGTERM to every rank but then exits 1)."""
        r0 = self.ranks().get(0)
        if r0 and self.proc.poll() is None:
            os.kill(r0, sig)
        return self.wait(timeout)

    def ranks(self):
        """pid of each rank (children of mpirun, by OMPI_COMM_WORLD_RANK)."""
        out = {}
        for pid in subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                  text=True).stdout.split():
            try:
                env = open("/proc/%s/environ" % pid, "rb").read().split(b"\0")
            except OSError:
                continue
            for kv in env:
                if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                    out[int(kv.split(b"=")[1])] = int(pid)
        return out


def completions(port):
    """Each prompt alone, in order (a batch of one sequence per step, the
    long prefix reused by the second prompt), then all at once: results of
    the former by prompt index, the latter by ("batch", index). Only the
    former are compared to the float: in a mixed batch the int8/f32 matmul
    shapes differ from run to run (batch invariance, issue #15)."""
    res = {}

    def one(i, key):
        body = {"model": "m", "prompt": PROMPTS[i], "max_tokens": 10, "logprobs": 3}
        if i == 3:
            body.update(temperature=0.9, seed=7)
        else:
            body.update(temperature=0)
        st, _, obj, _ = post_json(port, "/v1/completions", body, timeout=120)
        assert st == 200, (st, obj)
        c = obj["choices"][0]
        res[key] = (c["text"], json.dumps(c.get("logprobs"), sort_keys=True),
                    obj["usage"]["completion_tokens"])
    for i in range(len(PROMPTS)):
        one(i, i)
    ts = [threading.Thread(target=one, args=(i, ("batch", i))) for i in range(len(PROMPTS))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(180)
    return res


REF = {}


def reference(model=None):
    """One process's results on model (default MODEL), once per model."""
    model = model or model_path(MODEL)
    if model not in REF:
        with Daemon("--threads", "1", "--model-ref", "m", model=model) as d:
            REF[model] = completions(d.port)
    return REF[model]


def check_pipeline(n_stages, model, *args, models=None, inspect=None, groups=None,
                   ref_model=None):
    """groups: --pipeline-groups N (None: the default, one group per stage);
    /health must report the groups in effect. ref_model: the whole file one
    process runs for the reference (default MODEL)."""
    ref = reference(ref_model)
    if groups is not None:
        args = args + ("--pipeline-groups", str(groups))
    with Pipeline(n_stages, "--model-ref", "m", *args, model=model, models=models) as p:
        got = completions(p.port)
        health = get_json(p.port, "/health")[1]
        if inspect:
            inspect(p)
    for k in ref:
        if isinstance(k, tuple):
            assert got[k][2] == 10, (n_stages, k, got[k])
        else:
            assert got[k] == ref[k], (n_stages, k, got[k], ref[k])
    assert health.get("pipeline_groups") == (groups or n_stages), (groups, health)
    stages = health.get("stages")
    assert stages and len(stages) == n_stages, health
    assert [s["rank"] for s in stages] == list(range(1, n_stages + 1)), stages
    assert stages[0]["layers"][0] == 0 and stages[-1]["layers"][1] == 3, stages
    for s in stages:
        assert s["host"] and s["weight_bytes"] > 0 and s["kv_bytes"] > 0, s
        assert s["last_step_ms"] >= 0, s


def test_two_stages_match_one_process():
    check_pipeline(2, model_path(MODEL))


def test_four_stages_match_one_process():
    check_pipeline(4, model_path(MODEL))


def test_two_stages_without_micro_batches_match_one_process():
    """--pipeline-groups 1: one step at a time through the stages (the
    comparison runs' baseline) gives the same results too."""
    check_pipeline(2, model_path(MODEL), groups=1)


def test_uneven_layers_from_split_files_match_one_process():
    tmp = tempfile.mkdtemp(prefix="llorch-e2e-pipe-")
    try:
        subprocess.run([os.path.join(BUILD, "tools", "llorch-cli"), "split", "--model",
                        model_path(MODEL), "--out", os.path.join(tmp, "m"), "--stages", "2"],
                       check=True, capture_output=True, timeout=60)
        check_pipeline(2, os.path.join(tmp, "m-00001-of-00002.gguf"), "--layers", "0-0,1-3")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mapped_gguf(pid):
    """Base names of the .gguf files a process maps."""
    names = set()
    for line in open("/proc/%d/maps" % pid):
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].strip().endswith(".gguf"):
            names.add(os.path.basename(parts[5].strip()))
    return names


def split_three(tmp):
    subprocess.run([os.path.join(BUILD, "tools", "llorch-cli"), "split", "--model",
                    model_path(MODEL), "--out", os.path.join(tmp, "m"), "--layers",
                    "0-0,1-1,2-3"], check=True, capture_output=True, timeout=60)
    return [os.path.join(tmp, "m-%05d-of-00003.gguf" % i) for i in (1, 2, 3)]


def mapped_per_rank(own_files):
    """Runs -np 3 on the model split in three (layers 0-0, 1-1, 2-3), checked
    against one process; returns the part names and, per rank, the GGUF files
    it maps. own_files: each rank gets its own stage file instead of part 1."""
    tmp = tempfile.mkdtemp(prefix="llorch-e2e-pipe-")
    try:
        parts = split_three(tmp)
        seen = {}

        def inspect(p):
            for rank, pid in p.ranks().items():
                seen[rank] = mapped_gguf(pid)
        models = [parts[0], parts[0], parts[1], parts[2]] if own_files else None
        check_pipeline(3, parts[0], "--layers", "0-0,1-1,2-3", models=models, inspect=inspect)
        return [os.path.basename(x) for x in parts], seen
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_stages_map_only_the_split_files_of_their_layers():
    names, seen = mapped_per_rank(own_files=False)
    # the first part holds the metadata: every rank reads it; a stage
    # maps its own part besides, and nothing else
    assert seen.get(0) == {names[0]}, seen
    assert seen.get(1) == {names[0]}, seen
    assert seen.get(2) == {names[0], names[1]}, seen
    assert seen.get(3) == {names[0], names[2]}, seen


def test_each_rank_given_its_own_stage_file_maps_only_that_file():
    names, seen = mapped_per_rank(own_files=True)
    # rank 0 (no weights) and stage 0 read part 1, stages 1 and 2 theirs
    assert seen == {0: {names[0]}, 1: {names[0]}, 2: {names[1]}, 3: {names[2]}}, seen


def test_rope_freqs_model_from_each_rank_own_stage_file_matches_one_process():
    """A llama-3-style model (rope_freqs.weight, read by every layer) split
    in three: each rank given its own stage file finds the factors in it
    (llorch-cli split copies them into every part) and the results equal
    one process on the whole file."""
    tmp = tempfile.mkdtemp(prefix="llorch-e2e-pipe-")
    try:
        whole = os.path.join(tmp, "rf.gguf")
        subprocess.run([os.path.join(BUILD, "tools", "llorch-synth"), "-o", whole, "--arch",
                        "llama", "--n-layer", "4", "--rope-freqs", "--vocab", "builtin",
                        "--type", "f32", "--n-ctx", "512"],
                       check=True, capture_output=True, timeout=60)
        subprocess.run([os.path.join(BUILD, "tools", "llorch-cli"), "split", "--model", whole,
                        "--out", os.path.join(tmp, "m"), "--layers", "0-0,1-1,2-3"],
                       check=True, capture_output=True, timeout=60)
        parts = [os.path.join(tmp, "m-%05d-of-00003.gguf" % i) for i in (1, 2, 3)]
        check_pipeline(3, parts[0], "--layers", "0-0,1-1,2-3",
                       models=[parts[0], parts[0], parts[1], parts[2]], ref_model=whole)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_killed_stage_ends_streams_with_an_error_frame_and_exits():
    p = Pipeline(2, model=model_path(MODEL))
    p.start()
    try:
        s = Stream(p.port, "/execute", {"job_id": "k", "prompt": LONG, "max_tokens": 400,
                                        "temperature": 0.9, "seed": 1}, timeout=20)
        assert s.status == 200
        while True:  # into the decode: a step is in flight when the stage dies
            fr = s.next_frame()
            assert fr is not None
            if fr["event"] == "token":
                break
        ranks = p.ranks()
        assert 2 in ranks, ranks
        health = []

        def poll_health():
            end = time.time() + 5
            while time.time() < end:
                try:
                    health.append(get_json(p.port, "/health"))
                except OSError:
                    if health:
                        return  # the listener is gone: the process is ending
                time.sleep(0.01)
        t0 = time.time()
        os.kill(ranks[2], signal.SIGKILL)
        poller = threading.Thread(target=poll_health)
        poller.start()
        frames = s.read_all()
        dt = time.time() - t0
        poller.join(10)
        last = events_of(frames)[-1]
        assert last["type"] == "error", frames[-3:]
        assert last["code"] == "INFERENCE_FAILED", last
        assert "pipeline stage was lost" in last["message"], last
        assert dt < 5, ("the stream did not end in time", dt)
        failed = [b for st, b in ((h[0], h[1]) for h in health) if st == 503 and
                  isinstance(b, dict) and b.get("status") == "failed"]
        assert failed and "MPI launcher" in failed[0]["error"], health
        rc = p.wait(timeout=20)
        assert rc != 0, rc
        assert time.time() - t0 < 10
        log = "\n".join(p.log_lines)
        assert "pipeline lost" in log, log[-2000:]
    finally:
        p.kill()


def decoding_streams(port, tag, timeout):
    """Four long /execute streams, returned once each has had a token (so
    every stream is decoding and, on two stages, both groups are in flight)."""
    streams = []
    for i in range(4):
        s = Stream(port, "/execute", {"job_id": "%s%d" % (tag, i), "prompt": PROMPTS[i],
                                      "max_tokens": 400, "temperature": 0.9,
                                      "seed": 1 + i}, timeout=timeout)
        assert s.status == 200
        streams.append(s)
    for s in streams:
        while True:
            fr = s.next_frame()
            assert fr is not None
            if fr["event"] == "token":
                break
    return streams


def test_killed_stage_with_groups_in_flight_ends_every_stream_with_an_error_frame():
    """Four streams on two stages: two micro-batch groups in flight when a
    stage dies; every stream still ends with its error frame, in time."""
    p = Pipeline(2, model=model_path(MODEL))
    p.start()
    try:
        streams = decoding_streams(p.port, "g", timeout=20)
        ranks = p.ranks()
        t0 = time.time()
        os.kill(ranks[1], signal.SIGKILL)
        for s in streams:
            last = events_of(s.read_all())[-1]
            assert last["type"] == "error", last
            assert last["code"] == "INFERENCE_FAILED", last
            assert "pipeline stage was lost" in last["message"], last
        assert time.time() - t0 < 5, ("the streams did not end in time", time.time() - t0)
        assert p.wait(timeout=20) != 0
    finally:
        p.kill()


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def gone(pid):
    try:
        return open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def end_ranks(p, ranks):
    """Leaves nothing behind: a stopped rank is continued, every rank and
    mpirun killed."""
    for pid in ranks.values():
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
    p.kill()


STAGE_TIMEOUT_MS = 2000


def test_frozen_stage_ends_every_stream_within_the_stage_timeout():
    """A stage stopped with SIGSTOP keeps its connections open: MPI notices
    nothing, only --stage-timeout-ms does. Idle for longer than the bound
    first: nothing times out and no rank spins. Then four streams (two
    groups in flight), the last stage frozen: every stream ends with its
    error frame once the bound has passed (not before: the stage was
    answering until then), /health says why, rank 0 exits non-zero with
    MPI_Abort, and the frozen rank is killed with the job."""
    p = Pipeline(2, "--stage-timeout-ms", str(STAGE_TIMEOUT_MS), model=model_path(MODEL))
    p.start()
    ranks = {}
    try:
        ranks = p.ranks()
        assert sorted(ranks) == [0, 1, 2], ranks
        bound = STAGE_TIMEOUT_MS / 1000.0
        cpu0 = {r: cpu_seconds(pid) for r, pid in ranks.items()}
        t_idle = time.time()
        time.sleep(1.5 * bound)
        idle = time.time() - t_idle
        st, h = get_json(p.port, "/health")
        assert st == 200 and h["status"] == "healthy", (st, h)
        for r, pid in ranks.items():  # polling with sleeps, not a busy core
            used = cpu_seconds(pid) - cpu0[r]
            assert used < 0.25 * idle, ("rank %d used %.2f s of CPU in %.2f s idle" % (r, used, idle))
        streams = decoding_streams(p.port, "f", timeout=30)
        health = []

        def poll_health():
            end = time.time() + bound + 8
            while time.time() < end:
                try:
                    health.append(get_json(p.port, "/health"))
                except OSError:
                    if health and health[-1][0] == 503:
                        return
                time.sleep(0.02)
        poller = threading.Thread(target=poll_health)
        t0 = time.time()
        os.kill(ranks[2], signal.SIGSTOP)
        poller.start()
        ends = []
        for s in streams:
            last = events_of(s.read_all())[-1]
            ends.append(time.time() - t0)
            assert last["type"] == "error", last
            assert last["code"] == "INFERENCE_FAILED", last
            assert "pipeline stage was lost" in last["message"], last
        assert max(ends) < bound + 2.0, ("the streams did not end in time", ends)
        assert min(ends) > 0.5 * bound, ("a stream ended before the bound", ends)
        poller.join(bound + 10)
        failed = [b for st, b in health if st == 503 and isinstance(b, dict) and
                  b.get("status") == "failed"]
        assert failed and "no pipeline stage answered" in failed[0]["error"], health[-3:]
        rc = p.wait(timeout=20)
        assert rc != 0, rc
        assert "pipeline lost" in "\n".join(p.log_lines), p.log_lines[-20:]
        end = time.time() + 10
        while not gone(ranks[2]) and time.time() < end:
            time.sleep(0.05)
        assert gone(ranks[2]), "the frozen stage outlived the job"
    finally:
        end_ranks(p, ranks)


def long_step_ms(*flags):
    """A prompt of ~490 tokens in one step with the scalar kernels: its
    completion status and each stage's step time (/health)."""
    prompt = " ".join("robot%d harbour" % i for i in range(100))
    with Pipeline(2, "--model-ref", "m", "--isa", "scalar", "--step-tokens", "512", *flags,
                  model=model_path(MODEL)) as p:
        st, _, obj, _ = post_json(p.port, "/v1/completions",
                                  {"model": "m", "prompt": prompt, "max_tokens": 1,
                                   "temperature": 0}, timeout=120)
        assert st == 200, (st, obj)
        assert obj["usage"]["prompt_tokens"] > 400, obj["usage"]
        st, h = get_json(p.port, "/health")
        assert st == 200 and h["status"] == "healthy", (st, h)
        return max(s["last_step_ms"] for s in h["stages"])


def test_a_step_longer_than_the_stage_timeout_is_not_a_lost_stage():
    """The bound is on silence, not on a step. The step of a long prompt
    with the scalar kernels is timed on this machine first (no bound), then
    run again under a --stage-timeout-ms of a third of it: the stages'
    heartbeats (every quarter of the bound while computing) keep the
    pipeline alive and the completion succeeds, with a step (from /health)
    well over the bound, else the test would prove nothing. Scaled to the
    machine so that a fast CPU's short step still outlasts the bound."""
    step = long_step_ms()
    bound_ms = max(60, int(step / 3))
    again = long_step_ms("--stage-timeout-ms", str(bound_ms))
    assert again > 1.5 * bound_ms, ("the prompt's step was too short to test", step, again,
                                    bound_ms)


if __name__ == "__main__":
    if not has_mpi():
        print("SKIP: built without MPI or no mpirun")
        sys.exit(77)
    run_tests([test_two_stages_match_one_process,
               test_four_stages_match_one_process,
               test_two_stages_without_micro_batches_match_one_process,
               test_uneven_layers_from_split_files_match_one_process,
               test_stages_map_only_the_split_files_of_their_layers,
               test_each_rank_given_its_own_stage_file_maps_only_that_file,
               test_rope_freqs_model_from_each_rank_own_stage_file_matches_one_process,
               test_killed_stage_ends_streams_with_an_error_frame_and_exits,
               test_killed_stage_with_groups_in_flight_ends_every_stream_with_an_error_frame,
               test_frozen_stage_ends_every_stream_within_the_stage_timeout,
               test_a_step_longer_than_the_stage_timeout_is_not_a_lost_stage])
