"""Typed configurations and the model-size registry.

Field names follow Hugging Face's `ElectraConfig` so that conversion is a table, not a puzzle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from electra.errors import UserError

Activation = Literal["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"]


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens the objective needs."""

    pad: int
    cls: int
    sep: int
    mask: int


@dataclass
class ModelConfig:
    """One transformer encoder (the generator or the discriminator)."""

    vocab_size: int = 30522
    """Number of word pieces in the vocabulary."""
    embedding_size: int = 128
    """Width of the (shared) token/position/type embeddings; projected when it differs from hidden_size."""
    hidden_size: int = 256
    """Width of the transformer layers."""
    num_hidden_layers: int = 12
    """Number of transformer layers."""
    num_attention_heads: int = 4
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: int = 1024
    """Width of the feed-forward layer."""
    hidden_act: Activation = "gelu"
    """Activation of the feed-forward layer and of the discriminator head."""
    hidden_dropout_prob: float = 0.1
    """Dropout on embeddings and layer outputs."""
    attention_probs_dropout_prob: float = 0.1
    """Dropout on attention probabilities."""
    max_position_embeddings: int = 512
    """Longest sequence the position table covers."""
    type_vocab_size: int = 2
    """Number of segment (token type) ids."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon (BERT/ELECTRA use 1e-12)."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation."""
    pad_token_id: int = 0
    """Id of [PAD]."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size", "max_position_embeddings",
                     "type_vocab_size"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive (got {getattr(self, name)})")
        if self.num_attention_heads > 0 and self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size {self.hidden_size} is not divisible by "
                            f"num_attention_heads {self.num_attention_heads}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                problems.append(f"{name} must be in [0, 1) (got {getattr(self, name)})")
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            problems.append(f"hidden_act {self.hidden_act!r} is not supported "
                            "(use gelu, gelu_new, gelu_pytorch_tanh or relu)")
        if problems:
            raise UserError("invalid model config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a dict, ignoring keys that are not fields (e.g. a full HF config.json)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and v is not None}
        return cls(**kwargs)


def generator_config(disc: ModelConfig, multiplier: float) -> ModelConfig:
    """The generator for a discriminator: same depth and embeddings, `multiplier` x the width.

    As in the official code: heads = hidden/64 (at least 1), feed-forward = 4 x hidden.
    """
    hidden = max(1, round(disc.hidden_size * multiplier))
    heads = max(1, hidden // 64)
    while hidden % heads:
        heads -= 1
    return dataclasses.replace(disc, hidden_size=hidden, num_attention_heads=heads,
                               intermediate_size=4 * hidden)


@dataclass
class ElectraConfig:
    """The discriminator and its generator, trained together."""

    discriminator: ModelConfig = field(default_factory=ModelConfig)
    generator: ModelConfig = field(default_factory=lambda: generator_config(ModelConfig(), 0.25))

    def __post_init__(self) -> None:
        shared = ("vocab_size", "embedding_size", "max_position_embeddings", "type_vocab_size",
                  "pad_token_id")
        bad = [n for n in shared if getattr(self.discriminator, n) != getattr(self.generator, n)]
        if bad:
            raise UserError("generator and discriminator share their embeddings, so they must agree "
                            "on " + ", ".join(bad))

    def to_dict(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.to_dict(), "generator": self.generator.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ElectraConfig":
        return cls(ModelConfig.from_dict(data["discriminator"]), ModelConfig.from_dict(data["generator"]))

    def with_vocab(self, vocab_size: int, pad_token_id: int) -> "ElectraConfig":
        return ElectraConfig(
            dataclasses.replace(self.discriminator, vocab_size=vocab_size, pad_token_id=pad_token_id),
            dataclasses.replace(self.generator, vocab_size=vocab_size, pad_token_id=pad_token_id))

    def with_dropout(self, p: float) -> "ElectraConfig":
        def drop(c: ModelConfig) -> ModelConfig:
            return dataclasses.replace(c, hidden_dropout_prob=p, attention_probs_dropout_prob=p)
        return ElectraConfig(drop(self.discriminator), drop(self.generator))


def _size(multiplier: float, **disc: Any) -> ElectraConfig:
    d = ModelConfig(**disc)
    return ElectraConfig(d, generator_config(d, multiplier))


# The paper's sizes (Clark et al. 2020, Table 6); generator widths small 1/4, base 1/3, large 1/4.
# `tiny` is for tests and the demo. Adding a size is adding one entry.
SIZES: dict[str, ElectraConfig] = {
    "tiny": _size(0.25, embedding_size=64, hidden_size=128, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=512, max_position_embeddings=512),
    "small": _size(0.25, embedding_size=128, hidden_size=256, num_hidden_layers=12,
                   num_attention_heads=4, intermediate_size=1024),
    "base": _size(1 / 3, embedding_size=768, hidden_size=768, num_hidden_layers=12,
                  num_attention_heads=12, intermediate_size=3072),
    "large": _size(0.25, embedding_size=1024, hidden_size=1024, num_hidden_layers=24,
                   num_attention_heads=16, intermediate_size=4096),
}


def get_size(name: str) -> ElectraConfig:
    """A copy of a registered size, or a clear error listing the known ones."""
    if name not in SIZES:
        raise UserError(f"unknown model size or recipe {name!r}; sizes: {', '.join(SIZES)}; recipes: "
                        f"{', '.join(recipe_names())} (or pass a YAML file of model settings)")
    return ElectraConfig.from_dict(SIZES[name].to_dict())


# Named recipes: YAML files of model, objective and train settings shipped with the package, each measured
# (its header says on what and how); `--model NAME` uses one, `--model FILE.yaml` your own.
RECIPES = Path(__file__).parent / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def recipe_path(name: str) -> Path | None:
    """The packaged recipe called `name`, if there is one."""
    path = RECIPES / f"{name}.yaml"
    return path if name in recipe_names() else None


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object, turning every failure into one clear line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e}); is the file complete?") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} should hold a JSON object")
    return data


ObjectiveKind = Literal["electra", "mlm"]
EmbeddingSharing = Literal["es", "gdes", "nes"]
# settings that only replaced-token detection has; `--objective mlm` refuses them when given
ELECTRA_ONLY = ("gen_weight", "disc_weight", "temperature", "embedding_sharing")


@dataclass
class ObjectiveConfig:
    """Settings of the pretraining objective (defaults: the paper's ELECTRA; for mlm, BERT's).

    Settings left at None take the objective's default; the ELECTRA-only ones must stay None for mlm."""

    kind: ObjectiveKind = "electra"
    """electra: a generator corrupts, the discriminator detects replaced tokens. mlm: BERT's masked LM on
    the discriminator-sized encoder, no generator (the baseline of the paper's equal-compute claim)."""
    mask_prob: float = 0.15
    """Fraction of maskable tokens to predict."""
    mask_token_prob: float | None = None
    """Of those, the fraction replaced by [MASK] (electra 0.85, mlm 0.8)."""
    random_token_prob: float | None = None
    """Of those, the fraction replaced by a random token (electra 0, mlm 0.1); the rest keep their token."""
    whole_word_mask: bool = False
    """Mask whole words (all their pieces); needs data prepared with word boundaries. Rate and cap stay per token."""
    gen_weight: float | None = None
    """electra: weight of the generator's MLM loss (1)."""
    disc_weight: float | None = None
    """electra: weight of the discriminator's binary cross-entropy (50)."""
    temperature: float | None = None
    """electra: sampling temperature of the generator's softmax (1)."""
    embedding_sharing: EmbeddingSharing | None = None
    """electra: es shares the embeddings (the paper); gdes gives the discriminator stop-gradient(generator's)
    plus a zero-initialised residual of its own (DeBERTa-V3); nes shares nothing."""

    def __post_init__(self) -> None:
        if self.kind not in ("electra", "mlm"):
            raise UserError(f"the objective must be electra or mlm (got {self.kind!r})")
        if self.kind == "mlm":
            given = [k for k in ELECTRA_ONLY if getattr(self, k) is not None]
            if given:
                raise UserError(f"ELECTRA-only settings given ({', '.join(given)}); the mlm objective has no "
                                "generator or discriminator loss: remove them, or use --objective electra")
        defaults = {"mask_token_prob": 0.85, "random_token_prob": 0.0, "gen_weight": 1.0, "disc_weight": 50.0,
                    "temperature": 1.0, "embedding_sharing": "es"} if self.kind == "electra" \
            else {"mask_token_prob": 0.8, "random_token_prob": 0.1}
        for k, v in defaults.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if not 0.0 < self.mask_prob < 1.0:
            raise UserError(f"mask_prob must be in (0, 1) (got {self.mask_prob})")
        if not (0.0 <= self.mask_token_prob <= 1.0 and 0.0 <= self.random_token_prob <= 1.0
                and self.mask_token_prob + self.random_token_prob <= 1.0):
            raise UserError(f"mask_token_prob and random_token_prob must be in [0, 1] and add up to at most 1 "
                            f"(got {self.mask_token_prob} and {self.random_token_prob})")
        if self.kind == "electra":
            if self.gen_weight < 0 or self.disc_weight < 0:
                raise UserError("gen_weight and disc_weight must be >= 0")
            if self.temperature <= 0:
                raise UserError(f"temperature must be > 0 (got {self.temperature})")
            if self.embedding_sharing not in ("es", "gdes", "nes"):
                raise UserError(f"embedding_sharing must be es, gdes or nes (got {self.embedding_sharing!r})")

    def max_predictions(self, seq_len: int) -> int:
        """The official cap on masked positions per sequence."""
        return max(1, int((self.mask_prob + 0.005) * seq_len))


