"""Recipe bench: python -m components.train.recipe_bench — a candidate's recipe on several seeds, scored on test.

A recipe that scores 0.96 on one seed and 0.75 on the next is not a recipe to ship: the default's changes
(pooling, epochs, filters) are judged on several seeds. This trains the candidate from the params file, with any
`--set key=value` changes to it, once per seed on the prepared arrays of the last run (`make run` first): the
train split, the validation split for early stopping, as `components.train` does. It scores each model on the
held-out test split and prints, per seed, test macro-F1, every class's recall, the worst one, the epoch kept and
seconds per epoch, then the lowest and mean macro-F1. Nothing is logged to MLflow and no stage output changes.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import yaml
from pydantic import ValidationError

from components.common.console import quiet_runtime
from components.common.params import CandidateParams, Params, ParamsError, error_lines, load_params
from components.common.tables import text_table
from components.lib.host import host_line

log = logging.getLogger("bench-recipe")


class RecipeError(Exception):
    """A recipe or its inputs that cannot be benched, with the reason a person can act on."""


def changed_candidate(candidate: CandidateParams, changes: list[str]) -> CandidateParams:
    """The candidate with each `key=value` (value read as YAML: 20, max, [8, 32, 64], null) applied and checked."""
    fields = candidate.model_dump(exclude_unset=True)  # what params set: validators judge explicit values
    for change in changes:
        key, sep, text = change.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set {change!r}: write it as key=value, e.g. epochs=20")
        if key not in CandidateParams.model_fields:
            raise RecipeError(f"--set {change!r}: a candidate has no {key!r}; it has "
                              f"{', '.join(sorted(CandidateParams.model_fields))}")
        try:
            fields[key] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {change!r}: the value is not YAML ({exc.__class__.__name__})") from None
    try:
        return CandidateParams.model_validate(fields)
    except ValidationError as exc:
        raise RecipeError(f"--set gives a candidate params refuse:\n{error_lines(exc)}") from None


def load_arrays(prepared: Path):
    """(SplitArrays of train/val, test images, test labels) memory-mapped from the prepared arrays."""
    from components.train.__main__ import load_split_arrays

    arrays = prepared / "arrays"
    missing = [f"{kind}_{split}.npy" for split in ("train", "val", "test") for kind in ("X", "y")
               if not (arrays / f"{kind}_{split}.npy").is_file()]
    if missing or not (arrays / "stats.json").is_file():
        raise RecipeError(f"{arrays} lacks {', '.join(missing) or 'stats.json'}: run `make run` (or the preprocess "
                          "stage) first")
    return load_split_arrays(arrays), np.load(arrays / "X_test.npy", mmap_mode="r"), np.load(arrays / "y_test.npy")


def score_seed(name: str, candidate: CandidateParams, params: Params, data, x_test: np.ndarray, y_test: np.ndarray,
               seed: int) -> dict:
    """Train the candidate on one seed and score it on the test split."""
    from components.lib.metrics import classification_metrics
    from components.lib.training import train_candidate

    result = train_candidate(name, candidate, params.augment, data, len(params.classes), seed, callbacks=[],
                             verbose=0, runtime=params.train.runtime)
    probabilities = np.asarray(result.model.predict(np.asarray(x_test), batch_size=64, verbose=0))
    scores = classification_metrics(np.asarray(y_test), probabilities, params.classes)
    recalls = {c: round(v["recall"], 3) for c, v in scores["per_class"].items()}
    worst = min(recalls, key=recalls.get)
    epochs_run = len(next(iter(result.history.values()), []))
    return {"seed": seed, "macro_f1": round(scores["macro_f1"], 3), "recall": recalls, "worst_class": worst,
            "worst_recall": recalls[worst], "best_epoch": result.best_epoch, "epochs_run": epochs_run,
            "seconds": round(result.seconds, 1), "seconds_per_epoch": round(result.seconds / max(epochs_run, 1), 2)}


def summary(rows: list[dict]) -> dict:
    """The lowest and mean test macro-F1 over the seeds, and the worst class recall any seed gave."""
    f1s = [row["macro_f1"] for row in rows]
    worst = min(rows, key=lambda row: row["worst_recall"])
    return {"seeds": len(rows), "min_macro_f1": min(f1s), "mean_macro_f1": round(statistics.fmean(f1s), 3),
            "worst_recall": worst["worst_recall"], "worst_class": worst["worst_class"], "worst_seed": worst["seed"]}


def table(rows: list[dict], classes: list[str]) -> str:
    """One Markdown row per seed."""
    header = ["seed", "test macro-F1", *(f"recall {c}" for c in classes), "best epoch / run", "s / epoch"]
    return text_table(header, [[r["seed"], f"{r['macro_f1']:.3f}", *(f"{r['recall'][c]:.2f}" for c in classes),
                                f"{r['best_epoch']} / {r['epochs_run']}", f"{r['seconds_per_epoch']:.1f}"]
                               for r in rows])


def run(args: argparse.Namespace) -> dict:
    """Bench the recipe on every seed; the report `main` prints and writes."""
    try:
        params = load_params(args.params)
    except ParamsError as exc:
        raise RecipeError(str(exc)) from None
    if args.candidate not in params.train.candidates:
        raise RecipeError(f"unknown candidate {args.candidate!r}; {args.params} lists {sorted(params.train.candidates)}")
    candidate = changed_candidate(params.train.candidates[args.candidate], args.set)
    if candidate.architecture == "ct_resnet152":
        raise RecipeError("ct_resnet152 trains a head on cached backbone features: `make bench-series` benches it")
    from components.train.__main__ import with_loss_weights

    params.train.candidates[args.candidate] = candidate  # the train stage's loss weights follow the changed recipe
    data, x_test, y_test = load_arrays(Path(params.paths.prepared))
    data = with_loss_weights(data, params, args.candidate)
    rows = []
    for seed in args.seeds:
        started = time.perf_counter()
        rows.append(score_seed(args.candidate, candidate, params, data, x_test, y_test, seed))
        log.info("seed %d: test macro-F1 %.3f, worst recall %s %.2f (%.0f s)", seed, rows[-1]["macro_f1"],
                 rows[-1]["worst_class"], rows[-1]["worst_recall"], time.perf_counter() - started)
    return {"candidate": args.candidate, "changes": args.set, "host": host_line(),
            "classes": params.classes, "train_images": len(data.y_train), "test_images": len(y_test), "rows": rows,
            "summary": summary(rows),
            "recipe": candidate.model_dump()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="e.g. python -m components.train.recipe_bench --seeds 1 2 3 --set epochs=20 "
                                            "--set global_pooling=max")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--candidate", default="compact_cnn", help="a key of train.candidates (default compact_cnn)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds (default 1 2 3)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change one field of the candidate (YAML value); repeat for more")
    parser.add_argument("--json", type=Path, default=Path("reports/bench/recipe.json"), help="where the rows go")
    args = parser.parse_args(argv)
    quiet_runtime()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [bench-recipe] %(message)s", datefmt="%H:%M:%S")
    try:
        report = run(args)
    except RecipeError as exc:
        print(f"bench-recipe: {exc}")
        return 2
    print(f"\n{args.candidate}{' with ' + ', '.join(args.set) if args.set else ''}: {report['train_images']} training "
          f"and {report['test_images']} test images; {report['host']}\n")
    print(table(report["rows"], report["classes"]))
    s = report["summary"]
    print(f"\nlowest test macro-F1 {s['min_macro_f1']:.3f}, mean {s['mean_macro_f1']:.3f} over {s['seeds']} seed(s); "
          f"worst recall {s['worst_class']} {s['worst_recall']:.2f} (seed {s['worst_seed']})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
