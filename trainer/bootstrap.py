"""Build Gristmill's own small code model from local Python sources.

No weights can be downloaded on-prem, so the first run trains a byte-level BPE tokenizer and a
small Llama-architecture model on the standard library, with fill-in-the-middle examples in
the Qwen-coder PSM format. Runs checkpoint and resume; the manifest is written last, so only a
finished directory looks complete.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sysconfig
import time
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import (
    CheckpointMismatchError,
    CorpusTooSmallError,
    IncompleteModelError,
    InvalidConfigError,
    ManifestError,
    ModelWriteError,
    NoSourcesError,
    TrainingFailedError,
)

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_PAD = "<|fim_pad|>"
SPECIAL_TOKENS = (EOT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FIM_PAD)

MANIFEST_NAME = "gristmill_model.json"
MANIFEST_FORMAT = 1
CHECKPOINT_DIRNAME = "checkpoints"
_LOCK_NAME = ".bootstrap.lock"
_STAGING_NAME = ".final.partial"
_RUN_NAME = "run.json"
_TOKENIZER_NAME = "tokenizer.json"
_KEEP_CHECKPOINTS = 2
_LOG_EVERY_STEPS = 10
_MIN_LR_RATIO = 0.1
_GRAD_CLIP = 1.0
# Sentinels, end-of-text and room for at least one token per FIM part.
_FIM_OVERHEAD_TOKENS = 4

# The model only ever saw code, so the chat format is Markdown-ish headers it can at least copy.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '### Assistant\\n' + message['content'] + eos_token + '\\n' }}"
    "{%- else -%}"
    "{{ '### ' + message['role'] | capitalize + '\\n' + message['content'] + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '### Assistant\\n' }}{%- endif -%}"
)


def _default_source_dirs() -> list[Path]:
    return [Path(sysconfig.get_paths()["stdlib"])]


def _default_excluded_dirs() -> list[str]:
    return ["site-packages", "dist-packages", "__pycache__", "test", "tests"]


@dataclass
class BootstrapConfig:
    """How to build the base model. Defaults fit 2 CPU cores in about five minutes."""

    output_dir: Path = field(
        metadata={"help": "Directory that receives the finished model, tokenizer and manifest."}
    )
    max_minutes: float = field(
        default=5.0,
        metadata={
            "help": "Training-time budget in minutes, summed over resumed runs "
            "(corpus preparation, evaluation and saving come on top)."
        },
    )
    max_steps: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many optimizer steps; when set, the learning-rate schedule "
            "runs over steps (deterministic) instead of over the time budget."
        },
    )
    vocab_size: int = field(
        default=4096, metadata={"help": "Target size of the byte-level BPE vocabulary."}
    )
    hidden_size: int = field(default=256, metadata={"help": "Model width."})
    num_layers: int = field(default=6, metadata={"help": "Number of transformer layers."})
    num_heads: int = field(
        default=4, metadata={"help": "Attention heads; must divide hidden_size."}
    )
    intermediate_size: int = field(default=704, metadata={"help": "Width of the MLP layers."})
    seq_len: int = field(
        default=256, metadata={"help": "Training sequence length and the model's context size."}
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences per optimizer step."})
    learning_rate: float = field(
        default=2e-3, metadata={"help": "Peak AdamW learning rate (cosine decay to 10%)."}
    )
    warmup_steps: int = field(
        default=30, metadata={"help": "Steps of linear learning-rate warm-up."}
    )
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW weight decay on matrices (not norms)."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed for file selection, FIM splits, data order and init."}
    )
    fim_rate: float = field(
        default=0.5,
        metadata={
            "help": "Share of training files rewritten as fill-in-the-middle (PSM) examples."
        },
    )
    source_dirs: list[Path] = field(
        default_factory=_default_source_dirs,
        metadata={
            "help": "Directories searched for *.py files; default: this interpreter's "
            "standard library."
        },
    )
    exclude_dir_names: list[str] = field(
        default_factory=_default_excluded_dirs,
        metadata={"help": "Directory names skipped while searching the source dirs."},
    )
    max_source_bytes: int = field(
        default=16_000_000,
        metadata={"help": "Cap on corpus size; files are picked in seeded random order."},
    )
    max_file_bytes: int = field(
        default=400_000,
        metadata={"help": "Larger files (mostly generated tables) are skipped."},
    )
    val_fraction: float = field(
        default=0.02, metadata={"help": "Share of files held out for validation loss."}
    )
    eval_batches: int = field(
        default=4, metadata={"help": "Batches of held-out sequences per validation pass."}
    )
    checkpoint_every_s: float = field(
        default=60.0,
        metadata={"help": "Seconds between checkpoints in output_dir/checkpoints (0: every step)."},
    )
    device: str = field(
        default="auto", metadata={"help": "torch device; 'auto' picks cuda when available."}
    )
    num_threads: int | None = field(
        default=None,
        metadata={"help": "torch CPU threads while training; default: the cores available."},
    )

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.source_dirs = [Path(d) for d in self.source_dirs]
        self.exclude_dir_names = list(self.exclude_dir_names)
        problems = [
            msg
            for bad, msg in (
                (self.max_minutes <= 0, "max_minutes must be > 0"),
                (self.max_steps is not None and self.max_steps < 1, "max_steps must be >= 1"),
                (self.vocab_size <= 256 + len(SPECIAL_TOKENS), "vocab_size must exceed 261"),
                (min(self.hidden_size, self.num_layers, self.num_heads) < 1, "sizes must be >= 1"),
                (self.hidden_size % max(self.num_heads, 1) != 0, "num_heads must divide hidden"),
                (self.intermediate_size < 1, "intermediate_size must be >= 1"),
                (self.seq_len < 2 * _FIM_OVERHEAD_TOKENS, "seq_len must be >= 8"),
                (self.batch_size < 1, "batch_size must be >= 1"),
                (self.learning_rate <= 0, "learning_rate must be > 0"),
                (self.warmup_steps < 0, "warmup_steps must be >= 0"),
                (self.weight_decay < 0, "weight_decay must be >= 0"),
                (not 0.0 <= self.fim_rate <= 1.0, "fim_rate must be in [0, 1]"),
                (not 0.0 < self.val_fraction < 1.0, "val_fraction must be in (0, 1)"),
                (self.max_source_bytes < 1, "max_source_bytes must be >= 1"),
                (self.max_file_bytes < 1, "max_file_bytes must be >= 1"),
                (self.eval_batches < 1, "eval_batches must be >= 1"),
                (self.checkpoint_every_s < 0, "checkpoint_every_s must be >= 0"),
                (self.num_threads is not None and self.num_threads < 1, "num_threads >= 1"),
            )
            if bad
        ]
        if problems:
            raise InvalidConfigError("; ".join(problems))

    @classmethod
    def tiny(cls, output_dir: Path | str, **overrides: Any) -> BootstrapConfig:
        """A model small enough for tests: builds in seconds on two cores."""
        values: dict[str, Any] = {
            "vocab_size": 1024,
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 176,
            "seq_len": 128,
            "batch_size": 8,
            "learning_rate": 3e-3,
            "warmup_steps": 10,
            "max_steps": 120,
            "max_minutes": 2.0,
            "max_source_bytes": 400_000,
            "max_file_bytes": 60_000,
            "val_fraction": 0.05,
            # Matrices this small gain nothing from a second thread, and on shared cores
            # OpenMP's spinning threads slowed tiny runs tenfold.
            "num_threads": 1,
        }
        values.update(overrides)
        return cls(output_dir=Path(output_dir), **values)

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON types (paths as strings)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, list):
                value = [str(v) for v in value]
            out[f.name] = value
        return out


# Fields that do not change what is trained, so a resumed run may differ in them.
_RUNTIME_ONLY_FIELDS = frozenset(
    {"output_dir", "max_minutes", "checkpoint_every_s", "device", "num_threads"}
)


def _fingerprint(config: BootstrapConfig) -> dict[str, Any]:
    data = config.to_json()
    data["source_dirs"] = [str(Path(d).resolve()) for d in config.source_dirs]
    return {k: v for k, v in data.items() if k not in _RUNTIME_ONLY_FIELDS}


# ---------------------------------------------------------------- model directory


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The manifest of a complete model directory; IncompleteModelError otherwise."""
    model_dir = Path(path)
    manifest = _load_manifest(model_dir)
    if not _manifest_files_present(model_dir, manifest):
        raise IncompleteModelError(f"{model_dir} is not a complete model directory")
    return manifest