# Peak learning rates of the paper (Table 6); tiny is ours.
DEFAULT_LR = {"tiny": 1e-3, "small": 5e-4, "base": 2e-4, "large": 2e-4}

Precision = Literal["fp32", "bf16", "fp16"]
Strategy = Literal["ddp", "fsdp"]
Task = Literal["classification", "regression", "ner", "qa", "prompt"]


@dataclass
class PretrainConfig:
    """Training settings of `electra pretrain` (defaults: the paper's ELECTRA-Small recipe, shorter)."""

    max_steps: int = 10000
    """Optimizer steps to train for."""
    batch_size: int = 128
    """Global batch size: examples per optimizer step, over all micro-batches and processes."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (batch_size must be divisible by it)."""
    lr: float = 5e-4
    """Peak learning rate."""
    warmup_steps: int = -1
    """Linear warm-up steps; -1: 10% of max_steps, at most 10000 (the paper's)."""
    weight_decay: float = 0.01
    """AdamW weight decay (none on LayerNorm parameters and biases)."""
    adam_eps: float = 1e-6
    """AdamW epsilon."""
    clip_grad_norm: float = 1.0
    """Gradient clipping by global norm."""
    seed: int = 0
    """Seed of initialisation, data order, masking and sampling."""
    precision: Precision = "fp32"
    """fp32, or bf16/fp16 mixed precision (on hardware that has it)."""
    compile: bool = False
    """torch.compile each transformer layer."""
    strategy: Strategy = "ddp"
    """Under torchrun: replicate the model (DistributedDataParallel) or shard it (FSDP, fully_shard)."""
    save_every: int = 1000
    """Steps between checkpoints."""
    keep_last: int = 3
    """Checkpoints to keep."""
    log_every: int = 10
    """Steps between metric rows in metrics.jsonl."""
    eval_every: int = 500
    """Steps between validation passes on the held-out split (0: never)."""
    eval_batches: int = 10
    """Batches per validation pass."""
    time_budget_s: float | None = None
    """Stop (with a checkpoint) after this many seconds of training."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_steps", "batch_size", "grad_accum", "save_every", "keep_last", "log_every",
                     "eval_batches"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if not 0 < self.lr < 1:
            problems.append(f"lr must be positive and below 1 (got {self.lr}; AdamW rates are usually 1e-5 to 1e-2)")
        if self.eval_every < 0:
            problems.append(f"eval-every must be >= 0 (got {self.eval_every})")
        if self.batch_size > 0 and self.grad_accum > 0 and self.batch_size % self.grad_accum:
            problems.append(f"batch-size {self.batch_size} is not divisible by grad-accum {self.grad_accum}")
        if self.strategy not in ("ddp", "fsdp"):
            problems.append(f"strategy must be ddp or fsdp (got {self.strategy})")
        if self.precision not in ("fp32", "bf16", "fp16"):
            problems.append(f"precision must be fp32, bf16 or fp16 (got {self.precision})")
        if problems:
            raise UserError("; ".join(problems))

    @property
    def resolved_warmup(self) -> int:
        return min(10000, self.max_steps // 10) if self.warmup_steps < 0 else self.warmup_steps


# Fine-tuning learning rates of the official code (small 3e-4, base 1e-4, large 5e-5); other widths by
# the rule those follow: inversely with the hidden size (3e-4 at 256), at most 1e-3.
FINETUNE_LR = {"small": 3e-4, "base": 1e-4, "large": 5e-5}


def finetune_lr(cfg: ModelConfig) -> float:
    """The default fine-tuning learning rate of an encoder (tiny: 6e-4)."""
    for name, lr in FINETUNE_LR.items():
        d = SIZES[name].discriminator
        if (d.hidden_size, d.num_hidden_layers) == (cfg.hidden_size, cfg.num_hidden_layers):
            return lr
    return min(1e-3, 3e-4 * 256 / cfg.hidden_size)


@dataclass
class FinetuneConfig:
    """Training settings of `electra finetune` (defaults: the paper's GLUE recipe)."""

    epochs: int = 3
    """Passes over the training data."""
    batch_size: int = 32
    """Examples per optimizer step, over all processes."""
    lr: float | None = None
    """Peak learning rate of the top layer and the head; None: by the encoder's size (`finetune_lr`)."""
    layer_decay: float = 0.8
    """Learning-rate factor per layer going down (1: off)."""
    warmup: float = 0.1
    """Fraction of the steps spent warming up."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_seq_len: int | None = None
    """Word pieces per input (None: 128; 384 for qa)."""
    seed: int = 0
    """Seed of the head's initialisation, dropout and data order."""
    dropout: float | None = None
    """Override the encoder's dropout."""
    freeze_layers: int = 0
    """Freeze the embeddings and the lowest N layers."""
    head_only: bool = False
    """Train only the task head."""
    lora: bool = False
    """Train LoRA adapters (peft) and the head; merged into the weights when saved."""
    lora_rank: int = 8
    """Rank of the LoRA adapters."""
    doc_stride: int = 128
    """qa: tokens between the starts of overlapping context windows."""
    max_answer_len: int = 30
    """qa: longest answer in word pieces."""
    metric: str | None = None
    """The dev metric that picks the best epoch (None: accuracy, pearson, or f1 for ner and qa)."""
    precision: Precision = "fp32"
    """fp32, or bf16/fp16 mixed precision on hardware that has it."""
    strategy: Strategy = "ddp"
    """Under torchrun: replicate the model (ddp) or shard it (fsdp)."""
    length_buckets: bool = True
    """Batch examples of similar length (less compute spent on padding)."""
    adversarial: Literal["fgm", "pgd", "freelb"] | None = None
    """Adversarial training on the word-embedding output: fgm, pgd or freelb (None: plain)."""
    adv_epsilon: float = 0.02
    """The largest perturbation's L2 norm per example, as a fraction of that example's word-embedding norm."""
    adv_steps: int = 3
    """pgd and freelb: ascent steps per training step."""
    adv_alpha: float = 0.01
    """pgd and freelb: the size of each ascent step, as a fraction of the example's word-embedding norm."""
    template: str | None = None
    """prompt: where the text and the label word go, e.g. '{text} It was {label}.'"""
    verbalizer: str | None = None
    """prompt: a word per label, e.g. '0=terrible,1=great'."""
    shots: int | None = None
    """Train on this many examples per class, sampled with the seed (few-shot); None: all."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("epochs", "batch_size", "lora_rank", "doc_stride", "max_answer_len"):
            if getattr(self, name) <= 0:
                problems.append(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if self.lr is not None and not 0 < self.lr < 1:
            problems.append(f"--lr must be positive and below 1 (got {self.lr})")
        if not 0 < self.layer_decay <= 1:
            problems.append(f"--layer-decay must be in (0, 1] (got {self.layer_decay}); 1 turns it off")
        if not 0 <= self.warmup < 1:
            problems.append(f"--warmup is a fraction of the steps in [0, 1) (got {self.warmup})")
        if self.freeze_layers < 0:
            problems.append(f"--freeze-layers must be >= 0 (got {self.freeze_layers})")
        if self.max_seq_len is not None and self.max_seq_len < 8:
            problems.append(f"--max-seq-len must be at least 8 (got {self.max_seq_len})")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            problems.append(f"--dropout must be in [0, 1) (got {self.dropout})")
        if self.shots is not None and self.shots <= 0:
            problems.append(f"--shots must be positive (got {self.shots})")
        if self.adversarial not in (None, "fgm", "pgd", "freelb"):
            problems.append(f"--adversarial must be fgm, pgd or freelb (got {self.adversarial})")
        for name in ("adv_epsilon", "adv_steps", "adv_alpha"):
            if not getattr(self, name) > 0:
                problems.append(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if sum([self.head_only, self.lora, self.freeze_layers > 0]) > 1:
            problems.append("choose one of --head-only, --lora and --freeze-layers")
        if self.strategy == "fsdp" and (self.lora or self.head_only or self.freeze_layers):
            problems.append("--strategy fsdp trains every parameter; use the default ddp with --lora, "
                            "--head-only or --freeze-layers")
        if self.precision not in ("fp32", "bf16", "fp16"):
            problems.append(f"precision must be fp32, bf16 or fp16 (got {self.precision})")
        if self.strategy not in ("ddp", "fsdp"):
            problems.append(f"strategy must be ddp or fsdp (got {self.strategy})")
        if problems:
            raise UserError("; ".join(problems))


def merge_settings(cls, where: str, configured: dict[str, Any], flags: dict[str, Any]):
    """cls(defaults < `configured` (a YAML mapping) < the flags that were given, i.e. are not None)."""
    if not isinstance(configured, dict):
        raise UserError(f"{where}: expected a mapping of {cls.__name__} settings")
    merged = {**configured, **{k: v for k, v in flags.items() if v is not None}}
    known = {f.name for f in fields(cls)}
    unknown = set(merged) - known
    if unknown:
        raise UserError(f"{where}: unknown settings {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    try:
        return cls(**merged)
    except TypeError as e:  # a value of the wrong kind that validation could not compare
        raise UserError(f"{where}: {e}") from None


def load_yaml(path: Path, known: set[str] | None = None) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} should hold a mapping of settings")
    if known is None:
        known = {"model", "generator_size", "discriminator", "generator", "objective", "train"}
    unknown = set(data) - known
    if unknown:
        raise UserError(f"{path}: unknown sections {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return data


def model_from_spec(spec: str) -> tuple[ElectraConfig, dict[str, Any], str]:
    """A size name, a recipe name or a YAML file -> (model config, the YAML's other sections, base size name)."""
    if spec in SIZES:
        return get_size(spec), {}, spec
    path = Path(spec)
    if not path.is_file() and recipe_path(spec):
        path = recipe_path(spec)
    elif not spec.endswith((".yaml", ".yml")) and not path.is_file():
        get_size(spec)  # raises the "unknown size or recipe" error listing the known ones
    data = load_yaml(path)
    base = data.get("model", "small")
    cfg = get_size(base)
    disc = dataclasses.replace(cfg.discriminator, **_checked(data.get("discriminator", {}), ModelConfig, spec))
    if "generator_size" in data:
        gen = generator_config(disc, float(data["generator_size"]))
    else:
        gen = dataclasses.replace(cfg.generator, **{k: getattr(disc, k) for k in (
            "vocab_size", "embedding_size", "num_hidden_layers", "max_position_embeddings", "type_vocab_size",
            "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps")})
    gen = dataclasses.replace(gen, **_checked(data.get("generator", {}), ModelConfig, spec))
    return ElectraConfig(disc, gen), data, base


def _checked(overrides: dict[str, Any], cls, where: str) -> dict[str, Any]:
    if not isinstance(overrides, dict):
        raise UserError(f"{where}: expected a mapping of {cls.__name__} settings")
    known = {f.name for f in fields(cls)}
    unknown = set(overrides) - known
    if unknown:
        raise UserError(f"{where}: unknown {cls.__name__} settings {', '.join(sorted(unknown))}")
    return overrides


def parse_duration(text: str | None) -> float | None:
    """'90s', '45m', '2h', '1h30m' or plain seconds -> seconds."""
    if text is None:
        return None
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
        if not parts or "".join(a + b for a, b in parts) != t:
            raise UserError(f"cannot read the duration {text!r}; write it like 90s, 45m, 2h or 1h30m")
        seconds = sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"the duration {text!r} must be positive")
    return seconds
