import json
from collections import OrderedDict

import pytest
import torch

from cut_core import CUTConfig, ModelConfig, ModelDirError, import_official_generator, load_generator, save_generator
from cut_core.networks import build_generator

TINY = ModelConfig(ngf=8, n_blocks=2)


def _seeded_generator(cfg: ModelConfig = TINY):
    torch.manual_seed(3)
    g = build_generator(cfg)
    # Non-trivial weights, so a wrong load could not pass by accident.
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0, 0.1)
    return g.eval()


def test_save_and_load_round_trip_gives_the_same_translation(tmp_path):
    g = _seeded_generator()
    out = save_generator(g, tmp_path / "m", model_config=TINY, training_config=CUTConfig.fastcut())
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generator.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["model"]["ngf"] == 8 and meta["training"]["preset"] == "fastcut"
    assert meta["normalization"]["input_range"] == [-1.0, 1.0]
    loaded = load_generator(out)
    assert not loaded.training
    x = torch.rand(1, 3, 24, 24) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), g(x))


def test_import_official_checkpoint(tmp_path):
    # An official latest_net_G.pth is a plain state dict saved with torch.save.
    g = _seeded_generator()
    pth = tmp_path / "latest_net_G.pth"
    torch.save(OrderedDict((k, v.clone()) for k, v in g.state_dict().items()), pth)
    out = import_official_generator(pth, tmp_path / "imported", preset="cut")
    meta = json.loads((out / "config.json").read_text())
    assert (meta["model"]["ngf"], meta["model"]["n_blocks"]) == (8, 2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(load_generator(out)(x), g(x))


def test_import_a_cyclegan_generator_trained_by_the_cut_code(tmp_path):
    """The CUT repository's cycle_gan model saves latest_net_G_A.pth (A -> B) with the
    same anti-aliased ResNet G: it imports as the cyclegan preset's G."""
    g = _seeded_generator()
    pth = tmp_path / "latest_net_G_A.pth"
    torch.save(OrderedDict((k, v.clone()) for k, v in g.state_dict().items()), pth)
    out = import_official_generator(pth, tmp_path / "cyclegan", preset="cyclegan")
    meta = json.loads((out / "config.json").read_text())
    assert meta["training"]["preset"] == "cyclegan" and meta["imported_from"] == "latest_net_G_A.pth"
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(load_generator(out)(x), g(x))


def test_import_strips_dataparallel_prefix(tmp_path):
    g = _seeded_generator()
    pth = tmp_path / "dp.pth"
    torch.save({"module." + k: v for k, v in g.state_dict().items()}, pth)
    out = import_official_generator(pth, tmp_path / "m")
    assert torch.equal(load_generator(out).state_dict()["model.1.weight"], g.state_dict()["model.1.weight"])


def test_import_refuses_another_architecture(tmp_path):
    # A no-antialias generator: stride-2 convs instead of the blur layers (no 'filt').
    sd = {k: v for k, v in _seeded_generator().state_dict().items() if not k.endswith("filt")}
    torch.save(sd, tmp_path / "noaa.pth")
    with pytest.raises(ModelDirError, match="without anti-aliased"):
        import_official_generator(tmp_path / "noaa.pth", tmp_path / "x")
    # A U-Net: nothing like model.1.weight.
    torch.save({"model.model.0.weight": torch.zeros(64, 3, 4, 4)}, tmp_path / "unet.pth")
    with pytest.raises(ModelDirError, match="not a CUT ResnetGenerator"):
        import_official_generator(tmp_path / "unet.pth", tmp_path / "y")


class NotWeights:
    """An arbitrary object: loading it would need unpickling code."""


def test_import_never_unpickles_objects(tmp_path):
    torch.save({"model.1.weight": NotWeights()}, tmp_path / "evil.pth")
    with pytest.raises(ModelDirError, match="weights-only"):
        import_official_generator(tmp_path / "evil.pth", tmp_path / "x")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelDirError, match="cannot read"):
        import_official_generator(tmp_path / "garbage.pth", tmp_path / "x")
    with pytest.raises(ModelDirError, match="does not exist"):
        import_official_generator(tmp_path / "missing.pth", tmp_path / "x")


def test_broken_model_directories_get_clear_errors(tmp_path):
    out = save_generator(_seeded_generator(), tmp_path / "m", model_config=TINY)
    with pytest.raises(ModelDirError, match="does not exist"):
        load_generator(tmp_path / "nope")
    (out / "generator.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelDirError, match="safetensors"):
        load_generator(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        load_generator(out)
    (out / "config.json").write_text(json.dumps({"format": "raycut-generator", "format_version": 99}))
    with pytest.raises(ModelDirError, match="format_version 99"):
        load_generator(out)


def test_weights_of_another_size_are_refused(tmp_path):
    out = save_generator(_seeded_generator(), tmp_path / "m", model_config=TINY)
    meta = json.loads((out / "config.json").read_text())
    meta["model"]["ngf"] = 16
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelDirError, match="has shape"):
        load_generator(out)
