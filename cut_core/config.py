"""The typed config tree of raycut, with the paper's presets.

Field names follow the official CUT options (``--crop_size``, ``--lambda_NCE``,
``--nce_layers`` ...) so that ``--set crop_size=512`` means what a CUT user
expects. Every section is a frozen dataclass that validates itself; the whole
tree is converted to a dict only at the edges (JSON, YAML, Ray, MLflow).

Presets (official values, models/cut_model.py and models/sincut_model.py of the
reference implementation):

==========  =======  ==========  =======  =====  ===================
preset      nce_idt  lambda_NCE  flip eq  epochs  notes
==========  =======  ==========  =======  =====  ===================
cut         on       1           off      200+200
fastcut     off      10          on       150+50
sincut      on       4           off      8+8    R1, identity L1, all-batch negatives
cyclegan    -        0           off      100+100  two Gs and Ds, cycle L1 10, identity 0.5, pool 50
==========  =======  ==========  =======  =====  ===================

SinCUT (one image per domain) also swaps the networks for StyleGAN2-style ones
(``netG/netD stylegan2``, cut_core.stylegan2) and the data for crops of one picture
(``zoom_and_patch``). ``sincut-paper`` is the paper's appendix recipe instead: each
step rescales the image to a random width in [384, 1024], takes 16 crops of 128 px
and D scores their 64 px tiles.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Mapping

from cut_core.errors import ConfigError

# D's differentiable augmentations (cut_core.d_balance implements them). Named here so
# that reading a config needs no torch.
D_AUGMENT_OPS = ("color", "translation", "cutout")
# ADA as a guard (docs/quality.md), as --set values: p moves only while D's r_t is above
# 0.9, i.e. as D nears winning, and fast enough (0 -> 1 in 1000 images) to act within a
# short run. The bench's "guard" variant and the D-won advice use it;
# jobs/configs/fastcut-small-data.yaml ships it (a test keeps the two equal).
ADA_GUARD_SPEED = 1000
ADA_GUARD_SETS = (f"d_augment={','.join(D_AUGMENT_OPS)}", "d_augment_target=0.9", f"d_augment_speed={ADA_GUARD_SPEED}")
# CUT's preset carries the guard at a later target: p moves only once D's r_t passes
# 0.95, the level at which the D-won watch counts D sure of the reals (cut_core.d_balance).
# With CUT's 3-layer D the guard at 0.9 cost a held-out seed's labels 0.05; at 0.95 it
# acts later and less (p at most 0.08 on the toy seeds) and cost at most 0.04.
CUT_GUARD_TARGET = 0.95


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' -> () (off)."""
    ops = tuple(p.strip() for p in policy.split(",") if p.strip())
    bad = [o for o in ops if o not in D_AUGMENT_OPS]
    if bad:
        raise ValueError(f"unknown D augmentation {bad[0]!r}; choose from {', '.join(D_AUGMENT_OPS)}, comma-separated")
    return ops

Preset = Literal["cut", "fastcut", "sincut", "sincut-paper", "cyclegan"]
GanMode = Literal["lsgan", "nonsaturating", "vanilla"]
FlipCentre = Literal["edge", "pixel"]
Preprocess = Literal["resize_and_crop", "scale_width_and_crop", "crop", "none", "zoom_and_patch",
                     "random_width_and_patch"]
# Preprocessings that cut a whole minibatch out of one image (SinCUT; pipelines.single_image).
SINGLE_IMAGE_PREPROCESS = ("zoom_and_patch", "random_width_and_patch")
NetG = Literal["resnet", "stylegan2"]
NetD = Literal["basic", "stylegan2"]
# auto: settled per device by cut_core.hardware (bf16 only where it runs natively and fast).
Precision = Literal["auto", "fp32", "bf16"]
# What a translation can run in: training's precisions plus int8 (cut_core.quantize).
TranslatePrecision = Literal["auto", "fp32", "bf16", "int8"]
TRANSLATE_PRECISIONS: tuple[str, ...] = typing.get_args(TranslatePrecision)
AUTO = "auto"

