"""``export_run``: masked run weights -> CSR export directory (and ``model.onnx``), with a size report.

The weights are the run's ``model.safetensors``: the best-validation weights, which with SNT-ASGD are
the masked averages once averaging has begun (the trainer saves inside ``optimizer.eval_weights()``).
``config.json`` records which: ``weights.averaged`` from the best epoch's ``phase`` in ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from ..csr import CSR, DTYPES
from ..errors import UserError
from ..exportdir import (EXPORT_FORMAT, EXPORT_FORMAT_VERSION, ExportedModel, load_export, save_export,
                         verify_manifest, write_manifest, write_report)
from ..hub.card import DEFAULT_LICENSE, write_card
from ..rundir import Run, load_run
from .hf_tokenizer import write_hf_tokenizer
from .onnx_graph import ONNX_FILE, build_onnx, onnx_summary, save_onnx

log = logging.getLogger(__name__)


def _check_masks(run: Run) -> None:
    """Masks name 2-D weights of the same shape; weights alive outside their mask are dropped (warned)."""
    for name, mask in run.masks.items():
        w = run.weights.get(name)
        if w is None or w.dim() != 2:
            raise UserError(f"{run.path}/model.safetensors: mask for {name!r}, which is not a weight matrix")
        if tuple(mask.shape) != tuple(w.shape):
            raise UserError(f"{run.path}/model.safetensors: mask {name} has shape {tuple(mask.shape)}, "
                            f"weight has {tuple(w.shape)}")
        outside = int(((w != 0) & ~mask).sum())
        if outside:
            log.warning("%s: %d non-zero weights outside the mask are dropped", name, outside)


def _encode(name: str, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype``; an error where that would turn finite weights into inf (fp16 tops at 65504)."""
    out = weight.to(dtype)
    if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(weight).all()):
        raise UserError(f"{name}: weights overflow {dtype} (max |w| = {float(weight.abs().max()):g}); "
                        "export in fp32 or bf16")
    return out


def _weights_provenance(run_dir: Path) -> dict:
    """Epoch of the saved (best-validation) weights and whether they are SNT-ASGD averages."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    try:
        epochs = [r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())
                  if r.get("event") == "epoch" and "val_loss" in r]
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        log.warning("%s is unreadable; the export does not record which epoch it holds", path)
        return {}
    if not epochs:
        return {}
    best = min(epochs, key=lambda r: r["val_loss"])  # the first minimum: the trainer saves on strict improvement
    return {"epoch": best["epoch"], "val_ppl": best.get("val_ppl"), "averaged": best.get("phase") == "asgd"}


def build_export(run_dir: str | Path, dtype: str = "fp32") -> ExportedModel:
    """Encode every masked matrix below density 1.0 as CSR in ``dtype``; biases stay as trained."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    run = load_run(run_dir)
    run.build_model()  # strict check of names and shapes before anything is written
    _check_masks(run)
    model = ExportedModel(config={}, model_config=run.model_config, vocab=run.vocab)
    for name, weight in run.weights.items():
        mask = run.masks.get(name)
        if mask is not None and not bool(mask.all()):
            model.sparse[name] = CSR.from_masked(_encode(name, weight, DTYPES[dtype]), mask, DTYPES[dtype])
        elif weight.dim() == 2:
            model.dense[name] = _encode(name, weight, DTYPES[dtype])
        else:
            model.dense[name] = weight
    info = model.tensor_info()
    matrices = {n: i for n, i in info.items() if len(i["shape"]) == 2}
    model.config = {
        "format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION,
        "model": run.model_config.to_dict(), "vocab_size": len(run.vocab), "dtype": dtype,
        "density": sum(i["nnz"] for i in matrices.values())
        / sum(i["shape"][0] * i["shape"][1] for i in matrices.values()),
        "density_per_tensor": {n: i["density"] for n, i in matrices.items()},
        "source_run": str(Path(run_dir).resolve()), "weights": _weights_provenance(Path(run_dir)),
        "corpus": run.config.get("corpus", {}), "train": run.config.get("train", {}),
        "results": run.config.get("results", {}),
    }
    return model


def size_report(model: ExportedModel, export_dir: str | Path | None = None) -> dict:
    """Bytes per tensor dense fp32 vs as stored, the total ratio, and the file sizes in ``export_dir``."""
    rows, dense_total, stored_total = {}, 0, 0
    for n, entry in model.tensor_info().items():
        numel = 1
        for s in entry["shape"]:
            numel *= s
        stored = model.sparse[n].nbytes() if n in model.sparse else \
            model.dense[n].numel() * model.dense[n].element_size()
        rows[n] = {**entry, "bytes_dense_fp32": 4 * numel, "bytes_stored": stored}
        dense_total += 4 * numel
        stored_total += stored
    report = {"dtype": model.config.get("dtype"), "tensors": rows, "bytes_dense_fp32": dense_total,
              "bytes_stored": stored_total, "compression_ratio": dense_total / stored_total}
    if export_dir is not None:
        report["files"] = file_sizes(export_dir)
    return report


