"""cut_core.translate: exact sizes at any H x W, tiling close to the untiled output."""

from __future__ import annotations

import pytest
import torch

from cut_core.networks import build_generator
from cut_core.padding import MIN_SIZE
from tests.conftest import tiny


@pytest.fixture(scope="module")
def G():
    torch.manual_seed(0)
    return build_generator(tiny("cut").model).eval()


# Down to one pixel: G needs sides of 8 and more (cut_core.padding.MIN_SIZE); a
# thumbnail or a 1-pixel strip is padded up to that and cropped back.
@pytest.mark.parametrize("h, w", [(32, 32), (33, 47), (105, 191), (5, 9), (1, 1), (3, 2), (4, 64), (2, 300)])
def test_any_size_comes_back_at_its_size(G, h, w):
    from cut_core.translate import translate

    x = torch.rand(1, 3, h, w) * 2 - 1
    y = translate(G, x)
    assert y.shape == x.shape and y.dtype == torch.float32
    if h % 4 == 0 and w % 4 == 0 and min(h, w) >= MIN_SIZE:  # no padding: exactly G's output
        with torch.no_grad():
            torch.testing.assert_close(y, G(x))


def test_tiled_matches_untiled_within_instance_norm_tolerance(G):
    from cut_core.translate import translate

    g = torch.Generator().manual_seed(3)
    # A smooth image (like a photo, unlike noise) so tile statistics resemble the whole's.
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 20, generator=g) * 2 - 1, size=(96, 160), mode="bilinear")
    full = translate(G, x)
    tiled = translate(G, x, tile=64, overlap=16)
    assert tiled.shape == full.shape
    err = (tiled - full).abs()
    assert float(err.mean()) < 0.05 * float(full.abs().mean()) + 0.02, float(err.mean())
    # A tile as large as the image is the untiled path exactly.
    torch.testing.assert_close(translate(G, x, tile=160, overlap=16), full)


def test_labels_are_matched_by_relative_path_and_stem():
    """GTA5 (images/x <-> labels/x), Cityscapes (leftImg8bit <-> gtFine_*), and a
    CycleGAN-style tree where several splits share file names."""
    from pipelines.label_files import matching_labels

    gta = matching_labels(["/d/images/00001.png"], "/d", ["/d/labels/00001.png", "/d/labels/00002.png"], "/d/labels")
    assert gta == ["/d/labels/00001.png"]
    city = matching_labels(
        ["/c/leftImg8bit/val/bonn/bonn_000001_000019_leftImg8bit.png"], "/c",
        ["/c/gtFine/val/bonn/bonn_000001_000019_gtFine_labelIds.png", "/c/gtFine/val/bonn/bonn_000002_000019_gtFine_labelIds.png"],
        "/c/gtFine")
    assert city == ["/c/gtFine/val/bonn/bonn_000001_000019_gtFine_labelIds.png"]
    toy = matching_labels(["/t/testA/00000.png"], "/t", ["/t/labels/testA/00000.png", "/t/labels/trainA/00000.png"], "/t/labels")
    assert toy == ["/t/labels/testA/00000.png"]
