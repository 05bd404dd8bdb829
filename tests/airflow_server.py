"""A real Airflow 3 for tests: scheduler, DAG processor and API server (SQLite), all bound to 127.0.0.1,
started by the test itself; driven through the public REST API (v2). The executor is the LocalExecutor, or the
CeleryExecutor with a Redis broker and Celery workers as separate processes (`workers`: name -> queues), each
reporting its own name as the task instances' hostname (`worker_hostname`), as workers on separate hosts would.

Auth: SimpleAuthManager with `simple_auth_manager_all_admins`, so every request is an admin one (a
throwaway test instance; a real deployment uses a token from `POST /auth/token`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.services import free_port

COMPONENTS = ("api-server", "scheduler", "dag-processor")
FINISHED = {"success", "failed"}
WORKER_NAME_ENV = "KIDNEY_CT_TEST_WORKER_NAME"


def worker_hostname() -> str:
    """Airflow's `hostname_callable` for the test's workers: the worker's name (they share one host)."""
    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


@dataclass
class AirflowServer:
    """Airflow's three long-running components in child processes; logs under `home`/logs/*.out."""

    home: Path
    dags_folder: Path
    env: dict[str, str]
    port: int = 0
    broker: str = ""  # a Redis URL: the CeleryExecutor, with one worker process per entry of `workers`
    workers: dict[str, str] = field(default_factory=dict)  # worker name -> the queues it consumes (comma-separated)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v2"

    def environment(self) -> dict[str, str]:
        url = f"http://127.0.0.1:{self.port}"
        return {**self.env,
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if self.broker else "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "2",  # a shared 2-core machine
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",  # not the default port
                "AIRFLOW__API__BASE_URL": url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API_AUTH__JWT_SECRET": self.env.get("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_hex(16)),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600",
                **(self.celery_settings() if self.broker else {})}

    def celery_settings(self) -> dict[str, str]:
        return {"AIRFLOW__CELERY__BROKER_URL": f"{self.broker}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"{self.broker}/1",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.airflow_server.worker_hostname"}

    def start(self, timeout_s: float = 240) -> AirflowServer:
        self.port = self.port or free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**self.env, "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16)}
        env = self.environment()
        migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, cwd=self.home,
                                 capture_output=True, text=True, timeout=600)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed: {(migrate.stdout + migrate.stderr)[-3000:]}")
        (self.home / "logs").mkdir(exist_ok=True)
        for name in COMPONENTS:
            args = ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"] if name == "api-server" else []
            out = (self.home / "logs" / f"{name}.out").open("w")
            self.processes[name] = subprocess.Popen([sys.executable, "-m", "airflow", name, *args], env=env,
                                                    cwd=self.home, stdout=out, stderr=subprocess.STDOUT,
                                                    start_new_session=True)  # its workers: one group
        for name, queues in self.workers.items():
            self.start_worker(name, queues)
        self._wait_healthy(timeout_s)
        return self

    def start_worker(self, name: str, queues: str) -> None:
        """`airflow celery worker` consuming `queues`, one task at a time, as worker `name` (its own group)."""
        out = (self.home / "logs" / f"worker-{name}.out").open("w")
        command = [sys.executable, "-m", "airflow", "celery", "worker", "--queues", queues, "--concurrency", "1",
                   "--celery-hostname", f"{name}@%h", "--skip-serve-logs"]
        self.processes[f"worker-{name}"] = subprocess.Popen(command, env={**self.environment(), WORKER_NAME_ENV: name},
                                                            cwd=self.home, stdout=out, stderr=subprocess.STDOUT,
                                                            start_new_session=True)

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL worker `name` and every process of its session (Celery's pool, the task supervisors, whose task
        processes have process groups of their own, and the stages they run): a node lost. The pids killed."""
        import psutil

        process = self.processes.pop(f"worker-{name}")
        killed = []
        for candidate in psutil.process_iter():
            try:
                if os.getsid(candidate.pid) == process.pid:
                    os.kill(candidate.pid, signal.SIGKILL)
                    killed.append(candidate.pid)
            except (ProcessLookupError, PermissionError):
                continue
        process.wait(timeout=30)
        return killed

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if requests.get(f"{self.api}/monitor/health", timeout=5).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(2)
        raise RuntimeError(f"Airflow's API server did not answer within {timeout_s} s\n{self.log_tails()}")

    def _check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"Airflow components exited: {dead}\n{self.log_tails()}")

    def log_tails(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}"
                         for path in sorted((self.home / "logs").glob("*.out")))

    def request(self, method: str, path: str, **kwargs) -> dict:
        response = requests.request(method, f"{self.api}{path}", timeout=30, **kwargs)
        if not response.ok:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:1000]}")
        return response.json() if response.content else {}

    def wait_for_dag(self, dag_id: str, timeout_s: float = 180) -> dict:
        """The DAG once the DAG processor has parsed and stored it (no import errors allowed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            errors = self.request("GET", "/importErrors").get("import_errors", [])
            if errors:
                raise RuntimeError(f"import errors: {errors}")
            response = requests.get(f"{self.api}/dags/{dag_id}", timeout=30)
            if response.ok:
                return response.json()
            time.sleep(3)
        raise RuntimeError(f"DAG {dag_id} not parsed within {timeout_s} s\n{self.log_tails()}")

    def runs(self, dag_id: str) -> list[dict]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})[
            "dag_run_id"]

    def wait_until_idle(self, dag_id: str, timeout_s: float) -> list[dict]:
        """Every run of `dag_id` once none is queued or running; raises on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            runs = self.runs(dag_id)
            if runs and all(run["state"] in FINISHED for run in runs):
                return runs
            time.sleep(5)
        raise RuntimeError(f"runs of {dag_id} not finished within {timeout_s} s: "
                           f"{[(r['dag_run_id'], r['state']) for r in self.runs(dag_id)]}\n{self.log_tails()}")

    def task_tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
        """Every try of one task instance (state, hostname, queue, try_number), the current one included."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        path += f"/{map_index}/tries" if map_index >= 0 else "/tries"
        return self.request("GET", path)["task_instances"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})[
            "task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """task id (with [map index] when mapped) -> state, for one run."""
        items = self.task_instances(dag_id, run_id)
        return {ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""): ti["state"]
                for ti in items}

    def post_asset_event(self, asset_name: str, extra: dict | None = None) -> dict:
        assets = self.request("GET", "/assets", params={"name_pattern": asset_name})["assets"]
        (asset,) = [a for a in assets if a["name"] == asset_name]
        return self.request("POST", "/assets/events", json={"asset_id": asset["id"], "extra": extra or {}})

    def stop(self) -> None:
        """SIGTERM each component's process group (the component and the workers it forked)."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()
