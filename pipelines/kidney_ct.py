"""The stage graph of dvc.yaml as a Kubeflow Pipelines v2 pipeline of container components.

The steps and their order come from dvc.yaml's stage graph (read when compiling), so a stage added
there appears here. Each step runs the same entry point as `dvc repro` and the Airflow DAG (`python -m
components.<stage> --params FILE`) in the stage's image, with its working directory on a shared
PersistentVolumeClaim (`/workspace`, holding the params file and every `paths.*` output that is not
in object storage). Object storage, MLflow and PACS settings come from a ConfigMap and a Secret.

Caching on content: KFP's cache key is a step's container spec (image, command, args) plus its
input values. The pipeline computes its own inputs, nothing is left to the caller: the first step
`fingerprint` (never cached) writes the params file's digest, `ingest` (never cached: new studies
may have landed) writes the data version (sha256 of manifest.csv), and every step that derives from
the data takes both as inputs. Images are referenced by digest (`repo@sha256:..`, from the build
manifest the image build writes, `--images`), so new code is a new image digest is a new key. A
change of code, params or data therefore never reuses a stale step. `register` and `package` are
not cached: they talk to the registry, and they are idempotent. `train` runs one task per candidate
in the GPU image with an `nvidia.com/gpu` request.

Compile (offline): `python -m pipelines.kidney_ct --params params.yaml --images build/images.json
--out kidney_ct_pipeline.yaml`, then upload the YAML in the KFP UI or with
`kfp.Client().create_run_from_pipeline_package(...)`. The manifest is JSON
`{"cpu": "<repo>@sha256:<64 hex>", "gpu": "<repo>@sha256:<64 hex>"}` (docs/kubeflow.md).
"""

# No `from __future__ import annotations`: KFP reads the component signatures' real annotations.
import argparse
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components.common.fingerprint import params_digest
from components.common.stage_graph import ancestors, load_stage_graph

WORKSPACE = "/workspace"
STAGE_SCRIPT = 'cd "$1" && shift && exec python -m "$@"'  # $1: workspace, then module and its args
INGEST_SCRIPT = ('cd "$1" && python -m components.ingest --params "$2" --data-version-out "$3"')
FINGERPRINT_SCRIPT = 'cd "$1" && python -m components.common.fingerprint --params "$2" --out "$3"'
PINNED = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ClusterSettings:
    """Where the images, the shared volume and the service settings live on the cluster."""

    cpu_image: str = ""  # repo@sha256:digest, from the build manifest
    gpu_image: str = ""
    workspace_pvc: str = "kidney-ct-workspace"
    config_map: str = "kidney-ct-config"  # MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL
    secret: str = "kidney-ct-secrets"  # AWS keys, salt, PACS password
    candidates: Sequence[str] = field(default_factory=lambda: ("paper_cnn",))
    train_gpus: int = 1
    config_keys: tuple[str, ...] = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL")
    secret_keys: tuple[str, ...] = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KIDNEY_CT_SALT",
                                    "KIDNEY_CT_DICOMWEB_PASSWORD")


params_hash = params_digest  # what the `fingerprint` step computes, for a look from the outside


def load_image_manifest(path: str | Path) -> dict[str, str]:
    """{"cpu": ref, "gpu": ref} from the build manifest; every ref must be pinned by digest."""
    try:
        images = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"image build manifest {path} is not readable JSON: {exc}") from None
    missing = {"cpu", "gpu"} - set(images)
    if missing:
        raise ValueError(f"image build manifest {path} lacks {sorted(missing)}")
    return {key: str(images[key]) for key in ("cpu", "gpu")}


def check_pinned(settings: ClusterSettings) -> None:
    """Refuse an image referenced by tag: a tag can move, so KFP's cache key would not follow the code."""
    for name in ("cpu_image", "gpu_image"):
        ref = getattr(settings, name)
        if not PINNED.match(ref):
            raise ValueError(f"{name} {ref!r} is not pinned by digest (repo@sha256:<64 hex>): pass --images "
                             "with the manifest the image build wrote")


def candidate_names(params_file: str | Path) -> list[str]:
    raw = yaml.safe_load(Path(params_file).read_text()) or {}
    return list((raw.get("train") or {}).get("candidates") or {})


def stage_component(stage: str, image: str, extra_args: Sequence[str] = ()) -> Callable:
    """A container component running `python -m components.<stage> --params FILE [extra]` in /workspace.

    `data_version` and `params_hash` are not read by the stage: they are inputs so that KFP's cache
    key covers them.
    """
    from kfp import dsl

    def component(params_file: str, data_version: str, params_hash: str):
        return dsl.ContainerSpec(image=image, command=["sh", "-ec", STAGE_SCRIPT, stage],
                                 args=[WORKSPACE, f"components.{stage}", "--params", params_file, *extra_args])

    component.__name__ = component.__qualname__ = stage.replace("-", "_")
    return dsl.container_component(component)


def plain_component(stage: str, image: str) -> Callable:
    """A container component for a stage that takes no cache-key inputs (generate)."""
    from kfp import dsl

    def component(params_file: str):
        return dsl.ContainerSpec(image=image, command=["sh", "-ec", STAGE_SCRIPT, stage],
                                 args=[WORKSPACE, f"components.{stage}", "--params", params_file])

    component.__name__ = component.__qualname__ = stage
    return dsl.container_component(component)


def fingerprint_component(image: str) -> Callable:
    """The params digest of the run's params file, computed in the workspace (an input of cached steps)."""
    from kfp import dsl

    def fingerprint(params_file: str, params_digest: dsl.OutputPath(str)):
        return dsl.ContainerSpec(image=image, command=["sh", "-ec", FINGERPRINT_SCRIPT, "fingerprint"],
                                 args=[WORKSPACE, params_file, params_digest])

    return dsl.container_component(fingerprint)


