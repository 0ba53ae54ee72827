"""The ``eqprop`` command line: train, resume, eval, gradcheck, stability, datasets, report,
config.

Exit codes: 0 success; 2 bad input (config, data, arguments, run directory) with a
one-line message on stderr; 3 training diverged; 130 interrupted (checkpoint saved).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from .guards import EqpropWarning, EstimateWarning, circle_summary, warnings_as_lines

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_PIPE = 0, 2, 3, 130, 141


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _stop_on_signals():
    """Within the block, treat SIGTERM (e.g. a scheduler's preemption) like Ctrl-C:
    checkpoint and stop. Both signals also request the stop from the training loop
    (:func:`eqprop.train.loop.request_stop`), which honours it at its next batch where
    the ``KeyboardInterrupt`` was swallowed (raised inside a callback of JAX's). The
    handlers in place before are put back on the way out, so ``main`` called from Python
    (a notebook, a test) leaves its process's signals as it found them."""
    import signal

    from .signals import stop
    from .train import loop  # noqa: F401  (stop() asks it to stop)

    before = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            before[sig] = signal.signal(sig, stop)
        except ValueError:  # not in the main thread
            pass
    try:
        yield
    finally:
        for sig, previous in before.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


def _join(args: argparse.Namespace) -> None:
    """Join a multi-process run (``--coordinator``...), before anything touches JAX."""
    from .parallel import initialize

    if args.coordinator is not None:
        print(f"joining {args.processes} processes at {args.coordinator} as process "
              f"{args.process_id} (waits until every process has joined)", file=sys.stderr,
              flush=True)
    initialize(args.coordinator, args.processes, args.process_id)


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .data import DataError
    from .plugins import record_plugins
    from .train import RunDir, default_run_dir, train, with_epochs

    config = with_epochs(load_config(args.config, args.set), args.epochs)
    out = Path(args.out) if args.out else default_run_dir(args.config)
    run = RunDir(out)
    from .parallel import is_writer
    from .train.loop import refuse_a_run

    if is_writer():  # before naming the directory (a review saw it named, then refused)
        refuse_a_run(run, cli=True)
    print(f"run directory: {out}")

    created, recorded = not out.exists(), False
    if args.plugin and is_writer() and not (run.has_checkpoint() or run.metrics.exists()):
        # resume, eval, gradcheck and stability of the run load these copies (train refuses a
        # directory that holds a run: leave that run's plugins alone)
        record_plugins(out, args.plugin)
        recorded = True
    try:
        with _stop_on_signals():
            summary = train(config, out, progress=not args.quiet)
    except Exception as e:
        if recorded and not run.is_run():
            # refused before its first step: leave nothing (a review found a directory
            # holding only plugins/)
            import shutil

            from .plugins import PLUGIN_DIR

            shutil.rmtree(out / PLUGIN_DIR, ignore_errors=True)
            if created:
                shutil.rmtree(out, ignore_errors=True)
        if out.exists() or not isinstance(e, (ConfigError, DataError, ValueError, OSError)):
            raise
        # the run could not be built (data, model): train removed the directory it made,
        # which the line above named
        raise ValueError(f"{_one_line(e)} ({out} was removed: nothing was trained)").with_traceback(
            e.__traceback__) from e  # its frames: a plugin's own line is still named
    _quiet_summary(args, summary)
    return EXIT_OK


def _quiet_summary(args: argparse.Namespace, summary: dict) -> None:
    """``-q`` still prints the summary block (train prints it only with its progress)."""
    from .parallel import is_writer
    from .train import format_summary

    if args.quiet and is_writer():
        print(format_summary(summary))


def _cmd_resume(args: argparse.Namespace) -> int:
    from .config import load_run_config
    from .train import RunDir, train, with_epochs
    from .train.resume import spans_the_run

    bad = [o for o in args.set if not o.strip().startswith("parallel.")]
    if bad:
        raise ValueError(f"resume --set: only [parallel] keys may change when a run resumes "
                         f"(the others define the run), got {bad[0]!r}")
    run = RunDir(args.run_dir).require()
    before = load_run_config(run.config, args.set)
    config = with_epochs(before, args.epochs)
    spans = spans_the_run(before)
    records = run.read_metrics()
    done = records[-1]["epoch"] if records else 0  # at or past it, resume refuses: no warning
    if config.train.epochs != before.train.epochs and config.train.epochs > done and spans:
        if run.has_checkpoint():  # a broken checkpoint fails here, before any advice on the schedule
            from .train import checkpoint

            with warnings.catch_warnings():  # a fallback entry is reported once, by train
                warnings.simplefilter("ignore", checkpoint.CheckpointWarning)
                checkpoint.read(run.checkpoint("latest"))
        warnings.warn(f"resume --epochs {config.train.epochs} (the run was planned for "
                      f"{before.train.epochs}): {' and '.join(spans)} now spans "
                      f"{config.train.epochs} epochs from here on, so the result equals "
                      "neither the planned run nor an uninterrupted "
                      f"{config.train.epochs}-epoch run", EqpropWarning, stacklevel=2)
    with _stop_on_signals():
        summary = train(config, run.path, resume=True, progress=not args.quiet)
    _quiet_summary(args, summary)
    return EXIT_OK


def _at_least_one(text: str) -> int:
    """argparse type: an integer >= 1 (one line naming the value otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"an integer >= 1, got {value}")
    return value


def _cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from .guards import NONCONVERGED_TOL, estimate_problems, share
    from .solvers import can_alternate
    from .train import evaluate, load_run
    from .train.records import ESTIMATE_KEYS

    config, program, model, meta = load_run(args.run_dir, args.checkpoint, args.set)
    estimator_name = program.estimator.name
    ds = program.dataset
    x, y = (ds.x_test, ds.y_test) if args.split == "test" else (ds.x_train, ds.y_train)
    first, total = "", len(y)
    if args.examples is not None and args.examples < total:  # a quick look: the first N
        x, y, first = x[:args.examples], y[:args.examples], f"the first {args.examples} of "
    m = evaluate(program, model, x, y, estimate=True)
    top5 = ds.n_classes > 10
    at = f"epoch {meta.get('epoch')}"
    if meta.get("batch"):  # saved part-way through the next epoch (Ctrl-C, SIGTERM)
        at += f" and {meta['batch']} batches of epoch {meta.get('epoch', 0) + 1}"
    split = f"{args.split} split"
    if args.split == "test" and config.data.validation > 0:
        split = (f"validation split (held out of the training set, data.validation = "
                 f"{config.data.validation:g}; --set data.validation=0 for the test set)")
    print(f"{args.run_dir}: checkpoint {args.checkpoint} ({at}), {ds.name} {split}, {first}{total} examples")
    rows = [("mean" if program.seeds > 1 else "", {k: float(np.mean(v)) for k, v in m.items()})]
    if program.seeds > 1:
        rows = [(f"seed {i}", {k: float(v[i]) for k, v in m.items()})
                for i in range(program.seeds)] + rows
    head = f"{'':<8}{'top-1':>9}" + (f"{'top-5':>9}" if top5 else "") + f"{'loss':>10}"
    print(head)
    for name, r in rows:
        print(f"{name:<8}{100 * r['acc']:>8.2f}%" + (f"{100 * r['top5']:>8.2f}%" if top5 else "")
              + f"{r['loss']:>10.4f}")
    mean = rows[-1][1]
    if not program.estimator.at_fixed_point():  # bp: predicts by the forward pass
        print(f"inference ({estimator_name}): one feed-forward pass, no relaxation ([dynamics] is "
              "not used)")
        return EXIT_OK
    unit = "group updates" if program.solvers.free.update == "alternating" else "steps"
    print(f"free phase: {mean['free_steps']:.1f} {unit}, residual {mean['residual']:.2e} (mean over "
          f"batches), {100 * mean['nonconverged']:.1f}% of examples above {NONCONVERGED_TOL:g}")
    if "nudged_residual" in mean:
        print(f"nudged phases ({estimator_name}): residual {mean['nudged_residual']:.2e} (mean), "
              f"{100 * mean['nudged_nonconverged']:.1f}% of (phase, example) above {NONCONVERGED_TOL:g}")
    if "linear_residual" in mean:
        print(f"linear solve ({estimator_name}): residual {mean['linear_residual']:.2e} (mean)")
    if "hep_error" in mean:
        print("hEP circle: " + circle_summary(mean["hep_decay_median"], mean["hep_decay"], mean["hep_error"],
                                              points=getattr(program.estimator, "points", None))
              + (f"; {share(float(mean['hep_floor']))} of the examples have only their first order above "
                 "the rounding floor: their rate is fitted through it, at most what it reads"
                 if mean.get("hep_floor") else ""))
    figures = {name: mean[key] for key, name in ESTIMATE_KEYS.items() if key in mean}
    figures.update(residual_mean=mean["residual"], nonconverged_fraction=mean["nonconverged"])
    problems = estimate_problems(figures, beta=getattr(program.estimator, "beta", None),
                                 update=program.solvers.free.update,
                                 linear_solver=config.dynamics.linear_solver,
                                 compute_dtype=getattr(config.model, "compute_dtype", None),
                                 alternates=can_alternate(program.model))
    if problems:
        warnings.warn("; ".join(problems), EstimateWarning, stacklevel=2)
    return EXIT_OK


def strict_json(tree: Any) -> Any:
    """``tree`` with every non-finite float (``inf``, ``nan``) replaced by ``None``: JSON
    that strict parsers (RFC 8259 has no Infinity or NaN) read."""
    if isinstance(tree, dict):
        return {k: strict_json(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [strict_json(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


def _config_or_run(target: str, overrides, readers: tuple[str, ...] = ()) -> tuple[Any, Any, Any]:
    """``(config, program, model)`` of a CONFIG_OR_RUN_DIR argument: a run directory's
    latest checkpoint (stacked when it has several seeds), or a config's fresh model;
    ``readers``: the sections the command reads for itself, which ``--set`` may change on a
    run too (:func:`eqprop.train.load_run`).

    **Raises:** ``ValueError`` for a path that does not exist or a directory that is not a
    run."""
    from .config import ConfigError, load_config, resolve_config
    from .train import build_program, load_run

    path = Path(target)
    if not path.exists():
        try:  # a shipped config's name (digits-quick)
            path = resolve_config(target)
        except ConfigError as e:
            raise ValueError(f"{e} (nor a run directory)") from None
        if not path.exists():
            raise ValueError(f"{target}: no such config file or run directory")
    if path.is_dir():  # load_run checks that it is a run
        config, program, model, _ = load_run(path, "latest", overrides, readers=readers)
        return config, program, model
    config = load_config(path, overrides)
    program = build_program(config)
    return config, program, program.model


def _cmd_gradcheck(args: argparse.Namespace) -> int:
    import jax

    from . import build
    from .data import batches
    from .diagnostics import DIAGNOSTIC_NOTES, EXACT_BASED, describe, diagnostics
    from .gradcheck import build_specs, format_table, gradcheck, settle, to_json
    from .guards import NONCONVERGED_TOL, share
    from .train import unstack

    config, program, model = _config_or_run(args.target, args.set, readers=("diagnostics",))
    if not 0 <= args.seed_index < program.seeds:
        raise ValueError(f"--seed-index {args.seed_index}: the "
                         f"{'run' if Path(args.target).is_dir() else 'config'} has "
                         f"{program.seeds} seed(s), indices 0 to {program.seeds - 1}")
    if program.seeds > 1:  # one network: which one, said (a review could not tell)
        model = unstack(model, args.seed_index)
        print(f"seed {args.seed_index} of the {program.seeds} seeds' networks "
              f"(--seed-index picks another)\n")
    solvers = build.build_solvers(config)
    configured = build.build_estimator(config)
    if not args.estimator:
        if not configured.at_fixed_point():
            raise ValueError(
                f"estimator.name = {config.estimator.name!r} trains the feed-forward pass, which has no "
                "fixed point to check against; name the recurrent estimators to compare with -e "
                "(e.g. -e hep -e exact-nudge)")
    specs = args.estimator or [config.estimator.name]
    estimators = build_specs(specs, solvers, build.estimator_settings(config))
    ds = program.dataset
    xb, yb = next(batches(ds.x_train, ds.y_train, config.data.batch_size,
                          seed=config.train.seed, epoch=0, drop_last=False))
    key = jax.random.PRNGKey(config.train.seed)
    from tqdm.auto import tqdm
    # the exact SPECs started from an unsettled free state can take minutes each: a bar on a
    # terminal names the stage that runs (stages: free phase, reference, each SPEC, diagnostics)
    bar = tqdm(total=len(estimators) + 3, desc="gradcheck", leave=False, file=sys.stderr,
               disable=not sys.stderr.isatty(), bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}]")

    def stage(name: str) -> None:
        bar.set_description_str(f"gradcheck: {name}")
        bar.update(0 if bar.n == 0 and name == "free phase" else 1)

    result = gradcheck(model, xb, yb, estimators, solvers, key=key, progress=stage)
    stage("diagnostics")
    # the asymmetry diagnostics of the config's estimator, on the same batch and key; of
    # the first SPEC when the config's has no fixed point (a bp run checked with -e)
    subject, source = configured, f"{config.estimator.name}, the config's estimator"
    if not subject.at_fixed_point():
        subject = estimators[specs[0]]
        source = f"{specs[0]}: the config's {config.estimator.name!r} has no fixed point"
    diag = diagnostics(model, xb, yb, subject, solvers, key,
                       free_steps=config.diagnostics.free_steps or None)
    bar.close()
    withheld = []
    if result.get("reference", "implicit") is None:  # states on the box's bounds, or an untrusted solve
        # the diagnostics' comparisons rest on the same implicit differentiation (and
        # exact-nudge's linear solve): no cosine of them either (a review read cos_implicit
        # -0.0126 under "no cosine is reported"); JSON: null
        withheld = [k for k in diag if k.partition("/")[0] in EXACT_BASED]
        diag = {k: (None if k in withheld else v) for k, v in diag.items()}
    budget = config.diagnostics.free_steps
    if diag.get("probe_settled_on"):  # the diagnostics' biases are defined at the fixed point
        source += (f"; taken at the fixed point: the batch relaxed on, up to {settle(solvers.free).steps} "
                   "updates, since the configured free phase does not settle")
    elif budget:
        source += f"; taken after diagnostics.free_steps = {budget} free updates"
    print(format_table(result, diag, source=source, describe=describe, notes=DIAGNOSTIC_NOTES))
    if withheld:
        print(f"diagnostics: {', '.join(withheld)} withheld: they compare with implicit differentiation "
              "(and exact-nudge's linear solve), which cannot be trusted here (above)")
    if diag.get("probe_nonconverged", 0.0) > 0:  # the biases are defined at a fixed point only
        where = (f"in diagnostics.free_steps = {budget}" if budget else
                 f"even relaxed on, up to {settle(solvers.free).steps} updates")
        advice = ("raise it, or leave it unset (the batch then relaxes on until it settles)" if budget else
                  "the free phase's warning above says what may settle it")
        print(f"diagnostics: WARNING: {share(diag['probe_nonconverged'])} of the batch did not settle "
              f"{where} (residual above {NONCONVERGED_TOL:g}): the bias cosines (cos_*) are not taken at "
              f"a fixed point there and cannot be trusted; {advice}")
    if args.json:
        out = Path(args.json)
        if out.parent != Path(""):
            out.parent.mkdir(parents=True, exist_ok=True)
        seed = {"seed_index": args.seed_index} if program.seeds > 1 else {}
        out.write_text(json.dumps(strict_json(to_json({**seed, **result, **diag})), indent=2) + "\n")
        print(f"wrote {out}")
    return EXIT_OK


def _cmd_stability(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from . import build
    from .stability import (StabilitySettings, format_table, perturbation_check, perturbation_steps,
                            stability)
    from .train import unstack

    if args.perturb < 0:
        raise ValueError(f"--perturb: must be >= 0, got {args.perturb}")
    if args.perturb_scale is not None and not args.perturb_scale > 0:
        raise ValueError(f"--perturb-scale: must be > 0, got {args.perturb_scale}")
    config, program, model = _config_or_run(args.target, args.set, readers=("stability",))
    settings = StabilitySettings.of(config.stability)
    free = build.build_solvers(config).free
    ds = program.dataset
    x = jax.numpy.asarray(ds.x_train[:settings.examples])
    rows = []
    for i in range(program.seeds):
        m = model if program.seeds == 1 else unstack(model, i)
        r, u = stability(m, x, free, settings=settings, seed=config.train.seed)
        if args.perturb:
            steps = perturbation_steps(r, free.steps)
            scale = args.perturb_scale
            if scale is None:  # within the projected certificate's reach, else 1e-3
                hold = (r["projected"] or {}).get("hold_radius_min", np.inf)
                scale = float(min(1e-3, hold / 10)) if hold > 0 else 1e-3
            back = perturbation_check(m, x, u, dt=free.dt, trials=args.perturb, steps=steps,
                                      scale=scale, seed=config.train.seed, update=free.update)
            r["perturbation"] = {"trials": args.perturb, "scale": scale, "steps": steps,
                                 "returned_fraction_min": float(back.min()),
                                 "returned_fraction_mean": float(back.mean())}
        rows.append({"seed": i, **r})
    result = {"target": str(args.target), "model": type(model).__name__, "dt": free.dt,
              "update": free.update, "examples": int(x.shape[0]),
              "certified": all(r["certified"] for r in rows), "per_seed": rows}
    print(format_table(result))
    from .solvers import Anderson, FixedPoint

    if not isinstance(free, (FixedPoint, Anderson)):  # a plugin's iteration (a review: momentum)
        print(f"dynamics.solver = {config.dynamics.solver!r} ({type(free).__name__}): the certificates "
              "are of the step map u <- P(u + dt F(u)) and of the fixed points every solver "
              "shares, not of the iteration this solver runs, which they do not cover")
    if args.json:
        out = Path(args.json)
        if out.parent != Path(""):
            out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(strict_json(result), indent=2) + "\n")
        print(f"wrote {out}")
    return EXIT_OK


def _cmd_datasets(args: argparse.Namespace) -> int:
    from .data import available

    rows = available()
    width = max(len(r["name"]) for r in rows) + 2
    print(f"{'name':<{width}}{'status':<11}where / how to get")
    for r in rows:
        status = "available" if r["available"] else "missing"
        where = r["where"] if r["available"] else r["how"]
        print(f"{r['name']:<{width}}{status:<11}{where}")
        if not r["available"] and r["searched"] and args.verbose:
            print(f"{'':<{width + 11}}searched: {', '.join(r['searched'])}")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from .train.report import report

    out = Path(args.out) if args.out else (
        Path(args.run_dirs[0]) / "report" if len(args.run_dirs) == 1 else Path("report"))
    md = report(args.run_dirs, out)
    print(f"wrote {md} and plots in {out}")
    return EXIT_OK


def _cmd_config(args: argparse.Namespace) -> int:
    from .config import describe, dumps_toml, load_config

    if args.list:
        _list_shipped()
    elif args.config and Path(args.config).is_dir():  # a run directory: its config.toml
        from .config import load_run_config
        from .train import RunDir

        print(dumps_toml(load_run_config(RunDir(args.config).require().config, args.set)), end="")
    elif args.config:
        print(dumps_toml(load_config(args.config, args.set)), end="")
    else:
        print(describe())
    return EXIT_OK


def _first_clause(text: str, at_least: int = 40) -> str:
    """``text`` up to its first ``.``, ``;`` or ``:`` outside parentheses that ends a
    clause at least ``at_least`` characters long (``et al.``, ``e.g.`` do not)."""
    depth = 0
    for i, c in enumerate(text):
        depth += (c == "(") - (c == ")" and depth > 0)
        if (c in ".;:" and depth == 0 and i + 1 >= at_least and text[i + 1:i + 2] in ("", " ")
                and text[max(0, i - 2):i] not in ("al", ".g", ".e")):
            return text[:i + 1] if c == "." else text[:i]
    return text


def _list_shipped() -> None:
    """``eqprop config --list``: each shipped config's name and the first clause of its
    header comment."""
    from .config import shipped_config_dirs, shipped_configs

    found = shipped_configs()
    if not found:
        print("no shipped configs found (searched "
              + ", ".join(str(d) for d in shipped_config_dirs()) + ")")
        return
    import shutil
    import textwrap

    width = max(map(len, found))
    columns = max(80, shutil.get_terminal_size((100, 24)).columns)
    for name, path in found.items():
        block = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            block.append(line.lstrip("# ").strip())
        # its first clause, whole (a review read one comment line cut mid-sentence), wrapped
        print(textwrap.fill(_first_clause(" ".join(block)), columns, initial_indent=f"{name:<{width}}  ",
                            subsequent_indent=" " * (width + 2), break_on_hyphens=False,
                            break_long_words=False))
    print(f"\n({len(found)} configs in {', '.join(sorted({str(p.parent) for p in found.values()}))}; "
          "`eqprop train NAME` runs one, `eqprop config NAME` prints it resolved)")


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------


_CONFIG_HELP = ("TOML config file, or the name of a shipped config (e.g. digits-quick; "
                "`eqprop config --list`)")


def _add_set(p: argparse.ArgumentParser, on_run: bool = False, readers: tuple[str, ...] = ()) -> None:
    if on_run:
        from .config import RUN_OVERRIDABLE

        sections = ", ".join(f"[{s}]" for s in RUN_OVERRIDABLE + readers)
        text = (f"override a config value (TOML syntax; repeatable); on a run directory only "
                f"{sections} keys, e.g. dynamics.free_steps=400")
    else:
        text = "override a config value (TOML syntax; repeatable), e.g. optim.lr=0.05"
    p.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.KEY=VALUE", help=text)


def _add_processes(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-process runs (jax.distributed; one command per process)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0 (or EQPROP_COORDINATOR)")
    g.add_argument("--processes", type=int, metavar="N",
                   help="number of processes (or EQPROP_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I",
                   help="this process, 0 <= I < N (or EQPROP_PROCESS_ID); process 0 writes "
                   "the run's files")


def _add_plugin(p: argparse.ArgumentParser, note: str = "") -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="a Python file that registers components, e.g. a model kind "
                   f"(repeatable; see docs/extending.md){note}")


_RECORDED = ("; a run directory's recorded plugins load without it, and it replaces the "
             "recorded copy of the same file name")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``eqprop`` command."""
    parser = argparse.ArgumentParser(
        prog="eqprop", description="Train and inspect equilibrium-propagation networks.",
        epilog="exit codes: 0 ok, 2 bad input, 3 training diverged, 130 interrupted")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a network from a TOML config",
                       description="Train from CONFIG into a run directory (config.toml, "
                       "metrics.jsonl, checkpoints/, summary.json).")
    p.add_argument("config", metavar="CONFIG", help=_CONFIG_HELP)
    _add_set(p)
    p.add_argument("--out", "-o", metavar="RUN_DIR",
                   help="run directory (default: runs/<config stem>-<timestamp>)")
    p.add_argument("--epochs", type=int, metavar="N", help="override train.epochs")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or epoch lines")
    _add_plugin(p, "; copied to RUN_DIR/plugins/, where resume, eval, gradcheck and stability find it")
    _add_processes(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("resume", help="continue a run from its latest checkpoint",
                       description="Continue RUN_DIR from its latest checkpoint; the result "
                       "equals an uninterrupted run with the same config.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="new total number of epochs (with a cosine schedule this changes the "
                   "schedule, so the result no longer equals an uninterrupted run)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or epoch lines")
    p.add_argument("--set", "-s", action="append", default=[], metavar="parallel.KEY=VALUE",
                   help="change the layout the run resumes on (only [parallel] keys, e.g. "
                   "parallel.devices=4; the result is the same run)")
    _add_plugin(p, _RECORDED)
    _add_processes(p)
    p.set_defaults(func=_cmd_resume)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint",
                       description="Top-1 (and top-5 with more than 10 classes) accuracy and "
                       "loss of a checkpoint on a split, how far the free phase relaxed, and "
                       "how far the run's estimator's nudged phases or linear solves relaxed "
                       "on it (hEP: how its Fourier coefficients decay), with a warning when "
                       "one is beyond its limit. "
                       "--set changes how the network is relaxed for the evaluation, e.g. "
                       "--set dynamics.tol=0.0 --set dynamics.free_steps=400 to check a run "
                       "trained with early stopping or warm starts against converged fixed points.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    _add_set(p, on_run=True)
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--checkpoint", choices=("latest", "best"), default="latest")
    p.add_argument("--examples", type=_at_least_one, default=None, metavar="N",
                   help="evaluate the first N examples of the split only (a quick look; "
                   "default: all)")
    _add_plugin(p, _RECORDED)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("gradcheck", help="compare estimators with the exact gradient",
                       description="On the first training batch, compare each estimator SPEC "
                       "with the implicit (exact) gradient, and report the asymmetry diagnostics (angle, "
                       "jacobian_symmetry, alignment, bias cosines, homeo_loss) of the config's "
                       "estimator. With a CONFIG, the network as initialised (seed train.seed); "
                       "with a RUN_DIR, its config.toml and latest checkpoint (when seeds > 1, "
                       "the network of --seed-index).")
    p.add_argument("target", metavar="CONFIG_OR_RUN_DIR")
    _add_set(p, on_run=True, readers=("diagnostics",))
    p.add_argument("--seed-index", type=int, default=0, metavar="I",
                   help="with [train] seeds > 1, check the network of seed I (0 to seeds - 1; "
                   "default 0)")
    p.add_argument("--estimator", "-e", action="append", metavar="SPEC",
                   help="estimator SPEC, e.g. hep:points=6:beta=0.5 (repeatable; default: the "
                   "config's estimator)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    _add_plugin(p, _RECORDED)
    p.set_defaults(func=_cmd_gradcheck)

    p = sub.add_parser("stability", help="certify the stability of the free fixed points",
                       description="Stability certificates of the free fixed points of the first "
                       "[stability] examples training examples, for every seed: the spectral "
                       "radius of the map the solver iterates (I + dt J, or the alternating "
                       "sweep's Jacobian; exact or by power iteration), "
                       "the global contraction bound, the Lyapunov certificate, and the projected "
                       "certificate of a clipped model (docs/stability.md). With a RUN_DIR, its "
                       "config.toml and latest checkpoint; with a CONFIG, the initial networks.")
    p.add_argument("target", metavar="CONFIG_OR_RUN_DIR")
    _add_set(p, on_run=True, readers=("stability",))
    p.add_argument("--perturb", type=int, default=0, metavar="N",
                   help="also check the local certificates against the dynamics: N random "
                   "perturbations of each fixed point, relaxed back for as many steps as the "
                   "certificate's radius needs (default 0: off)")
    p.add_argument("--perturb-scale", type=float, metavar="S",
                   help="standard deviation of the perturbations (default: 1e-3, and for a "
                   "clipped model at most a tenth of the projected certificate's hold radius: a "
                   "local certificate promises a return from close enough only)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON (a list per_seed)")
    _add_plugin(p, _RECORDED)
    p.set_defaults(func=_cmd_stability)

    p = sub.add_parser("datasets", help="list data sets and where they are found",
                       description="Which data sets are available, where, and how to get "
                       "the missing ones.")
    p.add_argument("--verbose", "-v", action="store_true", help="show the searched directories")
    _add_plugin(p)  # a data set a plugin registers is listed too
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("report", help="plots and a markdown table of runs",
                       description="Write accuracy/loss/relaxation (and diagnostics) plots and "
                       "report.md for one or more runs, overlaid.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", "-o", metavar="DIR",
                   help="output directory (default: RUN_DIR/report for one run, ./report else)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("config", help="print the config reference (or a resolved config)",
                       description="Without CONFIG: the markdown reference of every key. With "
                       "CONFIG (or a RUN_DIR: its config.toml): the resolved config (defaults "
                       "filled in, overrides applied).")
    p.add_argument("config", nargs="?", metavar="CONFIG_OR_RUN_DIR", help=_CONFIG_HELP + "; or a run "
                   "directory")
    p.add_argument("--list", action="store_true",
                   help="list the shipped configs (name and the first clause of its header)")
    _add_set(p)
    _add_plugin(p)
    p.set_defaults(func=_cmd_config)
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).splitlines()) or type(err).__name__


def _load_plugins(args: argparse.Namespace) -> None:
    """Load the plugins a command needs: those recorded in the run directory it reads
    (resume, eval, gradcheck, stability of a run) except the file names given again with
    ``--plugin``, then the ``--plugin`` files. Raises ``PluginError`` (a ``ValueError``)."""
    given = getattr(args, "plugin", [])
    run_dir = None
    if args.command in ("resume", "eval"):
        run_dir = args.run_dir
    elif args.command in ("gradcheck", "stability") and Path(args.target).is_dir():
        run_dir = args.target
    elif args.command == "config" and args.config and Path(args.config).is_dir():
        run_dir = args.config
    if run_dir is None and not given:
        return
    from .plugins import load_plugins, load_recorded

    if run_dir is not None:
        load_recorded(run_dir, skip={Path(p).name for p in given})
    load_plugins(given)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (``--help`` and usage errors too)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    from .config import ConfigError
    from .data import DataError
    from .train import TrainingDiverged

    try:
        if args.command in ("train", "resume"):
            _join(args)
        _load_plugins(args)
        with warnings_as_lines():
            return args.func(args)
    except TrainingDiverged as e:
        print(f"eqprop: {_one_line(e)}", file=sys.stderr)
        return EXIT_DIVERGED
    except BrokenPipeError:
        # the reader went away (`eqprop config | head`): stop quietly, as a program killed by
        # SIGPIPE does, and keep the interpreter's final flush from failing on the same pipe
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except KeyboardInterrupt as e:
        # a new line ends the progress bar's on a terminal; piped, the message is one line
        lead = "\n" if sys.stderr.isatty() else ""
        print(f"{lead}eqprop: {_one_line(e) if str(e) else 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, DataError, ValueError, OSError) as e:
        where = ""
        if not isinstance(e, (ConfigError, DataError)):  # raised in a plugin's own code: say where
            from .plugins import plugin_culprit

            culprit = plugin_culprit(e)
            if culprit is not None and culprit[1]:
                where = f"plugin {culprit[0]}: {culprit[1]}: "
        print(f"eqprop: error: {where}{_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a plugin that breaks a component's contract: one line, not a traceback
        import os

        from .plugins import plugin_culprit

        culprit = plugin_culprit(e)
        if culprit is None or os.environ.get("EQPROP_TRACEBACK"):
            raise
        path, where = culprit
        print(f"eqprop: error: plugin {path}{': ' + where if where else ''}: {type(e).__name__}: "
              f"{_one_line(e)} (the contract of a component: docs/extending.md; EQPROP_TRACEBACK=1 "
              "shows the traceback)", file=sys.stderr)
        return EXIT_USAGE


def run() -> None:
    """The ``eqprop`` command: :func:`main`, then exit with its status. An interrupted
    command (Ctrl-C, SIGTERM: exit 130) leaves at once, after flushing its output, without
    the interpreter's teardown: an interrupt that lands while XLA compiles in its own
    threads otherwise ends in a segmentation fault (exit 139) after the checkpoint was
    saved."""
    code = main()
    if code == EXIT_INTERRUPTED:
        import os

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
