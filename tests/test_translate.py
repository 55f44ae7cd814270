"""`raycut translate` on a real local Ray: sizes and paths kept, bad files reported,
identical to cut_core in fp32, resumable after a kill, labels copied alongside."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from PIL import Image

from cut_core import load_generator, save_generator
from cut_core.cores import threads_per_worker
from cut_core.errors import RaycutError
from cut_core.images import to_model_input, to_uint8_images
from cut_core.networks import build_generator
from cut_core.translate import translate
from jobs.translate.driver import run_translate
from jobs.translate.spec import TranslateOptions
from pipelines.manifest import read_manifest
from tests.conftest import patience, small_disk, tiny

pytestmark = pytest.mark.slow
# Pixel-exact comparisons with cut_core's fp32: auto may pick int8 or bf16 on some CPUs.
EXACT = {"precision": "fp32", "channels_last": False}
SIZES = [(37, 53), (64, 48), (105, 191), (48, 64)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    cfg = tiny("cut")
    torch.manual_seed(0)
    return save_generator(build_generator(cfg.model), tmp_path_factory.mktemp("model"), model_config=cfg.model)


def _dataset(root: Path, n_extra: int = 0) -> Path:
    """A GTA5-like tree: images/ (nested, odd sizes, two bad files) and labels/."""
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES + [(40, 40)] * n_extra):
        sub = root / "images" / ("city" if i % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(sub / f"{i:05d}.png")
        (root / "labels" / ("city" if i % 2 else "")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 19, (h, w), dtype=np.uint8)).save(root / "labels" / ("city" if i % 2 else "") / f"{i:05d}.png")
    (root / "images" / "empty.png").write_bytes(b"")
    (root / "images" / "junk.png").write_bytes(b"not an image at all")
    return root


@pytest.mark.cost(12)
def test_outputs_keep_sizes_paths_labels_and_match_cut_core(local_ray, model_dir, tmp_path) -> None:
    data = _dataset(tmp_path / "gta")
    Image.new("L", (8, 8)).save(data / "labels" / "99999.png")  # a label without an image: not copied
    out = tmp_path / "out"
    s = run_translate(TranslateOptions(**EXACT, model=str(model_dir), input=f"gta5:{data}", output=str(out),
                                       labels=str(data / "labels"), batch_size=2))
    assert s.labels == len(SIZES) and not (out / "labels" / "99999.png").exists()
    assert (s.done, s.skipped, len(s.failed)) == (len(SIZES), 0, 2)
    assert {Path(p).name for p, _ in s.failed} == {"empty.png", "junk.png"}
    G = load_generator(model_dir)
    for i, (h, w) in enumerate(SIZES):
        rel = Path("images") / ("city" if i % 2 else "") / f"{i:05d}.png"
        got = np.asarray(Image.open(out / rel))
        assert got.shape == (h, w, 3)
        # The Ray job and cut_core directly give the same pixels in fp32.
        src = np.asarray(Image.open(data / rel))
        np.testing.assert_array_equal(got, to_uint8_images(translate(G, to_model_input(src[None])))[0])
        assert (out / "labels" / rel.relative_to("images")).is_file()  # the GTA5 layout comes out as one
    rows = read_manifest(out).to_pylist()
    assert sorted(r["status"] for r in rows) == ["done"] * len(SIZES) + ["failed"] * 2
    assert all(r["model_uri"] == str(model_dir) for r in rows)
    # What G ran in, per row and in the summary (explicit here: fp32, NCHW).
    assert {r["fast_path"] for r in rows} == {"cpu fp32"} and s.fast_paths == {"cpu fp32": len(rows)}
    assert s.line().endswith("; G ran in cpu fp32")

    again = run_translate(TranslateOptions(**EXACT, model=str(model_dir), input=f"gta5:{data}", output=str(out)))
    assert (again.done, again.skipped, len(again.failed)) == (0, len(SIZES), 2)  # bad files are retried, still bad


def test_inputs_that_share_a_name_or_are_tiny_each_get_their_own_output(local_ray, model_dir, tmp_path) -> None:
    """a.png, a.webp and a.bmp would all be written as a.png: each keeps its extension
    in its output's name instead, so none overwrites another. A 3x2 icon translates
    at its size like any other image."""
    rng = np.random.default_rng(1)
    data = tmp_path / "mixed"
    data.mkdir()
    pixels = {f"a.{ext}": rng.integers(0, 255, (24, 20, 3), dtype=np.uint8) for ext in ("png", "webp", "bmp")}
    pixels["icon.png"] = rng.integers(0, 255, (3, 2, 3), dtype=np.uint8)
    for name, image in pixels.items():
        Image.fromarray(image).save(data / name, **({"lossless": True} if name.endswith("webp") else {}))
    out = tmp_path / "out"
    s = run_translate(TranslateOptions(**EXACT, model=str(model_dir), input=str(data), output=str(out)))
    assert (s.done, len(s.failed)) == (4, 0), s.failed
    assert sorted(p.name for p in out.glob("*.png")) == ["a.bmp.png", "a.png.png", "a.webp.png", "icon.png"]
    G = load_generator(model_dir)
    for name, image in pixels.items():
        got = np.asarray(Image.open(out / (name + ".png" if name.startswith("a.") else name)))
        np.testing.assert_array_equal(got, to_uint8_images(translate(G, to_model_input(image[None])))[0])
    outputs = {r["input"]: r["output"] for r in read_manifest(out).to_pylist()}
    assert len(set(outputs.values())) == 4


def test_an_image_over_the_size_limit_says_how_to_raise_it(local_ray, model_dir, tmp_path, capsys) -> None:
    """A frame over --max-megapixels (a guard against decompression bombs) fails with the
    way out named; a rerun with a larger limit translates it and only it. The limit is
    not capped by PIL's own (89 Mpx by default): pipelines.decode sets that above it."""
    from pipelines.decode import decode_image

    data = tmp_path / "aerial"
    data.mkdir()
    Image.new("RGB", (1100, 1000), (90, 120, 60)).save(data / "big.png")
    Image.new("RGB", (40, 30), (90, 120, 60)).save(data / "small.png")
    out = tmp_path / "out"
    opts = dict(**EXACT, model=str(model_dir), input=str(data), output=str(out))
    s = run_translate(TranslateOptions(**opts, max_megapixels=1))
    assert s.done == 1 and [(Path(p).name, r.split(":")[0]) for p, r in s.failed] == [("big.png", "too large")]
    assert "1 inputs are over --max-megapixels 1: if they are real images, run again with a larger value" in capsys.readouterr().out
    s = run_translate(TranslateOptions(**opts, max_megapixels=2))
    assert (s.done, s.skipped, len(s.failed)) == (1, 1, 0)
    assert Image.open(out / "big.png").size == (1100, 1000)
    # Over PIL's default guard (89 Mpx, read from the header only: nothing is decoded here).
    header = tmp_path / "wide.png"
    Image.new("1", (10_000, 10_000)).save(header)  # 100 Mpx, a few kB
    assert decode_image(header.read_bytes(), max_pixels=50_000_000).reason.startswith("too large: 10000x10000")
    assert decode_image(header.read_bytes(), max_pixels=20_000_000).reason.startswith("too large, a possible decompression bomb")


