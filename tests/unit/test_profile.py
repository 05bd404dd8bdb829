"""Params profiles: overlays become `dvc exp run -S ++key=value` overrides, checked against Params first."""

import pytest
import yaml

from components.common.params import ParamsError, parse_params
from components.lib.profiles import ProfileError, deep_merge, flatten, overrides, queued_paths
from components.profile.__main__ import main
from tests.tiny import REPO

BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def test_overrides_name_every_leaf_and_parse_back_to_the_merged_params():
    overlay = {"paths": {"source": "../shared/data/kidney-ct"}, "train": {"candidates": {"c": {
        "architecture": "compact_cnn", "filters": [8, 16], "intensity_channels": [0.8]}}}, "leakage": {"cv_folds": 5}}
    lines = overrides(BASE, overlay)
    assert "++paths.source=../shared/data/kidney-ct" in lines
    assert "++train.candidates.c.filters=[8,16]" in lines and "++leakage.cv_folds=5" in lines
    merged = parse_params(deep_merge(BASE, overlay))
    assert merged.train.candidates["c"].filters == [8, 16] and "compact_cnn" in merged.train.candidates


def test_later_overlays_win_and_invalid_results_are_refused_before_dvc_sees_them():
    lines = overrides(BASE, {"leakage": {"cv_folds": 5}}, {"leakage": {"cv_folds": 3}})
    assert [line for line in lines if "cv_folds" in line] == ["++leakage.cv_folds=3"]
    with pytest.raises(ParamsError, match="cv_folds"):
        overrides(BASE, {"leakage": {"cv_folds": -1}})
    with pytest.raises(ProfileError, match="spaces"):
        overrides(BASE, {"paths": {"source": "/data/my export"}})


def test_flatten_keeps_lists_as_leaves():
    assert flatten({"a": {"b": [1, 2], "c": {"d": None}}}) == [("a.b", [1, 2]), ("a.c.d", None)]


def test_shipped_profiles_and_every_search_trial_are_valid():
    search = yaml.safe_load((REPO / "profiles" / "search.yaml").read_text())["trials"]
    profile = yaml.safe_load((REPO / "profiles" / "real-data.yaml").read_text())
    for name, trial in search.items():
        params = parse_params(deep_merge(deep_merge(BASE, profile), trial or {}))
        assert params.leakage.cv_folds == 5, name
        assert params.leakage.candidate in params.train.candidates, name


def test_cli_prints_dash_s_pairs_and_fails_cleanly_on_an_unknown_trial(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["real-data", "t02-compact-balanced"]) == 0
    out = capsys.readouterr().out.split()
    assert out[:2] == ["-S", "~train.candidates.compact_cnn"] and out[3].startswith("++") and len(out) % 2 == 0
    assert main(["real-data", "no-such-trial"]) == 2
    assert "no trial 'no-such-trial'" in capsys.readouterr().err


def test_search_lays_a_trial_over_the_profile_search_yaml_names(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(REPO)
    assert main(["real-data", "t02-compact-balanced"]) == 0
    explicit = capsys.readouterr().out
    assert main(["--search", "t02-compact-balanced"]) == 0
    assert capsys.readouterr().out == explicit  # search.yaml names real-data
    with pytest.raises(SystemExit):
        main(["real-data", "--search", "t02-compact-balanced"])  # one or the other
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "search.yaml").write_text("trials: {t1: {leakage: {cv_folds: 3}}}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--search", "t1"]) == 2
    assert "names no `profile:`" in capsys.readouterr().err


