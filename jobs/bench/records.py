"""The benchmark record every ``raycut bench`` writes, and its printed table: the
machine a record was measured on (with what ``auto`` resolves to there) and
``{"bench", "machine", "results": [{"name", "metric", "value", "unit", ...}]}``."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from cut_core.capabilities import ISA_ENV, cpu_model
from cut_core.hardware import fast_paths


def machine_info(device: str) -> dict[str, object]:
    """The machine a record was measured on, with what ``auto`` resolves to there."""
    paths = fast_paths(device)
    info: dict[str, object] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "isa_env": {k: os.environ[k] for k in ISA_ENV if os.environ.get(k)},
        "fast_paths": paths.to_json(),
        "auto_resolves_to": {"precision": paths.precision, "channels_last": paths.channels_last,
                             "int8_translation": paths.int8, "why": paths.reason},
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def format_table(rows: list[dict[str, object]]) -> str:
    """One line per row name: ms/iter (median +- half the IQR) or images/s, peak memory
    where measured, and the speed-up over the in-run baseline of the same preset (for
    rows timed round by round with it: the median of the per-round speed-ups), and for
    training rows the arithmetic of a step as a fraction of the baseline's ("work") and
    the rate it ran at ("GFLOP/s": a row's time over the baseline's is its work ratio
    over the ratio of these rates, so the column says which of the two a path gains by).
    Rows whose medians lie closer than their spreads are marked: they cannot be ranked."""
    by_name: dict[str, dict[str, object]] = {}
    for r in rows:
        entry = by_name.setdefault(str(r["name"]), {})
        entry[str(r["metric"])] = r["value"]
        for k in ("spread_ms", "skipped", "resolved", "model_busy", "paired_vs_baseline", "arith_vs_baseline",
                  "gflop_per_s"):
            if k in r:
                entry[k] = r[k]
    lines = [f"{'name':44s} {'speed':>22s} {'peak MB':>9s} {'vs baseline':>11s} {'work':>6s} {'GFLOP/s':>8s}"]
    for name, m in by_name.items():
        note = ""
        if m.get("skipped"):
            lines.append(f"{name:44s} {'-':>22s} {'':>9s} {'':>11s} {'':>6s} {'':>8s}  {m['skipped']}")
            continue
        if "ms_per_iter" in m:
            speed = f"{m['ms_per_iter']:.0f} ms/iter" + (f" +-{m['spread_ms']:.0f}" if "spread_ms" in m else "")
            preset = name.split("/")[1].split("-official")[0] if name.startswith("baseline") else name.split("/")[0]
            suffix = name[name.index("@"):] if "@" in name else ""
            base = by_name.get(f"baseline/{preset}-official-schedule{suffix}", {}).get("ms_per_iter")
            if base is None and not name.startswith("baseline"):  # any in-run baseline of the preset
                base = next((v["ms_per_iter"] for k, v in by_name.items() if k.startswith(f"baseline/{preset}-")
                             and k.endswith(suffix) and v.get("ms_per_iter")), None)
            ratio = f"{float(base) / float(m['ms_per_iter']):.2f}x" if base else ""
            if "paired_vs_baseline" in m:  # the median of per-round ratios, when rounds were interleaved
                ratio = f"{float(m['paired_vs_baseline']):.2f}x"
            close = [k.split("/", 1)[1] for k, v in by_name.items() if k != name and k.startswith(name.split("/")[0] + "/")
                     and k.endswith(suffix) and v.get("ms_per_iter") and "spread_ms" in v and "spread_ms" in m
                     and abs(float(v["ms_per_iter"]) - float(m["ms_per_iter"])) < float(v["spread_ms"]) + float(m["spread_ms"])]
            if close:
                note = "  within the noise of " + ", ".join(close)
            if m.get("resolved"):
                note = f"  [{m['resolved']}]" + note
        elif "ms_per_image" in m:  # an encoding cost
            speed, ratio = f"{m['ms_per_image']:.0f} ms/img", ""
            note = f"  {m['file_mb']:.2f} MB" if "file_mb" in m else ""
        else:
            speed = f"{m.get('images_per_s', 0):.3g} img/s"
            if "model_busy" in m:
                note = f"  model busy {float(m['model_busy']):.0%}"
            suffix = name[name.index("@"):] if "@" in name else ""
            base = next((v["images_per_s"] for k, v in by_name.items() if k.startswith("baseline/")
                         and k.endswith(suffix) and "images_per_s" in v), None)
            ratio = f"{float(m['images_per_s']) / float(base):.2f}x" if base and not name.startswith("baseline") else ""
            if "images_per_s" not in m:
                continue
        peak = m.get("peak_mem_mb")
        work = f"{float(m['arith_vs_baseline']):.3f}" if "arith_vs_baseline" in m else ""
        rate = f"{float(m['gflop_per_s']):.0f}" if "gflop_per_s" in m else ""
        lines.append(f"{name:44s} {speed:>22s} {'' if peak is None else f'{peak:9.0f}':>9s} {ratio:>11s} {work:>6s} {rate:>8s}{note}")
    return "\n".join(lines)


def write_record(path: str | Path, bench: str, rows: list[dict[str, object]], device: str) -> Path:
    record = {"bench": bench, "machine": machine_info(device), "results": rows}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out