def file_sizes(export_dir: str | Path) -> dict:
    """Bytes of each model file present, and how ``model.onnx`` stores its matrices."""
    d = Path(export_dir)
    files = {name: (d / name).stat().st_size for name in ("model.safetensors", ONNX_FILE) if (d / name).is_file()}
    if ONNX_FILE in files:
        files["onnx"] = onnx_summary(d / ONNX_FILE)
    return files


def format_report(report: dict) -> str:
    """The report as a fixed-width table for terminals and logs."""
    head = (f"{'tensor':<24} {'shape':>13} {'nnz':>10} {'density':>8} {'per-gate density':<28} "
            f"{'dense B':>11} {'stored B':>11}")
    lines = [head, "-" * len(head)]
    for n, r in report["tensors"].items():
        gates = " ".join(f"{g:.3f}" for g in r.get("gates", []))
        lines.append(f"{n:<24} {'x'.join(map(str, r['shape'])):>13} {r['nnz']:>10} {r['density']:>8.4f} "
                     f"{gates:<28} {r['bytes_dense_fp32']:>11} {r['bytes_stored']:>11}")
    lines.append("-" * len(head))
    lines.append(f"total: {report['bytes_dense_fp32']} B dense fp32 -> {report['bytes_stored']} B stored "
                 f"({report['dtype']}): {report['compression_ratio']:.2f}x smaller")
    files = report.get("files", {})
    for name, size in files.items():
        if isinstance(size, int):
            lines.append(f"file {name}: {size} B")
    if "onnx" in files:
        o = files["onnx"]
        lines.append(f"model.onnx: opset {o['opset']}, {o['sparse_initializers']} sparse and "
                     f"{o['dense_initializers']} dense initializers")
    return "\n".join(lines)


def export_run(run_dir: str | Path, out_dir: str | Path, dtype: str = "fp32", onnx: bool = False,
               onnx_sparse: bool = False, repo_id: str | None = None, speed: dict | None = None,
               license: str = DEFAULT_LICENSE) -> dict:
    """Write the export directory for ``run_dir`` (``model.onnx`` too with ``onnx``); return its size report.

    The directory is a complete Hub repository: model files, the run's ``plots/``, the ``README.md`` card
    (``repo_id`` for its snippets, ``speed`` rows from ``read_speed_report``) and, written last, the manifest.
    """
    model = build_export(run_dir, dtype)
    onnx_model = None
    if onnx or onnx_sparse:
        onnx_model = build_onnx(model, sparse=onnx_sparse)  # before writing: a failure leaves no half export
    out = save_export(model, out_dir)
    if onnx_model is not None:
        save_onnx(onnx_model, out / ONNX_FILE)
    elif (out / ONNX_FILE).exists():
        (out / ONNX_FILE).unlink()  # from an earlier export into this directory: no longer matches
        log.info("removed the stale %s from %s", ONNX_FILE, out)
    report = size_report(model, out)
    write_report(out, report)
    copy_plots(Path(run_dir), out)
    write_hf_tokenizer(out, model.vocab)  # tokenizer/: for lm-eval and other clients that tokenize
    write_card(out, model, report, repo_id, speed, license)
    write_manifest(out)
    log.info("exported %s -> %s (%.2fx smaller than dense fp32)", run_dir, out, report["compression_ratio"])
    return report


def copy_plots(run_dir: Path, out: Path) -> None:
    """The run's ``plots/*.png`` into ``out/plots/``, replacing plots of an earlier export there."""
    if (out / "plots").is_dir():
        shutil.rmtree(out / "plots")
    pngs = sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []
    for png in pngs:
        (out / "plots").mkdir(exist_ok=True)
        shutil.copy2(png, out / "plots" / png.name)


def refresh_export(export_dir: str | Path, repo_id: str | None = None, speed: dict | None = None,
                   license: str = DEFAULT_LICENSE) -> Path:
    """Write the card and the manifest of an existing export anew; its model files are checked, not changed.

    Upgrades an export made before cards and manifests, re-renders the card (with a speed report, say), or
    records a ``model.onnx`` added to the directory later.
    """
    out = Path(export_dir)
    model = load_export(out, verify=False)
    verify_manifest(out, allow_unlisted=True)  # listed files unchanged; a model.onnx added since is recorded
    report = size_report(model, out)
    if not (out / "export_report.json").is_file():
        write_report(out, report)
    write_hf_tokenizer(out, model.vocab)  # adds tokenizer/ to an export made before it
    write_card(out, model, report, repo_id, speed, license)
    write_manifest(out)
    log.info("refreshed the card and manifest of %s", out)
    return out
