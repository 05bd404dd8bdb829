"""Offline lint of infra/: Kubernetes manifests against the API schemas (kubernetes-validate), the
compose file against a schema of the Compose keys it uses plus cross-checks, the Dockerfiles' targets
and sources, and the params file of the compose deployment. (No Docker engine or cluster here.)
"""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from components.common.params import load_params
from components.common.stage_graph import load_stage_graph

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S_VERSION = "1.30.0"
MANIFESTS = sorted(p for p in (INFRA / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")

PORT = {"type": "string", "pattern": r"^127\.0\.0\.1:\d+:\d+$"}  # published on loopback only
SERVICE = {
    "type": "object",
    "additionalProperties": False,
    "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
    "properties": {
        "image": {"type": "string", "pattern": r"^[^:]+:((?!latest$)[\w.\-]+|\$\{\w+\})$"},  # pinned tag
        "build": {"type": "object", "required": ["context", "dockerfile"], "additionalProperties": False,
                  "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"},
                                 "target": {"type": "string"}}},
        "command": {"type": ["string", "array"]}, "entrypoint": {"type": ["string", "array"]},
        "environment": {"type": "object", "additionalProperties": {"type": "string"}},
        "ports": {"type": "array", "items": PORT},
        "volumes": {"type": "array", "items": {"type": "string"}},
        "depends_on": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"condition": {"enum": [
                "service_started", "service_healthy", "service_completed_successfully"]}}}},
        "healthcheck": {"type": "object", "required": ["test"]},
    },
}
COMPOSE_SCHEMA = {
    "type": "object",
    "required": ["services"],
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {"name": {"type": "string"}, "services": {"type": "object", "additionalProperties": SERVICE},
                   "volumes": {"type": "object"}},
}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_match_the_api_schemas(manifest):
    import kubernetes_validate

    documents = [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)  # raises on any schema error


def test_kustomization_lists_every_manifest_but_the_example_secret():
    listed = set(yaml.safe_load((INFRA / "k8s" / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secret.example.yaml"}


def test_an_invalid_manifest_is_caught():
    import kubernetes_validate

    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"port": "http"}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def test_compose_file_matches_its_schema(compose):
    jsonschema.validate(compose, COMPOSE_SCHEMA)


def test_compose_references_resolve(compose):
    services, volumes = compose["services"], set(compose["volumes"])
    for name, service in services.items():
        assert set(service.get("depends_on", {})) <= set(services), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in volumes or (INFRA / source).exists(), f"{name}: volume {source}"
        if "build" in service:
            dockerfile = (INFRA / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
            assert dockerfile.is_file(), name
            target = service["build"].get("target")
            assert target is None or re.search(rf"(?im)^FROM .+ AS {target}$", dockerfile.read_text()), name
    assert {"minio", "postgres", "mlflow", "orthanc", "airflow", "service"} <= set(services)
    assert "postgresql://" in " ".join(services["mlflow"]["command"])


def test_every_compose_variable_is_in_the_env_example(compose):
    used = set(re.findall(r"(?<!\$)\$\{(\w+)\}", (INFRA / "compose.yaml").read_text()))
    example = {line.split("=")[0] for line in (INFRA / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert used and used <= example


def dockerfile_targets(path: Path) -> set[str]:
    return set(re.findall(r"(?im)^FROM \S+ AS (\S+)$", path.read_text()))


def test_images_hold_every_stage_and_have_no_unused_targets():
    """DAG pods and KFP components run `python -m components.<stage>` in the cpu/gpu images; only the
    bases and the GPU train image are build targets (the service image comes from `bentoml containerize`)."""
    cpu, gpu = INFRA / "docker" / "Dockerfile.cpu", INFRA / "docker" / "Dockerfile.gpu"
    assert dockerfile_targets(cpu) == {"cpu-base"} and dockerfile_targets(gpu) == {"gpu-base", "train"}
    compose_targets = set(re.findall(r"target: (\w[\w-]*)", (INFRA / "compose.yaml").read_text()))
    assert compose_targets <= dockerfile_targets(cpu)  # compose builds only targets that exist
    for dockerfile in (cpu, gpu):
        assert re.search(r"(?m)^COPY components/ components/$", dockerfile.read_text()), dockerfile.name
    for stage in load_stage_graph(REPO / "dvc.yaml", REPO / "params.yaml"):
        assert (REPO / "components" / stage / "__main__.py").is_file(), stage
    assert '"components.train"' in gpu.read_text()


@pytest.mark.parametrize("dockerfile", sorted((INFRA / "docker").glob("Dockerfile.*")), ids=lambda p: p.name)
def test_dockerfiles_pin_their_bases_and_copy_files_that_exist(dockerfile):
    text = dockerfile.read_text()
    targets = dockerfile_targets(dockerfile)
    for base in re.findall(r"(?im)^FROM (\S+)", text):
        assert base in targets or re.fullmatch(r"[^:]+:(?!latest$)[\w.\-]+", base), base
    for sources in re.findall(r"(?im)^COPY (?:--\S+ )*(.+) \S+$", text):
        for source in sources.split():
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}"


def test_compose_params_file_is_valid_and_points_at_the_services():
    params = load_params(INFRA / "params.compose.yaml")
    assert params.paths.store.startswith("s3://") and params.storage.endpoint_url == "http://minio:9000"
    assert params.ingest.dicomweb_url == "http://orthanc:8042/dicom-web"
    assert params.mlflow.tracking_uri == "http://mlflow:5000"
