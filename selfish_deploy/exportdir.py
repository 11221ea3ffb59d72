"""The export directory: what ``selfish-export`` writes, the runtime reads and the Hub stores.

    EXPORT_DIR/
      config.json          model config, vocabulary size, dtype, densities, source run and its results
      model.safetensors    per weight matrix NAME either CSR (``NAME.crow_indices`` int32,
                           ``NAME.col_indices`` uint16|int32, ``NAME.values``) or dense ``NAME``;
                           biases dense; metadata: format version, layout/shape/density per tensor
      vocab.txt            one token per line
      export_report.json   sizes and densities per tensor, file sizes (``selfish-inspect`` prints it)
      model.onnx           with ``--onnx``: the same model as an ONNX graph (see export/onnx_graph.py)
      README.md            the model card (selfish_deploy.hub.card); plots/  the run's plots
      manifest.json        sha256 and size of every other file, checked by ``load_export``

A matrix at density 1.0 is stored dense (CSR would only add indices). Tied weights are stored once.

The manifest is what catches a ``model.safetensors`` whose bytes changed inside a tensor, which still parses:
a mismatch in a file the model is built from is an error, one in the documentation (card, plots, report,
which people edit on the Hub) a warning. Dot-files (``.gitattributes`` from the Hub, ``.cache/``) are not ours.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .csr import CSR
from .errors import UserError
from .families import block_densities, gate_blocks, gate_rows
from .model import ModelConfig
from .rundir import read_json, write_json
from .vocab import Vocabulary

EXPORT_FORMAT = "selfish-export"
EXPORT_FORMAT_VERSION = 1
CSR_PARTS = ("crow_indices", "col_indices", "values")
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "selfish-export-manifest"
# Files the model is built from: a manifest mismatch in any of these refuses the directory.
MODEL_FILES = ("config.json", "model.safetensors", "vocab.txt", "model.onnx")

log = logging.getLogger(__name__)


@dataclass
class ExportedModel:
    """An export directory in memory: CSR matrices, dense tensors, config and vocabulary."""

    config: dict
    model_config: ModelConfig
    vocab: Vocabulary
    sparse: dict[str, CSR] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None

    def weight(self, name: str) -> CSR | torch.Tensor:
        return self.sparse[name] if name in self.sparse else self.dense[name]

    def tensor_info(self) -> dict[str, dict]:
        """Layout, shape, nnz, density and per-gate density (the family's row blocks) of every stored tensor."""
        info = {}
        cfg = self.model_config
        for n, csr in self.sparse.items():
            gates = block_densities(csr.mask(), gate_blocks(n, cfg), gate_rows(n, cfg))
            info[n] = {"layout": "csr", "shape": list(csr.shape), "nnz": csr.nnz,
                       "density": csr.nnz / (csr.shape[0] * csr.shape[1]), "gates": gates}
        for n, t in self.dense.items():
            entry = {"layout": "dense", "shape": list(t.shape), "nnz": t.numel(), "density": 1.0}
            if t.dim() == 2:
                entry["gates"] = [1.0] * len(gate_blocks(n, cfg))
            info[n] = entry
        return info


def save_export(model: ExportedModel, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for n, csr in model.sparse.items():
        for part in CSR_PARTS:
            tensors[f"{n}.{part}"] = getattr(csr, part).contiguous()
    tensors.update({n: t.contiguous() for n, t in model.dense.items()})
    info = model.tensor_info()
    metadata = {"format": EXPORT_FORMAT, "format_version": str(EXPORT_FORMAT_VERSION),
                "tensors": json.dumps(info), "source_run": str(model.config.get("source_run", ""))}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(out / "model.safetensors")
    write_json(out / "config.json", model.config)
    model.vocab.save(out / "vocab.txt")
    write_manifest(out)
    return out


def _check_format(where: str, fmt, version) -> None:
    if fmt != EXPORT_FORMAT:
        raise UserError(f"{where} is not a selfish-deploy export (format {fmt!r})")
    if str(version) != str(EXPORT_FORMAT_VERSION):
        raise UserError(f"{where}: export format version {version} is not supported "
                        f"(this version reads {EXPORT_FORMAT_VERSION})")


def load_export(path: str | Path, verify: bool = True) -> ExportedModel:
    """Read and validate an export directory; every problem is a ``UserError`` naming the file.

    ``verify=False`` skips the manifest check (for ``refresh_export``, which checks it its own way).
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"export directory not found: {path}")
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        raise UserError(f"{path}/config.json is not a JSON object")
    _check_format(str(path / "config.json"), config.get("format"), config.get("format_version"))
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}/config.json has no valid 'model' section: {e}") from None
    vocab = Vocabulary.load(path / "vocab.txt")
    if len(vocab) != model_config.vocab_size:
        raise UserError(f"{path}: vocab.txt has {len(vocab)} words, config says {model_config.vocab_size}")
    st = path / "model.safetensors"
    if not st.is_file():
        raise UserError(f"missing model.safetensors in {path}")
    try:
        with safe_open(str(st), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{st} is not a readable safetensors file: {e}") from None
    _check_format(str(st), meta.get("format"), meta.get("format_version"))
    try:
        info = json.loads(meta["tensors"])
        if not isinstance(info, dict) or not all(isinstance(e, dict) for e in info.values()):
            raise ValueError("not a JSON object of objects")
    except (KeyError, ValueError) as e:
        raise UserError(f"{st}: metadata 'tensors' is missing or corrupt: {e}") from None
    model = ExportedModel(config, model_config, vocab, path=path)
    for n, entry in info.items():
        try:
            shape = tuple(int(s) for s in entry["shape"])
            if entry["layout"] == "csr":
                csr = CSR(*(tensors[f"{n}.{p}"] for p in CSR_PARTS), shape=shape)
                csr.validate()
                model.sparse[n] = csr
            else:
                model.dense[n] = tensors[n]
                if tuple(tensors[n].shape) != shape:
                    raise ValueError(f"shape {tuple(tensors[n].shape)}, metadata says {shape}")
        except (KeyError, ValueError, TypeError) as e:
            raise UserError(f"{st}: tensor {n} is corrupt: {e}") from None
    _check_shapes(model, st)
    if verify:
        verify_manifest(path)  # last: a file that does not even parse gets the more precise message above
    return model


def _check_shapes(model: ExportedModel, where: Path) -> None:
    """Every parameter the config implies is present with the right shape (strict load)."""
    expected = model.model_config.parameter_shapes()  # arithmetic: building a meta model costs ~70 MB of imports
    stored = {n: tuple(model.weight(n).shape) for n in [*model.sparse, *model.dense]}
    missing, unexpected = set(expected) - set(stored), set(stored) - set(expected)
    if missing or unexpected:
        raise UserError(f"{where}: tensors do not match config.json (missing {sorted(missing)}, "
                        f"unexpected {sorted(unexpected)})")
    for n, shape in expected.items():
        if stored[n] != shape:
            raise UserError(f"{where}: {n} has shape {stored[n]}, config.json implies {shape}")


def read_report(path: str | Path) -> dict:
    return read_json(Path(path) / "export_report.json")


def write_report(path: str | Path, report: dict) -> None:
    write_json(Path(path) / "export_report.json", report)


# --- manifest -------------------------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_files(path: str | Path) -> list[str]:
    """Relative paths of the files the manifest covers: everything but itself and dot-files, sorted."""
    root = Path(path)
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and rel.as_posix() != MANIFEST_FILE and not any(s.startswith(".") for s in rel.parts) \
                and not rel.name.endswith(".tmp"):
            out.append(rel.as_posix())
    return sorted(out)


def write_manifest(path: str | Path) -> dict:
    """Write ``manifest.json`` over the files now in ``path``; call it after the last file is written."""
    root = Path(path)
    files = {name: {"sha256": sha256_file(root / name), "size": (root / name).stat().st_size}
             for name in export_files(root)}
    manifest = {"format": MANIFEST_FORMAT, "format_version": 1, "algorithm": "sha256", "files": files}
    write_json(root / MANIFEST_FILE, manifest)
    return manifest


def _read_manifest(path: Path) -> dict | None:
    where = path / MANIFEST_FILE
    if not where.is_file():
        return None
    manifest = read_json(where)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise UserError(f"{where} is not a selfish-deploy manifest")
    for name, entry in files.items():
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not isinstance(entry, dict) \
                or not isinstance(entry.get("sha256"), str):
            raise UserError(f"{where}: invalid entry {name!r}")
    return files


def verify_manifest(path: str | Path, allow_unlisted: bool = False) -> None:
    """Check every file against ``manifest.json``: ``UserError`` naming a changed model file, warnings else.

    An export written before manifests existed loads with a warning (``selfish-export --refresh`` adds one).
    A model file the manifest does not list (a ``model.onnx`` added later) is refused unless ``allow_unlisted``.
    """
    root = Path(path)
    files = _read_manifest(root)
    if files is None:
        log.warning("%s has no %s (an export from before manifests): its files cannot be checked for "
                    "corruption; `selfish-export --refresh %s` adds one", root, MANIFEST_FILE, root)
        return
    for name in MODEL_FILES:
        if name not in files and (root / name).is_file() and not allow_unlisted:
            raise UserError(f"{root / name} is not listed in {MANIFEST_FILE}: it was added after export "
                            f"(`selfish-export --refresh {root}` records it)")
    for name, entry in files.items():
        problem = None
        if not (root / name).is_file():
            problem = f"{name} is listed in {MANIFEST_FILE} but missing"
        elif (root / name).stat().st_size != entry.get("size", (root / name).stat().st_size) or \
                sha256_file(root / name) != entry["sha256"]:
            problem = (f"{name} does not match its sha256 in {MANIFEST_FILE}: the file is corrupted or was "
                       "changed after export")
        if problem and name in MODEL_FILES:
            raise UserError(f"{root}: {problem}; re-download or re-export it")
        if problem:
            log.warning("%s: %s (documentation only: the model is unaffected)", root, problem)
