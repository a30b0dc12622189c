"""Tests of the batched torch objectives under the environments (device from
``SUBSET_RL_TEST_DEVICE``, default ``cpu``)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.linalg
import torch

import subset_rl.envs as E
from subset_rl.envs import ObjectiveError

DEVICE = torch.device(os.environ.get("SUBSET_RL_TEST_DEVICE", "cpu"))


def random_k_hot(
    samples: int, batch: int, n: int, k: int, seed: int = 0, allowed: np.ndarray | None = None
) -> torch.Tensor:
    """Uniform k-hot actions of shape (samples, batch, n) over the allowed items."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(samples, batch, n, generator=g)
    if allowed is not None:
        keys[..., ~torch.as_tensor(allowed)] = -1.0
    z = torch.zeros(samples, batch, n)
    z.scatter_(-1, keys.topk(k, dim=-1).indices, 1.0)
    return z.to(DEVICE)


def ref_sum(z: np.ndarray) -> float:
    return float(z @ np.arange(1.0, z.shape[0] + 1.0) - 0.5 * z[0] * z[-1])


def ref_sum_batched(z: torch.Tensor) -> torch.Tensor:
    w = torch.arange(1.0, z.shape[-1] + 1.0, dtype=z.dtype, device=z.device)
    return z @ w - 0.5 * z[..., 0] * z[..., -1]


OBJECTIVES = {
    "sensor": lambda: E.SensorPlacementObjective(
        4, shape=(8, 8), rank=4, n_train=60, n_test=20, noise_std=0.05, forbidden=[0, 5],
        sensor_cost=0.01, device=DEVICE
    ),
    "features": lambda: E.FeatureAcquisitionObjective(
        "digits", 6, free_features=[10, 20], reward="log_prob", device=DEVICE
    ),
    "knn": lambda: E.KNNVotingObjective("digits", 15, 4, device=DEVICE),
    "knn_test": lambda: E.KNNVotingObjective(
        "wine", 12, 4, split="test", reward="fraction", tie_break="lowest", device=DEVICE
    ),
    "blackbox": lambda: E.BlackBoxObjective(ref_sum, 7, 3, device=DEVICE),
    "blackbox_batched": lambda: E.BlackBoxObjective(
        ref_sum_batched, 7, 3, batched=True, forbidden=[2], device=DEVICE
    ),
}


@pytest.fixture(scope="module", params=sorted(OBJECTIVES))
def objective(request: pytest.FixtureRequest) -> E.SubsetObjective:
    return OBJECTIVES[request.param]()


# ------------------------------------------------------------------------------ generic checks
def test_shapes_device_and_generator_determinism(objective: E.SubsetObjective) -> None:
    ctx_a = objective.sample_context(5, generator=torch.Generator().manual_seed(3))
    ctx_b = objective.sample_context(5, generator=torch.Generator().manual_seed(3))
    assert ctx_a.obs.shape == (5, objective.obs_dim) and ctx_a.batch_size == 5
    assert ctx_a.obs.device.type == DEVICE.type
    torch.testing.assert_close(ctx_a.obs, ctx_b.obs, rtol=0, atol=0)
    z = random_k_hot(3, 5, objective.n, objective.k, allowed=objective.allowed_np)
    values = objective.evaluate(z, ctx_a)
    assert values["reward"].shape == (3, 5) and values["reward"].device.type == DEVICE.type
    assert values["reward"].dtype == objective.dtype
    assert torch.isfinite(values["reward"]).all()
    assert ("success" in values) == objective.has_success
    torch.testing.assert_close(objective(z, ctx_b), values["reward"], rtol=0, atol=0)
    for dtype in (torch.bool, torch.int64, torch.float64):
        torch.testing.assert_close(objective(z.to(dtype), ctx_a), values["reward"])


