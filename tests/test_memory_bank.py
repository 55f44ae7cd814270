"""The MoCo-style memory bank of external negatives: its buffers, FIFO order, the
momentum key encoder, and CUT training with it."""

from __future__ import annotations

import pytest
import torch

from cut_core import build_train_state
from cut_core.config import NEGATIVE_SOURCES, ConfigError, negative_source
from cut_core.losses import patch_nce_bank
from cut_core.memory_bank import MomentumKeyEncoder, PatchMemoryBank
from cut_core.train_checkpoint import load_train_state, save_train_state
from tests.conftest import tiny


def test_bank_holds_unit_keys_per_layer_and_is_fifo():
    bank = PatchMemoryBank(n_layers=2, dim=4, size=5)
    assert bank.negatives(0).shape == (5, 4) and bank.negatives(1).shape == (5, 4)
    assert torch.allclose(bank.negatives(0).norm(dim=1), torch.ones(5))
    before_layer1 = bank.negatives(1).clone()
    keys = torch.arange(1, 13, dtype=torch.float32).reshape(3, 4)
    bank.enqueue(0, keys)
    assert bank.pointer(0) == 3 and torch.equal(bank.negatives(0)[:3], keys)
    assert torch.equal(bank.negatives(1), before_layer1) and bank.pointer(1) == 0  # layers are separate
    more = -torch.arange(1, 17, dtype=torch.float32).reshape(4, 4)
    bank.enqueue(0, more)  # 2 fill the end, 2 wrap around over the oldest
    q = bank.negatives(0)
    assert bank.pointer(0) == 2
    assert torch.equal(q[3:], more[:2]) and torch.equal(q[:2], more[2:]) and torch.equal(q[2], keys[2])
    # A batch larger than the bank keeps its newest keys.
    big = torch.randn(7, 4)
    bank.enqueue(1, big)
    assert sorted(bank.negatives(1).tolist()) == sorted(big[-5:].tolist())


def test_momentum_update_moves_the_key_encoder_slowly():
    cfg = tiny("cut")
    state = build_train_state(cfg)
    enc = MomentumKeyEncoder(state.G, state.F, momentum=0.9)
    k0 = [p.clone() for p in enc.parameters()]
    with torch.no_grad():
        for p in list(state.G.parameters()) + list(state.F.parameters()):
            p.add_(1.0)
    enc.update(state.G, state.F)
    live = list(state.G.parameters()) + list(state.F.parameters())
    for old, new, q in zip(k0, enc.parameters(), live, strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * q)
    assert not any(p.requires_grad for p in enc.parameters())


def test_bank_loss_counts_the_positive_against_the_bank():
    q = torch.nn.functional.normalize(torch.randn(2, 3, 8), dim=-1)
    bank = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    loss = patch_nce_bank(q, q, bank, tau=0.07)  # positive = the query itself: the largest logit
    logits = torch.cat([torch.ones(2, 3, 1), q @ bank.t()], -1) / 0.07
    torch.testing.assert_close(loss, -torch.log_softmax(logits, -1)[..., 0])


def test_negative_sources_are_exclusive_and_named():
    cfg = tiny("cut")
    assert negative_source(cfg.loss) == "image"
    for name, values in NEGATIVE_SOURCES.items():
        assert negative_source(cfg.with_overrides(values).loss) == name
    with pytest.raises(ConfigError, match="choose one"):
        cfg.with_overrides({"nce_bank_size": 64, "nce_includes_all_negatives_from_minibatch": True})


def test_cut_with_a_memory_bank_trains_its_loss_falls_and_checkpoints(tmp_path):
    from jobs.train.in_process import train_in_process
    from pipelines.local_images import load_folder
    from pipelines.toy_data import ToySpec, write_toy_dataset

    toy = write_toy_dataset(tmp_path / "toy", ToySpec(size=32, n_train=32, n_test=2))
    cfg = tiny("cut", nce_bank_size=512, nce_bank_momentum=0.99, num_patches=32, lr=5e-4, batch_size=2)
    state, history = train_in_process(cfg, load_folder(toy / "trainA"), load_folder(toy / "trainB"), steps=120,
                                      progress=False, log_every=20)
    # Each step enqueues B x P keys per layer, for both the A and the identity branch.
    assert state.bank.pointer(0) == (120 * 2 * 2 * 32) % 512
    assert history[-1]["NCE"] < 0.9 * history[0]["NCE"], [round(h["NCE"], 2) for h in history]
    save_train_state(state, tmp_path / "ckpt")
    fresh = build_train_state(cfg)
    load_train_state(fresh, tmp_path / "ckpt")
    assert torch.equal(fresh.bank.negatives(2), state.bank.negatives(2)) and fresh.bank.pointer(2) == state.bank.pointer(2)
    for a, b in zip(fresh.key_encoder.parameters(), state.key_encoder.parameters(), strict=True):
        assert torch.equal(a, b)