@pytest.mark.cost(70)
def test_killed_run_resumes_with_every_output_exactly_once(local_ray, model_dir, tmp_path) -> None:
    data = _dataset(tmp_path / "gta", n_extra=300)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.cli", "translate", "--model", str(model_dir), "--input", f"gta5:{data}",
           "--output", str(out), "--batch-size", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # Until its first manifest part: on 2 busy cores (the suite's other worker, other
    # work) the job's start (a local Ray, the model, its actors) took over 120 s once.
    waited, deadline = time.monotonic(), time.monotonic() + patience(480)
    while time.monotonic() < deadline and not list((out / "manifest").glob("part-*.parquet")) and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, mid-run
    proc.wait()
    first = len(list((out / "images").rglob("*.png")))
    assert 0 < first < 304, f"the kill did not land mid-run: {first} outputs after {time.monotonic() - waited:.0f} s"

    s = run_translate(TranslateOptions(**EXACT, model=str(model_dir), input=f"gta5:{data}", output=str(out), batch_size=8))
    assert s.done + s.skipped == 304 and len(s.failed) == 2
    assert not list(out.rglob("*.raycut-tmp"))
    good = {str(p) for p in (data / "images").rglob("0*.png")}
    outputs = {str(data / p.relative_to(out)) for p in (out / "images").rglob("*") if p.is_file()}
    assert outputs == good  # every input has its one output, and nothing else is there
    # The manifest: one "done" row per input, never two. An input whose first translation
    # the kill cut off (its row not yet written) was translated again, once, by the rerun.
    done_rows = Counter(r["input"] for r in read_manifest(out).to_pylist() if r["status"] == "done")
    assert set(done_rows) == good and set(done_rows.values()) == {1}
    assert s.skipped >= 1  # run 1 recorded at least one part before the kill: the rerun skipped those


