"""The GX split check fails when a group or an exact duplicate straddles the split."""

import pandas as pd

from components.preprocess.split_check import audit_table, check_split, failures


def manifest(rows):
    return pd.DataFrame(rows, columns=["key", "group", "split", "sha256"])


GOOD = [("a", "g1", "train", "h1"), ("b", "g1", "train", "h2"), ("c", "g2", "test", "h3"), ("d", "g3", "val", "h4")]


def test_grouped_split_passes():
    assert check_split(manifest(GOOD)).success


def test_straddling_group_fails_and_is_named():
    rows = GOOD + [("e", "g1", "test", "h5")]
    outcome = check_split(manifest(rows))
    assert not outcome.success
    assert failures(outcome, manifest(rows)) == ["1 group value(s) on more than one side of the split: g1"]


def test_duplicate_across_splits_fails():
    rows = GOOD + [("e", "g9", "val", "h1")]  # same bytes as a train image, in another group
    outcome = check_split(manifest(rows))
    assert not outcome.success
    assert any("sha256" in m and "h1" in m for m in failures(outcome, manifest(rows)))


def test_audit_counts():
    table = audit_table(manifest(GOOD + [("e", "g1", "test", "h5")]))
    assert table.loc[table["key"] == "a", "group_splits"].item() == 2