def is_complete_model_dir(path: Path | str) -> bool:
    """True when the directory holds a finished model whose files match its manifest."""
    model_dir = Path(path)
    try:
        manifest = _load_manifest(model_dir)
    except (IncompleteModelError, ManifestError):
        return False
    return _manifest_files_present(model_dir, manifest)


def _load_manifest(model_dir: Path) -> dict[str, Any]:
    manifest_path = model_dir / MANIFEST_NAME
    try:
        raw = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise IncompleteModelError(f"no {MANIFEST_NAME} in {model_dir}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {manifest_path}: {exc}") from exc
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"{manifest_path} does not hold a JSON object")
    return manifest


def _manifest_files_present(model_dir: Path, manifest: dict[str, Any]) -> bool:
    files = manifest.get("files")
    if manifest.get("complete") is not True or not isinstance(files, dict) or not files:
        return False
    for name, info in files.items():
        file_path = model_dir / name
        if not isinstance(info, dict) or not file_path.is_file():
            return False
        if file_path.stat().st_size != info.get("bytes"):
            return False
    return True


# ---------------------------------------------------------------- corpus


@dataclass(frozen=True)
class _Corpus:
    train: list[str]
    val: list[str]
    files: int
    bytes: int
    sha256: str


def _find_candidates(config: BootstrapConfig) -> list[tuple[str, Path]]:
    excluded = set(config.exclude_dir_names)
    found: list[tuple[str, Path]] = []
    for index, root in enumerate(config.source_dirs):
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in excluded)
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                path = Path(dirpath) / name
                try:
                    size = path.stat().st_size
                except OSError:
                    continue  # dangling symlink or raced deletion: not a source
                if 0 < size <= config.max_file_bytes:
                    found.append((f"{index}/{path.relative_to(root).as_posix()}", path))
    return found


