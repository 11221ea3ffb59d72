"""Export directories on the Hub, offline: ``selfish-push``, ``from_pretrained``, ``selfish-serve --model NS/NAME``
and ``selfish-inspect NS/NAME`` through the real ``huggingface_hub`` client against tests/hub_server.py.

Most tests use synthetic exports (random weights under random masks, no corpus needed); the model card test
uses the trained ``tiny_export``. Scores are compared exactly: the pulled files are the pushed bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
from safetensors import safe_open

from selfish_deploy.errors import UserError
from selfish_deploy.export.cli import main as export_main
from selfish_deploy.export.inspect import main as inspect_main
from selfish_deploy.export.writer import export_run
from selfish_deploy.exportdir import MANIFEST_FILE, export_files, load_export
from selfish_deploy.hub.push import main as push_main
from selfish_deploy.hub.resolve import resolve_export
from selfish_deploy.runtime import SparseLM
from selfish_deploy.serving.cli import main as serve_main

REPO = Path(__file__).resolve().parents[1]
TEXT = "w3 w7 w2 w11\nw5 w5 w30"
REPO_ID = "alice/sparse-lm"


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch):
    """Downloads draw tqdm bars on stderr; the error tests read stderr (subprocesses get the variable)."""
    import importlib

    hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not the class

    monkeypatch.setattr(hf_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", True)  # read from os.environ at import


def local_files(d: Path) -> dict[str, bytes]:
    return {name: (d / name).read_bytes() for name in [*export_files(d), MANIFEST_FILE]}


@pytest.fixture
def export_a(make_run, tmp_path) -> Path:
    export_run(make_run(seed=1, density=0.4), tmp_path / "export-a")
    return tmp_path / "export-a"


@pytest.fixture
def export_b(make_run, tmp_path) -> Path:
    export_run(make_run(seed=2, density=0.3), tmp_path / "export-b")
    return tmp_path / "export-b"


def push(export: Path, *extra: str) -> int:
    return push_main([str(export), "--repo-id", REPO_ID, *extra])


def assert_clean_error(capsys, code: int, prog: str, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith(f"{prog}: error:") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, err
    return err


# --- push and pull ----------------------------------------------------------------------------------------------

def test_push_then_pull_is_byte_identical(hub_endpoint, hub_server, export_a, capsys):
    assert push(export_a, "--commit-message", "first export") == 0
    oid = capsys.readouterr().out.strip()
    remote = hub_server.store.files(REPO_ID)
    assert remote == {".gitattributes": b"", **local_files(export_a)}
    assert {"README.md", "manifest.json", "config.json", "model.safetensors", "vocab.txt"} <= set(remote)
    commit = hub_server.store.get(REPO_ID).resolve("main")
    assert (commit.oid, commit.summary) == (oid, "first export")
    assert len([m for m, p in hub_server.requests if m == "POST" and "/commit/" in p]) == 1  # one commit

    hub_server.tokens.clear()
    snapshot = resolve_export(REPO_ID)
    assert set(hub_server.tokens) == {f"Bearer {os.environ['HF_TOKEN']}"}  # HF_TOKEN, read at call time
    assert snapshot != export_a and local_files(snapshot) == local_files(export_a)
    assert Path(constants.HF_HUB_CACHE) in snapshot.parents  # the standard cache (HF_HOME of the test)
    pulled, local = SparseLM.from_pretrained(REPO_ID), SparseLM.load(export_a)
    assert pulled.exported.path == snapshot
    assert pulled.score(TEXT).logprobs == local.score(TEXT).logprobs
    card = ModelCard.load(REPO_ID)  # the card as the Hub serves it
    assert card.data.library_name == "selfish-deploy" and "sparse" in card.data.tags


def test_push_options_private_token_and_the_resolve_headers(hub_endpoint, hub_server, export_a, capsys):
    hub_server.tokens.clear()
    assert push_main([str(export_a), "--repo-id", "carol/private-lm", "--private", "--token", "hf_write"]) == 0
    oid = capsys.readouterr().out.strip()
    assert hub_server.store.get("carol/private-lm").private
    assert hub_server.tokens and set(hub_server.tokens) == {"Bearer hf_write"}  # not the HF_TOKEN of the env
    # what hf_hub_download relies on, for a model repo: commit and blob ids, and byte ranges
    config = (export_a / "config.json").read_bytes()
    request = urllib.request.Request(f"{hub_endpoint}/carol/private-lm/resolve/main/config.json",
                                     headers={"Range": "bytes=2-9"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert (r.status, r.read(), r.headers["X-Repo-Commit"]) == (206, config[2:10], oid)
        assert r.headers["ETag"] == f'"{hashlib.sha1(b"blob %d" % len(config) + bytes(1) + config).hexdigest()}"'


def test_pinned_revisions_return_the_old_files(hub_endpoint, export_a, export_b, capsys):
    assert push(export_a) == 0
    first = capsys.readouterr().out.strip()
    HfApi().create_tag(REPO_ID, tag="v1")
    assert push(export_b) == 0
    a, b = SparseLM.load(export_a).score(TEXT).logprobs, SparseLM.load(export_b).score(TEXT).logprobs
    assert a != b
    assert SparseLM.from_pretrained(REPO_ID).score(TEXT).logprobs == b
    for pinned in (SparseLM.from_pretrained(REPO_ID, revision="v1"), SparseLM.from_pretrained(f"{REPO_ID}@v1"),
                   SparseLM.from_pretrained(REPO_ID, revision=first)):
        assert local_files(pinned.exported.path) == local_files(export_a)
        assert pinned.score(TEXT).logprobs == a
    assert inspect_main([f"{REPO_ID}@{first}"]) == 0
    assert f"{json.loads((export_a / 'export_report.json').read_text())['bytes_stored']} B stored" in \
        capsys.readouterr().out


def test_push_to_a_branch_mirrors_the_directory(hub_endpoint, hub_server, export_a, export_b):
    hub_server.store.put(REPO_ID, {"model.onnx": b"stale graph from an older export", "notes.txt": b"x"})
    assert push(export_a, "--revision", "dev", "--private") == 0
    assert set(hub_server.store.files(REPO_ID, "main")) == {".gitattributes", "model.onnx", "notes.txt"}
    # the commit on dev holds exactly the export: files the directory does not have are deleted
    assert hub_server.store.files(REPO_ID, "dev") == {".gitattributes": b"", **local_files(export_a)}
    assert push(export_b) == 0
    assert hub_server.store.files(REPO_ID, "main") == {".gitattributes": b"", **local_files(export_b)}
    assert SparseLM.from_pretrained(f"{REPO_ID}@dev").score(TEXT).logprobs == \
        SparseLM.load(export_a).score(TEXT).logprobs


def test_save_pretrained_and_push_to_hub_on_a_loaded_model(hub_endpoint, hub_server, export_a, tmp_path):
    lm = SparseLM.load(export_a)
    assert lm.save_pretrained(tmp_path / "copy") is None
    assert local_files(tmp_path / "copy") == local_files(export_a)
    url = lm.push_to_hub("bob/copy", commit_message="from python")
    assert url.startswith(f"{hub_endpoint}/bob/copy/commit/")
    assert hub_server.store.files("bob/copy") == {".gitattributes": b"", **local_files(export_a)}
    # a model pulled from the Hub saves the bytes it was pulled as (the cache's symlinks followed)
    pulled = SparseLM.from_pretrained("bob/copy")
    pulled.save_pretrained(tmp_path / "again", push_to_hub=True, repo_id="bob/again")
    assert local_files(tmp_path / "again") == local_files(export_a)
    assert hub_server.store.files("bob/again") == hub_server.store.files("bob/copy")
    # a model with no directory behind it (built in memory) is written with a card and a manifest
    lm.exported.path = None
    lm.save_pretrained(tmp_path / "fresh")
    fresh = load_export(tmp_path / "fresh")
    assert {"README.md", MANIFEST_FILE} <= set(os.listdir(tmp_path / "fresh"))
    assert all(fresh.sparse[n].nnz == c.nnz for n, c in load_export(export_a).sparse.items())
    assert SparseLM.load(tmp_path / "fresh").score(TEXT).logprobs == SparseLM.load(export_a).score(TEXT).logprobs


def test_a_local_path_wins_over_a_hub_id(hub_endpoint, hub_server, export_a, export_b, tmp_path, monkeypatch):
    hub_server.store.put(REPO_ID, local_files(export_b))
    local = tmp_path / "alice" / "sparse-lm"
    local.parent.mkdir()
    local.symlink_to(export_a, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    hub_server.requests.clear()
    assert SparseLM.from_pretrained(REPO_ID).score(TEXT).logprobs == SparseLM.load(export_a).score(TEXT).logprobs
    assert hub_server.requests == []


# --- offline ---------------------------------------------------------------------------------------------------

def test_offline_loads_a_cached_model_without_requests(hub_endpoint, hub_server, export_a, export_b, monkeypatch):
    assert push(export_a) == 0
    online = SparseLM.from_pretrained(REPO_ID).score(TEXT).logprobs
    assert push(export_b) == 0  # main moved on the Hub; offline, the cached main is what there is
    hub_server.requests.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert SparseLM.from_pretrained(REPO_ID).score(TEXT).logprobs == online
    assert hub_server.requests == []
    with pytest.raises(UserError, match="not in the local cache"):
        SparseLM.from_pretrained("alice/never-downloaded")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def serve(model: str, env: dict[str, str]) -> dict:
    """``selfish-serve --model MODEL`` in a subprocess: its /health and /v1/score answers, then stopped."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "selfish_deploy.serving.cli", "--model", model, "--port",
                             str(port)], env={**os.environ, "OMP_NUM_THREADS": "1", **env}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"selfish-serve did not start:\n{proc.communicate()[0]}")
                time.sleep(0.2)
        return {"health": health, "score": post(f"{base}/v1/score", {"text": TEXT})}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_server_serves_a_hub_id_online_then_offline_from_the_cache(hub_endpoint, hub_server, export_a, capsys):
    assert push(export_a) == 0
    oid = capsys.readouterr().out.strip()
    expected = SparseLM.load(export_a).score(TEXT).logprobs
    online = serve(f"{REPO_ID}@{oid}", {})  # HF_ENDPOINT, HF_HOME and HF_TOKEN come from the environment
    assert online["health"]["model"] == f"{REPO_ID}@{oid}"
    assert online["score"]["logprobs"] == expected
    hub_server.requests.clear()
    offline = serve(f"{REPO_ID}@{oid}", {"HF_HUB_OFFLINE": "1"})
    assert offline["score"]["logprobs"] == expected
    assert hub_server.requests == []


