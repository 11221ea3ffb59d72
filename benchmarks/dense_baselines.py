"""The dense products behind the comparison, on this CPU: the decoder-shaped GEMM through each library a dense
engine may use, and a dense W_hh's batch recurrence on PyTorch's BLAS against the package's own loop.

1. ``V x H`` times ``H x N`` in fp32 (default: the reference model's decoder, 10,000 x 650, and the 2,048
   positions of ``inference.py``'s 32 x 64 case), through PyTorch's BLAS (MKL in the CPU wheels: what
   ``backend="dense"`` and the sparse engine's dense-matrix paths call), oneDNN (PyTorch's ``mkldnn``
   tensors: not a public API, measured for comparison only) and ONNX Runtime's MLAS (a one-node MatMul graph:
   what ``backend="onnx"`` and the benchmarks' ORT baseline run).
2. ``T`` steps of an LSTM with a dense W_hh (``4H x H``) over B sequences: ``kernels.compiled``'s choice
   between PyTorch's BLAS (``reference.recurrent``) and the compiled loop, at each B, both timed: the data
   behind ``BLAS_BATCH`` and ``WIDE_OWN_BATCH``.

Each in this one process, interleaved per repeat, best of ``--repeats``. Not a test; stop background jobs
first. Example::

    python benchmarks/dense_baselines.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from common import machine, probe_line, speed_probe


def best_ms(fns: dict, repeats: int) -> dict[str, float]:
    """Best wall time in ms of each callable, their calls interleaved (one warm-up each)."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], 1000 * (time.perf_counter() - t))
    return best


def gemm_engines(V: int, H: int, N: int, threads: int) -> dict:
    """name -> callable computing X (N, H) times W (V, H) transposed."""
    gen = torch.Generator().manual_seed(0)
    W, X = torch.randn(V, H, generator=gen), torch.randn(N, H, generator=gen)
    fns = {"PyTorch BLAS (X @ W.T)": lambda: X @ W.t()}
    if torch.backends.mkldnn.is_available():
        Wm, Xm = W.to_mkldnn(), X.to_mkldnn()
        fns["oneDNN (mkldnn tensors)"] = lambda: torch._C._nn.mkldnn_linear(Xm, Wm)
    try:
        import onnx
        import onnxruntime
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return fns
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, H])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [N, V])],
        initializer=[numpy_helper.from_array(W.t().contiguous().numpy(), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = onnxruntime.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    xn = X.numpy()
    fns["ONNX Runtime MLAS (MatMul)"] = lambda: sess.run(None, {"x": xn})
    return fns


def recurrence_rows(H: int, T: int, batches: list[int], threads: int, repeats: int) -> list[tuple]:
    from selfish_deploy.kernels import Matrix, kernels_for, reference
    from selfish_deploy.kernels import compiled

    k = kernels_for("cpu", threads)
    if k.name == "reference":
        return []
    gen = torch.Generator().manual_seed(1)
    w = Matrix(dense=torch.randn(4 * H, H, generator=gen) * (1 / H ** 0.5))
    rows = []
    for B in batches:
        g = torch.randn(4 * H, T * B, generator=gen) * 0.5
        h0, c0 = torch.zeros(H, B), torch.zeros(H, B)
        saved = compiled.BLAS_BATCH
        compiled.BLAS_BATCH = 1 << 30  # the compiled loop at every batch
        try:
            t = best_ms({"blas": lambda: reference.recurrent("lstm", w, None, g, T, B, h0, c0),
                         "ours": lambda: k.recurrent("lstm", w, None, g, T, B, h0, c0)}, repeats)
        finally:
            compiled.BLAS_BATCH = saved
        rows.append((B, t["blas"], t["ours"], "BLAS" if compiled.blas_recurrence(w, B) else "ours"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--shape", type=int, nargs=3, default=[10000, 650, 2048], metavar=("V", "H", "N"))
    ap.add_argument("--hidden", type=int, default=650, help="recurrence: units (W_hh is 4H x H)")
    ap.add_argument("--steps", type=int, default=64, help="recurrence: time steps")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    V, H, N = args.shape
    print(machine())
    probes = [speed_probe()]
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n{V} x {H} times {H} x {N}, fp32, {threads} thread(s): best ms, G multiply-adds/s")
        for name, ms in best_ms(gemm_engines(V, H, N, threads), args.repeats).items():
            print(f"  {name:30s} {ms:8.1f} ms  {V * H * N / ms / 1e6:7.1f} G/s")
        rows = recurrence_rows(args.hidden, args.steps, args.batches, threads, args.repeats)
        if rows:
            print(f"\nLSTM recurrence, dense W_hh {4 * args.hidden} x {args.hidden}, {args.steps} steps, "
                  f"{threads} thread(s): best ms")
            for B, blas, ours, chosen in rows:
                print(f"  B = {B:4d}: BLAS {blas:8.2f}  ours {ours:8.2f}  BLAS / ours {blas / ours:5.2f}  "
                      f"(the engine runs {chosen})")
    probes.append(speed_probe())
    print("\n" + probe_line(probes))


if __name__ == "__main__":
    main()