@pytest.mark.cost(12)
def test_a_full_output_disk_stops_the_job_in_one_line_and_the_rerun_goes_on(local_ray, model_dir, tmp_path) -> None:
    """Outputs to a real disk that fills part-way (a 96 KB tmpfs): the job stops at the
    first write that finds no space instead of failing every input after it, leaves no
    partial file, records what it wrote, and says so in one line; once there is room,
    the same command translates only the rest."""
    rng = np.random.default_rng(3)
    data = tmp_path / "in"
    data.mkdir()
    for i in range(40):  # G's outputs of noise: ~4 KB each as PNG
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / f"{i:03d}.png")
    disk = tmp_path / "small"
    with small_disk(disk, "96k") as resize:
        # A manifest part every 4 rows, so that parts land before the disk is full (a
        # part that finds it full leaves its rows to the rerun, which the line says).
        opts = TranslateOptions(**EXACT, model=str(model_dir), input=str(data), output=str(disk / "out"), batch_size=2,
                                manifest_part_rows=4)
        with pytest.raises(RaycutError) as stop:
            run_translate(opts)
        line = str(stop.value)
        assert "\n" not in line and line.startswith(f"the output folder's disk is full: {disk / 'out'} (")
        assert "the job stopped" in line and "run the same command again" in line, line
        recorded = [r for r in read_manifest(disk / "out").to_pylist() if r["status"] == "done"]
        assert 0 < len(recorded) < 40 and f"{len(recorded)} outputs of this run are recorded" in line, line
        assert not list(disk.rglob("*.raycut-tmp"))  # a write cut short gave its space back
        resize("4m")
        s = run_translate(opts)
        assert (s.skipped, s.done, s.failed) == (len(recorded), 40 - len(recorded), [])
        assert len(list((disk / "out").glob("*.png"))) == 40


@pytest.mark.cost(15)
def test_ctrl_c_writes_the_rows_it_holds_and_says_how_to_go_on(local_ray, model_dir, tmp_path) -> None:
    """Ctrl-C (SIGINT to the driver, mid-run): the manifest rows the driver has received
    are written before it stops, the interrupt says how many outputs are kept and that
    the same command goes on, and the rerun skips exactly those."""
    import threading

    rng = np.random.default_rng(2)
    data = tmp_path / "in"
    data.mkdir()
    for i in range(240):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(data / f"{i:03d}.png")
    out = tmp_path / "out"
    opts = TranslateOptions(**EXACT, model=str(model_dir), input=str(data), output=str(out), batch_size=2,
                            manifest_part_rows=8)

    def interrupt() -> None:  # at the first part: far from the end, so the signal lands in the job
        deadline = time.monotonic() + patience(120)
        while time.monotonic() < deadline and not list((out / "manifest").glob("part-*.parquet")):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt) as stopped:
        run_translate(opts)
    kept = int(re.match(r"(\d+) outputs of this run are in ", str(stopped.value)).group(1))
    assert 0 < kept < 240 and str(stopped.value).endswith(f"the same command goes on with the other {240 - kept} inputs")
    assert sum(r["status"] == "done" for r in read_manifest(out).to_pylist()) == kept  # none held back
    again = run_translate(opts)
    assert (again.skipped, again.done) == (kept, 240 - kept)


