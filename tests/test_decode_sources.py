"""Decoding of awkward files and parsing of source strings (no Ray needed)."""

import io

import numpy as np
import pytest
from PIL import Image

from cut_core.errors import RaycutError
from pipelines.decode import decode_image
from pipelines.sources import list_source_files, parse_source


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bad_file_corpus() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected outcome: 'ok' or a word of the skip reason)."""
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    jpeg = _encode(rgb, "JPEG")
    sixteen = Image.fromarray(np.full((30, 30), 40000, dtype=np.uint16))
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 128))
    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return {
        "good.jpg": (jpeg, "ok"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "empty.png": (b"", "empty"),
        "text.png": (b"this is not an image\n", "not an image"),
        "sixteen_bit.png": (_encode(sixteen, "PNG"), "ok"),
        "cmyk.jpg": (_encode(cmyk, "JPEG"), "ok"),
        "rgba.png": (_encode(rgba, "PNG"), "ok"),
        "palette.png": (_encode(rgb.convert("P"), "PNG"), "ok"),
        "gray.png": (_encode(rgb.convert("L"), "PNG"), "ok"),
        "rotated.jpg": (_encode(rgb, "JPEG", exif=exif), "ok"),
        "huge.png": (_encode(Image.new("1", (9000, 9000)), "PNG"), "too large"),
    }


@pytest.mark.parametrize("name", list(bad_file_corpus()))
def test_decode_never_raises_and_says_why(name):
    data, expected = bad_file_corpus()[name]
    result = decode_image(data, max_pixels=64_000_000)
    if expected == "ok":
        assert result.image is not None and result.reason == ""
        assert result.image.dtype == np.uint8 and result.image.ndim == 3 and result.image.shape[2] == 3
    else:
        assert result.image is None and expected in result.reason


def test_conversions_keep_the_content():
    corpus = bad_file_corpus()
    sixteen = decode_image(corpus["sixteen_bit.png"][0]).image
    assert abs(int(sixteen[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1  # scaled, not clipped to 255
    rotated = decode_image(corpus["rotated.jpg"][0])
    assert rotated.image.shape[:2] == (50, 40) and "orientation 6" in rotated.note
    red = decode_image(corpus["rgba.png"][0]).image
    assert red[0, 0, 0] > 100 and red[0, 0, 1] < 10  # alpha composited onto black
    assert "CMYK" in decode_image(corpus["cmyk.jpg"][0]).note


@pytest.mark.parametrize(
    "spec, layout, root, split",
    [
        ("data/trainA", "dir", "data/trainA", ""),
        ("data/**/*.jpg", "glob", "data/**/*.jpg", ""),
        ("cyclegan:/d/horse2zebra:A", "cyclegan", "/d/horse2zebra", "trainA"),
        ("cyclegan:s3://bucket/h2z:testB", "cyclegan", "s3://bucket/h2z", "testB"),
        ("gta5:/d/gta5", "gta5", "/d/gta5", ""),
        ("cityscapes:/d/cs", "cityscapes", "/d/cs", "train"),
        ("cityscapes:/d/cs:val", "cityscapes", "/d/cs", "val"),
        ("shards/part-0.parquet", "parquet", "shards/part-0.parquet", ""),
        ("s3://bucket/frames/", "dir", "s3://bucket/frames", ""),
    ],
)
def test_parse_source(spec, layout, root, split):
    s = parse_source(spec)
    assert (s.layout, s.root, s.split) == (layout, root, split)


def test_parquet_column_and_bad_specs():
    assert parse_source("parquet:/d/x.parquet:jpeg_bytes").column == "jpeg_bytes"
    with pytest.raises(RaycutError, match="cyclegan:ROOT:SPLIT"):
        parse_source("cyclegan:/d/h2z")
    with pytest.raises(RaycutError, match="empty data source"):
        parse_source("  ")


def test_layouts_list_the_right_files(tmp_path):
    img = _encode(Image.new("RGB", (8, 8)), "PNG")
    for rel in ("cg/trainA/a.png", "cg/trainB/b.png", "gta/images/00001.png", "gta/labels/00001.png",
                "cs/leftImg8bit/train/aachen/x_leftImg8bit.png", "cs/gtFine/train/aachen/x_gtFine_labelIds.png",
                "cs/leftImg8bit/val/lindau/y_leftImg8bit.png", "flat/sub/c.jpg", "flat/notes.txt"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(img)
    def names(spec):
        return [p.split("/")[-1] for p in list_source_files(parse_source(spec))[1]]
    assert names(f"cyclegan:{tmp_path}/cg:trainA") == ["a.png"]
    assert names(f"gta5:{tmp_path}/gta") == ["00001.png"] and "labels" not in list_source_files(parse_source(f"gta5:{tmp_path}/gta"))[1][0]
    assert names(f"cityscapes:{tmp_path}/cs") == ["x_leftImg8bit.png"]
    assert names(f"cityscapes:{tmp_path}/cs:val") == ["y_leftImg8bit.png"]
    assert names(f"{tmp_path}/flat") == ["c.jpg"]
    assert names(f"{tmp_path}/flat/**/*.jpg") == ["c.jpg"]
    with pytest.raises(RaycutError, match="does not exist"):
        list_source_files(parse_source(f"{tmp_path}/missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RaycutError, match="no images found"):
        list_source_files(parse_source(f"{tmp_path}/empty"))
