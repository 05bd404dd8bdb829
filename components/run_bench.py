"""Time the embedded default's whole run from nothing: python -m components.run_bench (`make bench-run`).

Extracts a commit of this repository (HEAD unless --ref says otherwise) into a scratch folder, with its own DVC
cache, MLflow store and BentoML home, runs there what `make run` runs (`dvc repro`, then the summary), and reports
each stage's wall seconds (from DVC's "Running stage" line to the next one: the interpreter's start-up included),
the seconds the stage logged itself ("done in"), each candidate's fitting seconds, the gate's verdict and the
total, with the host. Nothing in this checkout changes but the --out file. The venv must be installed (`make
install`); the install is not timed. Issue 36's goal: the total within 300 s on 2 cores without AVX-512;
`--isa AVX2` caps TensorFlow's and OpenVINO's oneDNN kernels on an AVX-512 host, which stands in for such a host
but is not one (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from components.common.tables import text_table
from components.lib.host import host_line

STAGE_START = re.compile(r"^Running stage '([^']+)':")
STAGE_DONE = re.compile(r"\[([\w-]+)\] done in ([\d.]+) s")
SUMMARY = "summary"  # the row of `python -m components`, which `make run` runs after the stages
ISAS = ("AVX2", "AVX", "SSE41")  # what ONEDNN_MAX_CPU_ISA accepts below AVX-512, fastest first
CLEARED_ENV = ("MLFLOW_", "BENTOML_", "DVC_", "KIDNEY_CT_")  # the scratch run uses its params' stores, not the caller's


@dataclass(frozen=True)
class StageTime:
    """One stage of the run: wall seconds from its start line to the next one, and the seconds it logged itself."""

    stage: str
    wall_s: float
    own_s: float | None  # the stage's "done in" figure; None when it logged none (it failed, or it is no stage)


def stage_times(events: list[tuple[float, str]], end: float) -> list[StageTime]:
    """Stages in the order DVC ran them, from (seconds since the run began, output line) events; `end` closes the
    last one. A stage's "done in" line counts for the stage whose start line came last."""
    starts = [(t, m.group(1)) for t, line in events if (m := STAGE_START.match(line))]
    rows = []
    for i, (began, stage) in enumerate(starts):
        until = starts[i + 1][0] if i + 1 < len(starts) else end
        own = [float(m.group(2)) for t, line in events if began <= t < until and (m := STAGE_DONE.search(line))]
        rows.append(StageTime(stage, round(until - began, 1), own[-1] if own else None))
    return rows


