"""ReLU + dropout as one Op, and uniform draws in parts: the same numbers as the graph they replace."""

import time

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from pytensor.gradient import verify_grad

from mnistgui.core import backend, layers, ops
from mnistgui.core.config import Config
from mnistgui.core.dropout_ops import PARALLEL_MIN_UNITS, ReluDropout, ReluDropoutGrad, relu_dropout
from mnistgui.core.layers import PARALLEL_MIN_DRAWS, RngChain, dropout, uniform_float32
from mnistgui.core.training import Trainer, create_model


def _unfused(x, u, retain):
    """layers.dropout(relu(x)) as it was written before the Op: PyTensor's own loops."""
    kept = pt.cast(pt.lt(u, retain), x.dtype)
    return pt.maximum(x, 0.0) * kept * np.float32(1.0 / retain)


def _awkward_inputs(shape, retain, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    flat[:8] = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.0]  # the edges of max(x, 0) and its gradient
    flat[8:12] = 1.0  # units whose draws sit on the threshold: kept or not shows in y
    flat[16:20] = 3e38  # scale * x overflows: a dropped unit is inf * 0 = NaN in the graph's order
    u = rng.random(shape, dtype=np.float32)
    u.reshape(-1)[8:12] = [np.float32(retain), np.nextafter(np.float32(retain), 0), 0.0, np.nextafter(np.float32(1), 0)]
    u.reshape(-1)[16:20] = [0.0, 0.99, 0.0, 0.99]
    g = rng.standard_normal(shape).astype(np.float32)
    g.reshape(-1)[12:16] = [np.inf, np.nan, -0.0, -2.0]
    g.reshape(-1)[20:22] = 3e38
    return x, u, g


def _same_bits(a, b):
    """Equal, NaN where NaN, and the same sign on every zero."""
    np.testing.assert_array_equal(a, b)
    numbers = ~np.isnan(b)
    np.testing.assert_array_equal(np.signbit(a[numbers]), np.signbit(b[numbers]))


def _forward_and_gradient(make_output, shape, mode=None):
    x, u, g = (pt.tensor(dtype="float32", shape=(None,) * len(shape)) for _ in range(3))
    y = make_output(x, u)
    gx = pytensor.grad(None, x, known_grads={y: g})
    return pytensor.function([x, u, g], [y, gx], mode=mode)


@pytest.mark.parametrize("retain", [0.8, 0.5, 0.9])  # float32(0.9) lies below 0.9: a draw equal to it is kept
@pytest.mark.parametrize("shape", [(3, 7), (128, 625), (128, 15, 15, 32)])
def test_fused_op_gives_the_unfused_graphs_numbers(shape, retain):
    """Bit for bit where 1 / retain is a float32 (the notebook's 0.2 and 0.5 dropout); else within one
    unit in the last place: PyTensor's C loop multiplies by the constant's decimal digits in double
    precision, the Op by the float32 constant."""
    inputs = _awkward_inputs(shape, retain)
    c = backend.compile_mode("c")
    fused = _forward_and_gradient(lambda x, u: relu_dropout(x, u, retain), shape, c)
    unfused = _forward_and_gradient(lambda x, u: _unfused(x, u, retain), shape, c)
    assert any(isinstance(n.op, ReluDropout) for n in fused.maker.fgraph.apply_nodes)
    assert any(isinstance(n.op, ReluDropoutGrad) for n in fused.maker.fgraph.apply_nodes)
    (y, gx), (y_ref, gx_ref) = fused(*inputs), unfused(*inputs)
    if float(np.float32(1 / retain)) == 1 / retain:
        _same_bits(y, y_ref)
        _same_bits(gx, gx_ref)
    else:
        for a, b in ((y, y_ref), (gx, gx_ref)):
            finite = np.isfinite(b)
            np.testing.assert_array_equal(np.isfinite(a), finite)
            np.testing.assert_array_max_ulp(a[finite], b[finite], maxulp=1)
    kept = inputs[1].astype(np.float64) < retain  # as the unfused graph compares: in double precision
    dropped = ~kept & np.isfinite(inputs[0]) & (np.abs(inputs[0]) < 1e38)
    assert 0 < dropped.mean() < 1 and np.all(y[dropped] == 0) and np.all(y[kept & (inputs[0] > 0)] > 0)
    on_threshold = y.reshape(-1)[8:10]  # u = float32(retain), the float32 below it
    assert (on_threshold > 0).tolist() == [float(np.float32(retain)) < retain, True]


