"""Write `benchmarks/RESULTS.md` from the records of a full run."""

import json


def _m(v) -> str:
    return "–" if v is None else f"{v / 1e6:.1f}"


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _find(records, name, **config):
    for rec in records:
        if rec.get("name") == name and all(rec["config"].get(k) == v for k, v in config.items()):
            return rec
    return None


def _targets(records) -> list[str]:
    rows = []
    grad50 = _find(records, "oja_grad", batch=50)
    naive = _find(records, "naive_baseline", impl="naive")
    lib1 = _find(records, "naive_baseline", impl="library")
    long = _find(records, "long_trajectory")
    slopes = {r["config"]["vary"]: r["slope"] for r in records if "slope" in r}
    ceil50 = _find(records, "ceiling", batch=50)

    def verdict(ok):
        return "–" if ok is None else ("met" if ok else "**not met**")

    if grad50:
        thr = grad50["synapse_steps_per_s"]
        note = ""
        if ceil50:
            note = f" ({thr / ceil50['synapse_steps_per_s']:.0%} of the elementwise ceiling)"
        rows.append(
            [
                "oja_grad, batch 50: ≥ 200 M synapse-steps/s",
                f"{_m(thr)} M/s{note}",
                verdict(thr >= 200e6),
            ]
        )
    if naive and lib1:
        ratio = lib1["speedup_vs_naive"]
        text = f"{ratio:.1f}× at batch 1"
        if grad50:
            text += (
                f"; {grad50['synapse_steps_per_s'] / naive['synapse_steps_per_s']:.1f}× in "
                "throughput (library at batch 50 vs naive at batch 1)"
            )
        rows.append(["oja_grad ≥ 8× the naive baseline (same run)", text, verdict(ratio >= 8)])
    if grad50 and "fit_compile_s" in grad50:
        c = grad50["fit_compile_s"]
        rows.append(
            [
                "compile of one fit step ≤ 3 s (Oja model)",
                f"{c:.2f} s: JAX's own timings of `fit`'s step (trace "
                f"{grad50['fit_trace_s']:.2f} + lowering {grad50['fit_lower_s']:.2f} + XLA "
                f"{grad50['fit_xla_compile_s']:.2f}); ahead-of-time compile of value_and_grad "
                f"alone {grad50['compile_s']:.2f} s",
                verdict(c <= 3.0),
            ]
        )
        rows.append(
            [
                "exactly one trace per fit",
                f"{grad50['fit_n_traces']} trace(s)",
                verdict(grad50["fit_n_traces"] == 1),
            ]
        )
    rows.append(
        [
            "fly_fit ≤ 10 s end to end",
            "not measured: the behavioural model is not on this branch yet (TODO)",
            "–",
        ]
    )
    if long:
        rows.append(
            [
                "long_trajectory peak RSS ≤ 2 GB",
                f"{long['peak_rss_mb']:.0f} MiB (XLA temporaries {long['xla_temp_mb']:.0f} MiB)",
                verdict(long["peak_rss_mb"] <= 2048),
            ]
        )
        rows.append(
            [
                "long_trajectory without checkpointing (estimate)",
                f"plain `jax.grad`: {long['estimate_autodiff_no_checkpoint_mb'] / 1024:.1f} GiB of "
                f"temporaries; reverse pass storing every step: "
                f"{long['estimate_store_every_step_mb'] / 1024:.1f} GiB",
                "–",
            ]
        )
    for vary, label in (("T", "T"), ("synapses", "the number of synapses")):
        if vary in slopes:
            rows.append(
                [
                    f"time linear in {label}",
                    f"log-log slope {slopes[vary]:.2f}",
                    verdict(0.8 <= slopes[vary] <= 1.2),
                ]
            )
    return _table(["target", "measured", ""], rows)


