"""The engine: every backend gives the dense reference's numbers; batched scoring and batched generation give
exactly what one-at-a-time gives; windows, states, stops and the streaming iterator."""

from __future__ import annotations

import pytest
import torch

from selfish_deploy import kernels
from selfish_deploy.errors import UserError
from selfish_deploy.export.writer import export_run
from selfish_deploy.families.stacked import CELLS as ARCHS
from selfish_deploy.runtime import SamplingParams, SparseLM, State, detokenize
from selfish_deploy.runtime import engine as engine_module

TOL = 1e-5


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("arch", [*ARCHS, "rhn"])  # rhn: 2 layers of depth 10, the compiled micro-steps
@pytest.mark.parametrize("density", [0.05, 0.33, 1.0])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_backends_equal_dense(exports, arch, density, dtype):
    path = exports(arch, density, dtype, tie=density != 0.33)
    lms = {b: SparseLM.load(path, backend=b) for b in ("sparse", "dense", "onnx")}
    gen = torch.Generator().manual_seed(0)
    for B in (1, 3, 64):
        tokens = torch.randint(0, 41, (5, B), generator=gen)
        state = lms["dense"].init_state(B).map(lambda t: torch.rand(t.shape, generator=gen) - 0.5)
        want, want_state = lms["dense"].forward(tokens, state)
        for name in ("sparse", "onnx"):
            got, got_state = lms[name].forward(tokens, state)
            assert got.shape == (5, B, 41)
            assert rel_err(got, want) < TOL, (name, B)
            for a, b in zip(got_state.tensors(), want_state.tensors()):
                assert rel_err(a, b) < TOL


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_int32_column_indices_give_the_same_numbers(exports, arch):
    """Matrices wider than 65,536 columns store int32 indices; the same model with int32 indices scores alike."""
    from selfish_deploy.csr import CSR
    from selfish_deploy.exportdir import load_export

    path = exports(arch, 0.33)
    wide = load_export(path)
    wide.sparse = {n: CSR(c.crow_indices, c.col_indices.to(torch.int32), c.values, c.shape)
                   for n, c in wide.sparse.items()}
    a, b = SparseLM(wide), SparseLM.load(path)
    assert all(m.col.dtype == torch.int32 for m in [a.backend.trunk.encoder, a.backend.trunk.layers[0][0]])
    tokens = torch.randint(0, 41, (6, 3), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.forward(tokens)[0], b.forward(tokens)[0])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("density", [0.05, 0.33])
def test_input_table_gives_the_same_numbers_bit_for_bit(exports, arch, density, monkeypatch):
    """The first layer's projections looked up from the table built at load equal the ones computed per call."""
    from selfish_deploy.runtime import stacked

    path = exports(arch, density, "fp16")
    with_table = SparseLM.load(path)
    assert with_table.backend.trunk.table is not None
    assert with_table.backend.trunk.table.shape == (41, with_table.backend.trunk.layers[0][0].rows)
    monkeypatch.setattr(stacked, "INPUT_TABLE_BYTES", 0)  # too big for the budget: computed per call
    plain = SparseLM.load(path)
    assert plain.backend.trunk.table is None
    gen = torch.Generator().manual_seed(5)
    for T, B in [(1, 1), (7, 1), (4, 3), (3, 64)]:
        tokens = torch.randint(0, 41, (T, B), generator=gen)
        state = plain.init_state(B).map(lambda t: torch.rand(t.shape, generator=gen) - 0.5)
        (a, sa), (b, sb) = with_table.forward(tokens, state), plain.forward(tokens, state)
        assert torch.equal(a, b), (T, B)
        assert all(torch.equal(x, y) for x, y in zip(sa.tensors(), sb.tensors()))


