#!/usr/bin/env python3
"""Load-test smoke: the real daemon on 127.0.0.1 with the tiny stories260k
model, bench/loadgen at concurrency 8 for a few seconds. Asserts correctness
under concurrency only (every stream completes with well-formed events, no
errors, the counts match), never speed."""
import csv
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import BUILD, Daemon, run_tests  # noqa: E402

REQUESTS = 32
CONCURRENCY = 8
MAX_TOKENS = 8
PROMPTS = [
    "Once upon a time",
    "The little dog",
    "Lily and Tom went to the park. They saw a big tree and",
    "One day",
    "A girl named Sue had a red ball",
]


def loadgen_run(port, tmp, *extra):
    """Runs bench/loadgen against the daemon; returns (exit status, output, CSV row)."""
    prompt_file = os.path.join(tmp, "prompts.txt")
    csv_path = os.path.join(tmp, "run.csv")
    with open(prompt_file, "w") as f:
        f.write("\n".join(PROMPTS) + "\n")
    cmd = [os.path.join(BUILD, "bench", "loadgen"), "--url", "http://127.0.0.1:%d" % port,
           "--max-tokens", str(MAX_TOKENS), "--temperature", "0", "--prompt-file", prompt_file,
           "--duration", "60", "--drain-timeout", "30", "--csv", csv_path, "--label", "smoke",
           "--fail-on-error"] + list(extra)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=150)
    out = p.stdout.decode("utf-8", "replace")
    rows = list(csv.DictReader(open(csv_path, newline=""))) if os.path.exists(csv_path) else []
    assert len(rows) == 1, "expected one CSV row, got %d:\n%s" % (len(rows), out)
    return p.returncode, out, rows[0]


def loadgen_streams_at_concurrency_8_all_complete_well_formed_without_errors():
    with tempfile.TemporaryDirectory(prefix="llorch-loadgen-smoke-") as tmp, Daemon() as d:
        rc, out, r = loadgen_run(d.port, tmp, "--concurrency", str(CONCURRENCY),
                                 "--requests", str(REQUESTS))
        print(out)
        assert d.proc.poll() is None, "daemon died during the load:\n" + "\n".join(d.log_lines[-30:])
        assert rc == 0, "loadgen exited %d (1 = malformed stream, 3 = errors):\n%s" % (rc, out)
        for key, want in (("sent", REQUESTS), ("ok", REQUESTS), ("errors", 0), ("malformed", 0),
                          ("cut", 0), ("dropped_arrivals", 0)):
            assert int(r[key]) == want, "%s = %s, want %d" % (key, r[key], want)
        assert r["errors_by_code"] == "", r["errors_by_code"]
        # A run in which no token came through would have checked nothing.
        assert int(r["out_tokens"]) > 0, "no tokens were streamed"


if __name__ == "__main__":
    run_tests([loadgen_streams_at_concurrency_8_all_complete_well_formed_without_errors])
