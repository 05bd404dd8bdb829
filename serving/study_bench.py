"""Per-study latency: a CT study of N slices through the service's study path, by runtime (`make bench-serve`).

What `predict_series` does for a study, in process: score every slice (`components.common.inference`: the Keras
model by TensorFlow, or its OpenVINO form at f32 / bf16 / int8, int8 calibrated on 300 other real slices), pool
the study verdict (the champion's study model), the Grad-CAM of the top-k slices on the Keras graph, their PNGs.
The champion is the registry's real-data one where it exists (`--model`), else the embedded default's; the study's
slices are real ones from `--source` (the first N files of a class folder, prepared with the champion's contract),
else CT-like stand-ins. Prints p50/p95 per study size and runtime, img/s, peak RSS, and each OpenVINO form's
agreement with Keras on those slices; writes JSON. With `--served`, the same studies also go through a running
service (`bentoml serve` on 127.0.0.1 with the champion's packaged BentoML model): the study's original files in
one zip posted to `/predict_series`, p50/p95, and the ratio of served to in-process time for the runtime the
packaged model scores with (what the service adds: the upload, decoding and preparing each file, the response).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from components.lib.host import host_line

DEFAULT_MODELS = ("models:/kidney-ct-classifier-real@champion", "models:/kidney-ct-classifier@champion")


def load_champion(uris: list[str]):
    """(uri, Champion, Keras model) of the first URI the registry resolves."""
    from mlflow import MlflowClient

    from components.common.champion import champion_from_version
    from components.common.registry import load_registered_keras

    client = MlflowClient()
    for uri in uris:
        name, _, alias = uri.removeprefix("models:/").partition("@")
        try:
            version = client.get_model_version_by_alias(name, alias)
        except Exception:  # noqa: BLE001 - not registered here: the next one
            continue
        return uri, champion_from_version(name, version), load_registered_keras(uri)
    raise SystemExit(f"none of {uris} is registered in {os.environ.get('MLFLOW_TRACKING_URI')}: run make run first")


def _source_files(source: Path) -> list[Path]:
    return sorted(p for folder in sorted(source.glob("*")) if folder.is_dir() for p in sorted(folder.rglob("*"))
                  if p.is_file()) if source.is_dir() else []


def calibration_slices(source: Path, champion, skip: int, count: int = 300) -> np.ndarray:
    """`count` prepared real slices evenly spaced over every class folder, past the first `skip` files (the study's):
    what int8 quantisation calibrates on; CT-like stand-ins where `source` has too few."""
    from components.common.imaging import decode_image, prepare_for_model

    files = _source_files(source)[skip:]
    if len(files) < count:
        return study_slices(Path("/nonexistent"), champion, count)[0]
    picks = [files[i] for i in np.linspace(0, len(files) - 1, count).astype(int)]
    return np.stack([prepare_for_model(decode_image(p.read_bytes()), champion.image_size, champion.window_center,
                                       champion.window_width, champion.body_crop) for p in picks])


def study_slices(source: Path, champion, count: int) -> tuple[np.ndarray, str]:
    """`count` prepared slices of one study-like sequence: real files where `source` has them, else stand-ins."""
    from components.common.imaging import decode_image, prepare_for_model

    files = _source_files(source)[:count]
    if len(files) < count:
        from serving.bench import ct_like_slice

        slices = [ct_like_slice() for _ in range(count)]
        return np.stack([prepare_for_model(_loaded(s), champion.image_size, champion.window_center,
                                           champion.window_width, champion.body_crop) for s in slices]), "CT-like stand-ins"
    prepared = [prepare_for_model(decode_image(p.read_bytes()), champion.image_size, champion.window_center,
                                  champion.window_width, champion.body_crop) for p in files]
    return np.stack(prepared), f"real slices of {source}"


def _loaded(gray: np.ndarray):
    from components.common.imaging import decode_image
    from serving.bench import png_bytes

    return decode_image(png_bytes(gray))


def study_once(scorer, keras_model, champion, pixels: np.ndarray, top_k: int) -> float:
    """Seconds for one study the way the service's series_verdict does it."""
    from components.common.gradcam import gradcam, overlay
    from components.common.inference import score
    from components.common.pooling import fixed_pooling
    from components.common.study import study_verdict
    from components.common.study_model import StudyModel
    from serving.service import png_base64

    started = time.perf_counter()
    probabilities, _ = score(scorer, pixels)
    study = champion.study or StudyModel(fixed_pooling(champion.series_pooling))
    verdict = study_verdict(probabilities, list(champion.classes), champion.series_pooling, top_k, study)
    heat = gradcam(keras_model, pixels[verdict.top][..., None].astype(np.float32),
                   class_index=list(champion.classes).index(verdict.label))
    for i, h in zip(verdict.top, heat):
        png_base64(pixels[i], "L"), png_base64(overlay(pixels[i], h), "RGB")
    return time.perf_counter() - started


def scorers(keras_model, names: list[str], folder: Path, calibration) -> dict:
    """name -> (scorer, seconds to make it); openvino-int8 is the f32 IR quantised on `calibration()`'s slices."""
    import shutil

    from components.common.inference import KerasScorer, OpenVinoScorer, convert, quantize

    made = {}
    if "tensorflow" in names:
        made["tensorflow"] = (KerasScorer(keras_model), 0.0)
    if any(n.startswith("openvino") for n in names):
        started = time.perf_counter()
        ir_file = convert(keras_model, folder)
        seconds = time.perf_counter() - started
        for name in names:
            if name in ("openvino-f32", "openvino-bf16"):
                made[name] = (OpenVinoScorer(ir_file, name.split("-", 1)[1]), seconds)
        if "openvino-int8" in names:
            started = time.perf_counter()
            int8_folder = shutil.copytree(folder, folder.with_name("openvino-int8"))
            int8_file = quantize(Path(int8_folder) / ir_file.name, calibration())
            made["openvino-int8"] = (OpenVinoScorer(int8_file, "int8"), seconds + time.perf_counter() - started)
    return made


def latency(times: list[float], count: int) -> dict:
    """p50 / p95 seconds of a study's timed runs, and img/s at the median."""
    median = statistics.median(times)
    return {"p50_s": round(median, 2), "p95_s": round(float(np.percentile(times, 95)), 2),
            "img_per_s": round(count / median, 1)}


def packaged_tag(champion) -> str | None:
    """The newest BentoML model packaged from the champion's registry version (its labels say which)."""
    import bentoml

    found = [m for m in bentoml.models.list("kidney_ct_classifier")
             if m.info.labels.get("mlflow_model") == champion.model_name
             and str(m.info.labels.get("mlflow_version")) == str(champion.version)]
    return str(max(found, key=lambda m: m.info.creation_time).tag) if found else None


def zipped(files: list[Path]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i, path in enumerate(files):
            archive.writestr(f"study/{i:04d}{path.suffix}", path.read_bytes())
    return buffer.getvalue()


def served_runs(champion, files: list[Path], sizes: list[int], repeats: int, top_k: int, log: Path) -> dict:
    """Each study size through a running service's /predict_series (one zip of the original files): the runtime
    the service reports, and per size p50/p95 seconds and img/s."""
    import requests

    from serving.bench import start_server, stop

    tag = packaged_tag(champion)
    if tag is None:
        raise SystemExit(f"{champion.model_name} v{champion.version} was never packaged: run the package stage")
    home = Path(os.environ.get("BENTOML_HOME", ".bentoml")).resolve()
    server, url = start_server(home, tag, batching=False, log=log)
    try:
        version = requests.post(f"{url}/version", json={}, timeout=30).json()
        out = {"bento_model": tag, "runtime": version.get("runtime", "tensorflow"), "sizes": {}}
        if version.get("precision"):
            out["precision"] = version["precision"]
        for count in sizes:
            payload = zipped(files[:count])
            times = [posted_seconds(url, payload, top_k) for _ in range(repeats + 1)][1:]  # the first: a warm-up
            out["sizes"][count] = latency(times, count)
            print(f"{'served':>14} {count:>4} slices: p50 {out['sizes'][count]['p50_s']:6.2f} s  p95 "
                  f"{out['sizes'][count]['p95_s']:6.2f} s  ({out['runtime']} {out.get('precision', '')})",
                  file=sys.stderr)
        return out
    finally:
        stop(server)


def posted_seconds(url: str, payload: bytes, top_k: int) -> float:
    """Seconds for one zipped study through /predict_series (SystemExit on an error answer)."""
    import requests

    started = time.perf_counter()
    response = requests.post(f"{url}/predict_series", files=[("images", ("study.zip", payload))],
                             data={"top_k": top_k}, timeout=600)
    if not response.ok:
        raise SystemExit(f"/predict_series answered {response.status_code}: {response.text[:300]}")
    return time.perf_counter() - started


def served_ratios(runs: list[dict], served: dict) -> dict:
    """Served over in-process p50, per study size, for the runtime (and precision) the service scores with."""
    name = f"openvino-{served.get('precision', 'f32')}" if served["runtime"] == "openvino" else served["runtime"]
    in_process = {r["slices"]: r["p50_s"] for r in runs if r["runtime"] == name}
    return {count: round(v["p50_s"] / in_process[count], 2) for count, v in served["sizes"].items()
            if count in in_process}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help=f"registry URI(s), first found wins (default {DEFAULT_MODELS})")
    parser.add_argument("--source", type=Path, default=Path("../shared/data/kidney-ct"), help="real slices, by class")
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 300], help="study sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--runtimes", nargs="+", default=["tensorflow", "openvino-f32", "openvino-bf16",
                                                                 "openvino-int8"])
    parser.add_argument("--served", action="store_true", help="also time the studies through a running service "
                        "(the champion's packaged BentoML model) and give the served / in-process ratio")
    parser.add_argument("--out", type=Path, default=Path("reports/serving/study_bench.json"))
    args = parser.parse_args(argv)
    import tempfile

    from components.common.inference import check_conversion, score
    from components.common.pooling import fixed_pooling
    from components.common.study_model import StudyModel
    from components.package.core import study_probabilities

    os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db")
    os.environ.setdefault("BENTOML_HOME", str(Path(".bentoml").resolve()))  # params.yaml's package.bentoml_home
    uri, champion, keras_model = load_champion(args.model or list(DEFAULT_MODELS))
    pixels, what = study_slices(args.source, champion, max(args.slices))
    result = {"host": host_line(), "model": uri, "image_size": champion.image_size, "slices_from": what, "runs": []}
    print(f"{uri} ({champion.image_size} px), {what}; host: {result['host']}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="study-bench-") as tmp:
        made = scorers(keras_model, args.runtimes, Path(tmp) / "openvino",
                       lambda: calibration_slices(args.source, champion, max(args.slices)))
        reference = score(made["tensorflow"][0], pixels)[0] if "tensorflow" in made else None
        study = champion.study or StudyModel(fixed_pooling(champion.series_pooling))
        for name, (scorer, convert_s) in made.items():
            agreement = None
            if reference is not None and name != "tensorflow":
                series = [f"study-{i // 50}" for i in range(len(pixels))]  # 50-slice stretches as studies
                agreement = vars(check_conversion(reference, score(scorer, pixels)[0], series,
                                                  study_probabilities(study), 1e-3, 0.99, 1e-3))
            for count in args.slices:
                study_once(scorer, keras_model, champion, pixels[:count], args.top_k)  # warm-up
                times = [study_once(scorer, keras_model, champion, pixels[:count], args.top_k)
                         for _ in range(args.repeats)]
                row = {"runtime": name, "slices": count, **latency(times, count), "convert_s": round(convert_s, 1),
                       "agreement": agreement}
                result["runs"].append(row)
                print(f"{name:>14} {count:>4} slices: p50 {row['p50_s']:6.2f} s  p95 {row['p95_s']:6.2f} s  "
                      f"{row['img_per_s']:5.1f} img/s", file=sys.stderr)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    args.out.parent.mkdir(parents=True, exist_ok=True)  # the service's log goes beside the results
    if args.served:
        del made, keras_model  # the service holds its own copy: not two ResNets in memory beside it
        files = _source_files(args.source)[:max(args.slices)]
        if len(files) < max(args.slices):
            raise SystemExit(f"--served posts real files: {args.source} has fewer than {max(args.slices)}")
        result["served"] = served_runs(champion, files, args.slices, args.repeats, args.top_k,
                                       args.out.with_suffix(".serve.log"))
        result["served"]["ratio_served_over_in_process"] = served_ratios(result["runs"], result["served"])
        print(f"served / in-process: {result['served']['ratio_served_over_in_process']}", file=sys.stderr)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
