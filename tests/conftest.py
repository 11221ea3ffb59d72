"""Shared fixtures: the corpora beside the repo, and a tiny real run and export made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Test models are tiny: one thread is as fast, and avoids OpenMP spin-waiting when the machine is busy.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
# The corpora beside the repository, or wherever SELFISH_DATA_DIR points (as for the loader).
DATA_DIR = Path(os.environ.get("SELFISH_DATA_DIR") or REPO.parent / "shared" / "data")

TINY_TRAIN_ARGS = ["--corpus", "ptb-tiny", "--arch", "lstm", "--layers", "2", "--hidden", "24", "--emb", "16",
                   "--density", "0.3", "--batch-size", "20", "--bptt", "20", "--seed", "7", "--log-interval", "1000"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "ptb-tiny" / "train.txt").is_file():
        pytest.skip(f"corpora not found at {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_dir) -> Path:
    """A real 1-epoch sparse LSTM run on ptb-tiny, trained through the CLI."""
    from selfish_deploy.training.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main([*TINY_TRAIN_ARGS, "--data-dir", str(data_dir), "--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_run) -> Path:
    """The CSR export (fp32) of ``tiny_run``."""
    from selfish_deploy.export.cli import main

    out = tmp_path_factory.mktemp("exports") / "tiny"
    assert main([str(tiny_run), "--out", str(out)]) == 0
    return out


# --- synthetic run directories (export/ONNX tests): no training loop, random weights and masks --------------

def write_run(path: Path, arch: str = "lstm", tie: bool = True, density: float = 0.4, vocab_size: int = 37,
              emb: int = 8, hidden: int = 12, layers: int = 2, seed: int = 0, zero_alive: int = 3) -> Path:
    """A run directory in the format ``selfish-train`` writes, with random weights under random masks.

    ``zero_alive`` alive weights per matrix are set to exactly 0.0, so exports must keep the mask, not the
    non-zeros. Returns ``path``.
    """
    from selfish_deploy.masks import MaskRegistry
    from selfish_deploy.model import RNNLM, ModelConfig
    from selfish_deploy.rundir import RUN_FORMAT, RUN_FORMAT_VERSION, save_weights, write_json
    from selfish_deploy.vocab import Vocabulary

    gen = torch.Generator().manual_seed(seed)
    cfg = ModelConfig(arch=arch, vocab_size=vocab_size, emb=emb, hidden=hidden, layers=layers, dropout=0.2,
                      tie_weights=tie)
    model = RNNLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.rand(p.shape, generator=gen) - 0.5) * 1.2)  # U(-0.6, 0.6): gates away from saturation
    masks = MaskRegistry(model, density, generator=gen, arch=arch)
    with torch.no_grad():
        for n, p in masks.params.items():
            alive = masks.masks[n].view(-1).nonzero().view(-1)
            p.view(-1)[alive[:zero_alive]] = 0.0
    path.mkdir(parents=True, exist_ok=True)
    save_weights(path / "model.safetensors", model, masks.masks)
    Vocabulary(["<eos>", "<unk>", *(f"w{i}" for i in range(2, vocab_size))]).save(path / "vocab.txt")
    write_json(path / "config.json", {
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "model": cfg.to_dict(),
        "train": {"method": "static", "density": density, "seed": seed}, "corpus": {"name": "synthetic"},
        "vocab_size": vocab_size, "density": masks.total_density(),
        "density_per_tensor": {n: masks.density(n) for n in masks}, "results": {},
    })
    return path


@pytest.fixture
def make_run(tmp_path):
    """Factory: ``make_run(arch=..., tie=..., density=...)`` -> a fresh synthetic run directory."""
    count = iter(range(1_000_000))

    def make(**kwargs) -> Path:
        return write_run(tmp_path / f"run{next(count)}", **kwargs)

    return make


# --- a local Hugging Face Hub (tests/hub_server.py): the real huggingface_hub client, no network ------------

@pytest.fixture(scope="session")
def hub_server():
    """A Hub-compatible server on a free port of 127.0.0.1 for the session: ``.url``, ``.store``, ``.requests``."""
    from hub_server import HubServer

    with HubServer() as server:
        yield server


@pytest.fixture
def hub_endpoint(hub_server, tmp_path, monkeypatch):
    """URL of the emptied ``hub_server``, made the Hub for this test; yields the URL.

    Subprocesses get it through the environment (``HF_ENDPOINT``, ``HF_HOME`` in tmp, dummy ``HF_TOKEN``).
    This process imported ``huggingface_hub`` already, and its ``constants`` read those variables at import,
    so the values the library reads at call time are patched too (checked below with ``hf_hub_url``).
    """
    from huggingface_hub import constants, hf_api, hf_hub_url

    url, home = hub_server.url, tmp_path / "hf-home"
    hub_server.store.reset()
    hub_server.requests.clear()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                "HUGGINGFACE_CO_STAGING", "HF_TOKEN_PATH", "HF_HUB_ETAG_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    for var, value in {"HF_ENDPOINT": url, "HF_HOME": str(home), "HF_TOKEN": "hf_dummy_test_token",
                       "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                       "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(var, value)
    for name, value in {
        "ENDPOINT": url, "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_TELEMETRY": True,
    }.items():
        monkeypatch.setattr(constants, name, value)  # raises if a name moved: never fall back to ~/.cache
    monkeypatch.setattr(hf_api.api, "endpoint", url)  # the instance behind huggingface_hub.create_repo & co.
    assert hf_hub_url("o/r", "f", revision="a/b") == f"{url}/o/r/resolve/a%2Fb/f", "huggingface_hub changed"
    yield url


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(arch, density, dtype, tie) -> the export directory (with model.onnx) of a random 2-layer model of
    ``arch`` (write_run's weights and masks, vocabulary 41, widths 10 and 14), made on first use."""
    from selfish_deploy.export.writer import export_run

    root, made = tmp_path_factory.mktemp("exports"), {}

    def get(arch, density, dtype="fp32", tie=True):
        key = (arch, density, dtype, tie)
        if key not in made:
            name = f"{arch}-{density}-{dtype}-{tie}"
            run = write_run(root / f"run-{name}", arch=arch, tie=tie, density=density, vocab_size=41, emb=10,
                            hidden=14, layers=2, seed=len(made))
            made[key] = root / f"export-{name}"
            export_run(run, made[key], dtype, onnx=True)
        return made[key]

    return get


