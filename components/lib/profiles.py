"""Params profiles (the profile CLI, leakage.table): a nested overlay -> Hydra-style `++key=value` overrides,
checked against Params."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from components.common.params import parse_params


class ProfileError(ValueError):
    """A profile cannot be turned into overrides; the message says which key and why."""


def deep_merge(base: dict, overlay: dict) -> dict:
    """`base` with `overlay` laid over it, mapping by mapping (lists and scalars are replaced).

    A mapping set to null is removed (e.g. `train: {candidates: {compact_cnn: null}}` drops that candidate);
    a scalar set to null stays null. A null for an entry a mapping of mappings lacks (a candidate removed by an
    earlier application of the same profile: `dvc exp run` leaves it applied to params.yaml) removes nothing.
    """
    merged = dict(base)
    for key, value in overlay.items():
        if removes(merged, key, value):
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def removes(container: dict, key: str, value: Any) -> bool:
    """Whether `key: value` laid over `container` removes an entry: null over a mapping, or null for an entry
    missing from a mapping of mappings (already removed)."""
    if value is not None:
        return False
    if isinstance(container.get(key), dict):
        return True
    return key not in container and bool(container) and all(isinstance(v, dict) for v in container.values())


def removals(base: dict, overlay: dict, prefix: str = "", present: bool = True) -> list[str]:
    """Dotted keys of the mappings in `base` that `overlay` sets to null (removed by deep_merge); with
    `present=False`, those it sets to null that `base` has already lost (nothing for DVC to delete)."""
    keys = []
    for key, value in overlay.items():
        if removes(base, key, value) and (key in base) == present:
            keys.append(f"{prefix}{key}")
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            keys.extend(removals(base[key], value, f"{prefix}{key}.", present))
    return keys


def merge(*layers: dict) -> dict:
    """The mappings laid over each other in order (later ones win)."""
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    return merged


def queued_paths(merged: dict, root: Path) -> dict:
    """An overlay making absolute (from `root`) the paths a queued `dvc exp run` must share with the project.

    A queued trial runs in a temp copy of the repo: a relative path that leaves the repo (../shared/...) would
    point elsewhere, and a local object store is no DVC output, so each copy would start with an empty one.
    """
    def local(value: object) -> bool:
        return isinstance(value, str) and "://" not in value and not PurePosixPath(value).is_absolute()

    paths = merged.get("paths") or {}
    fixed = {key: str((root / value).resolve()) for key, value in paths.items()
             if local(value) and (key == "store" or PurePosixPath(value).parts[:1] == ("..",))}
    return {"paths": fixed} if fixed else {}


def _leaf_text(key: str, value: Any) -> str:
    if isinstance(value, str):
        text = value  # Hydra reads a bare word; quotes would become part of the value
    else:
        text = "null" if value is None else json.dumps(value, separators=(",", ":"))
    if any(ch.isspace() for ch in text) or not text:
        raise ProfileError(f"{key}: {value!r} has spaces or is empty; DVC's -S overrides cannot carry it")
    return text


def flatten(overlay: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, leaf value) pairs of a nested mapping; lists are leaves."""
    pairs = []
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            pairs.extend(flatten(value, dotted + "."))
        else:
            pairs.append((dotted, value))
    return pairs


def overrides(base: dict, *overlays: dict) -> list[str]:
    """`~key` per mapping an overlay removes from `base`, then `++key=value` per leaf of the overlays (later ones
    win), after checking the merged params are valid."""
    parse_params(merge(base, *overlays))  # raises ParamsError naming the bad key
    gone, already_gone, merged = [], [], dict(base)
    for overlay in overlays:
        gone.extend(removals(merged, overlay))
        already_gone.extend(removals(merged, overlay, present=False))  # Hydra's `~` refuses a missing key
        merged = deep_merge(merged, overlay)
    leaves = [(key, value) for key, value in flatten(merge(*overlays)) if key not in gone + already_gone]
    return [f"~{key}" for key in gone] + [f"++{key}={_leaf_text(key, value)}" for key, value in leaves]
