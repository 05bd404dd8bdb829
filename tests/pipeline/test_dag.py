"""The Airflow DAG: parses cleanly and inertly, follows dvc.yaml's order, fails loudly, runs end to end.

Airflow reads its configuration once per process, so every Airflow step runs in a child Python
whose environment is set with monkeypatch inside the test; nothing Airflow-related is configured
for the pytest process itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.common.stage_graph import ancestors, direct_upstream, load_stage_graph
from tests.tiny import tiny_params, wiring_params, write_params

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_ID = "kidney_ct_retraining"
HELPER_TASKS = {"list_candidates": "train", "alert": "monitor"}  # task id -> the stage it belongs to
CHECK_TASK = "changes"  # the one `dvc status` before every root stage (runner dvc)
# The one thing parsing may read: the stage graph, from the code's own dvc.yaml and the params.yaml beside it.
GRAPH_FILES = {f"open {REPO / 'dvc.yaml'}", f"open {REPO / 'params.yaml'}"}
PROJECT_ENV = ("KIDNEY_CT_PARAMS", "KIDNEY_CT_PROJECT_DIR", "AIRFLOW_VAR_KIDNEY_CT_PARAMS",
               "AIRFLOW_VAR_KIDNEY_CT_PROJECT_DIR", "KIDNEY_CT_RUNNERS", "KIDNEY_CT_KUBERNETES")

PARSE_SCRIPT = r"""
import json, os, sys
from airflow.dag_processing.dagbag import DagBag

touched = []

def watch(event, args):
    # Record what parsing does that it must not: open params/dvc files, a DB, the network, a process.
    try:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            if os.path.basename(os.fsdecode(args[0])) in {"params.yaml", "dvc.yaml"}:
                touched.append("open " + os.fsdecode(args[0]))
        elif event in {"sqlite3.connect", "socket.connect", "subprocess.Popen"}:
            touched.append(event + " " + repr(args[:2]))
    except Exception:
        pass

sys.addaudithook(watch)
bag = DagBag(dag_folder=sys.argv[1])
parse_touched = list(touched)
dag = bag.dags.get(sys.argv[2])
report = {"import_errors": {str(k): v for k, v in bag.import_errors.items()}, "dag_ids": bag.dag_ids,
          "touched": parse_touched}
if dag is not None:
    report.update(
        schedule=str(dag.schedule), timetable=type(dag.timetable).__name__, catchup=dag.catchup,
        cron=getattr(getattr(dag.timetable, "timetable", None), "expression", None),
        trigger_assets=sorted(a.name for a in getattr(dag.timetable.asset_condition, "objects", []) or []),
        watch={t.task_id: [getattr(a, "name", str(a)) for a in t.outlets]
               for t in bag.dags["kidney_ct_pacs_watch"].tasks} if "kidney_ct_pacs_watch" in bag.dags else None,
        tags=sorted(dag.tags), doc_md=dag.doc_md or "", default_args={k: str(v) for k, v in dag.default_args.items()},
        params=sorted(dag.params.keys()),
        tasks={t.task_id: {"upstream": sorted(t.upstream_task_ids), "mapped": bool(getattr(t, "is_mapped", False)),
                           "expand": sorted(getattr(getattr(t, "op_kwargs_expand_input", None), "value", {}) or {}),
                           "outlets": [getattr(a, "name", str(a)) for a in t.outlets]} for t in dag.tasks},
    )
print("REPORT:" + json.dumps(report))
"""

RUN_STAGE_SCRIPT = r"""
import json, sys
from pathlib import Path
from components.common import airflow_runner
project = Path(sys.argv[1])
settings = airflow_runner.StageSettings(project, project / "params.yaml")
report = {}
for stage in ("works", "refuses", "crashes"):
    try:
        airflow_runner.run_stage_command(stage, settings, candidate="tiny")
        report[stage] = {"raised": None}
    except Exception as exc:
        report[stage] = {"raised": type(exc).__name__, "message": str(exc)}
print("REPORT:" + json.dumps(report))
"""

SETTINGS_SCRIPT = r"""
import json, sys
from pathlib import Path
from components.common import airflow_runner
root = Path(sys.argv[1])
by_param, by_variable, by_env, default = (root / name for name in ("param", "variable", "env", "default"))
variables = {"kidney_ct_project_dir": str(by_variable), "kidney_ct_params": "v.yaml"}
env = {"KIDNEY_CT_PROJECT_DIR": str(by_env), "KIDNEY_CT_PARAMS": "e.yaml"}