@pytest.mark.skipif(not kernels.compiled_available(), reason="compiled kernels not built")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("density", [0.05, 0.33, 1.0])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("table", [True, False])
def test_fused_batch1_step_equals_the_kernel_sequence(exports, arch, density, dtype, table, monkeypatch):
    """The one-call batch-1 step gives the bits of embed/spmm/recurrent/decoder, state included, step after step."""
    from selfish_deploy.runtime import stacked

    monkeypatch.setattr(stacked, "INPUT_TABLE_BYTES", stacked.INPUT_TABLE_BYTES if table else 0)
    lm = SparseLM.load(exports(arch, density, dtype, tie=density != 0.33))
    be = lm.backend
    assert be.step is not None and (be.trunk.table is not None) == table
    gen = torch.Generator().manual_seed(3)
    fused = plain = lm.init_state(1).map(lambda t: torch.rand(t.shape, generator=gen) - 0.5)
    for tok in [0, 7, 40, 7]:
        t = torch.tensor([[tok]])
        a, fused = be.forward(t, fused)
        x, plain = be.trunk(t, plain)
        b = be.head(x, full=True)["logprobs"].view(1, 1, -1)
        assert torch.equal(a, b)
        assert all(torch.equal(p, q) for p, q in zip(fused.tensors(), plain.tensors()))
    odd = fused.map(lambda t: torch.stack([t, t], -1)[..., 0])  # the same values, strided: not the fused layout
    assert not be.step.usable(odd)
    assert torch.equal(lm.forward(torch.tensor([[3]]), odd)[0], lm.forward(torch.tensor([[3]]), fused)[0])


@pytest.mark.skipif(not kernels.compiled_available(), reason="compiled kernels not built")
def test_engine_one_token_fast_path_equals_the_general_path(exports):
    """SparseLM.forward on one token with a state goes straight to the compiled step (no inference-mode
    context, no tensor indexing): the same numbers and state as the backend's general path."""
    lm = SparseLM.load(exports("lstm", 0.33))
    gen = torch.Generator().manual_seed(9)
    state = lm.init_state(1).map(lambda t: torch.rand(t.shape, generator=gen) - 0.5)
    calls = []
    real = lm.backend.step_token
    lm.backend.step_token = lambda token, st: calls.append(token) or real(token, st)
    fast, fast_state = lm.forward(torch.tensor([[7]]), state)
    assert calls == [7]
    with torch.inference_mode():
        x, slow_state = lm.backend.trunk(torch.tensor([[7]]), state)
        slow = lm.backend.head(x, full=True)["logprobs"].view(1, 1, -1)
    assert torch.equal(fast, slow) and fast.shape == (1, 1, 41)
    assert all(torch.equal(a, b) for a, b in zip(fast_state.tensors(), slow_state.tensors()))
    strided = state.map(lambda t: torch.stack([t, t], -1)[..., 0])  # not the step's layout: the general path
    assert torch.equal(lm.forward(torch.tensor([[7]]), strided)[0], fast)
    assert calls == [7, 7, 7]  # declined by the engine's fast path, then by the backend's: the general path ran


def test_fallback_kernels_equal_compiled(exports, monkeypatch):
    path = exports("lstm", 0.33)
    compiled = SparseLM.load(path)
    monkeypatch.setattr(kernels, "kernels_for", lambda device, threads=None: kernels.Reference())
    reference = SparseLM.load(path)
    assert reference.backend.kernels_name == "reference"
    tokens = torch.randint(0, 41, (6, 4), generator=torch.Generator().manual_seed(1))
    assert rel_err(compiled.forward(tokens)[0], reference.forward(tokens)[0]) < TOL
    seqs = [[0, 5, 7, 9], [0, 3], [0, 1, 2, 3, 4, 5, 6]]
    a = [x for s in compiled.score_ids(seqs, top_logprobs=1) for x in s.logprobs]
    b = [x for s in reference.score_ids(seqs, top_logprobs=1) for x in s.logprobs]
    assert rel_err(torch.tensor(a), torch.tensor(b)) < TOL


def test_greedy_generation_is_the_same_on_every_backend(exports):
    path = exports("gru", 0.33)
    outs = {b: SparseLM.load(path, backend=b).generate([0, 3, 4], max_tokens=12, temperature=0).token_ids
            for b in ("sparse", "dense", "onnx")}
    assert outs["sparse"] == outs["dense"] == outs["onnx"] and len(outs["sparse"]) == 12


SEQS = [[0, 5, 7, 9, 11, 2], [0, 3], [4], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [9, 9, 9, 1]]


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_scoring_is_exactly_one_at_a_time(exports, arch):
    lm = SparseLM.load(exports(arch, 0.33))
    together = lm.score_ids(SEQS, top_logprobs=1)
    for seq, got in zip(SEQS, together):
        alone = lm.score_ids([seq], top_logprobs=1)[0]
        assert got.logprobs == alone.logprobs and got.top == alone.top  # bit for bit
        assert len(got.logprobs) == len(seq) - 1
    # and equal to the full log-probabilities of forward()
    logp, _ = lm.forward(torch.tensor(SEQS[3][:-1]).view(-1, 1))
    want = logp[:, 0].gather(1, torch.tensor(SEQS[3][1:]).view(-1, 1)).view(-1)
    assert rel_err(torch.tensor(together[3].logprobs), want) < TOL
    assert [t[0][0] for t in together[3].top] == logp[:, 0].argmax(1).tolist()