def assert_one_call_step_is_the_general_path(lm, tokens=(0, 7, 40), seed=4):
    """Generation steps of ``lm`` (a sparse SparseLM with a compiled one-call step) from a random state equal
    the backend's general path (trunk, then head) bit for bit, numbers and state; a state in another layout
    (strided) is declined by the step and falls back to that path."""
    be = lm.backend
    assert be.step is not None
    gen = torch.Generator().manual_seed(seed)
    state = lm.init_state(1).map(lambda t: torch.rand(t.shape, generator=gen) - 0.5)
    for token in tokens:
        fast, fast_state = lm.forward(torch.tensor([[token]]), state)
        with torch.inference_mode():
            x, slow_state = be.trunk(torch.tensor([[token]]), state)
            slow = be.head(x, full=True)["logprobs"].view(1, 1, -1)
        assert torch.equal(fast, slow) and fast.shape == (1, 1, len(lm.vocab))
        assert all(torch.equal(a, b) for a, b in zip(fast_state.tensors(), slow_state.tensors()))
        state = fast_state
    strided = state.map(lambda t: torch.stack([t, t], -1)[..., 0])
    assert not be.step.usable(strided)
    assert torch.equal(lm.forward(torch.tensor([[3]]), strided)[0], lm.forward(torch.tensor([[3]]), state)[0])