def resolve(run_params, variables, env):
    try:
        s = airflow_runner.resolve_settings(run_params, variables.get, env, default)
        return [str(s.project_dir), str(s.params_file)]
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}

def candidates(path):
    try:
        return airflow_runner.read_candidate_names(path)
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)}

report = {
    "param": resolve({"project_dir": str(by_param), "params_file": "p.yaml"}, variables, env),
    "variable": resolve({"project_dir": None, "params_file": " "}, variables, env),
    "env": resolve({}, {}, env),
    "default": resolve({}, {}, {}),
    "missing": resolve({"project_dir": str(by_param), "params_file": "nope.yaml"}, {}, {}),
    "candidates": candidates(root / "two.yaml"),
    "no_candidates": candidates(root / "none.yaml"),
}
print("REPORT:" + json.dumps(report))
"""

E2E_SCRIPT = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.models.asset import AssetEvent
from airflow.utils.session import create_session
from sqlalchemy import select
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags[sys.argv[2]]
if sys.argv[4] != "keep-retries":
    for task in dag.tasks:
        task.retries = 0  # a failing stage should fail this test now, not after retry_delay
run = dag.test(run_conf=json.loads(sys.argv[3]))
tis = run.get_task_instances()
with create_session() as session:
    events = [dict(e.extra) for e in session.scalars(select(AssetEvent).where(AssetEvent.source_run_id == run.run_id))]
report = {"state": str(run.state),
          "tasks": {f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in tis},
          "tries": {f"{ti.task_id}[{ti.map_index}]": ti.try_number for ti in tis}, "asset_events": events}
print("REPORT:" + json.dumps(report))
"""


def run_child(script: str, *args: str, cwd: Path, timeout: float = 120) -> tuple[dict, str]:
    """Run `script` in a child Python (the environment is this process's); return its REPORT and output."""
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    output = done.stdout + done.stderr
    reports = [line[len("REPORT:"):] for line in done.stdout.splitlines() if line.startswith("REPORT:")]
    assert done.returncode == 0 and reports, f"child exited {done.returncode}:\n{output[-6000:]}"
    return json.loads(reports[-1]), output


def run_python(script: str, *args: str, cwd: Path, timeout: float = 120) -> dict:
    """Run `script` in a child Python; return its REPORT json."""
    return run_child(script, *args, cwd=cwd, timeout=timeout)[0]


def isolate_airflow(monkeypatch: pytest.MonkeyPatch, home: Path, sql_conn: str) -> None:
    """Point Airflow at a throwaway home/DB, no example DAGs, and no project settings from the shell."""
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(DAGS))
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", sql_conn)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the DAG imports components.common (as the Airflow image has it)
    for name in PROJECT_ENV:
        monkeypatch.delenv(name, raising=False)


def unexpected_touches(touched: list[str]) -> list[str]:
    """What parsing did beyond reading the stage graph's two files."""
    return [event for event in touched if event not in GRAPH_FILES]


