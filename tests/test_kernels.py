"""Compiled CPU kernels against the PyTorch reference and dense maths, over a grid of shapes, densities,
index and value dtypes, batch sizes and thread counts; outputs are poisoned (NaN) before every call."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from selfish_deploy import kernels
from selfish_deploy.csr import CSR
from selfish_deploy.kernels import Matrix, Reference, kernels_for
from selfish_deploy.masks import random_mask

needs_compiled = pytest.mark.skipif(not kernels.compiled_available(), reason="compiled kernels not built")
TOL = 1e-5
REF = Reference()


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def weight(rows, cols, density, seed, index=torch.uint16, values=torch.float32, empty_row=True, full_row=True,
           scale=1.0):
    """A CSR Matrix and its dense fp32 equivalent (after the values' rounding), with an empty and a full row;
    values N(0, scale^2)."""
    g = torch.Generator().manual_seed(seed)
    mask = random_mask((rows, cols), round(density * rows * cols), g)
    if empty_row and rows > 2:
        mask[1] = False
    if full_row and rows > 2 and density > 0:
        mask[rows - 1] = True
    w = torch.randn(rows, cols, generator=g) * scale * mask
    csr = CSR.from_masked(w, mask, values)
    csr = CSR(csr.crow_indices, csr.col_indices.to(index), csr.values, csr.shape)
    return Matrix(csr=csr), csr.to_dense(torch.float32)


def poisoned(*shape, dtype=torch.float32):
    return torch.full(shape, float("nan"), dtype=dtype) if dtype.is_floating_point else torch.full(shape, -7, dtype=dtype)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def compiled(request):
    """The compiled kernels with 1 or 2 threads, used even on these small matrices."""
    if not kernels.compiled_available():
        pytest.skip("compiled kernels not built")
    k = kernels_for("cpu", request.param)
    k.set_min_work(0)
    yield k
    k.set_min_work(32768)


GRID = [(d, i, v) for d in (0.0, 0.05, 0.33, 1.0) for i in (torch.uint16, torch.int32)
        for v in (torch.float32, torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("density,index,values", GRID)
@pytest.mark.parametrize("n", [1, 3, 4, 64, 150])
def test_spmm(compiled, density, index, values, n):
    w, dense = weight(41, 67, density, seed=n, index=index, values=values)
    x, b = torch.randn(67, n), torch.randn(41)
    want = dense @ x + b[:, None]
    got = compiled.spmm(w, x, b, out=poisoned(41, n))
    assert not got.isnan().any()
    assert rel_err(got, want) < TOL and rel_err(REF.spmm(w, x, b), want) < TOL


def test_spmm_dense_layout_and_strided_input(compiled):
    w = torch.randn(30, 20)
    x = torch.randn(20, 300)[:, 50:250]  # a column slice: row stride 300
    assert rel_err(compiled.spmm(Matrix(dense=w), x, out=poisoned(30, 200)), w @ x) < TOL


@pytest.mark.parametrize("density,index,values", GRID)
def test_embed(compiled, density, index, values):
    w, dense = weight(50, 12, density, seed=3, index=index, values=values)
    ids = torch.tensor([0, 49, 1, 3, 3, 17])  # first and last row, the empty row, a repeat
    got = compiled.embed(w, ids, out=poisoned(12, 6))
    assert torch.equal(got, dense[ids].t()) and torch.equal(REF.embed(w, ids), dense[ids].t())


CELLS = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell,
         "rnn_tanh": lambda i, h: torch.nn.RNNCell(i, h, nonlinearity="tanh"),
         "rnn_relu": lambda i, h: torch.nn.RNNCell(i, h, nonlinearity="relu")}


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("density", [0.0, 0.05, 0.33, 1.0])
@pytest.mark.parametrize("T,B", [(1, 1), (7, 1), (3, 3), (2, 13), (2, 64)])
def test_recurrent_matches_pytorch_cells(compiled, cell, density, T, B):
    """T steps of the fused cell equal PyTorch's own cell (LSTMCell, GRUCell, RNNCell) step by step."""
    torch.manual_seed(T * 100 + B)
    H, I = 20, 9
    ref = CELLS[cell](I, H)
    gates = ref.weight_hh.shape[0] // H
    w_hh, dense = weight(gates * H, H, density, seed=B, values=torch.float16)
    with torch.no_grad():
        ref.weight_hh.copy_(dense)
    x = torch.randn(T, B, I)
    h0, c0 = torch.randn(B, H), torch.randn(B, H)
    with torch.no_grad():
        g = (x.reshape(T * B, I) @ ref.weight_ih.t() + ref.bias_ih).t().contiguous()  # (G*H, T*B)
        b_hh = ref.bias_hh.detach().clone()
        if cell != "gru":
            g += b_hh[:, None]
        h, c, outs = h0, c0, []
        for t in range(T):
            if cell == "lstm":
                h, c = ref(x[t], (h, c))
            else:
                h = ref(x[t], h)
            outs.append(h.t())
    out, h_new, c_new = compiled.recurrent(cell, w_hh, b_hh if cell == "gru" else None, g, T, B, h0.t().contiguous(),
                                           c0.t().contiguous() if cell == "lstm" else None, out=poisoned(H, T * B))
    assert not out.isnan().any()
    assert rel_err(out, torch.cat(outs, 1)) < TOL and rel_err(h_new, h.t()) < TOL
    if cell == "lstm":
        assert rel_err(c_new, c.t()) < TOL
    r_out, r_h, _ = REF.recurrent(cell, w_hh, b_hh if cell == "gru" else None, g, T, B, h0.t().contiguous(),
                                  c0.t().contiguous() if cell == "lstm" else None)
    assert rel_err(r_out, torch.cat(outs, 1)) < TOL
    # the same projections given as rows (T*B, G*H), as the input table holds them: the same bits
    for k in (compiled, REF):
        rows = k.recurrent(cell, w_hh, b_hh if cell == "gru" else None, g.t().contiguous(), T, B, h0.t().contiguous(),
                           c0.t().contiguous() if cell == "lstm" else None, g_rows=True)
        cols = k.recurrent(cell, w_hh, b_hh if cell == "gru" else None, g, T, B, h0.t().contiguous(),
                           c0.t().contiguous() if cell == "lstm" else None)
        assert all(torch.equal(a, b) for a, b in zip(rows, cols) if a is not None), [(a - b).abs().max() for a, b in zip(rows, cols) if a is not None]


@pytest.mark.parametrize("density,index,values", GRID)
@pytest.mark.parametrize("n", [1, 2, 3, 64])
def test_decoder(compiled, density, index, values, n):
    V = 600  # more than two chunks of 256 rows, and not a multiple of 8
    w, dense = weight(V, 16, density, seed=n, index=index, values=values)
    x, b, tg = torch.randn(16, n), torch.randn(V), torch.randint(0, V, (n,))
    want = torch.log_softmax((dense @ x + b[:, None]).t(), dim=-1)
    out = {"target_lp": poisoned(n), "argmax": poisoned(n, dtype=torch.int64), "max_lp": poisoned(n),
           "logprobs": poisoned(n, V)}
    got = compiled.decoder(w, b, x, tg, full=True, top1=True, out=out)
    scale = want.abs().max()  # errors relative to the log-probabilities' scale (some are near 0)
    assert rel_err(got["logprobs"], want) < TOL
    assert (got["target_lp"] - want.gather(1, tg.view(-1, 1)).view(-1)).abs().max() < TOL * scale
    assert torch.equal(got["argmax"], want.argmax(1))
    assert (got["max_lp"] - want.max(1).values).abs().max() < TOL * scale
    ref = REF.decoder(w, b, x, tg, full=True, top1=True)
    assert rel_err(ref["logprobs"], want) < TOL


@pytest.mark.parametrize("n,v", [(1, 1), (3, 7), (5, 33), (64, 10000), (2, 100003)])
def test_logsumexp_rows_equals_pytorch(compiled, n, v):
    """The dense decoder's log-sum-exp (after PyTorch's GEMM) against torch.logsumexp, row strides included;
    rows of -inf, +inf and NaN as PyTorch gives them."""
    g = torch.Generator().manual_seed(n * v)
    logits = torch.randn(n, v + 3, generator=g) * 8
    view = logits[:, :v]  # row stride v + 3
    got = compiled.logsumexp_rows(view)
    assert rel_err(got, torch.logsumexp(view, -1)) < TOL
    special = torch.randn(3, v + 40, generator=g)
    special[0] = -float("inf")
    special[1, v // 2] = float("inf")
    special[2, v + 39] = float("nan")
    assert torch.equal(compiled.logsumexp_rows(special).isnan(), torch.tensor([False, False, True]))
    assert compiled.logsumexp_rows(special)[:2].tolist() == [-float("inf"), float("inf")]
    with pytest.raises(ValueError):
        compiled.logsumexp_rows(torch.randn(5, 6).t())  # columns not contiguous


@pytest.mark.parametrize("rows,cols", [(41, 67), (8, 8), (3, 5), (600, 650)])
def test_dense_layout_at_batch_1(compiled, rows, cols):
    """Matrices the export kept dense, one column (eight rows at a time, a masked tail of columns, fewer than
    eight rows at the end): spmm, the decoder and the recurrence against PyTorch."""
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(rows, cols, generator=g)
    x, b = torch.randn(cols, 1, generator=g), torch.randn(rows, generator=g)
    got = compiled.spmm(Matrix(dense=w), x, b, out=poisoned(rows, 1))
    assert rel_err(got, w @ x + b[:, None]) < TOL
    want = torch.log_softmax((w @ x + b[:, None]).t(), dim=-1)
    dec = compiled.decoder(Matrix(dense=w), b, x, full=True, out={"logprobs": poisoned(1, rows)})["logprobs"]
    assert rel_err(dec, want) < TOL
    H = cols
    ref = torch.nn.LSTMCell(3, H)
    with torch.no_grad():
        ref.weight_hh.normal_(0.0, H ** -0.5, generator=g)  # a trained scale: no chaos to amplify rounding
        gi = torch.randn(7, 4 * H, generator=g)
        h, c, outs = torch.randn(1, H, generator=g), torch.randn(1, H, generator=g), []
        h0, c0 = h.t().contiguous(), c.t().contiguous()
        for t in range(7):  # gi stands for W_ih x + b_ih + b_hh: the cell with W_ih = 0 and no biases
            gh = h @ ref.weight_hh.t()
            i, f, gg, o = (gi[t] + gh[0]).chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h.t())
    out, h1, c1 = compiled.recurrent("lstm", Matrix(dense=ref.weight_hh.detach()), None, gi.t().contiguous(), 7, 1,
                                     h0, c0, out=poisoned(H, 7))
    assert rel_err(out, torch.cat(outs, 1)) < TOL and rel_err(c1, c.t()) < TOL


@needs_compiled
def test_dense_rows_at_batch_1_do_not_depend_on_their_neighbours():
    """A dense row's batch-1 sum is the same whichever rows share its group of eight (the step, the
    recurrence and the layered ops all rely on it): rows 3.. of W equal the rows of W[3:], bit for bit."""
    k = kernels_for("cpu", 2)
    w, x = torch.randn(45, 37), torch.randn(37, 1)
    full, shifted = k.spmm(Matrix(dense=w), x), k.spmm(Matrix(dense=w[3:].contiguous()), x)
    assert torch.equal(full[3:], shifted)
    # the decoder's batch-1 logits are the same rows: its top-1 is spmm's, and its log-probabilities are
    # spmm's column less one constant
    dec = k.decoder(Matrix(dense=w), None, x, full=True, top1=True)
    assert int(dec["argmax"]) == int(full.argmax())
    shift = full[:, 0] - dec["logprobs"][0]
    assert torch.allclose(shift, shift[0].expand_as(shift), rtol=0, atol=1e-5)


def test_reference_decoder_in_blocks_equals_one_block(monkeypatch):
    """The reference decoder's column blocks, and its log-sum-exp path without ``full``, give what one
    log-softmax over every column gives."""
    from selfish_deploy.kernels import reference

    w = Matrix(dense=torch.randn(50, 12))
    x, b, tg = torch.randn(12, 21), torch.randn(50), torch.randint(0, 50, (21,))
    whole = reference.decoder(w, b, x, tg, full=True, top1=True)
    assert whole["logprobs"].shape == (21, 50)
    monkeypatch.setattr(reference, "DECODER_BLOCK_BYTES", 5 * 50 * 4)  # blocks of 5 columns (the last of 1)
    for full in (True, False):
        part = reference.decoder(w, b, x, tg, full=full, top1=True)
        for key in ("target_lp", "max_lp"):
            assert rel_err(part[key], whole[key]) < TOL
        assert torch.equal(part["argmax"], whole["argmax"])
    sparse, _ = weight(50, 12, 0.3, seed=4)
    dense = sparse.to_dense()
    got = reference.decoder(sparse, b, x, tg)["target_lp"]
    want = torch.log_softmax((dense @ x + b[:, None]).t(), -1).gather(1, tg.view(-1, 1)).view(-1)
    assert rel_err(got, want) < TOL


@needs_compiled
@pytest.mark.parametrize("rows,block", [(300, 300), (4 * 100, 100), (41, 41)])
def test_sell_layout_sorts_rows_within_windows(rows, block):
    """SELL-8-sigma: perm permutes each window of sigma rows (within its block), longest rows first; every
    slice of 8 positions is as long as its longest row, so the stored entries are fewer than unsorted."""
    from selfish_deploy.kernels.matrix import sell_sigma

    w, dense = weight(rows, 70, 0.2, seed=rows)
    ptr, col, val, perm = w.sell(block)
    sigma = sell_sigma(rows, block)
    lengths = (dense != 0).sum(1)
    for b0 in range(0, rows, block):
        for w0 in range(b0, b0 + block, sigma):
            w1 = min(b0 + block, w0 + sigma)
            window = perm[w0:w1].long()
            assert sorted(window.tolist()) == list(range(w0, w1))
            assert torch.all(lengths[window][:-1] >= lengths[window][1:])
    widths, unsorted = [], 0
    for b0 in range(0, rows, block):
        for p0 in range(b0, b0 + block, 8):
            widths.append(int(lengths[perm[p0:min(p0 + 8, b0 + block)].long()].max()))
            unsorted += 8 * int(lengths[p0:min(p0 + 8, b0 + block)].max())
    assert torch.equal(ptr.diff(), 8 * torch.tensor(widths))
    assert col.numel() == val.numel() == 8 * sum(widths) <= unsorted
    if rows >= 100:
        assert 8 * sum(widths) < unsorted


@needs_compiled
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_batch1_recurrence_over_several_sorted_windows(cell):
    """H = 100 (windows of 32 units, the last of 4; two threads each own whole windows): one sequence alone
    equals PyTorch and is bit for bit its column of a batch of 9."""
    k = kernels_for("cpu", 2)
    k.set_min_work(0)
    try:
        H, T = 100, 4
        gates = 4 if cell == "lstm" else 3
        w_hh, dense = weight(gates * H, H, 0.3, seed=8, values=torch.float16)
        g, h, c = torch.randn(gates * H, T * 9) * 0.5, torch.randn(H, 9) * 0.5, torch.randn(H, 9)
        b_hh = torch.randn(gates * H) if cell == "gru" else None
        c_in = c if cell == "lstm" else None
        out, _, _ = k.recurrent(cell, w_hh, b_hh, g, T, 9, h, c_in)
        for b in (0, 5):
            col = g.view(gates * H, T, 9)[:, :, b].contiguous()
            hb, cb = h[:, b:b + 1].contiguous(), (c[:, b:b + 1].contiguous() if cell == "lstm" else None)
            one, _, _ = k.recurrent(cell, w_hh, b_hh, col, T, 1, hb, cb, out=poisoned(H, T))
            assert torch.equal(out.view(H, T, 9)[:, :, b], one)
            ref, _, _ = REF.recurrent(cell, w_hh, b_hh, col, T, 1, hb, cb)
            assert rel_err(one, ref) < TOL
    finally:
        k.set_min_work(32768)


def rhn_by_hand(dense_rs, biases, g, T, B, s):
    """The coupled highway micro-steps as families/rhn.py's HighwayBlock writes them, on dense matrices, in
    float64 (a chain of T x L micro-steps: fp32 maths would be a reference as far from the truth as the kernel)."""
    H, f64 = s.shape[0], torch.float64
    s, g = s.to(f64), g.to(f64)
    outs = []
    for t in range(T):
        for l, r in enumerate(dense_rs):
            a = r.to(f64) @ s + (g[:, t * B:(t + 1) * B] if l == 0 else biases[l].to(f64)[:, None])
            h, tg = torch.tanh(a[:H]), torch.sigmoid(a[H:])
            s = h * tg + s * (1 - tg)
        outs.append(s)
    return torch.cat(outs, 1), s


@pytest.mark.parametrize("density,index,values", [(0.0, torch.uint16, torch.float32), (0.05, torch.int32, torch.float16),
                                                  (0.33, torch.uint16, torch.float16), (0.47, torch.int32, torch.float32),
                                                  (1.0, torch.uint16, torch.bfloat16)])
@pytest.mark.parametrize("T,B", [(1, 1), (6, 1), (3, 3), (2, 13), (2, 64)])
def test_rhn_recurrent_matches_the_highway_equations(compiled, density, index, values, T, B):
    """T steps of L = 3 coupled micro-steps (H = 44: a partial window and a masked lane group) equal the
    equations on dense matrices; the reference kernel too; outputs poisoned."""
    torch.manual_seed(T * 10 + B)
    H, L = 44, 3
    made = [weight(2 * H, H, density, seed=l + B, index=index, values=values, scale=0.5) for l in range(L)]
    rs, dense = [m for m, _ in made], [d for _, d in made]
    biases = [None] + [torch.randn(2 * H) for _ in range(L - 1)]
    g, s0 = torch.randn(2 * H, T * B), torch.randn(H, B) * 0.5
    want_out, want_s = rhn_by_hand(dense, biases, g, T, B, s0)
    out, s = compiled.rhn_recurrent(rs, biases, g, T, B, s0, out=poisoned(H, T * B))
    assert not out.isnan().any()
    assert rel_err(out, want_out) < TOL and rel_err(s, want_s) < TOL
    assert torch.equal(s, out[:, (T - 1) * B:])
    r_out, r_s = REF.rhn_recurrent(rs, biases, g, T, B, s0)
    assert rel_err(r_out, want_out) < TOL and rel_err(r_s, want_s) < TOL


@needs_compiled
@pytest.mark.parametrize("B", [9, 64])
def test_rhn_sequence_alone_equals_its_column_of_a_batch(B):
    """H = 100 over several sorted windows on two threads: a sequence alone is bit for bit its column of a
    batched call; and a dense (density 1.0) layer below BLAS_BATCH runs the compiled loop too."""
    k = kernels_for("cpu", 2)
    k.set_min_work(0)
    try:
        H, L, T = 100, 4, 5
        rs = [weight(2 * H, H, 0.4, seed=l, scale=0.5)[0] for l in range(L)]
        biases = [None] + [torch.randn(2 * H) for _ in range(L - 1)]
        g, s = torch.randn(2 * H, T * B), torch.randn(H, B) * 0.5
        out, _ = k.rhn_recurrent(rs, biases, g, T, B, s)
        for b in (0, B - 1):
            col = g.view(2 * H, T, B)[:, :, b].contiguous()
            one, _ = k.rhn_recurrent(rs, biases, col, T, 1, s[:, b:b + 1].contiguous(), out=poisoned(H, T))
            assert torch.equal(out.view(H, T, B)[:, :, b], one)
        dense = [Matrix(dense=r.to_dense()) for r in rs]  # two steps: 8 micro-steps of 40 terms each
        got, _ = k.rhn_recurrent(dense, biases, g[:, :6], 2, 3, s[:, :3].contiguous(), out=poisoned(H, 6))
        want, _ = rhn_by_hand([r.to_dense() for r in rs], biases, g[:, :6], 2, 3, s[:, :3])
        assert rel_err(got, want) < TOL
    finally:
        k.set_min_work(32768)


def onlstm_by_hand(w_hh, scale, g, T, B, h, c, chunk):
    """ON-LSTM steps from the equations (cumax, master gates, chunked cell) on a dense W_hh, in float64."""
    f64 = torch.float64
    H = h.shape[0]
    n = H // chunk
    w, g, h, c = w_hh.to(f64), g.to(f64), h.to(f64), c.to(f64)
    outs = []
    for t in range(T):
        a = g[:, t * B:(t + 1) * B] + scale * (w @ h)  # (2n + 4H, B)
        mi = 1 - torch.cumsum(torch.softmax(a[:n], 0), 0)
        mf = torch.cumsum(torch.softmax(a[n:2 * n], 0), 0)
        o, gg, i, f = a[2 * n:].view(4, n, chunk, B).unbind(0)
        mi, mf = mi[:, None], mf[:, None]
        wgt = mf * mi
        f = torch.sigmoid(f) * wgt + (mf - wgt)
        i = torch.sigmoid(i) * wgt + (mi - wgt)
        c = (f * c.view(n, chunk, B) + i * torch.tanh(gg)).reshape(H, B)
        h = torch.sigmoid(o).reshape(H, B) * torch.tanh(c)
        outs.append(h)
    return torch.cat(outs, 1), h, c


@pytest.mark.parametrize("density,index,values", [(0.0, torch.uint16, torch.float32), (0.05, torch.int32, torch.float16),
                                                  (0.45, torch.uint16, torch.float16), (1.0, torch.int32, torch.bfloat16)])
@pytest.mark.parametrize("T,B", [(1, 1), (6, 1), (3, 3), (2, 13), (2, 64)])
@pytest.mark.parametrize("H,chunk", [(12, 4), (20, 5)])
def test_onlstm_recurrent_matches_the_equations(compiled, density, index, values, T, B, H, chunk):
    """T ON-LSTM steps (n = H / chunk master gates, gate rows 2n + 4H) equal the equations in float64; the
    reference kernel too; outputs poisoned."""
    torch.manual_seed(T * 10 + B + H)
    rows = 2 * (H // chunk) + 4 * H
    w_hh, dense = weight(rows, H, density, seed=B, index=index, values=values, scale=0.5)
    g, h0, c0 = torch.randn(rows, T * B), torch.randn(H, B) * 0.5, torch.randn(H, B)
    want, want_h, want_c = onlstm_by_hand(dense, 0.7, g, T, B, h0, c0, chunk)
    out, h, c = compiled.onlstm_recurrent(w_hh, 0.7, g, T, B, h0, c0, chunk, out=poisoned(H, T * B))
    assert not out.isnan().any()
    assert rel_err(out, want) < TOL and rel_err(h, want_h) < TOL and rel_err(c, want_c) < TOL
    r_out, r_h, r_c = REF.onlstm_recurrent(w_hh, 0.7, g, T, B, h0, c0, chunk)
    assert rel_err(r_out, want) < TOL and rel_err(r_c, want_c) < TOL


@needs_compiled
@pytest.mark.parametrize("B", [9, 64])
def test_onlstm_sequence_alone_equals_its_column_of_a_batch(B):
    """H = 100 in chunks of 10 on two threads: a sequence alone is bit for bit its column of a batched call."""
    k = kernels_for("cpu", 2)
    k.set_min_work(0)
    try:
        H, chunk, T = 100, 10, 4
        rows = 2 * (H // chunk) + 4 * H
        w_hh, _ = weight(rows, H, 0.4, seed=3, scale=0.3)
        g, h, c = torch.randn(rows, T * B), torch.randn(H, B) * 0.5, torch.randn(H, B)
        out, _, c_all = k.onlstm_recurrent(w_hh, 0.55, g, T, B, h, c, chunk)
        for b in (0, B - 1):
            col = g.view(rows, T, B)[:, :, b].contiguous()
            one, _, c_one = k.onlstm_recurrent(w_hh, 0.55, col, T, 1, h[:, b:b + 1].contiguous(),
                                               c[:, b:b + 1].contiguous(), chunk, out=poisoned(H, T))
            assert torch.equal(out.view(H, T, B)[:, :, b], one) and torch.equal(c_all[:, b:b + 1], c_one)
    finally:
        k.set_min_work(32768)


@needs_compiled
@pytest.mark.parametrize("rows,cols,block", [(4 * 37, 37, 37), (300, 70, 300), (2 * 100, 100, 100), (16, 32, 16),
                                             (3 * 21, 650, 21)])
@pytest.mark.parametrize("index,values", [(torch.uint16, torch.float32), (torch.int32, torch.float16),
                                          (torch.uint16, torch.bfloat16)])
def test_block_permute_layout_holds_every_entry_once_in_its_lane(rows, cols, block, index, values):
    """The block-permute copy, read back as the kernel reads it: slice s of 16 SELL positions (within blocks of
    ``block`` rows), per block of 32 columns depth[s, b] entries of 16 lanes (column within the block,
    value). Every stored entry lands once, in its row's lane, in the row's stored order; each block's depth is
    its deepest lane's count; padding is column 0, value 0; nothing else."""
    w, dense = weight(rows, cols, 0.3, seed=rows + cols, index=index, values=values)
    ptr, depth, idx, val = w.block_permute(block)
    perm = w.sell_perm(block).long()
    nb, per_block = -(-cols // 32), -(-block // 16)
    assert depth.shape == (rows // block * per_block, nb) and ptr[0] == 0
    assert torch.equal(ptr.diff(), depth.long().sum(1))
    assert idx.numel() == val.numel() == 16 * int(ptr[-1]) and val.dtype == values
    back = torch.zeros(rows, cols)
    idx, val = idx.view(-1, 16).long(), val.view(-1, 16).float()
    for s in range(depth.shape[0]):
        p0 = (s // per_block) * block + (s % per_block) * 16
        lanes = min(16, (s // per_block) * block + block - p0)
        e = int(ptr[s])
        for b in range(nb):
            d = int(depth[s, b])
            counts = [int((dense[perm[p0 + l], 32 * b:32 * b + 32] != 0).sum()) for l in range(lanes)]
            assert d == max(counts, default=0)
            for l in range(16):
                c, v = idx[e:e + d, l], val[e:e + d, l]
                n = counts[l] if l < lanes else 0
                assert torch.all(c[n:] == 0) and torch.all(v[n:] == 0)  # padding
                if n:
                    assert torch.all(c[:n].diff() > 0)  # the row's stored order
                    back[perm[p0 + l], 32 * b + c[:n]] += v[:n]
            e += d
    assert torch.equal(back, dense)


@needs_compiled
@pytest.mark.parametrize("values", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("density", [0.1, 0.4])
def test_batch1_recurrences_give_the_same_bits_through_every_copy(monkeypatch, values, density):
    """A batch-1 recurrence multiplies by the block-permute copy (AVX-512 CPUs), else by the dense copy (from
    DENSE_BATCH1 on), else by SELL-8: LSTM, RHN and ON-LSTM recurrences give the same bits every way, on two
    threads (H = 100: partial slices of 16, groups of 32 and column blocks of 32 at every block's end); each
    way builds only its copies."""
    from selfish_deploy.kernels import compiled as compiled_mod

    k = kernels_for("cpu", 2)
    k.set_min_work(0)

    def run(block_permute, threshold):
        monkeypatch.setattr(compiled_mod, "BLOCK_PERMUTE", block_permute)
        monkeypatch.setattr(compiled_mod, "DENSE_BATCH1", threshold)
        H, T = 100, 6
        lstm, _ = weight(4 * H, H, density, seed=1, values=values, scale=0.3)
        rhn = [weight(2 * H, H, density, seed=2 + l, values=values, scale=0.5)[0] for l in range(3)]
        onlstm, _ = weight(2 * (H // 10) + 4 * H, H, density, seed=5, values=values, scale=0.3)
        g = torch.Generator().manual_seed(0)
        x = lambda rows: torch.randn(rows, T, generator=g)  # noqa: E731
        h, c = torch.randn(H, 1, generator=g) * 0.5, torch.randn(H, 1, generator=g)
        outs = [k.recurrent("lstm", lstm, None, x(4 * H), T, 1, h, c, out=poisoned(H, T))[0],
                k.rhn_recurrent(rhn, [None, torch.ones(2 * H), -torch.ones(2 * H)], x(2 * H), T, 1, h,
                                out=poisoned(H, T))[0],
                k.onlstm_recurrent(onlstm, 0.5, x(onlstm.rows), T, 1, h, c, 10, out=poisoned(H, T))[0]]
        built = [(bool(m._bp), bool(m._dense1), bool(m._sell)) for m in (lstm, rhn[0], onlstm)]
        return outs, built

    try:
        avx512, dense = compiled_mod.has_avx512(), density >= compiled_mod.DENSE_BATCH1
        permuted, built = run(True, compiled_mod.DENSE_BATCH1)
        # in gate blocks (LSTM, RHN) the block-permute copy replaces SELL-8; ON-LSTM's one block keeps both
        assert built == [(avx512, not avx512 and dense, not avx512 and not dense)] * 2 + [
            (avx512, not avx512 and dense, avx512 or not dense)]
        dense_way, built = run(False, compiled_mod.DENSE_BATCH1)
        assert built == [(False, dense, not dense)] * 3
        sell_way, built = run(False, 2.0)
        assert built == [(False, False, True)] * 3
        for a, b, c in zip(permuted, dense_way, sell_way):
            assert not a.isnan().any() and torch.equal(a, c) and torch.equal(b, c)
    finally:
        k.set_min_work(32768)


def test_onlstm_recurrent_refuses_a_bad_chunk(compiled):
    w_hh, _ = weight(2 * 3 + 4 * 12, 12, 0.3, seed=0)
    with pytest.raises(ValueError, match="chunks of 5"):
        compiled.onlstm_recurrent(w_hh, 1.0, torch.randn(54, 2), 2, 1, torch.zeros(12, 1), torch.zeros(12, 1), 5)


@needs_compiled
def test_a_column_does_not_depend_on_its_batch():
    """The canonical sum order: column j of a batched call equals the call on column j alone, bit for bit."""
    k = kernels_for("cpu", 2)
    w, _ = weight(300, 80, 0.3, seed=1)
    b = torch.randn(300)
    x = torch.randn(80, 70)
    for n in (2, 3, 4, 5, 70):  # a few columns through the SELL copy (2-4), more in row-wise passes
        batched = k.spmm(w, x[:, :n], b)
        dec = k.decoder(w, b, x[:, :n], full=True)["logprobs"]
        scored = k.decoder(w, b, x[:, :n], torch.arange(n) * 4, top1=True)
        for j in {0, n // 2, n - 1}:
            one = x[:, j:j + 1].contiguous()
            assert torch.equal(batched[:, j], k.spmm(w, one, b)[:, 0])
            alone = k.decoder(w, b, one, torch.tensor([4 * j]), top1=True, full=True)
            assert torch.equal(dec[j], alone["logprobs"][0])
            assert all(torch.equal(scored[key][j], alone[key][0]) for key in ("target_lp", "argmax", "max_lp"))
    w_hh, _ = weight(4 * 80, 80, 0.3, seed=2)
    for B in (3, 4, 9, 40):  # 2-4 sequences through SELL-8 or the block-permute copy, 9 and 40 in row-wise passes
        g, h, c = torch.randn(320, 5 * B), torch.randn(80, B), torch.randn(80, B)
        out, _, _ = k.recurrent("lstm", w_hh, None, g, 5, B, h, c)
        for b in (0, B - 1):
            one, _, _ = k.recurrent("lstm", w_hh, None, g.view(320, 5, B)[:, :, b].contiguous(), 5, 1,
                                    h[:, b:b + 1].contiguous(), c[:, b:b + 1].contiguous())
            assert torch.equal(out.view(80, 5, B)[:, :, b], one)


@needs_compiled
@pytest.mark.parametrize("n", [2, 3, 7])
def test_dense_matrix_times_a_few_columns_gives_each_its_batch1_bits(n):
    """A matrix the export kept dense times 2-7 columns (a small generation batch): each column goes through
    the batch-1 path, so it gets bit for bit what it gets alone, products and log-softmax alike; dense maths
    to 1e-5 (with poisoned outputs)."""
    k = kernels_for("cpu", 2)
    k.set_min_work(0)
    try:
        gen = torch.Generator().manual_seed(n)
        w, b, x = torch.randn(300, 90, generator=gen), torch.randn(300, generator=gen), torch.randn(90, n, generator=gen)
        m, tg = Matrix(dense=w), torch.randint(0, 300, (n,), generator=gen)
        y = k.spmm(m, x, b, out=poisoned(300, n))
        assert rel_err(y, w @ x + b[:, None]) < TOL
        dec = k.decoder(m, b, x, tg, full=True, top1=True, out={"logprobs": poisoned(n, 300), "target_lp": poisoned(n),
                                                                "argmax": poisoned(n, dtype=torch.int64),
                                                                "max_lp": poisoned(n)})
        want = torch.log_softmax((w @ x + b[:, None]).t(), dim=-1)
        assert rel_err(dec["logprobs"], want) < TOL
        assert torch.equal(dec["argmax"], want.argmax(-1))
        for j in range(n):
            col = x[:, j:j + 1].contiguous()
            assert torch.equal(y[:, j], k.spmm(m, col, b)[:, 0])
            alone = k.decoder(m, b, col, tg[j:j + 1], full=True, top1=True)
            assert all(torch.equal(dec[key][j], alone[key][0]) for key in ("logprobs", "target_lp", "argmax", "max_lp"))
    finally:
        k.set_min_work(32768)


@needs_compiled
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("B", [2, 3, 7])
def test_dense_recurrence_of_a_few_sequences_gives_each_its_alone_bits(cell, B):
    """A dense W_hh (density 1.0) at 2-7 sequences (a small generation batch): each sequence is bit for bit the
    call on it alone (both through the batch-1 row sums), over units that do not fill the last group of 8; and
    PyTorch's cell to 1e-5."""
    k = kernels_for("cpu", 2)
    k.set_min_work(0)
    try:
        gen = torch.Generator().manual_seed(B)
        H, T, G = 45, 4, {"lstm": 4, "gru": 3, "rnn_tanh": 1}[cell]
        w_hh = Matrix(dense=torch.randn(G * H, H, generator=gen) * 0.2)
        b_hh = torch.randn(G * H, generator=gen) if cell == "gru" else None
        g, h = torch.randn(G * H, T * B, generator=gen), torch.randn(H, B, generator=gen)
        c = torch.randn(H, B, generator=gen) if cell == "lstm" else None
        out, h1, _ = k.recurrent(cell, w_hh, b_hh, g, T, B, h, c, out=poisoned(H, T * B))
        r_out, r_h, _ = REF.recurrent(cell, w_hh, b_hh, g, T, B, h, c)
        assert rel_err(out, r_out) < TOL and rel_err(h1, r_h) < TOL
        for b in range(B):
            one, _, _ = k.recurrent(cell, w_hh, b_hh, g.view(G * H, T, B)[:, :, b].contiguous(), T, 1,
                                    h[:, b:b + 1].contiguous(), None if c is None else c[:, b:b + 1].contiguous())
            assert torch.equal(out.view(H, T, B)[:, :, b], one)
    finally:
        k.set_min_work(32768)


@needs_compiled
@pytest.mark.parametrize("values", [torch.float32, torch.float16])
def test_packed_panels_equal_one_column_at_a_time(values):
    """300 columns: spmm's packed 64-column panels (several per thread) and the decoder's whole-block path over
    three 256-row chunks, the last 44 columns ending in 4 masked lanes: each column equals the call on that
    column alone (the SELL-8 batch-1 path), bit for bit, and dense maths to 1e-5."""
    k = kernels_for("cpu", 2)
    k.set_min_work(0)
    try:
        w, dense = weight(600, 200, 0.2, seed=5, values=values)
        x, b = torch.randn(200, 300), torch.randn(600)
        got = k.spmm(w, x, b, out=poisoned(600, 300))
        assert rel_err(got, dense @ x + b[:, None]) < TOL
        dec = k.decoder(w, b, x, full=True, out={"logprobs": poisoned(300, 600)})["logprobs"]
        assert rel_err(dec, torch.log_softmax((dense @ x + b[:, None]).t(), dim=-1)) < TOL
        for j in (0, 63, 64, 299):
            col = x[:, j:j + 1].contiguous()
            assert torch.equal(got[:, j], k.spmm(w, col, b)[:, 0])
            assert torch.equal(dec[j], k.decoder(w, b, col, full=True)["logprobs"][0])
        # scoring only (no logprobs asked): each block's chunks reuse one buffer and keep their targets' logits
        tg = torch.randint(0, 600, (300,), generator=torch.Generator().manual_seed(3))
        out = {"target_lp": poisoned(300), "argmax": poisoned(300, dtype=torch.int64), "max_lp": poisoned(300)}
        score = k.decoder(w, b, x, tg, top1=True, out=out)
        assert "logprobs" not in score
        assert torch.equal(score["target_lp"], dec.gather(1, tg.view(-1, 1)).view(-1))
        assert torch.equal(score["max_lp"], dec.max(1).values) and torch.equal(score["argmax"], dec.argmax(1))
    finally:
        k.set_min_work(32768)


@needs_compiled
def test_bad_arguments_are_python_errors():
    k = kernels_for("cpu")
    w, _ = weight(10, 6, 0.5, seed=0)
    with pytest.raises(ValueError, match="^x: expected"):
        k.spmm(w, torch.randn(7, 2))  # wrong inner size
    with pytest.raises(ValueError, match="^x: expected"):
        k.spmm(w, torch.randn(6, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="^out: expected"):
        k.spmm(w, torch.randn(6, 2), out=torch.empty(10, 3))


SCRIPT = """
import torch, json
from selfish_deploy import kernels
from selfish_deploy.kernels import Matrix, Reference, kernels_for
from selfish_deploy.csr import CSR
g = torch.Generator().manual_seed(0)
w = torch.randn(64, 40, generator=g) * (torch.rand(64, 40, generator=g) < 0.3)
m, x = Matrix(csr=CSR.from_dense(w)), torch.randn(40, 5, generator=g)
k = kernels_for("cpu")
y = k.spmm(m, x)
print(json.dumps({"name": k.name, "report": kernels.report()["status"], "err": float((y - w @ x).abs().max())}))
"""


def run_script(env_extra):
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fallback_is_forced_by_the_environment():
    r = run_script({"SELFISH_KERNELS": "reference"})
    assert r["name"] == "reference" and "SELFISH_KERNELS" in r["report"] and r["err"] < 1e-5


@needs_compiled
def test_generic_instruction_set_is_correct_too():
    r = run_script({"SELFISH_KERNELS_ISA": "generic"})
    assert r["name"] == "compiled-cpu (generic)" and r["err"] < 1e-5


@needs_compiled
@pytest.mark.skipif(os.environ.get("SELFISH_KERNELS_ISA") == "generic", reason="this is the generic run")
def test_generic_instruction_set_passes_the_kernel_grid():
    """The baseline build (no AVX2) against the same references: this file's product, decoder and
    recurrence tests in a subprocess with SELFISH_KERNELS_ISA=generic (about 10 s)."""
    env = {**os.environ, "SELFISH_KERNELS_ISA": "generic"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k",
                        "spmm or decoder or recurrent or column_does_not or batch1 or panels"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
    assert " passed" in r.stdout


def block_permute_here() -> bool:
    from selfish_deploy.kernels.compiled import has_avx512

    return kernels.compiled_available() and has_avx512()


@pytest.mark.skipif(not block_permute_here(), reason="no AVX-512 block-permute here")
def test_avx2_instruction_set_passes_the_kernel_grid():
    """On an AVX-512 CPU the batch-1 recurrences run the block-permute copy; SELFISH_KERNELS_ISA=avx2 turns it
    off, so this file's recurrence tests run again in a subprocess on SELL-8 and the dense copy (what CPUs
    without AVX-512 run)."""
    env = {**os.environ, "SELFISH_KERNELS_ISA": "avx2"}
    code = ("from selfish_deploy.kernels.compiled import has_avx512; import sys; sys.exit(int(has_avx512()))")
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0  # turned off
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k",
                        "recurren or batch1 or column_does_not or spmm or decoder or panels"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
    assert " passed" in r.stdout


WIDE_SCRIPT = """
import hashlib, torch
from selfish_deploy.csr import CSR
from selfish_deploy.kernels import Matrix, kernels_for
g = torch.Generator().manual_seed(0)
w = torch.randn(300, 350, generator=g)  # 350 columns: rows of about 70 entries
mask = torch.rand(300, 350, generator=g) < 0.2
m = Matrix(csr=CSR.from_masked(w * mask, mask))
x = torch.randn(350, 150, generator=g)  # two 64-column blocks and 22 more
k = kernels_for("cpu", 2)
k.set_min_work(0)
y = k.spmm(m, x, torch.randn(300, generator=g))
lp = k.decoder(m, torch.zeros(300), x, full=True)["logprobs"]
top = k.decoder(m, torch.randn(300, generator=g), x, torch.randint(0, 300, (150,), generator=g), top1=True)
wh = torch.randn(4 * 40, 40, generator=g) * 0.3
mh = torch.rand(4 * 40, 40, generator=g) < 0.3
rec = Matrix(csr=CSR.from_masked(wh * mh, mh))
T, B = 5, 40  # a 32-column block of the batch recurrence and 8 more
out, h, c = k.recurrent("lstm", rec, None, torch.randn(160, T * B, generator=g), T, B,
                        torch.randn(40, B, generator=g), torch.randn(40, B, generator=g))
parts = [y, lp, top["target_lp"], top["argmax"], top["max_lp"], out, h, c]
print(hashlib.sha256(b"".join(t.numpy().tobytes() for t in parts)).hexdigest())
"""


@pytest.mark.skipif(not block_permute_here(), reason="no AVX-512 here")
def test_wide_blocks_give_the_8_lane_bits():
    """On AVX-512 CPUs dot_cols runs 64-column blocks in 16-lane vectors (dot_block64_wide) and the decoder's
    log-sum-exp statistics 16 columns at a time (chunk_stats16), and a batch recurrence's pairs of gate rows
    32 columns at a time (dot_block2_32_wide); the products, the log-probabilities, the targets'
    log-probabilities, the argmax and the recurrence's outputs and state are the 8-lane loops' bit for bit
    (SELFISH_KERNELS_ISA=avx2 turns all three off)."""
    def digest(env):
        out = subprocess.run([sys.executable, "-c", WIDE_SCRIPT], env={**os.environ, **env}, capture_output=True,
                             text=True, check=True)
        return out.stdout.strip().splitlines()[-1]

    assert digest({}) == digest({"SELFISH_KERNELS_ISA": "avx2"})


@pytest.mark.skipif(not block_permute_here(), reason="no AVX-512 here")
@pytest.mark.parametrize("B", [32, 40])
def test_dense_recurrence_of_32_sequences_runs_our_loop_on_avx512(B):
    """On AVX-512 CPUs a dense W_hh of sequences within WIDE_OWN_BATCH runs the compiled loop, not BLAS's
    per-step GEMMs: its first 9 sequences are bit for bit a batch of those 9 (below BLAS_BATCH, so the compiled
    loop's row-wise pass; BLAS's sums do not promise that), and the outputs are the BLAS reference's to 1e-5.
    Outside that range (from BLAS_BATCH) BLAS still runs."""
    from selfish_deploy.kernels.compiled import BLAS_BATCH, WIDE_OWN_BATCH, blas_recurrence

    k = kernels_for("cpu", 2)
    w_hh = Matrix(dense=torch.randn(4 * 48, 48, generator=torch.Generator().manual_seed(B)) * 0.2)
    lo, hi = WIDE_OWN_BATCH
    assert not blas_recurrence(w_hh, B) and blas_recurrence(w_hh, hi) and blas_recurrence(w_hh, BLAS_BATCH) == (
        BLAS_BATCH < lo)
    g, h, c = torch.randn(192, 4 * B), torch.randn(48, B), torch.randn(48, B)
    out, h1, c1 = k.recurrent("lstm", w_hh, None, g, 4, B, h, c, out=poisoned(48, 4 * B))
    r_out, r_h, r_c = REF.recurrent("lstm", w_hh, None, g, 4, B, h, c)
    assert rel_err(out, r_out) < TOL and rel_err(h1, r_h) < TOL and rel_err(c1, r_c) < TOL
    nine, _, _ = k.recurrent("lstm", w_hh, None, g.view(192, 4, B)[:, :, :9].reshape(192, 36), 4, 9,
                             h[:, :9].contiguous(), c[:, :9].contiguous())
    assert torch.equal(out.view(48, 4, B)[:, :, :9], nine.view(48, 4, 9))


def fallback_warnings(monkeypatch, calls: int = 2) -> list[str]:
    """The warnings of ``calls`` fresh ``kernels_for("cpu")`` (the loader's cache cleared), each of which must
    give the reference kernels; the cache is cleared again afterwards for the tests that follow."""
    from selfish_deploy.kernels import loader

    monkeypatch.delenv("SELFISH_KERNELS", raising=False)
    loader.load.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(calls):
                assert kernels_for("cpu").name == "reference"
        return [str(w.message) for w in caught]
    finally:
        loader.load.cache_clear()


def test_missing_library_warns_once_and_falls_back(monkeypatch):
    from selfish_deploy.kernels import loader

    monkeypatch.setattr(loader, "library_path", lambda: None)
    assert len([m for m in fallback_warnings(monkeypatch) if "not built" in m]) == 1


@needs_compiled
def test_a_library_of_another_abi_is_refused_with_a_warning_and_the_fallback(monkeypatch):
    """open_library checks the ABI version (a stale build after a struct change must not be called);
    load() turns that into one warning and the reference kernels."""
    from selfish_deploy.kernels import loader

    monkeypatch.setattr(loader, "ABI_VERSION", loader.ABI_VERSION + 1)
    with pytest.raises(OSError, match="ABI version"):
        loader.open_library(loader.library_path())
    assert any("unusable" in m and "ABI version" in m for m in fallback_warnings(monkeypatch, calls=1))


def test_report_command():
    out = subprocess.run([sys.executable, "-m", "selfish_deploy.kernels"], capture_output=True, text=True, check=True)
    assert "compiled_cpu" in out.stdout and "ops" in out.stdout
    if kernels.compiled_available():
        assert "avx2" in out.stdout or "generic" in out.stdout
