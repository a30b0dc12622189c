"""Tests of the paper experiments (``subset_rl.experiments``): smoke runs, learning, errors.

The device comes from ``SUBSET_RL_TEST_DEVICE`` (see ``conftest.py``). Everything here runs on
scikit-learn's digits in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from subset_rl import KSubsetPolicy, marginals
from subset_rl.estimators import loo_advantages
from subset_rl.experiments import (
    ESTIMATORS,
    PAPER_RESULTS,
    EstimatorConfig,
    FeatureSelectionConfig,
    RunResult,
    SubsetLayer,
    TrainConfig,
    load_splits,
    main,
    parse_estimators,
    summarize,
    train_feature_selection,
    write_outputs,
)
from subset_rl.experiments.runner import markdown_table

EXPERIMENTS = ("feature_selection", "vae", "knn", "ipcae")


@pytest.fixture
def one_thread():
    """The runner's ``--threads 1`` changes torch's global setting: restore it afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_splits("digits", val_size=300)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- smoke test
def test_quick_smoke_every_experiment_and_estimator(tmp_path, device, one_thread):
    out = tmp_path / "quick"
    status = main([
        "all", "--quick", "--steps", "6", "--eval-every", "3", "--vr-samples", "4",
        "--seeds", "0", "--device", str(device), "--out", str(out), "--no-progress",
        "--threads", "1",
    ])  # fmt: skip
    assert status == 0
    for name in ("results.csv", "results.md", "per_seed.csv", "config.json"):
        assert (out / name).is_file(), name
    rows = _read_csv(out / "results.csv")
    expected = {
        "feature_selection": set(ESTIMATORS) | {"random"},
        "vae": set(ESTIMATORS),
        "knn": set(ESTIMATORS),
        "ipcae": {"cae", "ipcae"},
    }
    for experiment, names in expected.items():
        got = {r["estimator"] for r in rows if r["experiment"] == experiment}
        assert got == names, experiment
    for row in rows:
        assert row["dataset"] == "digits"
        assert row["steps"] == "6"
        assert math.isfinite(float(row["mean"])), row
        assert float(row["seconds_per_step"]) > 0, row
    knn = [float(r["mean"]) for r in rows if r["experiment"] == "knn"]
    assert all(0.0 <= a <= 1.0 for a in knn)
    unique = [float(r["unique_percentage"]) for r in rows if r["experiment"] == "ipcae"]
    assert all(20.0 <= u <= 100.0 for u in unique)  # k = 5 selectors
    per_seed = _read_csv(out / "per_seed.csv")
    assert len(per_seed) == sum(len(v) for v in expected.values())
    for run in per_seed:
        steps = [int(s) for s in run["val_steps"].split()]
        values = [float(v) for v in run["val_values"].split()]
        assert steps == [0, 3, 6] and all(math.isfinite(v) for v in values)
    pngs = {p.name for p in out.glob("*.png")}
    for experiment, setting in (
        ("feature_selection", "k5"), ("vae", "dn10_k5"), ("knn", "d2_k10"), ("ipcae", "k5"),
    ):  # fmt: skip
        assert f"curves_{experiment}_digits_{setting}.png" in pngs
        assert f"timing_{experiment}_digits_{setting}.png" in pngs
    assert "unique_ipcae_digits_k5.png" in pngs
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    for label in ("SFESS+VR", "SIMPLE", "AIMLE", "IL", "IP-CAE", "Random (fixed)"):
        assert f"| {label} |" in md
    # merging the run's per_seed.csv gives back the same table
    assert main(["merge", str(out), "--out", str(tmp_path / "merged")]) == 0
    merged = _read_csv(tmp_path / "merged" / "results.csv")
    key = lambda r: (r["experiment"], r["estimator"], r["mean"], r["unique_percentage"])  # noqa: E731
    assert sorted(map(key, merged)) == sorted(map(key, rows))


# --------------------------------------------------------------------------- substance
def test_sfess_vr_feature_selection_beats_fixed_random_subset(digits, device, one_thread):
    """Learning the subset must beat a decoder trained on a fixed random subset.

    Seeds 0-4 all pass with margins 0.009-0.038 in validation BCE (0.014 for seed 0).
    """
    torch.set_num_threads(1)
    data = digits.to(device)
    config = FeatureSelectionConfig(
        k=5,
        train=TrainConfig(
            steps=250, lr=3e-2, eval_every=250, estimator=EstimatorConfig(vr_samples=16)
        ),
    )
    learned = train_feature_selection(data, "sfess_vr", config, seed=0, device=device)
    fixed = train_feature_selection(data, "random", config, seed=0, device=device)
    assert learned.val_values[-1] < fixed.val_values[-1] - 0.005
    assert learned.val_values[-1] < learned.val_values[0] - 0.2


