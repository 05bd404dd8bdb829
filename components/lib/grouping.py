"""Group images that must stay on one side of a split: patient key first, else near-duplicates."""

from __future__ import annotations

import numpy as np


def thumbnail_vectors(thumbnails: np.ndarray) -> np.ndarray:
    """Flatten (N, s, s) thumbnails into zero-mean unit-norm rows, so a dot product is a correlation."""
    flat = thumbnails.reshape(len(thumbnails), -1).astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norms > 1e-6, norms, 1.0)


def near_duplicate_clusters(thumbnails: np.ndarray, threshold: float, block: int = 1024) -> np.ndarray:
    """Cluster ids linking every pair whose thumbnail correlation is >= threshold (single linkage).

    A cluster's id is its first image's index, so ids do not depend on how the graph is traversed.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    vectors = thumbnail_vectors(thumbnails)
    size = len(vectors)
    pairs = [np.nonzero(vectors[start : start + block] @ vectors.T >= threshold) for start in range(0, size, block)]
    rows = np.concatenate([r + start for (r, _), start in zip(pairs, range(0, size, block))] or [np.empty(0, int)])
    cols = np.concatenate([c for _, c in pairs] or [np.empty(0, int)])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    first = np.full(component.max() + 1 if size else 0, size)
    np.minimum.at(first, component, np.arange(size))
    return first[component]


def assign_groups(patient_keys: list[str], thumbnails: np.ndarray, threshold: float) -> list[str]:
    """One group id per image: the patient key where there is one, else a near-duplicate cluster."""
    missing = [i for i, key in enumerate(patient_keys) if not key]
    groups = list(patient_keys)
    if missing:
        clusters = near_duplicate_clusters(thumbnails[missing], threshold)
        for index, cluster in zip(missing, clusters):
            groups[index] = f"dup-{cluster:05d}"
    return groups