def test_batched_scores_equal_a_loop_of_single_calls(objective: E.SubsetObjective) -> None:
    ctx = objective.sample_context(4, generator=torch.Generator().manual_seed(0))
    z = random_k_hot(3, 4, objective.n, objective.k, seed=1, allowed=objective.allowed_np)
    batched = objective(z, ctx)
    single = torch.stack([
        torch.stack([objective(z[s : s + 1, b : b + 1], ctx.select(b))[0, 0] for b in range(4)])
        for s in range(3)
    ])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_env_step_matches_objective(objective: E.SubsetObjective) -> None:
    env = E.SubsetEnv(objective)
    env.reset(seed=2)
    ctx = env._context
    assert ctx is not None
    action = env.action_space.sample()
    expected = objective(torch.as_tensor(action).view(1, 1, -1), ctx)[0, 0].item()
    assert env.step(action)[1] == pytest.approx(expected)


def test_bad_z_raises_expected_vs_found(objective: E.SubsetObjective) -> None:
    n, k = objective.n, objective.k
    ctx = objective.sample_context(2)
    z = random_k_hot(1, 2, n, k, allowed=objective.allowed_np)
    with pytest.raises(TypeError, match="z: expected a torch.Tensor"):
        objective(z.cpu().numpy(), ctx)
    with pytest.raises(ValueError, match=rf"expected shape \(samples, 2, {n}\), found \(2, {n}\)"):
        objective(z[0], ctx)
    match = rf"expected shape \(samples, 2, {n}\), found \(1, 3, {n}\)"
    with pytest.raises(ValueError, match=match):
        objective(torch.cat([z, z[:, :1]], dim=1), ctx)
    bad = z.clone()
    bad[0, 1, torch.nonzero(bad[0, 1])[0]] = 0.0
    match = rf"exactly k={k} ones.*found {k - 1} at \(sample, batch\) index \(0, 1\)"
    with pytest.raises(ValueError, match=match):
        objective(bad, ctx)
    half = z.clone()
    half[0, 0, torch.nonzero(half[0, 0])[0]] = 0.5
    with pytest.raises(ValueError, match=r"values in \{0, 1\}, found 0.5"):
        objective(half, ctx)
    with pytest.raises(ValueError, match="batch_size"):
        objective.sample_context(0)
    with pytest.raises(TypeError, match="generator"):
        objective.sample_context(2, generator=0)


def test_forbidden_items_are_rejected_and_masked() -> None:
    obj = OBJECTIVES["sensor"]()
    assert obj.logit_mask()[[0, 5]].isinf().all() and obj.logit_mask()[1] == 0
    ctx = obj.sample_context(1)
    z = torch.zeros(1, 1, obj.n, device=DEVICE)
    z[..., [0, 1, 2, 3]] = 1
    with pytest.raises(ValueError, match=r"forbidden item 0 selected"):
        obj(z, ctx)


def test_context_select_and_to() -> None:
    obj = OBJECTIVES["knn"]()
    ctx = obj.sample_context(6, generator=torch.Generator().manual_seed(0))
    sub = ctx.select([4, 1])
    assert isinstance(sub, E.KNNContext) and sub.batch_size == 2
    torch.testing.assert_close(sub.candidates[1], ctx.candidates[1])
    assert ctx.to("cpu").query.device.type == "cpu"
    with pytest.raises(ValueError, match=r"index: expected values in \[0, 5\]"):
        ctx.select(6)


# ----------------------------------------------------------------------------- sensor placement
def test_gaussian_process_fields_statistics_and_rank() -> None:
    fields = E.gaussian_process_fields(400, (16, 12), 0.2, seed=0)
    assert fields.shape == (400, 16, 12)
    assert abs(fields.mean()) < 0.05 and abs(fields.var() - 1.0) < 0.1
    np.testing.assert_array_equal(fields, E.gaussian_process_fields(400, (16, 12), 0.2, seed=0))

    def energy_in_10_modes(ell: float) -> float:
        x = E.gaussian_process_fields(150, (12, 12), ell, seed=1).reshape(150, -1)
        s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
        return float(s[:10].sum() / s.sum())

    assert energy_in_10_modes(0.1) < energy_in_10_modes(0.2) < energy_in_10_modes(0.3)


def test_pod_basis_is_orthonormal() -> None:
    x = np.random.default_rng(0).standard_normal((30, 12))
    mean, basis, s = E.pod_basis(x, rank=5)
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-12)
    assert (np.diff(s) <= 0).all()