def test_score_objective_matches_sfess_gradient_with_shared_rewards(device):
    """One loss per image shared by its ``d`` latent variables: the VAE case of the objective."""
    gen = torch.Generator(device=device).manual_seed(0)
    num, batch, d, n, k = 6, 3, 2, 5, 2
    logits = torch.randn(batch, d, n, device=device, generator=gen, requires_grad=True)
    weights = torch.randn(d, n, device=device, generator=gen)
    layer = SubsetLayer("sfess_vr", k, EstimatorConfig(vr_samples=num))
    draw = layer(logits, generator=gen)
    assert draw.z.shape == (num, batch, d, n)
    losses = (draw.z * weights).sum((-1, -2)) ** 2  # (S, B), nonlinear, black box
    objective = layer.objective(draw, losses)
    assert torch.allclose(objective, losses.mean())
    (grad,) = torch.autograd.grad(objective, logits)
    adv = loo_advantages(-losses)  # rewards are minus the losses
    pi = marginals(logits.detach(), k)
    expected = -(adv[..., None, None] * (draw.z - pi)).mean(0) / batch
    assert torch.allclose(grad, expected, atol=1e-5)


def test_eval_mode_uses_the_mode(device):
    logits = torch.tensor([[0.1, 2.0, -1.0, 3.0, 0.0]], device=device)
    for name in ESTIMATORS:
        layer = SubsetLayer(name, 2).eval()
        z = layer(logits).z
        assert torch.equal(z, KSubsetPolicy(logits, 2).mode.unsqueeze(0)), name


# --------------------------------------------------------------------------- tables
def test_tables_put_the_paper_number_next_to_the_measured_one(tmp_path):
    results = [
        RunResult("feature_selection", "mnist", "k=50", "sfess_vr", seed, 10,
                  "test BCE per pixel", value, 0.01, [0, 10], [0.7, value])
        for seed, value in ((0, 0.20), (1, 0.22))
    ]  # fmt: skip
    (row,) = summarize(results)
    assert row["paper"] == pytest.approx(0.132)
    assert row["mean"] == pytest.approx(0.21)
    assert row["std"] == pytest.approx(0.0141421, rel=1e-4)
    md = markdown_table([row])
    assert "| SFESS+VR | 0.2100 ± 0.0141 | 2 | 0.132 |" in md
    paths = write_outputs(results, tmp_path, command="test")
    assert paths["csv"].is_file() and paths["md"].is_file()
    assert (tmp_path / "curves_feature_selection_mnist_k50.png").is_file()


def test_paper_preset_covers_every_cell_of_the_paper(capsys):
    assert main(["paper", "--device", "cpu", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    for experiment, dataset, setting in PAPER_RESULTS:
        line = next(
            (ln for ln in plan.splitlines() if ln.startswith(f"{experiment} {dataset} {setting}:")),
            None,
        )
        assert line is not None, (experiment, dataset, setting)
        assert "seeds [0, 1, 2, 3, 4]" in line and "50000 steps" in line
        assert all(e in line for e in ESTIMATORS)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fs", "--quick", "--estimators", "nope"], "estimator: expected one of"),
        (["fs", "--dataset", "cifar"], "dataset: expected one of"),
        (["nonsense", "--quick"], "experiment: expected one of"),
        (["fs", "--quick", "--k", "65"], "k: expected 1 <= k <= n=64"),
        (["vae", "--quick", "--k", "11"], "k: expected 1 <= k <= n=10"),
        (["knn", "--quick", "--k", "200"], "k: expected 1 <= k <= n=128"),
        (["vae", "--quick", "--estimators", "random"], "feature_selection only"),
        (["fs", "--quick", "--vr-samples", "1"], "vr_samples: expected an int >= 2"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(tmp_path), "--no-progress"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_api_errors(digits):
    with pytest.raises(ValueError, match="estimator: expected one of"):
        parse_estimators(["sfess", "bogus"])
    assert parse_estimators(["all"]) == list(ESTIMATORS)
    assert parse_estimators(["SFESS-VR", "i-mle", "random"]) == ["sfess_vr", "imle", "random"]
    with pytest.raises(ValueError, match="k: expected 1 <= k <= n=64"):
        train_feature_selection(digits, "simple", FeatureSelectionConfig(k=65))
    with pytest.raises(ValueError, match="dataset: expected one of"):
        load_splits("imagenet")
    with pytest.raises(ValueError, match="val_size"):
        load_splits("digits", val_size=5000)