def _collect_corpus(config: BootstrapConfig) -> _Corpus:
    candidates = _find_candidates(config)
    random.Random(config.seed).shuffle(candidates)
    digest = hashlib.sha256()
    texts: list[str] = []
    total = 0
    for rel, path in candidates:
        if total >= config.max_source_bytes:
            break
        try:
            data = path.read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # unreadable or not UTF-8 (a few stdlib test inputs are deliberately not)
        if not text.strip():
            continue
        texts.append(text)
        total += len(data)
        digest.update(rel.encode() + b"\0" + data + b"\0")
    if not texts:
        raise NoSourcesError(config.source_dirs)
    n_val = max(1, round(len(texts) * config.val_fraction))
    if len(texts) - n_val < 1:
        raise CorpusTooSmallError(
            f"found {len(texts)} source file(s); need at least 2 (training and validation)"
        )
    return _Corpus(
        train=texts[n_val:],
        val=texts[:n_val],
        files=len(texts),
        bytes=total,
        sha256=digest.hexdigest(),
    )


# ---------------------------------------------------------------- tokenizer and examples


def _train_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    bpe_trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=bpe_trainer, length=len(texts))
    return tokenizer


def _wrap_tokenizer(tokenizer: Tokenizer, seq_len: int) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOT,
        # A pad distinct from eos: trainers that mask padding in labels still teach stopping.
        pad_token=FIM_PAD,
        additional_special_tokens=[FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FIM_PAD],
        model_max_length=seq_len,
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def format_fim(prefix: str, middle: str, suffix: str) -> str:
    """One PSM fill-in-the-middle training text, as the model sees it."""
    return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{middle}{EOT}"


def _fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """Cut at two uniform character positions: (prefix, middle, suffix)."""
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return text[:a], text[a:b], text[b:]


def _windows(text: str, offsets: Sequence[tuple[int, int]], window: int) -> Iterator[str]:
    """Split text at token boundaries into pieces of at most `window` tokens."""
    starts = [offsets[i][0] for i in range(0, len(offsets), window)] or [0]
    starts[0] = 0
    bounds = [*starts, len(text)]
    for begin, end in zip(bounds, bounds[1:], strict=False):
        if end > begin:
            yield text[begin:end]