# --- errors ----------------------------------------------------------------------------------------------------

def test_missing_repo_revision_and_file_are_one_line_errors(hub_endpoint, hub_server, export_a, capsys):
    assert push(export_a) == 0
    capsys.readouterr()
    cases = [
        ("alice/nope", "repository not found", RepositoryNotFoundError),
        (f"{REPO_ID}@no-such-branch", "revision not found", RevisionNotFoundError),
    ]
    for spec, fragment, cause in cases:
        with pytest.raises(UserError, match=fragment) as err:
            SparseLM.from_pretrained(spec)
        assert isinstance(err.value.__cause__, cause)
        assert_clean_error(capsys, inspect_main([spec]), "selfish-inspect", fragment, spec.split("@")[0])
        assert_clean_error(capsys, serve_main(["--model", spec]), "selfish-serve", fragment)

    files = local_files(export_a)
    hub_server.store.put("alice/no-weights", {k: v for k, v in files.items() if k != "model.safetensors"})
    assert_clean_error(capsys, inspect_main(["alice/no-weights"]), "selfish-inspect", "model.safetensors not found")
    hub_server.store.put("alice/bert", {"config.json": b'{"model_type": "bert"}', "model.safetensors": b""})
    assert_clean_error(capsys, serve_main(["--model", "alice/bert"]), "selfish-serve",
                       "is not a selfish-deploy export")
    hub_server.store.put("alice/empty", {"README.md": b"# nothing here\n"})
    assert_clean_error(capsys, inspect_main(["alice/empty"]), "selfish-inspect", "file config.json not found")
    assert_clean_error(capsys, inspect_main(["no/such/dir"]), "selfish-inspect", "not found")