FORMAT_VERSION = 1


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choice(name: str, value: Any, literal: Any) -> None:
    choices = typing.get_args(literal)
    _check(value in choices, f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


def patchgan_receptive_field(n_layers: int) -> int:
    """Pixels of the input that one logit of the PatchGAN D sees: 18, 40, 84, 172 for 1-4
    layers. CUT's D is anti-aliased: each 4x4 conv (stride 1) but the last two is
    followed by a 3-tap blur at stride 2, which widens the 70 px of pix2pix's D to 84."""
    r = 1
    for kernel, stride in reversed([(4, 1), (3, 2)] * n_layers + [(4, 1), (4, 1)]):
        r = (r - 1) * stride + kernel
    return r


PAPER_CROP, PAPER_D_LAYERS = 256, 3  # the official D and the crop it was designed at


def auto_d_layers(crop_size: int) -> int:
    """n_layers_D=auto: the depth (1 to the paper's 3) whose patch covers the fraction of
    the crop that the paper's D covers at 256 px (84/256), the nearest in ratio.

    Why: pix2pix measured patch sizes at 256 px and found a patch of about a quarter
    of the side best, a whole-image D worse. At 64 px the paper's 3 layers see the
    whole crop; on raycut's toy benchmark (64 px, 64 images a domain) one layer was
    better for FastCUT on four seeds of six, and for CUT at a constant rate on five of
    six (docs/quality.md). The cut preset keeps the paper's 3 layers: with the decay
    fitted to the run, they kept CUT's labels where one layer did not.
    Crops of 180 px and more get the paper's 3 layers, the official recipe unchanged;
    deeper than 3 is never chosen (the official code uses 3 at 512 px too).
    """
    target = crop_size * patchgan_receptive_field(PAPER_D_LAYERS) / PAPER_CROP
    return min(range(1, PAPER_D_LAYERS + 1), key=lambda n: abs(math.log(patchgan_receptive_field(n) / target)))


@dataclass(frozen=True)
class ModelConfig:
    """Generator G, discriminator D and patch MLP F: the official ``resnet_9blocks``,
    ``basic`` PatchGAN and ``mlp_sample`` (CUT), or StyleGAN2-style G and D (SinCUT)."""

    netG: NetG = "resnet"  # resnet: cut_core.networks; stylegan2: cut_core.stylegan2
    netD: NetD = "basic"  # basic: PatchGAN; stylegan2: scores D_patch_size tiles
    stylegan2_G_num_downsampling: int = 1
    D_patch_size: int = 0  # stylegan2 D: tile size (0: the whole crop)
    input_nc: int = 3
    output_nc: int = 3
    ngf: int = 64  # channels of G's first conv; 64 gives 11,378,179 parameters
    ndf: int = 64
    n_blocks: int = 9  # resnet: residual blocks at 1/4 resolution; stylegan2: half in G's encoder, half in its decoder
    # PatchGAN depth. auto: the paper's 3 at crops of 180 px and more (the official 256
    # included), shallower below, so that D's patch stays the fraction of the crop it is
    # in the paper (CUTConfig.d_layers); an integer: that depth at any crop (the cut
    # preset's 3).
    n_layers_D: int | Literal["auto"] = "auto"
    netF_nc: int = 256  # width of the MLP heads H_l
    init_gain: float = 0.02  # xavier_normal gain, as the official --init_type xavier

    def __post_init__(self) -> None:
        _check_choice("netG", self.netG, NetG)
        _check_choice("netD", self.netD, NetD)
        for name in ("input_nc", "output_nc", "ngf", "ndf", "n_blocks", "n_layers_D", "netF_nc",
                     "stylegan2_G_num_downsampling"):
            value = getattr(self, name)
            if name == "n_layers_D" and value == AUTO:
                continue
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                   f"{name}={value!r} must be an integer >= 1" + (" or auto" if name == "n_layers_D" else ""))
        _check(self.stylegan2_G_num_downsampling <= 2,
               f"stylegan2_G_num_downsampling={self.stylegan2_G_num_downsampling} must be 1 or 2 (sizes are multiples of 4)")
        _check(self.D_patch_size >= 0, f"D_patch_size={self.D_patch_size} must be >= 0 (0: the whole crop)")
        _check(self.init_gain > 0, f"init_gain={self.init_gain} must be > 0")

    @property
    def n_generator_layers(self) -> int:
        """How many layers the NCE layer ids index. resnet: G's ``model`` Sequential, 4 stem
        + 2*4 down + blocks + 2*4 up + 3 head; stylegan2: the encoder, identity + 1x1 conv
        + downsampling blocks + n_blocks // 2 blocks."""
        if self.netG == "stylegan2":
            return 2 + self.stylegan2_G_num_downsampling + self.n_blocks // 2
        return self.n_blocks + 23


