"""The export's Hugging Face tokenizer (``EXPORT_DIR/tokenizer/``): written by ``selfish-export`` and
``--refresh``, listed in the manifest, encoding exactly as ``Vocabulary.encode``, optional."""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys

import pytest

from selfish_deploy.assets import default_model_dir
from selfish_deploy.export.cli import main as export_main
from selfish_deploy.export.hf_tokenizer import TOKENIZER_DIR, TOKENIZER_FILES, write_hf_tokenizer
from selfish_deploy.exportdir import MANIFEST_FILE, load_export, write_manifest
from selfish_deploy.vocab import Vocabulary

transformers = pytest.importorskip("transformers", reason="pip install 'selfish-deploy[eval]'")
pytest.importorskip("tokenizers", reason="pip install 'selfish-deploy[eval]'")

BUNDLED = default_model_dir()
WHITESPACE = "".join(c for c in map(chr, range(0x110000)) if c.isspace())  # str.split()'s separators


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.load(BUNDLED / "vocab.txt")


@pytest.fixture(scope="module")
def hf(vocab, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    assert write_hf_tokenizer(out, vocab)
    return transformers.AutoTokenizer.from_pretrained(str(out / TOKENIZER_DIR))


def texts(vocab: Vocabulary) -> list[str]:
    rng = random.Random(0)
    words = vocab.itos
    out = [" ".join(words),  # every word, in id order
           "", "   ", "the market fell", "  the\tmarket\nfell  \r\n", "<eos>", "<unk>", "the <eos> <unk> end",
           "a<eos>b", "x.<eos> <eos>y <unk>'s", "zyzzyva the qwxv", "company 's N", "Caf\u00e9 THE The the"]
    out += [f"the{c}market" for c in WHITESPACE] + ["the\x1c\x1d\x1e\x1fmarket", "the\u200bmarket\u180efell"]
    for _ in range(50):
        pieces = [rng.choice(words) if rng.random() < 0.8 else rng.choice(["<eos>", "oov", "a<eos>", "x"])
                  for _ in range(rng.randrange(1, 30))]
        out.append("".join(p + rng.choice(" \t\n\u00a0\u3000\x1f") for p in pieces))
    return out


def test_encoding_equals_the_vocabulary_and_decoding_joins_words(hf, vocab):
    assert (hf.eos_token_id, hf.bos_token_id, hf.unk_token_id) == (vocab.eos_id, vocab.eos_id, vocab.unk_id)
    assert len(hf) == len(vocab)  # the special tokens are words of the vocabulary, not new ids
    for text in texts(vocab):
        ids = vocab.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, repr(text)
        assert hf(text)["input_ids"] == ids, repr(text)  # nothing added: lm-eval's prefix token is its own
        assert hf.decode(ids) == " ".join(vocab.decode(ids)), repr(text)
    assert hf.decode(vocab.encode("the company 's shares")) == "the company 's shares"  # no space clean-up


def test_export_writes_it_and_the_manifest_lists_it(make_run, tmp_path, caplog):
    out = tmp_path / "e"
    assert export_main([str(make_run()), "--out", str(out)]) == 0
    listed = json.loads((out / MANIFEST_FILE).read_text())["files"]
    assert {f"{TOKENIZER_DIR}/{f}" for f in TOKENIZER_FILES} <= set(listed)
    caplog.clear()
    exported = load_export(out)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    tok = transformers.AutoTokenizer.from_pretrained(str(out), subfolder=TOKENIZER_DIR)
    words = exported.vocab.itos
    assert tok(" ".join(words))["input_ids"] == list(range(len(words)))


def test_refresh_adds_it_to_an_old_export_as_the_bundled_model_has_it(tmp_path, caplog):
    old = tmp_path / "old"
    shutil.copytree(BUNDLED, old)
    shutil.rmtree(old / TOKENIZER_DIR)
    write_manifest(old)  # an export from before tokenizer/
    caplog.clear()
    load_export(old)  # loads as it is, no warning
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    model_files = {f: (old / f).read_bytes() for f in ("config.json", "model.safetensors", "vocab.txt")}
    assert export_main(["--refresh", str(old)]) == 0
    assert {f: (old / f).read_bytes() for f in model_files} == model_files
    for name in TOKENIZER_FILES:  # the bundled model's tokenizer is what the writer writes
        assert (old / TOKENIZER_DIR / name).read_bytes() == (BUNDLED / TOKENIZER_DIR / name).read_bytes(), name
    assert f"{TOKENIZER_DIR}/tokenizer.json" in json.loads((old / MANIFEST_FILE).read_text())["files"]
    load_export(old)


def test_without_tokenizers_the_export_works_and_says_so_once(make_run, tmp_path, caplog, monkeypatch):
    run, other = make_run(), make_run(vocab_size=41)
    out = tmp_path / "e"
    assert export_main([str(run), "--out", str(out)]) == 0  # with tokenizers: written
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` now raises ImportError
    caplog.clear()
    assert export_main([str(run), "--out", str(out)]) == 0  # same vocabulary: the tokenizer there is kept
    assert (out / TOKENIZER_DIR / "tokenizer.json").is_file()
    assert not [r for r in caplog.records if "wrote no tokenizer.json" in r.message]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert export_main([str(other), "--out", str(out)]) == 0  # another vocabulary: the stale one goes
    assert [r.levelname for r in caplog.records if "wrote no tokenizer.json" in r.message] == ["WARNING"]
    assert not (out / TOKENIZER_DIR).exists()
    assert not [f for f in json.loads((out / MANIFEST_FILE).read_text())["files"] if f.startswith(TOKENIZER_DIR)]
    load_export(out)


def test_auto_tokenizer_loads_it_from_the_hub(make_run, tmp_path, hub_endpoint):
    from selfish_deploy.hub.push import main as push_main

    out = tmp_path / "e"
    assert export_main([str(make_run()), "--out", str(out)]) == 0
    assert push_main([str(out), "--repo-id", "alice/tok"]) == 0
    tok = transformers.AutoTokenizer.from_pretrained("alice/tok", subfolder=TOKENIZER_DIR)
    vocab = Vocabulary.load(out / "vocab.txt")
    assert tok(" ".join(vocab.itos) + " never-seen")["input_ids"] == [*range(len(vocab)), vocab.unk_id]
