"""Sweep ground-truth reward-modulated rules: how well is each one recovered from choices?

For every ground-truth rule, the mushroom-body model (2 → 10 tanh plastic layer, fixed
readout) chooses in the two-odour operant task (3 blocks of 80 trials, baiting, `r = R − E[R]`)
and only its choices are recorded, exactly as in `examples/reward_rule.py`. The 81-term Taylor
rule (L1 1e-3, 12 Levenberg–Marquardt steps) and the MLP rule (16 steps) are fitted on the
training trajectories of each seed, several seeds vmapped, and scored on held-out ones: R² of
the weight trajectories and of the plastic layer's activity (fitted vs true rule, both
teacher-forced on the held-out behaviour), and the percent deviance explained by the fitted
and by the true rule.

The rules: five named ones (`x*r`, `x*r^2 - 0.05*y`, `x*r - 0.05*w`,
`x*r^2 - 0.05*x*w*r`, `x*y*w*r - 0.05*r`) and the grid `x^a*y^b*w^c*r` (a, b, c in 0..2),
each once as is and once with the weight-decay term `- 0.05*w` (`--decay-term`), duplicates
removed: 57 rules. Every rule uses the same key, so the same encoding, initial weights and
random draws; only the rule differs.

Each finished (rule, family) pair is written at once as a row of `rule_sweep.csv` in the run
folder (from a pandas DataFrame: pip install -e ".[plot]" installs pandas); `--resume RUNFOLDER` skips the rows already there. A resume must repeat the
settings of the run (it stops with an error naming any flag that differs), but may select
other `--rules` and `--families`. Rules share one compiled fit: the
training data are padded (masked) to a few fixed sizes and JAX's persistent compilation
cache (on by default, in the user cache folder; `--compile-cache DIR` to choose another,
`--no-compile-cache` to turn it off) lets every rule after the first of a size reuse the compiled
program (the `xla_compiles` column counts the compilations each row needed).

    python examples/rule_sweep.py                        # all 57 rules, Taylor and MLP, 3 seeds
    python examples/rule_sweep.py --quick                # 2 rules, tiny data (a smoke test)
    python examples/rule_sweep.py --rules "x*r,x*y*r"    # a subset
    python examples/rule_sweep.py --resume out/rule_sweep-20261127-230000-ab12
    python examples/rule_sweep.py --resume out/rule_sweep-20261127-230000-ab12 --report-only

Rows are flagged `little-learning` (the true rule barely moves the weights or the choices:
R² of weights is then ill-posed), `saturating` (the true weights go deep into tanh's flat
range) and `hard` (median R² of weights < 0.85); see `examples/results/rule_sweep.md`.
"""

import csv
import math
import os
import time

import _cli


NAMED_RULES = (
    "x*r",
    "x*r^2 - 0.05*y",
    "x*r - 0.05*w",
    "x*r^2 - 0.05*x*w*r",
    "x*y*w*r - 0.05*r",
)
R2_HARD = 0.85  # rows below this R² of weights are flagged `hard`
DEVIANCE_LOW = 5.0  # true-rule % deviance below this: choices say little about the rule
WEIGHT_CHANGE_LOW = 0.05  # RMS change of the true weights below this: almost no learning
# RMS change above this: the true weights reach |w| ≳ 3, where tanh(0.75·w) > 0.97 saturates
# and choices no longer tell weight sizes apart.
WEIGHT_CHANGE_HIGH = 3.0
FAMILIES = ("taylor", "mlp")
# Flags a --resume may change besides --out and --no-progress: which rules and families to
# fit (rows are keyed by rule and family, and each row is the same whatever else is
# selected), --quick (its settings are compared one by one) and --report-only (and, as in
# every script, where compiled programs are cached: see _cli.RESUME_MAY_DIFFER). Every other
# flag changes the rows and must be the recorded one.
RESUME_MAY_DIFFER = ("rules", "families", "quick", "report_only")

COLUMNS = (
    "rule",
    "family",
    "source",
    "status",
    "flags",
    "seeds",
    "r2_weights",
    "r2_weights_min",
    "r2_activity",
    "percent_deviance",
    "true_percent_deviance",
    "deviance_gap",
    "weight_change",
    "r2_weights_per_seed",
    "top_terms",
    "packed_length",
    "generate_seconds",
    "fit_seconds",
    "xla_compiles",
    "cache_hits",
)


def monomial(a, b, c, d=1):
    parts = [f if e == 1 else f"{f}^{e}" for f, e in (("x", a), ("y", b), ("w", c), ("r", d)) if e]
    return "*".join(parts) or "1"


