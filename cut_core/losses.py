"""CUT's objectives. Each returns an unreduced per-image loss; the step reduces.

Code-to-paper map (Park et al. 2020, Sec. 3):

=================  =====================================================
code               paper
=================  =====================================================
``feat_q``         z-hat_l^s: the query, H_l(G_enc(G(x))) at location s
``feat_k``         z_l^s: the positive key, H_l(G_enc(x)) at s
other rows of k    z_l^{S\\s}: negatives, other locations of the same image
``tau``            tau = 0.07, the temperature of Eq. (2)
``patch_nce``      l(v, v+, v-) of Eq. (2), summed over layers l in Eq. (5)
``gan_loss``      L_GAN of Eq. (1) (LSGAN by default, as the official code)
``r1_penalty``     R1 (Mescheder et al. 2018), used by SinCUT
=================  =====================================================

All of them compute in fp32 whatever the autocast dtype: the logits are divided by
tau = 0.07, which turns bf16 rounding of the dot products into large errors.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from cut_core.config import GanMode

# Official value for the masked diagonal: exp(-10 / 0.07) is zero in fp32.
_MASKED_LOGIT = -10.0


def patch_nce(feat_q: torch.Tensor, feat_k: torch.Tensor, *, tau: float, negatives_from_batch: bool) -> torch.Tensor:
    """PatchNCE: classify the positive key among the negatives.

    feat_q, feat_k: (B, P, C) L2-normalised; row s of ``feat_k`` is the positive for
    row s of ``feat_q`` and the other rows are its negatives: from the same image, or
    from every image of the batch (``negatives_from_batch``, SinCUT's crops of one
    picture). The key side is detached: gradients flow only through the query.
    Returns (B, P) cross-entropy, one per query patch.
    """
    b, p, c = feat_q.shape
    q = feat_q.float()
    k = feat_k.detach().float()
    l_pos = (q * k).sum(-1, keepdim=True)  # (B, P, 1)
    groups = 1 if negatives_from_batch else b
    qg, kg = q.reshape(groups, -1, c), k.reshape(groups, -1, c)  # (G, N, C)
    n = qg.shape[1]
    l_neg = torch.bmm(qg, kg.transpose(1, 2))  # (G, N, N)
    # The diagonal is the positive itself: it must not count as a negative.
    eye = torch.eye(n, dtype=torch.bool, device=q.device)[None]
    l_neg = l_neg.masked_fill(eye, _MASKED_LOGIT).reshape(b, p, n)
    logits = torch.cat([l_pos, l_neg], dim=-1) / tau  # (B, P, 1 + N)
    target = torch.zeros(b * p, dtype=torch.long, device=q.device)
    return F.cross_entropy(logits.reshape(b * p, 1 + n), target, reduction="none").reshape(b, p)


def patch_nce_bank(feat_q: torch.Tensor, feat_k: torch.Tensor, bank: torch.Tensor, *, tau: float) -> torch.Tensor:
    """PatchNCE with external negatives: the positive key against a memory bank.

    feat_q, feat_k: (B, P, C) L2-normalised (``feat_k`` from the momentum encoder);
    bank: (K, C) keys of earlier steps (cut_core.memory_bank). Returns (B, P).
    """
    b, p, c = feat_q.shape
    q = feat_q.float()
    l_pos = (q * feat_k.detach().float()).sum(-1, keepdim=True)  # (B, P, 1)
    l_neg = q @ bank.detach().float().t()  # (B, P, K)
    logits = torch.cat([l_pos, l_neg], dim=-1) / tau
    target = torch.zeros(b * p, dtype=torch.long, device=q.device)
    return F.cross_entropy(logits.reshape(b * p, -1), target, reduction="none").reshape(b, p)


def _lsgan(pred: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    return ((pred.float() - float(target_is_real)) ** 2).flatten(1).mean(1)


def _logistic(pred: torch.Tensor, target_is_real: bool) -> torch.Tensor:
    # Binary cross-entropy on logits: softplus(-x) = -log sigmoid(x).
    x = pred.float()
    return F.softplus(-x if target_is_real else x).flatten(1).mean(1)


# gan_mode -> loss. 'vanilla' (BCE on logits) and 'nonsaturating' are the same
# function here; both names are official options.
GAN_LOSSES: dict[str, Callable[[torch.Tensor, bool], torch.Tensor]] = {
    "lsgan": _lsgan,
    "nonsaturating": _logistic,
    "vanilla": _logistic,
}


def gan_loss(mode: GanMode, pred: torch.Tensor, *, target_is_real: bool) -> torch.Tensor:
    """D logits (B, 1, H', W') -> (B,) loss towards 'real' or 'fake'.

    D minimises 0.5 * (gan_loss(D(real), True) + gan_loss(D(fake), False)); G minimises
    gan_loss(D(G(x)), True) (the non-saturating form for the logistic loss)."""
    return GAN_LOSSES[mode](pred, target_is_real)


def r1_penalty(pred_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Squared gradient norm of D at real images, (B,). ``real`` must require grad."""
    # At least fp32 (bf16 squares lose too much), fp64 stays fp64 (gradient checks).
    wide = torch.promote_types(pred_real.dtype, torch.float32)
    (grad,) = torch.autograd.grad(pred_real.to(wide).sum(), real, create_graph=True)
    return grad.to(wide).pow(2).flatten(1).sum(1)
