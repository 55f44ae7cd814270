from dataclasses import replace

import pytest

from cut_core import ConfigError, CUTConfig, parse_overrides
from cut_core.config import ADA_GUARD_SETS


def test_cut_preset_carries_the_official_values():
    c = CUTConfig.cut()
    assert (c.loss.lambda_GAN, c.loss.lambda_NCE, c.loss.nce_idt) == (1.0, 1.0, True)
    assert c.loss.nce_layers == (0, 4, 8, 12, 16)
    assert (c.loss.num_patches, c.loss.nce_T, c.model.netF_nc) == (256, 0.07, 256)
    assert c.loss.flip_equivariance is False and c.loss.gan_mode == "lsgan"
    assert (c.optim.lr, c.optim.beta1, c.optim.beta2) == (2e-4, 0.5, 0.999)
    assert (c.optim.n_epochs, c.optim.n_epochs_decay, c.optim.batch_size) == (200, 200, 1)
    assert (c.data.load_size, c.data.crop_size) == (286, 256)
    assert (c.model.ngf, c.model.ndf, c.model.n_blocks, c.model.init_gain) == (64, 64, 9, 0.02)


def test_fastcut_preset_differs_where_the_paper_says():
    c = CUTConfig.fastcut()
    assert c.loss.nce_idt is False and c.loss.lambda_NCE == 10.0 and c.loss.flip_equivariance is True
    assert (c.optim.n_epochs, c.optim.n_epochs_decay) == (150, 50)
    # Everything else as CUT, but D's depth: FastCUT's fits the crop (the paper's 3 at
    # its 256 px), CUT's preset keeps the paper's 3 at every crop (docs/quality.md).
    assert c.model == replace(CUTConfig.cut().model, n_layers_D="auto") and c.loss.nce_T == 0.07
    assert CUTConfig.cut().model.n_layers_D == 3 and c.d_layers == CUTConfig.cut().d_layers == 3


def test_overrides_use_official_flat_names_and_dotted_paths():
    c = CUTConfig.cut().with_overrides(parse_overrides(["crop_size=512", "load_size=1024", "nce_layers=0,4,8", "loss.nce_T=0.05", "nce_idt=false"]))
    assert c.data.crop_size == 512 and c.data.load_size == 1024
    assert c.loss.nce_layers == (0, 4, 8) and c.loss.nce_T == 0.05 and c.loss.nce_idt is False


def test_dict_round_trip_and_flat_view():
    c = CUTConfig.fastcut().with_overrides({"ngf": 16})
    assert CUTConfig.from_dict(c.to_dict()) == c
    flat = c.flat()
    assert flat["ngf"] == 16 and flat["lambda_NCE"] == 10.0 and flat["preset"] == "fastcut"


@pytest.mark.parametrize(
    "override, words",
    [
        ({"nce_layers": "0,4,99"}, "out of range"),
        ({"nce_layers": "8,4"}, "strictly increasing"),
        ({"num_patches": 0}, "num_patches=0"),
        ({"nce_T": 0}, "nce_T=0.0 must be > 0"),
        ({"nce_T": -1}, "must be > 0"),
        ({"crop_size": 30}, "multiple of 4"),
        ({"crop_size": 512}, "load_size=286 is smaller than crop_size=512"),
        ({"gan_mode": "wgan"}, "not one of"),
        ({"lr": 0}, "lr=0.0"),
        ({"crop_size": "big"}, "not a valid int"),
        ({"nce_idt": "maybe"}, "not a boolean"),
        ({"no_such_option": 1}, "unknown config key"),
        # CUT's ADA guard needs D's ops: emptying them alone says how to turn it off.
        ({"d_augment": ""}, "or set d_augment_target=0 too"),
    ],
)
def test_bad_values_get_one_clear_message(override, words):
    with pytest.raises(ConfigError) as info:
        CUTConfig.cut().with_overrides(override)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["crop_size"])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        CUTConfig.from_preset("pix2pix")


