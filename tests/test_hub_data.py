"""Corpora from the Hugging Face Hub, offline: the real ``huggingface_hub`` client against tests/hub_server.py.

The parquet files are built the way the Hub's are: PTB (``ptb_text_only``, parquet conversion) has one stripped
sentence per row in ``sentence``; WikiText (``Salesforce/wikitext``) has one row per line of the ``.tokens``
file in ``text``, keeping the line's ``"\\n"``, with blank lines as ``""``. Loading them must give exactly the
corpus that the equivalent text files give.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http as hf_http

from selfish_deploy.data import SPLITS, load_corpus
from selfish_deploy.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
# Where the real Hub has them (written out here, not read from data.py, so that a wrong path there fails)
HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
PTB_REPO, PTB_REV = "ptb-text-only/ptb_text_only", "refs/convert/parquet"
PTB_FILES = {s: f"penn_treebank/{h}/0000.parquet" for s, h in HUB_SPLITS.items()}
WIKI_REPO = "Salesforce/wikitext"
WIKI_FILES = {s: f"wikitext-2-v1/{h}-00000-of-00001.parquet" for s, h in HUB_SPLITS.items()}
N_LINES = {"train": 40, "valid": 12, "test": 12}

# Lines of the real files (the long WikiText paragraph cut short), for a checkout without shared/data.
FALLBACK = {
    "ptb-tiny": [" aer banknote berlitz calloway centrust cluett fromstein gitano guterman hydro-quebec ipo kia memotec"
                 " mlx nahb punts rake regatta rubens sim snack-food ssangyong swapo wachter \n",
                 " pierre <unk> N years old will join the board as a nonexecutive director nov. N \n",
                 " mr. <unk> is chairman of <unk> n.v. the dutch publishing group \n"],
    "wikitext-2": [" \n", " = Valkyria Chronicles III = \n", " \n",
                   " Senjō no Valkyria 3 : <unk> Chronicles ( Japanese : 戦場のヴァルキュリア3 , lit . Valkyria of the"
                   " Battlefield 3 ) , commonly referred to as Valkyria Chronicles III outside Japan \n",
                   " \n", " = = Gameplay = = \n", " \n"],
}


def sample_lines(corpus: str, split: str) -> list[str]:
    """The first lines of a shared corpus file, each with its ``"\\n"``."""
    path = DATA / corpus / f"{split}.txt"
    if not path.is_file():
        return FALLBACK[corpus]
    with open(path, encoding="utf-8") as f:
        return list(islice(f, N_LINES[split]))


def parquet(column: str, rows: list[str]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({column: pa.array(rows, pa.string())}), sink)
    return sink.getvalue().to_pybytes()


def ptb_rows(split: str) -> list[str]:
    return [line.strip() for line in sample_lines("ptb-tiny", split)]  # as ptb_text_only.py yields them


def wiki_rows(split: str) -> list[str]:
    return [line if line.strip() else "" for line in sample_lines("wikitext-2", split)]  # as wikitext.py does


def seed_ptb(store, revision: str = PTB_REV, splits=SPLITS, column: str = "sentence") -> None:
    files = {PTB_FILES[s]: parquet(column, ptb_rows(s)) for s in splits}
    store.put(PTB_REPO, files, repo_type="dataset", revision=revision, summary="Update parquet files")


def seed_wikitext(store) -> None:
    store.put(WIKI_REPO, {WIKI_FILES[s]: parquet("text", wiki_rows(s)) for s in SPLITS}, repo_type="dataset")


def text_dir(tmp_path: Path, corpus: str) -> Path:
    """The same lines as plain text files, for ``load_corpus(corpus, data_dir)``."""
    out = tmp_path / "text" / corpus
    out.mkdir(parents=True)
    for s in SPLITS:
        (out / f"{s}.txt").write_text("".join(sample_lines(corpus, s)), encoding="utf-8")
    return out


def stream(c) -> dict[str, list[str]]:
    return {s: c.vocab.decode(c.split(s).tolist()) for s in SPLITS}


@pytest.fixture
def hub(hub_endpoint, hub_server, monkeypatch):
    """The local Hub as the only source: no data directory anywhere."""
    monkeypatch.delenv("SELFISH_DATA_DIR", raising=False)
    return hub_server


# --- the Hub path of load_corpus ---------------------------------------------------------------------------

def test_ptb_from_hub_equals_text_files(hub, tmp_path):
    seed_ptb(hub.store)
    c = load_corpus("ptb")
    expected = load_corpus("ptb-tiny", text_dir(tmp_path, "ptb-tiny"))
    assert stream(c) == stream(expected)
    assert c.vocab.itos == expected.vocab.itos
    assert c.train.numel() == sum(len(line.split()) + 1 for line in sample_lines("ptb-tiny", "train"))
    assert c.source == f"hf://datasets/{PTB_REPO}"
    # the parquet-conversion ref, URL-encoded as the client sends it
    assert ("HEAD", f"/datasets/{PTB_REPO}/resolve/refs%2Fconvert%2Fparquet/{PTB_FILES['test']}") in hub.requests


def test_wikitext_from_hub_equals_tokens_files(hub, tmp_path):
    seed_wikitext(hub.store)
    rows = pq.read_table(pa.BufferReader(hub.store.files(WIKI_REPO, repo_type="dataset")[WIKI_FILES["train"]]))
    rows = rows.column("text").to_pylist()
    assert rows[:2] == ["", " = Valkyria Chronicles III = \n"]  # the shape of the Hub's rows
    c = load_corpus("wikitext-2")
    expected = load_corpus("wikitext-2", text_dir(tmp_path, "wikitext-2"))
    assert stream(c) == stream(expected)
    assert c.vocab.itos == expected.vocab.itos
    assert stream(c)["train"][:6] == ["<eos>", "=", "Valkyria", "Chronicles", "III", "="]
    assert c.train.numel() == sum(len(line.split()) + 1 for line in sample_lines("wikitext-2", "train"))


def test_second_load_is_served_from_the_cache_offline(hub, monkeypatch):
    seed_ptb(hub.store)
    first = load_corpus("ptb")
    hub.requests.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert stream(load_corpus("ptb")) == stream(first)
    assert hub.requests == []


def test_subprocess_reads_the_endpoint_from_the_environment(hub, tmp_path):
    """A fresh interpreter imports huggingface_hub with HF_ENDPOINT/HF_HOME set: no patching at all."""
    seed_ptb(hub.store)
    script = ("import json, sys; from selfish_deploy.data import load_corpus; c = load_corpus('ptb'); "
              "json.dump({s: c.vocab.decode(c.split(s).tolist()) for s in ('train', 'valid', 'test')}, sys.stdout)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == stream(load_corpus("ptb-tiny", text_dir(tmp_path, "ptb-tiny")))
    assert (Path(os.environ["HF_HOME"]) / "hub" / f"datasets--{PTB_REPO.replace('/', '--')}").is_dir()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("case,cause,message", [
    ("no repo", RepositoryNotFoundError, "RepositoryNotFoundError"),
    ("no revision", RevisionNotFoundError, "RevisionNotFoundError"),
    ("no file", EntryNotFoundError, "test/0000.parquet"),
    ("not parquet", pa.ArrowException, "not a parquet file"),
    ("wrong column", pa.ArrowException, "'sentence' column"),
    ("unreachable", LocalEntryNotFoundError, "cannot fetch corpus 'ptb'"),
    ("offline", LocalEntryNotFoundError, "cannot fetch corpus 'ptb'"),
])
def test_hub_failures_are_user_errors(hub, monkeypatch, case, cause, message):
    if case == "no revision":
        seed_ptb(hub.store, revision="main")
    elif case == "no file":
        seed_ptb(hub.store, splits=("train", "valid"))
    elif case == "not parquet":
        hub.store.put(PTB_REPO, {PTB_FILES[s]: b"version https://git-lfs.github.com/spec/v1\n" for s in SPLITS},
                      repo_type="dataset", revision=PTB_REV)
    elif case == "wrong column":
        seed_ptb(hub.store, column="text")
    elif case == "unreachable":
        seed_ptb(hub.store)
        # hf_hub_download retries a refused connection with backoff sleeps of 1+2+4+8+8 s: skip the waiting
        monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)
        url = closed_port_url()
        monkeypatch.setattr(constants, "ENDPOINT", url)
        template = url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    elif case == "offline":
        seed_ptb(hub.store)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="--data-dir") as err:
        load_corpus("ptb")
    assert isinstance(err.value.__cause__, cause)
    assert message in str(err.value)


# --- the test server itself, through the real client ---------------------------------------------------------

def http(method: str, url: str, headers: dict[str, str] | None = None,
         data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_resolve_headers_range_and_errors(hub_endpoint, hub_server):
    oid = hub_server.store.put("org/data", {"dir/hello.txt": b"hello\n"}, repo_type="dataset",
                               revision="refs/convert/parquet")
    base = f"{hub_endpoint}/datasets/org/data/resolve"
    status, headers, body = http("HEAD", f"{base}/refs%2Fconvert%2Fparquet/dir/hello.txt")
    assert (status, body) == (200, b"")
    assert headers["X-Repo-Commit"] == oid
    assert headers["ETag"] == '"ce013625030ba8dba906f756967f9e9ca394464a"'  # git hash-object of "hello\n"
    assert headers["Content-Length"] == "6"
    status, headers, body = http("GET", f"{base}/{oid}/dir/hello.txt", {"Range": "bytes=1-3"})
    assert (status, body, headers["Content-Range"]) == (206, b"ell", "bytes 1-3/6")
    assert http("GET", f"{base}/refs%2Fconvert%2Fparquet/dir/hello.txt", {"Range": "bytes=-2"})[2] == b"o\n"
    assert http("GET", f"{base}/refs%2Fconvert%2Fparquet/dir/hello.txt", {"Range": "bytes=9-"})[0] == 416
    assert http("GET", f"{base}/refs/convert/parquet/dir/hello.txt")[2] == b"hello\n"  # unencoded ref
    for url, code in [(f"{hub_endpoint}/datasets/org/nope/resolve/main/x", "RepoNotFound"),
                      (f"{base}/nope/dir/hello.txt", "RevisionNotFound"),
                      (f"{base}/refs%2Fconvert%2Fparquet/dir/nope.txt", "EntryNotFound")]:
        status, headers, _ = http("HEAD", url)
        assert (status, headers["X-Error-Code"]) == (404, code)
    # models have no prefix; the dataset is not a model
    assert http("HEAD", f"{hub_endpoint}/org/data/resolve/main/dir/hello.txt")[1]["X-Error-Code"] == "RepoNotFound"


def test_push_and_pull_a_model_repo(hub_endpoint, hub_server, tmp_path):
    api = HfApi(endpoint=hub_endpoint, token="hf_dummy_test_token")
    assert api.whoami()["name"] == "test-user"
    assert str(api.create_repo("alice/tiny-lm")) == f"{hub_endpoint}/alice/tiny-lm"
    assert str(api.create_repo("alice/tiny-lm", exist_ok=True)) == f"{hub_endpoint}/alice/tiny-lm"  # 409 + url
    with pytest.raises(HfHubHTTPError):
        api.create_repo("alice/tiny-lm")
    assert api.create_repo("solo", repo_type="dataset").repo_id == "test-user/solo"

    folder = tmp_path / "export"
    files = {"config.json": b'{"arch": "lstm"}', "model.safetensors": bytes(range(256)) * 40,
             "README.md": b"---\nlicense: mit\n---\n# tiny\n", "vocab/vocab.txt": b"<eos>\n<unk>\n"}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    commit = api.upload_folder(repo_id="alice/tiny-lm", folder_path=folder, commit_message="export")
    assert hub_server.store.files("alice/tiny-lm") == {".gitattributes": b"", **files}
    assert ("POST", "/api/validate-yaml") in hub_server.requests  # README.md is checked before the commit

    info = api.model_info("alice/tiny-lm")
    assert info.sha == commit.oid and {s.rfilename for s in info.siblings} == {".gitattributes", *files}
    tree = {e.path: getattr(e, "size", None) for e in api.list_repo_tree("alice/tiny-lm", recursive=True)}
    assert tree["model.safetensors"] == 10240 and "vocab" in tree and "vocab/vocab.txt" in tree
    assert "vocab/vocab.txt" not in {e.path for e in api.list_repo_tree("alice/tiny-lm")}

    api.create_tag("alice/tiny-lm", tag="v1")
    api.create_branch("alice/tiny-lm", branch="dev")
    api.create_branch("alice/tiny-lm", branch="dev", exist_ok=True)  # 409, accepted
    api.delete_file("config.json", "alice/tiny-lm")
    with pytest.raises(EntryNotFoundError):
        api.delete_file("config.json", "alice/tiny-lm")
    api.delete_folder("vocab", "alice/tiny-lm", revision="dev")
    refs = api.list_repo_refs("alice/tiny-lm")
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["v1"]
    assert set(hub_server.store.files("alice/tiny-lm", "dev")) == {".gitattributes", *files} - {"vocab/vocab.txt"}

    snap = Path(snapshot_download("alice/tiny-lm", revision="v1", local_dir=tmp_path / "snap"))
    assert {n: (snap / n).read_bytes() for n in files} == files
    cached = hf_hub_download("alice/tiny-lm", "vocab/vocab.txt", revision=commit.oid)
    assert Path(cached).read_bytes() == files["vocab/vocab.txt"]
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/tiny-lm", "config.json")  # deleted on main

    api.delete_repo("alice/tiny-lm")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/tiny-lm")


def test_server_refuses_what_it_does_not_implement(hub_endpoint, hub_server):
    api = HfApi(endpoint=hub_endpoint, token="hf_dummy_test_token")
    api.create_repo("bob/m")
    first = api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="bob/m").oid
    api.upload_file(path_or_fileobj=b"2", path_in_repo="a.txt", repo_id="bob/m")
    with pytest.raises(HfHubHTTPError, match="A commit has happened since") as err:  # stale parent commit
        api.upload_file(path_or_fileobj=b"3", path_in_repo="a.txt", repo_id="bob/m", parent_commit=first)
    assert err.value.response.status_code == 412
    with pytest.raises(HfHubHTTPError, match="pull requests are not implemented"):
        api.upload_file(path_or_fileobj=b"3", path_in_repo="a.txt", repo_id="bob/m", create_pr=True)
    lfs = b'{"key": "header", "value": {"summary": "x"}}\n{"key": "lfsFile", "value": {"path": "w.bin"}}\n'
    status, _, body = http("POST", f"{hub_endpoint}/api/models/bob/m/commit/main", data=lfs)
    assert status == 400 and b"lfsFile" in body
    status, _, body = http("GET", f"{hub_endpoint}/api/models/bob/m/discussions")
    assert status == 404 and b"no route" in body
    assert hub_server.store.files("bob/m")["a.txt"] == b"2"