def test_cv_table_lists_trials_oldest_first_with_mean_and_std():
    from components.leakage.table import markdown, trial_rows

    run = lambda name, t, f1: {"name": name, "start_time": t, "tags": {"candidate": "c", "machine": "2 CPU cores"},  # noqa: E731
                               "params": {"leakage.cv_folds": "5"},
                               "metrics": {"cv_macro_f1_mean": f1, "cv_macro_f1_std": 0.05, "cv_seconds": 600.0,
                                           "cv_recall_Stone_mean": 0.5, "cv_recall_Stone_std": 0.1,
                                           "cv_series_macro_f1_mean": f1 + 0.2, "cv_series_macro_f1_std": 0.07}}
    rows = trial_rows([run("t02", 2, 0.7), run("t01", 1, 0.4)], ["Stone", "Tumor"])
    assert [r[0] for r in rows] == ["t01", "t02"]
    assert rows[0][2] == "0.400 ± 0.050" and rows[0][4] == "0.500 ± 0.100" and rows[0][5] == "n/a"
    assert rows[0][6] == "0.600 ± 0.070" and rows[0][7] == "n/a"  # series macro-F1; series accuracy not logged
    assert rows[0][8] == "10 min (2.0/fold)"
    table = markdown(rows, ["Stone", "Tumor"]).splitlines()
    assert table[0].startswith("| trial | candidate | macro-F1") and len(table) == 4
    assert "| series macro-F1 | series accuracy | CV time |" in table[0]


def test_write_gives_a_whole_params_file_for_orchestrators(monkeypatch, tmp_path):
    from components.common.params import load_params

    monkeypatch.chdir(REPO)
    assert main(["real-data", "--write", str(tmp_path / "real.yaml")]) == 0
    params = load_params(tmp_path / "real.yaml")
    assert params.paths.source == "../shared/data/kidney-ct" and params.evaluate.protocol == "cv_refit"
    assert set(params.train.candidates) == {"ct_resnet152"}  # the phantom recipe is removed, not left to train


def test_cv_table_gives_a_trial_that_scored_tta_a_second_row_for_the_same_models():
    from components.leakage.table import trial_rows

    metrics = {"cv_macro_f1_mean": 0.5, "cv_macro_f1_std": 0.1, "cv_tta_macro_f1_mean": 0.55,
               "cv_tta_macro_f1_std": 0.08, "cv_seconds": 300.0}
    run = {"name": "t06", "start_time": 1, "tags": {"candidate": "c"}, "metrics": metrics,
           "params": {"leakage.cv_folds": "5", "leakage.tta": "flip+shift"}}
    rows = trial_rows([run], ["Stone"])
    assert [r[0] for r in rows] == ["t06", "t06 + TTA (flip+shift)"]
    assert rows[0][2] == "0.500 ± 0.100" and rows[1][2] == "0.550 ± 0.080" and rows[1][3] == "n/a"
    assert rows[0][-2] == rows[1][-2] == "5 min (1.0/fold)"
    run["metrics"] |= {"cv_ensemble_macro_f1_mean": 0.6, "cv_ensemble_macro_f1_std": 0.05,
                       "cv_ensemble_tta_macro_f1_mean": 0.62, "cv_ensemble_tta_macro_f1_std": 0.04}
    run["params"]["leakage.ensemble"] = "3"
    rows = trial_rows([run], ["Stone"])
    assert [r[0] for r in rows] == ["t06", "t06 + TTA (flip+shift)", "t06 + ensemble of 3",
                                    "t06 + ensemble of 3 + TTA (flip+shift)"]
    assert rows[3][2] == "0.620 ± 0.040"


def test_recipe_drift_names_changed_knobs_and_reads_missing_ones_as_their_default():
    from components.leakage.table import recipe_drift

    defaults = {"augment.blur": 0.0, "augment.flip": False, "leakage.tta": "none"}
    logged = {"augment.flip": "True", "candidate.dropout": "0.3"}  # logged before `blur` and `tta` existed
    same = {"augment.flip": True, "candidate.dropout": 0.3, "augment.blur": 0.0, "leakage.tta": "flip+shift"}
    assert recipe_drift(logged, same, defaults) == []  # blur at its default; TTA only adds a scored row
    changed = {**same, "augment.blur": 1.0, "candidate.dropout": 0.5}
    assert recipe_drift(logged, changed, defaults) == ["augment.blur: 0.0 -> 1.0", "candidate.dropout: 0.3 -> 0.5"]


