"""Differential privacy core (meddistill/dp.py, distill/dpdm.py): per-sample gradients, clipping,
noise, Poisson sampling, accounting, DP experts' resume, the sealed train split and DP-DM.
Tiny tensors on the CPU; the accountant calls (Opacus) are the slow part and run once each."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meddistill import dp
from meddistill.augment import DSAConfig
from meddistill.distill import dpdm
from meddistill.errors import ConfigError, MeddistillError, PrivacyError
from meddistill.nets import FlatParams, NetSpec, create_model, flatten_params

SHAPE = (1, 8, 8)
SPEC = NetSpec(name="convnet", width=4, depth=1)
FAST = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tiny_net(seed: int = 0, classes: int = 3, spec: NetSpec = SPEC) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(spec, SHAPE, classes)


def tiny_data(n: int, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(classes, (n,), generator=g)


# ---------------------------------------------------------------- per-sample gradients, clipping, noise


@FAST
@given(n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_per_sample_grads_equal_a_loop_over_examples(n, seed):
    net = tiny_net(seed)
    x, y = tiny_data(n, seed=seed)
    spec = FlatParams.of(net)
    got = dp.per_sample_grads(net, spec, flatten_params(net), x, y)
    want = []
    for i in range(n):
        net.zero_grad()
        F.cross_entropy(net(x[i : i + 1]), y[i : i + 1]).backward()
        want.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    assert got.shape == (n, spec.total)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-6)


@FAST
@given(
    rows=st.integers(1, 20),
    cols=st.integers(1, 50),
    scale=st.floats(1e-4, 1e4),
    max_norm=st.floats(1e-2, 10),
    seed=st.integers(0, 2**16),
)
def test_every_clipped_row_has_norm_at_most_c_and_short_rows_keep_their_direction(rows, cols, scale, max_norm, seed):
    g = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    clipped = dp.clip_rows(g, max_norm)
    assert (clipped.norm(dim=1) <= max_norm).all()
    cos = F.cosine_similarity(clipped, g, dim=1)
    assert torch.allclose(cos, torch.ones_like(cos))
    short = g.norm(dim=1) <= max_norm / 2
    torch.testing.assert_close(clipped[short], g[short], rtol=1e-5, atol=0)


def test_clipping_holds_for_real_per_sample_gradients():
    net = tiny_net(1)
    x, y = tiny_data(16, seed=1)
    grads = dp.per_sample_grads(net, FlatParams.of(net), flatten_params(net), x * 50, y)
    assert (grads.norm(dim=1) > 0.1).all()  # the clip below binds
    assert (dp.clip_rows(grads, 0.1).norm(dim=1) <= 0.1).all()


def test_noise_on_an_empty_batch_has_std_sigma_c_over_the_expected_batch():
    net = tiny_net(2)
    sigma, c, expected = 1.7, 0.5, 8.0
    g = torch.Generator().manual_seed(3)
    x, y = tiny_data(0)
    draws = torch.cat([dp.noisy_gradient(net, flatten_params(net), x, y, c, sigma, expected, g) for _ in range(20)])
    assert draws.numel() > 2000
    std = float((draws * expected).std())
    assert abs(std - sigma * c) < 0.05 * sigma * c
    assert abs(float(draws.mean() * expected)) < 0.05 * sigma * c


def test_noisy_gradient_without_noise_is_the_clipped_sum_over_the_expected_batch():
    net = tiny_net(4)
    x, y = tiny_data(10, seed=4)
    flat = flatten_params(net)
    got = dp.noisy_gradient(net, flat, x, y, 0.2, 0.0, 5.0, torch.Generator().manual_seed(0), chunk=3)
    want = dp.clip_rows(dp.per_sample_grads(net, FlatParams.of(net), flat, x, y), 0.2).sum(0) / 5.0
    torch.testing.assert_close(got, want)


def test_batch_norm_is_refused():
    net = tiny_net(spec=NetSpec(name="convnet", width=4, depth=1, norm="batch"))
    with pytest.raises(ConfigError, match="per-sample"):
        dp.check_per_sample(net)


# ---------------------------------------------------------------- Poisson sampling


def test_poisson_batches_average_q_n_and_can_be_empty():
    g = torch.Generator().manual_seed(0)
    n, q = 1000, 0.05
    sizes = torch.tensor([len(dp.poisson_sample(n, q, g)) for _ in range(400)], dtype=torch.float64)
    assert abs(float(sizes.mean()) - q * n) < 2.0  # standard error ~0.34
    assert float(sizes.std()) > 3  # variable: binomial std ~6.9
    small = [len(dp.poisson_sample(5, 0.1, g)) for _ in range(200)]
    assert 0 in small and max(small) > 0
    idx = dp.poisson_sample(n, q, g)
    assert idx.unique().numel() == idx.numel() and (idx < n).all()  # each example at most once


def test_poisson_schedule_follows_opacus():
    assert dp.poisson_schedule(4708, 256) == (1 / 19, 19)
    assert dp.poisson_schedule(10, 256) == (1.0, 1)
    assert dp.total_steps(5, 10, 19) == 950


# ---------------------------------------------------------------- accounting


@pytest.mark.parametrize(
    ("n", "delta"), [(4708, 2e-5), (546, 1e-4), (60000, 1e-6), (1000, 1e-4), (1, 0.1), (7, 1e-2), (99999, 1e-6)]
)
def test_default_delta_is_a_tenth_of_1_over_n_rounded_down_to_one_digit(n, delta):
    assert dp.default_delta(n) == delta
    assert dp.default_delta(n) <= 1 / (10 * n) < 1 / n


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 10**7))
def test_default_delta_has_one_significant_digit_and_stays_below_a_tenth_of_1_over_n(n):
    d = dp.default_delta(n)
    assert d <= 1 / (10 * n) * (1 + 1e-12) and d > 1 / (100 * n)
    assert float(f"{d:.0e}") == d


@pytest.fixture(scope="module")
def rdp_plan():
    return dp.DPSettings.plan(4.0, 1e-4, 1.0, 0.1, 200, "rdp")


def test_calibrated_noise_spends_the_target_within_opacus_tolerance(rdp_plan):
    s = rdp_plan
    assert s.target_epsilon == 4.0 and s.accountant == "rdp" and s.noise_multiplier > 0
    assert 4.0 - 0.01 <= s.epsilon <= 4.0
    # more noise spends less
    assert dp.spent_epsilon(s.noise_multiplier * 1.5, 0.1, 200, 1e-4) < s.epsilon


def test_epsilon_recomputed_from_the_recorded_parameters_equals_the_recorded_one(rdp_plan):
    recorded = rdp_plan.to_dict()
    keys = ("noise_multiplier", "sample_rate", "steps", "delta", "accountant")
    assert set(recorded) >= {"epsilon", "max_grad_norm", *keys}
    again = dp.spent_epsilon(*(recorded[k] for k in keys))
    assert again == recorded["epsilon"]
    assert dp.DPSettings.from_dict(recorded) == rdp_plan and rdp_plan.recompute() == recorded["epsilon"]


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # PRV sizes its domain with RDP
def test_prv_accountant_is_tighter_than_rdp_at_the_same_noise(rdp_plan):
    s = rdp_plan
    prv = dp.spent_epsilon(s.noise_multiplier, s.sample_rate, s.steps, s.delta, "prv")
    assert 0.5 * s.epsilon < prv <= s.epsilon
    assert dp.DPSettings(prv, s.delta, 1.0, "prv", s.noise_multiplier, s.sample_rate, s.steps, 4.0).recompute() == prv


def test_epsilon_inf_means_no_dp_and_bad_budgets_are_one_line_errors():
    assert dp.calibrate_noise(math.inf, 1e-5, 0.1, 10) is None
    assert dp.DPSettings.plan(math.inf, 1e-5, 1.0, 0.1, 10) is None
    assert dp.spent_epsilon(0.0, 0.1, 10, 1e-5) == math.inf
    for bad in (
        lambda: dp.calibrate_noise(0.0, 1e-5, 0.1, 10),
        lambda: dp.calibrate_noise(1.0, 1.5, 0.1, 10),
        lambda: dp.calibrate_noise(1.0, 1e-5, 0.0, 10),
        lambda: dp.spent_epsilon(1.0, 0.1, 0, 1e-5),
        lambda: dp.spent_epsilon(1.0, 0.1, 10, 1e-5, "gdp"),
        lambda: dp.DPSettings.plan(1.0, 1e-5, 0.0, 0.1, 10),
    ):
        with pytest.raises(ConfigError) as info:
            bad()
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- DP experts


def _expert_setup():
    x, y = tiny_data(40, classes=2, seed=7)
    plan = dp.DPSGDPlan(
        lr=0.05,
        max_grad_norm=1.0,
        noise_multiplier=0.8,
        sample_rate=0.25,
        steps_per_epoch=4,
        momentum=0.9,
        weight_decay=5e-4,
        dsa=DSAConfig(),
        chunk=8,
    )
    return x, y, plan


def test_dp_expert_resumed_from_epoch_k_equals_the_uninterrupted_run_bit_for_bit():
    x, y, plan = _expert_setup()
    cpu = torch.device("cpu")
    full = dp.train_dp_expert(tiny_net(5, classes=2), x, y, plan, seed=0, k=1, epochs=3, device=cpu)
    assert full.shape == (4, FlatParams.of(tiny_net(5, classes=2)).total) and full.dtype == torch.float32
    assert not torch.equal(full[0], full[-1])
    states = []
    first = dp.train_dp_expert(tiny_net(5, classes=2), x, y, plan, 0, 1, 1, cpu, on_epoch=lambda e, s: states.append(s))
    assert torch.equal(first, full[:2]) and states[-1].epochs_done == 1 and states[-1].momentum is not None
    # a fresh process: another net object (other init even), state from the partial file only
    resumed = dp.train_dp_expert(tiny_net(99, classes=2), x, y, plan, 0, 1, 3, cpu, resume=states[-1])
    assert torch.equal(resumed, full)
    other = dp.train_dp_expert(tiny_net(5, classes=2), x, y, plan, seed=0, k=2, epochs=1, device=cpu)
    assert not torch.equal(other[1], full[1])  # experts draw their own batches and noise


# ---------------------------------------------------------------- the guard


def test_sealed_train_split_raises_on_any_access(breast):
    sealed = dp.seal_train(breast)
    assert len(sealed.train) == len(breast.train) and len(breast.train.images)  # the original is untouched
    for touch in (
        lambda: sealed.train.images,
        lambda: sealed.train.labels,
        lambda: sealed.train[0],
        lambda: list(sealed.train),
        lambda: sealed.train.something,
    ):
        with pytest.raises(PrivacyError, match="differential privacy") as info:
            touch()
        assert isinstance(info.value, MeddistillError) and "\n" not in str(info.value)
    with pytest.raises(PrivacyError):
        sealed.train.images = breast.train.images
    assert sealed.val.images.shape == breast.val.images.shape  # val and test stay readable
    for clone in (pickle.loads(pickle.dumps(sealed.train)), copy.deepcopy(sealed.train)):
        assert len(clone) == len(breast.train)
        with pytest.raises(PrivacyError):
            _ = clone.images


# ---------------------------------------------------------------- DP-DM


def _dpdm_data():
    counts = (30, 12, 6)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.randn(len(labels), *SHAPE, generator=torch.Generator().manual_seed(11)) + labels.view(-1, 1, 1, 1)
    make_net = dpdm.random_net_factory(SPEC, SHAPE, 3, seed=0, device=torch.device("cpu"))
    return counts, images, labels, make_net


def test_dpdm_noisy_means_approach_the_true_clipped_means_as_sigma_goes_to_zero():
    _, images, labels, make_net = _dpdm_data()
    c_norm = 1.0
    true = []
    for t in range(2):
        with torch.no_grad():
            f = dp.clip_rows(make_net(t)(images, features=True), c_norm)
        true.append(torch.stack([f[labels == c].mean(0) for c in range(3)]))
    true = torch.stack(true)
    errors = []
    for sigma in (1.0, 0.1, 0.01, 0.0):
        plan = dpdm.DPDMPlan(2, (1.0, 1.0, 1.0), c_norm, sigma)  # rate 1: every image, every iteration
        got = dpdm.noisy_class_means(images, labels, plan, make_net, torch.Generator().manual_seed(0))
        assert got.means.shape == true.shape and len(got.aug_seeds) == 2
        errors.append(float((got.means - true).abs().max()))
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 1e-5
    # the noise is sigma C / (q_c N_c) per coordinate: the smallest class is the noisiest
    plan = dpdm.DPDMPlan(2, (1.0, 1.0, 1.0), c_norm, 1.0)
    assert dpdm.expected_noise_std(plan, 6, 2) > dpdm.expected_noise_std(plan, 30, 0)


def test_dpdm_subsampled_means_are_unbiased():
    counts, images, labels, make_net = _dpdm_data()
    plan = dpdm.DPDMPlan(1, dpdm.class_rates(counts, 3), 1.0, 0.0)
    with torch.no_grad():
        f = dp.clip_rows(make_net(0)(images, features=True), 1.0)
    true = torch.stack([f[labels == c].mean(0) for c in range(3)])
    draws = torch.stack(
        [
            dpdm.noisy_class_means(images, labels, plan, make_net, torch.Generator().manual_seed(s)).means[0]
            for s in range(150)
        ]
    )
    assert float((draws.mean(0) - true).abs().max()) < 0.25 * float(true.abs().max())


def test_dpdm_accounting_uses_the_largest_class_rate():
    counts = (300, 60, 20)
    plan = dpdm.plan_dpdm(counts, iterations=100, batch_per_class=4, epsilon=4.0, delta=1e-4, max_norm=1.0)
    assert plan.rates == (4 / 300, 4 / 60, 4 / 20)
    assert plan.dp.sample_rate == max(plan.rates) == 4 / 20  # the smallest class sets epsilon
    assert plan.dp.steps == 100 and plan.noise_multiplier == plan.dp.noise_multiplier
    assert plan.dp.recompute() == plan.dp.epsilon <= 4.0
    # accounted at the largest class's rate the budget would be smaller: the max is the worst case
    assert dp.spent_epsilon(plan.noise_multiplier, 4 / 300, 100, 1e-4) < plan.dp.epsilon
    assert plan.to_dict()["dp"]["sample_rate"] == 4 / 20
    assert dpdm.plan_dpdm(counts, 10, 4, math.inf, 1e-4, 1.0).dp is None


def test_matching_a_synthetic_set_to_released_means_lowers_the_loss_without_real_images():
    _, images, labels, make_net = _dpdm_data()
    aug = DSAConfig(batch_mode=True)
    plan = dpdm.DPDMPlan(4, (1.0, 1.0, 1.0), 1.0, 0.05)
    released = dpdm.noisy_class_means(images, labels, plan, make_net, torch.Generator().manual_seed(1), aug)
    syn_labels = torch.tensor([0, 0, 1, 1, 2, 2])
    syn = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    del images, labels  # stage 2 reads only what stage 1 released
    first = dpdm.match_noisy_means(syn, syn_labels, released, make_net, opt, 1.0, aug)
    for _ in range(15):
        last = dpdm.match_noisy_means(syn, syn_labels, released, make_net, opt, 1.0, aug)
    assert sum(last) < 0.5 * sum(first)