@pytest.mark.parametrize(("k", "placement"), [(6, "qr"), (9, "qr"), (6, "random"), (11, "random")])
def test_reconstruction_is_exact_in_the_span_when_k_at_least_r(k: int, placement: str) -> None:
    obj = E.SensorPlacementObjective(
        k, shape=(10, 10), rank=6, n_train=80, n_test=10, device=DEVICE, dtype=torch.float64
    )
    coef = torch.randn(7, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fields = obj.mean + coef.to(DEVICE) @ obj.basis.T
    if placement == "qr":
        z = torch.as_tensor(obj.qr_placement(), device=DEVICE).view(1, 1, -1).expand(1, 7, -1)
    else:
        z = random_k_hot(5, 7, obj.n, k, seed=k).double()
    error = obj.relative_error(z, fields)
    assert error.max() < 1e-8
    torch.testing.assert_close(obj.reconstruct(z, fields), fields.expand(z.shape[0], -1, -1))


def test_reconstruction_formula_matches_numpy() -> None:
    obj = E.SensorPlacementObjective(3, shape=(6, 6), rank=5, n_train=40, n_test=5,
                                     dtype=torch.float64, device=DEVICE)
    psi, mu = obj.basis.cpu().numpy(), obj.mean.cpu().numpy()
    x = obj.test_fields[0].cpu().numpy()
    cells = np.array([2, 17, 30])
    z = torch.zeros(1, 1, obj.n, dtype=torch.float64)
    z[0, 0, cells] = 1
    expected = mu + psi @ np.linalg.pinv(psi[cells]) @ (x[cells] - mu[cells])
    got = obj.reconstruct(z.to(DEVICE), obj.test_fields[:1])[0, 0].cpu().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_qr_beats_mean_of_random_on_default_field() -> None:
    obj = E.SensorPlacementObjective(device=DEVICE)
    fields = obj.test_fields
    m = fields.shape[0]
    qr = torch.as_tensor(obj.qr_placement(), device=DEVICE).view(1, 1, -1).expand(1, m, -1)
    qr_error = obj.relative_error(qr, fields).mean()
    random = torch.as_tensor(obj.random_placement(30, rng=0), device=DEVICE)
    random_error = obj.relative_error(random[:, None, :].expand(-1, m, -1), fields).mean()
    assert qr_error < random_error
    assert qr_error < obj.success_threshold


def test_qr_placement_matches_scipy_and_respects_forbidden() -> None:
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((20, 4)))[0]
    _, _, pivots = scipy.linalg.qr(basis.T, pivoting=True)
    z = E.qr_placement(basis, 4)
    assert z.dtype == np.int8 and z.sum() == 4
    assert set(np.flatnonzero(z)) == set(pivots[:4].tolist())
    forbidden = pivots[:2]
    z = E.qr_placement(basis, 4, forbidden=forbidden)
    assert z.sum() == 4 and not z[forbidden].any()
    draws = E.random_placement(20, 3, forbidden=forbidden, size=30, rng=0)
    assert draws.shape == (30, 20) and (draws.sum(1) == 3).all() and not draws[:, forbidden].any()


def test_sensor_noise_is_common_within_a_context_and_costs_add() -> None:
    obj = OBJECTIVES["sensor"]()
    ctx = obj.sample_context(3, generator=torch.Generator().manual_seed(1))
    assert ctx.noise.abs().sum() > 0
    z = random_k_hot(2, 3, obj.n, obj.k, allowed=obj.allowed_np)
    z = torch.cat([z, z])  # the same placements twice: the same noise, the same reward
    values = obj.evaluate(z, ctx)
    torch.testing.assert_close(values["reward"][:2], values["reward"][2:])
    torch.testing.assert_close(values["reward"], -values["relative_error"] - 0.01 * obj.k)
    noiseless = obj.relative_error(z, ctx.fields)
    assert not torch.allclose(noiseless, values["relative_error"])


def test_sensor_real_fields_option() -> None:
    data = np.random.default_rng(0).standard_normal((40, 5, 4))
    obj = E.SensorPlacementObjective(3, fields=data, rank=3, test_fraction=0.25)
    assert obj.shape == (5, 4) and obj.n == 20
    assert obj.test_fields.shape == (10, 20) and obj.train_fields.shape == (30, 20)
    with pytest.raises(ValueError, match="fields: expected a numeric array"):
        E.SensorPlacementObjective(3, fields=np.zeros(5))
    with pytest.raises(ValueError, match=r"rank: expected an int in \[1, "):
        E.SensorPlacementObjective(3, fields=data, rank=100)


