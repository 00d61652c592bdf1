"""Run the benchmark suite: `python -m benchmarks` (all) or `python -m benchmarks --only NAME`.

Every configuration prints one JSON object. The full suite runs each benchmark in its own
process (so that `peak_rss_mb` is that benchmark's own peak) and writes `benchmarks/RESULTS.md`.

JAX's persistent compilation cache is on by default, in the user cache folder
(`metaplastic.runs.enable_compile_cache`): a second run loads the compiled programs, so its
compile times are those of loading them. `--no-compile-cache` measures cold compilation.
"""

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ORDER = (
    "ceiling",
    "oja_forward",
    "oja_grad",
    "naive_baseline",
    "zoo",
    "scaling",
    "long_trajectory",
    "devices",
    "fly_fit",
    "paper_protocol",
)


CACHE_HELP = (
    "JAX persistent compilation cache folder (default: $METAPLASTIC_CACHE_DIR, else "
    "$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/metaplastic/jax, else "
    "~/.cache/metaplastic/jax)"
)


def compile_cache(folder: str | None, off: bool) -> str | None:
    """Turn JAX's persistent compilation cache on in `folder` (default: the user cache folder)
    or off; returns the folder in use, or None."""
    import metaplastic as mp

    if off:
        mp.runs.disable_compile_cache()
        return None
    return str(mp.runs.enable_compile_cache(folder))


def cache_flags(folder: str | None, off: bool) -> list[str]:
    """The flags that give a child process the same cache setting."""
    if off:
        return ["--no-compile-cache"]
    return [] if folder is None else ["--compile-cache", folder]


def run_one(name: str, as_json: bool, cache: str | None = None) -> None:
    if name == "devices" and "device_count" not in os.environ.get("XLA_FLAGS", ""):
        # Without accelerators JAX sees the CPU as one device; split it into 4 virtual devices
        # (before JAX starts) to show the sharded layout. Other platforms are unaffected.
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=4").strip()
    from ._harness import machine_facts
    from ._suite import BENCHMARKS

    if name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    if not as_json:
        print(f"# {name}: {json.dumps(machine_facts() | {'compile_cache': cache})}", flush=True)
    for rec in BENCHMARKS[name]():
        print(json.dumps(rec), flush=True)


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_all(names, as_json: bool, results: str | None, command: str, flags: list[str] = ()) -> int:
    from ._harness import machine_facts
    from ._report import write_results

    started = datetime.datetime.now(datetime.timezone.utc)
    machine = machine_facts()
    machine["compile_cache"] = "off" if "--no-compile-cache" in flags else "on"
    records, failures = [], []
    t0 = time.perf_counter()
    for name in names:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks", "--only", name, "--json", *flags],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            records.append(rec)
            print(line if as_json else _human(rec), flush=True)
        if proc.wait() != 0:
            failures.append(name)
            print(json.dumps({"name": name, "error": f"exit code {proc.returncode}"}), flush=True)
    machine["load_avg_1min_end"] = machine_facts().get("load_avg_1min")
    machine["suite_wall_s"] = round(time.perf_counter() - t0, 1)
    if results:
        gpu_jsonl = os.path.join(HERE, "results_gpu.jsonl")
        gpu_records = None
        if os.path.exists(gpu_jsonl):
            with open(gpu_jsonl) as f:
                gpu_records = [json.loads(line) for line in f if line.strip()]
        write_results(
            records,
            results,
            command=command,
            machine=machine,
            started=started,
            gpu_records=gpu_records,
        )
        if not as_json:
            print(f"wrote {os.path.relpath(results, ROOT)}")
    return 1 if failures else 0


def _human(rec: dict) -> str:
    thr = rec.get("synapse_steps_per_s")
    parts = [f"{rec['name']:16s}", json.dumps(rec["config"])]
    if rec.get("step_s") is not None:
        parts.append(f"step {rec['step_s']:.4g} s")
    if rec.get("compile_s") is not None:
        parts.append(f"compile {rec['compile_s']:.3g} s")
    if thr:
        parts.append(f"{thr / 1e6:.1f} M synapse-steps/s")
    if "slope" in rec:
        parts.append(f"slope {rec['slope']}")
    parts.append(f"peak RSS {rec['peak_rss_mb']:.0f} MiB")
    return "  ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", help="run one benchmark (or a comma-separated list)")
    parser.add_argument("--json", action="store_true", help="print only the JSON lines")
    parser.add_argument(
        "--results",
        default=os.path.join(HERE, "RESULTS.md"),
        help="where the full suite writes its table (default benchmarks/RESULTS.md)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    parser.add_argument("--compile-cache", metavar="DIR", default=None, help=CACHE_HELP)
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="compile every program afresh (cold compile times): use no compilation cache",
    )
    args = parser.parse_args(argv)
    command = "python -m benchmarks" + (" " + shlex.join(argv or sys.argv[1:])).rstrip()
    if args.only and "," not in args.only:
        cache = compile_cache(args.compile_cache, args.no_compile_cache)
        run_one(args.only, args.json, cache)
        return 0
    names = args.only.split(",") if args.only else list(ORDER)
    results = None if (args.no_results or args.only) else args.results
    flags = cache_flags(args.compile_cache, args.no_compile_cache)
    return run_all(names, args.json, results, command, flags)


if __name__ == "__main__":
    sys.exit(main())
