"""The fast kNN search against brute force in exact integer arithmetic: identical, ties included."""

import numpy as np
import pytest

from mnistgui.core import knn
from mnistgui.core.knn import iter_nearest, nearest_neighbours


def _brute_force(queries: np.ndarray, train: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact squared distances, ranked by (distance, index): the definition of the answer.

    Computed in float64 from integer pixels: every product and every partial sum is an integer
    below 2^53, so each is represented exactly and no step rounds, in any summation order.
    """
    q = queries.reshape(len(queries), -1).astype(np.float64)
    t = train.reshape(len(train), -1).astype(np.float64)
    assert q.max(initial=0) ** 2 * q.shape[1] * 4 < 2**53
    sq = ((q * q).sum(1)[:, None] + (t * t).sum(1)[None, :] - 2.0 * (q @ t.T)).astype(np.int64)
    order = np.argsort(sq, axis=1, kind="stable")[:, :k]  # stable: equal distances keep index order
    return order, np.sqrt(np.take_along_axis(sq, order, axis=1).astype(np.float64))


@pytest.fixture(params=["projected", "raw pixels"])
def filter_kind(request, monkeypatch):
    """Run each test through both filters: the principal-direction bound and the raw-pixel one."""
    if request.param == "projected":
        monkeypatch.setattr(knn, "MIN_QUERIES_FOR_PROJECTION", 1)
        monkeypatch.setattr(knn, "MIN_TRAIN_FOR_PROJECTION", 1)
    else:
        monkeypatch.setattr(knn, "MIN_QUERIES_FOR_PROJECTION", 10**9)
    return request.param


def _assert_identical(queries, train, k):
    indices, distances = nearest_neighbours(queries, train, k)
    expected_indices, expected_distances = _brute_force(queries, train, k)
    assert indices.shape == expected_indices.shape
    mismatched = np.flatnonzero((indices != expected_indices).any(axis=1))
    assert mismatched.size == 0, f"rows {mismatched[:10]} differ, e.g. {indices[mismatched[0]]} vs {expected_indices[mismatched[0]]}"
    assert np.array_equal(distances, expected_distances)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_real_mnist_matches_brute_force(mnist, filter_kind, k):
    rng = np.random.default_rng(k)
    queries = mnist.test_images[rng.choice(len(mnist.test_images), 300, replace=False)]
    train = mnist.train_images[rng.choice(len(mnist.train_images), 6000, replace=False)]
    _assert_identical(queries, train, k)


def test_projection_is_used_for_many_queries_and_matches(mnist, monkeypatch):
    """The default thresholds: 300 queries against 6000 images take the projected filter."""
    built = []
    original = knn._Filter.__init__

    def spy(self, train, project):
        built.append(project)
        original(self, train, project)

    monkeypatch.setattr(knn._Filter, "__init__", spy)
    _assert_identical(mnist.test_images[:300], mnist.train_images[:6000], 5)
    _assert_identical(mnist.test_images[:20], mnist.train_images[:6000], 5)
    assert built == [True, False]


def test_duplicates_resolve_to_the_earliest_copy(mnist, filter_kind):
    train = mnist.train_images[:3000].reshape(3000, -1).copy()
    queries = mnist.test_images[:40].reshape(40, -1)
    # Each query is in the training set three times, at scattered places; so are its neighbours.
    for i, query in enumerate(queries):
        train[[2999 - i, 1500 + i, 10 + 7 * i]] = query
    train[2000:2100] = train[100:200]
    indices, distances = nearest_neighbours(queries, train, 3)
    assert np.array_equal(indices[:, 0], [10 + 7 * i for i in range(40)])
    assert np.all(distances == 0)
    _assert_identical(queries, train, 4)


def test_exact_ties_go_to_the_earlier_image(filter_kind):
    rng = np.random.default_rng(0)
    train = np.zeros((2000, 784), dtype=np.uint8)
    # Every image: one pixel of 200 somewhere, so all lie at exactly 200 from the all-zero query,
    # and at one of a few exact distances from a one-pixel query.
    train[np.arange(2000), rng.integers(0, 784, 2000)] = 200
    queries = np.zeros((30, 784), dtype=np.uint8)
    queries[np.arange(1, 30), rng.integers(0, 784, 29)] = rng.integers(1, 255, 29)
    indices, distances = nearest_neighbours(queries[:1], train, 7)
    assert indices[0].tolist() == list(range(7)) and np.all(distances == 200)
    _assert_identical(queries, train, 7)


def test_near_ties_at_the_largest_norms(filter_kind):
    """Squared distances of ~50 million that differ by 1: where float32 rounding is largest."""
    rng = np.random.default_rng(1)
    n = 1500
    train = np.full((n, 784), 255, dtype=np.uint8)
    holes = rng.integers(0, 784, (n, 3))
    train[np.arange(n)[:, None], holes] = 0
    train[np.arange(n), holes[:, 0]] = rng.integers(0, 3, n)  # 0, 1 or 2: squared norms differ by 1 or 3
    queries = np.zeros((40, 784), dtype=np.uint8)
    queries[20:] = 255
    queries[20:, rng.integers(0, 784, 20)] = 254
    _assert_identical(queries, train, 1)
    _assert_identical(queries, train, 6)


def test_all_zero_images_and_near_copies(mnist, filter_kind):
    train = mnist.train_images[:2500].reshape(2500, -1).copy()
    train[[5, 900, 2400]] = 0
    queries = np.concatenate([np.zeros((3, 784), np.uint8), mnist.test_images[:60].reshape(60, -1)])
    # Near copies of a query one pixel step apart, placed before and after the exact copy.
    rng = np.random.default_rng(2)
    for i in range(3, 20):
        for slot, step in ((40 * i, 1), (40 * i + 1, -1), (40 * i + 2, 0)):
            copy = queries[i].astype(np.int16)
            pixel = rng.integers(0, 784)
            copy[pixel] = np.clip(copy[pixel] + step, 0, 255)
            train[slot] = copy.astype(np.uint8)
    indices, distances = nearest_neighbours(queries[:3], train, 3)
    assert indices.tolist() == [[5, 900, 2400]] * 3 and np.all(distances == 0)
    _assert_identical(queries, train, 1)
    _assert_identical(queries, train, 5)


def test_k_as_large_as_the_training_set_ranks_everything(filter_kind):
    rng = np.random.default_rng(3)
    train = rng.integers(0, 3, (40, 784)).astype(np.uint8)
    train[10] = train[3]
    _assert_identical(rng.integers(0, 3, (5, 784)).astype(np.uint8), train, 40)
    indices, _ = nearest_neighbours(train[:2], train, 100)  # k beyond the set: all of it
    assert indices.shape == (2, 40)


def test_chunks_cover_every_query_in_order(mnist, monkeypatch):
    monkeypatch.setattr(knn, "CHUNK_BYTES", 4 * 3000 * 7)  # 7 queries a chunk
    queries, train = mnist.test_images[:30], mnist.train_images[:3000]
    starts = []
    for start, indices, _ in iter_nearest(queries, train, 2):
        starts.append(start)
        assert np.array_equal(indices, _brute_force(queries[start : start + len(indices)], train, 2)[0])
    assert starts == [0, 7, 14, 21, 28]


def test_float_inputs_take_the_float64_search_and_agree(mnist):
    queries, train = mnist.test_images[:30], mnist.train_images[:2000]
    fast = nearest_neighbours(queries, train, 3)
    slow = nearest_neighbours(queries.astype(np.float32), train.astype(np.float64), 3)
    assert np.array_equal(fast[0], slow[0])
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-12)


def test_no_queries_or_no_training_set():
    train = np.zeros((5, 784), np.uint8)
    indices, distances = nearest_neighbours(np.zeros((0, 784), np.uint8), train, 3)
    assert indices.shape == (0, 3) and distances.shape == (0, 3)
    indices, _ = nearest_neighbours(np.zeros((2, 784), np.uint8), np.zeros((0, 784), np.uint8), 1)
    assert indices.shape == (2, 0)


def test_error_coefficient_bounds_real_float32_products():
    """The bound the filter relies on holds, with room, for the worst inputs: all 255s."""
    rng = np.random.default_rng(4)
    a = np.full((50, 784), 255.0) - rng.integers(0, 2, (50, 784))
    b = np.full((300, 784), 255.0) - rng.integers(0, 2, (300, 784))
    exact = a @ b.T  # integers below 2^53: exact in float64
    approx = (a.astype(np.float32) @ b.astype(np.float32).T).astype(np.float64)
    bound = knn._error_coefficient(784) * np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None]
    assert np.all(np.abs(approx - exact) <= bound)
    assert np.abs(approx - exact).max() > 0  # float32 really does round here


def test_sixty_exact_ties_at_large_norms(filter_kind):
    """60 images at exactly the same distance from each query, their float32 products rounded
    differently: only the error margin keeps the earliest one (the tie rule's answer) in."""
    rng = np.random.default_rng(5)
    queries = rng.integers(150, 246, (20, 784)).astype(np.uint8)
    n = 1200
    owner = np.arange(n) % len(queries)  # each image is a near copy of one query
    train = queries[owner].astype(np.int16)
    pixels = np.argsort(rng.random((n, 784)), axis=1)[:, :2]  # two distinct pixels per image
    train[np.arange(n)[:, None], pixels] += rng.choice([-10, 10], (n, 2))
    train = train.astype(np.uint8)
    _assert_identical(queries, train, 1)
    _assert_identical(queries, train, 3)
