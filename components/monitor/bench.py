"""Benchmark: the monitor on a real week (`make bench-monitor`, issue 36).

Lays out a week of real series from a folder of class folders laid out like ../shared/data/kidney-ct (files
numbered per class, neighbouring numbers neighbouring slices): whole series drawn at random until the week holds
`--slices` slices, a folder per series, as a PACS export arrives, once as they are and once as a sharper, noisier
scanner would give them. Then runs the monitor in shadow mode (`--source`) against the registry's champion of the
params file three times: the first pass after a registration (it describes the champion's reference once), the
same week again (the reference read from the champion's run), and the shifted week. Prints and writes each pass's
seconds, its verdict and what drifted, with the host.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from components.lib.grouping import thumbnail_vectors
from components.lib.host import host_line

SERIES_BREAK = 0.7  # thumbnail correlation under which the next numbered file starts another series


def _number(path: Path) -> int:
    found = re.search(r"\((\d+)\)", path.name)
    return int(found.group(1)) if found else -1


def _thumbnail(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L").resize((32, 32)), dtype=np.float32)


def class_series(folder: Path) -> list[list[Path]]:
    """The image files of one class folder in number order, cut into series where consecutive slices stop
    correlating (32 px thumbnails under SERIES_BREAK; ~157 series in the 4,612 real slices)."""
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}), key=_number)
    if len(files) < 2:
        return [files] if files else []
    thumbs = thumbnail_vectors(np.stack([_thumbnail(p) for p in files]))  # rows: zero mean, unit norm
    breaks = np.flatnonzero((thumbs[1:] * thumbs[:-1]).sum(axis=1) < SERIES_BREAK) + 1
    return [list(chunk) for chunk in np.split(np.array(files, dtype=object), breaks) if len(chunk)]


def spaced(files: list[Path], count: int) -> list[Path]:
    """At most `count` slices spread over the whole series."""
    if len(files) <= count:
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, count).astype(int)]


def sharper_and_noisier(path: Path, seed: int) -> bytes:
    """A slice as another scanner would give it: a sharp reconstruction kernel (unsharp mask), more noise; JPEG."""
    from PIL import Image, ImageFilter

    image = Image.open(path).convert("L").filter(ImageFilter.UnsharpMask(radius=2, percent=180, threshold=0))
    noisy = np.asarray(image, dtype=np.float32) + np.random.default_rng(seed).normal(0, 9, (image.height, image.width))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def lay_out_week(series: list[tuple[str, list[Path]]], folder: Path, shifted: bool = False) -> int:
    """Each series in its own subfolder of `folder` (copied, or shifted); the number of slices written."""
    written = 0
    for name, files in series:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for j, file in enumerate(files):
            data = sharper_and_noisier(file, seed=written + j) if shifted else file.read_bytes()
            (folder / name / file.name).write_bytes(data)
        written += len(files)
    return written


def draw_week(data: Path, slices: int, seed: int) -> list[tuple[str, list[Path]]]:
    """Whole series of every class folder, drawn at random until they hold `slices` slices."""
    pool = [(f"{c.name}-{i:03d}", files) for c in sorted(p for p in data.iterdir() if p.is_dir())
            for i, files in enumerate(class_series(c))]
    random.Random(seed).shuffle(pool)
    week, total = [], 0
    for name, files in pool:
        if total >= slices:
            break
        week.append((name, files))
        total += len(files)
    return week


def monitor_pass(params: Path, source: Path) -> dict:
    """One shadow pass of the monitor on `source`: its seconds and what monitor.json says."""
    import yaml

    from components.monitor.__main__ import main

    started = time.monotonic()
    if main(["--params", str(params), "--source", str(source)]) != 0:
        raise SystemExit(f"the monitor failed on {source}: its log says why")
    seconds = time.monotonic() - started
    folder = Path(yaml.safe_load(params.read_text())["paths"]["monitor"])
    report = json.loads((folder / "monitor.json").read_text())
    return {"seconds": round(seconds, 1), "status": report["status"], "drifted": report.get("drifted", []),
            "reference": report.get("reference"), "counts": report.get("counts"),
            "champion": report.get("champion"), "reasons": report.get("reasons")}


def with_monitor_folder(params: Path, folder: Path) -> Path:
    """A copy of the params file (beside it) whose paths.monitor is `folder`."""
    import yaml

    raw = yaml.safe_load(params.read_text())
    raw["paths"]["monitor"] = str(folder)
    copy = params.with_name(f"{params.stem}.monitor-bench.yaml")
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    return copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, required=True, help="params naming the registry's champion (the "
                        "real-data profile: python -m components.profile real-data --write FILE)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/kidney-ct"), help="class folders")
    parser.add_argument("--slices", type=int, default=1000, help="slices in the week (whole series)")
    parser.add_argument("--seed", type=int, default=36)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/monitor"),
                        help="the passes' monitor outputs (not the pipeline's paths.monitor, a DVC output)")
    parser.add_argument("--json", type=Path, default=Path("reports/bench/monitor_bench.json"))
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} not found: the benchmark needs real slices in class folders")
    args.params = with_monitor_folder(args.params, args.out)
    week = draw_week(args.data, args.slices, args.seed)
    result: dict = {"host": host_line(), "series": len(week), "slices": sum(len(f) for _, f in week), "passes": {}}
    print(f"a week of {result['slices']} real slices in {result['series']} series; host: {result['host']}")
    with tempfile.TemporaryDirectory(prefix="kidney-ct-week-") as tmp:
        plain, shifted = Path(tmp) / "week", Path(tmp) / "week-shifted"
        lay_out_week(week, plain)
        lay_out_week(week, shifted, shifted=True)
        for name, source in (("first pass (reference described)", plain), ("same week again", plain),
                             ("shifted week", shifted)):
            result["passes"][name] = outcome = monitor_pass(args.params, source)
            print(f"{name}: {outcome['seconds']} s, {outcome['status']}, drifted: {outcome['drifted']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
