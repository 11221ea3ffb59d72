"""ctypes bindings of the compiled CPU kernels (csrc/cpu/api.cpp), with the same signatures as reference.py.

Every call checks shapes, dtypes and contiguity before handing raw pointers to C, so a wrong argument is a
Python exception, never memory corruption. Outputs may be passed in (``out=``) for tests that poison them.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import reference
from .matrix import VALUE_TYPES, Matrix, sell_sigma

BLAS_COLUMNS = 8  # a dense matrix (density 1.0) times 8+ columns is a GEMM: PyTorch's BLAS beats any kernel of ours
# ... except in the recurrence, whose per-step GEMMs are small: ours measured 1.36x faster at batch 8 (the
# reference model's W_hh, 2 threads, one process, 2,048 columns), 0.71-1.18x at 16-64, 0.45x at 128.
BLAS_BATCH = 16
# ... and on CPUs with AVX-512, where the batch recurrence's pairs of gate rows run 32 columns in 16-lane vectors
# (matrix.h, dot_block2_32_wide), ours again from 32 sequences up: a dense W_hh (2,600 x 650), 64 steps on 2
# threads of an AMD EPYC (Zen 5), BLAS / ours 0.49 at 16 sequences, 1.49 at 32, 1.32 at 64, 1.16 at 128, 1.19
# at 256 (`benchmarks/dense_baselines.py`; RESULTS.md, "Zen 5"). LSTM, GRU and RNN layers only (RHN and ON-LSTM
# are not measured). Measured on Zen 5 only, so capped below 128 sequences, where the 8-lane loop ran 0.45x
# BLAS on Zen 4 (which splits 512-bit FMAs in two) and Zen 5 gains least (1.16-1.19x).
WIDE_OWN_BATCH = (32, 128)
# A recurrence at batch 1 (one W_hh times one column, T times over) on a matrix this dense or more uses the
# dense batch-1 copy instead of SELL-8: its zeros cost less than SELL's per-entry index loads, and the one
# matrix stays in cache across the steps. `benchmarks/kernels_ab.py --baseline dense-batch1-off` (reference
# model, 2 threads): the 2,000-step trunk 1.57x faster at density 0.33, 1.18x at 0.2; at 0.1 SELL is faster.
# A generation step keeps SELL: its working set is every matrix, and dense copies there made it 0.8x as fast.
# The same bits either way.
DENSE_BATCH1 = 0.15
# On CPUs with AVX-512, a batch-1 recurrence on a sparse matrix gets the block-permute copy instead (matrix.h,
# bp_*), whatever its density: one permute per 16 entries instead of SELL's loads and shuffles, the same bits.
# `benchmarks/kernels_ab.py` (reference model, 2 threads, Zen 4): the 2,000-token trunk 1.49x faster than
# SELL-8 at density 0.1; 1.56x and 1.19x faster than the dense copy at 0.2 and 0.33. In gate blocks it
# replaces SELL-8 for generation steps and 2-4 columns too (the step 1.12-1.18x faster; memory: RESULTS.md). Off:
# SELL-8 or the dense copy as above (for A/B runs: `--baseline block-permute-off`).
BLOCK_PERMUTE = True

CELLS = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
INDEX_BITS = {torch.uint16: 16, torch.int32: 32}


def blas_recurrence(w_hh: Matrix, B: int) -> bool:
    """Whether an LSTM/GRU/RNN recurrence of ``B`` sequences on ``w_hh`` runs on PyTorch's BLAS (dense
    matrices from ``BLAS_BATCH`` sequences up; on AVX-512 CPUs not within ``WIDE_OWN_BATCH``)."""
    if w_hh.is_sparse or B < BLAS_BATCH:
        return False
    lo, hi = WIDE_OWN_BATCH
    return not (lo <= B < hi and has_avx512())


class SdMatrix(ctypes.Structure):
    _fields_ = [("rows", ctypes.c_int64), ("cols", ctypes.c_int64), ("layout", ctypes.c_int32),
                ("index_bits", ctypes.c_int32), ("value_type", ctypes.c_int32), ("sell_dense", ctypes.c_int32),
                ("crow", ctypes.c_void_p), ("col", ctypes.c_void_p), ("val", ctypes.c_void_p),
                ("sell_ptr", ctypes.c_void_p), ("sell_col", ctypes.c_void_p), ("sell_val", ctypes.c_void_p),
                ("sell_block", ctypes.c_int64), ("sell_perm", ctypes.c_void_p), ("sell_sigma", ctypes.c_int64),
                ("bp_ptr", ctypes.c_void_p), ("bp_depth", ctypes.c_void_p), ("bp_idx", ctypes.c_void_p),
                ("bp_val", ctypes.c_void_p)]


class SdStackLayer(ctypes.Structure):
    _fields_ = [("w_ih", ctypes.POINTER(SdMatrix)), ("proj_bias", ctypes.c_void_p), ("w_hh", ctypes.POINTER(SdMatrix)),
                ("cell_bias", ctypes.c_void_p)]


class SdStack(ctypes.Structure):
    _fields_ = [("cell", ctypes.c_int32), ("layers", ctypes.c_int32), ("encoder", ctypes.POINTER(SdMatrix)),
                ("table", ctypes.c_void_p), ("layer", ctypes.POINTER(SdStackLayer)),
                ("decoder", ctypes.POINTER(SdMatrix)), ("decoder_bias", ctypes.c_void_p)]


class SdRhnLayer(ctypes.Structure):
    _fields_ = [("w", ctypes.POINTER(SdMatrix)), ("proj_bias", ctypes.c_void_p), ("depth", ctypes.c_int32),
                ("reserved", ctypes.c_int32), ("r", ctypes.POINTER(SdMatrix)), ("bias", ctypes.POINTER(ctypes.c_void_p))]


class SdOnlstmLayer(ctypes.Structure):
    _fields_ = [("w_ih", ctypes.POINTER(SdMatrix)), ("bias", ctypes.c_void_p), ("w_hh", ctypes.POINTER(SdMatrix)),
                ("scale", ctypes.c_float), ("chunk", ctypes.c_int32)]


class SdOnlstm(ctypes.Structure):
    _fields_ = [("layers", ctypes.c_int32), ("reserved", ctypes.c_int32), ("encoder", ctypes.POINTER(SdMatrix)),
                ("layer", ctypes.POINTER(SdOnlstmLayer)), ("decoder", ctypes.POINTER(SdMatrix)),
                ("decoder_bias", ctypes.c_void_p)]


class SdRhn(ctypes.Structure):
    _fields_ = [("layers", ctypes.c_int32), ("reserved", ctypes.c_int32), ("encoder", ctypes.POINTER(SdMatrix)),
                ("layer", ctypes.POINTER(SdRhnLayer)), ("decoder", ctypes.POINTER(SdMatrix)),
                ("decoder_bias", ctypes.c_void_p)]


def _check_decoder(decoder: Matrix | None, bias: torch.Tensor | None) -> None:
    if decoder is not None:
        _check(bias, "decoder_bias", (decoder.rows,))


def _decoder_ptr(decoder: Matrix | None):
    """The one-call steps' decoder: its C view, or a null pointer (the trunk only)."""
    return ctypes.pointer(struct(decoder)) if decoder is not None else ctypes.POINTER(SdMatrix)()


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _check(t: torch.Tensor, name: str, shape: tuple, dtype=torch.float32) -> None:
    if t.device.type != "cpu" or t.dtype != dtype or tuple(t.shape) != tuple(shape) or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous CPU {dtype} tensor of shape {tuple(shape)}, got "
                         f"{t.device} {t.dtype} {tuple(t.shape)} contiguous={t.is_contiguous()}")


