"""CLI: python -m components.profile NAME [TRIAL] — print the `dvc exp run -S` overrides of a params profile.

    dvc exp run -n real-data $(python -m components.profile real-data)          # the whole pipeline
    dvc exp run -n cv-best $(python -m components.profile real-data) leakage   # just its grouped CV
    dvc exp run -n t02 $(python -m components.profile --search t02-compact-balanced) leakage   # one search trial
    python -m components.profile real-data --write params.real-data.yaml       # a whole params file, for
                                                                                #   Airflow/KFP (--params)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from components.common.params import ParamsError, parse_params
from components.lib.profile_files import SEARCH, profile_overlay, read_yaml, search_profile, search_trials, trial_overlay
from components.lib.profiles import ProfileError, merge, overrides, queued_paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the Hydra-style overrides (one `-S ++key=value` pair per "
                                     "line) that turn params.yaml into a named profile of profiles/, optionally "
                                     "with one trial of profiles/search.yaml on top; feed them to `dvc exp run`.")
    parser.add_argument("profile", nargs="?", help="a file name in profiles/ without .yaml, e.g. real-data")
    parser.add_argument("trial", nargs="?", help="a trial name of profiles/search.yaml, laid over the profile")
    parser.add_argument("--search", metavar="TRIAL", help=f"a trial of {SEARCH}, laid over the profile that file "
                        "names (what `make search` runs); instead of PROFILE [TRIAL]")
    parser.add_argument("--params", default="params.yaml", help="the base params file (default: params.yaml)")
    parser.add_argument("--list-trials", action="store_true", help="print the trial names of profiles/search.yaml")
    parser.add_argument("--queued", action="store_true", help="for `dvc exp run --queue` (a temp copy of the "
                        "repo): also pass the object store and paths that leave the repo (../shared/...) absolute")
    parser.add_argument("--write", metavar="FILE", help="instead, write the merged params to FILE (for the Airflow "
                        "DAG or Kubeflow, which take a params file)")
    args = parser.parse_args(argv)
    if not args.list_trials and bool(args.profile) == bool(args.search):
        parser.error("name a PROFILE (and optionally a TRIAL), or --search TRIAL")
    try:
        if args.list_trials:
            print("\n".join(search_trials()))
            return 0
        profile, trial = (search_profile(), args.search) if args.search else (args.profile, args.trial)
        overlays = [profile_overlay(profile)] + ([trial_overlay(trial)] if trial else [])
        base = read_yaml(Path(args.params))
        if args.queued:
            overlays.append(queued_paths(merge(base, *overlays), Path.cwd()))
        if args.write:  # a params file carries any value (spaces too), which `-S` overrides cannot
            parse_params(merge(base, *overlays))
            lines = []
        else:
            lines = overrides(base, *overlays)  # also validates the merged params
    except (ProfileError, ParamsError) as exc:
        print(f"profile: {exc}", file=sys.stderr)
        return 2
    if args.write:
        Path(args.write).write_text(yaml.safe_dump(merge(base, *overlays), sort_keys=False))
        print(f"wrote {args.write}", file=sys.stderr)
        return 0
    print("\n".join(f"-S {line}" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