def test_an_unreachable_hub_is_a_one_line_error(hub_endpoint, monkeypatch, capsys):
    from huggingface_hub.utils import _http as hf_http

    # hf_hub_download retries a refused connection with backoff sleeps of 1+2+4+8+8 s: skip the waiting
    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    assert_clean_error(capsys, serve_main(["--model", REPO_ID]), "selfish-serve", url, "cannot be reached")


def test_push_refuses_a_directory_that_is_not_an_export_before_any_request(hub_endpoint, hub_server, export_a,
                                                                          tmp_path, capsys):
    hub_server.requests.clear()
    assert_clean_error(capsys, push_main([str(tmp_path / "missing"), "--repo-id", REPO_ID]), "selfish-push",
                       "not found")
    flip_a_weight(export_a / "model.safetensors")
    assert_clean_error(capsys, push(export_a), "selfish-push", "model.safetensors", "sha256")
    assert_clean_error(capsys, push_main([str(export_a), "--repo-id", "not an id"]), "selfish-push", "not an id")
    assert hub_server.requests == []


# --- the manifest ----------------------------------------------------------------------------------------------

def flip_a_weight(path: Path) -> None:
    """Change one byte inside the values of a CSR tensor: the file still parses, shapes and indices are fine."""
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    offsets = json.loads(data[8:8 + header_len])["rnns.0.weight_hh_l0.values"]["data_offsets"]
    data[8 + header_len + offsets[0] + 1] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_corrupted_weight_is_refused_by_the_manifest(hub_endpoint, hub_server, export_a, capsys):
    files = local_files(export_a)
    flip_a_weight(export_a / "model.safetensors")
    with pytest.raises(UserError, match=r"model\.safetensors does not match its sha256 in manifest\.json"):
        load_export(export_a)
    assert_clean_error(capsys, inspect_main([str(export_a)]), "selfish-inspect", "model.safetensors", "sha256")
    # the same corruption on the Hub: pulled, then refused
    hub_server.store.put(REPO_ID, {**files, "model.safetensors": (export_a / "model.safetensors").read_bytes()})
    with pytest.raises(UserError, match="model.safetensors does not match"):
        SparseLM.from_pretrained(REPO_ID)
    assert_clean_error(capsys, serve_main(["--model", REPO_ID]), "selfish-serve", "model.safetensors", "sha256")