@pytest.mark.cost(15)
def test_fixed_inputs_are_translated_once_over_several_runs(local_ray, model_dir, tmp_path) -> None:
    """Run 1 with broken inputs, the files fixed, run 2 translates them, run 3 finds
    nothing to do; with small manifest parts, so every run writes several and a later
    run's row must win over an earlier run's whatever the names' order."""
    rng = np.random.default_rng(1)
    data = tmp_path / "in"
    data.mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / f"{i:03d}.png")
    broken = [data / f"{i:03d}.png" for i in range(26, 40)]
    for f in broken:
        f.write_bytes(b"truncated")
    out = tmp_path / "out"
    opts = TranslateOptions(**EXACT, model=str(model_dir), input=str(data), output=str(out), batch_size=2,
                            manifest_part_rows=4)
    first = run_translate(opts)
    assert (first.done, first.skipped, len(first.failed)) == (26, 0, 14)
    parts_1 = len(list((out / "manifest").glob("part-*.parquet")))
    assert parts_1 >= 3
    for f in broken:
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(f, format="PNG")
    second = run_translate(opts)
    assert (second.done, second.skipped, len(second.failed)) == (14, 26, 0)
    assert len(list((out / "manifest").glob("part-*.parquet"))) - parts_1 >= 2
    third = run_translate(opts)
    assert (third.done, third.skipped, len(third.failed)) == (0, 40, 0)
    rows = read_manifest(out).to_pylist()
    done_rows = Counter(r["input"] for r in rows if r["status"] == "done")
    assert len(done_rows) == 40 and set(done_rows.values()) == {1}  # no input translated twice
    assert sum(r["status"] == "failed" for r in rows) == 14  # run 1's failures stay on record, superseded


@pytest.mark.cost(12)
def test_registered_model_translates_by_alias(local_ray, model_dir, tmp_path, monkeypatch) -> None:
    """A model registered the way `raycut train --register` does is used by
    `raycut translate --model models:/NAME@latest`, with its version in the manifest."""
    from jobs import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_id = tracking.create_run(uri, "raycut", "unit", {"preset": "cut"}, {})
    version = tracking.register(uri, tracking.log_model_dir(uri, run_id, model_dir), "toy-translate", {})
    data = _dataset(tmp_path / "gta")
    by_alias = run_translate(TranslateOptions(**EXACT, model="models:/toy-translate@latest", input=f"gta5:{data}",
                                              output=str(tmp_path / "a")))
    assert by_alias.done == len(SIZES) and by_alias.model_version == version == "1"
    # The registered model is the model directory's G: the same pixels as cut_core's.
    G = load_generator(model_dir)
    inputs = sorted((data / "images").rglob("0*.png"))  # the readable ones (not empty.png, junk.png)
    assert len(inputs) == len(SIZES)
    for p in inputs:
        got = np.asarray(Image.open(tmp_path / "a" / p.relative_to(data)))
        want = to_uint8_images(translate(G, to_model_input(np.asarray(Image.open(p))[None])))[0]
        np.testing.assert_array_equal(got, want)
    assert {r["model_version"] for r in read_manifest(tmp_path / "a").to_pylist()} == {"1"}

    # The alias moves to a new version: its outputs are not the old ones, so the same
    # --output is refused in one line, with nothing written, until --overwrite.
    from cut_core.errors import RaycutError
    from cut_core.model_dir import model_digest

    torch.manual_seed(1)
    cfg = tiny("cut")
    newer = save_generator(build_generator(cfg.model), tmp_path / "newer", model_config=cfg.model)
    assert tracking.register(uri, tracking.log_model_dir(uri, run_id, newer), "toy-translate", {}) == "2"
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("0*.png")}
    again = TranslateOptions(**EXACT, model="models:/toy-translate@latest", input=f"gta5:{data}", output=str(tmp_path / "a"))
    with pytest.raises(RaycutError, match=r"holds 4 translations of these inputs by another model \(models:/toy-translate"
                                          r"@latest version 1, weights \w{8}; this run's: models:/toy-translate@latest "
                                          r"version 2, weights \w{8}\): pass another --output, or --overwrite"):
        run_translate(again)
    assert {p: p.read_bytes() for p in (tmp_path / "a").rglob("0*.png")} == before
    replaced = run_translate(TranslateOptions(**{**again.__dict__, "overwrite": True}))
    assert (replaced.done, replaced.skipped) == (len(SIZES), 0)
    G2 = load_generator(newer)
    for p in inputs:
        got = np.asarray(Image.open(tmp_path / "a" / p.relative_to(data)))
        np.testing.assert_array_equal(got, to_uint8_images(translate(G2, to_model_input(np.asarray(Image.open(p))[None])))[0])
    latest = read_manifest(tmp_path / "a").to_pylist()[-len(SIZES):]
    assert {(r["model_version"], r["model_digest"]) for r in latest} == {("2", model_digest(newer))}
    assert run_translate(again).skipped == len(SIZES)  # the new version's own outputs are kept


