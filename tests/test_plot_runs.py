import inspect
import json
import os
import subprocess
import sys
import threading
import time

import equinox as eqx
import jax
import numpy as np
import pytest

import metaplastic as mp
from metaplastic import plot, runs


PNG = b"\x89PNG\r\n\x1a\n"


def fake_history(steps=30, members=None):
    """A History like fit's, with coefficients drifting towards Oja's rule."""
    layer = mp.nn.PlasticDense(mp.TaylorRule.zeros())
    params = eqx.partition(layer, mp.rule_filter_spec(layer))[0]
    target = np.asarray(mp.rules.oja().coefficients)
    progress = 1 - np.exp(-np.arange(1, steps + 1) / 8)
    coefficients = progress[:, None, None, None] * target
    loss = np.exp(-np.arange(steps) / 8)
    if members is not None:
        scale = np.linspace(0.8, 1.1, members)
        coefficients = coefficients[:, None] * scale[None, :, None, None, None]
        loss = loss[:, None] * scale
    stacked = jax.tree.map(lambda _: coefficients, params)
    return mp.History(loss=loss, params=stacked)


def test_coefficient_trajectories(tmp_path):
    path = tmp_path / "coefficients.png"
    fig = plot.coefficient_trajectories(fake_history(), true_rule=mp.rules.oja(), top=3, path=path)
    assert path.read_bytes().startswith(PNG)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["y^2*w (true -1)", "x*y (true 1)"]
    curve = next(line for line in ax.get_lines() if line.get_label() == "x*y (true 1)")
    np.testing.assert_allclose(curve.get_ydata()[-1], 1 - np.exp(-30 / 8), rtol=1e-6)
    # Ensembles: one thin line per member plus the median.
    fig = plot.coefficient_trajectories(fake_history(members=3), terms=["x*y"])
    assert len([line for line in fig.axes[0].get_lines() if line.get_alpha() == 0.25]) == 3
    with pytest.raises(mp.MetaplasticError, match="Unknown terms"):
        plot.coefficient_trajectories(fake_history(), terms=["x*q"])
    with pytest.raises(mp.MetaplasticError, match="no trained Taylor-rule"):
        plot.coefficient_trajectories(mp.History(loss=np.zeros(2), params={"a": np.zeros(2)}))


def test_weight_trajectories(tmp_path):
    rng = np.random.default_rng(0)
    true = np.cumsum(rng.normal(size=(20, 3, 4)), axis=0)
    fig = plot.weight_trajectories(true, true + 0.1, synapses=4, path=tmp_path / "w.svg")
    assert (tmp_path / "w.svg").read_text().lstrip().startswith("<?xml")
    assert "R² = 0.99" in fig.axes[1].get_title()
    with pytest.raises(mp.MetaplasticError, match="share a shape"):
        plot.weight_trajectories(true, true[:-1])
    with pytest.raises(mp.MetaplasticError, match="NaN"):
        plot.weight_trajectories(true, np.full_like(true, np.nan))


def test_sweep_heatmap(tmp_path):
    rows = [
        {"noise_std": n, "recorded_fraction": f, "seed": s, "r2_weights": 1 - n / f + 0.01 * s}
        for n in (0.0, 0.1)
        for f in (0.5, 1.0)
        for s in range(3)
    ]
    fig = plot.sweep_heatmap(rows, path=tmp_path / "heat.png")
    assert (tmp_path / "heat.png").read_bytes().startswith(PNG)
    image = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(image, [[1.01, 1.01], [0.81, 0.91]])  # medians of the seeds
    assert "median of 3" in fig.axes[0].get_title()
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    np.testing.assert_allclose(
        plot.sweep_heatmap(columns).axes[0].get_images()[0].get_array(), image
    )
    with pytest.raises(mp.MetaplasticError, match="no column 'r2'"):
        plot.sweep_heatmap(rows, value="r2")


