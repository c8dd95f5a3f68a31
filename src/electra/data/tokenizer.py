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
    if vocab_size < len(SPECIAL_TOKENS) + 100:
        raise UserError(f"--vocab-size {vocab_size} is too small; use at least {len(SPECIAL_TOKENS) + 100} "
                        "(30522 is BERT's)")
    tok = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")), lowercase)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=SPECIAL_TOKENS, show_progress=show_progress)
    tok.train_from_iterator(texts, trainer)
    _add_post_processor(tok)
    return tok


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