def test_one_image_file_as_input(local_ray, model_dir, tmp_path, capsys) -> None:
    """`--input painting.jpg` (SinCUT's case): the output lands beside no folder structure,
    named after the file, at the file's size. With the defaults (auto): the G actor's
    settlement is in the manifest and the summary, and its precision is what the driver
    printed for this machine (they read one cache of the probe)."""
    src = tmp_path / "in" / "painting.png"
    src.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (38, 50, 3), dtype=np.uint8)).save(src)
    s = run_translate(TranslateOptions(model=str(model_dir), input=str(src), output=str(tmp_path / "out")))
    assert (s.done, len(s.failed)) == (1, 0)
    assert Image.open(tmp_path / "out" / "painting.png").size == (50, 38)
    [row] = read_manifest(tmp_path / "out").to_pylist()
    printed = re.search(r"fast paths on this machine's CPU: precision auto -> (\w+)", capsys.readouterr().out)
    assert printed and row["fast_path"].split()[:2] == ["cpu", printed.group(1)], row
    assert s.fast_paths == {row["fast_path"]: 1} and s.line().endswith(f"; G ran in {row['fast_path']}")


def _expected(G, image_file: Path) -> np.ndarray:
    return to_uint8_images(translate(G, to_model_input(np.asarray(Image.open(image_file).convert("RGB"))[None])))[0]


