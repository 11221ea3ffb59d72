"""CSR export: exact round trip of masks and weights, the runtime against PyTorch, and clear errors.

Relative error here is ``max|a - b| / max|b|`` with ``b`` the PyTorch reference.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from selfish_deploy.csr import CSR, DTYPES
from selfish_deploy.errors import UserError
from selfish_deploy.export.cli import main as export_main
from selfish_deploy.export.inspect import main as inspect_main
from selfish_deploy.export.writer import export_run
from selfish_deploy.exportdir import load_export
from selfish_deploy.families.stacked import CELLS as ARCHS
from selfish_deploy.rundir import load_run, write_json
from selfish_deploy.runtime import SparseLM

TOL = 1e-5  # fp32 compute on identical weight values: only summation order differs


def relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def reference(run_dir, dtype: str = "fp32"):
    """The run's PyTorch model in eval mode, weight matrices rounded to ``dtype`` as the export stores them."""
    model = load_run(run_dir).build_model()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(p.to(DTYPES[dtype]).float())
    return model


def random_state(model, batch: int, gen: torch.Generator) -> list:
    """Non-zero state per layer in the model's layout (the runtime's too): (B, H) tensors, pairs for LSTM."""
    def rnd(t):
        return torch.rand(t.shape, generator=gen) - 0.5
    return [tuple(rnd(s) for s in st) if isinstance(st, tuple) else rnd(st) for st in model.init_hidden(batch)]


def flat(state: list) -> list[torch.Tensor]:
    return [s for st in state for s in (st if isinstance(st, tuple) else (st,))]


def check_runtime_matches(run_dir, export_dir, dtype: str, T: int = 6, B: int = 3) -> None:
    gen = torch.Generator().manual_seed(1)
    model = reference(run_dir, dtype)
    tokens = torch.randint(0, model.config.vocab_size, (T, B), generator=gen)
    state = random_state(model, B, gen)
    with torch.no_grad():
        ref, ref_state = model(tokens, state)  # log-probabilities
    lm = SparseLM.load(export_dir)
    logp, new_state = lm.forward(tokens, state)
    assert logp.shape == (T, B, model.config.vocab_size)
    assert relerr(logp, ref) < TOL
    for got, want in zip(flat(new_state), flat(ref_state), strict=True):
        assert relerr(got, want) < TOL


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", ARCHS)
def test_runtime_matches_pytorch(make_run, tmp_path, arch, tie, dtype):
    run = make_run(arch=arch, tie=tie, density=0.4)
    export_run(run, tmp_path / "export", dtype)
    check_runtime_matches(run, tmp_path / "export", dtype)


def test_csr_round_trip_keeps_mask_and_alive_zeros(make_run, tmp_path):
    run_dir = make_run(arch="gru", tie=False, density=0.3, zero_alive=4)
    export_run(run_dir, tmp_path / "export")
    run, exported = load_run(run_dir), load_export(tmp_path / "export")
    assert set(exported.sparse) == set(run.masks)
    for name, mask in run.masks.items():
        csr = exported.sparse[name]
        assert torch.equal(csr.mask(), mask)
        assert csr.nnz == int(mask.sum())
        assert int((csr.values == 0).sum()) >= 4  # alive weights that are exactly zero stay stored
        assert torch.equal(csr.to_dense(), run.weights[name])
        assert csr.col_indices.dtype == torch.uint16 and csr.crow_indices.dtype == torch.int32
    for name in exported.dense:  # biases: bit-exact
        assert torch.equal(exported.dense[name], run.weights[name])


@pytest.mark.parametrize("cols, index_dtype", [(65_536, torch.uint16), (70_000, torch.int32)])
def test_csr_index_dtype_and_safetensors_round_trip(tmp_path, cols, index_dtype):
    gen = torch.Generator().manual_seed(0)
    mask = torch.rand(3, cols, generator=gen) < 0.01
    mask[0, cols - 1] = True  # the largest column index must survive
    weight = torch.randn(3, cols, generator=gen) * mask
    csr = CSR.from_masked(weight, mask)
    assert csr.col_indices.dtype == index_dtype
    save_file({"crow": csr.crow_indices, "col": csr.col_indices, "val": csr.values}, str(tmp_path / "m.safetensors"))
    t = load_file(str(tmp_path / "m.safetensors"))
    back = CSR(t["crow"], t["col"], t["val"], (3, cols))
    back.validate()
    assert back.col_indices.dtype == index_dtype
    assert torch.equal(back.mask(), mask) and torch.equal(back.to_dense(), weight)
    x = torch.randn(cols, 2, generator=gen)
    from selfish_deploy.kernels import Matrix, Reference, kernels_for

    for k in (kernels_for("cpu"), Reference()):  # compiled (int32 indices past 65,536 columns) and reference
        assert relerr(k.spmm(Matrix(csr=back), x), weight @ x) < TOL


