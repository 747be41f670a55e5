"""bench/throughput.py runs end to end and reports every figure (the figures themselves are
checked by running the benchmark, not by tests)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, processes_with_log_dir


def test_the_quick_benchmark_reports_every_figure(swarm_env):
    result = subprocess.run(
        [sys.executable, "bench/throughput.py", "--quick", "--models", "2", "--envs", "2", "--steps", "60",
         "--warmup", "20", "--log-dir", str(swarm_env.log_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["models"] == 2 and figures["envs"] == 2 and figures["steps"] >= 60
    for name in ("compute_only_sps", "swarm_sps", "ready_s", "evolution_s", "pss_mb"):
        assert figures[name] > 0, name
    assert figures["ratio"] == pytest.approx(figures["swarm_sps"] / figures["compute_only_sps"], rel=0.01)
    assert "compute_only_sps" in result.stdout and "pss_mb" in result.stdout  # the table
    assert not processes_with_log_dir(swarm_env.log_dir), "the benchmark left its swarm running"