@pytest.mark.cost(25)
def test_parquet_rows_and_remote_uris_are_inputs_too(local_ray, model_dir, tmp_path) -> None:
    """Any ingest source: Parquet rows (named by their `path` column, or FILE#ROW), read
    by row group, resumable; and files behind a pyarrow filesystem URI (file:// here;
    s3:// and gs:// take the same path)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = _dataset(tmp_path / "gta")
    G = load_generator(model_dir)
    images = sorted((data / "images").rglob("0*.png"))
    shards = tmp_path / "shards"
    shards.mkdir()
    # Two files, row groups of two rows; a null row and a junk row among them.
    blobs = [f.read_bytes() for f in images] + [None, b"junk"]
    names = [str(f) for f in images] + [str(data / "images" / "null.png"), str(data / "images" / "junk.png")]
    for k, part in enumerate((slice(0, 3), slice(3, None))):
        pq.write_table(pa.table({"image": blobs[part], "path": names[part]}), shards / f"part-{k}.parquet",
                       row_group_size=2)
    out = tmp_path / "from-parquet"
    s = run_translate(TranslateOptions(**EXACT, model=str(model_dir), input=f"parquet:{shards}", output=str(out), batch_size=2))
    assert (s.done, len(s.failed)) == (len(images), 2)
    assert {Path(p).name for p, _ in s.failed} == {"null.png", "junk.png"}
    for f in images:  # named after the path column, relative to the common folder of the paths
        np.testing.assert_array_equal(np.asarray(Image.open(out / f.relative_to(data / "images"))), _expected(G, f))
    again = run_translate(TranslateOptions(**EXACT, model=str(model_dir), input=f"parquet:{shards}", output=str(out)))
    assert (again.done, again.skipped, len(again.failed)) == (0, len(images), 2)

    # Without a path column the rows are FILE#ROW, written as FILE_STEM/ROW.
    pq.write_table(pa.table({"jpeg": [images[0].read_bytes(), images[1].read_bytes()]}), shards / "bare.parquet")
    out = tmp_path / "bare"
    s = run_translate(TranslateOptions(**EXACT, model=str(model_dir), input=f"parquet:{shards}/bare.parquet:jpeg", output=str(out)))
    assert s.done == 2 and sorted(p.name for p in out.glob("bare/*.png")) == ["000000.png", "000001.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "bare" / "000001.png")), _expected(G, images[1]))
    assert {r["input"] for r in read_manifest(out).to_pylist()} == {f"{shards}/bare.parquet#{i}" for i in (0, 1)}

    out = tmp_path / "from-uri"
    s = run_translate(TranslateOptions(**EXACT, model=str(model_dir), input=f"gta5:file://{data}", output=str(out)))
    assert (s.done, len(s.failed)) == (len(images), 2)
    for f in images:
        np.testing.assert_array_equal(np.asarray(Image.open(out / f.relative_to(data))), _expected(G, f))


def test_parquet_and_remote_inputs_refuse_labels_and_clashing_names(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cut_core.errors import RaycutError
    from pipelines.sources import parse_source
    from pipelines.translate_inputs import list_inputs

    pq.write_table(pa.table({"image": [b"a", b"b"], "path": ["x/1.png", "x/1.png"]}), tmp_path / "dup.parquet")
    with pytest.raises(RaycutError, match="appears twice"):
        list_inputs(parse_source(f"parquet:{tmp_path}/dup.parquet"))
    pq.write_table(pa.table({"image": [b"a"], "path": ["../escape.png"]}), tmp_path / "up.parquet")
    with pytest.raises(RaycutError, match="outside the output folder"):
        list_inputs(parse_source(f"parquet:{tmp_path}/up.parquet"))
    with pytest.raises(RaycutError, match="--labels works with local image files"):
        list_inputs(parse_source(f"parquet:{tmp_path}/up.parquet"), labels_dir=str(tmp_path))
    with pytest.raises(RaycutError, match="no column 'jpeg'"):
        list_inputs(parse_source(f"parquet:{tmp_path}/up.parquet:jpeg"))
    # Rows whose paths differ only in the extension each keep their own output; names
    # that collide even so are one clear error, before anything is written.
    pq.write_table(pa.table({"image": [b"a"] * 3, "path": ["x/1.png", "x/1.jpg", "x/2.png"]}), tmp_path / "ext.parquet")
    mixed = list_inputs(parse_source(f"parquet:{tmp_path}/ext.parquet"))
    assert mixed.outs == {"x/1.png": "x/1.png", "x/1.jpg": "x/1.jpg", "x/2.png": "x/2"}
    assert mixed.full_names == ("x/1.png", "x/1.jpg")
    pq.write_table(pa.table({"image": [b"a"] * 3, "path": ["1.png", "1.jpg", "1.png.webp"]}), tmp_path / "clash.parquet")
    with pytest.raises(RaycutError, match="would both be written as '1.png'"):
        list_inputs(parse_source(f"parquet:{tmp_path}/clash.parquet"))
    # An output (or label) folder inside the input's is not input: a rerun would translate
    # the translations. The input folder itself as the output is refused.
    nested = tmp_path / "nested"
    for rel in ("a.png", "real/a.png", "labels/a.png"):
        (nested / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(nested / rel)
    inside = list_inputs(parse_source(str(nested)), labels_dir=str(nested / "labels"), output_dir=str(nested / "real"))
    assert inside.ids == [str(nested / "a.png")]
    with pytest.raises(RaycutError, match="outputs would replace the inputs"):
        list_inputs(parse_source(str(nested)), output_dir=str(nested))
    # GTA5's layout with its labels: outputs mirror paths below ROOT (images/, labels/).
    gta = _dataset(tmp_path / "gta5")
    with pytest.raises(RaycutError, match="outputs would replace the inputs"):
        list_inputs(parse_source(f"{gta}/images"), labels_dir=str(gta / "labels"), output_dir=str(gta))
    # A glob mirrors paths below its fixed prefix, locally and behind a URI alike.
    _dataset(tmp_path / "gta")
    local = list_inputs(parse_source(f"{tmp_path}/gta/images/**/0*.png"))
    remote = list_inputs(parse_source(f"file://{tmp_path}/gta/images/**/0*.png"))
    assert sorted(local.outs.values()) == sorted(remote.outs.values()) == ["00000", "00002", "city/00001", "city/00003"]


@pytest.mark.cost(12)
def test_int8_job_is_cut_core_int8_with_the_calibration_it_keeps(local_ray, model_dir, tmp_path) -> None:
    """int8: the driver calibrates once on the first readable inputs (bad files first
    in line are passed over), every actor runs that network, and a rerun with a new
    input reuses the saved ranges, so old and new outputs come from one network."""
    import json

    from cut_core.quantize import Int8ResnetGenerator

    data = _dataset(tmp_path / "gta")
    (data / "images" / "000-bad.png").write_bytes(b"first in line, and no image")
    out = tmp_path / "out"
    opts = dict(model=str(model_dir), input=f"gta5:{data}", output=str(out), precision="int8", batch_size=2)
    s = run_translate(TranslateOptions(**opts))
    assert (s.done, len(s.failed)) == (len(SIZES), 3)
    saved = (out / "int8_calibration.json").read_text()
    record = json.loads(saved)
    assert record["model"] == str(model_dir)
    assert [Path(p).name for p in record["inputs"]] == ["00000.png", "00002.png"]
    G8 = Int8ResnetGenerator(load_generator(model_dir), record["ranges"])

    extra = data / "images" / "city" / "00009.png"
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (45, 67, 3), dtype=np.uint8)).save(extra)
    again = run_translate(TranslateOptions(**opts))
    assert (again.done, again.skipped) == (1, len(SIZES))
    assert (out / "int8_calibration.json").read_text() == saved
    assert {r["fast_path"] for r in read_manifest(out).to_pylist()} == {"cpu int8"}
    # The one CPU actor runs G with the cores this process may use as torch threads (at
    # most OMP_NUM_THREADS, which the suite sets); so does this check: int8's rounding
    # turns the float reductions of another thread count into pixels one level off.
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_worker(1))
    try:
        for rel in [Path("images") / "00000.png", Path("images") / "city" / "00003.png", extra.relative_to(data)]:
            src = np.asarray(Image.open(data / rel))
            want = to_uint8_images(translate(G8, to_model_input(src[None]), precision="int8"))[0]
            np.testing.assert_array_equal(np.asarray(Image.open(out / rel)), want)
    finally:
        torch.set_num_threads(threads)


def test_calibration_reads_the_first_inputs_of_any_source(tmp_path) -> None:
    """What int8 calibrates on: the first inputs in source order, with their bytes,
    from files, from files behind a URI, and from Parquet rows across row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.sources import parse_source
    from pipelines.translate_inputs import list_inputs

    data = _dataset(tmp_path / "gta")
    first = sorted((data / "images").rglob("0*.png"))[:3]
    for src in (f"{data}/images/**/0*.png", f"file://{data}/images/**/0*.png"):
        head = list_inputs(parse_source(src)).head_bytes(3)
        assert [Path(i).name for i, _ in head] == ["00000.png", "00002.png", "00001.png"]
        assert [b for _, b in head] == [(data / "images" / n).read_bytes() for n in ("00000.png", "00002.png", "city/00001.png")]
    blobs = [None] + [f.read_bytes() for f in first]
    pq.write_table(pa.table({"image": blobs, "path": ["a/0.png", "a/1.png", "a/2.png", "a/3.png"]}),
                   tmp_path / "t.parquet", row_group_size=2)
    head = list_inputs(parse_source(f"parquet:{tmp_path}/t.parquet")).head_bytes(3)
    assert [(i, b) for i, b in head] == [("a/0.png", None), ("a/1.png", blobs[1]), ("a/2.png", blobs[2])]


