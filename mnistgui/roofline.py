"""`mnistgui bench --roofline`: where each convnet layer stands against the machine's limits.

Each kernel of a training step (the convolutions' three products, the pooling and its gradient, the
dense products) runs alone on a batch, as the C backend runs it in training (parts on the kernel
threads, BLAS on one thread), and is set against two measured limits: the float32 matrix-product
ceiling and the memory bandwidth. Bytes are the compulsory traffic, each array read or written once;
a kernel's roofline is min(ceiling, intensity x bandwidth), and "% of roof" says how near it gets.

Two caveats, both making the memory roof generous: the patches im2col copies (about nine times a
layer's input, in blocks of ~3 MB a thread, larger than L2) are not counted, and each kernel reruns
on the same arrays, so the smaller layers' inputs are warm in cache. The last table, from PyTensor's
profiler, is the real step: the same kernels inside it, beside everything else a step runs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

FLOAT = 4  # bytes of a float32


def memory_bandwidth() -> float:
    """GB/s of copying 256 MB between two arrays in parts on the kernel threads (read + write counted)."""
    from .core import ops

    source = np.ones(64 * 2**20, dtype=np.float32)
    target = np.empty_like(source)

    def part(start, stop):
        np.copyto(target[start:stop], source[start:stop])

    ops._kernel_threads.run(part, len(source), blas=False)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        ops._kernel_threads.run(part, len(source), blas=False)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9


def _seconds(call, repeats: int = 7) -> float:
    call()
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class Kernel:
    layer: str
    kernel: str
    seconds: float
    flops: float
    bytes: float
    op: str = ""  # the Op class that runs it in a training step

    def row(self, ceiling_gflops: float, bandwidth_gbs: float) -> dict:
        intensity = self.flops / self.bytes if self.bytes else 0.0
        roof = min(ceiling_gflops, intensity * bandwidth_gbs) if self.flops else None
        gflops = self.flops / self.seconds / 1e9
        return {"layer": self.layer, "kernel": self.kernel, "op": self.op, "ms": self.seconds * 1e3, "gflop": self.flops / 1e9,
                "mb": self.bytes / 1e6, "flop_per_byte": intensity, "gflops": gflops,
                "gbs": self.bytes / self.seconds / 1e9, "roof_gflops": roof,
                "of_roof": gflops / roof if roof else None}


def convnet_kernels(config, batch: int | None = None) -> list[Kernel]:
    """Time every kernel of one training step of `config`'s convnet (channels-last, as in training)."""
    from .core import ops

    batch = batch or config.batch_size
    rng = np.random.default_rng(0)
    kernels: list[Kernel] = []
    side, channels = 28, 1
    with ops.single_threaded_blas():
        for index, filters in enumerate(config.conv_filters, start=1):
            name = f"conv{index}"
            if index == 1:  # 'full': the input padded by 2 on each side
                side += 4
            x = rng.standard_normal((batch, side, side, channels), dtype=np.float32)
            k = rng.standard_normal((filters, channels, 3, 3), dtype=np.float32) * 0.1
            rows = side - 2
            g = rng.standard_normal((batch, rows, rows, filters), dtype=np.float32)
            flops = 2.0 * batch * rows * rows * filters * channels * 9
            x_bytes, g_bytes, k_bytes = x.nbytes, g.nbytes, k.nbytes
            kernels.append(Kernel(name, "forward", _seconds(lambda: ops.corr2d_nhwc(x, k)), flops,
                                  x_bytes + k_bytes + g_bytes, "Corr2dValid"))
            kernels.append(Kernel(name, "weight gradient", _seconds(lambda: ops.corr2d_weights_nhwc(x, g)), flops,
                                  x_bytes + g_bytes + k_bytes, "Corr2dWeights"))
            if index > 1:  # the first layer's input is the image: no gradient is taken for it
                kernels.append(Kernel(name, "input gradient",
                                      _seconds(lambda: ops.corr2d_input_grad_nhwc(g, k, side, side)), flops,
                                      g_bytes + k_bytes + x_bytes, "Corr2dInputGrad"))
            pooled = (rows + 1) // 2
            out_bytes = batch * pooled * pooled * filters * FLOAT
            kernels.append(Kernel(f"pool{index}", "forward", _seconds(lambda: ops.max_pool_nhwc(g)), 0.0,
                                  g_bytes + out_bytes, "MaxPool2x2"))
            gz = rng.standard_normal((batch, pooled, pooled, filters), dtype=np.float32)
            kernels.append(Kernel(f"pool{index}", "gradient", _seconds(lambda: ops.max_pool_grad_nhwc(g, gz)), 0.0,
                                  2 * g_bytes + out_bytes, "MaxPool2x2Grad"))
            side, channels = pooled, filters
        units = config.hidden_sizes[0]
        for name, n_in, n_out in (("hidden", side * side * channels, units), ("output", units, 10)):
            a = rng.standard_normal((batch, n_in), dtype=np.float32)
            w = rng.standard_normal((n_in, n_out), dtype=np.float32)
            g = rng.standard_normal((batch, n_out), dtype=np.float32)
            flops = 2.0 * batch * n_in * n_out
            traffic = FLOAT * (batch * n_in + n_in * n_out + batch * n_out)
            product = ops.matmul_in_parts_numpy if name == "hidden" else np.dot
            op = "MatMulInParts" if name == "hidden" else "Dot"
            kernels.append(Kernel(name, "forward", _seconds(lambda: product(a, w)), flops, traffic, op))
            kernels.append(Kernel(name, "weight gradient", _seconds(lambda: product(a.T, g)), flops, traffic, op))
            kernels.append(Kernel(name, "input gradient", _seconds(lambda: product(g, w.T)), flops, traffic, op))
    return kernels


