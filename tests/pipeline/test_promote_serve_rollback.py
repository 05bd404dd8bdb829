"""Done-when story: promote through a real `mlflow server`, package, serve, predict, roll back, reload.

The reload is blue/green: the rolled-back champion's Bento starts beside the running one, and the old
server is stopped only after the new one is ready (what docs/serving.md "Reload to a new champion" describes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from components.common.procs import stop_process_group
from tests.package_support import run_package, write_project
from tests.pipeline.test_serving import AUTH, TOKEN, free_port, png_slice, predict, wait_ready
from tests.registry_support import mlflow_server, register_version, run_registry

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def package_champion(root: Path, uri: str, version: str) -> dict:
    """registration.json naming `version`, then the package stage against the server; returns bento.json."""
    (root / "reports/register/registration.json").write_text(json.dumps({"gate_passed": True,
                                                                          "champion_version": version}))
    packaged = run_package(root, MLFLOW_TRACKING_URI=uri)
    assert packaged.returncode == 0, packaged.stderr[-3000:]
    return json.loads((root / "reports/package/bento.json").read_text())


def serve(root: Path, bento_tag: str, name: str) -> tuple[subprocess.Popen, str]:
    url, log = f"http://127.0.0.1:{free_port()}", root / f"{name}.log"
    env = {**os.environ, "BENTOML_HOME": str(root / ".bentoml"), "BENTOML_DO_NOT_TRACK": "True",
           "KIDNEY_CT_API_TOKEN": TOKEN}
    env.pop("KIDNEY_CT_BENTO_MODEL", None)
    with log.open("w") as out:
        server = subprocess.Popen([str(Path(sys.executable).with_name("bentoml")), "serve", bento_tag, "--host",
                                   "127.0.0.1", "--port", url.rsplit(":", 1)[1]], cwd=root, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(url, server, log)
    return server, url


def stop(server: subprocess.Popen) -> None:
    stop_process_group(server)


def served_version(url: str) -> str:
    answer = predict(url, "slice.png", png_slice())
    assert answer.status_code == 200, answer.text
    return answer.json()["model_version"]


def test_promote_serve_predict_rollback_and_reload(tmp_path):
    write_project(tmp_path, "1")
    servers = []
    with mlflow_server(tmp_path) as uri:
        first = register_version(uri, True, seed=1)
        second = register_version(uri, True, seed=2)
        assert run_registry(tmp_path, "promote", first, uri=uri).returncode == 0
        promoted = run_registry(tmp_path, "promote", second, uri=uri)
        assert promoted.returncode == 0 and f"v{second} is now the champion" in promoted.stderr
        try:
            blue, blue_url = serve(tmp_path, package_champion(tmp_path, uri, second)["bento_tag"], "blue")
            servers.append(blue)
            assert served_version(blue_url) == second

            rolled = run_registry(tmp_path, "rollback", "--reason", "e2e drill", uri=uri)
            assert rolled.returncode == 0 and f"v{first} is the champion again" in rolled.stderr
            green, green_url = serve(tmp_path, package_champion(tmp_path, uri, first)["bento_tag"], "green")
            servers.append(green)
            assert served_version(blue_url) == second  # the old one kept serving while the new one started
            assert served_version(green_url) == first
            stop(blue)
            assert requests.get(f"{green_url}/readyz", timeout=5).status_code == 200
            assert predict(green_url, "slice.png", png_slice(), headers=AUTH).status_code == 200
        finally:
            for server in servers:
                if server.poll() is None:
                    stop(server)
