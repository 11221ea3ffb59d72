"""The word vocabulary as a Hugging Face tokenizer, for clients that tokenize on their side (issue 13).

lm-evaluation-harness's ``local-completions`` sends token ids, so it needs a tokenizer that
``transformers.AutoTokenizer`` loads: ``tokenizer=EXPORT_DIR/tokenizer``. Written from ``vocab.txt`` into
``EXPORT_DIR/tokenizer/`` (nothing of the model depends on them)::

    tokenizer.json            ``tokenizers``' WordLevel over vocab.txt (ids = line numbers), split on whitespace,
                              unknown words -> <unk>; decoding joins the words with spaces
    tokenizer_config.json     transformers' settings: eos and bos <eos> (a text starts after a sentence end,
                              as /tokenizer_info says), unk <unk>, no clean-up of spaces, special tokens
                              not split out of words
    special_tokens_map.json   the same special tokens (read by older transformers)

Encoding equals ``Vocabulary.encode(text)``: no ``<eos>`` is added (``/v1/score`` appends one per line, so a
client scoring the same numbers writes it: ``"the market fell <eos>"``). Two settings make it exact:
Python's ``str.split()`` also splits on U+001C..U+001F, which Rust's whitespace does not (a normalizer maps
them to spaces; every other code point agrees), and ``split_special_tokens`` keeps transformers from cutting
``<eos>`` out of a word such as ``a<eos>b`` (one unknown word for ``Vocabulary``).

A folder of its own, as diffusers repositories keep theirs: transformers 5's ``AutoTokenizer`` reads the
``config.json`` beside ``tokenizer_config.json`` as a transformers config, and ours (``"dtype": "fp32"``) fails
there; ``AutoTokenizer.from_pretrained(EXPORT_DIR, subfolder="tokenizer")`` works too, a Hub id included.

``tokenizers`` is optional (the ``eval`` extra): without it the export is written without these files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..rundir import write_json
from ..vocab import EOS, UNK, Vocabulary

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_FILES = (TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")
# Whitespace to Python's str.split() but not to Rust's char::is_whitespace (checked over all code points).
PYTHON_ONLY_WHITESPACE = "\x1c\x1d\x1e\x1f"


def build_tokenizer(vocab: Vocabulary):
    """A ``tokenizers.Tokenizer`` that encodes as ``vocab.encode`` does (ImportError without ``tokenizers``)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=dict(vocab.stoi), unk_token=UNK))
    tok.normalizer = normalizers.Replace(Regex(f"[{PYTHON_ONLY_WHITESPACE}]"), " ")
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok  # no decoder: tokenizers then joins the tokens with spaces


def special_tokens(vocab: Vocabulary) -> dict:
    out = {"bos_token": EOS, "eos_token": EOS}
    if UNK in vocab:  # otherwise transformers would add <unk> as a new id
        out["unk_token"] = UNK
    return out


def write_hf_tokenizer(export_dir: str | Path, vocab: Vocabulary) -> bool:
    """Write the tokenizer files into ``export_dir/tokenizer/``; whether the export now has them.

    Without ``tokenizers`` (said once in the log) a tokenizer already there is kept if it is ``vocab``'s, and
    removed if not (it would no longer match the vocabulary).
    """
    out = Path(export_dir) / TOKENIZER_DIR
    try:
        tok = build_tokenizer(vocab)
    except ImportError:
        if (out / TOKENIZER_FILE).is_file():
            if _matches(out / TOKENIZER_FILE, vocab):
                log.info("kept %s: it matches vocab.txt ('tokenizers' is not installed to write it anew)",
                         out / TOKENIZER_FILE)
                return True
            for name in TOKENIZER_FILES:
                (out / name).unlink(missing_ok=True)
            if not any(out.iterdir()):
                out.rmdir()
            log.info("removed the stale %s from %s", TOKENIZER_FILE, out)
        log.warning("wrote no %s (the Hugging Face tokenizer lm-eval needs): the 'tokenizers' package is not "
                    "installed (pip install 'selfish-deploy[eval]', then selfish-export --refresh %s)",
                    TOKENIZER_FILE, out.parent)
        return False
    out.mkdir(exist_ok=True)
    tmp = out / (TOKENIZER_FILE + ".tmp")  # as write_json: a reader never sees half a file
    tmp.write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    tmp.replace(out / TOKENIZER_FILE)
    specials = special_tokens(vocab)
    write_json(out / "special_tokens_map.json", specials)
    write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", **specials,
        "clean_up_tokenization_spaces": False,  # PTB's "company 's" must not become "company's"
        "split_special_tokens": True,  # "a<eos>b" is one (unknown) word, as for Vocabulary.encode
    })
    log.info("wrote the Hugging Face tokenizer %s (%d words)", out / TOKENIZER_FILE, len(vocab))
    return True


def _matches(path: Path, vocab: Vocabulary) -> bool:
    """Whether ``tokenizer.json`` holds exactly ``vocab`` (plain JSON: no ``tokenizers`` needed)."""
    try:
        model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    return isinstance(model, dict) and model.get("type") == "WordLevel" and model.get("vocab") == vocab.stoi
