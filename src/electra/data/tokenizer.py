"""WordPiece tokenizers through Hugging Face `tokenizers`: train, save, load.

A saved tokenizer directory holds `tokenizer.json`, `vocab.txt`, `tokenizer_config.json` and
`special_tokens_map.json`, so `transformers.AutoTokenizer.from_pretrained(DIR)` loads it too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from electra.errors import UserError
from electra.config import SpecialIds

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
MODEL_FILES = ("electra.json", "config.json", "model.safetensors", "pytorch_model.bin")


def _bert_pipeline(tok: Tokenizer, lowercase: bool) -> Tokenizer:
    # BERT normalisation; CJK characters are split into single characters by handle_chinese_chars.
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=lowercase, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _add_post_processor(tok: Tokenizer) -> None:
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, lowercase: bool = True,
                    min_frequency: int = 2, show_progress: bool = True) -> Tokenizer:
    """A WordPiece vocabulary of at most vocab_size pieces; the same texts and settings give the same
    tokenizer.json, byte for byte.

    `texts` is read twice (see _continuing_pieces): pass a list or a re-iterable such as
    corpus.iter_lines(...); a one-shot iterator is held in memory.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 100:
        raise UserError(f"--vocab-size {vocab_size} is too small; use at least {len(SPECIAL_TOKENS) + 100} "
                        "(30522 is BERT's)")
    if iter(texts) is texts:
        texts = list(texts)
    tok = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")), lowercase)
    pinned = _continuing_pieces(tok, texts)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=SPECIAL_TOKENS + pinned, show_progress=show_progress)
    tok.train_from_iterator(texts, trainer)
    # The pinned pieces are ordinary pieces, not special tokens: rebuild with the five specials only,
    # numbered as the trainer numbers pieces (specials, characters, ##characters, then merges in order).
    vocab = tok.get_vocab()
    order = sorted(vocab, key=vocab.__getitem__)[len(SPECIAL_TOKENS) + len(pinned):]
    order = SPECIAL_TOKENS + [t for t in order if len(t) == 1] + pinned + [t for t in order if len(t) > 1]
    tok = _bert_pipeline(Tokenizer(models.WordPiece({t: i for i, t in enumerate(order)}, unk_token="[UNK]")),
                         lowercase)
    tok.add_special_tokens(SPECIAL_TOKENS)
    _add_post_processor(tok)
    return tok


def _continuing_pieces(tok: Tokenizer, texts: Iterable[str]) -> list[str]:
    """`##c` for every character c of the texts that can continue a word, sorted.

    Why: the trainer numbers these pieces as it meets them in a hash map, whose order differs in
    every process, and breaks ties between equally frequent merges by those numbers; so the same
    corpus gave a different vocabulary, of a different size, at every run (tokenizers 0.23,
    huggingface/tokenizers#1794). Passed to the trainer as special tokens, they are numbered first,
    in this order. A character met only at the start of words still gets its `##c` (harmless).
    """
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    pieces: set[str] = set()
    for c in chars:  # what normalisation and pre-tokenisation make of c after a letter
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str("a" + c)):
            pieces.update("##" + x for x in word[1:])
    return sorted(pieces)


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write a tokenizer over another one, or beside a model whose vocabulary it would no
    longer match (the model then fails to load with a vocabulary-size mismatch)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a directory; choose another --out")
    if overwrite or not out.is_dir():
        return
    model = [f for f in MODEL_FILES if (out / f).is_file()]
    if model:
        raise UserError(f"{out} holds a model ({', '.join(model)}) made with its tokenizer; choose another --out, "
                        "or pass --overwrite to replace only the tokenizer files")
    tokenizer = [f for f in TOKENIZER_FILES[:2] if (out / f).is_file()]
    if tokenizer:
        raise UserError(f"{out} already holds a tokenizer ({', '.join(tokenizer)}); choose another --out, "
                        "or pass --overwrite to replace it")


def save_tokenizer(tok: Tokenizer, out: Path, lowercase: bool, max_length: int = 512) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
               "cls_token": "[CLS]", "mask_token": "[MASK]"}
    config = {"tokenizer_class": "ElectraTokenizer", "do_lower_case": lowercase,
              "strip_accents": None if lowercase else False, "tokenize_chinese_chars": True,
              "model_max_length": max_length, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def load_tokenizer(directory: Path) -> Tokenizer:
    """From `tokenizer.json`, else from `vocab.txt` with BERT normalisation (lower-casing as
    `tokenizer_config.json` says, default on)."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        try:
            return Tokenizer.from_file(str(directory / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise UserError(f"cannot read {directory / 'tokenizer.json'}: {e}") from None
    if (directory / "vocab.txt").is_file():
        lowercase = True
        cfg_path = directory / "tokenizer_config.json"
        if cfg_path.is_file():
            try:
                lowercase = bool(json.loads(cfg_path.read_text(encoding="utf-8")).get("do_lower_case", True))
            except (ValueError, UnicodeDecodeError):
                raise UserError(f"{cfg_path} is not valid JSON") from None
        try:
            model = models.WordPiece.from_file(str(directory / "vocab.txt"), unk_token="[UNK]")
        except Exception as e:
            raise UserError(f"cannot read {directory / 'vocab.txt'}: {e}") from None
        tok = _bert_pipeline(Tokenizer(model), lowercase)
        tok.add_special_tokens([t for t in SPECIAL_TOKENS if tok.token_to_id(t) is not None])
        _add_post_processor(tok)
        return tok
    raise UserError(f"no tokenizer in {directory}: expected tokenizer.json or vocab.txt")


def is_lowercase(tok: Tokenizer) -> bool:
    return tok.normalizer is not None and tok.normalizer.normalize_str("A") == "a"


def special_ids(tok: Tokenizer, where: str = "the tokenizer") -> SpecialIds:
    ids = {t: tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise UserError(f"{where} lacks the special tokens {', '.join(missing)}; "
                        "ELECTRA needs [PAD] [UNK] [CLS] [SEP] [MASK]")
    return SpecialIds(pad=ids["[PAD]"], cls=ids["[CLS]"], sep=ids["[SEP]"], mask=ids["[MASK]"])


def tokenizer_hash(tok: Tokenizer) -> str:
    """A fingerprint of the vocabulary and normalisation, to match prepared data to its tokenizer."""
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    h = hashlib.sha256()
    h.update("\n".join(t for t, _ in vocab).encode())
    h.update(str(is_lowercase(tok)).encode())
    return h.hexdigest()[:16]


def check_vocab(tok: Tokenizer, vocab_size: int, where: str) -> None:
    """The tokenizer's ids must fit the model's embedding table, and not be a different vocabulary.

    A model's table may be padded past the tokenizer (to a multiple of 8 or 64), never smaller.
    """
    n = tok.get_vocab_size()
    if n == vocab_size or (n < vocab_size and vocab_size - n < 128 and vocab_size % 8 == 0):
        return
    raise UserError(f"{where}: the tokenizer has {n} tokens but the model's vocabulary has {vocab_size}; "
                    "use the tokenizer the model was trained with")
