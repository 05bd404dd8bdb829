"""The Kubeflow pipeline executed on this machine by KFP's own local runner (`make kfp-local`).

`python -m pipelines.local --params FILE --workspace DIR` builds the pipeline of pipelines/kidney_ct.py from
dvc.yaml's stage graph, as the cluster form is built, with each step a *lightweight Python component*
(LocalSteps) instead of a container one: kfp.local's SubprocessRunner runs only lightweight components. Each
step runs the same entry point the container runs (`python -m components.<stage> --params FILE`, in the
workspace, as the pod does on its volume), with the same inputs, the same fingerprint and data-version
outputs and the same caching options; kfp.local orders the tasks, passes the outputs between them and keeps
its cache (`enable_caching`, under DIR/.kfp-local/cache): a second run with the same params and data is served
from the cache for every cached step, a params change reruns only the stages that read it.

Every step that executes appends a line to DIR/.kfp-local/steps.jsonl (step, exit code, seconds); the runner
prints the steps this run executed and those kfp.local served from its cache. docs/kubeflow.md lists what a
local run cannot show (volumes, ConfigMap/Secret env, GPUs, images) and the offline checks that cover it.
"""

# No `from __future__ import annotations`: KFP reads the component signature's real annotations.
import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from components.common.params import ParamsError, load_params
from components.common.stage_graph import PROJECT_ROOT, StageGraphError, load_stage_graph
from pipelines.kidney_ct import build_pipeline

JOURNAL = Path(".kfp-local") / "steps.jsonl"
LOCAL_IMAGE = "python:3.11"  # not pulled: the SubprocessRunner runs each step in this interpreter


def run_step(workspace: str, step: str, module: str, extra_args: list, output_flag: str, params_file: str,
             data_version: str, params_hash: str) -> str:
    """`python -m MODULE --params FILE [EXTRA_ARGS]` in `workspace`; returns what it wrote to OUTPUT_FLAG's file.

    `data_version` and `params_hash` are not read: they are inputs so that the cache key covers them.
    Self-contained (KFP ships this function's source to the step): the imports are inside.
    """
    import json
    import os
    import subprocess
    import sys
    import tempfile
    import time

    os.chdir(workspace)
    args = [sys.executable, "-m", module, "--params", params_file, *extra_args]
    out_path = ""
    if output_flag:
        handle, out_path = tempfile.mkstemp(prefix="kfp-step-", suffix=".txt")
        os.close(handle)
        args += [output_flag, out_path]
    started = time.time()
    code = subprocess.run(args, check=False).returncode
    journal = os.path.join(workspace, ".kfp-local", "steps.jsonl")
    os.makedirs(os.path.dirname(journal), exist_ok=True)
    with open(journal, "a") as handle:
        handle.write(json.dumps({"step": step, "exit_code": code, "seconds": round(time.time() - started, 2),
                                 "started": started}) + "\n")
    if code != 0:
        raise RuntimeError(f"step {step}: `python -m {module}` exited with {code}")
    if not out_path:
        return ""
    with open(out_path) as handle:
        text = handle.read().strip()
    os.unlink(out_path)
    return text


def step_component() -> Callable:
    from kfp import dsl

    return dsl.component(run_step, base_image=LOCAL_IMAGE, install_kfp_package=False)


class LocalSteps:
    """The local form: each step a lightweight Python component running its entry point in `workspace`."""

    def __init__(self, workspace: str | Path):
        self.workspace, self.component = str(Path(workspace).resolve()), step_component()

    def _run(self, step: str, module: str, params_file, extra=(), output_flag="", data_version="", params_hash=""):
        return self.component(workspace=self.workspace, step=step, module=module, extra_args=list(extra),
                              output_flag=output_flag, params_file=params_file, data_version=data_version,
                              params_hash=params_hash)

    def fingerprint(self, params_file, stage: str):
        task = self._run(f"fingerprint {stage}", "components.common.fingerprint", params_file, ["--stage", stage],
                         "--out")
        return task, task.output

    def ingest(self, params_file):
        task = self._run("ingest", "components.ingest", params_file, output_flag="--data-version-out")
        return task, task.output

    def plain(self, stage: str, params_file):
        return self._run(stage, f"components.{stage}", params_file)

    def stage(self, stage: str, params_file, data_version, params_hash, candidate: str | None = None):
        return self._run(f"train {candidate}" if candidate else stage, f"components.{stage}", params_file,
                         ["--candidate", candidate] if candidate else [], data_version=data_version,
                         params_hash=params_hash)

    def place(self, task, stage: str, cache: bool):
        task.set_caching_options(cache)
        return task


