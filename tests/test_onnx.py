"""``model.onnx``: ONNX Runtime (CPU EP) against PyTorch, states included, step-by-step and sparse initializers.

Relative error here is ``max|a - b| / max|b|`` with ``b`` the reference.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from selfish_deploy.errors import UserError
from selfish_deploy.export.cli import main as export_main
from selfish_deploy.export.inspect import main as inspect_main
from selfish_deploy.export.onnx_graph import OPSET, state_names
from selfish_deploy.export.onnx_runner import OnnxLM
from selfish_deploy.export.writer import export_run
from selfish_deploy.families.stacked import CELLS as ARCHS
from selfish_deploy.model import ModelConfig
from selfish_deploy.runtime import SparseLM

from test_export import flat, random_state, reference, relerr

TOL = 1e-5


def batch_major(state: list) -> list:
    """PyTorch (B, H) state -> ONNX (B, H) numpy state."""
    return [tuple(s.numpy() for s in st) if isinstance(st, tuple) else st.numpy() for st in state]


def compare_with_pytorch(run_dir, export_dir, dtype: str = "fp32", T: int = 7, B: int = 3) -> None:
    gen = torch.Generator().manual_seed(2)
    model = reference(run_dir, dtype)
    tokens = torch.randint(0, model.config.vocab_size, (T, B), generator=gen)
    state = random_state(model, B, gen)
    with torch.no_grad():
        ref, ref_state = model(tokens, state)
    ref = ref.transpose(0, 1)  # log-probabilities (B, T, V)
    lm = OnnxLM.load(export_dir, threads=1)
    logp, new_state = lm.forward(tokens.t().numpy(), batch_major(state))
    assert logp.shape == (B, T, model.config.vocab_size)
    assert relerr(torch.from_numpy(logp), ref) < TOL
    for got, want in zip(flat(new_state), flat(ref_state), strict=True):
        assert relerr(torch.from_numpy(got), want) < TOL


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_matches_pytorch(make_run, tmp_path, arch, tie):
    run = make_run(arch=arch, tie=tie, density=0.4)
    export_run(run, tmp_path / "export", onnx=True)
    compare_with_pytorch(run, tmp_path / "export")


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_sparse_initializers_match_pytorch(make_run, tmp_path, arch, dtype):
    run = make_run(arch=arch, tie=arch == "gru", density=0.3)
    export_run(run, tmp_path / "export", dtype, onnx_sparse=True)
    model = onnx.load(str(tmp_path / "export" / "model.onnx"))
    matrices = 1 + 2 * 2 + (0 if arch == "gru" else 1)  # encoder, W and R per layer, decoder when untied
    assert len(model.graph.sparse_initializer) == matrices
    compare_with_pytorch(run, tmp_path / "export", dtype)


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_token_by_token_equals_one_call(make_run, tmp_path, arch):
    run = make_run(arch=arch, tie=False, density=0.5)
    export_run(run, tmp_path / "export", onnx=True)
    lm = OnnxLM.load(tmp_path / "export", threads=1)
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 37, (2, 9), generator=gen).numpy()  # (B, T)
    state = batch_major(random_state(reference(run), 2, gen))
    whole, whole_state = lm.forward(tokens, state)
    steps = []
    for t in range(tokens.shape[1]):
        logp, state = lm.forward(tokens[:, t:t + 1], state)
        steps.append(logp)
    assert relerr(torch.from_numpy(np.concatenate(steps, axis=1)), torch.from_numpy(whole)) < TOL
    for a, b in zip(flat(state), flat(whole_state), strict=True):
        assert relerr(torch.from_numpy(a), torch.from_numpy(b)) < TOL


def test_onnx_equals_csr_runtime_on_text(tiny_run, tmp_path):
    """The trained run: ONNX and the CSR runtime agree on a real sentence from a zero state."""
    assert export_main([str(tiny_run), "--out", str(tmp_path / "export"), "--onnx"]) == 0
    sparse_lm, onnx_lm = SparseLM.load(tmp_path / "export"), OnnxLM.load(tmp_path / "export", threads=1)
    ids = sparse_lm.vocab.encode("the company said it expects higher sales", add_eos=True)
    want, want_state = sparse_lm.forward(torch.tensor(ids).view(-1, 1), sparse_lm.init_state(1))
    got, got_state = onnx_lm.forward(np.array([ids]))
    assert relerr(torch.from_numpy(got[0]), want[:, 0]) < TOL
    for a, b in zip(flat(got_state), flat(want_state), strict=True):
        assert relerr(torch.from_numpy(a), b) < TOL


def test_interface(make_run, tmp_path):
    run = make_run(arch="lstm", tie=True, layers=2, emb=8, hidden=12)
    export_run(run, tmp_path / "export", onnx=True)
    model = onnx.load(str(tmp_path / "export" / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert {n.domain for n in model.graph.node} <= {""}  # standard operators only

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    inputs = {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in model.graph.input}
    outputs = {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in model.graph.output}
    f32, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert inputs == {"tokens": (i64, ["batch", "seq"]), "h0_layer0": (f32, ["batch", 12]),
                      "c0_layer0": (f32, ["batch", 12]), "h0_layer1": (f32, ["batch", 8]),
                      "c0_layer1": (f32, ["batch", 8])}
    assert outputs == {"logprobs": (f32, ["batch", "seq", 37]), "hn_layer0": (f32, ["batch", 12]),
                       "cn_layer0": (f32, ["batch", 12]), "hn_layer1": (f32, ["batch", 8]),
                       "cn_layer1": (f32, ["batch", 8])}
    assert state_names(ModelConfig(arch="gru", layers=2)) == (["h0_layer0", "h0_layer1"], ["hn_layer0", "hn_layer1"])
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["export_format_version"] == "1" and meta["source_run"] == str(run.resolve())
    # log-probabilities: each row sums to 1 in probability space, from a zero state, for any batch and length
    lm = OnnxLM.load(tmp_path / "export", threads=1)
    for shape in [(1, 1), (4, 11)]:
        logp, _ = lm.forward(np.zeros(shape, np.int64))
        assert np.allclose(np.exp(logp).sum(-1), 1.0, atol=1e-5)


def test_sparse_initializers_shrink_the_file_at_low_density(make_run, tmp_path):
    run = make_run(arch="lstm", tie=False, density=0.1, vocab_size=200, emb=32, hidden=48)
    export_run(run, tmp_path / "dense", onnx=True)
    report = export_run(run, tmp_path / "sparse", onnx_sparse=True)
    dense_bytes = (tmp_path / "dense" / "model.onnx").stat().st_size
    assert report["files"]["model.onnx"] < 0.45 * dense_bytes  # 12 bytes per alive weight vs 4 per weight
    assert report["files"]["onnx"]["sparse_initializers"] == 6


def test_dense_export_with_sparse_flag_stays_dense(make_run, tmp_path):
    run = make_run(arch="rnn_relu", tie=False, density=1.0)
    report = export_run(run, tmp_path / "export", onnx_sparse=True)
    assert report["files"]["onnx"]["sparse_initializers"] == 0
    compare_with_pytorch(run, tmp_path / "export")


def test_reexport_without_onnx_removes_stale_graph(make_run, tmp_path):
    run = make_run()
    export_run(run, tmp_path / "export", onnx=True)
    report = export_run(run, tmp_path / "export")
    assert not (tmp_path / "export" / "model.onnx").exists() and "model.onnx" not in report["files"]


def test_bad_onnx_files(make_run, tmp_path, capsys):
    run = make_run()
    d = tmp_path / "export"
    assert export_main([str(run), "--out", str(d), "--onnx"]) == 0
    report = json.loads((d / "export_report.json").read_text())
    capsys.readouterr()
    assert inspect_main([str(d)]) == 0
    out = capsys.readouterr().out
    assert f"file model.onnx: {report['files']['model.onnx']} B" in out

    model = onnx.load(str(d / "model.onnx"))
    for p in model.metadata_props:
        if p.key == "export_format_version":
            p.value = "9"
    onnx.save(model, str(tmp_path / "v9.onnx"))
    with pytest.raises(UserError, match="version 9"):
        OnnxLM.load(tmp_path / "v9.onnx")

    (d / "model.onnx").write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(UserError, match="not a loadable ONNX model"):
        OnnxLM.load(d)
    code = inspect_main([str(d)])
    err = capsys.readouterr().err
    assert code == 2 and "model.onnx" in err and "Traceback" not in err and err.count("\n") == 1
    with pytest.raises(UserError, match="not found"):
        OnnxLM.load(tmp_path / "nowhere")
