"""tools/recipe_bench.py, shortened to one step per recipe: a check that the bench runs and reports what
the course recipe's goal asks of it (both training times from one run, their ratio, both held-out APs),
not of the recipes themselves (their full result is benchmarks/recipe_bench_cpu.txt)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.heavy
@pytest.mark.slow
def test_recipe_bench_trains_both_recipes_and_reports_times_ratio_and_ap(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "recipe_bench.py"), "--num-train", "4",
                           "--num-heldout", "3", "--out", str(out), "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["results"]) == {"v1", "course"}
    for name, r in result["results"].items():
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and r["trained_in_s"] > 0, name
        assert 0 <= r["mask_AP"] <= 1 and 0 <= r["box_AP"] <= 1, name
        assert (out / name / "checkpoint.pt").exists()
        assert "--recipe " + name in " ".join(result["commands"][name])
    assert result["ratio_cpu"] == result["results"]["course"]["cpu_s"] / result["results"]["v1"]["cpu_s"]
    assert "training time course / v1" in proc.stdout and "SHORTENED" in proc.stdout
