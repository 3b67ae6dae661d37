"""bench/datasets.py runs with one command: a small synthetic store, a real build, the report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_when_the_dataset_bench_runs_small_then_it_reports_rows_time_and_memory(
    tmp_path: Path,
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "datasets.py"),
            "--events",
            "20000",
            "--dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = re.search(r"rows \{'labels': (\d+), 'pairs': (\d+)", proc.stdout)
    assert rows is not None, proc.stdout
    assert int(rows.group(1)) > 0 and int(rows.group(2)) > 0
    assert re.search(r"build: [0-9.]+ s \(target 60 s", proc.stdout)
    assert re.search(r"peak RSS [0-9.]+ GB", proc.stdout)
    cpu = r"CPU: [0-9]+ s over [0-9]+ s \(.*; user [0-9]+ s, kernel [0-9]+ s\)"
    assert re.search(cpu, proc.stdout), proc.stdout
    baseline = re.search(
        r"baseline: .* took ([0-9.]+) s before the build and ([0-9.]+) s after; the build took "
        r"([0-9.]+) passes",
        proc.stdout,
    )
    assert baseline is not None, proc.stdout
    assert float(baseline.group(1)) > 0 and float(baseline.group(2)) > 0
    assert not any(tmp_path.iterdir()), "the generated store is removed without --keep"