def test_a_large_layer_is_split_over_the_kernel_threads(monkeypatch):
    monkeypatch.setenv("MNISTGUI_THREADS", "2")
    parts = []
    real_run = ops._kernel_threads.run

    def run(work, n, blas=True):
        def noted(start, stop):
            parts.append((start, stop))
            return work(start, stop)
        return real_run(noted, n, blas)

    monkeypatch.setattr(ops._kernel_threads, "run", run)
    small, large = (16, PARALLEL_MIN_UNITS // 32), (32, PARALLEL_MIN_UNITS // 32)
    for shape in (small, large):
        x, u, g = _awkward_inputs(shape, 0.8)
        _forward_and_gradient(lambda a, b: relu_dropout(a, b, 0.8), shape, backend.compile_mode("c"))(x, u, g)
    # forward and backward of the large layer in two halves of its rows; the small one on this thread alone
    assert sorted(parts) == [(0, 16), (0, 16), (16, 32), (16, 32)]


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.uniform(0.1, 1.0, (4, 6)) * rng.choice([-1.0, 1.0], (4, 6))  # away from the kink at 0
    u = rng.random((4, 6))
    verify_grad(lambda v: relu_dropout(v, pt.constant(u), 0.7), [x], rng=rng, mode=backend.compile_mode("c"))


def test_the_draws_get_no_gradient_and_the_codes_carry_none():
    x, u = pt.matrix(), pt.matrix()
    y, code = ReluDropout(0.5)(x, u)
    assert code.dtype == "uint8"
    with pytest.raises(pytensor.gradient.DisconnectedInputError):
        pytensor.grad(y.sum(), u)
    with pytest.raises(pytensor.gradient.DisconnectedInputError):
        pytensor.grad(pt.cast(code, "float32").sum(), x)


def test_mismatched_draws_or_codes_are_a_clear_error():
    from mnistgui.core.dropout_ops import relu_dropout_backward, relu_dropout_forward

    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="draws of shape"):
        relu_dropout_forward(x, np.ones((4, 2), np.float32), 0.5)
    with pytest.raises(ValueError, match="codes of shape"):
        relu_dropout_backward(x, np.ones((3, 3), np.uint8), 0.5)
    with pytest.raises(TypeError, match="uint8 codes"):
        ReluDropoutGrad(0.5)(pt.matrix(), pt.matrix())


@pytest.mark.parametrize("retain", [0.8, 0.9])
@pytest.mark.parametrize("name", ["numba", "jax"])
def test_numba_and_jax_run_the_op_as_c_does(name, retain):
    if name == "jax":
        pytest.importorskip("jax")
    shape = (16, 5, 5, 8)
    inputs = _awkward_inputs(shape, retain)
    inputs[0].reshape(-1)[:8] = 0.5  # no NaN or infinities: XLA's maximum need not keep NaN's sign or payload
    inputs[0].reshape(-1)[16:20] = 0.5
    inputs[2].reshape(-1)[12:16] = 1.0
    inputs[2].reshape(-1)[20:22] = 1.0
    expected = _forward_and_gradient(lambda x, u: relu_dropout(x, u, retain), shape, backend.compile_mode("c"))(*inputs)
    run = _forward_and_gradient(lambda x, u: relu_dropout(x, u, retain), shape, mode=backend.compile_mode(name))
    got = run(*inputs)
    ops_used = {type(n.op).__name__ for n in run.maker.fgraph.apply_nodes}
    assert {"ReluDropout", "ReluDropoutGrad"} <= ops_used
    for a, b in zip(got, expected):  # XLA may write 0 where the C code wrote -0: equal, as numbers
        np.testing.assert_array_equal(np.asarray(a), b)


