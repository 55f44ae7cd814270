"""External negatives for PatchNCE: a MoCo-style memory bank and momentum key encoder.

The paper's ablation (Sec. 4, "internal vs external negatives") compares CUT's
negatives from the same image with negatives from other images, held in a memory
bank as in MoCo (He et al. 2020): keys come from a slowly moving copy of G's encoder
and F (momentum 0.999), each step's keys are enqueued, and the oldest fall out.
With ``nce_bank_size = 16384`` per layer and ``num_patches = 256`` this is the
paper's baseline; the paper found internal negatives better, which a search can check
on new data.

    query  q: F(G_enc(G(x)))  at patch s   (through the live G and F: gradients)
    key    k: F'(G'_enc(x))   at patch s   (the momentum copies: no gradients)
    negatives: the bank's entries for that layer, keys of earlier steps' images
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class PatchMemoryBank(nn.Module):
    """One ring buffer of L2-normalised keys per NCE layer: (size, dim) each.

    Buffers, not parameters: saved with the checkpoint, never trained. Starts with
    random unit vectors (as MoCo does), which the first size / enqueue steps replace.
    """

    def __init__(self, n_layers: int, dim: int, size: int, *, seed: int = 0) -> None:
        super().__init__()
        if size < 1 or dim < 1 or n_layers < 1:
            raise ValueError(f"bank needs size, dim, layers >= 1 (got {size}, {dim}, {n_layers})")
        g = torch.Generator().manual_seed(seed)
        for layer in range(n_layers):
            self.register_buffer(f"queue_{layer}", nn.functional.normalize(torch.randn(size, dim, generator=g), dim=1))
            self.register_buffer(f"ptr_{layer}", torch.zeros((), dtype=torch.long))
        self.n_layers, self.size, self.dim = n_layers, size, dim
        self._staged: list[tuple[int, torch.Tensor]] = []

    def negatives(self, layer: int) -> torch.Tensor:
        """(size, dim) keys of earlier steps for ``layer``."""
        return getattr(self, f"queue_{layer}")

    def pointer(self, layer: int) -> int:
        return int(getattr(self, f"ptr_{layer}"))

    @torch.no_grad()
    def enqueue(self, layer: int, keys: torch.Tensor) -> None:
        """Write (N, dim) keys over the oldest entries (FIFO, wrapping around)."""
        queue, ptr = self.negatives(layer), getattr(self, f"ptr_{layer}")
        keys = keys.detach().to(queue.dtype).reshape(-1, self.dim)[-self.size :]  # a batch larger than the bank keeps its newest
        n, start = keys.shape[0], int(ptr)
        first = min(n, self.size - start)
        queue[start : start + first] = keys[:first]
        if n > first:
            queue[: n - first] = keys[first:]
        ptr.fill_((start + n) % self.size)


    def stage(self, layer: int, keys: torch.Tensor) -> None:
        """Hold keys until :meth:`commit`: the loss still needs the bank as it is for its
        backward pass, so this step's keys go in after the optimizer step."""
        self._staged.append((layer, keys.detach()))

    def commit(self) -> None:
        for layer, keys in self._staged:
            self.enqueue(layer, keys)
        self._staged.clear()


class MomentumKeyEncoder(nn.Module):
    """Momentum copies of G (for its encoder) and F: theta_k <- m theta_k + (1 - m) theta_q."""

    def __init__(self, G: nn.Module, F: nn.Module, momentum: float) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum {momentum} must lie in [0, 1)")
        self.G = copy.deepcopy(G).requires_grad_(False)
        self.F = copy.deepcopy(F).requires_grad_(False)
        self.momentum = momentum

    @torch.no_grad()
    def update(self, G: nn.Module, F: nn.Module) -> None:
        m = self.momentum
        for key_net, live in ((self.G, G), (self.F, F)):
            for pk, pq in zip(key_net.parameters(), live.parameters(), strict=True):
                pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def keys(self, src: torch.Tensor, layers: tuple[int, ...], ids: list[torch.Tensor]) -> list[torch.Tensor]:
        """(B, 3, H, W) sources -> per layer (B, P, nc) unit keys at the patch ids."""
        return self.F(self.G.encode(src, layers), ids)
