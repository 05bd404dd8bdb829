"""A stage as a container on the cluster, one shape for Airflow's pods (dags/) and Kubeflow Pipelines (pipelines/).

Both orchestrators take their settings from `ClusterParams` (params.yaml `cluster`; Airflow reads the
same keys from env `KIDNEY_CT_KUBERNETES` when it parses the DAG, where no params file may be opened)
and run a stage's entry point as dvc.yaml's `cmd` does, `python -m components.<stage> --params FILE
[--candidate NAME]`, from the workspace volume: `sh -ec 'cd "$1" && shift && exec python -m "$@"'`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from components.common.params import ClusterParams, error_lines

PINNED = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")
CONTAINER_SCRIPT = 'cd "$1" && shift && exec python -m "$@"'  # $1: the workspace, then a module and its args
GPU_RESOURCE = "nvidia.com/gpu"


def cluster_settings(raw: Mapping[str, Any], where: str) -> ClusterParams:
    """`raw` (keys of ClusterParams) validated, images pinned by digest; a ValueError naming `where` if not."""
    try:
        cluster = ClusterParams.model_validate(dict(raw))
    except ValidationError as exc:
        raise ValueError(f"{where}: invalid cluster settings:\n{error_lines(exc)}") from None
    check_pinned(cluster, where)
    return cluster


def check_pinned(cluster: ClusterParams, where: str) -> None:
    """Refuse an image by tag: a tag can move under a run, and KFP's cache key would not follow the code."""
    for name in ("cpu_image", "gpu_image"):
        ref = getattr(cluster, name)
        if not PINNED.match(ref):
            raise ValueError(f"{where}: {name} {ref!r} is not pinned by digest (repo@sha256:<64 hex>)")


def stage_arguments(stage: str, params_file: Any = None, candidate: Any = None) -> list:
    """`python -m` arguments of a stage's entry point, as in dvc.yaml's `cmd` (no params file: params.yaml).

    `params_file` and `candidate` may be an orchestrator's placeholders (KFP inputs), kept as they are.
    """
    return [f"components.{stage}", *(["--params", params_file] if params_file is not None else []),
            *(["--candidate", candidate] if candidate is not None else [])]


@dataclass(frozen=True)
class StageContainer:
    """One stage's container: what each orchestrator turns into its own pod or task spec."""

    image: str
    command: tuple[str, ...]
    args: tuple  # the workspace, then the module and its arguments (strings or KFP placeholders)
    gpus: int
    requests: Mapping[str, str]  # cpu / memory; empty for a stage with no requests

    @property
    def limits(self) -> dict[str, str]:
        return {GPU_RESOURCE: str(self.gpus)} if self.gpus else {}


def stage_container(cluster: ClusterParams, stage: str, module_args: Sequence[Any]) -> StageContainer:
    """`module_args` (`python -m` arguments) run in the workspace in the stage's image; train gets the GPU."""
    train = stage == "train"
    return StageContainer(
        image=cluster.gpu_image if train else cluster.cpu_image,
        command=("sh", "-ec", CONTAINER_SCRIPT, stage), args=(cluster.workspace, *module_args),
        gpus=cluster.train_gpus if train else 0,
        requests={"cpu": cluster.train_cpu, "memory": cluster.train_memory} if train else {},
    )
