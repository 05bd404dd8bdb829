"""Group images that must stay on one side of a split: patient key first, else near-duplicates."""

from __future__ import annotations

import numpy as np


def thumbnail_vectors(thumbnails: np.ndarray) -> np.ndarray:
    """Flatten (N, s, s) thumbnails into zero-mean unit-norm rows, so a dot product is a correlation."""
    flat = thumbnails.reshape(len(thumbnails), -1).astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norms > 1e-6, norms, 1.0)


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parent = np.arange(size)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_clusters(thumbnails: np.ndarray, threshold: float, block: int = 1024) -> np.ndarray:
    """Cluster ids linking every pair whose thumbnail correlation is >= threshold (single linkage)."""
    vectors = thumbnail_vectors(thumbnails)
    forest = _UnionFind(len(vectors))
    for start in range(0, len(vectors), block):
        sims = vectors[start : start + block] @ vectors.T
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows + start, cols):
            if c > r:
                forest.union(int(r), int(c))
    return np.array([forest.find(i) for i in range(len(vectors))])


def assign_groups(patient_keys: list[str], thumbnails: np.ndarray, threshold: float) -> list[str]:
    """One group id per image: the patient key where there is one, else a near-duplicate cluster."""
    missing = [i for i, key in enumerate(patient_keys) if not key]
    groups = list(patient_keys)
    if missing:
        clusters = near_duplicate_clusters(thumbnails[missing], threshold)
        for index, cluster in zip(missing, clusters):
            groups[index] = f"dup-{cluster:05d}"
    return groups
