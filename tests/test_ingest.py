"""Ray Data ingest on a real local Ray: layouts, bad files, Parquet, shards."""

import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from cut_core.config import DataConfig
from cut_core.errors import RaycutError
from pipelines.augment import augment, will_upscale
from pipelines.ingest import IngestOptions, IngestReport, decode_head, domain_size, format_report, read_domain
from pipelines.toy_data import ToySpec, write_toy_dataset
from tests.conftest import patience
from tests.test_decode_sources import bad_file_corpus

CROP = DataConfig(preprocess="crop", load_size=32, crop_size=32)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), ToySpec(size=48, n_train=10, n_test=2))


def test_cyclegan_domain_streams_uint8_crops_with_paths(local_ray, toy):
    ds = read_domain(f"cyclegan:{toy}:trainA", CROP, options=IngestOptions(seed=1))
    rows = ds.take_all()
    assert len(rows) == 10
    assert all(r["image"].shape == (32, 32, 3) and r["image"].dtype == np.uint8 for r in rows)
    assert sorted(r["path"].split("/")[-1] for r in rows) == [f"{i:05d}.png" for i in range(10)]


def test_bad_files_are_skipped_and_reported(local_ray, tmp_path):
    for name, (data, _) in bad_file_corpus().items():
        (tmp_path / name).write_bytes(data)
    report = IngestReport.remote()
    rows = read_domain(str(tmp_path), DataConfig(preprocess="crop", crop_size=32, load_size=32), report=report).take_all()
    expected_ok = sorted(n for n, (_, outcome) in bad_file_corpus().items() if outcome == "ok")
    assert sorted(r["path"].split("/")[-1] for r in rows) == expected_ok
    summary = ray.get(report.summary.remote())
    assert summary["counts"]["ok"] == len(expected_ok) and summary["counts"]["skipped"] == 4
    reasons = {path.split("/")[-1]: reason for path, reason in summary["skipped"]}
    assert "truncated" in reasons["truncated.jpg"] and "empty" in reasons["empty.png"]
    assert "not an image" in reasons["text.png"] and "too large" in reasons["huge.png"]
    # 20x20 and 30x30 images are smaller than the 32 px crop: upscaled, kept, reported.
    assert {"rgba.png", "cmyk.jpg", "sixteen_bit.png"} <= {p.split("/")[-1] for p in summary["upscaled"]}
    text = format_report(summary, name="A")
    assert "skipped 4 bad files" in text and "huge.png" in text


@pytest.mark.cost(15)
def test_parquet_source(local_ray, toy, tmp_path):
    files = sorted((toy / "trainB").glob("*.png"))
    table = pa.table({"image": [f.read_bytes() for f in files], "path": [str(f) for f in files]})
    pq.write_table(table, tmp_path / "shard.parquet")
    rows = read_domain(f"parquet:{tmp_path}/shard.parquet:image", CROP).take_all()
    assert sorted(r["path"] for r in rows) == [str(f) for f in files]
    assert rows[0]["image"].shape == (32, 32, 3)
    with pytest.raises(RaycutError, match="no column 'jpeg'"):
        read_domain(f"parquet:{tmp_path}/shard.parquet:jpeg", CROP)


def test_decode_head_reads_the_first_files_in_order_without_ray(toy, tmp_path):
    """The sample-grid inputs of a train run: decoded in process, in the listed order."""
    whole = DataConfig(preprocess="crop", load_size=48, crop_size=48, no_flip=True)  # the crop is the image
    files = sorted((toy / "trainA").glob("*.png"))
    got = decode_head(f"cyclegan:{toy}:trainA", whole, 4)
    assert got.dtype == np.uint8 and got.shape == (4, 48, 48, 3)
    np.testing.assert_array_equal(got, np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[:4]]))
    assert decode_head(f"cyclegan:{toy}:trainA", CROP, 3).shape == (3, 32, 32, 3)
    # Parquet: the first rows of the first file.
    pq.write_table(pa.table({"image": [f.read_bytes() for f in files[3:6]]}), tmp_path / "shard.parquet")
    np.testing.assert_array_equal(decode_head(f"parquet:{tmp_path}/shard.parquet:image", whole, 2),
                                  np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[3:5]]))
    # Unreadable files are left out; none readable is one clear error.
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, (data, _) in bad_file_corpus().items():
        (bad / name).write_bytes(data)
    assert len(decode_head(str(bad), CROP, 3)) == 2  # cmyk.jpg, [empty.png], good.jpg
    for f in bad.iterdir():
        if f.name not in ("empty.png", "text.png"):
            f.unlink()
    with pytest.raises(RaycutError, match="no readable image among the first 2 files"):
        decode_head(str(bad), CROP, 2)