def test_long_texts_are_scored_in_windows_with_the_state_carried(exports, monkeypatch):
    lm = SparseLM.load(exports("lstm", 0.33))
    seq = torch.randint(0, 41, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    whole = lm.score_ids([seq, seq[:50]])
    monkeypatch.setattr(engine_module, "MAX_WINDOW_COLUMNS", 14)  # 7 steps of 2 sequences per window
    windowed = lm.score_ids([seq, seq[:50]])
    assert [s.logprobs for s in windowed] == [s.logprobs for s in whole]


def test_top_logprobs_beyond_one(exports):
    lm = SparseLM.load(exports("lstm", 0.33))
    s = lm.score_ids([[0, 1, 2, 3]], top_logprobs=3)[0]
    logp, _ = lm.forward(torch.tensor([0, 1, 2]).view(-1, 1))
    vals, idx = logp[:, 0].topk(3, dim=1)
    assert [[i for i, _ in t] for t in s.top] == idx.tolist()
    assert rel_err(torch.tensor([[v for _, v in t] for t in s.top]), vals) < TOL


@pytest.mark.parametrize("backend", ["sparse", "dense"])
def test_batched_generation_is_exactly_one_at_a_time(exports, backend):
    lm = SparseLM.load(exports("lstm", 0.33), backend=backend)
    prompts = [[0, 3, 4], [0], [0, 7, 7, 7, 2], [0, 1]]
    params = [SamplingParams(max_tokens=9, seed=1), SamplingParams(max_tokens=4, temperature=0.7, top_k=5, seed=2),
              SamplingParams(max_tokens=12, top_p=0.8, seed=3, repetition_penalty=1.3),
              SamplingParams(max_tokens=7, temperature=0)]
    together = lm.generate_batch(prompts, params)
    for p, sp, got in zip(prompts, params, together):
        alone = lm.generate(p, sp)
        assert got.token_ids == alone.token_ids
        if backend == "sparse" and kernels.compiled_available():
            assert got.logprobs == alone.logprobs  # bit for bit: the kernels' canonical order
        else:  # BLAS blocks by batch size
            assert got.logprobs == pytest.approx(alone.logprobs, rel=1e-6)
        assert len(got.token_ids) == sp.max_tokens and got.finish_reason == "length"


def test_penalties_and_logit_bias_follow_a_hand_written_greedy_loop(exports):
    """Greedy generation with presence, frequency and repetition penalties and a logit bias equals a loop that
    applies them by hand to the model's log-probabilities (vLLM's order and rules: the bias, then the
    repetition penalty over prompt and output, then the frequency and presence penalties over the output);
    the reported log-probabilities are the model's own; and it is the same inside a batch."""
    lm = SparseLM.load(exports("lstm", 0.33))
    prompt, V = [0, 3, 4, 3], len(lm.vocab)
    sp = SamplingParams(max_tokens=12, temperature=0, presence_penalty=0.7, frequency_penalty=0.4,
                        repetition_penalty=1.2, logit_bias={5: 1.5, 8: -2.0})
    got = lm.generate(prompt, sp)
    logp, state = lm.forward(torch.tensor(prompt).view(-1, 1))
    logp, counts, seen, tokens, lps = logp[-1, 0], torch.zeros(V), torch.zeros(V, dtype=torch.bool), [], []
    seen[prompt] = True
    for _ in range(sp.max_tokens):
        x = logp.clone()
        x[5] += 1.5
        x[8] -= 2.0
        x = torch.where(seen, torch.where(x > 0, x / 1.2, x * 1.2), x)
        x = x - 0.4 * counts - 0.7 * (counts > 0)
        tok = int(x.argmax())
        tokens.append(tok)
        lps.append(logp[tok].item())
        counts[tok] += 1
        seen[tok] = True
        out, state = lm.forward(torch.tensor([[tok]]), state)
        logp = out[0, 0]
    assert got.token_ids == tokens
    assert got.logprobs == pytest.approx(lps, abs=1e-6)
    plain = lm.generate(prompt, SamplingParams(max_tokens=12, temperature=0))
    assert plain.token_ids != tokens  # the penalties change this continuation
    others = [SamplingParams(max_tokens=5, seed=1), SamplingParams(max_tokens=9, temperature=0.8, seed=2,
                                                                   frequency_penalty=1.0)]
    batch = lm.generate_batch([[0, 1], prompt, [0, 2, 2]], [others[0], sp, others[1]])
    assert batch[1].token_ids == tokens
    assert batch[2].token_ids == lm.generate([0, 2, 2], others[1]).token_ids


def test_prefilling_together_gives_each_prompt_what_it_gets_alone(exports):
    """add_many: longest first, in segments between lengths; equal lengths and max_tokens=0 included."""
    lm = SparseLM.load(exports("gru", 0.33))
    prompts = [[0, 3, 4], [0, 9, 9, 9, 2, 5], [0], [0, 1, 2], [0, 4]]
    params = [SamplingParams(max_tokens=3, seed=s) for s in range(5)]
    params[3] = SamplingParams(max_tokens=0)
    gen = lm.batch_generator()
    seqs = gen.add_many(prompts, params)
    assert seqs[3].finished and [s.id for s in gen.seqs] == [seqs[i].id for i in (0, 1, 2, 4)]
    for row, i in enumerate((0, 1, 2, 4)):
        ids = torch.tensor(prompts[i]).view(-1, 1)
        logp, state = lm.forward(ids)  # the whole prompt alone, every position decoded
        assert torch.equal(gen.logp[row], logp[-1, 0])
        assert all(torch.equal(a, b) for a, b in zip(gen.state.select([row]).tensors(), state.tensors()))
    with pytest.raises(UserError):
        gen.add_many([[0, 1], []], params[:2])


def test_sequences_join_and_leave_between_steps(exports):
    lm = SparseLM.load(exports("lstm", 0.33))
    gen = lm.batch_generator()
    a = gen.add([0, 3], SamplingParams(max_tokens=10, seed=5))
    for _ in range(3):
        gen.step()
    b = gen.add([0, 9, 1], SamplingParams(max_tokens=4, seed=6))  # joins mid-way
    c = gen.add([0, 2], SamplingParams(max_tokens=8, seed=7))
    gen.step()
    gen.cancel(c)  # a client went away
    assert len(gen) == 2 and c.finish_reason == "abort"
    while gen:
        gen.step()
    assert a.token_ids == lm.generate([0, 3], max_tokens=10, seed=5).token_ids
    assert b.token_ids == lm.generate([0, 9, 1], max_tokens=4, seed=6).token_ids


def test_stop_strings_eos_and_zero_tokens(exports):
    lm = SparseLM.load(exports("lstm", 0.33))
    eos = lm.vocab.eos_id
    runs = [lm.generate([0, 3], max_tokens=15, temperature=1.5, seed=s) for s in range(60)]
    full = next(r for r in runs if eos not in r.token_ids[:6])
    assert all(r.text == detokenize(r.tokens) for r in runs)  # the text grown piece by piece
    seed = runs.index(full)
    target = f"{full.tokens[3]} {full.tokens[4]}"  # a stop string spanning two tokens
    stopped = lm.generate([0, 3], max_tokens=15, temperature=1.5, seed=seed, stop=(target,))
    assert stopped.finish_reason == "stop" and target not in stopped.text
    assert full.text.startswith(stopped.text) and stopped.token_ids == full.token_ids[:5]
    with_eos = next(r for r in runs if eos in r.token_ids)  # 60 seeds: one of them says <eos>
    seed = runs.index(with_eos)
    cut = lm.generate([0, 3], max_tokens=15, temperature=1.5, seed=seed, stop_at_eos=True)
    assert cut.token_ids == with_eos.token_ids[:with_eos.token_ids.index(eos) + 1] and cut.finish_reason == "stop"
    by_id = lm.generate([0, 3], max_tokens=15, temperature=1.5, seed=seed, stop_token_ids=(eos,))
    assert by_id.token_ids == cut.token_ids
    none = lm.generate([0, 3], max_tokens=0)
    assert none.token_ids == [] and none.finish_reason == "length"


def test_stream_yields_the_generated_text_held_back_for_stop_strings(exports):
    lm = SparseLM.load(exports("lstm", 0.33))
    free = lm.generate([0, 3], max_tokens=10, seed=4)
    params = SamplingParams(max_tokens=10, seed=4, stop=(f"{free.tokens[5]} zz", "qq"))  # prefixes, never hit
    events = list(lm.stream([0, 3], params))
    done = lm.generate([0, 3], params)
    assert done.text == free.text
    assert [e.token_id for e in events] == done.token_ids
    assert "".join(e.text for e in events) == done.text and events[-1].finished
    assert all(not e.finished for e in events[:-1])


def test_text_api(exports):
    lm = SparseLM.load(exports("lstm", 0.33))
    s = lm.score("w3 w4 w5\nw6")
    assert s.tokens == ["w3", "w4", "w5", "<eos>", "w6", "<eos>"] and len(s.logprobs) == 6
    assert lm.score_texts(["w3 w4 w5\nw6", "w9"])[0].logprobs == s.logprobs
    assert lm.prompt_ids("w3 w4") == [lm.vocab.eos_id, 3, 4]


def test_state_selects_and_concatenates_rows():
    s = State([(torch.zeros(4, w), torch.zeros(4, w)) for w in (3, 2)])
    s = s.map(lambda t: torch.arange(t.numel(), dtype=torch.float).view(t.shape))
    picked = s.select([2, 0])
    assert picked.batch_size == 2 and torch.equal(picked[0][0][0], s[0][0][2])
    joined = State.cat([picked, s.select([1])])
    assert joined.batch_size == 3 and torch.equal(joined[1][1][2], s[1][1][1])
    g = State([torch.zeros(2, 5)])
    assert State.cat([g, g]).batch_size == 4 and isinstance(g[0], torch.Tensor)


def test_bad_input_is_a_user_error(exports):
    lm = SparseLM.load(exports("lstm", 0.33))
    with pytest.raises(UserError):
        lm.forward(torch.tensor([[41]]))
    with pytest.raises(UserError):
        lm.score_ids([[]])
    with pytest.raises(UserError):
        lm.score_ids([[0, -1]])
    with pytest.raises(UserError):
        lm.batch_generator().add([], SamplingParams())
    with pytest.raises(UserError):
        SparseLM.load(exports("lstm", 0.33), backend="tpu")
    with pytest.raises(UserError):
        SparseLM.load(exports("lstm", 0.33), threads=0)


def test_onnx_backend_needs_the_graph(tmp_path, make_run):
    run = make_run(arch="lstm")
    export_run(run, tmp_path / "plain")
    with pytest.raises(UserError, match="model.onnx"):
        SparseLM.load(tmp_path / "plain", backend="onnx")


def test_info(exports):
    info = SparseLM.load(exports("gru", 0.33)).info()
    assert info["arch"] == "gru" and info["backend"] == "sparse" and 0.3 < info["density"] < 0.4
    if kernels.compiled_available():
        assert info["kernels"].startswith("compiled-cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sparse_equals_cpu(exports):
    path = exports("lstm", 0.33)
    cpu, gpu = SparseLM.load(path), SparseLM.load(path, device="cuda")
    tokens = torch.randint(0, 41, (7, 5), generator=torch.Generator().manual_seed(0))
    assert rel_err(gpu.forward(tokens)[0].cpu(), cpu.forward(tokens)[0]) < TOL
    assert cpu.generate([0, 3], max_tokens=8, temperature=0).token_ids == \
        gpu.generate([0, 3], max_tokens=8, temperature=0).token_ids


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tie", [True, False])
def test_parameter_shapes_are_the_modules(arch, tie):
    from selfish_deploy.model import RNNLM, ModelConfig

    cfg = ModelConfig(arch=arch, vocab_size=30, emb=6, hidden=9, layers=3, tie_weights=tie)
    assert cfg.parameter_shapes() == {n: tuple(p.shape) for n, p in RNNLM(cfg).named_parameters()}


def test_min_tokens_bans_the_stop_tokens_until_then(exports):
    """min_tokens: <eos> (with stop_at_eos) and stop_token_ids cannot be drawn before it, whatever their
    probability (a +100 bias here); afterwards they stop the sequence; reported log-probabilities are the
    model's."""
    lm = SparseLM.load(exports("lstm", 0.33))
    eos = lm.vocab.eos_id
    stop = SamplingParams(max_tokens=10, min_tokens=4, stop_at_eos=True, stop_token_ids=(6,), seed=0,
                          logit_bias={eos: 100, 6: 100})
    got = lm.generate([0, 3], stop)
    assert len(got.token_ids) == 5 and got.token_ids[-1] in (eos, 6) and got.finish_reason == "stop"
    assert not {eos, 6} & set(got.token_ids[:4])
    logp, state = lm.forward(torch.tensor([[0], [3]]))
    assert got.logprobs[0] == pytest.approx(logp[-1, 0, got.token_ids[0]].item(), abs=1e-6)
    with pytest.raises(UserError):
        SamplingParams(max_tokens=3, min_tokens=4)