def _encode_documents(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    fim_rate: float,
    seq_len: int,
    rng: random.Random,
    group: int = 128,
) -> array:
    """One packed token stream. A share `fim_rate` of files become PSM FIM examples, one per
    window that fits a training sequence; other files are kept whole. Everything ends in EOT."""
    eot, fim_prefix, fim_suffix, fim_middle = (
        tokenizer.token_to_id(t) for t in (EOT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
    )
    window = seq_len - _FIM_OVERHEAD_TOKENS
    stream = array("i")
    # Encode in groups: Encoding objects carry offsets and strings and are large. Only FIM
    # files need offsets (to cut windows); the rest take the faster path without them.
    for start in range(0, len(texts), group):
        batch = list(texts[start : start + group])
        is_fim = [rng.random() < fim_rate for _ in batch]
        fim_texts = [t for t, fim in zip(batch, is_fim, strict=True) if fim]
        plain_texts = [t for t, fim in zip(batch, is_fim, strict=True) if not fim]
        fim_offsets = iter(
            [e.offsets for e in tokenizer.encode_batch(fim_texts, add_special_tokens=False)]
        )
        plain_ids = iter(
            [e.ids for e in tokenizer.encode_batch_fast(plain_texts, add_special_tokens=False)]
        )
        plan: list[list[int] | int] = []  # token ids of a plain file, or the index of a FIM part
        parts: list[str] = []
        for text, fim in zip(batch, is_fim, strict=True):
            if not fim:
                plan.append(next(plain_ids))
                continue
            for piece in _windows(text, next(fim_offsets), window):
                prefix, middle, suffix = _fim_split(piece, rng)
                plan.append(len(parts))
                parts.extend((prefix, suffix, middle))
        part_ids = [e.ids for e in tokenizer.encode_batch_fast(parts, add_special_tokens=False)]
        for item in plan:
            if isinstance(item, int):
                prefix_ids, suffix_ids, middle_ids = part_ids[item : item + 3]
                stream.append(fim_prefix)
                stream.extend(prefix_ids)
                stream.append(fim_suffix)
                stream.extend(suffix_ids)
                stream.append(fim_middle)
                stream.extend(middle_ids)
            else:
                stream.extend(item)
            stream.append(eot)
    return stream


# ---------------------------------------------------------------- files on disk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise ModelWriteError(f"cannot write {path}: {exc}") from exc


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    _write_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Serialise builds of one directory across processes; a waiter then finds it complete."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ModelWriteError(f"cannot create lock {path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _checkpoint_paths(checkpoint_dir: Path) -> list[Path]:
    """Finished checkpoints, newest first."""
    paths = []
    for path in checkpoint_dir.glob("step-*.pt"):
        step = path.stem.removeprefix("step-")
        if step.isdigit():
            paths.append((int(step), path))
    return [p for _, p in sorted(paths, reverse=True)]


# ---------------------------------------------------------------- training


@dataclass
class _TrainState:
    step: int = 0
    tokens_seen: int = 0
    data_position: int = 0
    elapsed_s: float = 0.0
    initial_val_loss: float | None = None
    loss_log: list[list[float]] = field(default_factory=list)
    pending_losses: list[float] = field(default_factory=list)
    recent_losses: list[float] = field(default_factory=list)

    def record(self, loss: float) -> None:
        self.pending_losses.append(loss)
        self.recent_losses = [*self.recent_losses[-9:], loss]
        if len(self.pending_losses) >= _LOG_EVERY_STEPS:
            self.flush_log()

    def flush_log(self) -> None:
        if self.pending_losses:
            mean = sum(self.pending_losses) / len(self.pending_losses)
            self.loss_log.append([self.step, round(mean, 5)])
            self.pending_losses = []


class _BatchSampler:
    """Endless seeded permutations of the packed chunks; `position` counts chunks consumed."""

    def __init__(self, n_chunks: int, batch_size: int, seed: int) -> None:
        self.n_chunks = n_chunks
        self.batch_size = batch_size
        self.seed = seed
        self._epoch = -1
        self._perm: list[int] = []

    def _permutation(self, epoch: int) -> list[int]:
        import torch

        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n_chunks, generator=generator).tolist()
            self._epoch = epoch
        return self._perm

    def batch(self, position: int) -> tuple[list[int], int]:
        indices: list[int] = []
        while len(indices) < self.batch_size:
            epoch, offset = divmod(position, self.n_chunks)
            take = min(self.batch_size - len(indices), self.n_chunks - offset)
            indices.extend(self._permutation(epoch)[offset : offset + take])
            position += take
        return indices, position


def _learning_rate(config: BootstrapConfig, step: int, elapsed_s: float) -> float:
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    if config.max_steps is not None:
        progress = step / config.max_steps
    else:
        progress = elapsed_s / (config.max_minutes * 60.0)
    progress = min(max(progress, 0.0), 1.0)
    decay = _MIN_LR_RATIO + (1 - _MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))
    return config.learning_rate * warm * decay


