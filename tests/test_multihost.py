"""A data-parallel fit over several CPU processes (`jax.distributed`, one CPU device each, the
trajectories split over them) equals the same fit in one process, writes its checkpoint and
run folder once (process 0 only), and resumes bit for bit after one process is killed.

Every process is a fresh Python (tests/_multihost_worker.py) that calls
`jax.distributed.initialize(coordinator_address="localhost:PORT", ...)`; JAX's CPU
collectives (gloo) carry the cross-process reductions.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


ROOT = Path(__file__).resolve().parent.parent
WORKER = str(ROOT / "tests" / "_multihost_worker.py")
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start(processes: int, *args: str) -> list[subprocess.Popen]:
    """Start `processes` workers of one fit (or the single-process fit for 1)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    # One CPU device per process: drop any device count, keep the other flags.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    port = str(free_port())
    return [
        subprocess.Popen(
            [sys.executable, WORKER, "--processes", str(processes), "--process-id", str(i)]
            + ["--port", port, *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]


def finish(procs: list[subprocess.Popen]) -> list[dict]:
    """Wait for the workers; their JSON lines, in process order."""
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        stop(procs)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def checkpoint_header(path: Path) -> dict:
    """The JSON header of a checkpoint file (magic line, header length, header)."""
    blob = path.read_bytes()
    magic, length, rest = blob.split(b"\n", 2)
    assert magic == b"METAPLASTIC-CHECKPOINT"
    return json.loads(rest[: int(length)])


def coefficients(out: dict) -> np.ndarray:
    return np.asarray(out["coefficients"], np.float64)


def check_fit_over_processes(processes: int, tmp_path: Path) -> None:
    watch = tmp_path / "files"
    runs = watch / "runs"
    start_time = time.perf_counter()
    # Then an ensemble of 2 members per process, the members split over the processes.
    members = ["--ensemble", str(2 * processes)]
    procs = start(processes, "--run-out", str(runs), "--watch", str(watch), *members)
    single = start(1, *members)
    outs, (ref,) = finish(procs), finish(single)
    seconds = time.perf_counter() - start_time

    assert [o["process"] for o in outs] == list(range(processes))
    for out in outs:
        assert out["processes"] == processes and out["devices"] == processes
        assert out["dtype"] == "float64"
        assert out["n_traces"] == 1
        # Every process holds the same fitted model and the same (gathered) history.
        np.testing.assert_array_equal(coefficients(out), coefficients(outs[0]))
        assert out["loss"] == outs[0]["loss"]
        np.testing.assert_array_equal(out["history_last"], out["coefficients"])
    assert ref["processes"] == 1 and ref["devices"] == 1
    diff = float(np.max(np.abs(coefficients(outs[0]) - coefficients(ref))))
    moved = float(np.max(np.abs(coefficients(ref))))
    print(f"{processes} processes: max |dtheta| vs one process {diff:.3g}, {seconds:.1f} s")
    assert moved > 1e-2
    assert diff <= 1e-6
    np.testing.assert_allclose(outs[0]["loss"], ref["loss"], rtol=1e-9)

    # The ensemble: its history and its members are split across processes and reach every
    # process through `gather`; they equal the one-process ensemble fit's.
    single_members = ref["ensemble"]
    for out in outs:
        ensemble = out["ensemble"]
        assert len(ensemble["history_last"]) == 2 * processes * 27
        for key in ("history_last", "coefficients", "loss"):
            np.testing.assert_allclose(ensemble[key], single_members[key], rtol=1e-9, atol=1e-14)
    fitted = np.asarray(single_members["coefficients"]).reshape(2 * processes, -1)
    assert np.min(np.abs(fitted[0] - fitted[1:]).max(axis=1)) > 1e-3  # distinct members

    # One run folder, created and written by process 0 alone; the others got its path.
    folders = sorted(runs.iterdir())
    assert len(folders) == 1, folders
    run = folders[0]
    assert {out["run"] for out in outs} == {str(run.resolve())}
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint",
        "config.json",
        "metrics.csv",
        "summary.json",
    ]
    assert [p.name for p in (run / "checkpoint").iterdir()] == ["fit.ckpt"]
    header = checkpoint_header(run / "checkpoint" / "fit.ckpt")
    assert header["step"] == header["steps"] and header["status"] == "finished"
    written = set(outs[0]["writes"])
    name = run.name
    for f in ("checkpoint/fit.ckpt", "config.json", "metrics.csv", "summary.json"):
        assert f"runs/{name}/{f}" in written
    for out in outs[1:]:
        assert out["writes"] == [], out["writes"]


@pytest.mark.long
def test_fit_over_two_processes_equals_one_process(tmp_path):
    check_fit_over_processes(2, tmp_path)


@pytest.mark.slow
def test_fit_over_four_processes_equals_one_process(tmp_path):
    check_fit_over_processes(4, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_fit_over_processes_resumes_after_one_is_killed(processes, tmp_path):
    # Four steps per compiled call (steps 4-7 in the second): the kill after step 7 lands
    # after the checkpoint of step 6 and before the third call, a collective the dead
    # process never joins.
    steps = ["--steps", "12", "--checkpoint-every", "3", "--steps-per-call", "4"]
    whole = finish(start(processes, *steps, "--checkpoint-dir", str(tmp_path / "whole")))

    ckpt = tmp_path / "killed"
    victim = processes - 1
    procs = start(
        processes,
        *steps,
        "--checkpoint-dir",
        str(ckpt),
        "--kill-at",
        "7",
        "--victim",
        str(victim),
    )
    try:
        procs[victim].wait(timeout=TIMEOUT)
        assert procs[victim].returncode == -signal.SIGKILL, procs[victim].stderr.read()[-4000:]
        # The others wait in a collective for the dead one; a launcher would stop them too.
        time.sleep(0.5)
    finally:
        stop(procs)
    for p in procs:
        p.communicate()
    header = checkpoint_header(ckpt / "fit.ckpt")
    assert header["step"] == 6 and header["status"] == "running"

    resumed = finish(start(processes, *steps, "--checkpoint-dir", str(ckpt), "--resume"))
    for out in resumed:
        np.testing.assert_array_equal(coefficients(out), coefficients(whole[0]))
        assert out["loss"] == whole[0]["loss"]
    assert checkpoint_header(ckpt / "fit.ckpt")["step"] == 12
