"""Ray Data ingest: a source string -> a streaming Dataset of augmented crops.

    source -> list files -> read bytes -> DecodeAugment (decode + preprocess) -> rows

Rows: ``image`` (crop, crop, 3) uint8 and ``path`` (str, kept end to end). Decoding
and cropping happen in one UDF so full-resolution frames (6 MB for Cityscapes)
never travel between operators; only crops do, as uint8 (the trainer converts them
to float). Bad files are skipped and sent to an ``IngestReport`` actor, which keeps
counts, reasons and paths for the summary printed at the end.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import ray

from cut_core.config import DataConfig
from cut_core.errors import RaycutError
from pipelines.augment import augment, will_upscale
from pipelines.decode import DEFAULT_MAX_PIXELS, decode_image
from pipelines.sources import Listing, Source, list_source, read_bytes

READ_CPUS = 0.25  # logical CPUs per read task
MAX_LISTED = 1000  # paths kept per category in the report; the counts are always exact


@ray.remote(num_cpus=0)
class IngestReport:
    """Collects what decoding skipped or changed, from every UDF worker.

    A training run decodes its files once per epoch: each file counts once (``ok``: the
    files decoded; the first reason heard for a skipped one), however many passes meet it. With
    ``live``, the first ``MAX_SHOWN`` skipped files are printed as they are met, so a
    long run says at once what it leaves out (Ray forwards an actor's prints to the
    driver's console)."""

    MAX_SHOWN = 20

    def __init__(self, live: bool = False) -> None:
        self.live = live
        self.counts: Counter[str] = Counter()
        self.seen: dict[str, set[str]] = {"ok": set(), "skipped": set(), "upscaled": set(), "converted": set()}
        self.skipped: list[tuple[str, str]] = []
        self.upscaled: list[str] = []
        self.converted: list[tuple[str, str]] = []

    def add(self, decoded: list[str], skipped: list[tuple[str, str]], upscaled: list[str],
            converted: list[tuple[str, str]]) -> None:
        self._fresh("ok", decoded)
        fresh_skipped = self._fresh("skipped", skipped)
        self.skipped += fresh_skipped[: MAX_LISTED - len(self.skipped)]
        self.upscaled += self._fresh("upscaled", upscaled)[: MAX_LISTED - len(self.upscaled)]
        self.converted += self._fresh("converted", converted)[: MAX_LISTED - len(self.converted)]
        if self.live:
            first = self.counts["skipped"] - len(fresh_skipped)
            for k, (path, reason) in enumerate(fresh_skipped, start=first):
                if k < self.MAX_SHOWN:
                    print(f"[ingest] skipped {path}: {reason}", flush=True)
                elif k == self.MAX_SHOWN:
                    print("[ingest] more files skipped; the count comes at the end of the run", flush=True)

    def _fresh(self, kind: str, items: list[Any]) -> list[Any]:
        """The items (paths, or (path, reason) pairs) whose path was not met before, counted."""
        fresh = []
        for item in items:
            path = item if isinstance(item, str) else item[0]
            if path not in self.seen[kind]:
                self.seen[kind].add(path)
                fresh.append(item)
        self.counts.update({kind: len(fresh)})
        return fresh

    def summary(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "skipped": list(self.skipped),
            "upscaled": list(self.upscaled),
            "converted": list(self.converted),
        }


def format_report(summary: dict[str, Any], *, name: str = "ingest", limit: int = 20) -> str:
    """Human-readable report: totals, then each skipped file with its reason."""
    c = summary["counts"]
    lines = [
        f"[{name}] decoded {c.get('ok', 0)} images, skipped {c.get('skipped', 0)} bad files, "
        f"upscaled {c.get('upscaled', 0)} smaller than the crop, converted {c.get('converted', 0)} to RGB"
    ]
    for path, reason in summary["skipped"][:limit]:
        lines.append(f"  skipped {path}: {reason}")
    if c.get("skipped", 0) > limit:
        lines.append(f"  ... and {c['skipped'] - limit} more")
    return "\n".join(lines)


class DecodeAugment:
    """Ray Data UDF. Input columns: ``path`` (str) and, when the source already holds
    the encoded images (Parquet), ``bytes``; otherwise the UDF reads the file itself.
    Output columns: ``image`` uint8 (B', crop, crop, 3) (a list of (H, W, 3) for
    preprocess ``none``), ``path`` (str); B' <= B, bad files are dropped and reported."""

    def __init__(self, data: dict[str, Any], *, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 report: Any = None, filesystem: Any = None, nice: int = 0) -> None:
        if nice:
            os.nice(nice)  # this actor process only
        self.data = DataConfig(**data)
        self.fs = filesystem
        self.max_pixels = max_pixels
        self.report = report
        # Independent crops per worker process; streaming order is not reproducible
        # anyway, so per-process entropy mixed with the seed is what matters.
        self.rng = np.random.default_rng([seed, os.getpid(), id(self)])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        images, paths = [], []
        skipped, upscaled, converted = [], [], []
        encoded = batch["bytes"] if "bytes" in batch else [None] * len(batch["path"])
        for data, path in zip(encoded, batch["path"]):
            path = str(path)
            if data is None:
                try:
                    data = read_bytes(path, self.fs)
                except OSError as e:
                    skipped.append((path, f"unreadable ({e})"))
                    continue
            result = decode_image(bytes(data), max_pixels=self.max_pixels)
            if result.image is None:
                skipped.append((path, result.reason))
                continue
            if result.note:
                converted.append((path, result.note))
            if will_upscale(result.image.shape, self.data):
                upscaled.append(path)
            images.append(augment(result.image, self.data, self.rng))
            paths.append(path)
        if self.report is not None and (images or skipped):
            # Wait until the report holds this batch's counts before the batch goes on.
            # Left in flight, the call could reach the report after the driver had read
            # it (calls from two processes keep no order between them), or die with this
            # actor when Ray Data stops its pool at the end of a pass: on busy cores the
            # demo once printed fewer decoded images than it had trained on (CI run of
            # 2026-12-07). One actor round trip a batch, small beside its decoding.
            ray.get(self.report.add.remote(paths, skipped, upscaled, converted))
        c = self.data.crop_size
        if self.data.preprocess != "none":
            stacked = np.stack(images) if images else np.zeros((0, c, c, 3), np.uint8)
            return {"image": stacked, "path": np.array(paths, dtype=object)}
        return {"image": images, "path": np.array(paths, dtype=object)}


@dataclass(frozen=True)
class IngestOptions:
    """How a domain is read; the defaults suit training."""

    seed: int = 0  # mixed into each decode worker's crop/flip RNG
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger files are refused (decompression bombs)
    shuffle_files: bool = True  # a new file order on every pass (epoch)
    batch_size: int = 16  # images per UDF call
    concurrency: int | tuple[int, int] | None = None  # decode actors; None: 1 .. CPUs - 1
    num_cpus: float = 1.0  # logical CPUs per decode actor
    # Epochs per Dataset pass: each pass starts a fresh execution (decode actors
    # included, ~3 s on 2 cores), so a small dataset is listed ``repeat`` times, each
    # copy in its own order, to make a pass long enough to amortise that start.
    repeat: int = 1
    nice: int = 0  # added to the decode actors' OS niceness (lower priority than training)
    # Names the decode operator (``MapBatches(DecodeA)``): Ray's dashboard, its progress
    # lines and its actor list tell the two domains' pools apart.
    name: str = ""


def read_domain(spec: str | Source | Listing, data: DataConfig, *, options: IngestOptions = IngestOptions(),
                report: Any = None) -> ray.data.Dataset:
    """A lazy, streaming Dataset of {image, path} crops for one domain.

    Files are listed now unless ``spec`` is a Listing already (an empty or missing
    source stops here with one line); nothing is read until the Dataset is iterated.
    ``report`` (an ``IngestReport`` actor) collects the skipped, upscaled and converted
    files.
    """
    listing = list_source(spec)
    column = listing.source.column if listing.source.layout == "parquet" else None
    return read_files(list(listing.files), data, filesystem=listing.fs, parquet_column=column, options=options,
                      report=report)


def read_files(files: list[str], data: DataConfig, *, filesystem: Any = None, parquet_column: str | None = None,
               options: IngestOptions = IngestOptions(), report: Any = None) -> ray.data.Dataset:
    """:func:`read_domain` for an explicit file list (image files, or Parquet files
    with ``parquet_column`` holding the encoded images)."""
    shuffle = "files" if options.shuffle_files else None
    if parquet_column is not None:
        ds = _read_parquet(files, filesystem, parquet_column, shuffle)
    else:
        # Paths only: each decode actor reads its own files. A separate read operator
        # (read_binary_files) measured 1.9x slower on 2 cores: one task per file, and
        # every encoded frame copied through the object store before decoding.
        if options.shuffle_files:
            # Seeded permutations, so a block holds files from all over the dataset (not
            # 16 consecutive frames of one sequence); the block order changes every pass.
            rng = np.random.default_rng(options.seed)
            files = [files[i] for _ in range(options.repeat) for i in rng.permutation(len(files))]
        else:
            files = files * options.repeat
        blocks = max(1, min(len(files) // options.batch_size, 1000))
        ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=blocks)
        if options.shuffle_files:
            ds = ds.randomize_block_order()
    udf = type(f"Decode{options.name}", (DecodeAugment,), {}) if options.name else DecodeAugment
    return ds.map_batches(
        udf,
        fn_constructor_kwargs={"data": asdict(data), "seed": options.seed, "max_pixels": options.max_pixels,
                               "report": report, "filesystem": filesystem, "nice": options.nice},
        batch_size=options.batch_size,
        batch_format="numpy",
        compute=actor_pool(options.concurrency),
        num_cpus=options.num_cpus,
        udf_modifying_row_count=True,
    )


def actor_pool(concurrency: int | tuple[int, int] | None) -> ray.data.ActorPoolStrategy:
    """N (fixed) or (MIN, MAX): an autoscaling pool; None: 1 .. this Ray's CPUs - 1."""
    if concurrency is None:
        # Leave one logical CPU for the read tasks: decode actors holding every CPU
        # would starve the reads that feed them, and the pipeline would stall.
        concurrency = (1, max(1, int(ray.available_resources().get("CPU", 2)) - 1))
    lo, hi = (concurrency, concurrency) if isinstance(concurrency, int) else concurrency
    return ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)


def _read_parquet(files: list[str], fs: Any, column: str, shuffle: str | None) -> ray.data.Dataset:
    import pyarrow.parquet as pq

    schema = pq.read_schema(files[0], filesystem=fs)
    if column not in schema.names:
        raise RaycutError(f"{files[0]} has no column {column!r} (columns: {', '.join(schema.names)}); use parquet:PATH:COLUMN")
    has_path = "path" in schema.names and column != "path"
    ds = ray.data.read_parquet(files, filesystem=fs, include_paths=not has_path, num_cpus=READ_CPUS,
                               shuffle=shuffle)
    ds = ds.select_columns([column, "path"])  # pushed down: other columns are never read
    return ds.rename_columns({column: "bytes"}) if column != "bytes" else ds


def decode_head(spec: str | Source | Listing, data: DataConfig, n: int, *, seed: int = 0) -> np.ndarray:
    """The first ``n`` readable images of a source (files in listed order, or the first
    Parquet file's rows), decoded and preprocessed as for training, in this process:
    (n', crop, crop, 3) uint8, n' <= n (unreadable files are left out).

    For the handful of images a sample grid shows; a Ray Data pass would start a decode
    actor (a process importing torch: ~4 s) to read eight files.
    """
    listing = list_source(spec)
    source, fs, files = listing.source, listing.fs, listing.files
    decode = DecodeAugment(asdict(data), seed=seed, filesystem=fs)
    if source.layout == "parquet":
        import pyarrow.parquet as pq

        with fs.open_input_file(files[0]) as f:
            rows = next(pq.ParquetFile(f).iter_batches(batch_size=n, columns=[source.column]), None)
        encoded = rows.column(0).to_pylist() if rows is not None else []
        batch = {"bytes": encoded, "path": np.array([f"{files[0]}#{i}" for i in range(len(encoded))], dtype=object)}
    else:
        batch = {"path": np.array(files[:n], dtype=object)}
    images = decode(batch)["image"]
    if len(images) == 0:
        first = str(batch["path"][0]) if len(batch["path"]) else ""
        why = ""
        if batch.get("bytes") is None and first:
            try:
                why = f" ({first}: {decode_image(read_bytes(first, fs), max_pixels=decode.max_pixels).reason})"
            except OSError as e:
                why = f" ({first}: unreadable, {e})"
        raise RaycutError(f"no readable image among the first {n} files of {source.describe()}{why}; check the source")
    return np.ascontiguousarray(images)


def domain_size(spec: str | Source | Listing) -> int:
    """Number of images a source holds (files, or Parquet rows): the epoch arithmetic
    needs it before anything is read."""
    return list_source(spec).size


def unpaired_batches(shard_a: Any, shard_b: Any, *, batch_size: int, steps: int,
                     packed: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``steps`` pairs of (B, crop, crop, 3) uint8 batches from two Ray Data iterators
    (a worker's ``get_dataset_shard("A")`` and ``("B")``), drawn independently.

    Both domains start streaming when this is called, not at the first ``next``: a
    worker calls it before building its model and tracking, so Ray Data's actors start
    while the worker sets up. The smaller domain starts a new pass when it runs out, so
    every step pairs fresh crops of A with fresh crops of B; each pass reshuffles its
    files (``read_domain``). ``packed``: each row already holds a whole minibatch
    (pipelines.single_image)."""
    def endless(shard: Any, name: str) -> Iterator[np.ndarray]:
        while True:
            got = 0
            for batch in shard.iter_batches(batch_size=1 if packed else batch_size, batch_format="numpy",
                                            drop_last=True):
                got += 1
                yield batch["image"][0] if packed else batch["image"]
            if got == 0:
                raise RaycutError(f"domain {name} gave no full batch of {batch_size}: it has fewer readable images than "
                                  "the batch size (bad files are skipped; the ingest report lists them)")

    # Each domain is drawn on its own thread: both pipelines start at once (each starts
    # Ray Data actors, seconds apart when started one after the other), and the next
    # batches decode while this one trains.
    return _pairs(Prefetch(endless(shard_a, "A")), Prefetch(endless(shard_b, "B")), steps)


def _pairs(a: "Prefetch", b: "Prefetch", steps: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    try:
        for _ in range(steps):
            yield next(a), next(b)
    finally:
        a.close()
        b.close()


class Prefetch:
    """``items`` drawn ``depth`` ahead on a daemon thread that starts now; its exception
    is raised on the reader's side. After ``close`` the thread stops at its next item."""

    def __init__(self, items: Iterator[Any], depth: int = 2) -> None:
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._items = items
        threading.Thread(target=self._fill, name="raycut-prefetch", daemon=True).start()

    def _fill(self) -> None:
        try:
            for item in self._items:
                while not self._stop.is_set():
                    try:
                        self._q.put((item, None), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the reader
            self._q.put((None, e))

    def __iter__(self) -> "Prefetch":
        return self

    def __next__(self) -> Any:
        item, error = self._q.get()
        if error is not None:
            raise error
        return item

    def close(self) -> None:
        self._stop.set()
