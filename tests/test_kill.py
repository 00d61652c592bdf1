"""Kill every resumable workload with SIGKILL at random moments and resume it, again and again:
the result must be that of an uninterrupted run, with no row lost or doubled and no
temporary file left behind. A resume with another setting must be refused, naming it.

The kill schedule is seeded (reproducible). A kill lands either at a random time after the
start (before any progress, within a write, ...) or just after the workload has made
progress (a row or a checkpoint written), so that every cycle gets somewhere. The
uninterrupted reference run comes first and fills a persistent compilation cache, so that
the killed processes spend their time running rather than compiling (and never write the
cache, whose writes are not atomic)."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMING = ("generate_seconds", "fit_seconds", "xla_compiles", "cache_hits")


def _env(cache):
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        METAPLASTIC_CACHE_DIR=str(cache),  # the scripts' own cache setting
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )


def _run(script, args, env, check=True):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])
    return proc


def _run_folders(out):
    return sorted(p for p in Path(out).iterdir() if p.is_dir())


def _leftovers(out):
    """Temporary files (of the atomic writes) and hidden files anywhere under `out`."""
    return sorted(
        str(p) for p in Path(out).rglob("*") if p.name.startswith(".") or ".tmp" in p.name
    )


def _kill_and_resume(script, args, out, env, progress, *, kills, rng, log):
    """Start `script` and SIGKILL it `kills` times at random moments, each time resuming the
    run folder it made (or starting afresh if it made none); then let it finish. Returns the
    run folder and the number of kills that landed."""
    landed, starts, finished = 0, 0, False
    # How long the last start that ran to its end took: kills "at a random time from the
    # start" fall within it, so that they land on a fast workload (or a resumed finished
    # run) too.
    window = 5.0
    errors = Path(out).parent / f"{script}.stderr"
    while True:
        folders = _run_folders(out)
        assert len(folders) <= 1, f"a resume made a second run folder: {folders}"
        if folders:
            assert (folders[0] / "config.json").exists(), "a run folder without config.json"
        resume = ["--resume", str(folders[0])] if folders else []
        starts += 1
        assert starts <= 3 * kills + 5, "the workload makes no progress between kills"
        with open(errors, "wb") as stderr:
            started = time.monotonic()
            child = subprocess.Popen(
                [sys.executable, str(EXAMPLES / script), *args, *resume, "--no-progress"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            if landed == kills:
                assert child.wait(timeout=300) == 0, errors.read_text()[-3000:]
                return _run_folders(out)[0], landed
            before = progress(out)
            if finished or rng.uniform() < 0.3:  # at a random time from the start
                deadline, extra = time.monotonic() + rng.uniform(0.0, window), None
            else:  # just after the next step of progress
                deadline, extra = time.monotonic() + 120.0, rng.uniform(0.0, 0.4)
            while child.poll() is None and time.monotonic() < deadline:
                if extra is not None and progress(out) != before:
                    time.sleep(extra)
                    break
                time.sleep(0.02)
            if child.poll() is None:
                child.kill()
                landed += 1
            child.wait(timeout=60)
        log.append((script, child.returncode, progress(out)))
        # A run that finished before its kill is resumed (and killed) all the same.
        assert child.returncode in (0, -9), errors.read_text()[-3000:]
        if child.returncode == 0:
            window = min(5.0, time.monotonic() - started)
        finished = finished or child.returncode == 0


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rows_in(out, name):
    folders = _run_folders(out)
    if not folders or not (folders[0] / name).exists():
        return 0
    return len(_csv_rows(folders[0] / name))


def _checkpoint_state(out):
    folders = _run_folders(out)
    path = folders[0] / "checkpoint" / "fit.ckpt" if folders else None
    return path.stat().st_mtime_ns if path is not None and path.exists() else None


def _refused(script, args, resume, env, flag, recorded, given):
    """A resume with one changed flag stops at once, naming the flag and both values."""
    proc = _run(script, [*args, "--resume", str(resume)], env, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{flag}: recorded {recorded}, given {given}" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["rule_sweep", "oja_robustness", "resumable_fit"])
def test_sigkilled_workload_resumes_to_the_uninterrupted_result(tmp_path, workload):
    rng = np.random.default_rng(
        {"rule_sweep": 1, "oja_robustness": 2, "resumable_fit": 3}[workload]
    )
    cache, log = tmp_path / "jax_cache", []
    env = _env(cache)
    if workload == "rule_sweep":
        script, name, kills = "rule_sweep.py", "rule_sweep.csv", 8
        rules = "x*r,x*r^2 - 0.05*y,x*r - 0.05*w"
        args = ["--quick", "--rules", rules, "--compile-cache", str(cache)]
        changed, flag, recorded, given = ["--l1", "0.01"], "l1", "0.001", "0.01"
    elif workload == "oja_robustness":
        script, name, kills = "oja_robustness.py", "oja_robustness.csv", 6
        args = ["--noises", "0,1", "--fractions", "1,0.5", "--seeds", "1", "--n-in", "3"]
        args += ["--n-out", "3", "--length", "8", "--n-train", "4", "--n-test", "2"]
        args += ["--batch-size", "2", "--steps", "2"]
        changed, flag, recorded, given = ["--steps", "3"], "steps", "2", "3"
    else:
        script, name, kills = "resumable_fit.py", "metrics.csv", 8
        args = ["--steps", "600", "--checkpoint-every", "10", "--trajectories", "4"]
        args += ["--length", "10", "--n-in", "4", "--n-out", "4"]
        changed, flag, recorded, given = ["--steps", "601"], "steps", "600", "601"

    t0 = time.monotonic()
    reference = _run(script, [*args, "--out", str(tmp_path / "reference")], env)
    reference_rows = _csv_rows(Path(reference["run"]) / name)
    t1 = time.monotonic()

    out = tmp_path / "killed"
    out.mkdir()
    if workload == "resumable_fit":
        progress = _checkpoint_state
    else:
        progress = lambda out: _rows_in(out, name)  # noqa: E731
    folder, landed = _kill_and_resume(
        script, [*args, "--out", str(out)], out, env, progress, kills=kills, rng=rng, log=log
    )
    t2 = time.monotonic()
    print(f"{workload}: reference {t1 - t0:.1f} s, {landed} kills and resumes {t2 - t1:.1f} s")
    print("  (exit status, progress after it) per start:", [entry[1:] for entry in log])

    rows = _csv_rows(folder / name)
    if workload == "rule_sweep":
        keys = [(r["rule"], r["family"]) for r in rows]
        strip = [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
        assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in reference_rows]
    elif workload == "oja_robustness":
        keys = [(r["noise"], r["recorded_fraction"], r["seed"]) for r in rows]
        assert rows == reference_rows
    else:
        keys = [r["step"] for r in rows]
        assert rows == reference_rows  # every step's loss and coefficients, to the last digit
    assert len(keys) == len(set(keys)) == len(reference_rows)  # none lost, none doubled
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "finished"
    if workload == "resumable_fit":
        for key in ("final_loss", "rule", "coefficient_rmse", "steps"):
            assert summary["summary"][key] == reference[key]
    assert _leftovers(out) == []
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in Path(reference["run"]).iterdir()
    )
    assert landed == kills

    # Resuming with a changed setting is refused and changes nothing.
    before = (folder / name).read_bytes()
    _refused(script, [*args, *changed, "--out", str(out)], folder, env, flag, recorded, given)
    assert (folder / name).read_bytes() == before and len(_run_folders(out)) == 1
