"""Bad corpora and output directories for `tokenizer train` and `prepare`: one clear line, exit 2,
nothing already written lost; skipped lines counted aloud; the same corpus gives the same tokenizer."""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from electra.cli import run
from electra.commands import COMMANDS
from electra.data.corpus import guess_encoding
from electra.errors import UserError
from electra.finetune.tables import read_text_file

FRENCH = "Le café était très bon à Paris, où l'été dure – « toujours » … une façon naïve.\n"
CHINESE = "中文维基百科是一个自由的百科全书，他们在北京工作。“你好”……\n"


def lines(n: int, seed: int = 0) -> list[str]:
    """Sentences of made-up words with Zipf-like frequencies: many merges with equal counts."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"] + ["th", "st", "ng", "qu"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    cum = list(itertools.accumulate(1 / (i + 1) for i in range(len(words))))
    return [" ".join(rng.choices(words, cum_weights=cum, k=rng.randint(5, 15))) + "." for _ in range(n)]


def write(path: Path, text_lines: list[str]) -> Path:
    path.write_text("\n".join(text_lines) + "\n", encoding="utf-8")
    return path


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run(COMMANDS, [str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def train(capsys, corpus: Path, out: Path, *extra) -> tuple[int, str, str]:
    return cli(capsys, "tokenizer", "train", "--corpus", corpus, "--vocab-size", 300, "--out", out, *extra)


def prepare(capsys, corpus: Path, tok: Path, out: Path, *extra) -> tuple[int, str, str]:
    return cli(capsys, "prepare", "--corpus", corpus, "--tokenizer", tok, "--out", out, "--seq-len", 32,
               "--workers", 1, *extra)


def nothing_left(out: Path) -> None:
    """No output and no temporary directory beside it."""
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    assert run(COMMANDS, ["tokenizer", "train", "--corpus", str(write(root / "c.txt", lines(500))),
                          "--vocab-size", "300", "--out", str(root / "tok")]) == 0
    return root / "tok"


# ---- case 1: an existing tokenizer or model in --out ----

def test_tokenizer_train_refuses_to_replace_a_tokenizer(tmp_path, capsys):
    corpus = write(tmp_path / "c.txt", lines(300))
    assert train(capsys, corpus, tmp_path / "tok")[0] == 0
    before = (tmp_path / "tok" / "tokenizer.json").read_bytes()
    code, _, err = train(capsys, write(tmp_path / "other.txt", lines(300, seed=1)), tmp_path / "tok")
    assert code == 2 and one_line(err) == (f"electra: error: {tmp_path / 'tok'} already holds a tokenizer "
                                          "(tokenizer.json, vocab.txt); choose another --out, or pass "
                                          "--overwrite to replace it")
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == before
    code, _, _ = train(capsys, tmp_path / "other.txt", tmp_path / "tok", "--overwrite")
    assert code == 0 and (tmp_path / "tok" / "tokenizer.json").read_bytes() != before


def test_tokenizer_train_refuses_a_model_directory_and_overwrite_replaces_only_tokenizer_files(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "electra.json").write_text('{"kind": "pretrained"}')
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "vocab.txt").write_text("[PAD]\n")
    corpus = write(tmp_path / "c.txt", lines(300))
    code, _, err = train(capsys, corpus, model)
    assert code == 2 and one_line(err) == (f"electra: error: {model} holds a model (electra.json, model.safetensors) "
                                          "made with its tokenizer; choose another --out, or pass --overwrite to "
                                          "replace only the tokenizer files")
    assert sorted(p.name for p in model.iterdir()) == ["electra.json", "model.safetensors", "vocab.txt"]
    assert (model / "vocab.txt").read_text() == "[PAD]\n"
    assert train(capsys, corpus, model, "--overwrite")[0] == 0
    assert (model / "electra.json").read_text() == '{"kind": "pretrained"}'
    assert (model / "model.safetensors").read_bytes() == b"weights"
    assert (model / "tokenizer.json").is_file() and len((model / "vocab.txt").read_text().splitlines()) == 300


def test_tokenizer_train_refuses_an_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = train(capsys, write(tmp_path / "c.txt", lines(300)), tmp_path / "notes.txt")
    assert code == 2 and one_line(err) == (f"electra: error: {tmp_path / 'notes.txt'} is a file, not a directory; "
                                          "choose another --out")
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---- case 2: text that is not UTF-8 ----

@pytest.mark.parametrize("name, data, expected", [
    ("cp1252", (FRENCH * 50).encode("cp1252"), ("Windows-1252 or Latin-1", "CP1252")),
    ("latin-1", ("Über die Straße gehen schöne Mädchen, größer als früher.\n" * 50).encode("latin-1"),
     ("Windows-1252 or Latin-1", "CP1252")),
    ("gbk", (CHINESE * 50).encode("gbk"), ("GBK/GB18030", "GB18030")),
    ("utf-16 with BOM", (FRENCH * 50).encode("utf-16"), ("UTF-16", "UTF-16")),
    ("utf-16le", (FRENCH * 50).encode("utf-16-le"), ("UTF-16LE", "UTF-16LE")),
    ("utf-16be", (FRENCH * 50).encode("utf-16-be"), ("UTF-16BE", "UTF-16BE")),
    ("cp1251: not told", ("Привет мир, это русский текст.\n" * 50).encode("cp1251"), None),
    ("shift-jis: not told", ("日本語のテキストです。東京で働いています。\n" * 50).encode("shift_jis"), None),
    ("random bytes: not told", random.Random(0).randbytes(10000), None),
])
def test_guess_encoding(name, data, expected):
    assert guess_encoding(data) == expected


@pytest.mark.parametrize("encoding, looks_like", [
    ("cp1252", "it looks like Windows-1252 or Latin-1: convert it with iconv -f CP1252 -t UTF-8"),
    ("gbk", "it looks like GBK/GB18030: convert it with iconv -f GB18030 -t UTF-8"),
    ("utf-16", "it looks like UTF-16: convert it with iconv -f UTF-16 -t UTF-8"),
])
def test_tokenizer_train_refuses_a_corpus_that_is_not_utf8(encoding, looks_like, tmp_path, capsys):
    """Found in the first 8 KiB, before anything is read in full; a smaller file is judged whole."""
    line = (CHINESE if encoding == "gbk" else FRENCH).encode(encoding.replace("utf-16", "utf-16-le"))
    n = 200 if encoding == "cp1252" else 50
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(((CHINESE if encoding == "gbk" else FRENCH) * n).encode(encoding))
    counted = {"cp1252": f" ({8192 // len(line)} of its first {8192 // len(line)} non-empty lines cannot be decoded)",
               "gbk": " (50 of its 50 non-empty lines cannot be decoded)", "utf-16": ""}[encoding]
    code, out, err = train(capsys, corpus, tmp_path / "tok")
    assert code == 2
    assert one_line(err) == f"electra: error: corpus file {corpus} is not UTF-8 text{counted}; {looks_like}"
    assert out == "" and not (tmp_path / "tok").exists()


def test_prepare_refuses_a_file_mostly_not_utf8_after_a_utf8_start(tok_dir, tmp_path, capsys):
    """The first 8 KiB are UTF-8, the 300 lines after are Windows-1252: found at the end of the file,
    after examples were built; the earlier data directory stays as it was."""
    corpus = tmp_path / "c.txt"
    corpus.write_bytes("\n".join(lines(150)).encode() + b"\n" + (FRENCH * 300).encode("cp1252"))
    out = tmp_path / "data"
    assert prepare(capsys, write(tmp_path / "good.txt", lines(200)), tok_dir, out)[0] == 0
    manifest = (out / "manifest.json").read_bytes()
    code, _, err = prepare(capsys, corpus, tok_dir, out, "--overwrite")
    assert code == 2 and one_line(err) == (f"electra: error: corpus file {corpus} is not UTF-8 text (300 of its 450 "
                                          "non-empty lines cannot be decoded); it looks like Windows-1252 or "
                                          "Latin-1: convert it with iconv -f CP1252 -t UTF-8")
    assert (out / "manifest.json").read_bytes() == manifest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data.tmp")]


@pytest.mark.parametrize("command", ["tokenizer train", "prepare"])
def test_a_few_undecodable_lines_are_skipped_and_counted(command, tok_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes("\n".join(lines(300)).encode() + b"\n" + (FRENCH * 3).encode("cp1252"))
    if command == "prepare":
        code, out, err = prepare(capsys, corpus, tok_dir, tmp_path / "data")
        assert json.loads((tmp_path / "data" / "manifest.json").read_text())["corpus"]["undecodable_lines"] == 3
    else:
        code, out, err = train(capsys, corpus, tmp_path / "tok")
    assert code == 0 and "; 3 undecodable lines skipped" in out, out


def test_finetune_file_hint_names_what_the_bytes_look_like(tmp_path):
    def message(data: bytes) -> str:
        (tmp_path / "f.tsv").write_bytes(data)
        with pytest.raises(UserError) as e:
            read_text_file(tmp_path / "f.tsv", "data file")
        return str(e.value)

    ok = "sentence\tlabel\n".encode()
    assert message(ok + "café crème\t1\n".encode("cp1252")).endswith(
        "(undecodable bytes on line 2); it looks like Windows-1252 or Latin-1: convert it with iconv -f CP1252 "
        "-t UTF-8")
    assert message(ok + "北京很好\t1\n他们在北京工作\t0\n".encode("gbk")).endswith(
        "it looks like GBK/GB18030: convert it with iconv -f GB18030 -t UTF-8")
    assert message(ok + bytes([0x80, 0x81, 0xfe, 0xff, 0x90, 0x20]) * 5).endswith(
        "(undecodable bytes on line 2); convert it to UTF-8 (e.g. with iconv -f ITS-ENCODING -t UTF-8)")


# ---- case 3: the same corpus gives the same tokenizer ----

def test_tokenizer_training_is_reproducible(tmp_path):
    """Each run in its own process: the hash maps that ordered ties differ between processes."""
    corpus = write(tmp_path / "c.txt", lines(3000))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for i in (1, 2):
        proc = subprocess.run([sys.executable, "-m", "electra", "tokenizer", "train", "--corpus", str(corpus),
                               "--vocab-size", "1000", "--out", str(tmp_path / f"tok{i}")],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
    for name in ("tokenizer.json", "vocab.txt"):
        assert (tmp_path / "tok1" / name).read_bytes() == (tmp_path / "tok2" / name).read_bytes(), name


# ---- case 4: fewer pieces than asked ----

def test_a_smaller_vocabulary_than_asked_is_reported(tmp_path, capsys):
    corpus = write(tmp_path / "c.txt", lines(300))
    code, out, err = cli(capsys, "tokenizer", "train", "--corpus", corpus, "--vocab-size", 21128, "--out",
                         tmp_path / "tok")
    n = len((tmp_path / "tok" / "vocab.txt").read_text(encoding="utf-8").splitlines())
    assert code == 0 and n < 21128 and f"({n:,} tokens)" in out
    assert one_line(err) == (f"electra: note: the vocabulary has {n:,} pieces, not the 21,128 asked for: no more "
                             "pieces occur at least 2 times (--min-frequency) in this corpus; lower "
                             "--min-frequency or add text")


# ---- case 5: compressed files cut short, mislabelled, or holding nothing ----

def truncated_gzip(path: Path, n_lines: int) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines(n_lines)) + "\n")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def gzip_message(err: str, corpus: Path) -> int:
    """The line the message names, after checking the rest of it."""
    msg = one_line(err)
    head = f"electra: error: corpus file {corpus} is truncated or corrupt (gzip stream ended at line "
    tail = "); download or compress it again, or leave it out of --corpus"
    assert msg.startswith(head) and msg.endswith(tail), msg
    return int(msg[len(head):-len(tail)].replace(",", ""))


@pytest.mark.parametrize("command", ["tokenizer train", "prepare"])
def test_truncated_gzip_is_named_with_the_line_reached(command, tok_dir, tmp_path, capsys):
    corpus = truncated_gzip(tmp_path / "c.txt.gz", 20000)
    if command == "prepare":  # with worker processes, over an earlier data directory it must not lose
        out = tmp_path / "data"
        assert prepare(capsys, write(tmp_path / "good.txt", lines(200)), tok_dir, out)[0] == 0
        manifest = (out / "manifest.json").read_bytes()
        code, _, err = prepare(capsys, corpus, tok_dir, out, "--overwrite", "--workers", 2)
        assert (out / "manifest.json").read_bytes() == manifest
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data.tmp")]
    else:
        code, _, err = train(capsys, corpus, tmp_path / "tok")
        assert not (tmp_path / "tok").exists()
    assert code == 2 and 5000 < gzip_message(err, corpus) < 15000


def test_gzip_cut_within_its_first_lines(tmp_path, capsys):
    corpus = truncated_gzip(tmp_path / "c.txt.gz", 40)
    code, _, err = train(capsys, corpus, tmp_path / "tok")
    assert code == 2 and 1 <= gzip_message(err, corpus) <= 40
    assert not (tmp_path / "tok").exists()


def test_another_compression_named_gz_is_refused(tok_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt.gz"
    corpus.write_bytes(bz2.compress("\n".join(lines(100)).encode()))
    code, _, err = prepare(capsys, corpus, tok_dir, tmp_path / "data")
    assert code == 2 and one_line(err) == (f"electra: error: corpus file {corpus} is bzip2-compressed, not gzip or "
                                          "text; decompress it first (or compress it with gzip)")
    nothing_left(tmp_path / "data")


def test_plain_text_named_gz_is_read_as_text(tmp_path, capsys):
    code, out, _ = train(capsys, write(tmp_path / "c.txt.gz", lines(300)), tmp_path / "tok")
    assert code == 0 and "from 300 lines" in out


@pytest.mark.parametrize("case, expected", [
    ("missing", "corpus not found: {corpus}"),
    ("empty", "corpus file {corpus} is empty"),
    ("blank lines in gzip", "corpus file {corpus} has no text (only blank lines)"),
    ("empty directory", "corpus directory {corpus} has no files"),
])
def test_missing_or_empty_corpus(case, expected, tok_dir, tmp_path, capsys):
    corpus = tmp_path / "c.txt.gz"
    if case == "empty":
        corpus.write_bytes(b"")
    elif case == "blank lines in gzip":
        corpus.write_bytes(gzip.compress(b"\n \n\n"))
    elif case == "empty directory":
        corpus = tmp_path / "corpus"
        corpus.mkdir()
    for command in ("tokenizer train", "prepare"):
        out = tmp_path / "out"
        code, _, err = (train(capsys, corpus, out) if command == "tokenizer train"
                        else prepare(capsys, corpus, tok_dir, out))
        assert code == 2 and one_line(err) == "electra: error: " + expected.format(corpus=corpus), command
        nothing_left(out)