def sweep_rules(decay=0.05, decay_term="w"):
    """The sweep's rule expressions, in order, as `(expression, source)` pairs, without
    duplicates (two expressions are the same rule when their canonical forms agree)."""
    from metaplastic.rules import from_expression

    candidates = [(e, "named") for e in NAMED_RULES]
    for with_decay in (False, True):
        for a in range(3):
            for b in range(3):
                for c in range(3):
                    e = monomial(a, b, c)
                    if with_decay:
                        e = f"{e} - {decay:g}*{decay_term}"
                    candidates.append((e, "grid+decay" if with_decay else "grid"))
    seen, rules = set(), []
    for expression, source in candidates:
        canonical = from_expression(expression).to_expression()
        if canonical in seen:
            continue
        seen.add(canonical)
        rules.append((expression, source))
    return rules


def rule_expression(text):
    """An item of --rules: a rule expression, checked to parse and kept as typed."""
    from metaplastic.rules import from_expression

    from_expression(text)
    return text


def parse_args(argv=None):
    p = _cli.parser(
        __doc__,
        resume="a run folder to complete: the rows already in its CSV are kept",
        quick="2 rules, 2 seeds, tiny data",
    )
    p.add_argument(
        "--rules",
        type=_cli.list_of(rule_expression),
        default=None,
        help='comma-separated expressions, e.g. "x*r,x*y*r" (default: all)',
    )
    p.add_argument(
        "--families",
        type=_cli.list_of(str, choices=FAMILIES),
        default=FAMILIES,
        help="comma-separated rule families (default: taylor,mlp)",
    )
    _cli.recovery_options(p, seeds=3)
    p.add_argument("--taylor-steps", type=_cli.positive_int, default=12)
    p.add_argument("--mlp-steps", type=_cli.positive_int, default=16)
    p.add_argument(
        "--l1", type=_cli.non_negative_float, default=1e-3, help="L1 penalty on Taylor coefficients"
    )
    p.add_argument("--decay", type=float, default=0.05, help="rate of the grid's decay term")
    p.add_argument("--decay-term", default="w", help="the grid's decay monomial")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="with --resume: write the table from the rows already there, fit nothing",
    )
    return p.parse_args(argv)


def _bucket(n):
    """Round a packed length up to one of a few sizes (2^k · {1, 1.25, 1.5, 1.75}), so that
    rules whose behaviour differs slightly in length share one compiled fit."""
    base = 2 ** max(6, math.floor(math.log2(max(n, 1))))
    for f in (1.0, 1.25, 1.5, 1.75, 2.0):
        if n <= int(base * f):
            return int(base * f)
    raise AssertionError("unreachable")


def pad_recovery_data(data, max_presentations):
    """Pad the packed training data to a bucketed length and the held-out data to the task's
    presentation cap; padding is masked, so no loss or score changes."""
    import equinox as eqx
    import jax.numpy as jnp

    def pad(a, axis, size, value=0):
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, size - a.shape[axis])
        return jnp.pad(a, widths, constant_values=value)

    tr = data.train
    n = _bucket(tr.choices.shape[-1])
    tr = eqx.tree_at(
        lambda t: (t.inputs, t.choices, t.presentation_mask, t.trial_index),
        tr,
        (
            pad(tr.inputs, -2, n),
            pad(tr.choices, -1, n),
            pad(tr.presentation_mask, -1, n, False),
            pad(tr.trial_index, -1, n),
        ),
    )
    te, p = data.test, max_presentations
    te = eqx.tree_at(
        lambda t: (t.odours, t.choices, t.presentation_mask, t.inputs),
        te,
        (
            pad(te.odours, -1, p),
            pad(te.choices, -1, p),
            pad(te.presentation_mask, -1, p, False),
            pad(te.inputs, -2, p),
        ),
    )
    return eqx.tree_at(lambda d: (d.train, d.test), data, (tr, te))


class CompileCounter:
    """Counts XLA compilations and persistent-cache hits through `jax.monitoring`."""

    def __init__(self):
        import jax

        self.requests = self.hits = 0
        jax.monitoring.register_event_listener(self._event)

    def _event(self, event, **kwargs):
        if event == "/jax/compilation_cache/compile_requests_use_cache":
            self.requests += 1
        elif event == "/jax/compilation_cache/cache_hits":
            self.hits += 1

    def snapshot(self):
        return self.requests, self.hits


