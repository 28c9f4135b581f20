"""``benchmarks/gpu_check.py --device cpu --quick``: every section runs and the exit status is
the verdict of its checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = tmp_path / "rows.json"
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out)]
    done = subprocess.run(
        command + list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    return done, rows


def _table_lines(stdout, section):
    return [line for line in stdout.splitlines() if line.startswith(f"{section:<11} | ")]


def test_quick_cpu_run_prints_one_table_and_passes(tmp_path):
    done, rows = _run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "section     | item" in done.stdout and "0 failed" in done.stdout
    by_section = {
        s: [r for r in rows if r["section"] == s] for s in ("correctness", "speed", "train")
    }
    for section, section_rows in by_section.items():
        assert section_rows and len(_table_lines(done.stdout, section)) == len(section_rows)
        assert {r["check"] for r in section_rows} <= {"ok", "skip"}, section

    # Correctness: 5 losses x 4 cases, float32 within tolerance and float64 exact on the CPU.
    correctness = by_section["correctness"]
    assert len(correctness) == 20
    assert {r["item"].split(": ")[1] for r in correctness} == {
        "random",
        "ties",
        "no positives",
        "large",
    }
    for row in correctness:
        assert row["numbers"]["float32_error_over_tolerance"] <= 1.0
        assert row["numbers"]["float64_error_over_tolerance"] == 0.0

    # Speed: fast rows of the four losses at 2 x 2 sizes, each with its reference.
    speed = by_section["speed"]
    fast = [r for r in speed if "fast" in r["item"]]
    assert len(fast) == 16 and all(r["numbers"]["seconds"] > 0 for r in fast)
    assert sum("dense ref" in r["item"] for r in speed) == 4
    assert all("same value" in r["result"] for r in speed if "ref" in r["item"])

    # Train: two detectors x stock / pap / rs, each with a finite loss and a time per iteration.
    train = by_section["train"]
    assert [r["item"].split()[-1] for r in train] == ["stock", "pap", "rs"] * 2
    assert all(r["numbers"]["seconds_per_iter"] > 0 for r in train)


def test_failed_check_gives_non_zero_exit(tmp_path):
    # Tolerance 0: every inexact float32 result fails; the cases without positives stay exact.
    done, rows = _run(tmp_path, "--only", "correctness", "--tolerance-scale", "0")
    assert done.returncode == 1, done.stdout + done.stderr
    failed = {r["item"] for r in rows if r["check"] == "FAIL"}
    assert failed and all("no positives" not in item for item in failed)
    assert all(r["check"] == "ok" for r in rows if "no positives" in r["item"])
    assert "FAILED: correctness" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_missing_cuda_is_a_one_line_error():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cuda"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "--device cuda: CUDA is not available" in done.stderr