def ingest_component(image: str) -> Callable:
    """`ingest`, which also writes the data version (sha256 of manifest.csv) as its output."""
    from kfp import dsl

    def ingest(params_file: str, data_version: dsl.OutputPath(str)):
        return dsl.ContainerSpec(image=image, command=["sh", "-ec", INGEST_SCRIPT, "ingest"],
                                 args=[WORKSPACE, params_file, data_version])

    return dsl.container_component(ingest)


def _on_cluster(task, settings: ClusterSettings, cache: bool):
    """Shared volume, config and secrets for one task, and whether KFP may reuse its cached result."""
    from kfp import kubernetes

    kubernetes.mount_pvc(task, pvc_name=settings.workspace_pvc, mount_path=WORKSPACE)
    kubernetes.use_config_map_as_env(task, settings.config_map, {key: key for key in settings.config_keys},
                                     optional=True)
    kubernetes.use_secret_as_env(task, settings.secret, {key: key for key in settings.secret_keys}, optional=True)
    task.set_caching_options(cache)
    return task


NO_DATA = "independent-of-the-data"  # the data_version of a stage that reads no data (the backbone conversion)
UNCACHED = frozenset({"generate", "ingest", "register", "package"})  # new data / registry side effects


def topological(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Stages so that each comes after all of its upstream stages (ties by name)."""
    before = ancestors(graph)
    return sorted(graph, key=lambda stage: (len(before[stage]), stage))


def build_pipeline(settings: ClusterSettings, graph: Mapping[str, Iterable[str]]) -> Callable:
    """The pipeline function for dvc.yaml's stage `graph` (stage -> upstream stages); train per candidate."""
    from kfp import dsl

    order, before = topological(graph), ancestors(graph)
    if "ingest" not in graph:
        raise ValueError("the stage graph has no `ingest` stage: nothing would define the data version")

    @dsl.pipeline(name="kidney-ct-retraining", description="The stages of dvc.yaml on Kubeflow Pipelines")
    def kidney_ct_retraining(params_file: str = "params.yaml"):
        fingerprint = fingerprint_component(settings.cpu_image)(params_file=params_file)
        fingerprint.set_display_name("fingerprint")
        _on_cluster(fingerprint, settings, cache=False)
        params_hash = fingerprint.outputs["params_digest"]
        tasks: dict[str, list] = {}
        version = None
        for stage in order:
            after = [task for upstream in graph[stage] for task in tasks[upstream]]
            if stage == "ingest":
                made = [ingest_component(settings.cpu_image)(params_file=params_file)]
                version = made[0].outputs["data_version"]
            elif stage in before["ingest"]:  # upstream of the data (generate): no data version yet
                made = [plain_component(stage, settings.cpu_image)(params_file=params_file)]
            elif "ingest" not in before[stage]:  # independent of the data (backbone): keyed on the params only
                made = [stage_component(stage, settings.cpu_image)(params_file=params_file, data_version=NO_DATA,
                                                                   params_hash=params_hash)]
            elif stage == "train":
                made = [_train_task(settings, name, params_file, version, params_hash)
                        for name in settings.candidates]
            else:
                made = [stage_component(stage, settings.cpu_image)(params_file=params_file, data_version=version,
                                                                   params_hash=params_hash)]
            for task in made:
                if stage != "train":
                    task.set_display_name(stage)
                _on_cluster(task.after(*after) if after else task, settings, stage not in UNCACHED)
            tasks[stage] = made

    return kidney_ct_retraining


def _train_task(settings: ClusterSettings, name: str, params_file, version, params_hash):
    """One candidate's training step, in the GPU image with an nvidia.com/gpu request."""
    task = stage_component("train", settings.gpu_image, ["--candidate", name])(
        params_file=params_file, data_version=version, params_hash=params_hash)
    task.set_display_name(f"train {name}")
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(settings.train_gpus)
    return task.set_memory_request("8G").set_cpu_request("2")


def compile_pipeline(settings: ClusterSettings, out: str | Path, graph: Mapping[str, Iterable[str]]) -> Path:
    """Compile the pipeline to a KFP v2 YAML package (offline)."""
    from kfp import compiler

    check_pinned(settings)
    compiler.Compiler().compile(build_pipeline(settings, graph), str(out))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the kidney CT pipeline for Kubeflow Pipelines v2.")
    parser.add_argument("--params", default="params.yaml", help="params file: candidates and cache hash")
    parser.add_argument("--dvc", default="dvc.yaml", help="the stage graph to mirror")
    parser.add_argument("--out", default="kidney_ct_pipeline.yaml")
    parser.add_argument("--images", default="build/images.json",
                        help='build manifest: {"cpu": "repo@sha256:..", "gpu": "repo@sha256:.."}')
    parser.add_argument("--print-params-hash", action="store_true", help="print the params digest and exit")
    args = parser.parse_args(argv)
    if args.print_params_hash:
        print(params_hash(args.params))
        return 0
    try:
        images = load_image_manifest(args.images)
        settings = ClusterSettings(cpu_image=images["cpu"], gpu_image=images["gpu"],
                                   candidates=tuple(candidate_names(args.params)))
        path = compile_pipeline(settings, args.out, load_stage_graph(args.dvc, args.params))
    except ValueError as exc:
        print(f"compile failed: {exc}")
        return 2
    print(f"compiled {len(settings.candidates)} candidate(s) into {path} (images {images['cpu']}, {images['gpu']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