# -------------------------------------------------------------------------- feature acquisition
def test_feature_acquisition_classifier_uses_acquired_features() -> None:
    obj = E.FeatureAcquisitionObjective("digits", 64, device=DEVICE)
    everything = torch.ones(1, obj.labels.shape[0], 64, device=DEVICE)
    ctx = E.FeatureContext(obs=torch.zeros(obj.labels.shape[0], 1), index=torch.arange(
        obj.labels.shape[0]), features=obj.features, label=obj.labels)
    accuracy_all = obj(everything, ctx.to(DEVICE)).mean().item()
    assert accuracy_all > 0.85
    few = E.FeatureAcquisitionObjective("digits", 3, device=DEVICE)
    z = random_k_hot(4, ctx.batch_size, 64, 3, seed=2)
    accuracy_few = few(z, ctx.to(DEVICE)).mean().item()
    assert 0.1 < accuracy_few < accuracy_all
    proba = obj.predict_proba(z[:1], obj.features.cpu().numpy()[None])
    np.testing.assert_allclose(proba.sum(-1), 1.0, atol=1e-9)


def test_feature_acquisition_options() -> None:
    obj = OBJECTIVES["features"]()
    ctx = obj.sample_context(8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ctx.obs, ctx.features[:, [10, 20]])
    assert obj.obs_low == 0.0 and obj.obs_high == 16.0
    z = random_k_hot(2, 8, 64, 6, allowed=obj.allowed_np)
    values = obj.evaluate(z, ctx)
    assert (values["reward"] <= 0).all()
    torch.testing.assert_close(values["reward"], values["log_prob"])
    wine = E.FeatureAcquisitionObjective("wine", 4, feature_cost=np.linspace(0, 0.1, 13),
                                        classifier_kwargs={"max_iter": 10})
    ctx = wine.sample_context(5)
    z = random_k_hot(3, 5, 13, 4).cpu()
    values = wine.evaluate(z, ctx)
    torch.testing.assert_close(values["cost"], z @ torch.linspace(0, 0.1, 13))
    assert set(values["success"].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="free_features"):
        E.FeatureAcquisitionObjective("wine", 2, free_features=[20])
    with pytest.raises(TypeError, match="classifier: expected a fitted classifier"):
        E.FeatureAcquisitionObjective("wine", 2, classifier=object())


def test_feature_acquisition_accepts_arrays_and_caches_the_classifier() -> None:
    X, y = np.random.default_rng(0).standard_normal((60, 5)), np.repeat(["a", "b"], 30)
    X[y == "a", 0] += 3.0
    a = E.FeatureAcquisitionObjective((X, y), 2, classifier_kwargs={"max_iter": 5})
    b = E.FeatureAcquisitionObjective((X, y), 2, classifier_kwargs={"max_iter": 5})
    assert a.classifier is b.classifier and a.n_classes == 2


# ---------------------------------------------------------------------------------- kNN voting
def test_vote_reward_tie_rules() -> None:
    counts = torch.tensor([[2.0, 2.0, 1.0], [0.0, 3.0, 2.0], [1.0, 1.0, 1.0]])
    label = torch.tensor([1, 1, 2])
    torch.testing.assert_close(E.vote_reward(counts, label, "split"), torch.tensor([0.5, 1, 1 / 3]))
    torch.testing.assert_close(E.vote_reward(counts, label, "lowest"), torch.tensor([0.0, 1, 0]))
    with pytest.raises(ValueError, match="tie_break"):
        E.vote_reward(counts, label, "random")


