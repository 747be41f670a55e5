"""bench/study.py runs every variant end to end and reports them (the figures themselves come from
running the study, not from tests: they take minutes and vary with the machine)."""
import json
import subprocess
import sys

from tests.helpers import ROOT, processes_with_log_dir


def test_the_quick_study_runs_every_variant_and_writes_table_numbers_and_plot(tmp_path):
    out = tmp_path / "study"
    result = subprocess.run([sys.executable, "bench/study.py", "--quick", "--seeds", "3", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    study = json.loads((out / "study.json").read_text())
    runs = {r["variant"]: r for r in study["results"]}
    assert list(runs) == ["swarm + evolution", "swarm, no evolution", "SB3 A2C, one process"]
    for variant, run in runs.items():
        assert run["seed"] == 3 and run["solved"] is False, variant  # 300 steps: far too few to solve
        assert run["steps"] >= 300 and run["seconds"] > 0 and run["curve"], variant
    # the swarm variants ran the real control, with and without evolution, on their own seed
    assert runs["swarm + evolution"]["evolution"] is True and runs["swarm, no evolution"]["evolution"] is False
    assert runs["swarm + evolution"]["seed"] == 3 and runs["swarm + evolution"]["models"] == 2
    evo_log = (out / "evo-seed3" / "control.out").read_text()
    assert "evolved (fitness spread" in evo_log and "evolved" not in (out / "noevo-seed3" / "control.out").read_text()
    assert "SB3 A2C, one process      3     NO" in result.stdout  # the table
    assert (out / "study.png").stat().st_size > 5000
    for run_dir in ("evo-seed3", "noevo-seed3"):
        assert not processes_with_log_dir(out / run_dir), f"{run_dir}: the study left its swarm running"
