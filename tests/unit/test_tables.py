"""The one table formatter: Markdown for reports, padded plain text for the terminal."""

import pytest

from components.common.tables import text_table


def test_markdown_table_has_a_rule_and_one_line_per_row_with_cells_as_str():
    table = text_table(["name", "n"], [["a", 1], ["bb", 2.5]])
    assert table == "| name | n |\n|---|---|\n| a | 1 |\n| bb | 2.5 |"
    assert text_table(["x"], []) == "| x |\n|---|"


def test_plain_table_pads_columns_to_the_widest_cell_and_strips_trailing_blanks():
    lines = text_table(["version", "notes"], [["v10", ""], ["v2", "forced: ticket 42"]], style="plain").splitlines()
    assert lines == ["version  notes", "v10", "v2       forced: ticket 42"]
    assert text_table(["a", "bbb"], [], style="plain") == "a  bbb"


def test_an_unknown_style_is_refused():
    with pytest.raises(ValueError, match="unknown table style 'html'"):
        text_table(["a"], [["b"]], style="html")
