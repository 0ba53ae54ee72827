"""Run one experiment of arXiv 2309.02214 (see docs/asymmetry.md): every setting, several
seeds each (``[train] seeds``, trained together), then plots and a markdown table.

    python experiments/run.py finite-nudge|asymmetry|homeostasis
        [--epochs N] [--seeds K] [--max-batches M] [--out DIR] [--data fashion-mnist|digits]
        [--only NAME,NAME,...]
    python experiments/run.py shipped-hep [--epochs N] [--seeds K]
    python experiments/run.py directed|pruning [--epochs N] [--seeds K] [--only ...]
    python experiments/run.py EXPERIMENT --shard I/N     # part I of N (a SLURM array task)
    python experiments/run.py EXPERIMENT --assemble      # the table from every part's runs

- finite-nudge: tied MLP, hEP with N in {1, 2, 4, 6} x beta in {0.05, 0.5} (N = 1: one-sided EP).
- asymmetry:    untied MLP, initial angle 0, 15, ..., 90 degrees; exact-nudge and implicit.
- homeostasis:  MLP at 90 degrees with and without homeostasis (coef 1.0, AdamW 1e-4), the
                same MLP started symmetric (the reference for the gap), and the loop
                architecture with and without homeostasis (coef 0.1).
- shipped-hep:  the estimator setting configs/fmnist-mlp-hep.toml ships (issue 16, item 5):
                hEP N = 2 at beta 0.05 and hEP N = 4 at beta 0.5 against
                configs/fmnist-mlp-implicit.toml, 3 seeds each, the same seeds; the table
                names the cheapest hEP setting within 0.3 points of implicit on the mean.
- directed:     complete directed networks (issue 15, docs/directed.md): XOR with the DEEP
                dynamics and rule (10 seeds; each seed's free fixed points certified by
                ``eqprop stability``, 100 perturbations), the authors' asymmetric-EP baseline
                (a layered untied net, one-sided EP), XOR/AND/OR/NOT/identity with rate
                dynamics and hEP N = 4, XOR with contraction enforced, and digits (64
                hidden) with hEP, with the DEEP rule, and with 70% of its connections pruned.
- pruning:      configs/fmnist-mlp-hep-fast.toml dense against 80% magnitude pruning, same
                seed and epochs.

Runs go to ``DIR/<experiment>/<setting>/`` (default DIR: ``runs/experiments``); a setting
whose run completed is not run again (delete it to redo), an interrupted one is resumed.
``DIR/<experiment>/results.md`` holds the table (mean ± std over seeds of the final test
accuracy and of the last diagnostics), ``summary.png`` the headline plot and ``report/``
the per-epoch plots of ``eqprop report``. ``--data digits`` runs the same settings on the
8x8 digits (64 inputs), a quick version.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from eqprop.config import Config, load_config, load_run_config, with_updates
from eqprop.guards import warnings_as_lines
from eqprop.train import RunDir, train
from eqprop.train.report import report

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
SHIPPED = HERE.parent / "configs"  # the configs eqprop ships (a base named "shipped:NAME")
DIAG_COLUMNS = ("angle", "jacobian_symmetry", "alignment", "cos_finite_nudge", "cos_asymmetry",
                "homeo_loss", "probe_nonconverged", "sparsity", "contraction_bound", "spectral_radius")


def settings(experiment: str) -> list[tuple[str, str, dict[str, dict[str, Any]], dict[str, Any]]]:
    """``[(name, base config, section updates, labels for the summary plot)]``."""
    out = []
    if experiment == "finite-nudge":
        for beta in (0.05, 0.5):
            for n in (1, 2, 4, 6):
                est = {"name": "ep", "points": 1, "beta": beta} if n == 1 else \
                      {"name": "hep", "points": n, "beta": beta}
                out.append((f"N{n}-beta{beta}", "finite-nudge", {"estimator": est},
                            {"x": n, "line": f"beta = {beta}"}))
    elif experiment == "asymmetry":
        for est in ("exact-nudge", "implicit"):
            for angle in range(0, 91, 15):
                out.append((f"{est}-angle{angle}", "asymmetry",
                            {"estimator": {"name": est}, "model": {"asymmetry_angle": float(angle)}},
                            {"x": angle, "line": est}))
    elif experiment == "homeostasis":
        # the reference point for the 90-degree runs: the same network started symmetric
        out.append(("mlp-symmetric", "homeostasis-mlp",
                    {"model": {"asymmetry_angle": 0.0}, "homeostasis": {"coef": 0.0}},
                    {"x": "mlp", "line": "symmetric init, no homeostasis"}))
        # untied weights started symmetric drift apart as they learn: the tied network is
        # the one that stays symmetric (the reference of the gap)
        out.append(("mlp-tied", "homeostasis-mlp",
                    {"model": {"feedback": "tied", "asymmetry_angle": 0.0},
                     "homeostasis": {"coef": 0.0}},
                    {"x": "mlp", "line": "tied weights"}))
        for arch, coef in (("mlp", 1.0), ("loop", 0.1)):
            for on in (True, False):
                out.append((f"{arch}-{'homeo' if on else 'plain'}", f"homeostasis-{arch}",
                            {"homeostasis": {"coef": coef if on else 0.0}},
                            {"x": arch, "line": f"homeostasis coef {coef}" if on else "no homeostasis"}))
    elif experiment == "directed":
        out.append(("xor-deep", "shipped:xor-deep", {}, {"x": "xor", "line": "DEEP rule"}))
        out.append(("xor-asym-ep", "shipped:xor-directed-hep",
                    {"model": {"hidden": 5, "connectivity": "layered", "layers": [5]},
                     "estimator": {"name": "ep", "points": 1, "beta": 0.5},
                     "optim": {"lr": 0.05}, "train": {"epochs": 500}},
                    {"x": "xor", "line": "asymmetric EP (layered, one-sided)"}))
        for task in LOGIC_TASKS:
            full_batch = 2 if task in ("not", "identity") else 4  # the truth table's rows
            out.append((f"{task}-rate-hep", "shipped:xor-directed-hep",
                        {"data": {"name": task, "batch_size": full_batch}},
                        {"x": task, "line": "rate dynamics, hEP N = 4"}))
        out.append(("xor-rate-hep-contraction", "shipped:xor-directed-hep",
                    {"stability": {"enforce": "contraction", "every": 50}},
                    {"x": "xor", "line": "rate dynamics, hEP N = 4, contraction enforced"}))
        out.append(("digits-rate-hep", "shipped:digits-directed-hep", {},
                    {"x": "digits", "line": "rate dynamics, hEP N = 4"}))
        out.append(("digits-deep-rule", "shipped:digits-directed-hep",
                    {"estimator": {"name": "deep-rule", "beta": 1.0}},
                    {"x": "digits", "line": "DEEP rule"}))
        out.append(("digits-rate-hep-pruned70", "shipped:digits-directed-hep",
                    {"pruning": {"method": "magnitude", "sparsity": 0.7}},
                    {"x": "digits", "line": "rate dynamics, hEP N = 4, 70% pruned"}))
        for coef in (0.0, 1.0):  # untied at exactly 90 degrees, without and with homeostasis
            out.append((f"digits-rate-hep-untied90{'-homeo' if coef else ''}",
                        "shipped:digits-directed-hep",
                        {"model": {"asymmetry_angle": 90.0}, "homeostasis": {"coef": coef},
                         "diagnostics": {"enabled": True, "every": 5}},
                        {"x": "digits", "line": "rate dynamics, hEP N = 4, untied at 90 degrees"
                         + (", homeostasis 1.0" if coef else "")}))
    elif experiment == "pruning":
        # the shipped MLP in its fast mode (configs/fmnist-mlp-hep-fast.toml: the same network,
        # estimator and optimizer, relaxations that stop at convergence): 1/4 of the CPU time
        out.append(("fmnist-dense", "shipped:fmnist-mlp-hep-fast", {},
                    {"x": "dense", "line": "fmnist-mlp"}))
        out.append(("fmnist-magnitude80", "shipped:fmnist-mlp-hep-fast",
                    {"pruning": {"method": "magnitude", "sparsity": 0.8}},
                    {"x": "80% pruned", "line": "fmnist-mlp"}))
    elif experiment == "shipped-hep":
        # all three in the fast mode (configs/fmnist-mlp-hep-fast.toml: relaxations stop at
        # a residual of 1e-3, Anderson after 40 steps), so that 3 settings x 3 seeds x 50
        # epochs take about 1/3 of the time of the fixed 150 steps on 2 cores; the estimator
        # setting chosen is shipped in fmnist-mlp-hep.toml and -fast.toml alike
        seeds = {"train": {"seeds": 3}}
        # implicit first (the reference), with the shipped "auto" linear solver (the damped
        # iteration, GMRES where it fails: the fast mode's Anderson finds fixed points where
        # the damped iteration alone diverged, linear residual 5e11 in epoch 1)
        out.append(("implicit", "shipped:fmnist-mlp-implicit",
                    {**seeds, "dynamics": fast_dynamics()},
                    {"x": "implicit", "line": "fmnist-mlp"}))
        for n, beta in ((2, 0.05), (4, 0.5)):
            out.append((f"hep-N{n}-beta{beta}", "shipped:fmnist-mlp-hep-fast",
                        {"estimator": {"name": "hep", "points": n, "beta": beta}, **seeds},
                        {"x": f"hEP N={n}, beta={beta}", "line": "fmnist-mlp"}))
    else:
        raise SystemExit(f"unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
    return out


def fast_dynamics() -> dict[str, Any]:
    """The ``[dynamics]`` table of configs/fmnist-mlp-hep-fast.toml (the fast mode)."""
    import tomllib

    return tomllib.loads((SHIPPED / "fmnist-mlp-hep-fast.toml").read_text())["dynamics"]


EXPERIMENTS = ("finite-nudge", "asymmetry", "homeostasis", "shipped-hep", "directed", "pruning")


def make_config(base: str, updates: dict, args: argparse.Namespace) -> Config:
    folder, base = (SHIPPED, base.split(":", 1)[1]) if base.startswith("shipped:") else (CONFIGS, base)
    config = load_config(folder / f"{base}.toml")
    updates = {k: dict(v) for k, v in updates.items()}
    train_up = updates.setdefault("train", {})
    if args.epochs is not None:
        train_up["epochs"] = args.epochs
    if args.seeds is not None:
        train_up["seeds"] = args.seeds
    if args.max_batches is not None:
        train_up["max_batches"] = args.max_batches
    if args.data is not None and args.data != config.data.name:
        updates.setdefault("data", {})["name"] = args.data
        if config.model.kind == "layered":
            sizes = list(config.model.sizes)
            sizes[0] = 64 if args.data == "digits" else 784
            updates.setdefault("model", {})["sizes"] = sizes
    if args.data == "digits":
        # 1797 examples: a smaller diagnostics batch keeps the per-epoch diagnostics cheap
        updates.setdefault("diagnostics", {})["batch_size"] = 128
    return with_updates(config, **updates)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``, ``1 <= I <= N`` (argparse type: a bad value is one line)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be I/N with integers, got {text!r}") from None
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"must be I/N with 1 <= I <= N, got {text!r}")
    return i, n


def shard(chosen: list, i: int, n: int) -> list:
    """The ``i``-th of ``n`` disjoint parts of ``chosen`` (1-based): items ``i - 1``,
    ``i - 1 + n``, ...; the parts together are ``chosen``, each item in one part."""
    return chosen[i - 1::n]


def differs(run: RunDir, config: Config) -> bool:
    """Whether ``run``'s stored configuration is another than ``config`` (``[parallel]``
    aside: a run may resume under another layout)."""
    stored = load_run_config(run.config)
    return with_updates(stored, parallel=vars(config.parallel)) != config


def final_record(run: RunDir) -> dict[str, Any]:
    records = run.read_metrics()
    return records[-1] if records else {}


def last_value(run: RunDir, key: str) -> list[float] | None:
    """The last recorded per-seed values of ``key`` (diagnostics may skip epochs)."""
    for r in reversed(run.read_metrics()):
        if r.get(key) is not None:
            per = (r.get("per_seed") or {}).get(key)
            return list(per) if per is not None else [r[key]]
    return None


def fmt(values: list[float] | None, scale: float = 1.0, digits: int = 3) -> str:
    if not values:
        return "-"
    v = np.asarray(values, float) * scale
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument("--epochs", type=int, help="override train.epochs (default: the configs' 50)")
    p.add_argument("--seeds", type=int, help="override train.seeds (default: the configs' 5)")
    p.add_argument("--max-batches", type=int, help="cap on batches per epoch (smoke runs)")
    p.add_argument("--out", default="runs/experiments", help="output directory")
    p.add_argument("--data", default=None, choices=("fashion-mnist", "digits"),
                   help="run every setting on this data set (default: each config's own)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--only", help="comma-separated setting names to run (default: all); the "
                   "table then covers these")
    p.add_argument("--shard", type=parse_shard, metavar="I/N",
                   help="run only the I-th of N disjoint parts of the settings (1 <= I <= N; "
                   "settings I, I + N, I + 2N, ... in order): one part per SLURM array task or "
                   "host; the table covers every setting whose run has completed in --out")
    p.add_argument("--assemble", action="store_true",
                   help="train nothing: the table and plots from the completed runs in --out "
                   "(the run directories of every part, gathered in one place)")
    args = p.parse_args(argv)

    root = Path(args.out) / args.experiment
    rows = []
    chosen = settings(args.experiment)
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        names = [c[0] for c in chosen]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            p.error(f"--only: unknown setting(s) {', '.join(unknown)}; {args.experiment} has "
                    f"{', '.join(names)}")
        chosen = [c for c in chosen if c[0] in wanted]
    mine = {c[0] for c in (shard(chosen, *args.shard) if args.shard else chosen)}
    if args.assemble:
        mine = set()
    for name, base, updates, labels in chosen:
        config = make_config(base, updates, args)
        run = RunDir(root / name)
        if run.is_run() and differs(run, config):
            p.error(f"{run.path} holds a run of another configuration than setting {name!r} "
                    "has now (changed since it ran): move it away or choose another --out")
        summary = run.read_summary() if run.summary.exists() else None
        done = (summary and summary.get("status") == "completed"
                and summary.get("epochs") == config.train.epochs)
        if name not in mine:  # another part's setting: in the table once its run has completed
            if not done:
                print(f"[{name}] not completed in {root} (another part's), left out of the table",
                      flush=True)
                continue
        elif done:
            print(f"[{name}] already completed, skipping", flush=True)
        else:
            print(f"[{name}] training ({config.estimator.name}, {config.train.seeds} seeds, "
                  f"{config.train.epochs} epochs)", flush=True)
            # resume also restarts a run killed before its first checkpoint; estimate warnings
            # are one line each, as the CLI prints them
            with warnings_as_lines(f"[{name}] warning: "):
                train(config, run.path, resume=run.is_run(), progress=not args.quiet)
            summary = run.read_summary()
        rec = final_record(run)
        acc = (rec.get("per_seed") or {}).get("test_acc") or [rec.get("test_acc")]
        if args.experiment == "directed" and name == "xor-deep":
            labels = {**labels, "certified": certified_seeds(run, acc)}
        rows.append({"name": name, "labels": labels, "summary": summary, "acc": acc,
                     "diag": {k: last_value(run, k) for k in DIAG_COLUMNS},
                     "train_homeo_loss": last_value(run, "train_homeo_loss")})

    if not rows:
        print(f"no completed run of {args.experiment} in {root}: no table")
        return 0
    # table
    cols = [c for c in DIAG_COLUMNS if any(r["diag"][c] for r in rows)]
    data = args.data or "each configuration's own data"
    lines = [f"# {args.experiment} ({data})", "",
             "Mean ± standard deviation over seeds; test accuracy after the last epoch, "
             "diagnostics from the last epoch that recorded them (see eqprop.diagnostics).", "",
             "| " + " | ".join(["setting", "seeds", "epochs", "test acc (%)", *cols, "ms/batch"]) + " |",
             "|---" * (len(cols) + 5) + "|"]
    for r in rows:
        s = r["summary"] or {}
        ms = s.get("ms_per_batch")
        cells = [r["name"], s.get("seeds", "-"), s.get("epochs", "-"), fmt(r["acc"], 100, 2),
                 *(fmt(r["diag"][c], 1, 1 if c == "angle" else 3) for c in cols),
                 "-" if ms is None else f"{ms:.1f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")  # no empty cell without diagnostics
    if args.experiment == "homeostasis":
        lines += ["", *gap_closed(rows)]
    if args.experiment == "shipped-hep":
        lines += ["", *closest_to_implicit(rows)]
    if args.experiment == "directed":
        lines += ["", *solved_seeds(rows)]
    report_dir = report([root / r["name"] for r in rows], root / "report")
    lines += ["", "![summary](summary.png)", "",
              f"Per-epoch curves of every run: [report/report.md]({report_dir.relative_to(root)}).", ""]
    summary_plot(rows, root / "summary.png", args.experiment)
    (root / "results.md").write_text("\n".join(lines))
    (root / "results.json").write_text(json.dumps(
        [{"name": r["name"], "test_acc": r["acc"], **r["diag"]} for r in rows], indent=1))
    print("\n".join(lines))
    print(f"wrote {root / 'results.md'}")
    return 0


def gap_closed(rows) -> list[str]:
    """The headline of the homeostasis experiment: which fraction of the accuracy gap
    between the 90-degree MLP without homeostasis and the symmetric one homeostasis closes."""
    acc = {r["name"]: float(np.mean(r["acc"])) for r in rows if r["acc"] and r["acc"][0] is not None}
    lines = []
    for ref in ("mlp-tied", "mlp-symmetric"):
        if not {ref, "mlp-plain", "mlp-homeo"} <= acc.keys():
            continue
        gap = acc[ref] - acc["mlp-plain"]
        gain = acc["mlp-homeo"] - acc["mlp-plain"]
        frac = f"{100 * gain / gap:.0f}% of the gap" if gap > 0 else "no gap to close"
        lines.append(f"Accuracy gap, {ref} minus 90 degrees without homeostasis: {100 * gap:.2f} "
                     f"points; homeostasis changes accuracy by {100 * gain:+.2f} points ({frac}).")
    return lines


def certified_seeds(run: RunDir, acc: list[float]) -> str:
    """``eqprop stability RUN --perturb 100`` on a run: ``"c/s"``, how many of the ``s``
    seeds that solved the task (100% accuracy) have every free fixed point certified."""
    from eqprop.cli import main as cli

    path = run.path / "stability.json"
    if not path.exists():
        cli(["stability", str(run.path), "--perturb", "100", "--json", str(path)])
    per = json.loads(path.read_text())["per_seed"]
    solved = [i for i, a in enumerate(acc) if a is not None and a >= 1.0]
    return f"{sum(bool(per[i]['certified']) for i in solved)}/{len(solved)}"


LOGIC_TASKS = ("xor", "and", "or", "not", "identity")


def solved_seeds(rows) -> list[str]:
    """Per setting of the directed experiment: the seeds at 0% error (100% accuracy)."""
    lines = []
    for r in rows:
        if r["labels"]["x"] not in LOGIC_TASKS:  # a truth table is solved or not; digits is not
            continue
        acc = [a for a in r["acc"] if a is not None]
        solved = sum(a >= 1.0 for a in acc)
        cert = r["labels"].get("certified")
        lines.append(f"{r['name']}: {solved} of {len(acc)} seeds at 0% error"
                     + (f"; solved seeds with every fixed point certified: {cert}" if cert else "") + ".")
    return lines


#: how far below implicit's mean test accuracy the shipped hEP setting may end (points)
SHIPPED_MARGIN = 0.3


def closest_to_implicit(rows) -> list[str]:
    """The decision of the shipped-hep experiment: the cheapest hEP setting (fewest points)
    whose mean test accuracy is within :data:`SHIPPED_MARGIN` points of implicit's."""
    acc = {r["name"]: 100 * np.asarray(r["acc"], float) for r in rows
           if r["acc"] and r["acc"][0] is not None}
    if "implicit" not in acc:
        return ["implicit has not run: no decision."]
    ref = acc["implicit"].mean()
    lines = []
    ok = []
    for name in (n for n in acc if n.startswith("hep-")):
        d = acc[name].mean() - ref
        lines.append(f"{name}: {d:+.2f} points against implicit ({acc[name].mean():.2f} vs {ref:.2f}).")
        if d >= -SHIPPED_MARGIN:
            ok.append(name)
    ok.sort(key=lambda n: int(n.split("-")[1][1:]))  # fewest points first: the cheapest
    lines.append(f"Ship: {ok[0]} (within {SHIPPED_MARGIN} points of implicit on the mean)." if ok else
                 f"No hEP setting ends within {SHIPPED_MARGIN} points of implicit on the mean.")
    return lines


