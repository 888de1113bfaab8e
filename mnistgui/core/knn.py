"""The notebook's nearest-neighbour baseline, done right, and fast.

The notebook's `similarity()` computes `np.sqrt(np.sum(image - images[i]) ** 2)`: it squares the
*sum* of the differences, so a bright and a dark image whose pixel sums happen to match count as
identical. This is exact Euclidean k-NN.

Exact, but not by brute force. For uint8 images (what every caller passes) the search is a filter
and a check:

1. Filter. Both sets are projected (in float64) onto an orthonormal basis of r = 64 principal
   directions of the training set, and one float32 matrix product per chunk of queries gives,
   for every (query, training image) pair, a *lower bound* on the squared distance: a projection
   never lengthens a vector, and the float32 rounding is bounded and subtracted (see
   `_error_coefficient`). 64 dimensions instead of 784 cut the matrix product twelvefold.
2. Check. The candidates with the smallest bounds get their squared distance in exact integer
   arithmetic; the k-th best of those, tau, is an upper bound on the true k-th distance. Every
   other training image whose lower bound is <= tau is checked exactly too. An image whose lower
   bound is > tau is strictly farther than the final k-th neighbour, so it can be neither among
   the k nearest nor tied with one: the result is the exact one, ties included, for every row.

On MNIST a query needs about 40 exact checks for k = 1 and 200 for k = 10. With few queries the
basis is not worth computing and the filter works on the raw pixels (r = 784, the same argument).
Other dtypes take the plain float64 search.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numba
import numpy as np

CHUNK_BYTES = 128 << 20  # float32 bound matrix per chunk of queries
PROJECTED_DIMS = 64
MIN_QUERIES_FOR_PROJECTION = 256  # below these, the basis costs more than it saves
MIN_TRAIN_FOR_PROJECTION = 1024
BASIS_SAMPLE = 6000  # training images the principal directions are estimated from
_CACHE = not getattr(sys, "frozen", False)
_U32 = 2.0**-24  # unit roundoff of float32


def _error_coefficient(dims: int) -> float:
    """e such that |fl32(a32 . b32) - a . b| <= e * ||a|| * ||b|| for float64 vectors a, b of `dims`.

    Rounding a and b to float32 costs a relative 2u + u^2 per product term; any summation order of
    `dims` float32 products (BLAS blocks, vectorises and uses FMA, all covered) errs by at most
    gamma_dims = dims * u / (1 - dims * u) times sum |a_t b_t| (Higham, Accuracy and Stability of
    Numerical Algorithms, eq. 3.5); and sum |a_t b_t| <= ||a|| ||b|| by Cauchy-Schwarz. Together:
    e = gamma + 3u (which covers the cross terms u * gamma as well).
    """
    gamma = dims * _U32 / (1.0 - dims * _U32)
    return gamma + 3.0 * _U32


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _squared_distance(a, b):
    total = 0
    for t in range(a.shape[0]):
        diff = np.int32(a[t]) - np.int32(b[t])
        total += diff * diff
    return total


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _insert(best_d, best_i, count, d, i):
    """Insert (d, i) into the sorted lists best_*[:count] (keeping len(best_d) entries); new count."""
    size = best_d.shape[0]
    if count == size and (d > best_d[size - 1] or (d == best_d[size - 1] and i > best_i[size - 1])):
        return count
    pos = min(count, size - 1)
    while pos > 0 and (best_d[pos - 1] > d or (best_d[pos - 1] == d and best_i[pos - 1] > i)):
        best_d[pos] = best_d[pos - 1]
        best_i[pos] = best_i[pos - 1]
        pos -= 1
    best_d[pos] = d
    best_i[pos] = i
    return min(count + 1, size)


@numba.njit(cache=_CACHE, nogil=True, fastmath=False)
def _search_rows(dots, query_sq, query_err, train_sq, train_norm, queries, train, n_candidates,
                 out_index, out_dist):
    """Exact k nearest for each query (see the module docstring); k = out_index.shape[1].

    The lower bound on the squared distance of (query q, training image j) is
    query_sq[q] + train_sq[j] - 2 dots[q, j] - query_err[q] * train_norm[j] - 1, where
    query_sq + train_sq - 2 a.b is the projected squared distance (<= the true one) computed in
    float64 from exact-enough float64 norms, query_err * train_norm bounds (twice over) the float32
    error of 2 dots (`_error_coefficient`), and the 1 absorbs the float64 rounding (about 1e-5 here).
    """
    n = train.shape[0]
    k = out_index.shape[1]
    cand_lb = np.empty(n_candidates, dtype=np.float64)
    cand_i = np.empty(n_candidates, dtype=np.int64)
    best_d = np.empty(k, dtype=np.int64)
    best_i = np.empty(k, dtype=np.int64)
    bounds = np.empty(n, dtype=np.float64)
    for row in range(queries.shape[0]):
        q = queries[row]
        base = query_sq[row] - 1.0
        err = query_err[row]
        g = dots[row]
        # The n_candidates smallest lower bounds.
        for j in range(n):  # a branch-free loop: vectorised
            bounds[j] = base + train_sq[j] - 2.0 * g[j] - err * train_norm[j]
        n_cand = 0
        worst = np.inf
        for j in range(n):
            if bounds[j] < worst:  # rarely true: keeps the loop tight
                n_cand = _insert(cand_lb, cand_i, n_cand, bounds[j], j)
                if n_cand == n_candidates:
                    worst = cand_lb[n_cand - 1]
        n_best = 0
        for c in range(n_cand):
            j = cand_i[c]
            n_best = _insert(best_d, best_i, n_best, _squared_distance(q, train[j]), j)
        tau = best_d[k - 1]
        threshold = cand_lb[n_cand - 1]
        # Every image outside the candidates has a bound >= threshold; if that exceeds tau, none
        # can be among the k nearest. Otherwise check each image whose bound is <= tau. tau only
        # shrinks as better neighbours turn up, and stays an upper bound on the final k-th distance.
        if n_cand < n and threshold <= tau:
            for j in range(n):
                lb = bounds[j]
                if lb > tau or lb < threshold:  # too far, or already a candidate
                    continue
                if lb == threshold:
                    seen = False
                    for c in range(n_cand):
                        if cand_i[c] == j:
                            seen = True
                    if seen:
                        continue
                n_best = _insert(best_d, best_i, n_best, _squared_distance(q, train[j]), j)
                tau = best_d[k - 1]
        out_index[row] = best_i
        out_dist[row] = best_d


class _Filter:
    """The training set's side of the search: its projection (or raw pixels) and their norms."""

    def __init__(self, train: np.ndarray, project: bool):
        self.train = train
        n, d = train.shape
        self.basis = _principal_basis(train) if project else None
        self.train_f32, self.train_sq = self.transform(train)
        self.train_norm = np.sqrt(self.train_sq)
        # The bound subtracts 2 a.b, so twice the product's error; and twice that again as a safety
        # margin, which costs only a few more exact checks (the margin is ~1e-5 of a distance).
        self.err_coef = 4.0 * _error_coefficient(self.train_f32.shape[1])

    def transform(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 coordinates and float64 squared norms of uint8 images, projected if there is a basis."""
        if self.basis is None:  # integers: float32 holds them exactly, their squares sum exactly
            return images.astype(np.float32), _squared_norms(images).astype(np.float64)
        coords = np.empty((len(images), self.basis.shape[1]), dtype=np.float64)
        for start in range(0, len(images), 4096):  # float64 copies of 4096 images at most
            coords[start : start + 4096] = images[start : start + 4096].astype(np.float64) @ self.basis
        return coords.astype(np.float32), np.einsum("ij,ij->i", coords, coords)


def _squared_norms(images: np.ndarray) -> np.ndarray:
    out = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), 4096):
        as_int = images[start : start + 4096].astype(np.int32)
        out[start : start + 4096] = np.einsum("ij,ij->i", as_int, as_int)
    return out


def _principal_basis(train: np.ndarray) -> np.ndarray:
    """(d, r) float64 orthonormal columns, the leading principal directions of a sample of `train`.

    Any basis gives a valid bound; a good one gives a tight bound. The columns are rescaled by the
    matrix's largest singular value so that the projection provably never lengthens a vector.
    """
    sample = train[:: max(1, len(train) // BASIS_SAMPLE)].astype(np.float32)
    sample -= sample.mean(axis=0)
    scatter = (sample.T @ sample).astype(np.float64)
    _, vectors = np.linalg.eigh(scatter)
    basis = np.ascontiguousarray(vectors[:, ::-1][:, :PROJECTED_DIMS])
    return basis / (np.linalg.norm(basis, 2) * (1.0 + 1e-12))


def _exact_search(queries: np.ndarray, train: np.ndarray, k: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    n, d = train.shape
    project = len(queries) >= MIN_QUERIES_FOR_PROJECTION and n >= MIN_TRAIN_FOR_PROJECTION and d > PROJECTED_DIMS
    flt = _Filter(train, project)
    n_candidates = min(n, 4 * k + 28)
    chunk = max(1, CHUNK_BYTES // (4 * n))
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk]
        block_f32, block_sq = flt.transform(block)
        dots = block_f32 @ flt.train_f32.T
        index = np.empty((len(block), k), dtype=np.int64)
        dist_sq = np.empty((len(block), k), dtype=np.int64)
        _search_rows(dots, block_sq, flt.err_coef * np.sqrt(block_sq), flt.train_sq,
                     flt.train_norm, block, train, n_candidates, index, dist_sq)
        yield start, index, np.sqrt(dist_sq.astype(np.float64))


def _float64_search(queries: np.ndarray, train: np.ndarray, k: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Brute force in float64, for inputs that are not uint8 images."""
    queries = queries.astype(np.float64)
    train = train.astype(np.float64)
    train_sq = np.einsum("ij,ij->i", train, train)
    chunk = max(1, (256 << 20) // (8 * len(train)))
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


def iter_nearest(queries: np.ndarray, train: np.ndarray, k: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For each chunk of queries: (first query's index, indices (m, k) into `train`, distances (m, k)).

    Neighbours come nearest first; equal distances resolve to the earlier training example.
    """
    queries = queries.reshape(len(queries), int(np.prod(queries.shape[1:])))  # -1 fails on empty arrays
    train = train.reshape(len(train), int(np.prod(train.shape[1:])))
    k = min(k, len(train))
    if not len(queries):
        return
    if k < 1:  # no training set (or k = 0): no neighbours
        yield 0, np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0))
        return
    if queries.dtype == np.uint8 and train.dtype == np.uint8:
        yield from _exact_search(np.ascontiguousarray(queries), np.ascontiguousarray(train), k)
    else:
        yield from _float64_search(queries, train, k)


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
