"""Asymmetry diagnostics: values on known networks, and their plumbing (trainer, CLI, report)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqprop
from eqprop.cli import main
from eqprop.config import parse_config
from eqprop.diagnostics import diagnostics
from eqprop.estimate import make_estimator
from eqprop.train import train
from helpers import solvers

F64 = jnp.float64
SETTINGS = dict(free_steps=80, nudged_steps=30, linear_steps=500, linear_tol=1e-12)
DYN = solvers(**SETTINGS)


def run(feedback, angle, estimator="exact-nudge", **kw):
    m = eqprop.layered([8, 10, 7, 4], key=jax.random.PRNGKey(0), feedback=feedback,
                       asymmetry_angle=angle, dtype=F64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8), F64)
    y = jnp.arange(4) % 4
    return diagnostics(m, x, y, make_estimator(estimator, DYN, **kw), DYN)


def test_tied_network_is_symmetric_and_unbiased():
    d = run("tied", 0.0)
    assert d["jacobian_symmetry"] == 1.0 and d["homeo_loss"] == 0.0
    assert d["angle"] == 0.0
    per_pop = [v for k, v in d.items() if k.startswith("alignment/")]
    assert len(per_pop) >= 2 and d["alignment"] > 1 - 1e-8 and min(per_pop) > 1 - 1e-8
    assert d["cos_asymmetry"] > 1 - 1e-8 and d["cos_finite_nudge"] > 1 - 1e-8


def test_untied_90_degrees_has_asymmetry_bias():
    d = run("untied", 90.0, "ep", beta=0.05, points=1)
    assert 60 < d["angle"] < 120
    assert d["jacobian_symmetry"] < 0.9 and d["homeo_loss"] > 0.05
    assert d["cos_asymmetry"] < 0.9
    assert d["cos_finite_nudge"] > 0.95  # small beta: the finite-nudge bias is small
    assert d["alignment"] < 0.9


def test_the_implicit_estimator_is_aligned_with_its_own_delta():
    """``alignment`` compares with the implicit estimator's error vector, the
    recurrent-backprop ``delta``: the implicit estimator itself has alignment 1."""
    d = run("untied", 90.0, "implicit")
    assert d["alignment"] == pytest.approx(1.0, abs=1e-12)
    assert d["cos_implicit"] == pytest.approx(1.0, abs=1e-12)
    assert d["cos_finite_nudge"] == pytest.approx(d["cos_asymmetry"], abs=1e-12)


def test_probe_figures_agree_with_the_exact_ones():
    """Past ``exact_max`` neurons the Jacobian figures come from homeostasis's probes; on
    one example they estimate the explicit Jacobian's figures."""
    m = eqprop.layered([8, 10, 7, 4], key=jax.random.PRNGKey(0), feedback="untied",
                       asymmetry_angle=90.0, dtype=F64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, 8), F64)
    y = jnp.arange(1)
    est = make_estimator("ep", DYN, beta=0.05, points=1)
    exact = diagnostics(m, x, y, est, DYN)
    probed = diagnostics(m, x, y, est, DYN, exact_max=0, probes=4000)
    assert probed["jacobian_symmetry"] == pytest.approx(exact["jacobian_symmetry"], abs=0.01)
    assert probed["homeo_loss"] == pytest.approx(exact["homeo_loss"], rel=0.05)
    for k in ("cos_asymmetry", "cos_finite_nudge", "alignment"):
        assert probed[k] == pytest.approx(exact[k], abs=1e-12), k


