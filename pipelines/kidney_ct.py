"""The stage graph of dvc.yaml as a Kubeflow Pipelines v2 pipeline of container components.

Each step runs the same entry point as `dvc repro` and the Airflow DAG (`python -m
components.<stage> --params FILE`) in the stage's image, with its working directory on a shared
PersistentVolumeClaim (`/workspace`, holding the params file and every `paths.*` output that is not
in object storage). Object storage, MLflow and PACS settings come from a ConfigMap and a Secret.

Caching: `ingest` always runs (new studies may have landed) and outputs the data version (sha256
of manifest.csv); every step that derives from the data takes that version and the params file's
hash as inputs, so KFP's cache key (component + inputs) changes exactly when data or params change.
`register` and `package` are not cached: they talk to the registry, and they are idempotent.
`train` runs one task per candidate in the GPU image with an `nvidia.com/gpu` request.

Compile (offline): `python -m pipelines.kidney_ct --params params.yaml --out kidney_ct_pipeline.yaml`,
then upload the YAML in the KFP UI or with `kfp.Client().create_run_from_pipeline_package(...)`,
passing `params_hash` from `python -m pipelines.kidney_ct --print-params-hash`.
"""

# No `from __future__ import annotations`: KFP reads the component signatures' real annotations.
import argparse
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import yaml

WORKSPACE = "/workspace"
STAGE_SCRIPT = 'cd "$1" && shift && exec python -m "$@"'  # $1: workspace, then module and its args
INGEST_SCRIPT = ('cd "$1" && python -m components.ingest --params "$2" --data-version-out "$3"')


@dataclass(frozen=True)
class ClusterSettings:
    """Where the images, the shared volume and the service settings live on the cluster."""

    cpu_image: str = "ghcr.io/example/kidney-ct-cpu:latest"
    gpu_image: str = "ghcr.io/example/kidney-ct-gpu:latest"
    workspace_pvc: str = "kidney-ct-workspace"
    config_map: str = "kidney-ct-config"  # MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL
    secret: str = "kidney-ct-secrets"  # AWS keys, salt, PACS password
    candidates: Sequence[str] = field(default_factory=lambda: ("paper_cnn",))
    train_gpus: int = 1
    config_keys: tuple[str, ...] = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL")
    secret_keys: tuple[str, ...] = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KIDNEY_CT_SALT",
                                    "KIDNEY_CT_DICOMWEB_PASSWORD")


def params_hash(params_file: str | Path) -> str:
    """sha256 of the params file's canonical YAML (formatting and comments do not count)."""
    raw = yaml.safe_load(Path(params_file).read_text()) or {}
    return hashlib.sha256(yaml.safe_dump(raw, sort_keys=True).encode()).hexdigest()


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


def build_pipeline(settings: ClusterSettings) -> Callable:
    """The pipeline function for `settings` (one train task per candidate)."""
    from kfp import dsl

    cpu, gpu = settings.cpu_image, settings.gpu_image
    generate = plain_component("generate", cpu)
    ingest = ingest_component(cpu)
    keyed = {stage: stage_component(stage, cpu) for stage in ("validate", "preprocess", "augment", "evaluate",
                                                              "register", "package")}
    trainers = {name: stage_component("train", gpu, ["--candidate", name]) for name in settings.candidates}

    @dsl.pipeline(name="kidney-ct-retraining",
                  description="generate -> ingest -> validate -> preprocess -> augment -> train -> evaluate -> "
                              "register -> package, as in dvc.yaml")
    def kidney_ct_retraining(params_file: str = "params.yaml", params_hash: str = ""):
        generated = _on_cluster(generate(params_file=params_file).set_display_name("generate"), settings, False)
        pulled = _on_cluster(ingest(params_file=params_file).after(generated), settings, False)
        version = pulled.outputs["data_version"]

        def step(stage: str, after, cache: bool = True):
            task = keyed[stage](params_file=params_file, data_version=version, params_hash=params_hash)
            return _on_cluster(task.set_display_name(stage).after(*after), settings, cache)

        prepared = step("augment", [step("preprocess", [step("validate", [pulled])])])
        trained = []
        for name, trainer in trainers.items():
            task = trainer(params_file=params_file, data_version=version, params_hash=params_hash)
            task.set_display_name(f"train {name}").after(prepared)
            task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(settings.train_gpus)
            task.set_memory_request("8G").set_cpu_request("2")
            trained.append(_on_cluster(task, settings, True))
        step("package", [step("register", [step("evaluate", trained)], cache=False)], cache=False)

    return kidney_ct_retraining


def compile_pipeline(settings: ClusterSettings, out: str | Path) -> Path:
    """Compile the pipeline to a KFP v2 YAML package (offline)."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(settings), str(out))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the kidney CT pipeline for Kubeflow Pipelines v2.")
    parser.add_argument("--params", default="params.yaml", help="params file: candidates and cache hash")
    parser.add_argument("--out", default="kidney_ct_pipeline.yaml")
    parser.add_argument("--cpu-image", default=ClusterSettings.cpu_image)
    parser.add_argument("--gpu-image", default=ClusterSettings.gpu_image)
    parser.add_argument("--print-params-hash", action="store_true", help="print the params hash and exit")
    args = parser.parse_args(argv)
    if args.print_params_hash:
        print(params_hash(args.params))
        return 0
    settings = ClusterSettings(cpu_image=args.cpu_image, gpu_image=args.gpu_image,
                               candidates=tuple(candidate_names(args.params)))
    path = compile_pipeline(settings, args.out)
    print(f"compiled {len(settings.candidates)} candidate(s) into {path}; run it with params_hash="
          f"{params_hash(args.params)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