@dataclass(frozen=True)
class LossConfig:
    """Objective: GAN + PatchNCE (+ identity/R1 for SinCUT)."""

    gan_mode: GanMode = "lsgan"
    lambda_GAN: float = 1.0
    lambda_NCE: float = 1.0
    nce_idt: bool = True  # CUT: NCE on G(real_B) vs real_B as well, the two terms averaged
    nce_layers: tuple[int, ...] = (0, 4, 8, 12, 16)  # indices into G.model
    num_patches: int = 256  # per layer and image
    nce_T: float = 0.07  # tau
    nce_includes_all_negatives_from_minibatch: bool = False  # SinCUT: negatives from every image
    # External negatives (the paper's MoCo-style baseline, cut_core.memory_bank): keys per
    # layer held in a bank (0 = off; the paper's baseline: 16384), from a momentum encoder.
    nce_bank_size: int = 0
    nce_bank_momentum: float = 0.999
    flip_equivariance: bool = False  # FastCUT
    # Where flip equivariance puts the mirror: "edge", between the two middle columns (the
    # official FastCUT), or "pixel", on column W/2, which maps every stride-2 sampling
    # grid of G's encoder onto itself (cut_core.training.mirror).
    flip_centre: FlipCentre = "edge"
    lambda_identity: float = 0.0  # SinCUT: L1(G(real_B), real_B)
    lambda_R1: float = 0.0  # SinCUT: R1 gradient penalty on D(real_B)
    # What D sees is augmented, reals and fakes alike (cut_core.d_balance): ops from
    # color,translation,cutout ("" = off), each applied per image with probability
    # d_augment_p, or, when d_augment_target > 0, with ADA's adaptive probability that
    # follows D's overfitting signal r_t towards that target (0.6 in the ADA paper).
    # ADA's p can go from 0 to 1 in d_augment_speed images seen by D, every worker's
    # counted, with r_t pooled over the workers so they share one p (the paper: 500k,
    # for runs of millions; at raycut's 20k default a run of 1500 batch-1 steps moves p
    # by 0.075 at most, so a short run needs a few thousand).
    d_augment: str = ""
    d_augment_p: float = 1.0
    d_augment_target: float = 0.0
    d_augment_speed: int = 20_000
    # CycleGAN (preset cyclegan, cut_core.cyclegan): cycle-consistency weights of
    # A -> B -> A and B -> A -> B, and the buffer of past fakes each D also sees (0: off).
    # Its identity loss is lambda_identity x lambda_A (or lambda_B), as in the official code.
    lambda_A: float = 10.0
    lambda_B: float = 10.0
    pool_size: int = 0

    def __post_init__(self) -> None:
        _check_choice("gan_mode", self.gan_mode, GanMode)
        _check_choice("flip_centre", self.flip_centre, FlipCentre)
        try:
            parse_policy(self.d_augment)
        except ValueError as e:
            raise ConfigError(f"d_augment={self.d_augment!r}: {e}") from None
        _check(0 <= self.d_augment_p <= 1, f"d_augment_p={self.d_augment_p} must lie in [0, 1]")
        _check(0 <= self.d_augment_target < 1, f"d_augment_target={self.d_augment_target} must lie in [0, 1) (0: fixed p)")
        _check(self.d_augment_speed >= 1, f"d_augment_speed={self.d_augment_speed} must be >= 1 (images for ADA's p to go from 0 to 1)")
        _check(not self.d_augment_target or self.d_augment,
               f"d_augment_target={self.d_augment_target} adapts the probability of d_augment's ops, and d_augment is "
               "empty: name them (d_augment=color,translation,cutout), or set d_augment_target=0 too to turn D's "
               "augmentation off")
        _check(len(self.nce_layers) > 0, "nce_layers is empty; give at least one layer id, e.g. 0,4,8,12,16")
        _check(
            list(self.nce_layers) == sorted(set(self.nce_layers)),
            f"nce_layers={','.join(map(str, self.nce_layers))} must be strictly increasing",
        )
        _check(self.nce_layers[0] >= 0, f"nce_layers has a negative id {self.nce_layers[0]}")
        _check(self.num_patches >= 1, f"num_patches={self.num_patches} must be >= 1")
        _check(self.nce_T > 0, f"nce_T={self.nce_T} must be > 0 (it divides the logits)")
        _check(self.nce_bank_size >= 0, f"nce_bank_size={self.nce_bank_size} must be >= 0 (0 turns the bank off)")
        _check(0 <= self.nce_bank_momentum < 1, f"nce_bank_momentum={self.nce_bank_momentum} must lie in [0, 1)")
        _check(
            not (self.nce_bank_size and self.nce_includes_all_negatives_from_minibatch),
            "nce_bank_size and nce_includes_all_negatives_from_minibatch are two negative sources; choose one",
        )
        _check(self.pool_size >= 0, f"pool_size={self.pool_size} must be >= 0 (0: no image pool)")
        for name in ("lambda_GAN", "lambda_NCE", "lambda_identity", "lambda_R1", "lambda_A", "lambda_B"):
            _check(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")


# Where PatchNCE's negatives come from, as one name (Tune's search space, reports),
# and the official-style options each name sets.
NEGATIVE_SOURCES: dict[str, dict[str, Any]] = {
    "image": {"nce_includes_all_negatives_from_minibatch": False, "nce_bank_size": 0},  # CUT: same image
    "minibatch": {"nce_includes_all_negatives_from_minibatch": True, "nce_bank_size": 0},  # every image of the batch
    "bank": {"nce_includes_all_negatives_from_minibatch": False, "nce_bank_size": 16384},  # MoCo-style, other images
}


def negative_source(loss: LossConfig) -> str:
    """The name of ``loss``'s negative source (a key of NEGATIVE_SOURCES)."""
    if loss.nce_bank_size:
        return "bank"
    return "minibatch" if loss.nce_includes_all_negatives_from_minibatch else "image"


@dataclass(frozen=True)
class OptimConfig:
    """Adam for G, D and F, with the official 'linear' policy: constant for
    ``n_epochs``, then linear decay to zero over ``n_epochs_decay``; optionally a
    linear warm-up over the first ``n_epochs_warmup`` of the ``n_epochs``."""

    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_epochs: int = 200
    n_epochs_decay: int = 200
    # Epochs (of n_epochs, fitted to the run like them) over which the LR ramps up
    # linearly to lr; 0 = none, the official schedule. A short run's G can lose the
    # layout in its first few hundred steps at the full rate (docs/quality.md).
    n_epochs_warmup: int = 0
    batch_size: int = 1  # per worker
    # An exponential moving average of G's weights (cut_core.ema), 0 = off: the G that is
    # evaluated, shown and registered when on. 0.999 averages about the last 1000 steps,
    # but only from step ~9000 on: before that the ramp (cut_core.ema) holds the decay at
    # (1 + t) / (10 + t), about the last t / 9 steps (170 at step 1500).
    ema_decay: float = 0.0
    # G's and F's gradient norms clipped at this many times the median of their last 200
    # steps' norms (cut_core.grad_guard), 0 = off: a guard against one-step spikes.
    grad_clip_median: float = 0.0
    # What a gradient over that limit is cut to, as a multiple of the same median; 0 =
    # the limit itself. Under grad_clip_median, a loose trigger can cut spikes deep.
    grad_clip_to: float = 0.0
    # A rate that follows the val metric (cut_core.lr_plateau), 0 = off: after this many
    # evaluations (`--eval-every`) in a row without a new best, before the decay, the
    # schedule's rate is multiplied by lr_plateau_factor, never below lr_plateau_min of it.
    # One cut to half by default: half the paper's rate is the lowest measured to finish
    # CUT's runs (docs/quality.md); lower it for more cuts.
    lr_plateau_patience: int = 0
    lr_plateau_factor: float = 0.5
    lr_plateau_min: float = 0.5

    @property
    def grad_clip_target(self) -> float:
        """What the guard cuts a gradient over its trigger down to, as a multiple of the
        median: ``grad_clip_to``, or the trigger itself where that is 0 (plain clipping)."""
        return self.grad_clip_to or self.grad_clip_median

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"lr={self.lr} must be > 0")
        _check(self.grad_clip_median == 0 or self.grad_clip_median > 1,
               f"grad_clip_median={self.grad_clip_median} must be 0 (off) or > 1 (a multiple of the median norm)")
        _check(self.grad_clip_to == 0 or (self.grad_clip_median and 0 < self.grad_clip_to <= self.grad_clip_median),
               f"grad_clip_to={self.grad_clip_to} must be 0 (the limit itself) or in (0, grad_clip_median="
               f"{self.grad_clip_median:g}]: it is what a gradient over grad_clip_median is cut to")
        _check(0 <= self.ema_decay < 1, f"ema_decay={self.ema_decay} must lie in [0, 1) (0 turns the average off)")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, f"betas ({self.beta1}, {self.beta2}) must lie in [0, 1)")
        _check(self.n_epochs >= 0 and self.n_epochs_decay >= 0, "n_epochs and n_epochs_decay must be >= 0")
        _check(self.n_epochs + self.n_epochs_decay >= 1, "n_epochs + n_epochs_decay must be >= 1")
        _check(0 <= self.n_epochs_warmup <= self.n_epochs,
               f"n_epochs_warmup={self.n_epochs_warmup} must lie in [0, n_epochs={self.n_epochs}]: "
               "the warm-up is the start of the epochs at the full rate")
        _check(self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1")
        _check(self.lr_plateau_patience >= 0,
               f"lr_plateau_patience={self.lr_plateau_patience} must be >= 0 (evaluations; 0 turns the cuts off)")
        _check(0 < self.lr_plateau_factor < 1, f"lr_plateau_factor={self.lr_plateau_factor} must lie in (0, 1)")
        _check(0 < self.lr_plateau_min <= 1, f"lr_plateau_min={self.lr_plateau_min} must lie in (0, 1]")


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing, as the official ``--preprocess/--load_size/--crop_size``."""

    preprocess: Preprocess = "resize_and_crop"
    load_size: int = 286  # random_width_and_patch: the largest width
    crop_size: int = 256
    no_flip: bool = False
    random_scale_max: float = 3.0  # zoom_and_patch: each axis scaled by U(1/max, 1)
    random_width_min: int = 384  # random_width_and_patch: the smallest width

    @property
    def single_image(self) -> bool:
        """Whether a minibatch is cut from one image per domain (SinCUT)."""
        return self.preprocess in SINGLE_IMAGE_PREPROCESS

    def __post_init__(self) -> None:
        _check_choice("preprocess", self.preprocess, Preprocess)
        _check(self.random_scale_max >= 1, f"random_scale_max={self.random_scale_max} must be >= 1")
        if self.preprocess == "random_width_and_patch":
            _check(self.crop_size <= self.random_width_min <= self.load_size,
                   f"random widths [{self.random_width_min}, {self.load_size}] must satisfy "
                   f"crop_size={self.crop_size} <= random_width_min <= load_size")
        _check(self.crop_size >= 4, f"crop_size={self.crop_size} must be >= 4")
        _check(self.crop_size % 4 == 0, f"crop_size={self.crop_size} must be a multiple of 4 (G downsamples twice)")
        if self.preprocess in ("resize_and_crop", "scale_width_and_crop"):
            _check(
                self.load_size >= self.crop_size,
                f"load_size={self.load_size} is smaller than crop_size={self.crop_size}; raise load_size",
            )


@dataclass(frozen=True)
class PerfConfig:
    """Fast paths. fp32 eager is the reference the tests compare against.

    ``auto`` (the default) is settled once per process on the device that runs the
    step, by a short measured probe (cut_core.hardware.resolve_perf): bf16 only where
    the hardware runs it natively and faster, channels_last only where it wins."""

    precision: Precision = "auto"  # bf16: autocast; NCE logits, softmax and losses stay fp32
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False  # torch.compile of G, D and F (pays a compile time up front)

    def __post_init__(self) -> None:
        _check_choice("precision", self.precision, Precision)
        _check(self.channels_last in (True, False, AUTO),
               f"channels_last={self.channels_last!r} must be true, false or auto")

    @property
    def resolved(self) -> bool:
        """Whether nothing is left to ``auto``: what the training step runs with."""
        return self.precision != AUTO and self.channels_last != AUTO


@dataclass(frozen=True)
class CUTConfig:
    """The whole resolved configuration of one run."""

    preset: Preset = "cut"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("preset", self.preset, Preset)
        last = self.model.n_generator_layers - 1
        bad = [i for i in self.loss.nce_layers if i > last]
        _check(
            not bad,
            f"nce_layers id {bad[0] if bad else ''} is out of range: G ({self.model.netG}) with "
            f"n_blocks={self.model.n_blocks} has layers 0..{last}",
        )
        _check(not (self.preset == "cyclegan" and self.loss.d_augment),
               f"d_augment={self.loss.d_augment!r} is not used by the cyclegan preset (its Ds see plain images); "
               "drop it, or --set d_augment= when the config file sets it")
        if self.model.netD == "stylegan2":
            tile = self.d_tile_size
            _check(tile >= 8 and tile & (tile - 1) == 0,
                   f"netD=stylegan2 scores square tiles of a power of two >= 8 pixels; D_patch_size (or crop_size) is {tile}")
            _check(self.data.crop_size % tile == 0,
                   f"crop_size={self.data.crop_size} must be a multiple of D_patch_size={tile} (D scores whole tiles)")

    @property
    def d_tile_size(self) -> int:
        """The StyleGAN2 D's input size: D_patch_size, or the whole crop."""
        return self.model.D_patch_size or self.data.crop_size

    @property
    def d_layers(self) -> int:
        """The PatchGAN D's depth: n_layers_D, or for auto the one of auto_d_layers."""
        n = self.model.n_layers_D
        return auto_d_layers(self.data.crop_size) if n == AUTO else int(n)

    @property
    def d_summary(self) -> str:
        """What D is, for the console: e.g. ``D: PatchGAN of 1 layer, 18 px patches
        (n_layers_D auto at 64 px crops)``."""
        if self.model.netD == "stylegan2":
            return f"D: StyleGAN2 on {self.d_tile_size} px tiles"
        n = self.d_layers
        why = f" (n_layers_D auto at {self.data.crop_size} px crops)" if self.model.n_layers_D == AUTO else ""
        return f"D: PatchGAN of {n} layer{'s' if n > 1 else ''}, {patchgan_receptive_field(n)} px patches{why}"

    # ---- presets -------------------------------------------------------------------
    @classmethod
    def cut(cls) -> CUTConfig:
        # The paper's recipe, judged and registered by the moving average of G: training
        # is unchanged (the average is a shadow), and on three toy pairs at 64 px it kept
        # colour and layout where the raw G's last step lost them (docs/quality.md).
        # D keeps the paper's 3 layers at every crop (auto is FastCUT's and the
        # default's): with the decay fitted to the run, CUT's 3-layer D at 64 px kept
        # the labels of the settings of before on seven of eight seeds and came within
        # 0.03 on the eighth (where the decay costs a little), while auto's one layer met
        # a PatchNCE spike on street seed 2 and lost 0.21 there (docs/quality.md, "CUT's
        # D at 64 px, with the decay and the EMA").
        # ADA guards D from r_t 0.95 on (CUT_GUARD_TARGET): in a bf16 draw of the nine
        # toy seeds D won on coast seed 1 for 390 steps without it (0.51x histogram
        # matching's colour error); with it no seed's D won for more than 60 steps, every
        # seed met the colour target (at most 0.44x), and labels stayed within 0.022 of
        # the settings of before (0.04 on street seed 0 in an fp32 draw, where the
        # defaults were as far under). It misses too: coast seed 0 at 0.52x in that fp32
        # draw, coast seed 1 at 0.60x in the first draw, where the defaults without it
        # reached 0.25x and 0.36x. Paired over 18 seed-draws it leaves colour and labels
        # level on average; it stays for D's balance (its longest win 80 steps at most,
        # 390 without it; docs/quality.md, "ADA's guard at 0.95 on every seed" and the
        # two sections after it).
        guard = LossConfig(d_augment=",".join(D_AUGMENT_OPS), d_augment_target=CUT_GUARD_TARGET,
                           d_augment_speed=ADA_GUARD_SPEED)
        return cls(preset="cut", model=ModelConfig(n_layers_D=PAPER_D_LAYERS), loss=guard,
                   optim=OptimConfig(ema_decay=0.999))

    @classmethod
    def fastcut(cls) -> CUTConfig:
        return cls(
            preset="fastcut",
            loss=LossConfig(nce_idt=False, lambda_NCE=10.0, flip_equivariance=True),
            optim=OptimConfig(n_epochs=150, n_epochs_decay=50),
        )

    @classmethod
    def sincut(cls) -> CUTConfig:
        # models/sincut_model.py: StyleGAN2 G (one downsampling) and D, layers 0,2,4 of
        # G's encoder, one patch per crop with the other crops as negatives. An epoch
        # is 100k crops (pipelines.single_image).
        return cls(
            preset="sincut",
            model=ModelConfig(netG="stylegan2", netD="stylegan2", ngf=10, ndf=8, n_blocks=6),
            loss=LossConfig(
                gan_mode="nonsaturating",
                lambda_NCE=4.0,
                nce_layers=(0, 2, 4),
                num_patches=1,
                nce_includes_all_negatives_from_minibatch=True,
                lambda_identity=1.0,
                lambda_R1=1.0,
            ),
            optim=OptimConfig(lr=2e-3, beta1=0.0, beta2=0.99, n_epochs=8, n_epochs_decay=8, batch_size=16),
            data=DataConfig(preprocess="zoom_and_patch", load_size=1024, crop_size=64),
        )

    @classmethod
    def sincut_paper(cls) -> CUTConfig:
        """The paper's appendix recipe: random width in [384, 1024], 16 crops of 128 px,
        D on their 64 px tiles."""
        base = cls.sincut()
        return replace(
            base,
            preset="sincut-paper",
            model=replace(base.model, D_patch_size=64),
            data=DataConfig(preprocess="random_width_and_patch", load_size=1024, random_width_min=384, crop_size=128),
        )

    @classmethod
    def cyclegan(cls) -> CUTConfig:
        """CycleGAN (Zhu et al. 2017), the baseline CUT is compared with: two ResNet Gs
        and two PatchGAN Ds (the same networks as CUT's), cycle and identity L1, a pool
        of 50 past fakes for each D; the official defaults (models/cycle_gan_model.py)."""
        return cls(
            preset="cyclegan",
            loss=LossConfig(gan_mode="lsgan", lambda_NCE=0.0, nce_idt=False, lambda_identity=0.5, pool_size=50),
            optim=OptimConfig(n_epochs=100, n_epochs_decay=100),
        )

    @property
    def is_cyclegan(self) -> bool:
        return self.preset == "cyclegan"

    @classmethod
    def tiny(cls, preset: str = "cut", **overrides: Any) -> CUTConfig:
        """The preset at check size (tests, device checks): TINY_OVERRIDES, fp32 NCHW
        so it computes the same on every CPU kind, then ``overrides``."""
        small = TINY_SINCUT_OVERRIDES if preset.startswith("sincut") else TINY_OVERRIDES
        return cls.from_preset(preset).with_overrides({**small, **overrides})

    @classmethod
    def from_preset(cls, name: str) -> CUTConfig:
        makers = {"cut": cls.cut, "fastcut": cls.fastcut, "sincut": cls.sincut, "sincut-paper": cls.sincut_paper,
                  "cyclegan": cls.cyclegan}
        if name not in makers:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(makers)}")
        return makers[name]()

    # ---- dict boundary -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CUTConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are errors, missing keys take defaults."""
        return _build(cls, data, path="")

    def flat(self) -> dict[str, Any]:
        """``{"crop_size": 256, "lambda_NCE": 1.0, ...}``: for MLflow params and Tune."""
        out: dict[str, Any] = {"preset": self.preset, "seed": self.seed}
        for section in _SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        return out

    def with_overrides(self, overrides: Mapping[str, Any]) -> CUTConfig:
        """Apply ``{"crop_size": "512", "loss.nce_T": 0.05}``: flat official names or
        dotted paths; strings are parsed to the field's type."""
        # Group by section first so that related values (load_size with crop_size)
        # are validated together, not one at a time.
        top: dict[str, Any] = {}
        grouped: dict[str, dict[str, Any]] = {}
        for key, raw in official_names(overrides).items():
            section, name = _locate(key)
            if section is None:
                top[name] = _coerce(key, raw, _field_type(CUTConfig, name))
            else:
                tp = _field_type(_section_type(section), name)
                grouped.setdefault(section, {})[name] = _coerce(key, raw, tp)
        for section, values in grouped.items():
            top[section] = replace(getattr(self, section), **values)
        return replace(self, **top)

