"""The notebook's nearest-neighbour baseline, done right.

The notebook's `similarity()` computes `np.sqrt(np.sum(image - images[i]) ** 2)`: it squares the
*sum* of the differences, so a bright and a dark image whose pixel sums happen to match count as
identical. This is exact Euclidean k-NN: ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2 in float64 (exact
for uint8 pixels), vectorised as one matrix product per chunk of queries so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CHUNK_BYTES = 256 << 20  # distance matrix per chunk of queries


def iter_nearest(queries: np.ndarray, train: np.ndarray, k: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For each chunk of queries: (first query's index, indices (m, k) into `train`, distances (m, k)).

    Neighbours come nearest first; equal distances resolve to the earlier training example.
    """
    queries = queries.reshape(len(queries), -1).astype(np.float64)
    train = train.reshape(len(train), -1).astype(np.float64)
    k = min(k, len(train))
    train_sq = np.einsum("ij,ij->i", train, train)
    chunk = max(1, CHUNK_BYTES // (8 * max(1, len(train))))
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk]
        # ||q||^2 is the same for every candidate of a query, so it does not change the ranking.
        partial = train_sq[None, :] - 2.0 * (block @ train.T)
        if k < partial.shape[1]:
            top = np.argpartition(partial, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(partial.shape[1]), partial.shape).copy()
        order = np.lexsort((top, np.take_along_axis(partial, top, axis=1)), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        block_sq = np.einsum("ij,ij->i", block, block)
        dist_sq = np.take_along_axis(partial, top, axis=1) + block_sq[:, None]
        yield start, top, np.sqrt(np.maximum(dist_sq, 0.0))


def nearest_neighbours(queries: np.ndarray, train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n, k) into `train` of each query's k nearest, nearest first, and their distances."""
    parts = list(iter_nearest(queries, train, k))
    if not parts:
        return np.zeros((0, min(k, len(train))), dtype=np.int64), np.zeros((0, min(k, len(train))))
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def vote(neighbour_labels: np.ndarray, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Vote shares (n, n_classes) and the winning class; a tie goes to the class of the nearer neighbour."""
    n, k = neighbour_labels.shape
    probs = np.zeros((n, n_classes), dtype=np.float32)
    rows = np.repeat(np.arange(n), k)
    np.add.at(probs, (rows, neighbour_labels.ravel()), 1.0)
    # A tiny bonus that decreases with rank breaks ties by nearness without changing a majority.
    bonus = np.zeros_like(probs)
    np.maximum.at(bonus, (rows, neighbour_labels.ravel()), np.tile((k - np.arange(k)) * 1e-3 / k, n))
    winners = np.argmax(probs + bonus, axis=1)
    return probs / k, winners
