"""Issue 13: merge of older records, the paper protocol, the stored tables, presets, timing.

Everything here is fast (no training beyond a few steps on scikit-learn's digits).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from subset_rl import marginals
from subset_rl.experiments import (
    PAPER_RESULTS,
    EstimatorConfig,
    RunResult,
    SubsetLayer,
    TrainConfig,
    VAEConfig,
    load_splits,
    main,
    train_vae,
)
from subset_rl.experiments import feature_selection as fs
from subset_rl.experiments.common import (
    PAPER_CELLS,
    PAPER_ESTIMATORS,
    PAPER_MISSING,
    make_mlp,
    paper_value,
)
from subset_rl.experiments.protocol import (
    approx_kl_to_uniform,
    check_protocol,
    paper_imle_topk,
    paper_simple_logits,
    paper_simple_sample,
)
from subset_rl.experiments.runner import plot_timing, timing_ratios

OLD_HEADER = (
    "experiment,dataset,setting,estimator,seed,steps,metric,value,seconds_per_step,"
    "unique_percentage,val_steps,val_values"
)


@pytest.fixture(scope="module")
def digits():
    return load_splits("digits", val_size=300)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- merge (item 6)
def test_merge_reads_records_without_the_unique_curve_column(tmp_path):
    """``per_seed.csv`` written before the IP-CAE curve column existed used to crash ``merge``."""
    src = tmp_path / "old"
    src.mkdir()
    (src / "per_seed.csv").write_text(
        OLD_HEADER + "\n"
        "ipcae,mnist,k=50,cae,0,200,test BCE per pixel,0.37,0.0067,92.0,0 100 200,0.7 0.5 0.37\n"
        "ipcae,mnist,k=50,ipcae,0,200,test BCE per pixel,0.34,0.0152,94.0,0 100 200,0.7 0.4 0.34\n"
        'knn,mnist,"d=2,k=10",sfess,0,200,test k-NN accuracy,0.48,0.03,,0 100 200,0.1 0.3 0.48\n'
    )
    out = tmp_path / "merged"
    assert main(["merge", str(src), "--out", str(out)]) == 0
    rows = _read_csv(out / "results.csv")
    assert {(r["experiment"], r["estimator"]) for r in rows} == {
        ("ipcae", "cae"),
        ("ipcae", "ipcae"),
        ("knn", "sfess"),
    }
    assert (out / "curves_ipcae_mnist_k50.png").is_file()
    assert not (out / "unique_ipcae_mnist_k50.png").exists()  # no curve recorded: no plot


# --------------------------------------------------------------------------- protocol (item 1)
def test_protocol_is_checked():
    with pytest.raises(ValueError, match="protocol: expected one of"):
        SubsetLayer("sfess", 2, EstimatorConfig(protocol="papr"))
    with pytest.raises(ValueError, match="protocol: expected one of"):
        check_protocol(None)


def test_bad_protocol_on_the_command_line_exits_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["fs", "--quick", "--protocol", "nope", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "--protocol" in capsys.readouterr().err


@pytest.mark.parametrize("estimator", ["sfess", "sfess_vr"])
def test_paper_protocol_scores_gumbel_samples(estimator):
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    exact = SubsetLayer(estimator, 5)(logits).dist
    paper = SubsetLayer(estimator, 5, EstimatorConfig(protocol="paper"))(logits).dist
    assert exact is not None and exact.sampler == "exact"
    assert paper is not None and paper.sampler == "gumbel"


def test_paper_simple_logits_are_logit_of_exp_scores_for_log_probabilities():
    scores = torch.log(torch.tensor([0.1, 0.5, 0.9, 0.3], dtype=torch.float64))
    expected = torch.logit(scores.exp())
    assert torch.allclose(paper_simple_logits(scores), expected)
    # positive scores (not log-probabilities) use |s|, as the paper's log1mexp does
    s = torch.tensor([1.0, -1.0], dtype=torch.float64)
    assert torch.allclose(paper_simple_logits(s), s - torch.log1p(-torch.exp(-s.abs())))


def test_paper_simple_backward_is_the_jacobian_of_its_marginals():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    weights = torch.randn(2, 8, dtype=torch.float64, generator=gen)
    z = paper_simple_sample(scores, 3, generator=gen)
    assert torch.equal(z.detach().sum(-1), torch.full((2,), 3.0, dtype=torch.float64))
    (grad,) = torch.autograd.grad((z * weights).sum(), scores)
    pi = marginals(paper_simple_logits(scores), 3)
    (expected,) = torch.autograd.grad((pi * weights).sum(), scores)
    assert torch.allclose(grad, expected)
    # and it is not our SIMPLE's backward (marginals of the raw scores)
    (ours,) = torch.autograd.grad((marginals(scores, 3) * weights).sum(), scores)
    assert not torch.allclose(grad, ours, atol=1e-3)


def test_paper_imle_perturbs_with_gumbel_noise():
    """Top-1 of ``l + G`` with Gumbel ``G`` is softmax-distributed (the Gumbel-max trick)."""
    logits = torch.tensor([0.0, 1.0, 2.0])
    gen = torch.Generator().manual_seed(0)
    z = paper_imle_topk(logits.expand(20_000, 3), 1, generator=gen)
    freq = z.mean(0)
    assert torch.allclose(freq, torch.softmax(logits, -1), atol=0.015)
    with pytest.raises(ValueError):
        paper_imle_topk(logits, 1, lambda_=0.0)


def test_approx_kl_is_the_categorical_kl_to_uniform():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [5.0, -5.0, -5.0, -5.0]])
    kl = approx_kl_to_uniform(logits)
    p = torch.softmax(logits[1], -1)
    assert kl[0].item() == pytest.approx(0.0, abs=1e-6)
    assert kl[1].item() == pytest.approx(float((p * (p * 4).log()).sum()), rel=1e-5)


def test_paper_protocol_vae_reports_the_approximate_kl(digits):
    config = VAEConfig(
        d=10,
        n=10,
        k=5,
        train=TrainConfig(steps=2, eval_every=2, estimator=EstimatorConfig(protocol="paper")),
    )
    paper = train_vae(digits, "stgs", config, seed=0)
    assert paper.protocol == "paper"
    config.train.estimator.protocol = "exact"
    exact = train_vae(digits, "stgs", config, seed=0)
    # after two steps the posterior is nearly uniform: exact KL (summed, k-subsets) is larger
    assert paper.value < exact.value


def test_sparse_first_layer_matches_the_dense_decoder():
    torch.manual_seed(0)
    decoder = make_mlp([64, 20, 64])
    x = torch.rand(16, 64)
    mask = torch.zeros(4, 64)
    for row in mask:
        row[torch.randperm(64)[:5]] = 1.0
    sparse = fs._selected_first_layer(decoder, x, mask)
    dense = decoder(mask.unsqueeze(1) * x.unsqueeze(0))
    assert sparse is not None and torch.allclose(sparse, dense, atol=1e-6)
    assert fs._selected_first_layer(decoder, x, mask.requires_grad_()) is None  # pathwise
    assert fs._selected_first_layer(decoder, x, torch.full((4, 64), 0.5)) is None  # relaxed


# --------------------------------------------------------------------------- tables (item 2)
def test_stored_paper_table_has_all_60_numbers_or_a_reason():
    assert len(PAPER_CELLS) == 10 and set(PAPER_RESULTS) == set(PAPER_CELLS)
    entries = [(cell, e, v) for cell, row in PAPER_RESULTS.items() for e, v in row.items()]
    assert len(entries) == 60
    for cell, estimator, value in entries:
        assert estimator in PAPER_ESTIMATORS
        assert value is None or (isinstance(value, float) and value > 0), (cell, estimator)
    assert "PDF" in PAPER_MISSING
    assert math.isnan(paper_value("vae", "fashion_mnist", "d=n=10,k=5", "sfess"))


@pytest.mark.parametrize("protocol", ["exact", "paper"])
def test_paper_preset_produces_every_stored_cell(protocol, capsys):
    assert main(["paper", "--dry-run", "--protocol", protocol]) == 0
    plan = capsys.readouterr().out.splitlines()
    for (experiment, dataset, setting), row in PAPER_RESULTS.items():
        prefix = f"{experiment} {dataset} {setting}: protocol {protocol}:"
        lines = [ln for ln in plan if ln.startswith(prefix)]
        assert len(lines) == 1, (experiment, dataset, setting)
        estimators = lines[0].split(": ", 2)[2].split(" x ")[0].split(", ")
        for estimator in row:
            assert estimator in estimators, (experiment, dataset, setting, estimator)


def test_reduced_preset_plan(capsys):
    assert main(["reduced", "--dry-run"]) == 0
    plan = capsys.readouterr().out
    for protocol in ("exact", "paper"):
        for head in ("knn mnist d=2,k=10", "feature_selection mnist k=50",
                     "feature_selection mnist k=30", "vae mnist d=n=10,k=5"):  # fmt: skip
            assert f"{head}: protocol {protocol}:" in plan
    assert "seeds [0, 1, 2]" in plan and "1000 steps" in plan
    knn_paper = next(
        ln for ln in plan.splitlines() if ln.startswith("knn mnist d=2,k=10: protocol paper")
    )
    assert "gs," not in knn_paper and "sfess_vr" in knn_paper


# --------------------------------------------------------------------------- timing (item 5)
def _timed(estimator: str, seed: int, sec: float, protocol: str = "exact") -> RunResult:
    return RunResult(
        "vae", "mnist", "d=n=10,k=5", estimator, seed, 10, "test BCE + KL (nats)", 100.0, sec,
        [0, 10], [200.0, 100.0], protocol=protocol,
    )  # fmt: skip


def test_timing_figure_from_synthetic_records(tmp_path):
    results = [
        _timed("stgs", 0, 0.010), _timed("stgs", 1, 0.030),
        _timed("sfess_vr", 0, 0.050), _timed("sfess_vr", 1, 0.070),
        _timed("sfess_vr", 0, 0.090, "paper"),
    ]  # fmt: skip
    rows = timing_ratios(results)
    by = {(r["protocol"], r["estimator"]): r for r in rows}
    assert by[("exact", "stgs")]["ms_per_step"] == pytest.approx(20.0)
    assert by[("exact", "sfess_vr")]["ratio"] == pytest.approx(3.0)
    assert math.isnan(by[("paper", "sfess_vr")]["ratio"])  # no STGS in that cell
    path = plot_timing(results, tmp_path / "fig" / "timing.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="at least one run"):
        timing_ratios([])
    with pytest.raises(ValueError, match="seconds_per_step"):
        timing_ratios([_timed("stgs", 0, float("nan"))])
