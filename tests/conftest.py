"""Shared fixtures: a small WordPiece tokenizer trained here, tiny configs, random-but-nontrivial weights."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from electra.config import ElectraConfig, ModelConfig, generator_config
from electra.data.tokenizer import save_tokenizer, special_ids, train_tokenizer

WORDS = ("the quick brown fox jumps over lazy dog a cat sat on mat river bank money water tree house "
         "city music plays sings writes reads paper science history of and in to with from by").split()

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + "." for _ in range(n)]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    tok = train_tokenizer(sentences(400), vocab_size=120, min_frequency=1, show_progress=False)
    save_tokenizer(tok, out, lowercase=True)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from electra.data.tokenizer import load_tokenizer
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def special(tokenizer):
    return special_ids(tokenizer)


def tiny_config(vocab_size: int, **overrides) -> ElectraConfig:
    """embedding_size != hidden_size so the projection is exercised."""
    settings = dict(vocab_size=vocab_size, embedding_size=24, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    disc = ModelConfig(**{**settings, **overrides})
    return ElectraConfig(disc, generator_config(disc, 0.5))


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (LayerNorm weights and biases too) non-trivial random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def random_batch(vocab_size: int, special, B: int = 3, T: int = 16, seed: int = 0, pad_lengths=None):
    """(input_ids, attention_mask, token_type_ids); row b is padded after pad_lengths[b] tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (B, T), generator=g)
    ids[:, 0] = special.cls
    mask = torch.ones(B, T, dtype=torch.long)
    types = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        n = T if pad_lengths is None else pad_lengths[b]
        ids[b, n - 1] = special.sep
        ids[b, n:] = special.pad
        mask[b, n:] = 0
        types[b, n // 2: n] = 1
    return ids, mask, types


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run where CUDA is present and are skipped, with the reason, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def wait_until_serving(url: str, proc, timeout: float = 60.0) -> None:
    """Poll GET /health of an `electra serve` subprocess until it answers 200."""
    import time

    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.time() < deadline and proc.poll() is None, "the server did not start"
        time.sleep(0.1)