def weight_change(teacher, test):
    """RMS over held-out trajectories, trials and synapses of `W_t − W_0` under the true
    rule (teacher-forced): how much the true rule moves the weights at all."""
    import jax
    import jax.numpy as jnp

    import metaplastic as mp

    flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), test)
    rep = mp.behaviour.replay(teacher, flat)
    delta = rep.weights - teacher.initial_weights
    mask = flat.trial_mask[:, :, None, None]
    count = jnp.maximum(jnp.sum(mask) * delta.shape[-1] * delta.shape[-2], 1)
    return float(jnp.sqrt(jnp.sum(jnp.where(mask, delta**2, 0.0)) / count))


def flags_for(row):
    """`little-learning` (the true rule barely moves the weights or the choices),
    `saturating` (it moves them into tanh's flat range), `hard` (R² of weights < 0.85)."""
    if row["status"] != "ok":
        return "failed"
    flags = []
    change, deviance = float(row["weight_change"]), float(row["true_percent_deviance"])
    if deviance < DEVIANCE_LOW or change < WEIGHT_CHANGE_LOW:
        flags.append("little-learning")
    if change > WEIGHT_CHANGE_HIGH:
        flags.append("saturating")
    if float(row["r2_weights"]) < R2_HARD:
        flags.append("hard")
    return ";".join(flags)


def _read_rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(value, digits=3):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "nan" if not math.isfinite(v) else f"{v:.{digits}f}"