def _resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InvalidConfigError(f"unknown device {name!r}: {exc}") from exc


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _hf_progress_bars(enabled: bool) -> Iterator[None]:
    """transformers draws its own bars (e.g. while saving); honour progress=False."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _build_model(config: BootstrapConfig, tokenizer: Tokenizer) -> LlamaForCausalLM:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eot, pad = tokenizer.token_to_id(EOT), tokenizer.token_to_id(FIM_PAD)
    model_config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.seq_len,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eot,
        pad_token_id=pad,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(model_config)
    model.generation_config = GenerationConfig(
        bos_token_id=None, eos_token_id=eot, pad_token_id=pad
    )
    return model


def _make_optimizer(model: torch.nn.Module, config: BootstrapConfig) -> torch.optim.AdamW:
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(0.9, 0.95),
        eps=1e-8,
    )


def _evaluate(model: torch.nn.Module, chunks: torch.Tensor, batch_size: int) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, chunks.shape[0], batch_size):
            batch = chunks[start : start + batch_size].to(device=device, dtype=torch.long)
            loss = model(input_ids=batch, labels=batch).loss
            total += float(loss) * batch.shape[0]
            count += batch.shape[0]
    model.train()
    return total / count


def _save_checkpoint(
    checkpoint_dir: Path,
    fingerprint: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: _TrainState,
) -> Path:
    import torch

    payload = {
        "format": MANIFEST_FORMAT,
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "state": json.dumps(dataclasses.asdict(state)),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    path = checkpoint_dir / f"step-{state.step:08d}.pt"
    tmp = checkpoint_dir / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(checkpoint_dir)
        for old in _checkpoint_paths(checkpoint_dir)[_KEEP_CHECKPOINTS:]:
            old.unlink(missing_ok=True)
    except OSError as exc:
        raise ModelWriteError(f"cannot write checkpoint {path}: {exc}") from exc
    return path


def _load_latest_checkpoint(
    checkpoint_dir: Path,
    fingerprint: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> _TrainState | None:
    import torch

    for path in _checkpoint_paths(checkpoint_dir):
        try:
            payload = torch.load(path, map_location=device, weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:
            # Checkpoints are renamed into place whole; a bad one means disk trouble. Use older.
            log.warning("skipping unreadable checkpoint %s: %s", path.name, exc)
            continue
        if json.loads(payload["fingerprint"]) != fingerprint:
            raise CheckpointMismatchError(
                f"{path} was written by a different config; delete {checkpoint_dir} to start over"
            )
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["torch_rng"].cpu())
        if payload["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        state = _TrainState(**json.loads(payload["state"]))
        log.info("resuming from %s (step %d)", path.name, state.step)
        return state
    return None


def _prepare_run(
    config: BootstrapConfig, checkpoint_dir: Path, corpus: _Corpus
) -> tuple[Tokenizer, dict[str, Any]]:
    """Reuse the tokenizer of an interrupted run, or train and record a new one."""
    from tokenizers import Tokenizer

    fingerprint = _fingerprint(config)
    run_path = checkpoint_dir / _RUN_NAME
    tokenizer_path = checkpoint_dir / _TOKENIZER_NAME
    if run_path.is_file():
        try:
            recorded = json.loads(run_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointMismatchError(
                f"cannot read {run_path}: {exc}; delete {checkpoint_dir} to start over"
            ) from exc
        changed = sorted(
            key
            for key in fingerprint.keys() | recorded.get("fingerprint", {}).keys()
            if fingerprint.get(key) != recorded.get("fingerprint", {}).get(key)
        )
        if recorded.get("corpus_sha256") != corpus.sha256:
            changed.append("corpus contents")
        if changed:
            raise CheckpointMismatchError(
                f"checkpoints in {checkpoint_dir} come from another run (differs in: "
                f"{', '.join(changed)}); delete that directory to start over"
            )
        try:
            return Tokenizer.from_file(str(tokenizer_path)), fingerprint
        except Exception as exc:  # tokenizers raises bare Exception for missing/bad files
            raise CheckpointMismatchError(
                f"cannot load {tokenizer_path}: {exc}; delete {checkpoint_dir} to start over"
            ) from exc
    tokenizer = _train_tokenizer(corpus.train, config.vocab_size)
    _write_atomic(tokenizer_path, tokenizer.to_str().encode())
    # Written after the tokenizer, so its presence means the tokenizer is there.
    _write_json_atomic(run_path, {"fingerprint": fingerprint, "corpus_sha256": corpus.sha256})
    return tokenizer, fingerprint


def _as_chunks(stream: array, seq_len: int, limit: int | None = None) -> torch.Tensor:
    import torch

    n = len(stream) // seq_len
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        return torch.empty((0, seq_len), dtype=torch.int32)
    # array("i") is C int: 32 bits on every platform torch supports.
    data = torch.frombuffer(stream, dtype=torch.int32, count=n * seq_len)
    return data.clone().view(n, seq_len)


def _train(config: BootstrapConfig, output_dir: Path, corpus: _Corpus, *, progress: bool) -> Path:
    import torch
    from tqdm import tqdm

    checkpoint_dir = output_dir / CHECKPOINT_DIRNAME
    tokenizer, fingerprint = _prepare_run(config, checkpoint_dir, corpus)
    train_stream = _encode_documents(
        tokenizer,
        corpus.train,
        fim_rate=config.fim_rate,
        seq_len=config.seq_len,
        rng=random.Random(config.seed),
    )
    val_stream = _encode_documents(
        tokenizer,
        corpus.val,
        fim_rate=config.fim_rate,
        seq_len=config.seq_len,
        rng=random.Random(config.seed + 1),
    )
    train_chunks = _as_chunks(train_stream, config.seq_len)
    val_chunks = _as_chunks(val_stream, config.seq_len, config.eval_batches * config.batch_size)
    if train_chunks.shape[0] == 0 or val_chunks.shape[0] == 0:
        raise CorpusTooSmallError(
            f"{len(train_stream)} training and {len(val_stream)} validation tokens; "
            f"each needs at least seq_len={config.seq_len}"
        )
    log.info(
        "corpus: %d files, %d bytes, %d train tokens, %d val tokens",
        corpus.files,
        corpus.bytes,
        len(train_stream),
        len(val_stream),
    )

    device = _resolve_device(config.device)
    model = _build_model(config, tokenizer).to(device)
    optimizer = _make_optimizer(model, config)
    state = _load_latest_checkpoint(checkpoint_dir, fingerprint, model, optimizer, device)
    if state is None:
        state = _TrainState(initial_val_loss=_evaluate(model, val_chunks, config.batch_size))
    sampler = _BatchSampler(train_chunks.shape[0], config.batch_size, config.seed)
    budget_s = config.max_minutes * 60.0
    tokens_per_step = config.batch_size * config.seq_len

    model.train()
    bar = tqdm(
        total=config.max_steps,
        initial=state.step,
        disable=not progress,
        desc="bootstrap",
        unit="step",
        dynamic_ncols=True,
    )
    session_start = last_checkpoint = time.monotonic()
    session_elapsed_before = state.elapsed_s
    session_tokens = 0
    smoothed: float | None = None
    stopped_by = "max_steps"
    try:
        while True:
            now = time.monotonic()
            state.elapsed_s = session_elapsed_before + (now - session_start)
            if config.max_steps is not None and state.step >= config.max_steps:
                stopped_by = "max_steps"
                break
            if state.elapsed_s >= budget_s:
                stopped_by = "time"
                break
            lr = _learning_rate(config, state.step, state.elapsed_s)
            for group in optimizer.param_groups:
                group["lr"] = lr
            indices, next_position = sampler.batch(state.data_position)
            batch = train_chunks[indices].to(device=device, dtype=torch.long)
            try:
                loss = model(input_ids=batch, labels=batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), _GRAD_CLIP)
                optimizer.step()
            except RuntimeError as exc:
                raise TrainingFailedError(f"training step {state.step} failed: {exc}") from exc
            loss_value = float(loss.detach())
            state.step += 1
            state.tokens_seen += tokens_per_step
            state.data_position = next_position
            state.record(loss_value)
            session_tokens += tokens_per_step

            now = time.monotonic()
            state.elapsed_s = session_elapsed_before + (now - session_start)
            smoothed = loss_value if smoothed is None else 0.9 * smoothed + 0.1 * loss_value
            rate = session_tokens / max(now - session_start, 1e-9)
            bar.update(1)
            postfix = {"loss": f"{smoothed:.3f}", "tok_s": f"{rate:.0f}"}
            if config.max_steps is None:
                postfix["left"] = f"{max(budget_s - state.elapsed_s, 0.0):.0f}s"
            bar.set_postfix(postfix, refresh=False)
            if now - last_checkpoint >= config.checkpoint_every_s:
                _save_checkpoint(checkpoint_dir, fingerprint, model, optimizer, state)
                last_checkpoint = time.monotonic()
    finally:
        bar.close()
    state.flush_log()
    session_s = time.monotonic() - session_start

    val_loss = _evaluate(model, val_chunks, config.batch_size)
    recent = state.recent_losses
    summary = {
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "stopped_by": stopped_by,
        "train_seconds": round(state.elapsed_s, 2),
        "tokens_per_second": round(session_tokens / session_s, 1) if session_s > 0 else None,
        "initial_val_loss": state.initial_val_loss,
        "final_train_loss": sum(recent) / len(recent) if recent else None,
        "final_val_loss": val_loss,
        "loss_log": state.loss_log,
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus": {
            "files": corpus.files,
            "bytes": corpus.bytes,
            "train_tokens": len(train_stream),
            "val_tokens": len(val_stream),
        },
    }
    log.info("trained %d steps, val loss %.3f", state.step, val_loss)
    _save_final(config, output_dir, model, tokenizer, corpus, summary, progress=progress)
    return output_dir


def _save_final(
    config: BootstrapConfig,
    output_dir: Path,
    model: LlamaForCausalLM,
    tokenizer: Tokenizer,
    corpus: _Corpus,
    summary: dict[str, Any],
    *,
    progress: bool,
) -> None:
    import tokenizers
    import torch
    import transformers

    staging = output_dir / _STAGING_NAME
    try:
        if staging.exists():
            shutil.rmtree(staging)
        with _hf_progress_bars(progress):
            model.save_pretrained(staging)
        _wrap_tokenizer(tokenizer, config.seq_len).save_pretrained(staging)
        # safetensors writes its file 0600; give every file the mode the umask gave config.json.
        mode = (staging / "config.json").stat().st_mode & 0o777
        files: dict[str, dict[str, Any]] = {}
        for path in sorted(staging.iterdir()):
            path.chmod(mode)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256_file(path)}
        for path in sorted(staging.iterdir()):
            os.replace(path, output_dir / path.name)
        staging.rmdir()
        _fsync_dir(output_dir)
    except OSError as exc:
        raise ModelWriteError(f"cannot save the model to {output_dir}: {exc}") from exc

    weights = {k: v["sha256"] for k, v in files.items() if k.endswith(".safetensors")}
    manifest = {
        "format": MANIFEST_FORMAT,
        "complete": True,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "architecture": "LlamaForCausalLM",
        "config": config.to_json(),
        "corpus_hash": corpus.sha256,
        "weights_hash": hashlib.sha256(
            "".join(f"{k}:{v}\n" for k, v in sorted(weights.items())).encode()
        ).hexdigest(),
        "files": files,
        "special_tokens": list(SPECIAL_TOKENS),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        **summary,
    }
    # The manifest goes last: until it lands, the directory does not look complete.
    _write_json_atomic(output_dir / MANIFEST_NAME, manifest)
    shutil.rmtree(output_dir / CHECKPOINT_DIRNAME, ignore_errors=True)


def bootstrap_model(config: BootstrapConfig, *, progress: bool = True) -> Path:
    """Train the tokenizer and base model into ``config.output_dir`` and return that path.

    Returns at once when the directory already holds a complete model; resumes from the
    newest checkpoint when an earlier run was interrupted.
    """
    output_dir = Path(config.output_dir)
    if is_complete_model_dir(output_dir):
        return output_dir
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelWriteError(f"cannot create {output_dir}: {exc}") from exc
    with _exclusive_lock(output_dir / _LOCK_NAME):
        if is_complete_model_dir(output_dir):
            return output_dir  # another process finished it while we waited for the lock
        try:
            # A manifest that does not match its files must not survive into the new build.
            (output_dir / MANIFEST_NAME).unlink(missing_ok=True)
            (output_dir / CHECKPOINT_DIRNAME).mkdir(exist_ok=True)
        except OSError as exc:
            raise ModelWriteError(f"cannot prepare {output_dir}: {exc}") from exc
        corpus = _collect_corpus(config)

        import torch

        with (
            _torch_threads(config.num_threads or _available_cores()),
            torch.random.fork_rng(devices=[]),
        ):
            return _train(config, output_dir, corpus, progress=progress)
