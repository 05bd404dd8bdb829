"""Run one dvc.yaml stage the tracked way, for an orchestrator (Airflow task, Kubernetes pod).

`python -m components.common.dvc_run STAGE [--params FILE] [--result FILE] [--message TEXT]`, in a
DVC repo (a git checkout of this project), does under one workspace lock:

1. copy `--params` over the repo's `params.yaml` when it differs (dvc.yaml reads its paths and
   params from there, so the lock records exactly what the run used);
2. `dvc repro --single-item STAGE`: DVC runs the stage's `cmd` (the same `python -m components.<stage>`
   as `dvc repro` and Kubeflow) only when its deps or params changed since dvc.lock, else skips it;
3. `dvc push STAGE` to the default remote (content-addressed: a retry uploads nothing twice);
4. `git commit dvc.lock params.yaml` on the checked-out branch when they changed.

`python -m components.common.dvc_run --status [--params FILE] [--result FILE]` is the cheap check an
orchestrator makes before a run (one DVC start instead of one per stage): after the same params sync, the
stages `dvc status` finds changed; when none is, every cached output is pushed to the remote (so the remote
stays complete) and, with `--skip-exit-code N`, it exits N (Airflow then skips the whole run).

A retry after a crash at any step is safe: a stage whose lock entry was written is not rerun,
push and commit are no-ops the second time. Exit codes: 0 done (ran or unchanged, see --result),
2 the stage refused its input (exit 2 of the stage) or the repo is not usable, 1 anything else;
with `--skip-exit-code N`, N when the stage was unchanged (Airflow then marks the task skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("kidney_ct.dvc_run")
LOCK_FILE = ".dvc/tmp/kidney-ct-orchestrator.lock"
TRACKED = ("dvc.lock", "params.yaml")
COMMITTER = ("-c", "user.name=kidney-ct-retraining", "-c", "user.email=retraining@kidney-ct.invalid")


class RunRefused(Exception):
    """The stage (exit code 2) or the repo refused: rerunning gives the same answer."""


@dataclass
class StageRun:
    """What one call did: whether DVC ran the stage, what it pushed, which commit records it."""

    stage: str
    ran: bool
    pushed: int | None  # files uploaded; None = no DVC remote configured
    commit: str | None  # the commit holding the new dvc.lock, None when it did not change
    params_changed: bool


@contextlib.contextmanager
def workspace_lock(root: Path) -> Iterator[None]:
    """One orchestrated DVC command at a time per repo (DVC's own lock fails instead of waiting)."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sync_params(root: Path, params_file: Path | None) -> bool:
    """Copy `params_file` over root/params.yaml when the contents differ; True when it did."""
    target = root / "params.yaml"
    if params_file is None or params_file.absolute() == target.absolute():
        return False
    if not params_file.is_file():
        raise RunRefused(f"params file {params_file} does not exist")
    text = params_file.read_text()
    if target.is_file() and target.read_text() == text:
        return False
    target.write_text(text)
    return True


def _stage_exit_code(exc: BaseException) -> int | None:
    """The stage command's exit code from DVC's error chain ('... exited with 2'), if any."""
    while exc is not None:
        found = re.search(r"exited with (-?\d+)", str(exc))
        if found:
            return int(found.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def reproduce(repo, stage: str) -> bool:
    """`dvc repro --single-item STAGE`; True when DVC ran it, False when unchanged since dvc.lock."""
    from dvc.exceptions import ReproductionError

    try:
        return bool(repo.reproduce(targets=[stage], single_item=True))
    except ReproductionError as exc:
        code = _stage_exit_code(exc)
        detail = f"stage {stage} failed under dvc repro (exit code {code}): {exc.__cause__ or exc}"
        if code == 2:
            raise RunRefused(detail) from None
        raise RuntimeError(detail) from None


def push(repo, stage: str) -> int | None:
    """`dvc push STAGE` to the default remote; None (with a warning) when no remote is configured."""
    from dvc.config import NoRemoteError

    try:
        return int(repo.push(targets=[stage]))
    except NoRemoteError:
        log.warning("no default DVC remote configured: %s outputs stay in the local cache only", stage)
        return None


def git_commit(root: Path, message: str) -> str | None:
    """Commit dvc.lock/params.yaml when they changed; the new commit's sha, else None."""
    present = [name for name in TRACKED if (root / name).exists()]
    subprocess.run(["git", "add", "--", *present], cwd=root, check=True)
    staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *present], cwd=root)
    if staged.returncode == 0:
        return None
    subprocess.run(["git", *COMMITTER, "commit", "-q", "-m", message, "--", *present], cwd=root, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


def run(root: Path, stage: str, params_file: Path | None, message: str) -> StageRun:
    """Sync params, reproduce, push and commit one stage, holding the workspace lock."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    if not (root / ".dvc").is_dir():
        raise RunRefused(f"{root} is not a DVC repo (run `git init && dvc init` there)")
    if not (root / ".git").exists():
        raise RunRefused(f"{root} is not a git checkout: the run's dvc.lock could not be committed")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with workspace_lock(root):
        changed = sync_params(root, params_file)
        try:
            repo = Repo(str(root))
        except NotDvcRepoError as exc:
            raise RunRefused(f"{root} is not a DVC repo: {exc}") from None
        with repo:
            ran = reproduce(repo, stage)
            pushed = push(repo, stage)
        commit = git_commit(root, f"{message}: {stage}" if ran else f"{message}: params.yaml ({stage} unchanged)")
    return StageRun(stage=stage, ran=ran, pushed=pushed, commit=commit, params_changed=changed)


@dataclass
class StatusCheck:
    """What `--status` found: the stages DVC would rerun (empty: nothing to do) and what it pushed then."""

    changed: list[str]
    pushed: int | None
    params_changed: bool


def changed_stages(repo) -> list[str]:
    """The stages `dvc status` reports (changed deps, params, outs or command), by name (`train@x` as DVC names it)."""
    return sorted({name.split(":")[-1] for name in repo.status()})


def check(root: Path, params_file: Path | None) -> StatusCheck:
    """Sync params, then `dvc status` once; when nothing changed, push every cached output (a no-op run's work)."""
    from dvc.config import NoRemoteError
    from dvc.repo import Repo

    if not (root / ".dvc").is_dir():
        raise RunRefused(f"{root} is not a DVC repo (run `git init && dvc init` there)")
    with workspace_lock(root):
        changed_params = sync_params(root, params_file)
        with Repo(str(root)) as repo:
            changed = changed_stages(repo)
            pushed = None
            if not changed:
                try:
                    pushed = int(repo.push())
                except NoRemoteError:
                    log.warning("no default DVC remote configured: outputs stay in the local cache only")
    return StatusCheck(changed=changed, pushed=pushed, params_changed=changed_params)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [dvc_run] %(message)s", datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", nargs="?", help="a dvc.yaml stage, e.g. ingest or train@paper_cnn")
    parser.add_argument("--status", action="store_true", help="instead: which stages would rerun (dvc status, once)")
    parser.add_argument("--params", type=Path, default=None, help="params file to run with (default: params.yaml)")
    parser.add_argument("--result", type=Path, default=None, help="write what happened here as JSON")
    parser.add_argument("--message", default="dvc_run", help="commit message prefix (e.g. the DAG run id)")
    parser.add_argument("--skip-exit-code", type=int, default=0,
                        help="exit with this code when the stage was unchanged (an orchestrator marks it skipped)")
    args = parser.parse_args(argv)
    if bool(args.stage) == args.status:
        parser.error("name a STAGE, or --status")
    if args.status:
        return main_status(args)
    try:
        result = run(Path.cwd(), args.stage, args.params, args.message)
    except RunRefused as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # noqa: BLE001 - a plain reason for the task log; the orchestrator retries
        log.error("stage %s: %s: %s", args.stage, type(exc).__name__, exc)
        return 1
    verdict = "ran" if result.ran else "unchanged since dvc.lock: skipped"
    log.info("stage %s %s; pushed %s file(s); commit %s", result.stage, verdict,
             "no remote" if result.pushed is None else result.pushed, result.commit or "none (lock unchanged)")
    if args.result is not None:
        args.result.write_text(json.dumps(asdict(result)))
    return 0 if result.ran else args.skip_exit_code


def main_status(args: argparse.Namespace) -> int:
    """`--status`: 0 with the changed stages listed, or the skip exit code when none changed."""
    try:
        found = check(Path.cwd(), args.params)
    except RunRefused as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # noqa: BLE001 - a plain reason for the task log; the orchestrator retries
        log.error("status check: %s: %s", type(exc).__name__, exc)
        return 1
    if args.result is not None:
        args.result.write_text(json.dumps(asdict(found)))
    if found.changed:
        log.info("changed since dvc.lock: %s", ", ".join(found.changed))
        return 0
    log.info("every stage is up to date with dvc.lock; pushed %s file(s)",
             "no remote" if found.pushed is None else found.pushed)
    return args.skip_exit_code


if __name__ == "__main__":
    sys.exit(main())
