"""Per-file work fanned out to worker processes, results in input order, memory bounded."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

CHUNK = 64  # items in flight to the worker processes at a time


def ordered_map(function: Callable[[Item], Result], items: Iterable[Item],
                workers: int = 1) -> Iterator[tuple[Item, Result]]:
    """(item, function(item)) for each item, in order; on `workers` processes when more than one.

    `function` must be picklable (a module-level function or a partial of one). Items are drawn from `items`
    CHUNK at a time, so a lazy iterable of large payloads (file bytes) is never held whole in memory. An
    exception raised by `function` is raised here, as in a plain loop.
    """
    if workers <= 1:
        yield from ((item, function(item)) for item in items)
        return
    from concurrent.futures import ProcessPoolExecutor

    source = iter(items)
    with ProcessPoolExecutor(workers) as pool:
        while batch := list(islice(source, CHUNK)):
            yield from zip(batch, pool.map(function, batch, chunksize=max(1, CHUNK // (4 * workers))))