def test_cv_table_stars_a_trial_whose_recipe_the_profile_has_changed_since_it_ran(monkeypatch):
    from components.leakage.table import current_recipes, markdown, trial_drift, trial_rows

    monkeypatch.chdir(REPO)
    recipes = current_recipes(REPO / "params.yaml")  # every trial of profiles/search.yaml is valid params
    assert "t02-compact-balanced" in recipes and recipes["t01-paper-cnn"]["candidate.architecture"] == "paper_cnn"
    as_logged = {k: str(v) for k, v in recipes["t02-compact-balanced"].items()}
    metrics = {"cv_macro_f1_mean": 0.5, "cv_macro_f1_std": 0.1, "cv_seconds": 60.0}
    run = lambda name, logged: {"name": name, "start_time": 1, "tags": {}, "metrics": metrics,  # noqa: E731
                                "params": logged}
    fresh = run("t02-compact-balanced", as_logged)
    stale = run("t07-t02-without-intensity-channel", as_logged)  # t07 now drops the channel t02 trained with
    other = run("my-notebook-trial", {})                        # not a trial of search.yaml: not checked
    drift = trial_drift([fresh, stale, other], REPO / "params.yaml")
    assert drift == {"t02-compact-balanced": [],
                     "t07-t02-without-intensity-channel": ["candidate.intensity_channels: [0.8] -> []"]}
    table = markdown(trial_rows([fresh, stale, other], ["Stone"]), ["Stone"], drift)
    assert "| t07-t02-without-intensity-channel* |" in table and "| t02-compact-balanced |" in table
    assert table.splitlines()[-1] == "- t07-t02-without-intensity-channel: candidate.intensity_channels: [0.8] -> []"


def test_a_queued_trial_gets_the_store_and_paths_outside_the_repo_absolute(tmp_path):
    repo = tmp_path / "repo"
    merged = {"paths": {"source": "../shared/data/kidney-ct", "store": "data/store", "prepared": "data/prepared",
                        "models": "/abs/models"}, "leakage": {"cv_folds": 5}}
    assert queued_paths(merged, repo) == {"paths": {"source": str(tmp_path / "shared" / "data" / "kidney-ct"),
                                                    "store": str(repo / "data" / "store")}}
    assert queued_paths({"paths": {"store": "s3://bucket/store", "source": "data/pacs_export"}}, repo) == {}


def test_queued_overrides_carry_the_absolute_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["real-data", "--queued"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"-S ++paths.store={REPO / 'data' / 'store'}" in lines
    assert f"-S ++paths.source={(REPO / '../shared/data/kidney-ct').resolve()}" in lines


def test_a_candidate_set_to_null_is_removed_by_a_tilde_override_and_a_null_scalar_stays():
    overlay = {"train": {"candidates": {"compact_cnn": None, "c": {"architecture": "paper_cnn"}}},
               "leakage": {"candidate": None}}
    lines = overrides(BASE, overlay)
    assert lines[0] == "~train.candidates.compact_cnn"
    assert not any(line.startswith("++train.candidates.compact_cnn") for line in lines)
    assert "++leakage.candidate=null" in lines
    merged = parse_params(deep_merge(BASE, overlay))
    assert list(merged.train.candidates) == ["c"] and merged.leakage.candidate is None


def test_a_profile_laid_again_over_params_it_already_changed_removes_nothing_more(tmp_path, monkeypatch):
    # `dvc exp run` (make real-data) leaves the profile applied to params.yaml, compact_cnn deleted; the benches that
    # run "after make real-data" lay the profile over that file again, and so does a second make real-data
    from components.common.params import load_params
    from components.lib.profile_files import profile_overlay

    monkeypatch.chdir(REPO)
    overlay = profile_overlay("real-data")
    applied = deep_merge(BASE, overlay)
    assert "compact_cnn" not in applied["train"]["candidates"]
    again = overrides(applied, overlay)
    assert not any("compact_cnn" in line for line in again)  # no `~` of a missing key (Hydra refuses it), no null
    assert parse_params(deep_merge(applied, overlay)) == parse_params(applied)
    (tmp_path / "applied.yaml").write_text(yaml.safe_dump(applied))
    assert main(["real-data", "--params", str(tmp_path / "applied.yaml"), "--write", str(tmp_path / "out.yaml")]) == 0
    assert set(load_params(tmp_path / "out.yaml").train.candidates) == {"ct_resnet152"}
    # a null for a key a mapping of scalars lacks is still a value, not a removal
    assert deep_merge({"leakage": {"cv_folds": 5}}, {"leakage": {"candidate": None}}) == {
        "leakage": {"cv_folds": 5, "candidate": None}}