@pytest.fixture(scope="module")
def parse_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Parse dags/ once, from an empty cwd, with a DB URL whose folder does not exist, and the run settings
    (env) pointing at a project whose params.yaml and dvc.yaml parsing must not read."""
    root = tmp_path_factory.mktemp("parse")
    empty_cwd = root / "cwd"
    empty_cwd.mkdir()
    run_project = root / "run_project"
    run_project.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        (run_project / name).write_text("{}\n")
    missing_db = root / "no-such-dir" / "airflow.db"
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_airflow(monkeypatch, root / "airflow_home", f"sqlite:///{missing_db}")
        monkeypatch.setenv("KIDNEY_CT_PROJECT_DIR", str(run_project))
        monkeypatch.setenv("KIDNEY_CT_PARAMS", str(run_project / "params.yaml"))
        report = run_python(PARSE_SCRIPT, str(DAGS), DAG_ID, cwd=empty_cwd)
    report["cwd_after"] = sorted(p.name for p in empty_cwd.iterdir())
    report["db_dir_created"] = missing_db.parent.exists()
    yield report


def test_dagbag_imports_cleanly(parse_report: dict) -> None:
    assert parse_report["import_errors"] == {}
    assert DAG_ID in parse_report["dag_ids"]
    assert parse_report["timetable"] == "AssetOrTimeSchedule"  # weekly OR when new data lands
    assert parse_report["cron"] == "0 0 * * 1"
    assert parse_report["trigger_assets"] == ["kidney_ct_new_studies", "kidney_ct_pacs_export"]
    assert parse_report["watch"] == {"check_pacs": ["kidney_ct_new_studies"]}
    assert parse_report["catchup"] is False
    assert parse_report["default_args"]["retries"] == "1"
    assert "retry_delay" not in parse_report["default_args"]  # Airflow's [core] default_task_retry_delay decides
    assert "kidney-ct" in parse_report["tags"]
    assert "list_candidates" in parse_report["doc_md"] and "KIDNEY_CT_PARAMS" in parse_report["doc_md"]
    assert {"params_file", "project_dir"} <= set(parse_report["params"])


def test_parsing_touches_no_db_files_or_network(parse_report: dict) -> None:
    assert unexpected_touches(parse_report["touched"]) == [], (
        "parsing the DAG file may read the code's dvc.yaml + params.yaml (the stage graph), never a run's "
        "params file, a DB or a socket")
    assert set(parse_report["touched"]) == GRAPH_FILES  # the graph is read, not written down a second time
    assert parse_report["cwd_after"] == [], "parsing wrote into the working directory"
    assert parse_report["db_dir_created"] is False


def test_train_is_mapped_over_candidates_read_at_run_time(parse_report: dict) -> None:
    tasks = parse_report["tasks"]
    assert tasks["train"]["mapped"] is True
    assert tasks["train"]["expand"] == ["candidate"]
    assert "list_candidates" in tasks["train"]["upstream"]
    assert tasks["ingest"]["outlets"] == ["kidney_ct_ingested_manifest"]


def test_dag_order_matches_dvc_stage_graph(parse_report: dict) -> None:
    dag_graph: dict[str, set[str]] = {}
    for task_id, info in parse_report["tasks"].items():
        if task_id == CHECK_TASK:
            continue
        stage = HELPER_TASKS.get(task_id, task_id)
        upstream = {HELPER_TASKS.get(up, up) for up in info["upstream"]} - {stage, CHECK_TASK}
        dag_graph.setdefault(stage, set()).update(upstream)
    dvc_graph = load_stage_graph(REPO / "dvc.yaml", REPO / "params.yaml")
    assert set(dag_graph) == set(dvc_graph)
    assert ancestors(dag_graph) == ancestors(dvc_graph)


def test_dag_links_are_the_stage_graph_and_two_helpers(parse_report: dict) -> None:
    """Each stage task waits for exactly its stages of dvc.yaml's graph (transitively reduced), plus the helpers:
    list_candidates (after preprocess) before train, alert after monitor, and `changes` (one status check)
    before each stage that has no upstream stage: every stage is downstream of it."""
    tasks = parse_report["tasks"]
    graph = direct_upstream(load_stage_graph(REPO / "dvc.yaml", REPO / "params.yaml"))
    assert set(tasks) == set(graph) | set(HELPER_TASKS) | {CHECK_TASK}
    assert tasks[CHECK_TASK]["upstream"] == []
    for stage, upstream in graph.items():
        helpers = {"list_candidates"} if stage == "train" else {CHECK_TASK} if not upstream else set()
        assert set(tasks[stage]["upstream"]) == upstream | helpers, stage
    assert tasks["list_candidates"]["upstream"] == ["preprocess"]
    assert tasks["alert"]["upstream"] == ["monitor"]
    # the links the DAG had when it was written by hand (report no longer also waits for leakage directly:
    # evaluate does)
    assert graph["train"] == {"augment", "features"} and graph["evaluate"] == {"train", "leakage"}
    assert graph["report"] == {"evaluate", "monitor"} and graph["register"] == {"evaluate", "monitor"}


def _fake_project(root: Path) -> Path:
    """A project whose `components` package holds three toy stages: works, refuses (2), crashes (1)."""
    stages = {
        "works": "import json, os, sys\n"
                 "open('called.json', 'w').write(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd()}))\n",
        "refuses": "import sys\nprint('validate failed: 3 images have no label', file=sys.stderr)\nsys.exit(2)\n",
        "crashes": "raise RuntimeError('disk on fire')\n",
    }
    for name, body in stages.items():
        (root / "components" / name).mkdir(parents=True)
        (root / "components" / name / "__main__.py").write_text(body)
    (root / "components" / "__init__.py").write_text("")
    (root / "params.yaml").write_text("{}\n")
    return root


def test_stage_exit_codes_become_task_failures_with_the_stage_message(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    project = _fake_project(tmp_path / "project")
    isolate_airflow(monkeypatch, tmp_path / "airflow_home", f"sqlite:///{tmp_path / 'airflow.db'}")
    report = run_python(RUN_STAGE_SCRIPT, str(project), cwd=tmp_path)

    assert report["works"] == {"raised": None}
    called = json.loads((project / "called.json").read_text())
    assert called["argv"] == ["--params", str(project / "params.yaml"), "--candidate", "tiny"]
    assert Path(called["cwd"]) == project
    assert report["refuses"]["raised"] == "AirflowFailException"  # deterministic refusal: no retry
    assert "3 images have no label" in report["refuses"]["message"]
    assert report["crashes"]["raised"] == "AirflowException"  # crash: retryable
    assert "disk on fire" in report["crashes"]["message"]


def test_settings_come_from_param_then_variable_then_env_then_default(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"param": "p.yaml", "variable": "v.yaml", "env": "e.yaml", "default": "params.yaml"}
    for folder, name in files.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text("{}\n")
    two = tiny_params(tmp_path)
    two["train"]["candidates"] = {"wide": {}, "deep": {}}
    write_params(two, tmp_path / "two.yaml")
    write_params({**two, "train": {"candidates": {}}}, tmp_path / "none.yaml")
    isolate_airflow(monkeypatch, tmp_path / "airflow_home", f"sqlite:///{tmp_path / 'airflow.db'}")
    report = run_python(SETTINGS_SCRIPT, str(tmp_path), cwd=tmp_path)

    for source, name in files.items():
        assert report[source] == [str(tmp_path / source), str(tmp_path / source / name)], source
    assert report["missing"]["raised"] == "AirflowFailException"
    assert "nope.yaml" in report["missing"]["message"]
    assert report["candidates"] == ["wide", "deep"]
    assert report["no_candidates"]["raised"] == "AirflowFailException"
    assert "train.candidates" in report["no_candidates"]["message"]  # the typed params say which key


def write_tiny_params(tmp_path: Path) -> Path:
    """The shared tiny params for wiring tests (tests/tiny.py) with every output under tmp_path."""
    return write_params(wiring_params(tmp_path), tmp_path / "params.yaml")


def run_dag_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params_file: Path,
                 retries: str = "no-retries") -> tuple[dict, str, float]:
    """Migrate a fresh SQLite Airflow DB in tmp_path, dag.test() the DAG on `params_file`.

    Returns the run report, the child's output and how long `airflow db migrate` took (seconds).
    """
    home = tmp_path / "airflow_home"
    isolate_airflow(monkeypatch, home, f"sqlite:///{home / 'airflow.db'}")
    # The repo itself with absolute tmp paths is no DVC workspace: run the stages directly, untracked
    # (the tracked `dvc` runner is tested under a real Airflow in test_dag_airflow_server.py).
    monkeypatch.setenv("KIDNEY_CT_RUNNERS", '{"default": "local"}')
    for name in ("MLFLOW_TRACKING_URI", "BENTOML_HOME"):  # they would override the tmp params
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    migrate_s = round(time.monotonic() - started, 1)
    assert migrate.returncode == 0, (migrate.stdout + migrate.stderr)[-4000:]
    conf = {"project_dir": str(REPO), "params_file": str(params_file)}
    report, output = run_child(E2E_SCRIPT, str(DAGS), DAG_ID, json.dumps(conf), retries, cwd=tmp_path,
                               timeout=1100)
    return report, output, migrate_s


# The whole DAG end to end (every task, the asset event, the registered and packaged model) runs against real
# services in tests/pipeline/test_dag_services.py.


@pytest.mark.e2e
def test_dag_run_stops_at_a_refusing_stage_without_retrying(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    params_file = write_tiny_params(tmp_path)
    raw = yaml.safe_load(params_file.read_text())
    raw["validate"].update(min_class_share=0.5)  # a dataset-level refusal: no class holds half the images
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    report, output, _ = run_dag_test(tmp_path, monkeypatch, params_file, retries="keep-retries")

    assert report["state"] == "failed"
    assert report["tasks"]["ingest[-1]"] == "success"
    assert report["tasks"]["validate[-1]"] == "failed"
    assert report["tries"]["validate[-1]"] == 1, "a stage's refusal must not be retried"
    assert {report["tasks"][f"{t}[-1]"] for t in ("preprocess", "augment", "evaluate", "package")} == {
        "upstream_failed"}
    assert "stage validate exited with code 2" in output
    assert not (Path(raw["paths"]["prepared"]) / "split.csv").exists()