def test_coefficient_distributions_and_deviance(tmp_path):
    rng = np.random.default_rng(1)
    fits = [
        mp.TaylorRule(mp.rules.oja().coefficients + 0.05 * rng.normal(size=(3, 3, 3)))
        for _ in range(12)
    ]
    fig = plot.coefficient_distributions(
        fits, top=4, true_rule=mp.rules.oja(), path=tmp_path / "d.png"
    )
    assert (tmp_path / "d.png").read_bytes().startswith(PNG)
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert set(ticks[:2]) == {"x*y", "y^2*w"}
    assert len(fig.axes[0].collections) == 4  # one scatter of 12 flies per term
    plot.coefficient_distributions({"x*r": rng.normal(size=9), "w": rng.normal(size=9)})
    scores = {"Taylor": rng.normal(8, 1, 10), "MLP": rng.normal(9, 1, 10), "null": np.zeros(10)}
    fig = plot.deviance_comparison(scores, path=tmp_path / "dev.pdf")
    assert (tmp_path / "dev.pdf").read_bytes().startswith(b"%PDF")
    bars = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(bars, [np.mean(v) for v in scores.values()])
    with pytest.raises(mp.MetaplasticError, match="one score per fly"):
        plot.deviance_comparison({"a": [1.0, 2.0], "b": [1.0]})


def fake_fits(family, seed, flies=("Fly1", "Fly2", "Fly3", "Fly4")):
    """A `FlyFits` of made-up numbers: 4 flies, held-out fractions 0.5 and 0.8."""
    rng = np.random.default_rng(seed)
    n = len(flies)
    coefficients = {"x*r": rng.normal(size=n), "w": rng.normal(size=n)}
    return mp.flies.FlyFits(
        family=family,
        reward_signal="prediction_error",
        names=tuple(flies),
        accept_only=np.zeros(n, bool),
        fractions=(0.5, 0.8),
        in_sample=rng.normal(10, 2, n),
        held_out=rng.normal(5, 2, (2, n)),
        block1=rng.normal(8, 2, n),
        block1_held_out=rng.normal(3, 2, (2, n)),
        coefficients=coefficients,
        block1_coefficients={k: v + 1 for k, v in coefficients.items()},
        rules=mp.TaylorRule.zeros(),
        objective=np.zeros(n),
        seconds=0.0,
    )


def drawn(fig):
    """The y values of every line and scatter of a figure's first axes, in drawing order."""
    ax = fig.axes[0]
    lines = [np.asarray(line.get_ydata(), float) for line in ax.get_lines()]
    points = [np.asarray(c.get_offsets())[:, 1] for c in ax.collections if len(c.get_offsets())]
    return lines + points


