"""CLI: python -m components.monitor.alert — POST the monitor's verdict to `monitor.alert_webhook`, once.

Sent only for `drift` or `degraded`. Each alert has an id (the verdict, its reasons, the champion and the
new data it judged); ids already delivered are kept in `<paths.monitor>/alerts_sent.json`, so a retried
task or a re-run on the same data sends nothing twice. The body is JSON with a `text` line (what Slack and
Teams incoming webhooks show) and the verdict's numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from components.common.cli import StageError, read_json, run_stage, stage_parser, write_json
from components.common.params import MonitorParams, Params

LEDGER = "alerts_sent.json"
SENT_NOW: list[bool] = []  # set by `run` for `main`'s exit code (run_stage returns only 0 or 2)
Post = Callable[[str, bytes, float], int]


def alert_id(report: dict) -> str:
    """Stable id of what the alert says: equal for a retry, different once the data or verdict changes."""
    keys = ("status", "reasons", "champion", "new_data_fingerprint")
    return hashlib.sha256(json.dumps({k: report.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def alert_body(report: dict, run_label: str) -> dict:
    """The webhook's JSON body: a one-line `text`, then the verdict's details."""
    champion = report.get("champion") or {}
    text = (f"kidney-ct monitor: {report['status'].upper()} in {run_label} — champion "
            f"{champion.get('model_name', '?')} v{champion.get('version', '?')}; "
            + "; ".join(report.get("reasons", [])[:5]))
    return {"text": text, "id": alert_id(report), "status": report["status"], "reasons": report.get("reasons", []),
            "counts": report.get("counts", {}), "performance": report.get("performance"), "champion": champion}


def http_post(url: str, body: bytes, timeout: float) -> int:
    """POST JSON; the HTTP status (an HTTP error's status too)."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (a URL from params)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def deliver(url: str, body: dict, settings: MonitorParams, post: Post = http_post, pause_s: float = 1.0) -> int:
    """POST until a 2xx, at most `alert_attempts` times; StageError with the last failure otherwise."""
    payload = json.dumps(body).encode()
    failure = ""
    for attempt in range(1, settings.alert_attempts + 1):
        try:
            status = post(url, payload, settings.alert_timeout_s)
            if 200 <= status < 300:
                return attempt
            failure = f"HTTP {status}"
        except (OSError, urllib.error.URLError) as exc:
            failure = str(exc)
        if attempt < settings.alert_attempts:
            time.sleep(pause_s * attempt)
    raise StageError(f"the alert did not reach {url} after {settings.alert_attempts} attempt(s): {failure}")


def send_once(report: dict, settings: MonitorParams, ledger_path: Path, run_label: str,
              post: Post = http_post) -> tuple[bool, str]:
    """Send the alert the report calls for, unless it needs none or was already delivered: (sent now, what
    happened)."""
    if report.get("status") not in ("drift", "degraded"):
        return False, f"no alert: the verdict is {report.get('status')!r}"
    if not settings.alert_webhook:
        return False, "no alert sent: monitor.alert_webhook is not set (the verdict is in monitor.json and MLflow)"
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    identifier = alert_id(report)
    if identifier in ledger:
        return False, f"alert {identifier} was already delivered at {ledger[identifier]['sent_at']}: not sent again"
    attempts = deliver(settings.alert_webhook, alert_body(report, run_label), settings, post)
    ledger[identifier] = {"sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "status": report["status"],
                          "attempts": attempts}
    write_json(ledger_path, ledger)
    return True, f"alert {identifier} ({report['status']}) delivered in {attempts} attempt(s)"


def run(params: Params, args: argparse.Namespace) -> None:
    folder = Path(params.paths.monitor)
    report = read_json(folder / "monitor.json")
    sent, outcome = send_once(report, params.monitor, folder / LEDGER, args.run_label)
    SENT_NOW[:] = [True] if sent else []
    if args.result:
        write_json(args.result, {"sent": sent, "outcome": outcome, "status": report.get("status")})
    print(f"monitor.alert: {outcome}")


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser("Send the monitor's drift/degradation verdict to monitor.alert_webhook (once per verdict "
                          "and data; a retry sends nothing twice).")
    parser.add_argument("--run-label", default="a manual run", help="names the run in the alert (the DAG passes "
                        "its run id)")
    parser.add_argument("--result", type=Path, default=None, help="also write {sent, outcome, status} to this JSON")
    parser.add_argument("--skip-exit-code", type=int, default=None, metavar="N",
                        help="exit N when no alert was sent now (an orchestrator marks the task skipped)")
    args = parser.parse_known_args(argv)[0]
    code = run_stage("monitor.alert", run, parser, argv)
    if code == 0 and args.skip_exit_code is not None and not SENT_NOW:
        return args.skip_exit_code
    return code


if __name__ == "__main__":
    raise SystemExit(main())
