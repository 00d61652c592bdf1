"""The example scripts: their shared command-line helper, `--help` and clean errors of every
script, and end-to-end runs at a tiny size that write complete run folders."""

import argparse
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import run_example

import metaplastic as mp


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCRIPTS = sorted(
    name for name in os.listdir(EXAMPLES) if name.endswith(".py") and not name.startswith("_")
)


def _load_cli():
    spec = importlib.util.spec_from_file_location("_cli", os.path.join(EXAMPLES, "_cli.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _load_cli()


def test_the_example_scripts():
    assert SCRIPTS == [
        "bcm.py",
        "delayed_reward.py",
        "drosophila.py",
        "fly_intervals.py",
        "fly_trace.py",
        "identifiability.py",
        "model_selection.py",
        "multihost_fit.py",
        "nwb_flies.py",
        "oja_robustness.py",
        "recover_oja.py",
        "recurrent.py",
        "resumable_fit.py",
        "reward_rule.py",
        "rule_sweep.py",
        "sparse_discovery.py",
        "spike_counts.py",
        "uncertainty.py",
    ]


@pytest.mark.parametrize(
    "item, text, expected",
    [
        (float, "0.5,0.7", (0.5, 0.7)),
        (float, "1", (1.0,)),
        (float, " 0.5 , 0.7, ", (0.5, 0.7)),
        (int, "3,1,2", (3, 1, 2)),
        (str, "x*r,x*y*r", ("x*r", "x*y*r")),
    ],
)
def test_list_flag_parses_comma_separated_items(item, text, expected):
    assert cli.list_of(item)(text) == expected


def test_list_flag_choices_and_empty():
    families = cli.list_of(str, choices=("taylor", "mlp"))
    assert families("mlp,taylor") == ("mlp", "taylor")
    with pytest.raises(argparse.ArgumentTypeError, match="'lstm'.*taylor, mlp"):
        families("taylor,lstm")
    with pytest.raises(argparse.ArgumentTypeError, match="no items"):
        cli.list_of(float)("")
    assert cli.list_of(float, allow_empty=True)("") == ()


def test_list_flag_error_names_the_flag_and_the_bad_item(capsys):
    p = cli.parser("doc")
    p.add_argument("--fractions", type=cli.list_of(float), default=(0.5,))
    assert p.parse_args([]).fractions == (0.5,)
    assert p.parse_args(["--fractions", "0.6,0.8"]).fractions == (0.6, 0.8)
    with pytest.raises(SystemExit) as exit_:
        p.parse_args(["--fractions", "0.5,O.7"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --fractions" in err and "'O.7'" in err and "Traceback" not in err


def test_parser_common_flags():
    args = cli.parser("doc", resume="continue", quick="small").parse_args([])
    assert vars(args) == {
        "out": "out",
        "seed": 0,
        "no_progress": False,
        "compile_cache": None,
        "no_compile_cache": False,
        "resume": None,
        "quick": False,
    }
    args = cli.parser("doc", seed=False, progress=False).parse_args(["--out", "o"])
    assert vars(args) == {"out": "o", "compile_cache": None, "no_compile_cache": False}
    with pytest.raises(SystemExit):
        cli.parser("doc", seed=False).parse_args(["--seed", "1"])
    assert cli.comma((0.5, 1.0, 2)) == "0.5,1,2"


def test_a_script_without_pandas_stops_at_once_naming_the_extra(monkeypatch):
    cli.needs_pandas("drosophila.py")  # installed: nothing happens
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(SystemExit, match=r"drosophila.py writes its tables with pandas.*\[plot\]"):
        cli.needs_pandas("drosophila.py")


def test_help_shows_every_default_and_resume_restores_the_recorded_flags(tmp_path):
    def make():
        p = cli.parser("doc", resume="continue", quick="small")
        p.add_argument("--steps", type=cli.positive_int, default=20)
        p.add_argument("--fractions", type=cli.list_of(float), default=(0.5, 1.0), help="f")
        p.add_argument("--noise", type=float, default=0.1, help="noise (default 0.1 here)")
        return p

    text = " ".join(make().format_help().split())
    assert "--steps STEPS default: 20" in text and "f (default: 0.5,1)" in text
    assert "random seed (default: 0)" in text and "(default 0.1 here)" in text
    assert "here) (default" not in text  # a help that names its default is left alone
    # The run folder records the flags; --resume alone brings them back, and a flag given
    # on the command line wins over the record (open_run then compares them).
    run = tmp_path / "run"
    run.mkdir()
    recorded = {"seed": 3, "steps": 7, "fractions": [0.6, 0.8], "quick": True, "out": "x"}
    (run / "config.json").write_text(json.dumps({"name": "r", "config": recorded}))
    args = make().parse_args(["--resume", str(run)])
    assert (args.seed, args.steps, args.fractions, args.quick) == (3, 7, (0.6, 0.8), True)
    assert args.out == "out"  # --out, --no-progress and the cache flags may differ
    args = make().parse_args(["--resume", str(run), "--steps", "9"])
    assert (args.seed, args.steps) == (3, 9)
    # No record (not a run folder): the flags as given, for open_run to refuse.
    assert make().parse_args(["--resume", str(tmp_path)]).steps == 20


def test_json_line_converts_numpy_values(capsys):
    print("a table first")
    cli.print_json(
        {
            "r2": np.float32(0.5),
            "n": np.int64(3),
            "ok": np.bool_(True),
            "grid": np.array([[1.0, 2.0], [3.0, 4.0]]),
            "fractions": (0.5, 0.7),
            "missing": float("nan"),
            "per_seed": [np.float64(np.inf), np.int32(1)],
        }
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert json.loads(lines[-1]) == {
        "r2": 0.5,
        "n": 3,
        "ok": True,
        "grid": [[1.0, 2.0], [3.0, 4.0]],
        "fractions": [0.5, 0.7],
        "missing": None,
        "per_seed": [None, 1],
    }
    with pytest.raises(TypeError, match="object"):
        cli.print_json({"what": object()})


def _script(name, *args, timeout=60):
    return subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *args],
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_answers_quickly(name):
    proc = _script(name, "--help", timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert "--out" in proc.stdout and "usage:" in proc.stdout
    # The compilation cache's switch and its default folder.
    assert "--no-compile-cache" in proc.stdout and "metaplastic/jax" in proc.stdout
    # Every script takes a small check run, silences its bars and takes its seed(s).
    assert "--quick" in proc.stdout and "--no-progress" in proc.stdout
    assert "--seed" in proc.stdout


def test_default_compile_cache_folder(monkeypatch, tmp_path):
    import metaplastic as mp

    # The test session caches its own programs (conftest.py): JAX's folder is set, and would
    # be the default; unset it while the defaults are checked.
    jax_folder = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        monkeypatch.delenv("METAPLASTIC_CACHE_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        assert mp.runs.default_compile_cache_dir() == tmp_path / "metaplastic" / "jax"
        monkeypatch.delenv("XDG_CACHE_HOME")
        home = mp.runs.default_compile_cache_dir()
        assert home == Path("~/.cache/metaplastic/jax").expanduser()
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
        assert mp.runs.default_compile_cache_dir() == tmp_path / "jax"
        monkeypatch.setenv("METAPLASTIC_CACHE_DIR", str(tmp_path / "mine"))
        assert mp.runs.default_compile_cache_dir() == tmp_path / "mine"
    finally:
        jax.config.update("jax_compilation_cache_dir", jax_folder)


def test_benchmark_help_names_the_cache_folder():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--no-compile-cache" in proc.stdout and "metaplastic/jax" in proc.stdout


def _cache_entries(folder):
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.long
def test_compile_cache_flag_and_environment_variable(tmp_path, monkeypatch):
    """By default a script caches its compiled programs in $METAPLASTIC_CACHE_DIR; the folder
    of --compile-cache takes precedence; with --no-compile-cache it writes no cache at all."""
    args = ["--steps", "2", "--checkpoint-every", "1", "--trajectories", "2", "--length", "5"]
    args += ["--n-in", "2", "--n-out", "2", "--no-progress"]
    env_cache, flag_cache = tmp_path / "env_cache", tmp_path / "flag_cache"

    def run(*extra):
        env = dict(os.environ, PYTHONPATH=ROOT, METAPLASTIC_CACHE_DIR=str(env_cache))
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        proc = subprocess.run(
            [sys.executable, os.path.join(EXAMPLES, "resumable_fit.py"), *args, *extra],
            env=env | {"XDG_CACHE_HOME": str(tmp_path / "xdg")},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]

    # Without a flag the scripts' folder is the user cache folder, $METAPLASTIC_CACHE_DIR
    # first (`compile_cache` passes no folder to `enable_compile_cache`).
    monkeypatch.setenv("METAPLASTIC_CACHE_DIR", str(env_cache))
    assert mp.runs.default_compile_cache_dir() == env_cache
    run("--out", str(tmp_path / "a"), "--compile-cache", str(flag_cache))
    n_flag = len(_cache_entries(flag_cache))
    assert n_flag and not _cache_entries(env_cache)  # the flag wins over the variable
    run("--out", str(tmp_path / "b"), "--no-compile-cache")
    assert not _cache_entries(env_cache) and not _cache_entries(tmp_path / "xdg" / "metaplastic")
    assert len(_cache_entries(flag_cache)) == n_flag


@pytest.mark.parametrize(
    "name, flag, value",
    [
        ("oja_robustness.py", "--noises", "0,x"),
        ("oja_robustness.py", "--fractions", "1 0.5"),
        ("reward_rule.py", "--families", "taylor,lstm"),
        ("rule_sweep.py", "--families", "taylor,,gru"),
        ("rule_sweep.py", "--rules", "x*r,x*q"),
        ("drosophila.py", "--families", "covariance,forgeting"),
        ("drosophila.py", "--fractions", "0.5;0.7"),
    ],
)
def test_bad_list_item_is_a_clean_usage_error(name, flag, value):
    proc = _script(name, flag, value, timeout=30)
    assert proc.returncode == 2
    assert f"argument {flag}: bad item" in proc.stderr and "Traceback" not in proc.stderr


BAD_FLAGS = [
    ("recover_oja.py", "--steps", "-1", "positive integer"),
    ("recover_oja.py", "--noise", "-0.1", ">= 0"),
    ("recover_oja.py", "--recorded-fraction", "1.5", r"fraction in \(0, 1\]"),
    ("recover_oja.py", "--n-train", "0", "positive integer"),
    ("recover_oja.py", "--rule", "lstm", "invalid choice"),
    ("oja_robustness.py", "--seeds", "0", "positive integer"),
    ("oja_robustness.py", "--fractions", "0.5,1.5", "bad item '1.5'"),
    ("oja_robustness.py", "--noises", "nan", "bad item 'nan'"),
    ("oja_robustness.py", "--steps", "2.5", "invalid positive_int value"),
    ("reward_rule.py", "--seeds", "-2", "positive integer"),
    ("reward_rule.py", "--n-train", "0", "positive integer"),
    ("reward_rule.py", "--l1", "inf", ">= 0"),
    ("rule_sweep.py", "--seeds", "0", "positive integer"),
    ("rule_sweep.py", "--taylor-steps", "0", "positive integer"),
    ("drosophila.py", "--fractions", "0", "bad item '0'"),
    ("drosophila.py", "--data", "/nonexistent/flies", "does not exist"),
    ("drosophila.py", "--resamples", "x", "invalid positive_int value"),
    ("fly_intervals.py", "--data", "/nonexistent/flies", "does not exist"),
    ("fly_intervals.py", "--draws", "0", "positive integer"),
    ("fly_trace.py", "--data", "/nonexistent/flies", "does not exist"),
    ("resumable_fit.py", "--steps", "0", "positive integer"),
    ("resumable_fit.py", "--learning-rate", "0", "> 0"),
    ("resumable_fit.py", "--no-such-flag", "1", "unrecognized arguments"),
    ("uncertainty.py", "--datasets", "0", "positive integer"),
    ("uncertainty.py", "--noise", "0", "> 0"),
    ("model_selection.py", "--decay", "-0.05", "> 0"),
    ("model_selection.py", "--prior-std", "0", "> 0"),
    ("sparse_discovery.py", "--parts", "oja,mlp", "bad item 'mlp'"),
    ("sparse_discovery.py", "--threshold", "0", r"fraction in \(0, 1\]"),
]


@pytest.mark.parametrize("name, flag, value, message", BAD_FLAGS)
def test_bad_flag_is_a_usage_error_naming_it(name, flag, value, message):
    """Out-of-range counts, fractions and penalties stop at the command line (exit status 2,
    the flag named) instead of failing with a traceback inside a fit. 26 cases."""
    proc = _script(name, flag, value, timeout=30)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert flag.split("=")[0] in proc.stderr or "unrecognized" in proc.stderr
    assert re.search(message, proc.stderr), proc.stderr[-2000:]


@pytest.mark.slow
def test_reward_rule_writes_a_run_folder(tmp_path):
    pytest.importorskip("matplotlib")
    summary = run_example(
        "reward_rule.py",
        *("--out", str(tmp_path), "--seeds", "2", "--n-train", "3", "--n-test", "2"),
        *("--trials-per-block", "10", "--steps", "2", "--jobs", "1"),
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


@pytest.mark.slow
def test_uncertainty_quick_reports_coverage_per_setting_and_term(tmp_path):
    summary = run_example("uncertainty.py", "--quick", "--no-progress", "--out", str(tmp_path))
    coverage = summary["coverage"]
    assert set(coverage) >= {"oja_small", "oja_full", "fly_covariance", "fly_forgetting"}
    assert set(coverage["oja_small"]) == {"x*y", "y^2*w"} and len(coverage["oja_full"]) == 27
    assert set(coverage["fly_forgetting"]) == {"1", "r", "x", "x*r", "w"}
    assert "bootstrap_basic_fly_covariance" in coverage
    assert all(0 <= c <= 1 for rows in coverage.values() for c in rows.values())
    with open(os.path.join(summary["run"], "coverage.json")) as f:
        table = json.load(f)
    row = table["fly_covariance"]["x*r"]
    assert row["ci"][0] <= row["coverage"] <= row["ci"][1] and row["truth"] == 1.0
    assert summary["seconds"]["total"] < 60


@pytest.mark.slow
def test_sparse_discovery_quick_reports_how_often_the_true_terms_are_selected(tmp_path):
    summary = run_example("sparse_discovery.py", "--quick", "--no-progress", "--out", str(tmp_path))
    assert set(summary["selection"]) == {"oja", "fly"}
    for name, truth in (("oja", ["x*y", "y^2*w"]), ("fly", ["w", "x*r"])):
        result = summary["results"][name]
        assert result["truth"] == truth
        for method in ("threshold_fit", "stability_selection"):
            row = result[method]
            assert row["rate"] == row["recovered"] / row["datasets"]
            assert summary["selection"][name][method] == row["rate"]
    assert summary["results"]["oja"]["candidates"] == 27
    assert summary["results"]["fly"]["candidates"] == 8


@pytest.mark.slow
def test_delayed_reward_quick_reports_decay_coverage_and_confusion(tmp_path):
    summary = run_example("delayed_reward.py", "--quick", "--no-progress", "--out", str(tmp_path))
    assert set(summary["trace_decay"]) == {"true", "estimate"}
    assert 0 < summary["trace_decay"]["estimate"] < 1 and 0 <= summary["coverage"] <= 1
    for criterion in ("bic", "evidence"):
        matrix = summary["confusion"][criterion]["matrix"]
        n = summary["confusion_datasets_per_generator"]
        assert all(sum(row.values()) == n for row in matrix.values())
    # 58 s on the 2-core machine at load 3, 100 s at load 6.5.
    assert summary["seconds"] < 180


@pytest.mark.slow
def test_fly_trace_quick_scores_both_families_per_fly(tmp_path, drosophila_dir):
    summary = run_example(
        "fly_trace.py", "--quick", "--out", str(tmp_path), "--data", drosophila_dir
    )
    assert summary["flies"] == 3 and len(summary["decay_interval_95_per_fly"]) == 3
    for low, high in summary["decay_interval_95_per_fly"]:
        assert 0 <= low <= high <= 1


@pytest.mark.slow
def test_bcm_quick_reports_tau_and_weights(tmp_path):
    summary = run_example("bcm.py", "--quick", "--no-progress", "--out", str(tmp_path))
    assert set(summary["tau"]) == {"true", "estimate"} and summary["tau"]["estimate"] > 1
    assert -1 < summary["r2_weights"] <= 1 and summary["seconds"] < 120


@pytest.mark.slow
def test_model_selection_quick_reports_a_confusion_matrix(tmp_path):
    summary = run_example("model_selection.py", "--quick", "--no-progress", "--out", str(tmp_path))
    confusion = summary["confusion"]
    assert set(confusion) == {"held_out", "aic", "bic", "evidence"}
    for matrix in confusion.values():
        for generating in ("covariance", "forgetting"):
            assert sum(matrix[generating].values()) == summary["datasets"]
    assert summary["seconds"]["total"] < 60


@pytest.mark.slow
def test_identifiability_quick_explains_the_noisy_oja_fit(tmp_path):
    summary = run_example("identifiability.py", "--quick", "--no-progress", "--out", str(tmp_path))
    fits = summary["identifiability"]
    clean, noisy = fits["noise-free"], fits["noise 0.2"]
    # Noise-free the rule is recovered; with noise the dynamics are, the coefficients not.
    assert clean["max_coefficient_error"] < 1e-6 and clean["r2_weights"] > 0.999
    assert noisy["r2_weights"] > 0.99 and noisy["max_coefficient_error"] > 1.0
    # The same curvature: the weakest determined direction barely moves the activity.
    assert (
        noisy["activity_change_per_unit_weakest"]
        < 1e-3 * noisy["activity_change_per_unit_strongest"]
    )
    assert noisy["weakest"] and all(" is " in d for d in noisy["weakest"])
    prof = summary["profile"]
    assert len(prof["values"]) == len(prof["delta_nll"]) and 0 <= min(prof["delta_nll"]) < 1.92


@pytest.mark.slow
def test_recurrent_quick_recovers_the_recurrent_rule_and_both_layer_families(tmp_path):
    summary = run_example("recurrent.py", "--quick", "--no-progress", "--out", str(tmp_path))
    rec = summary["recurrent"]
    assert rec["r2_weights"] > 0.99 and rec["half_units"]["r2_weights"] > 0.99
    inputs = rec["plastic_inputs"]  # the input synapses' own rule, fitted at once
    assert inputs["r2_weights"] > 0.99 and inputs["r2_input_weights"] > 0.99
    two = summary["two_layers"]
    for layer, terms in (("layer1", ("x*y", "y^2*w")), ("layer2", ("x*y", "w"))):
        for term, truth in zip(terms, (1.0, -1.0)):
            low, high = two[layer]["family_fit"][term]["interval_95"]
            assert low - 0.05 < truth < high + 0.05
    assert two["parameters"] == 54 and len(two["weakest_directions"]) == 3


@pytest.mark.slow
def test_spike_counts_quick_recovers_oja_from_counts_and_fluorescence(tmp_path):
    summary = run_example("spike_counts.py", "--quick", "--no-progress", "--out", str(tmp_path))
    assert summary["poisson"]["r2_weights"] > 0.99
    assert summary["calcium"]["r2_weights"] > 0.99
    coverage = summary["coverage"]
    assert coverage["datasets"] == 20
    for term in ("x*y", "y^2*w"):
        low, high = coverage[term]["clopper_pearson_95"]
        assert low <= coverage[term]["coverage"] <= high


@pytest.mark.slow
def test_nwb_flies_reports_the_same_numbers_as_the_mat_files(tmp_path, drosophila_dir):
    summary = run_example(
        "nwb_flies.py", "--families", "covariance", "--out", str(tmp_path), "--data", drosophila_dir
    )
    assert summary["flies"] == summary["nwb_files"] == 18
    assert summary["numbers_compared"] > 18 * 10
    assert summary["max_abs_diff_vs_mat"] == 0.0