def test_int8_refuses_gpu_actors_in_one_line(tmp_path) -> None:
    from cut_core.errors import RaycutError

    with pytest.raises(RaycutError, match="int8 runs on CPU actors"):
        run_translate(TranslateOptions(model=str(tmp_path), input=str(tmp_path), output=str(tmp_path / "o"),
                                       precision="int8", gpus_per_actor=1))


def test_gpu_actors_on_a_machine_without_gpus_fail_at_once(local_ray, model_dir, tmp_path) -> None:
    """A local Ray with no GPU would queue the GPU actors for ever (its autoscaler says
    only "No available node types can fulfill resource request"): one line instead.
    `raycut train --gpus-per-worker` goes through the same check (jobs.ray_runtime)."""
    from cut_core.errors import RaycutError

    assert ray.cluster_resources().get("GPU", 0) == 0  # the suite's local Ray has none
    data = _dataset(tmp_path / "gta")
    with pytest.raises(RaycutError, match="--gpus-per-actor 1 asks for GPUs, but the Ray on this machine has 0"):
        run_translate(TranslateOptions(model=str(model_dir), input=f"gta5:{data}", output=str(tmp_path / "o"),
                                       gpus_per_actor=1))


@pytest.mark.cost(50)
def test_staged_and_single_actor_jobs_agree_in_every_output_format(local_ray, model_dir, tmp_path) -> None:
    """The staged job (decode tasks -> G actors -> encode tasks) writes cut_core's pixels
    in each lossless format (and close ones in JPEG), as the single-actor job does, and
    says how busy G was: in the summary and in the manifest's metadata."""
    import pyarrow.parquet as pq

    data = _dataset(tmp_path / "gta")
    G = load_generator(model_dir)
    files = sorted((data / "images").rglob("0*.png"))
    # Four jobs (each starts its actors: ~15 s of CPU on 2 cores); the single-actor
    # one also takes a PNG level, which changes the bytes and never the pixels.
    jobs = [("png", {}, True), ("png", {"png_level": 6}, False), ("webp", {}, True), ("jpg", {"jpeg_quality": 90}, True)]
    for fmt, extra, staged in jobs:
        out = tmp_path / f"out-{fmt}-{extra}-{staged}"
        s = run_translate(TranslateOptions(**EXACT, model=str(model_dir), input=f"gta5:{data}", output=str(out),
                                           fmt=fmt, staged=staged, concurrency="1-2", batch_size=2, **extra))
        assert (s.done, len(s.failed)) == (len(SIZES), 2)
        assert s.model_busy is not None and 0 < s.model_busy <= 1 and s.g_actors >= 1
        assert f"model busy {s.model_busy:.0%}" in s.line()
        meta = pq.read_schema(next((out / "manifest").glob("part-*.parquet"))).metadata
        assert 0 < float(meta[b"raycut.model_busy"]) <= 1
        for f in files:
            got = np.asarray(Image.open(out / f.relative_to(data).with_suffix(f".{fmt}")).convert("RGB")).astype(int)
            want = _expected(G, f).astype(int)
            if fmt == "jpg":
                assert got.shape == want.shape and np.abs(got - want).mean() < 6
            else:
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bad, words", [
    ({"concurrency": "8-2"}, "MIN <= MAX"),
    ({"concurrency": "many"}, "N or MIN-MAX"),
    ({"fmt": "gif"}, "--format must be one of png, jpg, webp"),
    ({"png_level": 12}, "--png-level must be 0-9"),
])
def test_bad_translate_options_are_one_line(tmp_path, bad, words) -> None:
    from cut_core.errors import RaycutError

    with pytest.raises(RaycutError, match=words):
        run_translate(TranslateOptions(**EXACT, model=str(tmp_path), input=str(tmp_path), output=str(tmp_path / "o"), **bad))