def markdown_table(rows, families):
    """One line per rule: the median over seeds of each score, per family; flagged cells in
    bold with their flags."""
    by_rule = {}
    for r in rows:
        by_rule.setdefault(r["rule"], {})[r["family"]] = r
    head = ["rule", "true % dev", "weight change"]
    for fam in families:
        head += [f"{fam} R² w", f"{fam} R² act", f"{fam} % dev", f"{fam} flags"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rule, fams in by_rule.items():
        first = next(iter(fams.values()))
        cells = [f"`{rule}`", _fmt(first["true_percent_deviance"], 1), _fmt(first["weight_change"])]
        for fam in families:
            r = fams.get(fam)
            if r is None:
                cells += ["", "", "", "not run"]
                continue
            if r["status"] != "ok":
                cells += ["", "", "", f"failed: {r['status']}"]
                continue
            r2w = _fmt(r["r2_weights"])
            if "hard" in r["flags"]:
                r2w = f"**{r2w}**"
            cells += [r2w, _fmt(r["r2_activity"]), _fmt(r["percent_deviance"], 1), r["flags"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    _cli.needs_pandas("rule_sweep.py")
    start = time.perf_counter()
    _cli.compile_cache(args)
    if args.quick:
        args.seeds, args.n_train, args.n_test, args.trials_per_block = 2, 3, 2, 10
        args.taylor_steps, args.mlp_steps = 2, 2
        if args.rules is None:
            args.rules = NAMED_RULES[:2]
    import jax.random as jr
    import numpy as np
    import pandas as pd

    import metaplastic as mp

    all_rules = sweep_rules(args.decay, args.decay_term)
    if args.rules:
        known = {mp.rules.from_expression(e).to_expression(): (e, s) for e, s in all_rules}
        rules = []
        for e in args.rules:
            canonical = mp.rules.from_expression(e).to_expression()
            rules.append(known.get(canonical, (e, "extra")))
    else:
        rules = all_rules
    families = [f for f in FAMILIES if f in args.families]
    run = _cli.open_run(args, "rule_sweep", may_differ=RESUME_MAY_DIFFER)
    csv_path = str(run.file("rule_sweep.csv"))
    rows = _read_rows(csv_path)
    done = {(r["rule"], r["family"]) for r in rows if r["status"] == "ok"}
    rows = [r for r in rows if (r["rule"], r["family"]) in done]  # retry failed rows
    counter = CompileCounter()
    task = mp.behaviour.OperantTask(block_lengths=args.trials_per_block)
    k_data, k_fit = jr.split(jr.key(args.seed))
    steps = {"taylor": args.taylor_steps, "mlp": args.mlp_steps}

    todo = [(e, s) for e, s in rules if any((e, f) not in done for f in families)]
    if args.report_only:
        todo = []
    for expression, source in mp.runs.track(todo, desc="rules", progress=not args.no_progress):
        truth = mp.rules.from_expression(expression)
        t0 = time.perf_counter()
        # The setting of examples/results/rule_sweep.md: variance 0.005, one fresh draw of
        # the input noise, padded to the cap (the sweep predates the marginal likelihood).
        data = mp.behaviour.recovery_data(
            truth,
            seeds=args.seeds,
            n_train=args.n_train,
            n_test=args.n_test,
            task=task,
            input_variance=0.005,
            draws=None,
            key=k_data,
        )
        packed_length = int(data.train.choices.shape[-1])
        data = pad_recovery_data(data, task.max_presentations)
        change = weight_change(data.teacher, data.test)
        generate_seconds = time.perf_counter() - t0
        for family in families:
            if (expression, family) in done:
                continue
            before = counter.snapshot()
            t1 = time.perf_counter()
            row = {
                "rule": expression,
                "family": family,
                "source": source,
                "seeds": args.seeds,
                "weight_change": change,
                "packed_length": packed_length,
                "generate_seconds": round(generate_seconds, 2),
            }
            try:
                res = mp.behaviour.recover_rule(
                    data=data,
                    rule=family,
                    steps=steps[family],
                    l1=args.l1,
                    key=jr.fold_in(k_fit, families.index(family)),
                )
            except mp.MetaplasticError as err:
                row.update(status=str(err).replace("\n", " ")[:120])
            else:
                s = res.scores
                row.update(
                    status="ok",
                    r2_weights=float(np.median(s["r2_weights"])),
                    r2_weights_min=float(np.min(s["r2_weights"])),
                    r2_activity=float(np.median(s["r2_activity"])),
                    percent_deviance=float(np.median(s["percent_deviance"])),
                    true_percent_deviance=float(np.median(s["true_percent_deviance"])),
                    r2_weights_per_seed=" ".join(f"{v:.3f}" for v in s["r2_weights"]),
                )
                row["deviance_gap"] = row["percent_deviance"] - row["true_percent_deviance"]
                if family == "taylor":
                    median = mp.TaylorRule(
                        np.median(np.asarray(res.fitted.rule.coefficients), axis=0), truth.factors
                    )
                    row["top_terms"] = " ".join(f"{t}:{v:+.3f}" for t, v in median.top_terms(3))
            after = counter.snapshot()
            row.update(
                fit_seconds=round(time.perf_counter() - t1, 2),
                xla_compiles=after[0] - before[0] - (after[1] - before[1]),
                cache_hits=after[1] - before[1],
            )
            row["flags"] = flags_for(row)
            rows.append(row)
            # After every row, so that an interrupted sweep can --resume.
            run.write_csv("rule_sweep.csv", pd.DataFrame(rows, columns=COLUMNS))

    for r in rows:  # the flags of rows read back from an earlier run, by the current rules
        r["flags"] = flags_for(r)
    if rows:
        # Every row, also those of rules not selected this time.
        run.write_csv("rule_sweep.csv", pd.DataFrame(rows, columns=COLUMNS))
    # Report the selected rules and families, in the sweep's order.
    order = {e: i for i, (e, _) in enumerate(rules)}
    rows = sorted(
        (r for r in rows if r["rule"] in order and r["family"] in families),
        key=lambda r: (order[r["rule"]], families.index(r["family"])),
    )
    table = markdown_table(rows, families)
    run.write_text("rule_sweep.md", table)

    def f(r, k):
        return float(r[k]) if r.get(k) not in (None, "") else float("nan")

    summary = {"rules": len(rules), "rows": len(rows), "run": str(run.path), "csv": csv_path}
    summary["rules_done"] = len({r["rule"] for r in rows})
    for fam in families:
        ok = [r for r in rows if r["family"] == fam and r["status"] == "ok"]
        learning = [f(r, "r2_weights") for r in ok if "little-learning" not in r["flags"]]
        summary[fam] = {
            "rows": len(ok),
            "median_r2_weights": float(np.median([f(r, "r2_weights") for r in ok])) if ok else None,
            "median_r2_activity": float(np.median([f(r, "r2_activity") for r in ok]))
            if ok
            else None,
            "median_r2_weights_learning_rules": float(np.median(learning)) if learning else None,
            "hard": sum("hard" in r["flags"] for r in ok),
            "little_learning": sum("little-learning" in r["flags"] for r in ok),
            "saturating": sum("saturating" in r["flags"] for r in ok),
            "failed": sum(r["status"] != "ok" for r in rows if r["family"] == fam),
        }
    summary["seconds"] = round(time.perf_counter() - start, 1)
    run.finish(summary)
    print(table)
    _cli.print_json(summary)
    return summary


if __name__ == "__main__":
    main()
