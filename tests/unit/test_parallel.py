"""ordered_map: per-file work on worker processes, in input order, a bounded number in flight."""

import itertools
import math

import pytest

import components.common.parallel as parallel
from components.common.parallel import ordered_map


def square_root(value: float) -> float:
    return math.sqrt(value)


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_paired_and_in_order_across_chunks(workers, monkeypatch):
    monkeypatch.setattr(parallel, "CHUNK", 3)
    items = [float(n * n) for n in range(11)]
    assert list(ordered_map(square_root, iter(items), workers)) == [(v, math.sqrt(v)) for v in items]


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_in_the_function_is_raised_to_the_caller(workers):
    with pytest.raises(ValueError, match="math domain error"):
        list(ordered_map(square_root, [4.0, -1.0, 9.0], workers))


def test_items_are_drawn_a_chunk_at_a_time(monkeypatch):
    monkeypatch.setattr(parallel, "CHUNK", 4)
    drawn = []
    source = (drawn.append(n) or float(n) for n in itertools.count())  # endless: only what is needed is read
    results = ordered_map(square_root, source, workers=2)
    assert [next(results)[0] for _ in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert len(drawn) == 8  # two chunks of 4, not the whole (endless) source
    results.close()