_SECTIONS = ("model", "loss", "optim", "data", "perf")

# The check-size model of tests and device checks (CUTConfig.tiny): ngf/ndf 8, 3 blocks,
# 32 px crops, batch 2; SinCUT keeps its layers and blocks at ngf/ndf 4.
EXACT_PERF: dict[str, Any] = {"precision": "fp32", "channels_last": False}
TINY_OVERRIDES: dict[str, Any] = {
    "ngf": 8, "ndf": 8, "n_blocks": 3, "netF_nc": 16, "nce_layers": "0,4,8,12,14", "num_patches": 32,
    "crop_size": 32, "load_size": 32, "preprocess": "crop", "batch_size": 2, **EXACT_PERF,
}
TINY_SINCUT_OVERRIDES: dict[str, Any] = {
    "ngf": 4, "ndf": 4, "netF_nc": 16, "crop_size": 32, "batch_size": 2, "D_patch_size": 0, **EXACT_PERF,
}


# Options of the official CUT code that raycut does not vary: the value it always uses,
# and what to say to a user who asks for another. (Options that raycut takes under its
# own flag are in OFFICIAL_FLAGS.)
OFFICIAL_FIXED: dict[str, tuple[str, str]] = {
    "no_antialias": ("false", "anti-aliased downsampling (the official default)"),
    "no_antialias_up": ("false", "anti-aliased upsampling (the official default)"),
    "normG": ("instance", "instance norm in G"),
    "normD": ("instance", "instance norm in D"),
    "init_type": ("xavier", "xavier init (its gain is init_gain)"),
    "netF": ("mlp_sample", "the mlp_sample patch MLP (its width is netF_nc)"),
    "lr_policy": ("linear", "the linear policy: n_epochs constant, then n_epochs_decay down to 0; for cuts on the "
                            "val metric add lr_plateau_patience=N with --eval-every"),
    "no_dropout": ("true", "no dropout (as the official CUT default)"),
    "dataset_mode": ("unaligned", "unaligned A and B, drawn independently"),
    "direction": ("atob", "A -> B (swap --data-a and --data-b for B -> A)"),
    "serial_batches": ("false", "shuffled batches"),
}
OFFICIAL_FLAGS: dict[str, str] = {  # official option -> the raycut flag that does it
    "dataroot": "--dataroot ROOT (or --data-a/--data-b)", "name": "--name", "gpu_ids": "--gpus-per-worker",
    "checkpoints_dir": "--storage-path", "continue_train": "--resume", "CUT_mode": "--CUT_mode or --preset",
    "model": "--preset", "phase": "cyclegan:ROOT:trainA sources", "max_dataset_size": "a glob or folder of the images",
}
NETG_OFFICIAL = {"resnet_9blocks": 9, "resnet_6blocks": 6}  # the official names of the ResNet G


