"""The recipe bench: a candidate's changes applied and checked, trained on each seed, scored on the test split."""

import json
from pathlib import Path

import numpy as np
import pytest

from components.common.params import CandidateParams
from components.train.recipe_bench import RecipeError, changed_candidate, main, summary
from tests.tiny import tiny_params, write_params

DEFAULT = CandidateParams(architecture="compact_cnn", global_pooling="softmax", epochs=30, filters=[16, 32, 64])


def test_changes_are_read_as_yaml_and_checked_like_params():
    changed = changed_candidate(DEFAULT, ["epochs=20", "filters=[8, 32, 64]", "global_pooling=max", "roi=[]"])
    assert (changed.epochs, changed.filters, changed.global_pooling, changed.roi) == (20, [8, 32, 64], "max", [])
    assert changed_candidate(DEFAULT, []) == DEFAULT


@pytest.mark.parametrize(("change", "says"), [
    ("epoch=20", "a candidate has no 'epoch'; it has .*epochs"),
    ("epochs", "write it as key=value"),
    ("dropout=1.5", r"params refuse:\n  dropout: .*less than 1"),
    ("filters=[8,", "the value is not YAML"),
    ("pooling_temperature=4", "pooling_temperature is the starting scale"),  # a change the recipe would ignore
])
def test_a_change_params_would_refuse_is_refused_with_the_reason(change, says):
    max_pooled = CandidateParams(architecture="compact_cnn", global_pooling="max", epochs=30)
    with pytest.raises(RecipeError, match=says):
        changed_candidate(max_pooled, [change])


def separable_arrays(folder, size: int = 24, per_class: int = 24, seed: int = 0) -> None:
    """Four classes a small CNN tells apart: a bright square in a class's own corner, on noise."""
    rng = np.random.default_rng(seed)
    arrays = folder / "arrays"
    arrays.mkdir(parents=True)
    for split, count in (("train", per_class), ("val", per_class // 2), ("test", per_class // 2)):
        y = np.repeat(np.arange(4), count)
        x = rng.integers(0, 60, (len(y), size, size, 1), dtype=np.uint8)
        for i, label in enumerate(y):
            top, left = divmod(int(label), 2)
            x[i, top * size // 2: top * size // 2 + 8, left * size // 2: left * size // 2 + 8] = 230
        np.save(arrays / f"X_{split}.npy", x)
        np.save(arrays / f"y_{split}.npy", y)
    (arrays / "stats.json").write_text(json.dumps({"train_pixel_mean": 0.2, "train_pixel_variance": 0.06}))


def test_each_seed_is_trained_and_scored_on_the_test_split(tmp_path, capsys):
    raw = tiny_params(tmp_path)
    raw["train"]["candidates"]["paper_cnn"].update(epochs=1, batch_size=16)
    params = write_params(raw, tmp_path / "params.yaml")
    out = tmp_path / "recipe.json"
    argv = ["--params", str(params), "--candidate", "paper_cnn", "--json", str(out)]
    assert main(argv) == 2
    refused = capsys.readouterr().out
    assert "lacks X_train.npy" in refused and "run `make run`" in refused and not out.exists()

    separable_arrays(Path(raw["paths"]["prepared"]))
    assert main([*argv, "--seeds", "0", "1", "--set", "epochs=3", "--set", "learning_rate=0.01"]) == 0
    report = json.loads(out.read_text())
    assert [row["seed"] for row in report["rows"]] == [0, 1]
    assert report["recipe"]["epochs"] == 3 and report["changes"] == ["epochs=3", "learning_rate=0.01"]
    for row in report["rows"]:
        assert row["epochs_run"] == 3 and 1 <= row["best_epoch"] <= 3
        assert set(row["recall"]) == {"Normal", "Cyst", "Tumor", "Stone"}
        assert row["worst_recall"] == min(row["recall"].values())
    assert report["summary"]["mean_macro_f1"] >= 0.9  # the squares are learnt: the score is the model's, not a stub
    assert report["test_images"] == 48 and report["train_images"] == 96
    printed = capsys.readouterr().out
    assert "| seed | test macro-F1 |" in printed and "lowest test macro-F1" in printed and "AVX-512" in printed


def test_the_summary_names_the_weakest_seed():
    rows = [{"seed": 1, "macro_f1": 0.95, "worst_class": "Stone", "worst_recall": 0.9},
            {"seed": 2, "macro_f1": 0.80, "worst_class": "Normal", "worst_recall": 0.6}]
    assert summary(rows) == {"seeds": 2, "min_macro_f1": 0.80, "mean_macro_f1": 0.875, "worst_recall": 0.6,
                             "worst_class": "Normal", "worst_seed": 2}