def test_models_fuse_relu_then_dropout_and_nothing_else():
    def fused_nodes(name, **changes):
        model = create_model(Config.for_model(name, backend="c", **changes))
        graph = pytensor.graph.fg.FunctionGraph(outputs=[model.cost])
        return [n.op.retain for n in graph.apply_nodes if isinstance(n.op, ReluDropout)]

    assert sorted(fused_nodes("convnet")) == [0.5, 0.8, 0.8, 0.8]  # three conv layers and the hidden layer
    assert sorted(fused_nodes("dropout_mlp")) == [0.5, 0.5]  # the input pixels' dropout has no ReLU before it
    assert fused_nodes("dropout_mlp", activation="sigmoid") == []
    assert fused_nodes("convnet", conv_dropout=0.0, hidden_dropout=0.0) == []


@pytest.mark.parametrize("name", ["convnet", "dropout_mlp"])
def test_training_history_is_the_unfused_graphs_bit_for_bit(mnist, monkeypatch, name):
    def train():
        config = Config.for_model(name, backend="c", train_size=384, test_size=200, epochs=1, batch_size=128)
        model = create_model(config)
        result = list(Trainer(model, mnist.subset(384, 200)).train())[-1]
        return result, {k: v.get_value() for k, v in model.params.items()}

    fused_result, fused_weights = train()
    monkeypatch.setitem(layers.ACTIVATION_FUNCTIONS, "relu", lambda x: pt.maximum(x, 0.0))  # no tag: unfused
    result, weights = train()
    assert (fused_result.cost, fused_result.train_error, fused_result.test_error) == \
        (result.cost, result.train_error, result.test_error)
    for key in weights:
        np.testing.assert_array_equal(fused_weights[key], weights[key])


# --- draws in parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", ["2", "3", "8"])
@pytest.mark.parametrize("count", [PARALLEL_MIN_DRAWS, PARALLEL_MIN_DRAWS + 1, PARALLEL_MIN_DRAWS + 3, 921_600, 5])
@pytest.mark.parametrize("drawn_before", [0, 1, 2])  # 1: a half of a 64-bit output left over
def test_draws_in_parts_are_numpys_bit_for_bit(monkeypatch, count, drawn_before, threads):
    monkeypatch.setenv("MNISTGUI_THREADS", threads)
    serial, split = np.random.default_rng(7), np.random.default_rng(7)
    serial.random(drawn_before, dtype=np.float32)
    split.random(drawn_before, dtype=np.float32)
    expected = serial.random(size=(count,), dtype=np.float32)
    got = uniform_float32(split, (count,))
    np.testing.assert_array_equal(got, expected)
    assert split.bit_generator.state == serial.bit_generator.state
    np.testing.assert_array_equal(split.random(9, dtype=np.float32), serial.random(9, dtype=np.float32))


def test_draws_in_parts_from_another_bit_generator_are_serial():
    a, b = np.random.Generator(np.random.MT19937(1)), np.random.Generator(np.random.MT19937(1))
    np.testing.assert_array_equal(uniform_float32(a, (PARALLEL_MIN_DRAWS,)), b.random(PARALLEL_MIN_DRAWS, dtype=np.float32))


def test_a_dropout_graphs_stream_continues_as_numpys():
    rng = RngChain(seed=11)
    x = pt.tensor4()
    step = pytensor.function([x], dropout(x, 0.25, rng), updates=[rng.update], mode=backend.compile_mode("c"))
    big = np.ones((128, 16, 16, 8), np.float32)
    assert big.size >= PARALLEL_MIN_DRAWS
    reference = np.random.default_rng(11)
    for _ in range(3):
        kept = step(big) != 0
        np.testing.assert_array_equal(kept, reference.random(big.shape, dtype=np.float32) < 0.75)


def test_a_part_failing_on_the_calling_thread_waits_for_the_others(monkeypatch):
    monkeypatch.setenv("MNISTGUI_THREADS", "2")
    finished = []

    def work(start, stop):
        if stop == 64:
            raise ValueError("last part")
        time.sleep(0.05)
        finished.append(start)

    with pytest.raises(ValueError, match="last part"):
        ops._kernel_threads.run(work, 64, blas=False)
    assert finished == [0]  # the other part had finished before the error came out
