"""Turn raw expectation results into concise entries and plain-word failure messages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ShareLimits:
    """The class-share thresholds from params, for messages in shares rather than counts."""

    min_share: float
    max_share: float


def _row_name(table: pd.DataFrame, index: int) -> str:
    """A human handle for a table row: the storage key, else the source, else the row number."""
    if index in table.index:
        for column in ("key", "source"):
            value = table.at[index, column]
            if value is not None and pd.notna(value):
                return str(value)
    return f"row {index + 1}"


def _row_names(table: pd.DataFrame, indices: list[int]) -> list[str]:
    return [_row_name(table, index) for index in indices[:MAX_EXAMPLES]]


def _images(count: int) -> str:
    return f"{count} image{'s' if count != 1 else ''}"


def _map_observed(result: dict[str, Any]) -> dict[str, Any]:
    observed = {"unexpected_rows": result.get("unexpected_count", 0), "rows": result.get("element_count", 0)}
    examples = [item["value"] for item in result.get("partial_unexpected_counts", [])][:MAX_EXAMPLES]
    if observed["unexpected_rows"]:
        observed["examples"] = examples
    return observed


def _undecodable(entry: dict, table: pd.DataFrame, limits: ShareLimits) -> str:
    result = entry["result"]
    names = _row_names(table, result.get("partial_unexpected_index_list", []))
    reasons = result.get("partial_unexpected_list", [])
    listed = "; ".join(f"{name} ({reason})" for name, reason in zip(names, reasons))
    return f"{_images(result['unexpected_count'])} could not be read or decoded: {listed}"


def _nulls(entry: dict, table: pd.DataFrame, limits: ShareLimits) -> str:
    result, column = entry["result"], entry["kwargs"]["column"]
    names = _row_names(table, result.get("partial_unexpected_index_list", []))
    return f"{result['unexpected_count']} null value(s) in column '{column}' (rows: {', '.join(names)})"


def _short(value: Any, length: int = 12) -> str:
    text = str(value)
    return text if len(text) <= length else text[:length] + "..."


def _duplicates(entry: dict, table: pd.DataFrame, limits: ShareLimits) -> str:
    column = entry["kwargs"]["column"]
    counts = table[column].dropna().value_counts()
    repeated = counts[counts > 1]
    examples = "; ".join(
        f"{_short(value)} in {', '.join(_row_names(table, list(table.index[table[column] == value])))}"
        for value in list(repeated.index)[:MAX_EXAMPLES])
    return f"{len(repeated)} duplicate {column} value(s), shared by {_images(int(repeated.sum()))}: {examples}"


def _outside_classes(entry: dict, table: pd.DataFrame, limits: ShareLimits) -> str:
    result = entry["result"]
    found = ", ".join(f"'{item['value']}' ({item['count']})" for item in result.get("partial_unexpected_counts", []))
    classes = ", ".join(entry["kwargs"]["value_set"])
    return f"{_images(result['unexpected_count'])} labelled outside the classes [{classes}]: {found}"


def _missing_classes(entry: dict, table: pd.DataFrame, limits: ShareLimits) -> str:
    missing = entry["result"].get("partial_missing_list") or []
    return "no images of class " + ", ".join(f"'{name}'" for name in missing)


def _out_of_range(entry: dict, table: pd.DataFrame, limits: ShareLimits) -> str:
    result, kwargs = entry["result"], entry["kwargs"]
    names = _row_names(table, result.get("partial_unexpected_index_list", []))
    values = result.get("partial_unexpected_list", [])
    listed = ", ".join(f"{name} ({value})" for name, value in zip(names, values))
    return (f"{_images(result['unexpected_count'])} with {kwargs['column']} outside "
            f"[{_number(kwargs['min_value'])}, {_number(kwargs['max_value'])}]: {listed}")


def _share_text(share: float, bound: float) -> str:
    """Two decimals, more where two would read as equal to the bound (0.049 vs 0.05)."""
    return f"{share:.2f}" if f"{share:.2f}" != f"{bound:.2f}" else f"{share:.4f}"


def _class_share(entry: dict, table: pd.DataFrame, limits: ShareLimits) -> str:
    count, total = entry["result"].get("observed_value", 0), max(len(table), 1)
    share = count / total
    below = share < limits.min_share
    bound = limits.min_share if below else limits.max_share
    side = f"below the minimum {bound:.2f}" if below else f"above the maximum {bound:.2f}"
    return (f"class share of '{entry['meta'].get('class')}' is {_share_text(share, bound)} "
            f"({count} of {total} images), {side}")


PROBLEMS: dict[tuple[str, str | None], Callable[[dict, pd.DataFrame, ShareLimits], str]] = {
    ("expect_column_values_to_be_null", "decode_error"): _undecodable,
    ("expect_column_values_to_not_be_null", None): _nulls,
    ("expect_column_values_to_be_unique", None): _duplicates,
    ("expect_column_values_to_be_in_set", None): _outside_classes,
    ("expect_column_distinct_values_to_contain_set", None): _missing_classes,
    ("expect_column_values_to_be_between", None): _out_of_range,
    ("expect_table_row_count_to_be_between", None): _class_share,
}


def describe_problem(entry: dict[str, Any], table: pd.DataFrame, limits: ShareLimits) -> str:
    """One plain sentence on why an expectation failed."""
    if entry.get("exception"):
        return f"{entry.get('notes') or entry['type']}: could not be checked ({entry['exception']})"
    column = entry["kwargs"].get("column")
    explain = PROBLEMS.get((entry["type"], column)) or PROBLEMS.get((entry["type"], None))
    if explain is None:
        return f"{entry['type']} failed on {column or 'the table'}: {entry['result']}"
    return explain(entry, table, limits)


def _observed(entry: dict[str, Any], rows: int) -> Any:
    result = entry["result"]
    if entry["type"] == "expect_table_row_count_to_be_between":
        count = result.get("observed_value", 0)
        return {"images": count, "share": round(count / max(rows, 1), 4)}
    if entry["type"] == "expect_column_distinct_values_to_contain_set":
        return {"missing": result.get("partial_missing_list") or []}
    return _map_observed(result)


WORDED_EXPECTATIONS = {
    "expect_column_values_to_be_null": "empty in every row",
    "expect_column_values_to_not_be_null": "set in every row",
    "expect_column_values_to_be_unique": "unique",
}


def _number(value: Any) -> Any:
    """64.0 -> 64 for display; other values unchanged."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _expected(entry: dict[str, Any], limits: ShareLimits) -> Any:
    kwargs = entry["kwargs"]
    if entry["type"] == "expect_table_row_count_to_be_between":
        return {"images": [_number(kwargs.get("min_value")), _number(kwargs.get("max_value"))],
                "share": [limits.min_share, limits.max_share]}
    if "value_set" in kwargs:
        return kwargs["value_set"]
    if "min_value" in kwargs:
        return [_number(kwargs.get("min_value")), _number(kwargs.get("max_value"))]
    return WORDED_EXPECTATIONS.get(entry["type"], entry["type"])


def summarise(results: list[dict[str, Any]], table: pd.DataFrame, limits: ShareLimits) -> list[dict[str, Any]]:
    """One concise, human-readable entry per expectation (problem set only when it failed)."""
    entries = []
    for entry in results:
        item = {"expectation": entry["type"], "column": entry["kwargs"].get("column"),
                "description": entry.get("notes"), "success": entry["success"],
                "observed": _observed(entry, len(table)), "expected": _expected(entry, limits),
                "problem": None if entry["success"] else describe_problem(entry, table, limits)}
        if entry["meta"].get("class") is not None:
            item["class"] = entry["meta"]["class"]
        entries.append(item)
    return entries