def assert_same_figure(a, b):
    for x, y in zip(drawn(a), drawn(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_plots_take_the_results_dataframes():
    pd = pytest.importorskip("pandas")
    rows = [
        {"noise_std": n, "recorded_fraction": f, "r2_weights": n + f}
        for n in (0, 1)
        for f in (1, 2)
    ]
    image = lambda fig: fig.axes[0].get_images()[0].get_array()
    np.testing.assert_array_equal(
        image(plot.sweep_heatmap(pd.DataFrame(rows))), image(plot.sweep_heatmap(rows))
    )
    # A fit's History.to_dataframe(): the same curves as the History, ensembles included.
    for members in (None, 3):
        history = fake_history(steps=5, members=members)
        a = plot.coefficient_trajectories(history, terms=["x*y", "y^2*w"])
        b = plot.coefficient_trajectories(
            history.to_dataframe(), terms=["x*y", "y^2*w"], factors=("x", "y", "w")
        )
        assert_same_figure(a, b)
    with pytest.raises(mp.MetaplasticError, match="pass factors="):
        plot.coefficient_trajectories(history.to_dataframe())
    # Per-fly fits: FlyFits.to_dataframe() of each family.
    cov, fgt = fake_fits("covariance", 0), fake_fits("forgetting", 1)
    tables = {"covariance": cov.to_dataframe(), "forgetting": fgt.to_dataframe()}
    assert_same_figure(
        plot.coefficient_distributions(tables["covariance"], prefix="block1_coef_"),
        plot.coefficient_distributions(cov.block1_coefficients),
    )
    assert_same_figure(
        plot.deviance_comparison(tables, column="in_sample"),
        plot.deviance_comparison({"covariance": cov.in_sample, "forgetting": fgt.in_sample}),
    )
    wide = pd.DataFrame({"covariance": cov.in_sample, "forgetting": fgt.in_sample})
    assert_same_figure(
        plot.deviance_comparison(wide), plot.deviance_comparison(tables, column="in_sample")
    )
    assert_same_figure(
        plot.held_out_curve((0.5, 0.8), tables, column="block1_held_out"),
        plot.held_out_curve(
            (0.5, 0.8), {"covariance": cov.block1_held_out, "forgetting": fgt.block1_held_out}
        ),
    )
    # One row per fit and term (an ensemble's Posterior, one family of FlyIntervals), and
    # one row per model and member (an ensemble's Comparison).
    long = pd.DataFrame(
        {"member": [0, 0, 1, 1], "term": ["x*r", "w"] * 2, "estimate": [0.5, -0.1, 0.4, 0.0]}
    )
    assert_same_figure(
        plot.coefficient_distributions(long),
        plot.coefficient_distributions({"x*r": [0.5, 0.4], "w": [-0.1, 0.0]}),
    )
    models = long.rename(columns={"term": "model", "estimate": "held_out"})
    assert_same_figure(
        plot.deviance_comparison(models, column="held_out"),
        plot.deviance_comparison({"x*r": [0.5, 0.4], "w": [-0.1, 0.0]}),
    )


def test_dataframes_that_do_not_fit_a_plot_are_refused():
    pd = pytest.importorskip("pandas")
    cov = fake_fits("covariance", 0)
    other = fake_fits("forgetting", 1, flies=("Fly2", "Fly1", "Fly3", "Fly4"))
    tables = {"covariance": cov.to_dataframe(), "forgetting": other.to_dataframe()}
    with pytest.raises(mp.MetaplasticError, match="list different flies"):
        plot.deviance_comparison(tables, column="in_sample")
    with pytest.raises(mp.MetaplasticError, match=r"scores\['covariance'\]: no column 'r2'"):
        plot.deviance_comparison(tables, column="r2")
    with pytest.raises(mp.MetaplasticError, match="give column="):
        plot.held_out_curve((0.5,), tables)
    with pytest.raises(mp.MetaplasticError, match="no column 'held_out_0.6'"):
        plot.held_out_curve((0.6,), tables, column="held_out")
    families = pd.DataFrame({"family": ["a", "b"], "term": ["w", "w"], "estimate": [1.0, 2.0]})
    with pytest.raises(mp.MetaplasticError, match="several families"):
        plot.coefficient_distributions(families)
    with pytest.raises(mp.MetaplasticError, match="coefficient columns named 'coef_'"):
        plot.coefficient_distributions(pd.DataFrame({"fly": ["Fly1"], "in_sample": [1.0]}))
    unpaired = pd.DataFrame({"model": ["a", "b"], "held_out": [1.0, 2.0]})
    with pytest.raises(mp.MetaplasticError, match="'fly' or 'member' column"):
        plot.deviance_comparison(unpaired, column="held_out")
    with pytest.raises(mp.MetaplasticError, match="not a History.to_dataframe"):
        plot.coefficient_trajectories(pd.DataFrame({"step": [0], "loss": [1.0]}), factors="xyw")


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(
        mp.MissingDependencyError, match=r'pip install "metaplastic\[plot\]"'
    ) as info:
        plot.deviance_comparison({"a": [1.0]})
    assert isinstance(info.value, ImportError) and isinstance(info.value, mp.MetaplasticError)


def test_concurrent_runs_get_their_own_folders(tmp_path):
    made, errors = [], []

    def make(i):
        try:
            run = runs.create_run(tmp_path, name="sweep", config={"seed": i, "lr": np.float32(0.5)})
            run.log(epoch=1, loss=float(i))
            run.finish({"seed": i})
            made.append(run)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=make, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    folders = sorted(p for p in tmp_path.iterdir())
    assert len(folders) == 16 and len({r.path for r in made}) == 16
    for run in made:
        config = json.loads((run.path / "config.json").read_text())
        seed = config["config"]["seed"]
        assert config["config"]["lr"] == 0.5
        assert config["versions"]["metaplastic"] == mp.__version__
        assert config["versions"]["jax"] == jax.__version__
        assert config["backend"] == jax.default_backend()
        assert runs.read_metrics(run.path) == [{"epoch": 1, "loss": float(seed)}]
        summary = json.loads((run.path / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["summary"] == {"seed": seed}
        assert sorted(p.name for p in run.path.iterdir()) == [
            "config.json",
            "metrics.csv",
            "summary.json",
        ]


def test_run_records_history_figures_and_failures(tmp_path):
    history = fake_history(steps=5)
    with runs.create_run(tmp_path, name="oja", config={"steps": 5}) as run:
        run.log_history(history)
        run.save_figure(plot.coefficient_trajectories(history), "coefficients")
    rows = runs.read_metrics(run.path)
    # Numbers come back as numbers.
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert isinstance(rows[-1]["x*y"], float)
    assert rows[-1]["x*y"] == pytest.approx(1 - np.exp(-5 / 8))
    assert rows[0]["loss"] == 1.0 and "y^2*w" in rows[0] and "1" in rows[0]
    assert (run.path / "coefficients.png").read_bytes().startswith(PNG)
    assert json.loads((run.path / "summary.json").read_text())["status"] == "finished"
    with pytest.raises(RuntimeError):
        with runs.create_run(tmp_path, name="broken") as failed:
            raise RuntimeError("out of memory")
    summary = json.loads((failed.path / "summary.json").read_text())
    assert summary["status"] == "failed" and "out of memory" in summary["summary"]["error"]
    with pytest.raises(mp.MetaplasticError, match="run name"):
        runs.create_run(tmp_path, name="../escape")
    with pytest.raises(mp.MetaplasticError, match="plain file name"):
        run.write_json("../x.json", {})
    with pytest.raises(mp.MetaplasticError, match="plain file name"):
        run.write_json(3, {})


def test_run_writes_tables(tmp_path):
    with runs.create_run(tmp_path, name="table") as run:
        rows = [{"rule": "x*r", "r2": 0.5}, {"rule": "r", "flags": "hard", "r2": np.float64(1.25)}]
        path = run.write_csv("table.csv", rows)
        assert path.read_text() == "rule,r2,flags\nx*r,0.5,\nr,1.25,hard\n"
        run.write_csv("table.csv", rows[1:], ["flags", "rule"])  # replaced whole
        assert path.read_text() == "flags,rule\nhard,r\n"
        assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "table.csv"]
        with pytest.raises(mp.MetaplasticError, match="plain file name"):
            run.write_csv("../table.csv", rows)


def test_run_writes_dataframes_as_it_writes_rows(tmp_path):
    pd = pytest.importorskip("pandas")
    rows = [
        {"fly": "Fly1", "n": 3, "score": 1 / 3, "small": 1e-300, "ok": True, "note": None},
        {"fly": "Fly2", "n": 4, "score": -0.0, "small": 2.5e16, "ok": False, "note": "x"},
    ]
    fits = fake_fits("covariance", 0)
    with runs.create_run(tmp_path, name="frames") as run:
        as_rows = run.write_csv("rows.csv", rows).read_text()
        assert run.write_csv("frame.csv", pd.DataFrame(rows)).read_text() == as_rows
        # A result's DataFrame: its rows() written in full, or the columns asked for.
        frame = run.write_csv("fits.csv", fits.to_dataframe()).read_text()
        assert frame == run.write_csv("fit_rows.csv", fits.rows()).read_text()
        two = run.write_csv("two.csv", fits.to_dataframe(), ["fly", "in_sample"]).read_text()
        assert two.splitlines()[0] == "fly,in_sample"
        assert two.splitlines()[1] == f"Fly1,{float(fits.in_sample[0])!r}"


def test_open_run_refuses_another_configuration(tmp_path):
    config = {"seeds": 3, "grid": (0.0, 0.5), "lr": np.float32(0.25), "out": "a", "tag": None}
    with runs.create_run(tmp_path, name="grid", config=config) as run:
        run.write_csv("cells.csv", [{"cell": 1}])
    reopened = runs.open_run(run.path, config)  # the same settings: tuples equal lists
    assert reopened.path == run.path and reopened.config["grid"] == [0.0, 0.5]
    assert runs.open_run(str(run.path)).config == reopened.config  # no config: no check
    changed = dict(config, seeds=4, grid=(0.0,), extra=True, out="b")
    del changed["tag"]
    with pytest.raises(mp.MetaplasticError) as info:
        runs.open_run(run.path, changed, ignore=("out",))
    message = str(info.value)
    assert "different configuration" in message and str(run.path) in message
    for part in (
        "seeds: recorded 3, given 4",
        "grid: recorded [0.0, 0.5], given [0.0]",
        "extra: recorded (absent), given true",
        "tag: recorded null, given (absent)",
    ):
        assert part in message
    assert "out:" not in message  # ignored
    reopened.write_text("report.md", "| a |\n")
    assert (run.path / "report.md").read_text() == "| a |\n"
    assert (run.path / "cells.csv").read_text() == "cell\n1\n"  # untouched by reopening
    with pytest.raises(mp.MetaplasticError, match="no run folder"):
        runs.open_run(tmp_path / "missing")
    (tmp_path / "bare").mkdir()
    with pytest.raises(mp.MetaplasticError, match="not a run folder"):
        runs.open_run(tmp_path / "bare", {})
    with pytest.raises(mp.MetaplasticError, match="mapping"):
        runs.open_run(run.path, [("seeds", 3)])


_CREATE_RUNS = """
import os, random, secrets, sys, time
import metaplastic as mp
out, start, worker, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(worker)
# Few suffixes, so that runs of one second collide and the exclusive mkdir must settle it.
secrets.token_hex = lambda nbytes: f"{rng.randrange(64):02x}"
while time.time() < start:
    time.sleep(0.001)
for i in range(n):
    with mp.runs.create_run(out, name="race", config={"worker": worker, "i": i}) as run:
        run.log(worker=worker, i=i)
        run.write_csv("table.csv", [{"worker": worker, "i": i}] * 50)
    print(run.path.name, flush=True)
"""


def test_processes_writing_into_one_out_folder_get_distinct_runs(tmp_path):
    """Several processes create runs of one name in one folder at the same moment: each
    gets its own folder, whole files, and no temporary file is left."""
    workers, n = 4, 12
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    start = time.time() + 6.0  # after every process has imported the library
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CREATE_RUNS, str(tmp_path), str(start), str(w), str(n)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    names = []
    for child in children:
        stdout, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        names += stdout.split()
    assert len(names) == len(set(names)) == workers * n
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == sorted(names)
    seen = set()
    for name in folders:
        folder = tmp_path / name
        assert sorted(p.name for p in folder.iterdir()) == [
            "config.json",
            "metrics.csv",
            "summary.json",
            "table.csv",
        ]
        config = json.loads((folder / "config.json").read_text())["config"]
        key = (config["worker"], config["i"])
        seen.add(key)
        assert runs.read_metrics(folder) == [{"worker": key[0], "i": key[1]}]
        assert (folder / "table.csv").read_text() == "worker,i\n" + f"{key[0]},{key[1]}\n" * 50
        assert json.loads((folder / "summary.json").read_text())["status"] == "finished"
    assert seen == {(w, i) for w in range(workers) for i in range(n)}


def test_sweep_progress(capsys):
    assert list(runs.track(range(3), desc="sweep")) == [0, 1, 2]
    assert "sweep" in capsys.readouterr().err
    assert list(runs.track(iter("ab"), progress=False)) == ["a", "b"]
    assert capsys.readouterr() == ("", "")


def test_open_run_removes_the_temporaries_of_a_killed_writer(tmp_path):
    with runs.create_run(tmp_path, name="fit", config={"steps": 3}) as run:
        run.write_csv("cells.csv", [{"cell": 1}])
    # What a process killed inside `atomic_open` leaves: a hidden temporary beside the file.
    stale = run.path / ".weights.png.abc123.tmp"
    stale.write_bytes(b"half a figure")
    (run.path / "checkpoint").mkdir()
    keep = run.path / "checkpoint" / "fit.ckpt"  # files in sub-folders belong to others
    keep.write_bytes(b"x")
    runs.open_run(run.path, {"steps": 3})
    assert not stale.exists() and keep.exists()
    assert sorted(p.name for p in run.path.iterdir()) == [
        "cells.csv",
        "checkpoint",
        "config.json",
        "summary.json",
    ]


@pytest.mark.parametrize(
    "function",
    [
        mp.fit,
        mp.bootstrap,
        mp.compare_models,
        mp.behaviour.recover_rule,
        mp.flies.fit_families,
        mp.flies.rule_intervals,
    ],
)
def test_the_long_calls_show_progress_by_default(function):
    # Each can keep a user waiting for more than a few seconds: a bar unless progress=False.
    assert inspect.signature(function).parameters["progress"].default is True
