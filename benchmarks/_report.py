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


def _steps(rec) -> int:
    """The solver steps of a fly_fit record (`iterations` in records written before the
    fitting layer counted steps)."""
    config = rec["config"]
    return config["steps"] if "steps" in config else config["iterations"]


def _find(records, name, **config):
    for rec in records:
        if rec.get("name") == name and all(rec["config"].get(k) == v for k, v in config.items()):
            return rec
    return None


def _targets(records) -> list[str]:
    rows = []
    grad50 = _find(records, "oja_grad", batch=50)
    lib50 = _find(records, "naive_baseline", impl="library", batch=50)
    lib1 = _find(records, "naive_baseline", impl="library", batch=1)
    paper = _find(records, "paper_protocol")
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
                "oja_grad, batch 50: ≥ 300 M synapse-steps/s",
                f"{_m(thr)} M/s{note}",
                verdict(thr >= 300e6),
            ]
        )
    if lib50:
        ratio = lib50["speedup_vs_straightforward"]
        text = f"{ratio:.1f}× at batch 50"
        if lib1:
            text += f", {lib1['speedup_vs_straightforward']:.1f}× at batch 1"
        text += " (against the fastest straightforward `jax.grad` implementation of the run)"
        rows.append(["oja_grad against the straightforward baseline (context)", text, "–"])
    forward50 = _find(records, "oja_forward", batch=50)
    if grad50 and forward50:
        share = grad50["synapse_steps_per_s"] / forward50["synapse_steps_per_s"]
        rows.append(
            [
                "oja_grad ≥ 25 % of the forward pass's throughput (batch 50, same run)",
                f"{share:.1%} ({_m(grad50['synapse_steps_per_s'])} against "
                f"{_m(forward50['synapse_steps_per_s'])} M synapse-steps/s)",
                verdict(share >= 0.25),
            ]
        )
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
    for fly in (r for r in records if r.get("name") == "fly_fit"):
        if fly["config"].get("jacobian_chunks", "auto") != "auto":
            continue  # a comparison row, not the library's default
        seeds = fly["config"]["seeds"]
        rows.append(
            [
                f"fly_fit ≤ {3 if seeds == 1 else 5} s end to end, cold "
                f"({seeds} seed{'s' if seeds > 1 else ''})",
                f"{fly['end_to_end_s']:.1f} s (generate {fly['generate_s']:.1f}, fit "
                f"{fly['fit_s']:.1f}, score {fly['evaluate_s']:.1f}); whole process with "
                f"imports {fly['process_s']:.1f} s",
                verdict(fly["end_to_end_s"] <= (3.0 if seeds == 1 else 5.0)),
            ]
        )
        parts = fly["fit_compile_parts_s"]
        rows.append(
            [
                f"compile of one fit step ≤ 3 s (fly model, {seeds} seed{'s' if seeds > 1 else ''})",
                f"{fly['compile_s']:.2f} s (trace {parts['trace']:.2f} + lowering "
                f"{parts['lower']:.2f} + XLA {parts['xla']:.2f}); the Levenberg–Marquardt fit "
                f"runs one compiled step program {_steps(fly)} times, {fly['n_traces']} trace",
                verdict(fly["compile_s"] <= 3.0),
            ]
        )
    if paper:
        rows.append(
            [
                "paper_protocol ≤ 8 s end to end (cold)",
                f"{paper['end_to_end_s']:.1f} s (generate {paper['generate_s']:.1f}, fit "
                f"{paper['fit_s']:.1f} for {paper['config']['steps']} steps, score "
                f"{paper['evaluate_s']:.1f}); whole process with imports "
                f"{paper['process_s']:.1f} s",
                verdict(paper["end_to_end_s"] <= 8.0),
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


def _limits(records) -> list[str]:
    """Where the time goes, from this run's numbers."""
    ceil = _find(records, "ceiling", batch=50)
    fwd = _find(records, "oja_forward", batch=50)
    grad = _find(records, "oja_grad", batch=50)
    long = _find(records, "long_trajectory")
    auto = _find(records, "naive_baseline", impl="library_autodiff", batch=1)
    lib = _find(records, "naive_baseline", impl="library", batch=1)
    if not (ceil and fwd and grad):
        return []
    c, f, g = (r["synapse_steps_per_s"] for r in (ceil, fwd, grad))
    lines = [
        "## Where XLA on CPU is the limit",
        "",
        f"- One read and one write of the weights per step (the `ceiling` rows) reach "
        f"{c / 1e6:.0f} M synapse-steps/s at batch 50 in this run: memory traffic and XLA's "
        "per-kernel overhead, not arithmetic, bound a plastic layer on this CPU.",
        f"- The forward pass of the 27-term rule runs at {f / 1e6:.0f} M/s ({f / c:.0%} of that "
        "ceiling): per step a matrix-vector product, the rule in about 12 multiply-adds per "
        "synapse (Horner's scheme in w, then in y, on θ contracted with the powers of x), and "
        "the update.",
        f"- The gradient runs at {g / 1e6:.0f} M/s ({g / c:.0%} of the ceiling, "
        f"{g / f:.2f}× the forward pass). Per step it makes about 18 passes over a weight-sized "
        "array against the ceiling's 2: the forward step and the store of W; in the reverse "
        "pass the fetch of the stored W into the loop carry (XLA adds two loop-carry copies), "
        "the powers Λ, Λ⊙W, Λ⊙W² and their product with the powers of x (the only contraction "
        "the θ-gradient and the adjoint of y need), and the elementwise adjoint update. Each "
        "of these is a separate XLA kernel (~15 per step), split over both threads; the "
        "per-kernel cost grows when other jobs hold the cores.",
        "- What XLA does not do on CPU, and what would close the rest of the gap, is fusing "
        "the whole reverse step into one pass over W and Λ; it also duplicates cheap "
        "per-neuron computations into every synapse of a fused loop and loses vectorisation "
        "when a fused loop slices a stacked array, which is why the per-step inputs of the "
        "weight-sized loops come out of matrix products and the stored W is fetched into the "
        "loop carry (see `metaplastic/_fast.py`).",
    ]
    if auto and lib:
        lines.append(
            f"- Plain `jax.grad` through the same factorised simulation runs at "
            f"{auto['synapse_steps_per_s'] / 1e6:.1f} M/s at batch 1; the hand-written reverse "
            f"pass is {auto['step_s'] / lib['step_s']:.1f}× faster in the same run."
        )
    fly = _find(records, "fly_fit", seeds=1)
    five = _find(records, "fly_fit", seeds=5, jacobian_chunks="auto")
    whole = _find(records, "fly_fit", seeds=5, jacobian_chunks=1)
    if fly:
        parts = fly["fit_compile_parts_s"]
        steps = _steps(fly)
        other = fly.get("fit_compile_other_s", 0.0)  # absent in one-program records
        compile_total = fly["generate_compile_s"] + fly["compile_s"] + other
        rest = f"; {other:.1f} s more in the rest of the fit phase" if other else ""
        lines.append(
            f"- The fly fit (one seed) spends {compile_total:.1f} of its {fly['end_to_end_s']:.1f} s "
            f"compiling: {fly['generate_compile_s']:.1f} s for the closed-loop generation and "
            f"{fly['compile_s']:.1f} s for the Levenberg–Marquardt step program (XLA alone "
            f"{parts['xla']:.1f} s{rest}), against {steps * fly['step_s']:.1f} s for its "
            f"{steps} steps. "
            "The step program holds the trial scan of the sensitivity Jacobian and the replay "
            "of the damping candidates; lowering XLA's optimisation level cuts its compile time "
            "by about 2.5× but makes every step about 3× slower (measured when the whole fit was "
            "one compiled scan), so it is not used."
        )
    if five and whole:
        lines.append(
            f"- With 5 seeds the Levenberg–Marquardt step takes {five['step_s']:.2f} s "
            "with the solver's default on a CPU (the Jacobian of a seed's 18 trajectories taken "
            f"in groups of 3) against {whole['step_s']:.2f} s with all 18 at once "
            f"(`chunks=1`; {whole['end_to_end_s']:.1f} s end to end against "
            f"{five['end_to_end_s']:.1f} s, peak RSS {whole['peak_rss_mb']:.0f} against "
            f"{five['peak_rss_mb']:.0f} MiB): the step is bound by memory traffic once a "
            "group's sensitivities outgrow the cache."
        )
    paper = _find(records, "paper_protocol")
    single = next(
        (
            r
            for r in records
            if r.get("name") == "paper_protocol" and r["config"].get("steps_per_call") == 1
        ),
        None,
    )
    if paper:
        steps = paper["config"]["steps"]
        compile_total = (
            paper["generate_compile_s"]
            + paper["compile_s"]
            + paper["fit_compile_other_s"]
            + paper["evaluate_compile_s"]
        )
        lines.append(
            f"- The paper's protocol spends {compile_total:.1f} of its "
            f"{paper['end_to_end_s']:.1f} s compiling (generation "
            f"{paper['generate_compile_s']:.1f}, the Adam step program {paper['compile_s']:.1f}, "
            f"the rest of the fit phase {paper['fit_compile_other_s']:.1f}, scoring "
            f"{paper['evaluate_compile_s']:.1f}) and about {steps * paper['step_s']:.1f} s "
            f"in its {steps} steps of one trajectory each ({paper['step_s'] * 1e3:.2f} ms "
            f"per step with {paper['config'].get('steps_per_call', 1)} steps per call of the "
            "compiled fit program; the compiled gradient of one trajectory, called on its own from "
            f"the host, takes {paper['gradient_only_s'] * 1e3:.2f} ms a call, dispatch "
            "included)."
        )
        if single is not None and single is not paper:
            lines.append(
                f"- One step per call instead: {single['step_s'] * 1e3:.2f} ms per step, "
                f"{single['end_to_end_s']:.1f} s end to end (same run; "
                f"{single['step_s'] / paper['step_s']:.2f}× the time per step)."
            )
        budget = (8.0 - compile_total) / steps
        lines.append(
            f"- For 8 s end to end with this much compiling, a step would have to take "
            f"{budget * 1e3:.2f} ms, {paper['step_s'] / budget:.1f}× less than now: the "
            "steps are now the gradient through the 240-trial replay and little else, so "
            "the gap is the gradient's (and the compile time's)."
        )
    if long:
        per_step = long["estimate_autodiff_no_checkpoint_mb"] / long["config"]["T"]
        lines.append(
            f"- Memory: `jax.grad` without checkpointing keeps {per_step:.2f} MiB per step "
            f"({per_step / long['weight_matrix_mb']:.1f} weight matrices); the reverse pass "
            "keeps one matrix per step (or per segment) of one trajectory at a time."
        )
    return lines + [""]


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
        "naive_baseline: the library's gradient against the same gradient written without "
        "it (`jax.grad` through `lax.scan`), batch 50 and 1, same run",
        [
            "batch",
            "implementation",
            "chunk",
            "step (s)",
            "M synapse-steps/s",
            "speed-up vs straightforward",
            "max rel. grad diff",
            "compile (s)",
            "peak RSS (MiB)",
        ],
        lambda r: [
            _f(r["config"]["batch"]),
            r["config"]["impl"] + (" (reference)" if r.get("reference") else ""),
            _f(r["config"].get("chunk")),
            _f(r["step_s"], 4),
            _m(r["synapse_steps_per_s"]),
            _f(r["speedup_vs_straightforward"]),
            f"{r['grad_rel_diff_vs_straightforward']:.1e}",
            _f(r["compile_s"]),
            _f(r["peak_rss_mb"], 5),
        ],
    ),
    "zoo": (
        "zoo: the model zoo's generic path (`RecordingLoss` on `Model(PlasticDense, "
        "GaussianHead())`) against the single-layer one (`ActivityMSE`), same layer and data, "
        "batch 50, same run; and the gradient of a 300-unit recurrent network",
        [
            "what",
            "implementation",
            "step (s)",
            "M synapse-steps/s",
            "time vs single layer",
            "loss rel. diff",
            "Automatic's choice",
            "compile (s)",
        ],
        lambda r: [
            r["config"]["what"],
            r["config"]["impl"],
            _f(r["step_s"], 4),
            _m(r["synapse_steps_per_s"]),
            _f(r.get("time_vs_single_layer")),
            "–"
            if r.get("loss_rel_diff_vs_single_layer") is None
            else f"{r['loss_rel_diff_vs_single_layer']:.1e}",
            {True: "yes", False: "no"}.get(r.get("automatic_picks"), "–"),
            _f(r["compile_s"]),
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
    "fly_fit": (
        "fly_fit: the reward_rule.py Taylor protocol end to end (fresh process each)",
        [
            "seeds",
            "end to end (s)",
            "process (s)",
            "generate (s)",
            "of which compile (s)",
            "fit (s)",
            "fit compile (s)",
            "LM step (s)",
            "score (s)",
            "peak RSS (MiB)",
            "R² weights",
            "% deviance (fit / true)",
        ],
        lambda r: [
            _f(r["config"]["seeds"])
            + (
                ""
                if r["config"].get("jacobian_chunks", "auto") == "auto"
                else f" (chunks={r['config']['jacobian_chunks']})"
            ),
            _f(r["end_to_end_s"]),
            _f(r["process_s"]),
            _f(r["generate_s"]),
            _f(r["generate_compile_s"]),
            _f(r["fit_s"]),
            _f(r["compile_s"]),
            _f(r["step_s"]),
            _f(r["evaluate_s"]),
            _f(r["peak_rss_mb"], 5),
            _f(r["median_r2_weights"]),
            f"{r['median_percent_deviance']:.2f} / {r['median_true_percent_deviance']:.2f}",
        ],
    ),
    "paper_protocol": (
        "paper_protocol: the NeurIPS 2024 fly experiment as its authors run it (350 Adam "
        "epochs, one trajectory per step; fresh process, cold compile)",
        [
            "end to end (s)",
            "process (s)",
            "generate (s)",
            "of which compile (s)",
            "fit (s)",
            "fit compile (s)",
            "steps",
            "steps per call",
            "step (s)",
            "gradient alone (s)",
            "score (s)",
            "R² weights",
            "% deviance (fit / true)",
        ],
        lambda r: [
            _f(r["end_to_end_s"]),
            _f(r["process_s"]),
            _f(r["generate_s"]),
            _f(r["generate_compile_s"]),
            _f(r["fit_s"]),
            _f(r["compile_s"] + r["fit_compile_other_s"]),
            _f(r["config"]["steps"]),
            _f(r["config"].get("steps_per_call", 1)),
            _f(r["step_s"]),
            _f(r["gradient_only_s"]),
            _f(r["evaluate_s"]),
            _f(r["median_r2_weights"]),
            f"{r['median_percent_deviance']:.2f} / {r['median_true_percent_deviance']:.2f}",
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
            "max abs Δθ vs one device",
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


def _gpu_summary(records) -> list[str]:
    """One row per GPU configuration: step time, throughput or end-to-end time, compile."""
    rows = []
    for r in records:
        config = r["config"]
        shown = ", ".join(
            f"{k} {v}"
            for k, v in config.items()
            if k in ("batch", "T", "impl", "chunk", "vary", "layout", "seeds", "n_out")
        )
        if "slope" in r:
            rows.append([r["name"], shown, "–", f"slope {r['slope']:.2f}", "–"])
            continue
        if "end_to_end_s" in r:
            result = f"{r['end_to_end_s']:.1f} s end to end"
        else:
            result = f"{_m(r.get('synapse_steps_per_s'))} M synapse-steps/s"
        rows.append([r["name"], shown, _f(r["step_s"], 4), result, _f(r["compile_s"])])
    device = records[0].get("device", "?")
    return [
        f"Headline rows of the run on one {device} (the full tables, the machine and the "
        "command are in [RESULTS_GPU.md](RESULTS_GPU.md)):",
        "",
        *_table(["benchmark", "configuration", "step (s)", "result", "compile (s)"], rows),
        "",
    ]


SHARED_NOTE = (
    "A load average above the core count means other jobs shared the machine while this ran, "
    "so that this suite had only part of the CPUs, and every time below is inflated "
    "accordingly (the ratios measured within one run are the fairer comparison)."
)


def write_results(
    records,
    path,
    *,
    command: str,
    machine: dict,
    started,
    note: str = SHARED_NOTE,
    gpu_records: list | None = None,
) -> None:
    """Write the tables of `records` to `path`; `gpu_records`, the records of a run of the
    suite on a GPU (`RESULTS_GPU.md`), are summarised in its GPU section."""
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
    ]
    if machine.get("load_avg_1min") is not None:
        lines.append(
            f"- load average (1 min) at start / end: {machine.get('load_avg_1min')} / "
            f"{machine.get('load_avg_1min_end')}; suite wall time {machine.get('suite_wall_s')} s"
        )
    if machine.get("compile_cache"):
        lines.append(
            f"- JAX persistent compilation cache: {machine['compile_cache']} (with it on, "
            "`compile_s` of a program compiled by an earlier run is the time to load it)"
        )
    loads = [machine.get(k) for k in ("load_avg_1min", "load_avg_1min_end")]
    cores = machine.get("cores")
    if note == SHARED_NOTE and cores and all(v is not None for v in loads):
        if max(loads) <= cores:
            note = (
                f"The load average stayed at or below the {cores} cores: nothing else of "
                "note ran while this suite did."
            )
    lines += [
        "",
        note,
        "",
        f"## Targets ({backend.upper()}, float32; the targets are set for a 2-core CPU)",
        "",
        *_targets(records),
        "",
    ]
    for name, (title, headers, row) in SECTIONS.items():
        recs = [r for r in records if r.get("name") == name]
        if not recs:
            continue
        lines += [f"## {title}", "", *_table(headers, [row(r) for r in recs]), ""]
    if backend == "cpu":
        lines += _limits(records)
    if backend == "cpu":
        lines += [
            "## GPU",
            "",
            *(_gpu_summary(gpu_records) if gpu_records else ["Not measured.", ""]),
        ]
    lines += [
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