SECTIONS = {
    "ceiling": (
        "Elementwise ceiling (a scan that only updates W elementwise)",
        ["batch", "T", "step (s)", "M synapse-steps/s", "compile (s)", "peak RSS (MiB)"],
        lambda r: [
            _f(r["config"]["batch"]),
            _f(r["config"]["T"]),
            _f(r["step_s"], 4),
            _m(r["synapse_steps_per_s"]),
            _f(r["compile_s"]),
            _f(r["peak_rss_mb"], 5),
        ],
    ),
    "oja_forward": (
        "oja_forward: trajectory loss, forward only (100 → 1000 sigmoid, 27 terms, T = 50)",
        ["batch", "step (s)", "M synapse-steps/s", "compile (s)", "peak RSS (MiB)"],
        lambda r: [
            _f(r["config"]["batch"]),
            _f(r["step_s"], 4),
            _m(r["synapse_steps_per_s"]),
            _f(r["compile_s"]),
            _f(r["peak_rss_mb"], 5),
        ],
    ),
    "oja_grad": (
        "oja_grad: forward + backward with respect to θ (100 → 1000 sigmoid, 27 terms, T = 50)",
        [
            "batch",
            "step (s)",
            "M synapse-steps/s",
            "compile (s)",
            "fit: compile (s)",
            "fit: traces",
            "peak RSS (MiB)",
        ],
        lambda r: [
            _f(r["config"]["batch"]),
            _f(r["step_s"], 4),
            _m(r["synapse_steps_per_s"]),
            _f(r["compile_s"]),
            _f(r.get("fit_compile_s")),
            _f(r.get("fit_n_traces")),
            _f(r["peak_rss_mb"], 5),
        ],
    ),
    "naive_baseline": (
        "naive_baseline: the same gradient three ways, batch 1, same run",
        [
            "implementation",
            "step (s)",
            "M synapse-steps/s",
            "speed-up vs naive",
            "max rel. grad diff vs naive",
            "compile (s)",
            "peak RSS (MiB)",
        ],
        lambda r: [
            r["config"]["impl"],
            _f(r["step_s"], 4),
            _m(r["synapse_steps_per_s"]),
            _f(r["speedup_vs_naive"]),
            f"{r['grad_rel_diff_vs_naive']:.1e}",
            _f(r["compile_s"]),
            _f(r["peak_rss_mb"], 5),
        ],
    ),
    "scaling": (
        "scaling: gradient step time against T and the number of synapses (batch 1)",
        ["vary", "T", "n_out", "synapses", "step (s)", "M synapse-steps/s", "compile (s)"],
        lambda r: (
            [r["config"]["vary"], "–", "–", "–", "slope " + _f(r["slope"]), "–", "–"]
            if "slope" in r
            else [
                r["config"]["vary"],
                _f(r["config"]["T"]),
                _f(r["config"]["n_out"]),
                _f(r["config"]["n_in"] * r["config"]["n_out"]),
                _f(r["step_s"], 4),
                _m(r["synapse_steps_per_s"]),
                _f(r["compile_s"]),
            ]
        ),
    ),
    "long_trajectory": (
        "long_trajectory: gradient through T = 10,000 steps (batch 1, √T checkpoint segments)",
        [
            "step (s)",
            "M synapse-steps/s",
            "compile (s)",
            "peak RSS (MiB)",
            "XLA temporaries (MiB)",
            "store every step (MiB, est.)",
            "jax.grad, no checkpoint (MiB, est.)",
            "jax.grad, checkpoint=100 (MiB, est.)",
        ],
        lambda r: [
            _f(r["step_s"], 4),
            _m(r["synapse_steps_per_s"]),
            _f(r["compile_s"]),
            _f(r["peak_rss_mb"], 5),
            _f(r["xla_temp_mb"], 5),
            _f(r["estimate_store_every_step_mb"], 6),
            _f(r["estimate_autodiff_no_checkpoint_mb"], 6),
            _f(r["estimate_autodiff_checkpoint_100_mb"], 6),
        ],
    ),
    "devices": (
        "devices: a batched fit sharded over all visible devices vs one device",
        [
            "layout",
            "devices",
            "step (s)",
            "one device: step (s)",
            "compile (s)",
            "traces",
            "max |Δθ| vs one device",
        ],
        lambda r: [
            r["config"]["layout"],
            _f(r["n_devices"]),
            _f(r["step_s"], 4),
            _f(r["single_device_step_s"], 4),
            _f(r["compile_s"]),
            _f(r["n_traces"]),
            f"{r['max_coefficient_diff_vs_single_device']:.1e}",
        ],
    ),
}


def write_results(records, path, *, command: str, machine: dict, started) -> None:
    backend = records[0]["backend"] if records else "?"
    device = records[0]["device"] if records else "?"
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks`; every number below comes from the run described "
        "here (JSON lines of the same run: rerun with `--json`).",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        f"- machine: {machine.get('cpu')}, {machine.get('cores')} cores; {machine.get('platform')}",
        f"- backend: {backend} ({device}); jax {machine.get('jax')}, "
        f"python {machine.get('python')}",
        f"- load average (1 min) at start / end: {machine.get('load_avg_1min')} / "
        f"{machine.get('load_avg_1min_end')}; suite wall time {machine.get('suite_wall_s')} s",
        "",
        "The machine was shared with other jobs while this ran: a load average above the core "
        "count means this suite had only part of the CPUs, and every time below is inflated "
        "accordingly (the ratios measured within one run are the fairer comparison).",
        "",
        "## Targets (CPU, float32)",
        "",
        *_targets(records),
        "",
    ]
    for name, (title, headers, row) in SECTIONS.items():
        recs = [r for r in records if r.get("name") == name]
        if not recs:
            continue
        lines += [f"## {title}", "", *_table(headers, [row(r) for r in recs]), ""]
    lines += [
        "## GPU",
        "",
        *_table(
            ["benchmark", "result"],
            [[name, "not measured (no GPU lent to this task)"] for name in SECTIONS],
        ),
        "",
        "## Raw records",
        "",
        "<details><summary>JSON lines</summary>",
        "",
        "```json",
        *[json.dumps(r) for r in records],
        "```",
        "",
        "</details>",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))