def test_csr_validate_rejects_unsorted_and_duplicate_columns():
    csr = CSR.from_masked(torch.ones(2, 4), torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0]], dtype=torch.bool))
    bad = CSR(csr.crow_indices, torch.tensor([3, 0, 2, 1], dtype=torch.uint16), csr.values, csr.shape)
    with pytest.raises(ValueError, match="strictly increasing"):
        bad.validate()
    dup = CSR(csr.crow_indices, torch.tensor([0, 2, 2, 1], dtype=torch.uint16), csr.values, csr.shape)
    with pytest.raises(ValueError, match="strictly increasing"):
        dup.validate()


def test_dense_export(make_run, tmp_path):
    run = make_run(arch="lstm", tie=False, density=1.0)
    report = export_run(run, tmp_path / "export")
    exported = load_export(tmp_path / "export")
    assert not exported.sparse and exported.config["density"] == 1.0
    assert report["compression_ratio"] == pytest.approx(1.0)
    check_runtime_matches(run, tmp_path / "export", "fp32")


def test_metadata_carries_version_densities_and_source(make_run, tmp_path):
    run = make_run(arch="lstm", tie=True, density=0.25)
    export_run(run, tmp_path / "export")
    with safe_open(str(tmp_path / "export" / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "selfish-export" and meta["format_version"] == "1"
    assert meta["source_run"] == str(run.resolve())
    masks = load_run(run).masks
    info = json.loads(meta["tensors"])
    for name, mask in masks.items():
        assert info[name]["density"] == pytest.approx(float(mask.float().mean()))
        gates = [float(b.float().mean()) for b in mask.chunk(4 if name.startswith("rnns.") else 1, dim=0)]
        assert info[name]["gates"] == pytest.approx(gates)


def test_inspect_prints_the_report(make_run, tmp_path, capsys):
    run = make_run(arch="rnn_tanh", tie=False, density=0.2)
    assert export_main([str(run), "--out", str(tmp_path / "export"), "--dtype", "fp16"]) == 0
    capsys.readouterr()
    assert inspect_main([str(tmp_path / "export")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    numbers = set(re.findall(r"\d+", out))
    assert {str(report["bytes_dense_fp32"]), str(report["bytes_stored"])} <= numbers
    assert str(report["files"]["model.safetensors"]) in numbers
    for name, row in report["tensors"].items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert str(row["nnz"]) in line.split() and str(row["bytes_stored"]) in line.split()
    assert f"{report['compression_ratio']:.2f}x" in out


def test_dry_run_writes_nothing(make_run, tmp_path):
    run = make_run()
    assert export_main([str(run), "--out", str(tmp_path / "export"), "--onnx", "--dry-run"]) == 0
    assert not (tmp_path / "export").exists()


# --- errors: one line on stderr, exit code 2, no traceback ------------------------------------------------------

def assert_clean_error(capsys, code: int, prog: str, *fragments: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith(f"{prog}: error:") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, err


def test_export_errors(make_run, tmp_path, capsys):
    out = str(tmp_path / "export")
    corrupt = make_run()
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert_clean_error(capsys, export_main([str(corrupt), "--out", out]), "selfish-export", "model.safetensors")

    truncated = make_run()
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_clean_error(capsys, export_main([str(truncated), "--out", out]), "selfish-export", "model.safetensors")

    mismatch = make_run(hidden=12)
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["model"]["hidden"] = 10
    write_json(mismatch / "config.json", cfg)
    assert_clean_error(capsys, export_main([str(mismatch), "--out", out]), "selfish-export", "shape")

    version = make_run()
    cfg = json.loads((version / "config.json").read_text())
    cfg["format_version"] = 99
    write_json(version / "config.json", cfg)
    assert_clean_error(capsys, export_main([str(version), "--out", out]), "selfish-export", "version 99")

    bad_mask = make_run(layers=1)
    t = load_file(str(bad_mask / "model.safetensors"))
    t["mask.encoder.weight"] = t["mask.encoder.weight"][:, :-1].contiguous()
    save_file(t, str(bad_mask / "model.safetensors"))
    assert_clean_error(capsys, export_main([str(bad_mask), "--out", out]), "selfish-export", "mask encoder.weight")

    huge = make_run(layers=1)
    t = load_file(str(huge / "model.safetensors"))
    t["rnns.0.weight_hh_l0"][t["mask.rnns.0.weight_hh_l0"]] *= 1e6
    save_file(t, str(huge / "model.safetensors"))
    assert_clean_error(capsys, export_main([str(huge), "--out", out, "--dtype", "fp16"]), "selfish-export",
                       "overflow")
    assert not (tmp_path / "export").exists()


def test_inspect_and_load_errors(make_run, tmp_path, capsys):
    def fresh(name: str):
        d = tmp_path / name
        assert export_main([str(make_run()), "--out", str(d)]) == 0
        capsys.readouterr()
        return d

    def check(d, *fragments):
        with pytest.raises(UserError):
            load_export(d)
        assert_clean_error(capsys, inspect_main([str(d)]), "selfish-inspect", *fragments)

    d = fresh("corrupt")
    (d / "model.safetensors").write_bytes(b"garbage" * 10)
    check(d, "model.safetensors")

    d = fresh("shape")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model"]["emb"] = 9
    write_json(d / "config.json", cfg)
    check(d, "shape")

    d = fresh("version")
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = 2
    write_json(d / "config.json", cfg)
    check(d, "version 2")

    d = fresh("meta-version")
    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(d / "model.safetensors"), metadata={**meta, "format_version": "7"})
    check(d, "version 7")

    d = fresh("csr")
    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    crow, col = t["encoder.weight.crow_indices"].long(), t["encoder.weight.col_indices"].int()
    start = int(crow[:-1][(crow[1:] - crow[:-1]) >= 2][0])  # first row with two alive weights
    col[start], col[start + 1] = col[start + 1].clone(), col[start].clone()  # now decreasing within the row
    t["encoder.weight.col_indices"] = col.to(torch.uint16)
    save_file(t, str(d / "model.safetensors"), metadata=meta)
    check(d, "encoder.weight", "strictly increasing")

    assert_clean_error(capsys, inspect_main([str(tmp_path / "missing")]), "selfish-inspect", "not found")


# --- through the real training CLI -----------------------------------------------------------------------------

def test_trained_run_exports_and_loads(tiny_run, tiny_export):
    exported = load_export(tiny_export)
    assert exported.config["source_run"] == str(tiny_run.resolve())
    assert exported.config["weights"]["epoch"] == 1
    assert 0.29 < exported.config["density"] < 0.31
    check_runtime_matches(tiny_run, tiny_export, "fp32", T=8, B=2)


def test_export_takes_snt_asgd_averages(tmp_path, data_dir):
    """With averaging from the first step, the exported weights are the masked averages, not the iterate."""
    from selfish_deploy.training.cli import main as train_main
    from selfish_deploy.training.config import TrainConfig

    if "asgd_after" not in TrainConfig.__dataclass_fields__:
        pytest.skip("SNT-ASGD has not landed")
    from selfish_deploy.training.checkpoint import load_checkpoint

    run = tmp_path / "asgd"
    args = ["--corpus", "ptb-tiny", "--data-dir", str(data_dir), "--layers", "1", "--hidden", "8", "--emb", "8",
            "--density", "0.5", "--batch-size", "40", "--bptt", "40", "--epochs", "1", "--optimizer", "snt-asgd",
            "--asgd-after", "0", "--seed", "3", "--log-interval", "1000", "--out", str(run)]
    assert train_main(args) == 0
    assert export_main([str(run), "--out", str(tmp_path / "export")]) == 0
    exported = load_export(tmp_path / "export")
    assert exported.config["weights"]["averaged"] is True
    raw = load_checkpoint(run)["weights"]  # the last SGD iterate
    saved = load_run(run)
    for name, csr in exported.sparse.items():
        assert torch.equal(csr.to_dense(), saved.weights[name])
        assert not torch.equal(csr.to_dense(), raw[name] * saved.masks[name])
