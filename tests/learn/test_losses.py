"""Contrastive losses against hand-computed values and a literal transcription of the paper's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sobre.learn import GradientReversal, kernel_matrix, nt_xent, y_aware_infonce

E = math.e


def test_nt_xent_two_orthogonal_subjects_by_hand():
    # Z = [e1, e2, e1, e2], tau = 1. Anchor 0 sees s = (0, 1, 0) for views 1, 2, 3; its positive is view 2:
    # loss = -(1 - log(e^0 + e^1 + e^0)) = log(2 + e) - 1, the same for every anchor by symmetry.
    z = torch.eye(2)
    assert float(nt_xent(z, z, temperature=1.0)) == pytest.approx(math.log(2 + E) - 1, abs=1e-6)
    assert float(nt_xent(z, z, temperature=1.0)) == pytest.approx(0.551445, abs=1e-6)


def test_nt_xent_temperature_and_non_trivial_angles_by_hand():
    # z1 = (e1, e2), z2 = (e1 rotated by 90° -> e2, e2 rotated -> -e1), tau = 0.5.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    t = 0.5
    # cosines: Z = [a=e1, b=e2, c=e2, d=-e1]
    # anchor a: others (b: 0, c: 0, d: -1) -> positive c: -(0 - log(1 + 1 + e^-2))
    la = math.log(2 + math.exp(-1 / t)) - 0
    # anchor b: others (a: 0, c: 1, d: 0) -> positive d (cos 0): -(0 - log(1 + e^2 + 1))
    lb = math.log(2 + math.exp(1 / t))
    # anchor c: others (a: 0, b: 1, d: 0) -> positive a (cos 0)
    lc = math.log(2 + math.exp(1 / t))
    # anchor d: others (a: -1, b: 0, c: 0) -> positive b (cos 0)
    ld = math.log(math.exp(-1 / t) + 2)
    expected = (la + lb + lc + ld) / 4
    assert float(nt_xent(z1, z2, temperature=t)) == pytest.approx(expected, abs=1e-6)


def test_y_aware_two_subjects_by_hand():
    # Same Z as above, y = (0, 1), RBF with sigma = 1: K(0, 1) = exp(-1/2).
    # Anchor 0 (y=0): views 1, 2, 3 have y = 1, 0, 1 -> weights (k, 1, k) / (1 + 2k), k = exp(-1/2);
    # log p = (-log(2+e), 1 - log(2+e), -log(2+e)).
    k = math.exp(-0.5)
    lse = math.log(2 + E)
    expected = (2 * k * lse + 1 * (lse - 1)) / (1 + 2 * k)
    got = float(y_aware_infonce(torch.eye(2), torch.eye(2), torch.tensor([0.0, 1.0]), 1.0, temperature=1.0))
    assert got == pytest.approx(expected, abs=1e-6)
    assert got == pytest.approx(1.099582, abs=1e-6)


def test_y_aware_three_subjects_laplacian_by_hand():
    # N = 3 identical embeddings: every s = 1/tau, so log p_kj = -log(5) for all 5 others, whatever the weights:
    # the loss is log 5 for any kernel (weights sum to one).
    z = torch.ones(3, 4)
    got = y_aware_infonce(z, z, torch.tensor([20.0, 40.0, 60.0]), 10.0, temperature=0.3, kernel="laplacian")
    assert float(got) == pytest.approx(math.log(5), abs=1e-5)


def _paper_formula(z1, z2, y, sigma, tau, groups=None):
    """Literal transcription of Dufumier et al. (2021), eq. 3, with loops; mean over the 2N anchors."""
    z = np.concatenate([z1, z2], 0).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    y2 = np.concatenate([y, y], 0).reshape(len(z), -1).astype(np.float64)
    g2 = None if groups is None else np.concatenate([groups, groups])
    n2 = len(z)
    total = 0.0
    for k in range(n2):
        others = [t for t in range(n2) if t != k and (g2 is None or g2[t] == g2[k])]
        sims = {t: float(z[k] @ z[t]) / tau for t in others}
        log_den = math.log(sum(math.exp(s) for s in sims.values()))
        w = {t: math.exp(-0.5 * float(np.sum(((y2[k] - y2[t]) / sigma) ** 2))) for t in others}
        wsum = sum(w.values())
        total += -sum(w[j] / wsum * (sims[j] - log_den) for j in others)
    return total / n2


@pytest.mark.parametrize("n,d,tau,sigma", [(4, 3, 0.1, 5.0), (7, 8, 0.5, 1.0), (5, 2, 1.0, [3.0, 0.5])])
def test_y_aware_matches_the_paper_formula(n, d, tau, sigma):
    rng = np.random.default_rng(n)
    z1, z2 = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    nv = len(sigma) if isinstance(sigma, list) else 1
    y = rng.uniform(20, 80, size=(n, nv)) if nv > 1 else rng.uniform(20, 80, size=n)
    got = y_aware_infonce(torch.tensor(z1), torch.tensor(z2), torch.tensor(y), sigma, temperature=tau)
    assert float(got) == pytest.approx(_paper_formula(z1, z2, y, np.asarray(sigma), tau), rel=1e-5)


def test_conditional_groups_match_the_formula_and_per_group_average():
    rng = np.random.default_rng(3)
    z1, z2 = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    y = rng.uniform(20, 80, 6)
    g = np.array([0, 0, 0, 1, 1, 2])
    got = float(y_aware_infonce(torch.tensor(z1), torch.tensor(z2), torch.tensor(y), 10.0, temperature=0.2,
                                groups=torch.tensor(g)))
    assert got == pytest.approx(_paper_formula(z1, z2, y, 10.0, 0.2, groups=g), rel=1e-5)
    # per-group losses averaged with the number of anchors as weights
    parts = []
    for v in np.unique(g):
        m = g == v
        parts.append((m.sum(), float(y_aware_infonce(torch.tensor(z1[m]), torch.tensor(z2[m]), torch.tensor(y[m]),
                                                     10.0, temperature=0.2))))
    assert got == pytest.approx(sum(c * v for c, v in parts) / sum(c for c, _ in parts), rel=1e-5)
    # NT-Xent too: a group of one subject only contrasts its two views (loss 0)
    nt = float(nt_xent(torch.tensor(z1), torch.tensor(z2), 0.2, groups=torch.tensor(g)))
    per = [(g == v).sum() * float(nt_xent(torch.tensor(z1[g == v]), torch.tensor(z2[g == v]), 0.2))
           for v in np.unique(g)]
    assert nt == pytest.approx(sum(per) / 6, rel=1e-5)


def test_small_bandwidth_gives_nt_xent_and_large_bandwidth_uniform_weights():
    rng = np.random.default_rng(0)
    z1, z2 = torch.tensor(rng.standard_normal((5, 3))), torch.tensor(rng.standard_normal((5, 3)))
    y = torch.tensor([20.0, 30.0, 40.0, 50.0, 60.0])
    assert float(y_aware_infonce(z1, z2, y, 1e-3, temperature=0.1)) == pytest.approx(
        float(nt_xent(z1, z2, temperature=0.1)), rel=1e-6)
    # sigma -> inf: every other view weighs 1/(2N-1): the loss is the mean over pairs of -log p
    zz = torch.nn.functional.normalize(torch.cat([z1, z2]).float(), dim=1)
    s = zz @ zz.T / 0.1
    mask = ~torch.eye(10, dtype=torch.bool)
    logp = s - torch.logsumexp(s.masked_fill(~mask, -float("inf")), 1, keepdim=True)
    uniform = float(-(logp * mask).sum(1).div(9).mean())
    assert float(y_aware_infonce(z1, z2, y, 1e6, temperature=0.1)) == pytest.approx(uniform, rel=1e-5)


def test_losses_ignore_embedding_scale_and_have_gradients():
    rng = np.random.default_rng(1)
    z1 = torch.tensor(rng.standard_normal((4, 6)), requires_grad=True)
    z2 = torch.tensor(rng.standard_normal((4, 6)))
    y = torch.tensor([25.0, 35.0, 45.0, 70.0])
    a = y_aware_infonce(z1, z2, y, 5.0)
    b = y_aware_infonce(3 * z1, 0.5 * z2, y, 5.0)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-5)
    a.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_pulling_similar_ages_together_lowers_the_y_aware_loss():
    # Two young and two old subjects: embeddings grouped by age give a lower y-aware loss than
    # embeddings grouped against age, while NT-Xent (blind to age) cannot tell the two apart.
    y = torch.tensor([20.0, 22.0, 70.0, 72.0])
    by_age = torch.tensor([[1.0, 0.1], [1.0, -0.1], [-1.0, 0.1], [-1.0, -0.1]])
    against = torch.tensor([[1.0, 0.1], [-1.0, 0.1], [1.0, -0.1], [-1.0, -0.1]])
    assert float(y_aware_infonce(by_age, by_age, y, 5.0, 0.5)) < float(y_aware_infonce(against, against, y, 5.0, 0.5))
    assert float(nt_xent(by_age, by_age, 0.5)) == pytest.approx(float(nt_xent(against, against, 0.5)), rel=1e-6)


def test_kernel_matrix_values():
    K = kernel_matrix(torch.tensor([[0.0, 0.0], [3.0, 4.0]]), [3.0, 4.0])
    assert float(K[0, 1]) == pytest.approx(math.exp(-0.5 * (1 + 1)), rel=1e-9)  # product of two RBFs
    L = kernel_matrix(torch.tensor([0.0, 2.0]), 4.0, kernel="laplacian")
    assert float(L[0, 1]) == pytest.approx(math.exp(-0.5), rel=1e-9)
    assert torch.allclose(torch.diagonal(K), torch.ones(2, dtype=K.dtype))


def test_bad_arguments_are_refused():
    z = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="z1 and z2"):
        nt_xent(z, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z, z, temperature=0)
    with pytest.raises(ValueError, match="one bandwidth per variable"):
        y_aware_infonce(z, z, torch.zeros(3, 2), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="one row per subject"):
        y_aware_infonce(z, z, torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="unknown kernel"):
        kernel_matrix(torch.zeros(3), 1.0, kernel="cosine")


def test_gradient_reversal():
    x = torch.ones(3, requires_grad=True)
    GradientReversal(2.0)(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -2.0))


def test_bf16_autocast_keeps_the_similarity_logits_and_losses_in_fp32():
    """A bf16 forward pass (autocast) gives bf16 embeddings; the logits and the losses stay fp32, unchanged."""
    from sobre.learn._losses import _scores

    torch.manual_seed(0)
    proj = torch.nn.Linear(16, 8)
    x = torch.randn(12, 16)
    y = torch.rand(6) * 60 + 20
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = proj(x)
        assert z.dtype == torch.bfloat16  # what the network hands over under autocast
        zn = torch.nn.functional.normalize(z.float(), dim=1)
        assert (zn @ zn.T).dtype == torch.bfloat16  # autocast would round a plain similarity matrix
        log_p, _ = _scores(z[:6], z[6:], 0.1, None)
        simclr = nt_xent(z[:6], z[6:], temperature=0.1)
        yaware = y_aware_infonce(z[:6], z[6:], y, bandwidth=5.0, temperature=0.1)
    assert log_p.dtype == simclr.dtype == yaware.dtype == torch.float32
    zf = z.detach().float()  # the same embeddings, outside autocast
    ref_log_p, _ = _scores(zf[:6], zf[6:], 0.1, None)
    assert torch.equal(log_p, ref_log_p)
    assert simclr.item() == nt_xent(zf[:6], zf[6:], temperature=0.1).item()
    assert yaware.item() == y_aware_infonce(zf[:6], zf[6:], y, bandwidth=5.0, temperature=0.1).item()
    simclr.backward()  # gradients reach the bf16 forward pass
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()


def test_task_losses_and_the_classifier_head_run_in_fp32_under_autocast():
    from sobre.learn._models import Classifier
    from sobre.learn._tasks import TaskSpec

    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 4))
    enc.out_features = 4
    model = Classifier(enc, 1, n_covariates=1)
    x, cov, yb = torch.randn(5, 1, 2, 2, 2), torch.randn(5, 1), torch.tensor([0, 1, 1, 0, 1])
    task = TaskSpec(kind="binary", targets=None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, cov)
        loss = task.loss(out, yb)
    assert out.dtype == loss.dtype == torch.float32
    assert loss.item() == task.loss(out.detach(), yb).item()
