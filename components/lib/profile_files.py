"""Where profiles live and how they are read (the IO edge of profiles; the merging is in components.lib.profiles)."""

from __future__ import annotations

from pathlib import Path

import yaml

from components.lib.profiles import ProfileError

PROFILES = Path("profiles")
SEARCH = PROFILES / "search.yaml"


def read_yaml(path: Path) -> dict:
    """A YAML mapping; a missing file is a ProfileError naming it."""
    if not path.is_file():
        raise ProfileError(f"{path} not found")
    return yaml.safe_load(path.read_text()) or {}


def profile_overlay(name: str) -> dict:
    """The named profile of profiles/ (e.g. real-data), as an overlay of params.yaml."""
    return read_yaml(PROFILES / f"{name}.yaml")


def search_profile() -> str:
    """The profile every trial of profiles/search.yaml is laid over (its `profile` key)."""
    name = read_yaml(SEARCH).get("profile")
    if not name:
        raise ProfileError(f"{SEARCH} names no `profile:` for its trials to be laid over (e.g. profile: real-data)")
    return str(name)


def search_trials() -> dict[str, dict]:
    """Every trial of profiles/search.yaml: name -> overlay."""
    return {name: overlay or {} for name, overlay in read_yaml(SEARCH).get("trials", {}).items()}


def trial_overlay(name: str) -> dict:
    """One named trial of profiles/search.yaml (a recipe tried on top of a profile)."""
    trials = search_trials()
    if name not in trials:
        raise ProfileError(f"no trial {name!r} in {SEARCH}; it lists {sorted(trials)}")
    return trials[name]