def test_manifest_covers_every_file_and_is_strict_only_for_model_files(export_a, caplog):
    manifest = json.loads((export_a / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == set(export_files(export_a))
    assert {"config.json", "model.safetensors", "vocab.txt", "export_report.json", "README.md"} <= \
        set(manifest["files"])
    vocab = (export_a / "vocab.txt").read_text()
    (export_a / "vocab.txt").write_text(vocab.replace("w3\n", "w3x\n"))  # same size, another word
    with pytest.raises(UserError, match="vocab.txt does not match"):
        load_export(export_a)
    (export_a / "vocab.txt").write_text(vocab)
    load_export(export_a)
    from selfish_deploy.export.onnx_graph import build_onnx, save_onnx

    save_onnx(build_onnx(load_export(export_a)), export_a / "model.onnx")  # added to an existing export
    with pytest.raises(UserError, match="model.onnx is not listed in manifest.json"):
        load_export(export_a)
    assert export_main(["--refresh", str(export_a)]) == 0  # records it (the listed files are checked first)
    assert "model.onnx" in json.loads((export_a / MANIFEST_FILE).read_text())["files"]
    load_export(export_a)
    (export_a / "config.json").write_text((export_a / "config.json").read_text() + " ")
    assert export_main(["--refresh", str(export_a)]) == 2  # a changed model file is never re-recorded


def test_edited_card_warns_and_manifest_less_export_loads_with_a_warning(export_a, caplog):
    (export_a / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # the Hub's, not ours: ignored
    (export_a / "README.md").write_text((export_a / "README.md").read_text() + "\nA note added on the Hub.\n")
    caplog.clear()
    load_export(export_a)
    assert any("README.md does not match" in r.message and r.levelname == "WARNING" for r in caplog.records)
    (export_a / MANIFEST_FILE).unlink()
    caplog.clear()
    load_export(export_a)
    assert any("has no manifest.json" in r.message for r in caplog.records)
    assert export_main(["--refresh", str(export_a)]) == 0  # upgrade: card and manifest written anew
    caplog.clear()
    load_export(export_a)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert "A note added on the Hub" not in (export_a / "README.md").read_text()
