"""`make bench-serve`: bounded load on the real service from this (second) process on 127.0.0.1.

Serves a paper_cnn-shaped Keras model (params' image size and first candidate's filters; untrained
weights: speed does not depend on weight values) with batching on and then off; for 1, 8 and 32
concurrent clients measures p50/p95/p99 latency and throughput, and compares the served throughput
with the model's in-process predict throughput at the same batch size. Writes reports/serving/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from components.common.console import quiet_runtime
from components.common.procs import stop_process_group
from components.common.tables import text_table

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (1, 8, 32)


def stand_in_model(size: int, filters: list[int], dense: int, classes: int):
    """Same layer stack as the paper_cnn candidate (rescale, conv/pool blocks, dense, softmax)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for f in filters:
        x = keras.layers.MaxPooling2D(2)(keras.layers.Conv2D(f, 3, padding="same", activation="relu")(x))
    x = keras.layers.Dense(dense, activation="relu")(keras.layers.Flatten()(x))
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


def save_bento_model(model, home: Path, size: int, classes: list[str]) -> str:
    """Put the model in a throwaway BentoML store the way the package stage does; returns its tag."""
    os.environ["BENTOML_HOME"] = str(home)
    import bentoml

    meta = {"model_file": "model.keras", "classes": classes, "image_size": size, "window_center": 40,
            "window_width": 400, "mlflow_version": "bench"}
    with bentoml.models.create("kidney_ct_classifier", metadata=meta) as stored:
        model.save(stored.path_of("model.keras"))
    return str(stored.tag)


def in_process_throughput(model, size: int, batch: int, seconds: float) -> float:
    """Images per second of model(batch) in this process (no HTTP, no decoding)."""
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 1)).astype(np.float32)
    model(x, training=False)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        np.asarray(model(x, training=False))
        done += batch
    return done / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, tag: str, batching: bool, log: Path) -> tuple[subprocess.Popen, str]:
    import requests

    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(home), "KIDNEY_CT_BENTO_MODEL": tag, "BENTOML_DO_NOT_TRACK": "True",
           "KIDNEY_CT_BATCHING": "1" if batching else "0", "PYTHONPATH": str(ROOT)}
    env.pop("KIDNEY_CT_API_TOKEN", None)
    server = subprocess.Popen([str(Path(sys.executable).with_name("bentoml")), "serve",
                               "serving.service:KidneyCtClassifier", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"bentoml serve exited:\n{log.read_text()[-2000:]}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return server, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop(server)
    raise SystemExit("service not ready after 180 s")


def stop(server: subprocess.Popen) -> None:
    stop_process_group(server)


def load(url: str, payload: bytes, clients: int, seconds: float) -> dict:
    """`clients` threads, each posting back-to-back for `seconds`; latency percentiles and throughput."""
    import requests

    latencies, errors, lock = [], [0], threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        with requests.Session() as session:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                ok = session.post(f"{url}/predict", files={"image": ("s.png", payload)}, timeout=60).ok
                with lock:
                    latencies.append(time.perf_counter() - t0) if ok else errors.__setitem__(0, errors[0] + 1)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": errors[0],
            "throughput_rps": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99))}


def png_bytes(gray: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(gray.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def ct_like_slice() -> np.ndarray:
    """A 512x512 8-bit slice shaped like an abdomen (body disc, two kidneys, mild noise): compresses like a real one."""
    yy, xx = np.mgrid[-1:1:512j, -1:1:512j]
    body = np.where(np.hypot(xx / 0.9, yy / 0.7) < 1, 110.0, 5.0)
    kidneys = 60.0 * ((np.hypot(xx - 0.35, yy - 0.1) < 0.12) | (np.hypot(xx + 0.35, yy - 0.1) < 0.12))
    noise = np.random.default_rng(1).normal(0, 4, (512, 512))
    return np.clip(body + kidneys + noise, 0, 255)


def markdown(result: dict) -> str:
    """The load runs as a Markdown table, each beside the in-process throughput at the same batch."""
    rows = []
    for row in result["runs"]:
        base = result["in_process"][str(row["clients"])]
        rows.append(["on" if row["batching"] else "off", row["clients"], row["requests"],
                     *(f"{row[k]:.1f}" for k in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps")), f"{base:.1f}",
                     f"{row['throughput_rps'] / base:.2f}"])
    return text_table(["batching", "clients", "requests", "p50 ms", "p95 ms", "p99 ms", "served img/s",
                       "in-process img/s (batch = clients)", "ratio"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seconds", type=float, default=8.0, help="load duration per level")
    parser.add_argument("--out", default="reports/serving/bench.json")
    args = parser.parse_args(argv)
    quiet_runtime()  # before stand_in_model imports Keras; the servers it starts inherit the environment
    from components.common.params import load_params

    params = load_params(args.params)
    candidate = next(iter(params.train.candidates.values()))
    size = params.preprocess.image_size
    model = stand_in_model(size, list(candidate.filters), candidate.dense_units, len(params.classes))
    payload = png_bytes(ct_like_slice())
    result = {"image_size": size, "payload": f"512x512 CT-like PNG ({len(payload) // 1024} KiB)", "seconds_per_level": args.seconds,  # noqa: E501
              "in_process": {str(b): in_process_throughput(model, size, b, args.seconds / 2) for b in LEVELS}, "runs": []}
    with tempfile.TemporaryDirectory(prefix="kidney-ct-bench-") as tmp:
        tag = save_bento_model(model, Path(tmp) / "bentoml", size, list(params.classes))
        for batching in (True, False):
            server, url = start_server(Path(tmp) / "bentoml", tag, batching, Path(tmp) / "serve.log")
            try:
                load(url, payload, 4, 2.0)  # warm-up
                for clients in LEVELS:
                    row = {"batching": batching, **load(url, payload, clients, args.seconds)}
                    result["runs"].append(row)
                    print(f"batching={'on' if batching else 'off'} clients={clients}: {row['throughput_rps']:.1f} req/s, "
                          f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms", flush=True)
            finally:
                stop(server)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
