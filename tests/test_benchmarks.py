"""Smoke tests of the benchmark scripts in scripts/benchmarks/: each starts as a user runs it (a subprocess from the
repository root, its own folder on sys.path) and lists its arguments. The product's tests import no script; the
benchmarks' figures are in docs/benchmarks.md, with the command behind each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# script -> arguments its --help must list
ARGUMENTS = {
    "forgetting": ["--quick", "--datasets", "--methods", "--kernel_features", "--resume"],
    "elsewhere": ["--datasets", "--cases", "--product_only", "--plot", "--plot_path"],
    "add_labels": ["--models", "--label_counts", "--inits", "--output_json"],
    "scale": ["--sizes", "--modes", "--processes", "--output_dir"],
    "cost": ["--datasets", "--joint", "--repeats", "--max_increments"],
    "inference": ["--rows_per_label", "--batch_size", "--repeats"],
}


@pytest.mark.parametrize("script", sorted(ARGUMENTS))
def test_benchmark_script_starts_and_lists_its_arguments(script):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmarks" / f"{script}.py"), "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith(f"usage: {script}.py")
    missing = [a for a in ARGUMENTS[script] if a not in done.stdout]
    assert not missing, f"{script}.py --help lacks {missing}:\n{done.stdout}"
