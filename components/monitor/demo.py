"""CLI: python -m components.monitor.demo — week 2 of the embedded default, watched (what `make monitor-demo` runs).

After week 1 (`make run`: the champion is registered with the record of its data), this runs the week-2
params (`python -m components.profile week2 --write FILE`: new patients, another vendor's sharp kernel, more
noise, another class mix, added to week 1's store) stage by stage as the DAG's `local` runner does:
generate, ingest, monitor, then the alert to a webhook receiver it starts on 127.0.0.1 (the alert's JSON is
printed as it arrives; a second send of the same verdict shows nothing goes out twice), then validate ...
register, whose decision compares the retrained challenger with the champion on the same new held-out cases.
"""

from __future__ import annotations

import argparse
import json
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


def with_webhook(params: Path, url: str) -> Path:
    raw = yaml.safe_load(params.read_text())
    raw["monitor"]["alert_webhook"] = url
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    return params


def candidates(params: Path) -> list[str]:
    return list(yaml.safe_load(params.read_text())["train"]["candidates"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Week 2 of the embedded default through monitor, alert, retrain "
                                     "and register (run `make run` first for week 1).")
    parser.add_argument("--params", type=Path, required=True, help="the week-2 params file "
                        "(python -m components.profile week2 --write FILE)")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    params = with_webhook(args.params, f"http://127.0.0.1:{server.server_address[1]}/alerts")
    try:
        for module in WEEK:
            stage(module, params)
        stage("monitor.alert", params, "--run-label", "monitor-demo week 2")
        stage("monitor.alert", params, "--run-label", "monitor-demo week 2 (retried)")
        for module in RETRAIN:
            for name in (candidates(params) if module == "train" else [None]):
                stage(module, params, *(["--candidate", name] if name else []))
    finally:
        server.shutdown()
    paths = yaml.safe_load(params.read_text())["paths"]
    report = json.loads((Path(paths["monitor"]) / "monitor.json").read_text())
    registration = json.loads((Path(paths["registration"]) / "registration.json").read_text())
    print(f"\nmonitor verdict: {report['status']} (drifted: {', '.join(report.get('drifted', [])) or 'nothing'}); "
          f"alerts received: {len(Receiver.received)}")
    print(f"register: {registration['reason']}")
    print(f"see {paths['monitor']}/drift.png and {paths['monitor']}/evidently.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
