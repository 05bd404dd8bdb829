"""CLI: python -m components.monitor.demo — two weeks of the embedded default, watched (`make monitor-demo`).

In a folder of its own (`--root`, default `monitor-demo/`: its own store, data, reports and MLflow registry,
wiped first, so the demo repeats and never touches the project's), week 1 is params.yaml and week 2 is the
`week2` profile on top (profiles/week2.yaml: new patients, another vendor's sharp kernel, more noise, another
class mix, added to week 1's store). Each week runs stage by stage as the DAG's `local` runner does: generate,
ingest, monitor, the alert (to a webhook receiver this starts on 127.0.0.1, printing what arrives; a second send
of the same verdict shows nothing goes out twice), then validate ... register, whose decision compares the
retrained challenger with the champion on the same new held-out cases.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

WEEK = ("generate", "ingest", "monitor")
RETRAIN = ("validate", "preprocess", "augment", "backbone", "features", "train", "evaluate", "register")


class Receiver(BaseHTTPRequestHandler):
    """Prints each alert it receives (a stand-in for a Slack or Teams incoming webhook)."""

    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        Receiver.received.append(body)
        print(f"  [webhook receiver] got: {body['text']}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def stage(module: str, params: Path, *extra: str) -> None:
    """`python -m components.<module> --params FILE`; stop the demo with the stage's exit code on failure."""
    started = time.monotonic()
    print(f"--- {module}", flush=True)
    code = subprocess.call([sys.executable, "-m", f"components.{module}", "--params", str(params), *extra])
    if code:
        raise SystemExit(f"monitor-demo: {module} exited with {code}")
    print(f"--- {module} done in {time.monotonic() - started:.0f} s", flush=True)


def week_params(root: Path, base: Path, url: str) -> tuple[Path, Path]:
    """Week 1 (base) and week 2 (the week2 profile over it), every path under `root`, alerts to `url`."""
    raw = yaml.safe_load(base.read_text())
    raw["paths"] = {key: str(root / value) for key, value in raw["paths"].items()}
    raw["mlflow"]["tracking_uri"] = f"sqlite:///{(root / 'mlruns.db').resolve()}"
    raw["monitor"]["alert_webhook"] = url
    week1 = root / "week1.yaml"
    week1.write_text(yaml.safe_dump(raw, sort_keys=False))
    week2 = root / "week2.yaml"
    code = subprocess.call([sys.executable, "-m", "components.profile", "week2", "--params", str(week1),
                            "--write", str(week2)])
    if code:
        raise SystemExit(f"monitor-demo: the week2 profile could not be laid over {week1}")
    overlay = yaml.safe_load(week2.read_text())
    for key in ("generated_export", "source"):  # the profile names them relative to the project: re-root
        overlay["paths"][key] = str(root / Path(overlay["paths"][key]).name)
    week2.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return week1, week2


def run_week(params: Path, label: str) -> None:
    for module in WEEK:
        stage(module, params)
    stage("monitor.alert", params, "--run-label", label)
    stage("monitor.alert", params, "--run-label", f"{label} (retried)")
    for module in RETRAIN:
        for name in (candidates(params) if module == "train" else [None]):
            stage(module, params, *(["--candidate", name] if name else []))


def candidates(params: Path) -> list[str]:
    return list(yaml.safe_load(params.read_text())["train"]["candidates"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Two weeks of the embedded default (the second one shifted) through "
                                     "monitor, alert, retrain and register, in a folder of their own.")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="week 1's params (default: "
                        "params.yaml); week 2 lays profiles/week2.yaml over it")
    parser.add_argument("--root", type=Path, default=Path("monitor-demo"), help="the demo's folder (wiped first)")
    args = parser.parse_args(argv)
    shutil.rmtree(args.root, ignore_errors=True)
    args.root.mkdir(parents=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    weeks = week_params(args.root.resolve(), args.params, f"http://127.0.0.1:{server.server_address[1]}/alerts")
    try:
        for number, params in enumerate(weeks, start=1):
            print(f"\n=== week {number}: {params}", flush=True)
            run_week(params, f"monitor-demo week {number}")
    finally:
        server.shutdown()
    paths = yaml.safe_load(weeks[1].read_text())["paths"]
    report = json.loads((Path(paths["monitor"]) / "monitor.json").read_text())
    registration = json.loads((Path(paths["registration"]) / "registration.json").read_text())
    print(f"\nweek 2 monitor verdict: {report['status']} (drifted: {', '.join(report.get('drifted', [])) or 'nothing'}"
          f"); alerts received: {len(Receiver.received)}")
    print(f"week 2 register: {registration['reason']}")
    print(f"see {paths['monitor']}/drift.png and {paths['monitor']}/evidently.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