def official_names(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """CUT's own option names and values, taken as CUT users write them:
    ``netG=resnet_9blocks`` (or ``resnet_6blocks``) sets the ResNet G and its blocks; an
    option raycut does not vary passes when it asks for what raycut uses and is one
    clear error otherwise; an option raycut takes as a flag says which."""
    out: dict[str, Any] = {}
    for key, raw in overrides.items():
        name = key.rpartition(".")[2]
        if name == "netG" and str(raw) in NETG_OFFICIAL:
            out[key] = "resnet"
            out.setdefault("n_blocks", NETG_OFFICIAL[str(raw)])
        elif name in OFFICIAL_FIXED:
            value, what = OFFICIAL_FIXED[name]
            if str(raw).lower() != value:
                raise ConfigError(f"raycut does not vary {name}: it always uses {what} ({name}={value})")
        elif name in OFFICIAL_FLAGS:
            raise ConfigError(f"{name} is not a config key in raycut; use {OFFICIAL_FLAGS[name]}")
        else:
            out[key] = raw
    return out


def known_keys() -> list[str]:
    """Every option name ``--set`` takes (flat official names)."""
    return ["preset", "seed"] + [f.name for section in _SECTIONS for f in fields(_section_type(section))]


def _unknown_key(key: str) -> ConfigError:
    import difflib

    close = difflib.get_close_matches(key.rpartition(".")[2], known_keys() + list(OFFICIAL_FIXED), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; see `raycut config show` for every key"
    return ConfigError(f"unknown config key {key!r}{hint}")


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["crop_size=512", "nce_layers=0,4,8"]`` -> dict; one clear error per bad item."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not key=value (for example --set crop_size=512)")
        out[key.strip()] = value.strip()
    return out


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _locate(key: str) -> tuple[str | None, str]:
    if "." in key:
        section, _, name = key.partition(".")
        if section not in _SECTIONS or name not in {f.name for f in fields(_section_type(section))}:
            raise _unknown_key(key)
        return section, name
    if key in ("preset", "seed"):
        return None, key
    for section in _SECTIONS:
        if key in {f.name for f in fields(_section_type(section))}:
            return section, key
    raise _unknown_key(key)


def _section_type(section: str) -> type:
    return _field_type(CUTConfig, section)


def _coerce(key: str, raw: Any, tp: Any) -> Any:
    """Parse ``raw`` (often a string from the command line or YAML) into type ``tp``."""
    origin = typing.get_origin(tp)
    try:
        if origin in (typing.Union, types.UnionType):  # bool | Literal["auto"]: a switch with an auto
            if str(raw).lower() == AUTO:
                return AUTO
            return _coerce(key, raw, next(t for t in typing.get_args(tp) if typing.get_origin(t) is not Literal))
        if origin is Literal:
            value = str(raw)
            if value not in typing.get_args(tp):
                raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, typing.get_args(tp)))}")
            return value
        if origin is tuple:
            if isinstance(raw, str):
                parts = [p for p in raw.replace(" ", "").split(",") if p]
            else:
                parts = list(raw)
            return tuple(int(p) for p in parts)
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key}={raw!r} is not a boolean (use true or false)")
        if tp is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if tp is float:
            return float(raw)
        if tp is str:
            return str(raw)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={raw!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    raise ConfigError(f"{key}: unsupported field type {tp}")


def _build(cls: type, data: Mapping[str, Any], path: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section {path or 'root'!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _unknown_key((path + "." if path else "") + unknown[0])
    kwargs = {}
    for name, raw in data.items():
        tp = hints[name]
        key = f"{path}.{name}" if path else name
        kwargs[name] = _build(tp, raw, key) if dataclasses.is_dataclass(tp) else _coerce(key, raw, tp)
    return cls(**kwargs)