def read_journal(workspace: Path, since: float) -> list[dict]:
    """The steps executed (not served from the cache) since `since`, in order."""
    path = workspace / JOURNAL
    lines = path.read_text().splitlines() if path.is_file() else []
    return [entry for entry in map(json.loads, lines) if entry["started"] >= since]


def expected_steps(graph: dict, candidates: list[str]) -> list[str]:
    """Every stage step of the pipeline (fingerprints aside), train once per candidate."""
    return [name for stage in graph for name in ([f"train {c}" for c in candidates] if stage == "train" else [stage])]


def run_local(params_file: Path, workspace: Path, dvc_file: Path) -> tuple[bool, list[dict], list[str]]:
    """Run the pipeline under kfp.local in `workspace`: (succeeded, the steps executed, the stages served cached)."""
    from kfp import local

    params = load_params(params_file)
    graph, candidates = load_stage_graph(dvc_file, params_file), list(params.train.candidates)
    state = workspace / ".kfp-local"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(state / "root"),
               enable_caching=True, cache_root=str(state / "cache"), raise_on_error=True)
    pipeline = build_pipeline(LocalSteps(workspace), graph, candidates)
    # a step's display name is the cluster UI's; locally the journal names the steps
    warnings.filterwarnings("ignore", message=r".*\['display_name'\] have no effect in the current local runner")
    started = time.time()
    try:
        pipeline(params_file=os.path.relpath(params_file.resolve(), workspace.resolve()))
        succeeded = True
    except RuntimeError as exc:  # kfp.local names the failed task; the step's own output is above it
        print(f"kfp-local: {exc}", file=sys.stderr)
        succeeded = False
    executed = read_journal(workspace, started)
    ran = {entry["step"] for entry in executed}
    cached = [name for name in expected_steps(graph, candidates) if name not in ran] if succeeded else []
    return succeeded, executed, cached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Kubeflow pipeline locally with kfp.local's SubprocessRunner "
                                     "(lightweight Python steps in this environment, KFP's local cache on).")
    parser.add_argument("--params", required=True, help="the params file (inside the workspace, or any path)")
    parser.add_argument("--workspace", required=True, help="the folder the steps run in (the volume on a cluster)")
    parser.add_argument("--dvc", default=str(PROJECT_ROOT / "dvc.yaml"), help="the stage graph (default: the code's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workspace, params_file = Path(args.workspace), Path(args.params)
    if not workspace.is_dir() or not params_file.is_file():
        print(f"kfp-local: workspace {workspace} or params file {params_file} does not exist", file=sys.stderr)
        return 2
    try:
        succeeded, executed, cached = run_local(params_file, workspace, Path(args.dvc))
    except (ParamsError, StageGraphError, ValueError) as exc:
        print(f"kfp-local: {exc}", file=sys.stderr)
        return 2
    print("\nkfp-local: steps executed (seconds)")
    for entry in executed:
        print(f"  {entry['step']:<24} {entry['seconds']:>8.1f}  {'ok' if entry['exit_code'] == 0 else 'FAILED'}")
    print(f"kfp-local: served from KFP's local cache: {', '.join(cached) or 'none'}")
    print(f"kfp-local: {'succeeded' if succeeded else 'FAILED'}")
    return 0 if succeeded else 1


if __name__ == "__main__":
    raise SystemExit(main())