def _cols(x: torch.Tensor, name: str, rows: int) -> int:
    """X (rows, N) with unit column stride; returns its row stride (``ld``)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 or x.shape[0] != rows or (
            x.shape[1] > 1 and x.stride(1) != 1):
        raise ValueError(f"{name}: expected CPU float32 ({rows}, N) with unit column stride, got "
                         f"{x.device} {x.dtype} {tuple(x.shape)} strides {x.stride()}")
    return x.stride(0) if x.shape[0] > 1 else max(1, x.shape[1])


@functools.cache
def has_avx512() -> bool:
    """Whether the loaded library runs the AVX-512 block-permute products on this CPU (once per process, as the
    library's own choice of instruction set)."""
    from .loader import load

    lib, _ = load()
    return lib is not None and bool(lib.sd_has_avx512())


def struct(w: Matrix, block_rows: int | None = None, recurrence: bool = False) -> SdMatrix:
    """The C view of ``w``, with its batch-1 copy in blocks of ``block_rows`` rows (default: all rows; 0: none,
    for ops that never take one column at a time): SELL-8; for a batch-1 ``recurrence``, with ``BLOCK_PERMUTE``
    on an AVX-512 CPU, SELL-8 and the block-permute copy, else on a matrix of density ``DENSE_BATCH1`` or more
    the dense copy. In gate blocks (``block_rows`` < rows: a recurrent layer's W_hh or W_ih, used by
    recurrences and generation steps at 1-4 columns) on such a CPU, the block-permute copy alone, whatever the
    use: it serves those products faster than SELL-8, in 1.2-1.9x its bytes (the reference model's W_hh at
    density 0.33-0.05)."""
    block_rows = w.rows if block_rows is None else block_rows
    gates = 0 < block_rows < w.rows
    bp = bool(block_rows) and (recurrence or gates) and w.is_sparse and BLOCK_PERMUTE and has_avx512()
    dense1 = (bool(block_rows) and recurrence and w.is_sparse and not bp
              and w.nnz >= DENSE_BATCH1 * w.rows * w.cols)
    key = (block_rows, dense1, bp)
    if key not in w._struct:
        if w.device.type != "cpu":
            raise ValueError("compiled CPU kernels need CPU weights")
        if w.is_sparse:
            if w.values.dtype not in VALUE_TYPES or w.col.dtype not in INDEX_BITS:
                raise ValueError(f"unsupported CSR dtypes {w.col.dtype}/{w.values.dtype}")
            if dense1:
                ptr, col, val, perm = None, None, w.dense_batch1(block_rows).data_ptr(), None
            elif bp and gates:  # no SELL copy: the positions' order only
                ptr, col, val, perm = None, None, None, w.sell_perm(block_rows).data_ptr()
            else:
                ptr, col, val, perm = [t.data_ptr() for t in w.sell(block_rows)] if block_rows else [None] * 4
            bps = [t.data_ptr() for t in w.block_permute(block_rows)] if bp else [None] * 4
            w._struct[key] = SdMatrix(w.rows, w.cols, 0, INDEX_BITS[w.col.dtype], VALUE_TYPES[w.values.dtype],
                                      int(dense1), w.crow.data_ptr(), w.col.data_ptr(), w.values.data_ptr(), ptr,
                                      col, val, block_rows, perm, sell_sigma(w.rows, block_rows) if block_rows else 8,
                                      *bps)
        else:
            w._struct[key] = SdMatrix(w.rows, w.cols, 1, 0, 0, 0, None, None, w.dense.data_ptr(), None,
                                      None, None, 0, None, 8)
    return w._struct[key]


class CompiledKernels:
    """The library's four ops. ``threads`` is the OpenMP team size of every call."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        i64, vp, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        sp = ctypes.POINTER(SdMatrix)
        lib.sd_spmm.argtypes = [sp, vp, i64, i64, vp, vp, i64, i32]
        lib.sd_embed.argtypes = [sp, vp, i64, vp, i64]
        lib.sd_recurrent.argtypes = [i32, sp, vp, vp, i64, i32, i64, i64, vp, vp, vp, i64, i32]
        lib.sd_decoder.argtypes = [sp, vp, vp, i64, i64, vp, vp, vp, vp, vp, i32]
        lib.sd_rhn_recurrent.argtypes = [sp, i32, vp, vp, i64, i64, i64, vp, vp, i64, i32]
        for f in (lib.sd_spmm, lib.sd_embed, lib.sd_recurrent, lib.sd_decoder, lib.sd_rhn_recurrent):
            f.restype = ctypes.c_int
        lib.sd_stack_step.argtypes = [ctypes.POINTER(SdStack), i64, vp, vp, vp, vp, vp, i32]
        lib.sd_stack_step.restype = ctypes.c_int
        lib.sd_onlstm_recurrent.argtypes = [sp, ctypes.c_float, vp, i64, i64, i64, i64, vp, vp, vp, i64, i32]
        lib.sd_onlstm_recurrent.restype = ctypes.c_int
        lib.sd_rhn_step.argtypes = [ctypes.POINTER(SdRhn), i64, vp, vp, vp, i32]
        lib.sd_onlstm_step.argtypes = [ctypes.POINTER(SdOnlstm), i64, vp, vp, vp, vp, vp, i32]
        lib.sd_onlstm_step.restype = ctypes.c_int
        lib.sd_rhn_step.restype = ctypes.c_int
        lib.sd_set_min_work.argtypes = [ctypes.c_double]
        lib.sd_has_avx512.restype = ctypes.c_int
        lib.sd_logsumexp_rows.argtypes = [vp, i64, i64, i64, vp, i32]
        self.threads = 1
        self._rhn_args: dict[tuple, tuple] = {}  # the C arrays of an RHN layer's matrices and biases, per layer

    def set_min_work(self, work: float) -> None:
        """Multiply-adds per thread below which a call uses fewer threads (process-wide; 0: always all)."""
        self.lib.sd_set_min_work(work)

    @property
    def name(self) -> str:
        extra = ", avx512 block-permute" if BLOCK_PERMUTE and has_avx512() else ""
        return f"compiled-cpu ({self.isa}{extra})"

    @property
    def isa(self) -> str:
        return self.lib.sd_isa().decode()

    @property
    def build(self) -> str:
        return self.lib.sd_build().decode()

    def cpu_features(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self.lib.sd_cpu_features(buf, 256)
        return buf.value.decode()

    @staticmethod
    def _ok(code: int, op: str) -> None:
        if code != 0:
            raise ValueError(f"{op}: unsupported matrix layout or dtype")

    def spmm(self, w: Matrix, x: torch.Tensor, bias: torch.Tensor | None = None, out: torch.Tensor | None = None):
        if not w.is_sparse and x.shape[-1] >= BLAS_COLUMNS:
            return reference.spmm(w, x, bias)
        ldx = _cols(x, "x", w.cols)
        n = x.shape[1]
        if bias is not None:
            _check(bias, "bias", (w.rows,))
        out = torch.empty(w.rows, n) if out is None else out
        _check(out, "out", (w.rows, n))
        self._ok(self.lib.sd_spmm(ctypes.byref(struct(w)), _ptr(x), ldx, n, _ptr(bias), _ptr(out), max(n, 1),
                                  self.threads), "spmm")
        return out

    def embed(self, w: Matrix, ids: torch.Tensor, out: torch.Tensor | None = None):
        _check(ids, "ids", (ids.numel(),), torch.int64)
        n = ids.numel()
        out = torch.empty(w.cols, n) if out is None else out
        _check(out, "out", (w.cols, n))
        self._ok(self.lib.sd_embed(ctypes.byref(struct(w, 0)), _ptr(ids), n, _ptr(out), max(n, 1)), "embed")
        return out

    def recurrent(self, cell: str, w_hh: Matrix, b_hh: torch.Tensor | None, g: torch.Tensor, T: int, B: int,
                  h: torch.Tensor, c: torch.Tensor | None, out: torch.Tensor | None = None, g_rows: bool = False):
        H = w_hh.cols
        if blas_recurrence(w_hh, B):
            return reference.recurrent(cell, w_hh, b_hh, g, T, B, h, c, g_rows=g_rows)
        if w_hh.rows != GATES[cell] * H:
            raise ValueError(f"{cell}: W_hh has {w_hh.rows} rows, expected {GATES[cell]} x {H}")
        if g_rows:  # (T*B, G*H): column n's gates in row n
            _check(g, "g", (T * B, w_hh.rows))
            ldg = w_hh.rows
        else:
            ldg = _cols(g, "g", w_hh.rows)
            if g.shape[1] < T * B:
                raise ValueError(f"g has {g.shape[1]} columns, expected T*B = {T * B}")
        h = h.clone()
        _check(h, "h", (H, B))
        if cell == "lstm":
            c = c.clone()
            _check(c, "c", (H, B))
        if cell == "gru":
            _check(b_hh, "b_hh", (w_hh.rows,))
        out = torch.empty(H, T * B) if out is None else out
        _check(out, "out", (H, T * B))
        if T * B:
            self._ok(self.lib.sd_recurrent(CELLS[cell], ctypes.byref(struct(w_hh, H, recurrence=B == 1)),
                                           _ptr(b_hh if cell == "gru" else None), _ptr(g), ldg, int(g_rows), T, B,
                                           _ptr(h), _ptr(c if cell == "lstm" else None), _ptr(out),
                                           max(T * B, 1), self.threads), "recurrent")
        return out, h, (c if cell == "lstm" else None)

    def rhn_recurrent(self, rs: list[Matrix], biases: list[torch.Tensor | None], g: torch.Tensor, T: int, B: int,
                      s: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        kinds = {(r.is_sparse, r.col.dtype if r.is_sparse else None, r.values.dtype if r.is_sparse else None)
                 for r in rs}
        if len(kinds) > 1 or (not rs[0].is_sparse and B >= BLAS_BATCH):  # mixed types; dense GEMMs: BLAS's
            return reference.rhn_recurrent(rs, biases, g, T, B, s)
        H = rs[0].cols
        for l, r in enumerate(rs):
            if (r.rows, r.cols) != (2 * H, H):
                raise ValueError(f"rhn: R_{l} is {r.rows} x {r.cols}, expected {2 * H} x {H}")
            if l:
                _check(biases[l], f"bias {l}", (2 * H,))
        ldg = _cols(g, "g", 2 * H)
        if g.shape[1] < T * B:
            raise ValueError(f"g has {g.shape[1]} columns, expected T*B = {T * B}")
        s = s.clone()
        _check(s, "s", (H, B))
        out = torch.empty(H, T * B) if out is None else out
        _check(out, "out", (H, T * B))
        key = tuple(id(r) for r in rs) + tuple(b.data_ptr() for b in biases[1:]) + (B == 1,)
        if key not in self._rhn_args:  # kept with the objects they point into
            mats = (SdMatrix * len(rs))(*[struct(r, H, recurrence=B == 1) for r in rs])
            ptrs = (ctypes.c_void_p * len(rs))(None, *[b.data_ptr() for b in biases[1:]])
            self._rhn_args[key] = (mats, ptrs, list(rs), list(biases))
        mats, ptrs = self._rhn_args[key][:2]
        if T * B:
            self._ok(self.lib.sd_rhn_recurrent(mats, len(rs), ptrs, _ptr(g), ldg, T, B, _ptr(s), _ptr(out),
                                               max(T * B, 1), self.threads), "rhn_recurrent")
        return out, s

    def onlstm_recurrent(self, w_hh: Matrix, scale: float, g: torch.Tensor, T: int, B: int, h: torch.Tensor,
                         c: torch.Tensor, chunk: int, out: torch.Tensor | None = None):
        H = w_hh.cols
        if not w_hh.is_sparse and B >= BLAS_BATCH:  # dense GEMMs: BLAS's
            return reference.onlstm_recurrent(w_hh, scale, g, T, B, h, c, chunk)
        if chunk <= 0 or H % chunk or w_hh.rows != 2 * (H // chunk) + 4 * H:
            raise ValueError(f"on_lstm: W_hh is {w_hh.rows} x {H}, expected {2 * (H // max(chunk, 1)) + 4 * H} "
                             f"rows for chunks of {chunk}")
        ldg = _cols(g, "g", w_hh.rows)
        if g.shape[1] < T * B:
            raise ValueError(f"g has {g.shape[1]} columns, expected T*B = {T * B}")
        h, c = h.clone(), c.clone()
        _check(h, "h", (H, B))
        _check(c, "c", (H, B))
        out = torch.empty(H, T * B) if out is None else out
        _check(out, "out", (H, T * B))
        if T * B:
            self._ok(self.lib.sd_onlstm_recurrent(ctypes.byref(struct(w_hh, recurrence=B == 1)), scale, _ptr(g), ldg,
                                                  T, B, chunk, _ptr(h), _ptr(c), _ptr(out), max(T * B, 1),
                                                  self.threads), "onlstm_recurrent")
        return out, h, c

    def logsumexp_rows(self, logits: torch.Tensor) -> torch.Tensor:
        """``torch.logsumexp(logits, dim=-1)`` of (N, V) logits with unit column stride, in one kernel pass per
        row: 4.6x PyTorch's on 2,048 x 10,000 (`benchmarks/logsumexp.py`)."""
        if logits.dim() != 2 or logits.dtype != torch.float32 or logits.device.type != "cpu" or (
                logits.shape[1] > 1 and logits.stride(1) != 1):
            raise ValueError(f"logits: expected CPU float32 (N, V) with unit column stride, got {logits.dtype} "
                             f"{tuple(logits.shape)} strides {logits.stride()}")
        n, v = logits.shape
        lse = torch.empty(n)
        if n:
            self.lib.sd_logsumexp_rows(_ptr(logits), n, v, max(logits.stride(0), 1), _ptr(lse), self.threads)
        return lse

    def decoder(self, w: Matrix, bias: torch.Tensor | None, x: torch.Tensor, targets: torch.Tensor | None = None,
                full: bool = False, top1: bool = False, out: dict | None = None) -> dict[str, torch.Tensor]:
        if not w.is_sparse and x.shape[-1] >= BLAS_COLUMNS:  # PyTorch's GEMM, then our log-sum-exp
            return reference.decoder(w, bias, x, targets, full, top1, logsumexp=self.logsumexp_rows)
        ldx = _cols(x, "x", w.cols)
        n = x.shape[1]
        if bias is not None:
            _check(bias, "bias", (w.rows,))
        want = {"target_lp": ((n,), torch.float32, targets is not None), "argmax": ((n,), torch.int64, top1),
                "max_lp": ((n,), torch.float32, top1), "logprobs": ((n, w.rows), torch.float32, full)}
        res = {}
        for k, (shape, dtype, asked) in want.items():
            if asked:
                res[k] = out[k] if out and k in out else torch.empty(shape, dtype=dtype)
                _check(res[k], k, shape, dtype)
        if targets is not None:
            _check(targets, "targets", (n,), torch.int64)
        if n:
            self._ok(self.lib.sd_decoder(ctypes.byref(struct(w)), _ptr(bias), _ptr(x), ldx, n, _ptr(targets),
                                         _ptr(res.get("target_lp")), _ptr(res.get("argmax")),
                                         _ptr(res.get("max_lp")), _ptr(res.get("logprobs")), self.threads),
                     "decoder")
        return res


class StackStep:
    """One generation step at batch 1 of a stacked model, in one call: layer by layer the fused cell (with
    ``W_ih x`` or the first layer's input-table row), then the decoder's log-softmax. The same sums in the same
    order as ``embed``/``spmm``/``recurrent``/``decoder`` at one column, so the same numbers bit for bit.

    ``layers``: per layer ``(w_ih, proj_bias, w_hh, cell_bias)`` as ``recurrent`` takes them (cell_bias: GRU's
    b_hh, else None); ``table``: (V, G*H0) or None; ``decoder`` None: the trunk only (for a head the call does
    not fuse, as MoS: the caller runs it on the last layer's h)."""

    def __init__(self, kernels: CompiledKernels, cell: str, encoder: Matrix, layers, table: torch.Tensor | None,
                 decoder: Matrix | None, decoder_bias: torch.Tensor | None):
        self.kernels, self.lstm = kernels, cell == "lstm"
        self.widths = [w_hh.cols for _, _, w_hh, _ in layers]
        self.vocab = decoder.rows if decoder is not None else 0
        for w_ih, proj_bias, w_hh, cell_bias in layers:
            H = w_hh.cols
            if w_hh.rows != GATES[cell] * H or w_ih.rows != w_hh.rows:
                raise ValueError(f"{cell}: W_ih/W_hh have {w_ih.rows}/{w_hh.rows} rows, expected {GATES[cell]} x {H}")
            if proj_bias is not None:
                _check(proj_bias, "proj_bias", (w_ih.rows,))
            if cell == "gru":
                _check(cell_bias, "cell_bias", (w_hh.rows,))
        if table is not None:
            _check(table, "table", (encoder.rows, layers[0][0].rows))
        _check_decoder(decoder, decoder_bias)
        # what the C structures point to stays referenced here
        self._keep = [table, decoder_bias, *(t for layer in layers for t in (layer[1], layer[3]) if t is not None)]
        self._layers = (SdStackLayer * len(layers))(*[
            SdStackLayer(ctypes.pointer(struct(w_ih, 0 if (k == 0 and table is not None) else w_hh.cols)),  # the
                         _ptr(proj_bias), ctypes.pointer(struct(w_hh, w_hh.cols)),  # table replaces layer 0's W_ih
                         _ptr(cell_bias if cell == "gru" else None))
            for k, (w_ih, proj_bias, w_hh, cell_bias) in enumerate(layers)])
        self._stack = SdStack(CELLS[cell], len(layers), ctypes.pointer(struct(encoder, 0)), _ptr(table),
                              self._layers, _decoder_ptr(decoder), _ptr(decoder_bias))
        self._arr = ctypes.c_void_p * len(layers)
        self._shapes = [(1, H) for H in self.widths]

    def usable(self, layer_states) -> bool:
        """Whether a state is in the layout the call reads: per layer (1, H) contiguous fp32 CPU tensors.
        (Checked at every step: the cheapest attribute tests first, ~0.4 µs a tensor.)"""
        f32 = torch.float32
        for s, shape in zip(layer_states, self._shapes):
            for t in (s if type(s) is tuple else (s,)):
                if t.dtype is not f32 or not t.is_cpu or t.shape != shape or not t.is_contiguous():
                    return False
        return True

    def __call__(self, token: int, layer_states) -> tuple[torch.Tensor, list]:
        """Log-probabilities (V,) after ``token`` (None without a decoder) and the new per-layer state, ``h`` or
        ``(h, c)``, each (1, H)."""
        arr = self._arr
        new_h = [torch.empty(shape) for shape in self._shapes]
        if self.lstm:
            new_c = [torch.empty(shape) for shape in self._shapes]
            h_in = arr(*[s[0].data_ptr() for s in layer_states])
            c_in = arr(*[s[1].data_ptr() for s in layer_states])
            c_out = arr(*[t.data_ptr() for t in new_c])
        else:
            h_in = arr(*[s.data_ptr() for s in layer_states])
            c_in = c_out = None
        h_out = arr(*[t.data_ptr() for t in new_h])
        out = torch.empty(self.vocab) if self.vocab else None
        self.kernels._ok(self.kernels.lib.sd_stack_step(ctypes.byref(self._stack), token, h_in, c_in, h_out, c_out,
                                                       _ptr(out), self.kernels.threads), "stack_step")
        return out, (list(zip(new_h, new_c)) if self.lstm else new_h)


class RhnStep:
    """One generation step at batch 1 of an RHN model, in one call: per layer ``W x + proj_bias`` and the L
    micro-steps, then the decoder's log-softmax. The same sums in the same order as ``embed``/``spmm``/
    ``rhn_recurrent``/``decoder`` at one column, so the same numbers bit for bit.

    ``layers``: per layer ``(w, proj_bias, rs, biases)`` as ``RHNSparseTrunk`` holds them (``biases[0]`` None)."""

    def __init__(self, kernels: CompiledKernels, encoder: Matrix, layers, decoder: Matrix | None,
                 decoder_bias: torch.Tensor | None):
        self.kernels = kernels
        self.widths = [rs[0].cols for _, _, rs, _ in layers]
        self.vocab = decoder.rows if decoder is not None else 0
        keep, c_layers = [decoder_bias], []
        for w, proj_bias, rs, biases in layers:
            H = rs[0].cols
            if w.rows != 2 * H or any((r.rows, r.cols) != (2 * H, H) for r in rs):
                raise ValueError(f"rhn: W has {w.rows} rows and R_l are {[(r.rows, r.cols) for r in rs]}, "
                                 f"expected {2 * H} and {2 * H} x {H}")
            _check(proj_bias, "proj_bias", (2 * H,))
            for b in biases[1:]:
                _check(b, "bias", (2 * H,))
            mats = (SdMatrix * len(rs))(*[struct(r, H) for r in rs])
            ptrs = (ctypes.c_void_p * len(rs))(None, *[b.data_ptr() for b in biases[1:]])
            keep += [mats, ptrs, proj_bias, *biases[1:]]  # what the C structures point to stays referenced here
            c_layers.append(SdRhnLayer(ctypes.pointer(struct(w, H)), _ptr(proj_bias), len(rs), 0, mats, ptrs))
        _check_decoder(decoder, decoder_bias)
        self._layers = (SdRhnLayer * len(layers))(*c_layers)
        self._keep = keep
        self._rhn = SdRhn(len(layers), 0, ctypes.pointer(struct(encoder, 0)), self._layers, _decoder_ptr(decoder),
                          _ptr(decoder_bias))
        self._arr = ctypes.c_void_p * len(layers)
        self._shapes = [(1, H) for H in self.widths]

    def usable(self, layer_states) -> bool:
        """Whether a state is in the layout the call reads: per layer one (1, H) contiguous fp32 CPU tensor."""
        f32 = torch.float32
        for t, shape in zip(layer_states, self._shapes):
            if type(t) is tuple or t.dtype is not f32 or not t.is_cpu or t.shape != shape or not t.is_contiguous():
                return False
        return True

    def __call__(self, token: int, layer_states) -> tuple[torch.Tensor, list]:
        """Log-probabilities (V,) after ``token`` and the new per-layer state, each (1, H)."""
        new = [torch.empty(shape) for shape in self._shapes]
        out = torch.empty(self.vocab) if self.vocab else None
        arr = self._arr
        self.kernels._ok(self.kernels.lib.sd_rhn_step(ctypes.byref(self._rhn), token,
                                                     arr(*[t.data_ptr() for t in layer_states]),
                                                     arr(*[t.data_ptr() for t in new]), _ptr(out),
                                                     self.kernels.threads), "rhn_step")
        return out, new


class OnlstmStep:
    """One generation step at batch 1 of an ON-LSTM model, in one call: per layer both products, the gates,
    the cumax and the cells, then the decoder's log-softmax. The same operations in the same order as
    ``embed``/``spmm``/``onlstm_recurrent``/``decoder`` at one column, so the same numbers bit for bit.

    ``layers``: per layer ``(w_ih, bias, w_hh)`` as the ON-LSTM ``SparseTrunk`` holds them."""

    def __init__(self, kernels: CompiledKernels, encoder: Matrix, layers, scale: float, chunk: int,
                 decoder: Matrix | None, decoder_bias: torch.Tensor | None):
        self.kernels = kernels
        self.widths = [w_hh.cols for _, _, w_hh in layers]
        self.vocab = decoder.rows if decoder is not None else 0
        for w_ih, bias, w_hh in layers:
            H = w_hh.cols
            if H % chunk or w_hh.rows != 2 * (H // chunk) + 4 * H or w_ih.rows != w_hh.rows:
                raise ValueError(f"on_lstm: W_ih/W_hh have {w_ih.rows}/{w_hh.rows} rows, expected "
                                 f"{2 * (H // chunk) + 4 * H} for chunks of {chunk}")
            _check(bias, "bias", (w_hh.rows,))
        _check_decoder(decoder, decoder_bias)
        self._keep = [decoder_bias, *(b for _, b, _ in layers)]  # what the C structures point to
        self._layers = (SdOnlstmLayer * len(layers))(*[
            SdOnlstmLayer(ctypes.pointer(struct(w_ih)), _ptr(bias), ctypes.pointer(struct(w_hh)), scale, chunk)
            for w_ih, bias, w_hh in layers])
        self._model = SdOnlstm(len(layers), 0, ctypes.pointer(struct(encoder, 0)), self._layers,
                               _decoder_ptr(decoder), _ptr(decoder_bias))
        self._arr = ctypes.c_void_p * len(layers)
        self._shapes = [(1, H) for H in self.widths]

    def usable(self, layer_states) -> bool:
        """Whether a state is in the layout the call reads: per layer (h, c), each (1, H) contiguous fp32 CPU."""
        f32 = torch.float32
        for s, shape in zip(layer_states, self._shapes):
            if type(s) is not tuple:
                return False
            for t in s:
                if t.dtype is not f32 or not t.is_cpu or t.shape != shape or not t.is_contiguous():
                    return False
        return True

    def __call__(self, token: int, layer_states) -> tuple[torch.Tensor, list]:
        """Log-probabilities (V,) after ``token`` and the new per-layer state ``(h, c)``, each (1, H)."""
        arr = self._arr
        new_h = [torch.empty(shape) for shape in self._shapes]
        new_c = [torch.empty(shape) for shape in self._shapes]
        out = torch.empty(self.vocab) if self.vocab else None
        self.kernels._ok(self.kernels.lib.sd_onlstm_step(
            ctypes.byref(self._model), token, arr(*[s[0].data_ptr() for s in layer_states]),
            arr(*[s[1].data_ptr() for s in layer_states]), arr(*[t.data_ptr() for t in new_h]),
            arr(*[t.data_ptr() for t in new_c]), _ptr(out), self.kernels.threads), "onlstm_step")
        return out, list(zip(new_h, new_c))