def test_concurrency_defaults_grow_with_gpu_nodes_and_stay_put_on_cpu() -> None:
    from jobs.translate.driver import parse_concurrency
    from jobs.translate.spec import DEFAULT_MAX_GPU_ACTORS

    assert parse_concurrency(None, use_gpu=True) == (1, DEFAULT_MAX_GPU_ACTORS)
    assert parse_concurrency(None, use_gpu=False) == (1, 1)
    assert parse_concurrency("3", use_gpu=True) == (3, 3) and parse_concurrency("2-8", use_gpu=False) == (2, 8)


def test_summary_counts_each_kind_of_g_on_a_mixed_cluster(tmp_path) -> None:
    """Actors on different nodes settle auto each for their own device: the summary
    line then names every kind with its rows (one kind: just its name)."""
    from jobs.translate.driver import TranslateSummary

    base = dict(done=5, skipped=0, failed=[], labels=0, output=tmp_path, model_uri="m", model_version="", seconds=1.0)
    mixed = TranslateSummary(**base, fast_paths={"cpu int8": 3, "cuda bf16 channels_last": 2})
    assert mixed.line().endswith("; G ran in cpu int8 (3 rows), cuda bf16 channels_last (2 rows)")
    assert TranslateSummary(**base, fast_paths={"cpu fp32": 5}).line().endswith("; G ran in cpu fp32")
    assert "G ran in" not in TranslateSummary(**base).line()  # nothing translated this run


def test_manifest_rows_from_before_the_digest_match_by_uri_and_version() -> None:
    """Output folders written before raycut kept the weights' digest still resume: their
    rows count as this model's when the URI and the registry version are the same."""
    from pipelines.manifest import made_by

    old = {"model_uri": "models:/x@prod", "model_version": "3", "model_digest": None}
    assert made_by(old, digest="aa", model_uri="models:/x@prod", model_version="3")
    assert not made_by(old, digest="aa", model_uri="models:/x@prod", model_version="4")
    assert not made_by({**old, "model_digest": "bb"}, digest="aa", model_uri="models:/x@prod", model_version="3")
    assert made_by({**old, "model_digest": "aa"}, digest="aa", model_uri="/a/copy/of/it", model_version="")
