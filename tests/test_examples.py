"""The example scripts run end to end at a tiny size and write complete run folders."""

import csv
import json
import os
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, *args):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), *args],
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_reward_rule_writes_a_run_folder(tmp_path):
    pytest.importorskip("matplotlib")
    summary = run_example(
        "reward_rule.py",
        *("--out", str(tmp_path), "--seeds", "2", "--n-train", "3", "--n-test", "2"),
        *("--trials-per-block", "10", "--iterations", "2", "--jobs", "1"),
    )
    folder = summary["run"]
    assert sorted(os.listdir(folder)) == [
        "coefficients_taylor.png",
        "config.json",
        "deviance.png",
        "fit_history.csv",
        "metrics.csv",
        "summary.json",
        "weights_mlp.png",
        "weights_taylor.png",
    ]
    with open(os.path.join(folder, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["family"], r["seed"]) for r in rows] == [
        ("taylor", "0"),
        ("taylor", "1"),
        ("mlp", "0"),
        ("mlp", "1"),
    ]
    with open(os.path.join(folder, "fit_history.csv")) as f:
        history = list(csv.DictReader(f))
    assert len(history) == 2 and "taylor_loss[1]" in history[0]
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert config["config"]["seeds"] == 2 and "metaplastic" in json.dumps(config)
    with open(os.path.join(folder, "summary.json")) as f:
        record = json.load(f)
    assert record["status"] == "finished"
    assert record["summary"]["taylor"]["r2_weights"] == summary["taylor"]["r2_weights"]