def scratch_tree(repo: Path, ref: str, dest: Path) -> None:
    """The committed files of `ref` in `dest` (no outputs, caches or stores), a fresh git repository as DVC needs."""
    archive = subprocess.run(["git", "-C", str(repo), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def child_env(bin_dir: Path, isa: str | None) -> dict[str, str]:
    """The caller's environment with the venv first on PATH, without settings that would point the run at the
    caller's stores, and with oneDNN capped at `isa` when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED_ENV) and k != "ONEDNN_MAX_CPU_ISA"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(PYTHONUNBUFFERED="1", GX_ANALYTICS_ENABLED="False", MLFLOW_ENABLE_TELEMETRY="false", DO_NOT_TRACK="1")
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    return env


def run_timed(command: list[str], cwd: Path, env: dict[str, str], began: float,
              on_line: Callable[[str], None]) -> tuple[list[tuple[float, str]], int]:
    """Run `command`, stamping each output line (stdout and stderr) with the seconds since `began`."""
    events = []
    with subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as process:
        for line in process.stdout:
            events.append((time.monotonic() - began, line.rstrip("\n")))
            on_line(line.rstrip("\n"))
    return events, process.returncode


def outcome(tree: Path) -> dict:
    """What the run produced: each candidate's fitting seconds and best epoch, and the gate's verdict."""
    fits = {}
    for run_file in sorted((tree / "models").glob("*/run.json")):
        record = json.loads(run_file.read_text())
        fits[record["candidate"]] = {"fit_s": record["training_seconds"], "best_epoch": record["best_epoch"]}
    verdict_file = tree / "reports" / "evaluate" / "verdict.json"
    verdict = json.loads(verdict_file.read_text()) if verdict_file.is_file() else {}
    gate = {name: {"passed": c.get("passed"), "gate_metric": round(c.get("gate_metric", 0.0), 3)}
            for name, c in verdict.get("candidates", {}).items()}
    return {"fits": fits, "gate": gate, "winner": verdict.get("winner")}


def progress_line(line: str) -> None:
    """Echo what says where the run is: stage starts, their ends, failures."""
    if STAGE_START.match(line) or STAGE_DONE.search(line) or "ERROR" in line or "failed" in line:
        print(line, file=sys.stderr, flush=True)


def timed_run(tree: Path, env: dict[str, str], bin_dir: Path) -> dict:
    """`make run`'s two commands in `tree`, with the venv's `bin_dir`: the stages' times, the total, failures."""
    began = time.monotonic()
    events, repro_rc = run_timed([str(bin_dir / "dvc"), "repro"], tree, env, began, progress_line)
    repro_end = time.monotonic() - began
    summary_events, summary_rc = run_timed([str(bin_dir / "python"), "-m", "components"], tree, env, began,
                                           lambda _: None)
    total = time.monotonic() - began
    rows = [*stage_times(events, repro_end), StageTime(SUMMARY, round(total - repro_end, 1), None)]
    failed = repro_rc != 0 or summary_rc != 0
    return {"stages": [asdict(r) for r in rows], "total_s": round(total, 1), "failed": failed,
            "tail": [line for _, line in (events + summary_events)[-30:]] if failed else []}


def report_table(result: dict) -> str:
    """The stages, the total and the fits as a markdown table, for BENCHMARKS.md."""
    rows = [(s["stage"], s["wall_s"], "-" if s["own_s"] is None else s["own_s"]) for s in result["stages"]]
    rows.append(("**total**", f"**{result['total_s']}**", ""))
    fits = "; ".join(f"{name}: fit {f['fit_s']:.0f} s, best epoch {f['best_epoch']}" for name, f in result["fits"].items())
    gate = "; ".join(f"{name} {g['gate_metric']} ({'passed' if g['passed'] else 'FAILED'})"
                     for name, g in result["gate"].items())
    return "\n".join([text_table(["stage", "wall (s)", "in the stage (s)"], rows), "",
                      f"{fits}. Gate: {gate or 'no verdict'}. Host: {result['host']}."])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Run it alone: a second heavy job on the cores doubles every figure.")
    parser.add_argument("--ref", default="HEAD", help="the commit to time (default HEAD: uncommitted edits are not in)")
    parser.add_argument("--isa", choices=ISAS, help="cap oneDNN's kernels at this instruction set (ONEDNN_MAX_CPU_ISA)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (its path is printed)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/run.json"))
    args = parser.parse_args(argv)
    repo = Path.cwd()
    if not (repo / "dvc.yaml").is_file():
        parser.error("run it from the repository root (where dvc.yaml is)")
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "dvc").is_file():
        parser.error(f"no dvc beside {sys.executable}: run it with the project's venv (make bench-run)")
    if args.isa:
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.isa  # host_line names the cap
    tree = Path(tempfile.mkdtemp(prefix="run-bench-"))
    try:
        scratch_tree(repo, args.ref, tree)
        print(f"timing `dvc repro` + summary of {args.ref} in {tree}; host: {host_line()}", file=sys.stderr)
        result = {"host": host_line(), "ref": args.ref, "date": datetime.now(UTC).isoformat(timespec="minutes"),
                  **timed_run(tree, child_env(bin_dir, args.isa), bin_dir), **outcome(tree)}
    except subprocess.CalledProcessError as exc:
        print(f"cannot extract {args.ref}: {exc.stderr.decode(errors='replace').strip()}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(tree, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(report_table(result))
    if result["failed"]:
        print("the run failed; its last lines:\n" + "\n".join(result["tail"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
