"""Feature extractors for FID and KID: the paper's Inception v3, or any TorchScript net.

The paper's protocol (as pytorch-fid computes it): RGB in [0, 1], bilinear resize to
299x299, scaled to [-1, 1], through the TensorFlow FID Inception v3 ported to PyTorch
(pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``), pool3 features (2048-d).
The architecture comes from pytorch-fid itself; the weights from a local file only:
nothing here downloads, because jobs on a cluster must not reach the internet.

Every extractor maps float (N, 3, S, S) in [0, 1] to (N, d) float32; ``S`` is the
extractor's ``input_size`` (the resize happens before batching, per image).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cut_core.errors import RaycutError

if TYPE_CHECKING:
    import numpy as np

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE
INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name carries its hash prefix
INCEPTION_SIZE = 299


def weights_search_paths() -> list[Path]:
    """Where a missing ``--inception-weights`` is looked for, in order."""
    cache = Path(os.environ.get("RAYCUT_CACHE", Path.home() / ".cache" / "raycut"))
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return [cache / INCEPTION_FILE, hub / INCEPTION_FILE]  # the second is where pytorch-fid caches it


def find_inception_weights(path: str | None = None) -> Path:
    """The weights file to use, or one line that says what to fetch and where to put it."""
    if path:
        if not Path(path).is_file():
            raise RaycutError(f"--inception-weights {path} does not exist; download {INCEPTION_URL} to that path")
        return Path(path)
    for candidate in weights_search_paths():
        if candidate.is_file():
            return candidate
    first = weights_search_paths()[0]
    raise RaycutError(f"FID/KID need pytorch-fid's Inception weights, which raycut never downloads at run time: fetch "
                      f"{INCEPTION_URL} once and put it at {first} (or pass --inception-weights PATH)")


class FIDInceptionPool3(nn.Module):
    """pytorch-fid's FID Inception v3 up to pool3: (N, 3, 299, 299) in [0, 1] -> (N, 2048)."""

    num_features = 2048
    input_size = INCEPTION_SIZE

    def __init__(self, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        from pytorch_fid import inception as fid  # the FID-specific blocks, not our copy of them

        net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        # The TF graph differs from torchvision's Inception in these blocks (pooling
        # details); pytorch-fid's fid_inception_v3 makes the same replacements.
        net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = fid.FIDInceptionE_1(1280)
        net.Mixed_7c = fid.FIDInceptionE_2(2048)
        if state_dict is not None:
            net.load_state_dict(state_dict)
        self.inception = net  # state-dict keys as in pytorch-fid's file (fc included, unused)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.inception
        x = 2 * x - 1  # [0, 1] -> [-1, 1], as the TF graph expects
        x = n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = F.max_pool2d(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for block in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                      "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(n, block)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # pool3


def load_user_module(path: str, option: str) -> nn.Module:
    """A user's network without pickle: TorchScript (``torch.jit.save``), or an exported
    program (``torch.export.save``, a ``.pt2`` file), on the CPU in eval mode."""
    try:
        if path.endswith(".pt2"):
            return torch.export.load(path).module()
        return torch.jit.load(path, map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001 - any failure to load is the same message to the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise RaycutError(f"{option} {path} is not a loadable TorchScript or torch.export file ({first}); save yours "
                          "with torch.jit.save(torch.jit.script(model), path) or torch.export.save(...) as .pt2") from None


class TorchScriptFeatures(nn.Module):
    """A user's TorchScript (or exported) module: (N, 3, S, S) in [0, 1] -> its output,
    flattened to (N, d)."""

    def __init__(self, path: str, input_size: int) -> None:
        super().__init__()
        self.net = load_user_module(path, "--feature-extractor")
        self.input_size = input_size
        with torch.no_grad():
            self.num_features = int(self.net(torch.zeros(1, 3, input_size, input_size)).flatten(1).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1).float()


@dataclass(frozen=True)
class ExtractorSpec:
    """Which extractor to build; plain data, sent once to each Ray Data actor."""

    path: str  # the Inception weights file, or a TorchScript file
    kind: str = "inception"  # inception | torchscript
    input_size: int = INCEPTION_SIZE

    def describe(self) -> str:
        """What the report names as its extractor: kind, file and the file's hash."""
        what = "pytorch-fid Inception v3 pool3 (2048-d)" if self.kind == "inception" else "TorchScript"
        return f"{what}: {Path(self.path).name} sha256:{file_sha256(self.path)[:12]}"


def inception_spec(weights: str | None = None) -> ExtractorSpec:
    path = find_inception_weights(weights)
    digest = file_sha256(str(path))
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise RaycutError(f"{path} is not pytorch-fid's Inception file (sha256 {digest[:12]}..., expected "
                          f"{INCEPTION_SHA256_PREFIX}...): its FID would not be comparable; fetch {INCEPTION_URL}, or "
                          "pass a network of your own with --feature-extractor")
    return ExtractorSpec(path=str(path), kind="inception")


def torchscript_spec(path: str, input_size: int = INCEPTION_SIZE) -> ExtractorSpec:
    if not Path(path).is_file():
        raise RaycutError(f"--feature-extractor {path} does not exist")
    return ExtractorSpec(path=path, kind="torchscript", input_size=input_size)


def load_extractor(spec: ExtractorSpec) -> nn.Module:
    if spec.kind == "inception":
        state = torch.load(spec.path, map_location="cpu", weights_only=True)
        return FIDInceptionPool3(state)
    return TorchScriptFeatures(spec.path, spec.input_size)


def resize_for(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """(3, H, W) float images in [0, 1] -> (N, 3, size, size), bilinear as pytorch-fid
    resizes (align_corners False, no antialiasing)."""
    return torch.cat([F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)
                      for x in images])


@torch.inference_mode()
def features_of_images(net: nn.Module, images, *, batch: int = 16) -> "np.ndarray":
    """In-process features of (H, W, 3) uint8 images (small sets: validation subsets,
    the toy data): (N, d) float32. Large sets go through pipelines.fid's Ray Data job."""
    import numpy as np

    x = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() / 255 for im in images]
    return np.concatenate([net(resize_for(x[i : i + batch], net.input_size)).numpy() for i in range(0, len(x), batch)])


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