def test_empty_source_stops_at_once(local_ray, tmp_path):
    with pytest.raises(RaycutError, match="no images found"):
        read_domain(str(tmp_path), CROP)


def test_two_consumers_get_disjoint_shards(local_ray, toy):
    ds = read_domain(f"cyclegan:{toy}:trainB", CROP, options=IngestOptions(shuffle_files=False))
    shards = ds.streaming_split(2, equal=True)
    seen: list[list[str]] = [[], []]

    def consume(i):
        for batch in shards[i].iter_batches(batch_size=2, batch_format="numpy"):
            seen[i] += list(batch["path"])

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=patience(300))
    assert seen[0] and seen[1]
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) == len(seen[1]) == 5


@pytest.mark.parametrize(
    "data, shape, out",
    [
        (DataConfig(preprocess="resize_and_crop", load_size=286, crop_size=256), (100, 300), (256, 256)),
        (DataConfig(preprocess="scale_width_and_crop", load_size=1024, crop_size=512), (1052, 1914), (512, 512)),
        (DataConfig(preprocess="crop", load_size=64, crop_size=64), (40, 300), (64, 64)),
        (DataConfig(preprocess="none", load_size=64, crop_size=64), (51, 29), (52, 28)),
    ],
)
def test_augmentation_presets(data, shape, out):
    img = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    crop = augment(img, data, np.random.default_rng(1))
    assert crop.shape == (*out, 3) and crop.dtype == np.uint8
    assert will_upscale(shape, data) == (data.preprocess == "crop")


@pytest.mark.cost(12)
def test_unpaired_batches_cycle_the_smaller_domain(local_ray, toy, tmp_path):
    from cut_core.lr_schedule import data_steps_per_epoch
    from pipelines.ingest import domain_size, unpaired_batches

    small = tmp_path / "small"
    small.mkdir()
    for p in sorted((toy / "trainB").glob("*.png"))[:3]:
        (small / p.name).write_bytes(p.read_bytes())
    a_spec, b_spec = f"cyclegan:{toy}:trainA", str(small)
    assert (domain_size(a_spec), domain_size(b_spec)) == (10, 3)
    steps = data_steps_per_epoch(10, 3, batch_size=2)
    assert steps == 5  # max(|A|, |B|) / batch
    a_it = read_domain(a_spec, CROP).iterator()
    b_it = read_domain(b_spec, CROP).iterator()
    pairs = list(unpaired_batches(a_it, b_it, batch_size=1, steps=7))
    assert len(pairs) == 7 and all(a.shape == b.shape == (1, 32, 32, 3) for a, b in pairs)


def test_a_listing_is_read_as_listed(local_ray, toy, tmp_path):
    """A run lists each domain once (an s3 listing costs requests): the sizes, the
    dataset and the sample crops all come from that one listing, so a file that
    appears afterwards is not half-seen by some of them."""
    import shutil

    from pipelines.sources import list_source

    folder = tmp_path / "dom"
    shutil.copytree(toy / "trainA", folder)
    listing = list_source(str(folder))
    n = listing.size
    shutil.copy(folder / sorted(p.name for p in folder.iterdir())[0], folder / "zzz_added_later.png")
    assert domain_size(listing) == n and domain_size(str(folder)) == n + 1
    rows = read_domain(listing, CROP, options=IngestOptions(shuffle_files=False)).take_all()
    assert len(rows) == n and not any("zzz_added_later" in r["path"] for r in rows)
    assert decode_head(listing, CROP, n + 1).shape[0] == n