def test_free_steps_takes_the_diagnostics_at_the_fixed_point():
    """``free_steps`` relaxes the probe batch further than training does: the figures are
    then those of the converged dynamics, and ``probe_nonconverged`` says how many examples
    had not settled (all, at an explicit budget of 2). Without ``free_steps`` a batch the
    training budget leaves unsettled relaxes on (``probe_settled_on``), to the same
    figures."""
    m = eqprop.layered([8, 10, 7, 4], key=jax.random.PRNGKey(0), feedback="untied",
                       asymmetry_angle=60.0, dtype=F64)
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8), F64)
    y = jnp.arange(4) % 4
    short = solvers(**{**SETTINGS, "free_steps": 2})
    est = make_estimator("hep", short, points=2, beta=0.01)
    unsettled = diagnostics(m, x, y, est, short, free_steps=2)
    assert unsettled["probe_nonconverged"] == 1.0 and unsettled["probe_settled_on"] == 0.0
    settled = diagnostics(m, x, y, est, short, free_steps=200)
    assert settled["probe_nonconverged"] == 0.0 and settled["probe_settled_on"] == 0.0
    reference = diagnostics(m, x, y, make_estimator("hep", DYN, points=2, beta=0.01),
                            solvers(**{**SETTINGS, "free_steps": 200}))
    for k, v in reference.items():
        assert settled[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert abs(unsettled["cos_asymmetry"] - settled["cos_asymmetry"]) > 1e-3
    auto = diagnostics(m, x, y, est, short)  # the training budget of 2, relaxed on
    assert auto["probe_settled_on"] == 1.0 and auto["probe_nonconverged"] == 0.0
    for k, v in reference.items():
        if k != "probe_settled_on":
            assert auto[k] == pytest.approx(v, rel=1e-5, abs=1e-8), k


TINY = {
    "data": {"name": "synthetic", "batch_size": 16},
    "model": {"sizes": [16, 8, 6, 4], "feedback": "untied", "asymmetry_angle": 90.0},
    "dynamics": {"free_steps": 15, "nudged_steps": 5, "linear_steps": 50},
    "estimator": {"name": "hep", "points": 2},
    "optim": {"name": "adamw", "lr": 1e-3},
    "train": {"epochs": 2, "max_batches": 3, "seeds": 2},
    "homeostasis": {"coef": 0.1, "probes": 2, "every": 2},
    "diagnostics": {"enabled": True, "batch_size": 16, "free_steps": 40},
}
KEYS = {"angle", "jacobian_symmetry", "alignment", "alignment/h1", "cos_finite_nudge",
        "cos_asymmetry", "homeo_loss", "train_homeo_loss", "probe_nonconverged"}


def has_pairs(keys):
    return any(k.startswith("angle/") for k in keys) and sum(k.startswith("alignment/") for k in keys) >= 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("diag") / "run"
    train(parse_config(TINY), out, progress=False)
    return out


def test_metrics_have_diagnostics(run_dir):
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert KEYS <= set(r) and has_pairs(r), KEYS - set(r)
        assert len(r["per_seed"]["jacobian_symmetry"]) == 2
        assert 0 < r["jacobian_symmetry"] <= 1 and r["homeo_loss"] >= 0


def test_gradcheck_json_and_report_show_diagnostics(run_dir, tmp_path, capsys):
    out = tmp_path / "gc.json"
    assert main(["gradcheck", str(run_dir), "--json", str(out)]) == 0
    assert "jacobian_symmetry" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert (KEYS - {"train_homeo_loss"}) <= set(data) and has_pairs(data)
    assert "hep" in data and "cosine" in data["hep"]["total"]
    rep = tmp_path / "rep"
    assert main(["report", str(run_dir), "--out", str(rep)]) == 0
    assert (rep / "diagnostics.png").stat().st_size > 0


def test_alignment_is_the_mean_of_per_example_cosines():
    """``alignment`` averages one cosine per example (the authors' ``mean_cos_delta``), so a
    single example with a huge error vector cannot dominate it, unlike a batch cosine."""
    import numpy as np

    from eqprop.metrics import cosine, example_cosines

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3, 2, 4))
    b = a + 0.3 * rng.normal(size=a.shape)
    b[1] = -a[1]
    a[3] = 0.0
    got = np.asarray(example_cosines(jnp.asarray(a), jnp.asarray(b)))
    for i in range(5):
        x, y = a[i].ravel(), b[i].ravel()
        den = np.linalg.norm(x) * np.linalg.norm(y)
        assert got[i] == pytest.approx(x @ y / den if den else 0.0, abs=1e-12)
    assert got[1] == pytest.approx(-1.0) and got[3] == 0.0
    outlier = a.copy()
    outlier[1] *= 1e6  # one example's error vector 1e6 times larger
    assert np.mean(example_cosines(jnp.asarray(outlier), jnp.asarray(b))) == pytest.approx(np.mean(got))
    # the batch cosine is swamped by the outlier: it tends to -|b_1| / |b|, negative
    swamped = -np.linalg.norm(b[1]) / np.linalg.norm(b)
    assert cosine(jnp.asarray(outlier), jnp.asarray(b)) == pytest.approx(swamped, rel=1e-5)


def test_cosine_of_a_non_finite_array_is_nan_never_a_number_that_reads_as_orthogonal():
    """A diverged gradient has no direction: the cosine is NaN (written ``null``), not the
    0.0 of a zero vector, which every table would read as 'orthogonal'."""
    import math

    from eqprop.metrics import cosine
    a = jnp.asarray([1.0, 2.0, 3.0])
    assert cosine(a, jnp.zeros(3)) == 0.0
    assert cosine(a, 2 * a) == pytest.approx(1.0)
    for bad in (jnp.nan, jnp.inf):
        assert math.isnan(cosine(a, a.at[1].set(bad))) and math.isnan(cosine(a.at[0].set(bad), a))
    # never outside [-1, 1] from rounding (a review read cos_asymmetry 1.0000002)
    from eqprop.metrics import example_cosines
    v = jnp.asarray(np.random.default_rng(0).normal(size=(64, 257)), jnp.float32) * 1e3
    assert all(-1.0 <= cosine(v[i], v[i]) <= 1.0 and -1.0 <= cosine(v[i], -v[i]) for i in range(64))
    assert float(jnp.max(example_cosines(v, v))) <= 1.0 and float(jnp.min(example_cosines(v, -v))) >= -1.0