def test_knn_rewards_by_hand() -> None:
    obj = OBJECTIVES["knn"]()
    ctx = obj.sample_context(6, generator=torch.Generator().manual_seed(4))
    assert not (ctx.candidate_index == ctx.query_index[:, None]).any()
    torch.testing.assert_close(ctx.obs[:, :64], ctx.query)
    torch.testing.assert_close(ctx.obs[:, 64:].reshape(6, 15, 64), ctx.candidates)
    z = random_k_hot(3, 6, 15, 4, seed=9)
    values = obj.evaluate(z, ctx)
    for s in range(3):
        for b in range(6):
            chosen = ctx.candidate_labels[b][z[s, b].bool()].tolist()
            votes = np.bincount(chosen, minlength=10)
            winners = np.flatnonzero(votes == votes.max())
            truth = int(ctx.query_label[b])
            expected = (truth in winners) / len(winners)
            assert values["majority"][s, b].item() == pytest.approx(expected)
            assert values["fraction"][s, b].item() == pytest.approx(chosen.count(truth) / 4)


def test_knn_choosing_same_label_neighbours_wins() -> None:
    obj = OBJECTIVES["knn"]()
    ctx = obj.sample_context(64, generator=torch.Generator().manual_seed(0))
    same = (ctx.candidate_labels == ctx.query_label[:, None]).float()
    keys = same + 0.01 * torch.rand(same.shape, generator=torch.Generator().manual_seed(1)).to(
        DEVICE
    )
    z = torch.zeros(1, 64, obj.n, device=DEVICE).scatter_(-1, keys.topk(4).indices[None], 1.0)
    oracle = obj(z, ctx).mean()
    random = obj(random_k_hot(8, 64, obj.n, 4), ctx).mean()
    assert oracle > random + 0.3


def test_evaluate_knn_matches_sklearn_and_restores_mode() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    obj = E.KNNVotingObjective("digits", 10, 1, device=DEVICE)
    train_x, train_y = obj.train_features.cpu().numpy(), obj.train_labels.cpu().numpy()
    test_x, test_y = obj.test_features.cpu().numpy(), obj.test_labels.cpu().numpy()
    expected = KNeighborsClassifier(1).fit(train_x, train_y).score(test_x, test_y)
    assert obj.evaluate_embedding() == pytest.approx(expected, abs=1e-9)
    assert obj.evaluate_embedding() > 0.9
    net = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.Dropout(0.5)).to(DEVICE)
    net.train()
    first = obj.evaluate_embedding(net, k=3, batch_size=100)
    assert net.training and first == obj.evaluate_embedding(net, k=3)  # eval mode: no dropout
    with pytest.raises(ValueError, match="k: expected an int"):
        E.evaluate_knn(None, train_x, train_y, test_x, test_y, k=len(train_x) + 1)


# ------------------------------------------------------------------------------------ black box
def test_blackbox_batched_and_looped_agree() -> None:
    looped = E.BlackBoxObjective(ref_sum, 7, 3, device=DEVICE)
    batched = E.BlackBoxObjective(ref_sum_batched, 7, 3, batched=True, device=DEVICE)
    ctx = looped.sample_context(5)
    z = random_k_hot(4, 5, 7, 3)
    torch.testing.assert_close(looped(z, ctx), batched(z, ctx))


def test_blackbox_errors() -> None:
    ctx = E.BlackBoxObjective(ref_sum, 4, 2).sample_context(2)
    z = torch.tensor([[[1.0, 1, 0, 0], [0, 0, 1, 1]]], device=DEVICE)
    wrong_shape = E.BlackBoxObjective(lambda z: z.sum(-1, keepdim=True), 4, 2, batched=True)
    with pytest.raises(ObjectiveError, match=r"returned shape \(1, 2, 1\); expected \(1, 2\)"):
        wrong_shape(z, ctx)
    raising = E.BlackBoxObjective(lambda z: z.foo(), 4, 2, batched=True)
    with pytest.raises(ObjectiveError, match="raised AttributeError.*batch of actions"):
        raising(z, ctx)
    nan_second = E.BlackBoxObjective(lambda z: z[..., 3] / (1 - z[..., 2]), 4, 2, batched=True)
    match = r"inf.*items \[2, 3\] at \(sample, batch\) index \(0, 1\)"
    with pytest.raises(ObjectiveError, match=match):
        nan_second(z, ctx)
    succeed = E.BlackBoxObjective(ref_sum, 4, 2, success_threshold=5.0)
    assert succeed.has_success
    success = succeed.evaluate(z.cpu(), ctx)["success"]
    torch.testing.assert_close(success, torch.tensor([[0.0, 1.0]]))
