"""The rule sweep example and the behavioural scaling benchmark: their rule list, padding,
CSV output and table helpers."""

import csv
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.random as jr
import numpy as np
import pytest

import metaplastic as mp


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(relative, name):
    # The examples import their shared `_cli` helper from their own folder, which is on
    # sys.path when they run as scripts.
    folder = os.path.dirname(os.path.join(ROOT, relative))
    if folder not in sys.path:
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load(os.path.join("examples", "rule_sweep.py"), "rule_sweep")


def test_rule_list_parses_has_named_rules_and_no_duplicates():
    rules = sweep.sweep_rules()
    expressions = [e for e, _ in rules]
    canonical = [mp.rules.from_expression(e).to_expression() for e in expressions]
    assert len(set(canonical)) == len(canonical)
    for named in sweep.NAMED_RULES:
        assert named in expressions
    # 27 grid rules, each with and without decay, plus the 3 named rules not in the grid.
    assert len(rules) == 57
    grid = [e for e, s in rules if s == "grid"]
    assert len(grid) == 26 and "x^2*y^2*w^2*r" in grid and "r" in grid  # x*r is named
    decayed = [e for e, s in rules if s == "grid+decay"]
    assert all(e.endswith(" - 0.05*w") for e in decayed) and len(decayed) == 26
    # Every expression means what it says: x^2*y*r has exactly one coefficient, at (2,1,0,1).
    coefficients = np.asarray(mp.rules.from_expression("x^2*y*r").coefficients)
    assert coefficients[2, 1, 0, 1] == 1.0 and np.count_nonzero(coefficients) == 1


def test_buckets_cover_and_are_few():
    sizes = {sweep._bucket(n) for n in range(1, 5000)}
    assert all(sweep._bucket(n) >= n for n in range(1, 5000))
    assert all(sweep._bucket(n) <= max(64, 1.25 * n) for n in range(1, 5000))
    assert len(sizes) <= 30  # 5 sizes per doubling


@pytest.mark.slow  # 10 s on a quiet machine, 52 s wall under load 8
def test_padding_changes_no_likelihood():
    task = mp.behaviour.OperantTask(block_lengths=5)
    data = mp.behaviour.recovery_data(
        mp.rules.reward_modulated(),
        seeds=1,
        n_train=2,
        n_test=2,
        task=task,
        draws=None,
        key=jr.key(3),
    )
    padded = sweep.pad_recovery_data(data, task.max_presentations)
    assert padded.train.choices.shape[-1] >= data.train.choices.shape[-1]
    assert padded.test.choices.shape[-1] == task.max_presentations

    def first(tree):  # the one seed
        return jax.tree.map(lambda a: a[0], tree)

    for a, b in ((data.train, padded.train), (data.test, padded.test)):
        ll_a = mp.behaviour.choice_log_likelihood(data.teacher, first(a))
        ll_b = mp.behaviour.choice_log_likelihood(data.teacher, first(b))
        np.testing.assert_allclose(np.asarray(ll_a), np.asarray(ll_b), rtol=1e-6)
        # The teacher explains its own choices better than chance (p = 1/2 on every
        # presentation), a bound a wrong or mis-padded likelihood would not meet; `ll < 0`
        # holds for any likelihood of Bernoulli choices.
        n = np.asarray(first(a).presentation_mask.sum(axis=(-1, -2)))
        assert np.all(np.asarray(ll_a) > -n * np.log(2.0))


def test_scaling_helpers():
    scaling = _load(os.path.join("benchmarks", "behaviour_scaling.py"), "behaviour_scaling")
    # 2 seeds x 18 trajectories x 240 trials x 81 terms x 1000 x 2 synapses, float32.
    assert scaling.gn_sensitivity_gib(2, 18, 240, 1000) == pytest.approx(
        2 * 18 * 240 * 81 * 2000 * 4 / 2**30
    )
    rec = {
        "config": {
            "trials": 30,
            "hidden": 10,
            "method": "gauss_newton",
            "iterations": 12,
            "packed_length": 70,
        },
        "compile_s": 1.0,
        "step_s": 0.1,
        "fit_s": 2.0,
        "r2_weights": 0.9,
        "r2_activity": 0.95,
        "percent_deviance": 40.0,
        "true_percent_deviance": 41.0,
        "peak_rss_mb": 500.0,
        "load_avg_1min": 2.0,
    }
    table = scaling.markdown([rec])
    assert table.count("\n") == 3 and "| 30 | 10 | gauss_newton (12) |" in table


@pytest.mark.slow
def test_quick_sweep_writes_csv_and_resumes(tmp_path):
    def run(*extra):
        out = subprocess.run(
            [
                sys.executable,
                os.path.join(ROOT, "examples", "rule_sweep.py"),
                "--quick",
                "--out",
                str(tmp_path),
                "--no-progress",
                *extra,
            ],
            env=dict(os.environ, PYTHONPATH=ROOT),
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    summary = run()
    with open(summary["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == sweep.COLUMNS
    assert [(r["rule"], r["family"]) for r in rows] == [
        (e, fam) for e in sweep.NAMED_RULES[:2] for fam in ("taylor", "mlp")
    ]
    assert all(r["status"] == "ok" and np.isfinite(float(r["r2_weights"])) for r in rows)
    assert summary["rows"] == 4 and set(summary) >= {"taylor", "mlp", "seconds"}
    resumed = run("--resume", summary["run"])
    with open(resumed["csv"], newline="") as f:
        again = list(csv.DictReader(f))
    assert again == rows  # nothing was refitted