def summary_plot(rows, path: Path, experiment: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["acc"] + [c for c in ("cos_asymmetry", "jacobian_symmetry", "alignment")
                        if any(r["diag"][c] for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    lines: dict[str, list] = {}
    for r in rows:
        lines.setdefault(r["labels"]["line"], []).append(r)
    xs_all = list(dict.fromkeys(r["labels"]["x"] for r in rows))
    for ax, panel in zip(axes[0], panels):
        for label, rs in lines.items():
            vals = [(100 * np.asarray(r["acc"], float)) if panel == "acc" else
                    (np.asarray(r["diag"][panel], float) if r["diag"][panel] else None) for r in rs]
            pts = [(xs_all.index(r["labels"]["x"]), v.mean(), v.std()) for r, v in zip(rs, vals)
                   if v is not None]
            if pts:
                x, m, s = zip(*pts)
                ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=label)
        ax.set_xticks(range(len(xs_all)))
        ax.set_xticklabels([str(x) for x in xs_all])
        ax.set_xlabel({"finite-nudge": "N (points)", "asymmetry": "initial angle (degrees)",
                       "homeostasis": "architecture", "shipped-hep": "estimator",
                       "directed": "task", "pruning": "network"}[experiment])
        ax.set_title("test accuracy (%)" if panel == "acc" else f"{panel} (last epoch)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
