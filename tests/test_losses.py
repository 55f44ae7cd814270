import math

import pytest
import torch
import torch.nn.functional as F

from cut_core.losses import gan_loss, patch_nce, r1_penalty


def test_patch_nce_matches_a_hand_computed_example():
    # One image, two patches, 2-d features. Query 0 = [1, 0], query 1 = [0.6, 0.8];
    # keys: k0 = [1, 0], k1 = [0, 1].
    q = torch.tensor([[[1.0, 0.0], [0.6, 0.8]]])
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    tau = 0.5
    loss = patch_nce(q, k, tau=tau, negatives_from_batch=False)
    # Row 0: positive q0.k0 = 1, negatives [masked self, q0.k1 = 0].
    # Row 1: positive q1.k1 = 0.8, negatives [q1.k0 = 0.6, masked self].
    def ce(pos: float, negs: list[float]) -> float:
        logits = [pos / tau] + [n / tau for n in negs]
        return -logits[0] + math.log(sum(math.exp(v) for v in logits))

    expected = [ce(1.0, [-10.0, 0.0]), ce(0.8, [0.6, -10.0])]
    assert loss.shape == (1, 2)
    assert loss[0].tolist() == pytest.approx(expected, rel=1e-5)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def test_patch_nce_is_lower_when_queries_equal_keys_than_when_keys_are_shuffled():
    g = torch.Generator().manual_seed(0)
    k = _unit(torch.randn(2, 64, 16, generator=g))
    matched = patch_nce(k.clone(), k, tau=0.07, negatives_from_batch=False).mean()
    shuffled = patch_nce(k.clone(), k[:, torch.randperm(64, generator=g)], tau=0.07, negatives_from_batch=False).mean()
    assert matched < 0.1 * shuffled


def test_patch_nce_detaches_keys_and_batch_negatives_see_every_image():
    g = torch.Generator().manual_seed(1)
    q = _unit(torch.randn(2, 8, 4, generator=g)).requires_grad_(True)
    k = _unit(torch.randn(2, 8, 4, generator=g)).requires_grad_(True)
    per_image = patch_nce(q, k, tau=0.1, negatives_from_batch=False)
    whole_batch = patch_nce(q, k, tau=0.1, negatives_from_batch=True)
    assert per_image.shape == whole_batch.shape == (2, 8)
    # More negatives can only raise the loss of each query.
    assert (whole_batch >= per_image - 1e-6).all() and (whole_batch > per_image).any()
    whole_batch.sum().backward()
    assert q.grad is not None and k.grad is None


def test_patch_nce_is_fp32_under_bf16_inputs():
    q = _unit(torch.randn(1, 16, 8)).bfloat16()
    out = patch_nce(q, q, tau=0.07, negatives_from_batch=False)
    assert out.dtype == torch.float32


def test_lsgan_and_logistic_losses():
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert gan_loss("lsgan", ones, target_is_real=True).tolist() == [0.0, 0.0]
    assert gan_loss("lsgan", zeros, target_is_real=True).tolist() == [1.0, 1.0]
    assert gan_loss("lsgan", ones * 0.5, target_is_real=False).tolist() == [0.25, 0.25]
    log2 = math.log(2.0)
    assert gan_loss("nonsaturating", zeros, target_is_real=True).tolist() == pytest.approx([log2, log2])
    big = torch.full((1, 1, 2, 2), 20.0)
    assert gan_loss("vanilla", big, target_is_real=True).item() < 1e-6
    assert gan_loss("vanilla", big, target_is_real=False).item() == pytest.approx(20.0, rel=1e-6)


def test_r1_penalty_is_the_squared_input_gradient():
    x = torch.randn(3, 2, requires_grad=True)
    w = torch.tensor([[2.0], [-1.0]])
    pred = x @ w  # gradient wrt each row is w, squared norm 5
    assert r1_penalty(pred, x).tolist() == pytest.approx([5.0, 5.0, 5.0])
