"""The stage graph of dvc.yaml as a Kubeflow Pipelines v2 pipeline of container components.

The steps and their order come from dvc.yaml's stage graph (read when compiling), so a stage added
there appears here. Each step runs the same entry point as `dvc repro` and the Airflow DAG (`python -m
components.<stage> --params FILE`) in the stage's image, with its working directory on a shared
PersistentVolumeClaim (`/workspace`, holding the params file and every `paths.*` output that is not
in object storage). Object storage, MLflow and PACS settings come from a ConfigMap and a Secret. The
volume, ConfigMap, Secret and train's GPUs and requests are params.yaml's `cluster` (ClusterParams, the
type Airflow's pods use too); the container of a stage is `components.common.cluster.stage_container`.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from components.common.cluster import GPU_RESOURCE, check_pinned, cluster_settings, stage_arguments, stage_container
from components.common.fingerprint import params_digest
from components.common.params import ClusterParams, ParamsError, load_params
from components.common.stage_graph import ancestors, load_stage_graph, topological

params_hash = params_digest  # what the `fingerprint` step computes, for a look from the outside


def load_image_manifest(path: str | Path) -> dict[str, str]:
    """{"cpu": ref, "gpu": ref} from the build manifest (each ref is checked to be pinned by digest later)."""
    try:
        images = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"image build manifest {path} is not readable JSON: {exc}") from None
    missing = {"cpu", "gpu"} - set(images)
    if missing:
        raise ValueError(f"image build manifest {path} lacks {sorted(missing)}")
    return {key: str(images[key]) for key in ("cpu", "gpu")}


def _container_spec(cluster: ClusterParams, stage: str, module_args: Sequence):
    """The KFP ContainerSpec of `module_args` run as `stage` (components.common.cluster: Airflow's pods run the same)."""
    from kfp import dsl

    container = stage_container(cluster, stage, module_args)
    return dsl.ContainerSpec(image=container.image, command=list(container.command), args=list(container.args))


def stage_component(cluster: ClusterParams, stage: str, candidate: str | None = None) -> Callable:
    """A container component running the stage's entry point (`python -m components.<stage> --params FILE`).

    `data_version` and `params_hash` are not read by the stage: they are inputs so that KFP's cache
    key covers them.
    """
    from kfp import dsl

    def component(params_file: str, data_version: str, params_hash: str):
        return _container_spec(cluster, stage, stage_arguments(stage, params_file, candidate))

    component.__name__ = component.__qualname__ = stage.replace("-", "_")
    return dsl.container_component(component)


def plain_component(cluster: ClusterParams, stage: str) -> Callable:
    """A container component for a stage that takes no cache-key inputs (generate)."""
    from kfp import dsl

    def component(params_file: str):
        return _container_spec(cluster, stage, stage_arguments(stage, params_file))

    component.__name__ = component.__qualname__ = stage
    return dsl.container_component(component)


def fingerprint_component(cluster: ClusterParams) -> Callable:
    """The digest of the params one stage and its upstream stages read, computed in the workspace."""
    from kfp import dsl

    def fingerprint(params_file: str, stage: str, params_digest: dsl.OutputPath(str)):
        return _container_spec(cluster, "fingerprint", ["components.common.fingerprint", "--params", params_file,
                                                        "--stage", stage, "--out", params_digest])

    return dsl.container_component(fingerprint)


def ingest_component(cluster: ClusterParams) -> Callable:
    """`ingest`, which also writes the data version (sha256 of manifest.csv) as its output."""
    from kfp import dsl

    def ingest(params_file: str, data_version: dsl.OutputPath(str)):
        return _container_spec(cluster, "ingest",
                               [*stage_arguments("ingest", params_file), "--data-version-out", data_version])

    return dsl.container_component(ingest)


class ClusterSteps:
    """The cluster form: each step a container component in its stage's image (pinned by digest) on the shared
    volume, with the ConfigMap and Secret as env; train gets its GPUs and requests."""

    def __init__(self, cluster: ClusterParams):
        self.cluster = cluster
        self._fingerprint, self._ingest = fingerprint_component(cluster), ingest_component(cluster)

    def fingerprint(self, params_file, stage: str):
        task = self._fingerprint(params_file=params_file, stage=stage)
        return task, task.outputs["params_digest"]

    def ingest(self, params_file):
        task = self._ingest(params_file=params_file)
        return task, task.outputs["data_version"]

    def plain(self, stage: str, params_file):
        return plain_component(self.cluster, stage)(params_file=params_file)

    def stage(self, stage: str, params_file, data_version, params_hash, candidate: str | None = None):
        return stage_component(self.cluster, stage, candidate)(params_file=params_file, data_version=data_version,
                                                               params_hash=params_hash)

    def place(self, task, stage: str, cache: bool):
        """Shared volume, config and secrets for one task, train's resources, and whether KFP may reuse it."""
        from kfp import kubernetes

        cluster = self.cluster
        kubernetes.mount_pvc(task, pvc_name=cluster.workspace_pvc, mount_path=cluster.workspace)
        kubernetes.use_config_map_as_env(task, cluster.config_map, {key: key for key in cluster.config_keys},
                                         optional=True)
        kubernetes.use_secret_as_env(task, cluster.secret, {key: key for key in cluster.secret_keys}, optional=True)
        if stage == "train":
            _train_resources(task, stage_container(cluster, "train", ()))
        task.set_caching_options(cache)
        return task


def _train_resources(task, container) -> None:
    """One candidate's training step: its GPUs and requests (components.common.cluster)."""
    if container.gpus:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(container.gpus)
    if "memory" in container.requests:
        task.set_memory_request(container.requests["memory"])
    if "cpu" in container.requests:
        task.set_cpu_request(container.requests["cpu"])


NO_DATA = "independent-of-the-data"  # the data_version of a stage that reads no data (the backbone conversion)
UNCACHED = frozenset({"generate", "ingest", "register", "package"})  # new data / registry side effects
NOT_KEYED = "not-cached"  # the params_hash of an uncached step: no fingerprint is computed for it


def build_pipeline(steps, graph: Mapping[str, Iterable[str]], candidates: Sequence[str]) -> Callable:
    """The pipeline function for dvc.yaml's stage `graph` (stage -> upstream stages), train per candidate.

    `steps` makes each task (ClusterSteps: containers; pipelines.local.LocalSteps: lightweight Python
    components for kfp.local): one graph, two forms. Each cached stage's key is its own params digest
    (a `fingerprint` step: what it and its upstream stages read) and the data version ingest computed.
    """
    from kfp import dsl

    order, before = topological(graph), ancestors(graph)
    if "ingest" not in graph:
        raise ValueError("the stage graph has no `ingest` stage: nothing would define the data version")

    @dsl.pipeline(name="kidney-ct-retraining", description="The stages of dvc.yaml on Kubeflow Pipelines")
    def kidney_ct_retraining(params_file: str = "params.yaml"):
        tasks: dict[str, list] = {}
        version = None
        for stage in order:
            after = [task for upstream in graph[stage] for task in tasks[upstream]]
            if stage == "ingest":
                task, version = steps.ingest(params_file)
                made = [task]
            elif stage in before["ingest"]:  # upstream of the data (generate): no data version yet
                made = [steps.plain(stage, params_file)]
            else:  # a stage independent of the data (backbone) is keyed on its params only
                digest = NOT_KEYED
                if stage not in UNCACHED:
                    fingerprint, digest = steps.fingerprint(params_file, stage)
                    fingerprint.set_display_name(f"fingerprint {stage}")
                    steps.place(fingerprint, "fingerprint", cache=False)
                data = version if "ingest" in before[stage] else NO_DATA
                names = candidates if stage == "train" else [None]
                made = [steps.stage(stage, params_file, data, digest, name) for name in names]
            for task, name in zip(made, candidates if stage == "train" else [None], strict=False):
                task.set_display_name(f"train {name}" if name else stage)
                steps.place(task.after(*after) if after else task, stage, stage not in UNCACHED)
            tasks[stage] = made

    return kidney_ct_retraining


def compile_pipeline(cluster: ClusterParams, out: str | Path, graph: Mapping[str, Iterable[str]],
                     candidates: Sequence[str]) -> Path:
    """Compile the pipeline to a KFP v2 YAML package (offline); images must be pinned by digest."""
    from kfp import compiler

    check_pinned(cluster, "kubeflow pipeline (pass --images with the manifest the image build wrote)")
    compiler.Compiler().compile(build_pipeline(ClusterSteps(cluster), graph, candidates), str(out))
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compile the kidney CT pipeline for Kubeflow Pipelines v2.")
    parser.add_argument("--params", default="params.yaml", help="params file: cluster, candidates and cache hash")
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
        params = load_params(args.params)
        cluster = cluster_settings({**params.cluster.model_dump(), "cpu_image": images["cpu"],
                                    "gpu_image": images["gpu"]}, f"image build manifest {args.images}")
        candidates = list(params.train.candidates)
        path = compile_pipeline(cluster, args.out, load_stage_graph(args.dvc, args.params), candidates)
    except (ValueError, ParamsError) as exc:
        print(f"compile failed: {exc}")
        return 2
    print(f"compiled {len(candidates)} candidate(s) into {path} (images {images['cpu']}, {images['gpu']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
