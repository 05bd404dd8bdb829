"""Run the declared expectation suite with Great Expectations 1.x (offline, in memory)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

DOCS_SITE = "validation"


@dataclass(frozen=True)
class SuiteOutcome:
    """What one validation run found, as plain Python values (no GX objects)."""

    suite_name: str
    success: bool
    statistics: dict[str, Any]
    results: list[dict[str, Any]]  # one per expectation: type, kwargs, meta, notes, success, result, exception


class SuiteError(ValueError):
    """The declared suite file is missing or not a valid GX suite; the message names the file."""


def load_declared_suite(path: Path) -> dict[str, Any]:
    """Read a suite JSON kept in the repo (the declared list of expectations)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SuiteError(f"cannot read the expectation suite {path}: {exc}") from None


def _gx_suite(gx: Any, suite: dict[str, Any]) -> Any:
    """The suite dict as a GX ExpectationSuite; a SuiteError names the entry GX cannot use.

    Each entry is built on its own first: ExpectationSuite(...) would only log and drop a bad one.
    """
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    expectations = []
    for number, entry in enumerate(suite.get("expectations", []), start=1):
        try:
            expectations.append(ExpectationConfiguration(**entry).to_domain_obj())
        except Exception as exc:  # GX raises pydantic, TypeError and its own errors for a bad entry
            raise SuiteError(f"expectation #{number} ({entry.get('type')}) of the suite '{suite.get('name')}' "
                             f"is not valid for GX: {exc}") from None
    return gx.ExpectationSuite(name=suite["name"], expectations=expectations,
                               meta=suite.get("meta"), notes=suite.get("notes"))


def _quiet_offline_gx() -> None:
    """Before GX is imported: no usage statistics, and no INFO chatter in the stage's log."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def _context(docs_dir: Path | None) -> Any:
    """An ephemeral GX context: in-memory stores, no analytics, no GX project folder anywhere."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites[DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _plain(value: Any) -> Any:
    """GX result values (numpy scalars, pandas NA, nested) -> JSON-friendly Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    return value


def _result_dict(result: Any) -> dict[str, Any]:
    config = result.expectation_config
    exception = result.exception_info or {}
    return {
        "type": config.type,
        "kwargs": _plain({k: v for k, v in config.kwargs.items() if k != "batch_id"}),
        "meta": _plain(dict(config.meta or {})),
        "notes": config.notes if isinstance(config.notes, str) else " ".join(config.notes or []),
        "success": bool(result.success),
        "result": _plain(dict(result.result or {})),
        "exception": exception.get("exception_message") if exception.get("raised_exception") else None,
    }


def run_suite(table: pd.DataFrame, suite: dict[str, Any], parameters: dict[str, Any],
              docs_dir: Path | None = None) -> SuiteOutcome:
    """Validate `table` against `suite` with `parameters`; build Data Docs into `docs_dir` if given."""
    _quiet_offline_gx()
    import great_expectations as gx

    context = _context(docs_dir)
    batch = (context.data_sources.add_pandas("manifest").add_dataframe_asset("image_table")
             .add_batch_definition_whole_dataframe("all_images"))
    gx_suite = context.suites.add(_gx_suite(gx, suite))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{gx_suite.name}_run", data=batch, suite=gx_suite))
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])] if docs_dir else []
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=f"{gx_suite.name}_checkpoint", validation_definitions=[definition],
        actions=actions, result_format="SUMMARY"))
    outcome = checkpoint.run(batch_parameters={"dataframe": table}, expectation_parameters=parameters)
    (validation,) = outcome.run_results.values()
    return SuiteOutcome(suite_name=gx_suite.name, success=bool(validation.success),
                        statistics=_plain(dict(validation.statistics)),
                        results=[_result_dict(r) for r in validation.results])