def test_yaml_config_file_then_set_overrides(tmp_path):
    """`raycut train --config Y --set k=v`: flat names, sections and lists in YAML;
    --set wins; a bad file is one clear ConfigError."""
    from cut_core.errors import ConfigError
    from jobs.config_file import resolve_config

    f = tmp_path / "run.yaml"
    f.write_text("crop_size: 128\nload_size: 143\nloss:\n  nce_T: 0.05\nnce_layers: [0, 4, 8]\n")
    cfg = resolve_config("cut", f, ["crop_size=96", "load_size=96"])
    assert (cfg.data.crop_size, cfg.data.load_size, cfg.loss.nce_T) == (96, 96, 0.05)
    assert tuple(cfg.loss.nce_layers) == (0, 4, 8)
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config("cut", tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config("cut", tmp_path / "missing.yaml")


# ---- CUT's own option names, the printable config --------------------------------------


@pytest.mark.parametrize("value, blocks", [("resnet_9blocks", 9), ("resnet_6blocks", 6)])
def test_official_netG_names_set_the_resnet_and_its_blocks(value, blocks):
    cfg = CUTConfig.cut().with_overrides({"netG": value})
    assert cfg.model.netG == "resnet" and cfg.model.n_blocks == blocks


@pytest.mark.parametrize("key, value, words", [
    ("normG", "batch", "raycut does not vary normG: it always uses instance norm in G"),
    ("no_antialias", "true", "raycut does not vary no_antialias"),
    ("lr_policy", "cosine", "the linear policy"),
    ("gpu_ids", "0,1", "use --gpus-per-worker"),
    ("crop_sise", "128", "did you mean crop_size?"),
    ("loss.nce_tau", "0.1", "did you mean nce_T?"),
])
def test_official_options_raycut_fixes_or_flags_get_one_line(key, value, words):
    with pytest.raises(ConfigError, match=words):
        CUTConfig.cut().with_overrides({key: value})


def test_official_options_asking_for_what_raycut_uses_pass():
    assert CUTConfig.cut().with_overrides({"normG": "instance", "init_type": "xavier", "no_antialias": "false"}) == CUTConfig.cut()


def test_yaml_names_its_preset_and_config_show_round_trips(tmp_path):
    from jobs.config_file import resolve_config, resolve_with_sources, show_config

    path = tmp_path / "run.yaml"
    path.write_text("CUT_mode: FastCUT\ncrop_size: 128\nload_size: 143\n")
    resolved = resolve_with_sources(None, path, ["lambda_NCE=4", "netG=resnet_6blocks"])
    cfg = resolved.config
    assert cfg.preset == "fastcut" and cfg.loss.flip_equivariance and cfg.model.n_blocks == 6
    text = show_config(resolved)
    assert "lambda_NCE: 4.0  # --set (preset: 10.0)" in text and "crop_size: 128  # config file (preset: 256)" in text
    assert "nce_T: 0.07\n" in text  # a preset value carries no comment
    assert "n_layers_D: auto  # here: 2 at 128 px crops\n" in text  # what auto settles to at this crop
    back = tmp_path / "back.yaml"
    back.write_text(text)
    assert resolve_config(None, back) == cfg  # what `config show` prints is a --config file
    with pytest.raises(ConfigError, match="names preset fastcut but --preset says cut"):
        resolve_config("cut", path)


def test_typed_overrides_apply_after_set_without_a_round_trip_through_text():
    """A Tune trial's sampled values (a list, a numpy float, a bool) reach the config as
    values, after --set, and the best-config YAML names the trial as their source."""
    import numpy as np

    from jobs.config_file import resolve_with_sources, show_config

    trial = {"nce_layers": [0, 4, 8], "lambda_NCE": np.float64(2.5), "flip_equivariance": True, "num_patches": 64}
    resolved = resolve_with_sources("cut", None, ["lambda_NCE=4", "ngf=8"], trial, overrides_from="tune trial t1")
    cfg = resolved.config
    assert cfg.loss.nce_layers == (0, 4, 8) and cfg.loss.lambda_NCE == 2.5 and type(cfg.loss.lambda_NCE) is float
    assert cfg.loss.flip_equivariance is True and cfg.loss.num_patches == 64 and cfg.model.ngf == 8
    text = show_config(resolved)
    assert "lambda_NCE: 2.5  # tune trial t1 (preset: 1.0)" in text and "ngf: 8  # --set (preset: 64)" in text
    with pytest.raises(ConfigError, match="num_patches"):
        resolve_with_sources("cut", None, [], {"num_patches": "many"})


def test_cli_version_dry_run_dataroot_and_examples(tmp_path, capsys):
    from jobs.cli import EXAMPLES, build_parser, main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("raycut ")
    for domain in ("trainA", "trainB"):
        (tmp_path / domain).mkdir()
    assert main(["train", "--CUT_mode", "FastCUT", "--dataroot", str(tmp_path), "--set", "crop_size=64",
                 "--set", "load_size=64", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# raycut config: preset fastcut") and "crop_size: 64  # --set" in out
    # A domain's folder where its parent belongs: one line that says which folder to pass.
    assert main(["train", "--dataroot", str(tmp_path / "trainA"), "--dry-run"]) == 2
    assert capsys.readouterr().err == (f"raycut: error: --dataroot {tmp_path / 'trainA'} holds no trainA/ folder; pass the "
                                       f"folder above trainA/ and trainB/ (CUT's layout), or name each domain with "
                                       f"--data-a and --data-b\n")
    assert main(["train", "--set", "normG=batch", "--dry-run"]) == 2
    assert "raycut: error: raycut does not vary normG" in capsys.readouterr().err
    parser = build_parser()
    helps = {name: sub.format_help() for name, sub in parser._subparsers._group_actions[0].choices.items()}
    assert set(EXAMPLES) == set(helps) and all("raycut " in h.partition("\nexample:\n  ")[2] for h in helps.values())


def test_builtin_toy_config_by_name_is_the_demo_model(tmp_path, monkeypatch):
    """``--config toy`` names the shipped YAML (the demo's model, defined once); a file
    of that name in the working directory wins, a folder (the toy dataset) does not; a
    missing name lists the built-ins."""
    from jobs.config_file import resolve_config
    from jobs.demo import DemoOptions, demo_config

    monkeypatch.chdir(tmp_path)
    toy = resolve_config("fastcut", "toy", ["crop_size=32", "load_size=32"])
    assert (toy.model.ngf, toy.model.ndf, toy.model.n_blocks, toy.model.n_layers_D) == (16, 8, 6, 2)
    demo = demo_config(DemoOptions(size=32, workers=2))
    assert demo.model == toy.model and demo.optim.batch_size == 2 and demo.data.crop_size == 32
    # A folder of that name (the README's `raycut toy-data --out toy`) does not hide it...
    (tmp_path / "toy").mkdir()
    assert resolve_config("fastcut", "toy", []).model == toy.model
    (tmp_path / "toy").rmdir()
    # ... a file does; and a folder that names no built-in config says what it is.
    (tmp_path / "toy").write_text("ngf: 24\n")
    assert resolve_config("fastcut", "toy", []).model.ngf == 24
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match="config file runs is a folder; pass a YAML file"):
        resolve_config("fastcut", "runs", [])
    small = resolve_config(None, "fastcut-small-data", [])  # names its preset, keeps the preset's model
    assert small.preset == "fastcut" and small.loss.lambda_NCE == 1 and small.model == CUTConfig.from_preset("fastcut").model
    # The guard it ships is the one the bench and the D-won advice name.
    recipe = ["lambda_NCE=1", *ADA_GUARD_SETS, "n_epochs=100", "n_epochs_decay=100", "ema_decay=0.999", "lr=0.0001",
              "n_epochs_warmup=0"]
    assert small == resolve_config("fastcut", None, recipe)
    # CUT's is the preset and the rate's cut on the val metric, nothing else.
    assert resolve_config(None, "cut-small-data", []) == resolve_config("cut", None, ["lr_plateau_patience=2"])
    assert resolve_config(None, "cut-small-data", []) != resolve_config("cut", None, [])
    with pytest.raises(ConfigError, match="built-in configs by name: cut-small-data, fastcut-small-data, toy"):
        resolve_config("fastcut", "tiny-model", [])