def step_profile(config, data_dir: str | None, batches: int = 40) -> tuple[float, float, dict[str, float]]:
    """Seconds of a real training step of `config` (median of 3 epochs of `batches` batches), the
    same under PyTensor's profiler (which adds a little per Op), and the profiled step's seconds in
    each Op class."""
    import pytensor

    from .core.data import load_dataset
    from .core.training import EpochResult, Trainer, create_model

    dataset = load_dataset("mnist", data_dir).subset(batches * config.batch_size, 0)

    def timed(trainer) -> float:
        trainer.compile()
        seconds = [item.seconds for _ in range(3) for item in trainer.train(1, evaluate=False)
                   if isinstance(item, EpochResult)]
        return statistics.median(seconds) / trainer.n_batches

    plain = timed(Trainer(create_model(config), dataset))
    pytensor.config.profile = True  # this child process only
    try:
        trainer = Trainer(create_model(config), dataset)
        profiled = timed(trainer)
    finally:
        pytensor.config.profile = False
    profile = trainer._train_fn.profile
    steps = 3 * trainer.n_batches + 1  # compile() makes one step too
    by_class = {cls.__name__: t / steps for cls, t in profile.class_time().items()} if profile else {}
    try:  # PyTensor would print the whole profile at exit
        from pytensor.compile.debug import profiling
    except ImportError:
        from pytensor.compile import profiling
    profiling._atexit_print_list.clear()
    return plain, profiled, by_class


def report(ceiling_gflops: float, data_dir: str | None, config=None) -> dict:
    """The roofline of the notebook's convnet (or `config`'s) under the C backend, whose kernels these are."""
    from .core.config import Config

    config = config or Config.for_model("convnet", backend="c")
    bandwidth = memory_bandwidth()
    rows = [kernel.row(ceiling_gflops, bandwidth) for kernel in convnet_kernels(config)]
    step, profiled, by_class = step_profile(config, data_dir)
    return {"ceiling_gflops": ceiling_gflops, "bandwidth_gbs": bandwidth, "batch": config.batch_size,
            "kernels": rows, "kernels_ms": sum(r["ms"] for r in rows), "step_ms": step * 1e3,
            "profiled_step_ms": profiled * 1e3,
            "step_ms_by_op": {name: t * 1e3 for name, t in sorted(by_class.items(), key=lambda kv: -kv[1])}}


def print_report(result: dict) -> None:
    print(f"\nRoofline of a convnet training step (batch {result['batch']}): ceiling "
          f"{result['ceiling_gflops']:.0f} GFLOP/s, memory bandwidth {result['bandwidth_gbs']:.1f} GB/s "
          f"(machine balance {result['ceiling_gflops'] / result['bandwidth_gbs']:.1f} FLOP/byte); bytes are "
          f"each array read or written once, im2col's patches not counted, inputs warm in cache")
    print("| layer | kernel | ms | GFLOP | MB moved | FLOP/byte | GFLOP/s | GB/s | roof GFLOP/s | % of roof |")
    print("| " + " | ".join(["---"] * 10) + " |")
    for r in result["kernels"]:
        roof = "-" if r["roof_gflops"] is None else f"{r['roof_gflops']:.0f}"
        share = "-" if r["of_roof"] is None else f"{r['of_roof']:.0%}"
        print(f"| {r['layer']} | {r['kernel']} | {r['ms']:.2f} | {r['gflop']:.3f} | {r['mb']:.1f} "
              f"| {r['flop_per_byte']:.1f} | {r['gflops']:.0f} | {r['gbs']:.1f} | {roof} | {share} |")
    alone: dict[str, float] = {}
    for r in result["kernels"]:
        alone[r["op"]] = alone.get(r["op"], 0.0) + r["ms"]
    by_op = result.get("step_ms_by_op") or {}
    print(f"\nWhere a training step goes: {result['step_ms']:.1f} ms, {result['profiled_step_ms']:.1f} ms under "
          f"PyTensor's profiler, whose split by Op this is (ms a step); beside it, the same kernels timed "
          f"alone ({result['kernels_ms']:.1f} ms in all)")
    print("| Op | in a step (ms) | share | alone (ms) |")
    print("| --- | --- | --- | --- |")
    total = sum(by_op.values()) or 1.0
    for name, ms in by_op.items():
        if ms >= 0.05:
            alone_ms = "-" if name not in alone else f"{alone[name]:.2f}"
            print(f"| {name} | {ms:.2f} | {ms / total:.0%} | {alone_ms} |")
