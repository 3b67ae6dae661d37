"""Learn from feedback: TRL trainers + a PEFT LoRA adapter on a local base model.

    result = train(TrainConfig(snapshot_dir=..., base_model_dir=..., output_dir=...))

Methods: ``kto`` on unpaired labels, ``dpo_sft`` (DPO with an SFT term; plain DPO collapses
on small models) on pairs, ``sft`` on kept completions, and ``auto``, which uses what the
snapshot holds (see ``resolve_method``). The output directory holds HF checkpoints
(``checkpoints/``), the adapter (``adapter/``, ``save_pretrained``), ``train_config.json``
and ``metrics.json``. A resumed run continues from the newest checkpoint and ends with the
same adapter as an uninterrupted run. Runs in its own process (the CLI), never the gateway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import (
    CheckpointMismatchError,
    EmptyTrainingSetError,
    InvalidConfigError,
    ModelWriteError,
    RunExistsError,
    TrainingFailedError,
)

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "TrainConfig",
    "TrainResult",
    "base_model_hash",
    "directory_hash",
    "load_snapshot_rows",
    "resolve_method",
    "train",
]

METHODS = ("auto", "kto", "dpo_sft", "sft")
ADAPTER_DIRNAME = "adapter"
CHECKPOINT_DIRNAME = "checkpoints"
CONFIG_NAME = "train_config.json"
METRICS_NAME = "metrics.json"
_CARD_NAME = "card.json"


def _default_targets() -> list[str]:
    return ["all-linear"]


@dataclass
class TrainConfig:
    """One training run. Defaults follow TRAINING_NOTES (LoRA r16/a32, lr 5e-4, batch 16)."""

    snapshot_dir: Path = field(
        metadata={"help": "Dataset snapshot directory (data_dir/datasets/<id>, has card.json)."}
    )
    base_model_dir: Path = field(
        metadata={"help": "Local Hugging Face causal-LM directory the adapter is trained on."}
    )
    output_dir: Path = field(
        metadata={"help": "Run directory: checkpoints/, adapter/, train_config.json, metrics.json."}
    )
    method: str = field(
        default="auto",
        metadata={
            "help": "kto (labels; pairs join as one kept and one rejected row) | dpo_sft "
            "(pairs) | sft (kept completions) | auto: sft when the snapshot has kept "
            "completions, else kto on its labels (see resolve_method for why)."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (alpha / r)."})
    lora_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the LoRA input (0 keeps runs exact)."}
    )
    target_modules: list[str] = field(
        default_factory=_default_targets,
        metadata={"help": "Modules that get LoRA weights; ['all-linear'] is every linear layer."},
    )
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak AdamW learning rate (linear decay)."}
    )
    num_epochs: float = field(
        default=1.0, metadata={"help": "Passes over the training rows (ignored with max_steps)."}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "Stop after this many optimizer steps (overrides epochs)."}
    )
    min_steps: int = field(
        default=150,
        metadata={
            "help": "At least this many optimizer steps (more passes over a small snapshot: "
            "a few hundred rows are only a handful of steps per epoch); ignored with max_steps. "
            "On the loop bench's 138 kept completions, 100 steps took held-out acceptance to "
            "23% and 150 steps to 77%."
        },
    )
    batch_size: int = field(
        default=16, metadata={"help": "Rows per optimizer step (KTO needs at least 2)."}
    )
    beta: float = field(
        default=0.1, metadata={"help": "DPO/KTO beta: how far the adapter may move from the base."}
    )
    sft_weight: float = field(
        default=1.0, metadata={"help": "Weight of the SFT term next to the DPO loss (dpo_sft)."}
    )
    max_length: int = field(
        default=512,
        metadata={"help": "Tokens per prompt+completion; capped at the model's context."},
    )
    replay_weight: float = field(
        default=10.0,
        metadata={
            "help": "Weight of a replay loss on general code added to every step, so the "
            "adapter keeps the base's general-code skill (the gate's perplexity check); 0 "
            "turns replay off. Measured on the loop bench (sft, 150 steps): no replay +200% "
            "perplexity, kl at 5 +3.1%, kl at 10 +1.6% with the same acceptance."
        },
    )
    replay_loss: str = field(
        default="kl",
        metadata={
            "help": "What replay minimizes: lm (next-token loss on the general code) | kl (the "
            "divergence of the adapter's next-token distribution from the base's on it, which "
            "holds the general-code perplexity to the base's rather than moving it either way)."
        },
    )
    replay_batch_size: int = field(
        default=8, metadata={"help": "General-code sequences per step when replay is on."}
    )
    replay_bytes: int = field(
        default=2_000_000, metadata={"help": "Size of the general-code replay sample in bytes."}
    )
    replay_dirs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Where replay code comes from (*.py, test/tests and site-packages "
            "directories skipped); default: the base model's own pretraining sources from its "
            "gristmill_model.json, else this interpreter's standard library. Never the gate's "
            "general-code set (the standard library's test package)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed for LoRA init, data order and dropout."})
    checkpoint_every_steps: int = field(
        default=50, metadata={"help": "Save a checkpoint every N steps (the last two are kept)."}
    )
    resume: bool = field(
        default=False,
        metadata={"help": "Continue from the newest checkpoint in output_dir/checkpoints."},
    )
    device: str = field(
        default="cpu", metadata={"help": "cpu | cuda | auto (cuda when available)."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision; default: on when a CUDA GPU supports it."},
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads; default: the cores available."}
    )

    def __post_init__(self) -> None:
        self.snapshot_dir = Path(self.snapshot_dir)
        self.base_model_dir = Path(self.base_model_dir)
        self.output_dir = Path(self.output_dir)
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        self.target_modules = list(self.target_modules)
        if isinstance(self.replay_dirs, (str, Path)):
            self.replay_dirs = [self.replay_dirs]
        self.replay_dirs = [str(d) for d in self.replay_dirs]
        problems = [
            msg
            for bad, msg in (
                (self.method not in METHODS, f"method must be one of {', '.join(METHODS)}"),
                (self.lora_r < 1, "lora_r must be >= 1"),
                (self.lora_alpha < 1, "lora_alpha must be >= 1"),
                (not 0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)"),
                (not self.target_modules, "target_modules must name at least one module"),
                (self.learning_rate <= 0, "learning_rate must be > 0"),
                (self.num_epochs <= 0, "num_epochs must be > 0"),
                (self.max_steps is not None and self.max_steps < 1, "max_steps must be >= 1"),
                (self.min_steps < 0, "min_steps must be >= 0"),
                (self.batch_size < 1, "batch_size must be >= 1"),
                (self.beta <= 0, "beta must be > 0"),
                (self.sft_weight < 0, "sft_weight must be >= 0"),
                (self.max_length < 8, "max_length must be >= 8"),
                (self.replay_weight < 0, "replay_weight must be >= 0"),
                (self.replay_batch_size < 1, "replay_batch_size must be >= 1"),
                (self.replay_loss not in ("lm", "kl"), "replay_loss must be lm or kl"),
                (self.replay_bytes < 1000, "replay_bytes must be >= 1000"),
                (self.checkpoint_every_steps < 1, "checkpoint_every_steps must be >= 1"),
                (self.device not in ("cpu", "cuda", "auto"), "device must be cpu, cuda or auto"),
                (self.num_threads is not None and self.num_threads < 1, "num_threads must be >= 1"),
            )
            if bad
        ]
        if problems:
            raise InvalidConfigError("; ".join(problems))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from YAML/flags; an unknown or mistyped key is refused by name."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidConfigError(
                f"unknown training config field(s): {', '.join(unknown)} "
                f"(known: {', '.join(known)})"
            )
        for name, value in values.items():
            _check_type(name, known[name].type, value)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


_TYPE_CHECKS: dict[str, tuple[type, ...]] = {
    "Path": (str, Path),
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list[str]": (list, str),
}


def _check_type(name: str, annotation: Any, value: Any) -> None:
    text = str(annotation)
    optional = "None" in text
    if value is None:
        if optional:
            return
        raise InvalidConfigError(f"{name}: must not be empty")
    base = text.replace(" | None", "").strip()
    allowed = _TYPE_CHECKS.get(base)
    if allowed is None:
        return
    if isinstance(value, bool) and base in ("int", "float"):
        allowed = ()
    if not isinstance(value, allowed):
        raise InvalidConfigError(f"{name}: expected {base}, got {value!r}")


# Fields that do not change what is trained: a resumed run may differ in them.
_RUNTIME_ONLY = frozenset({"output_dir", "resume", "num_threads", "checkpoint_every_steps"})


@dataclass(frozen=True)
class TrainResult:
    """What a run produced."""

    output_dir: Path
    adapter_dir: Path
    method: str
    steps: int
    adapter_hash: str
    base_model_hash: str
    snapshot_id: str
    snapshot_card_hash: str
    metrics: dict[str, Any]

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_NAME


# ---------------------------------------------------------------- hashes and snapshots


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def directory_hash(path: Path | str, *, exclude: frozenset[str] = frozenset()) -> str:
    """Content hash of a directory's regular top-level files (names and bytes; dotfiles skipped)."""
    root = Path(path)
    digest = hashlib.sha256()
    for item in sorted(root.iterdir()):
        if item.name.startswith(".") or item.name in exclude or not item.is_file():
            continue
        digest.update(f"{item.name}:{_sha256_file(item)}\n".encode())
    return digest.hexdigest()


def base_model_hash(model_dir: Path | str) -> str:
    """Content hash of a model directory: weights, config and tokenizer files."""
    root = Path(model_dir)
    if not root.is_dir():
        raise InvalidConfigError(f"base_model_dir: {root} is not a directory")
    return directory_hash(root, exclude=frozenset({"gristmill_model.json"}))


def _read_card(snapshot_dir: Path) -> tuple[dict[str, Any], str]:
    path = snapshot_dir / _CARD_NAME
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidConfigError(
            f"snapshot_dir: {snapshot_dir} is not a dataset snapshot (no readable card.json)"
        ) from exc
    try:
        card = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidConfigError(f"snapshot_dir: {path} is not JSON") from exc
    if not isinstance(card, dict):
        raise InvalidConfigError(f"snapshot_dir: {path} does not hold an object")
    return card, hashlib.sha256(raw).hexdigest()


def load_snapshot_rows(snapshot_dir: Path | str, set_name: str, split: str) -> list[dict[str, Any]]:
    """Rows of one set and split of a snapshot ([] when the file is absent)."""
    import pyarrow.parquet as pq

    path = Path(snapshot_dir) / set_name / f"{split}.parquet"
    if not path.is_file():
        return []
    return pq.read_table(path).to_pylist()


def resolve_method(method: str, train_rows: dict[str, int]) -> str:
    """The method a run uses. ``auto`` picks sft when the snapshot has kept completions (its
    SFT set, or pairs, whose chosen texts are kept), else kto on labels.

    Why SFT first: on the bootstrap base the rejected texts are the weak model's own output,
    far from anything a developer would keep, so preference losses (KTO, DPO) separate kept
    from rejected within a few steps and stop moving the model. Measured with the loop
    bench's feedback (138 kept completions, 800-step base, 150 steps, lr 1e-3): KTO left
    held-out acceptance at 0%, SFT with kl replay raised it to 77%, DPO+SFT to 81% at about
    three times the time per step. Pick kto or dpo_sft explicitly when the rejected texts are
    close misses (a stronger base model)."""
    if method != "auto":
        return method
    if train_rows.get("sft", 0) > 0 or train_rows.get("pairs", 0) > 0:
        return "sft"
    if train_rows.get("labels", 0) > 0:
        return "kto"
    return "sft"


def _training_rows(snapshot_dir: Path, method: str) -> list[dict[str, Any]]:
    pairs = load_snapshot_rows(snapshot_dir, "pairs", "train")
    if method == "dpo_sft":
        return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pairs]
    if method == "kto":
        rows = [
            {"prompt": r["prompt"], "completion": r["completion"], "label": bool(r["label"])}
            for r in load_snapshot_rows(snapshot_dir, "labels", "train")
        ]
        for r in pairs:
            rows.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
            rows.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
        # A pair's two halves are usually labelled rows of the snapshot already (the same
        # feedback): count each (prompt, completion, label) once, in first-seen order.
        seen: set[tuple[str, str, bool]] = set()
        unique = []
        for r in rows:
            key = (r["prompt"], r["completion"], r["label"])
            if key not in seen:
                seen.add(key)
                unique.append(r)
        return unique
    rows = [
        {"prompt": r["prompt"], "completion": r["completion"]}
        for r in load_snapshot_rows(snapshot_dir, "sft", "train")
    ]
    if not rows:  # a snapshot without an SFT set still has kept texts
        rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pairs] + [
            {"prompt": r["prompt"], "completion": r["completion"]}
            for r in load_snapshot_rows(snapshot_dir, "labels", "train")
            if r["label"]
        ]
    return rows


def _dataset(rows: list[dict[str, Any]], *, shuffle_seed: int | None) -> Dataset:
    from datasets import Dataset

    data = Dataset.from_list(rows)
    # KTO samples sequentially and pairs neighbours for its KL estimate: shuffle here, seeded.
    return data.shuffle(seed=shuffle_seed) if shuffle_seed is not None else data


# ---------------------------------------------------------------- replay of general code

_REPLAY_SKIP_DIRS = frozenset({"test", "tests", "site-packages", "dist-packages", "__pycache__"})


def replay_sources(config: TrainConfig) -> list[Path]:
    """Where replay code comes from: the config's dirs, else the base's pretraining sources
    (its bootstrap manifest), else the standard library."""
    import sysconfig

    if config.replay_dirs:
        return [Path(d) for d in config.replay_dirs]
    try:
        manifest = json.loads(
            (config.base_model_dir / "gristmill_model.json").read_text(encoding="utf-8")
        )
        dirs = manifest["config"]["source_dirs"]
        if isinstance(dirs, list) and dirs:
            return [Path(d) for d in dirs]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return [Path(sysconfig.get_paths()["stdlib"])]


def replay_texts(dirs: list[Path], max_bytes: int) -> tuple[list[str], dict[str, Any]]:
    """A deterministic sample of *.py files (ordered by the hash of their relative path),
    skipping test, tests and installed-package directories."""
    found: list[tuple[str, Path]] = []
    for index, root in enumerate(dirs):
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _REPLAY_SKIP_DIRS)
            for name in sorted(filenames):
                if name.endswith(".py"):
                    path = Path(dirpath) / name
                    rel = f"{index}/{path.relative_to(root).as_posix()}"
                    found.append((hashlib.sha256(rel.encode()).hexdigest(), path))
    from trainer.evaluate import read_code_sample

    texts, info = read_code_sample(found, max_bytes, dirs)
    if not texts:
        names = ", ".join(str(d) for d in dirs)
        raise InvalidConfigError(f"replay_dirs: no readable *.py files under {names}")
    return texts, info


def _replay_chunks(tokenizer: Any, texts: list[str], seq_len: int) -> Any:
    import torch

    eos = tokenizer.eos_token or ""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text + eos)["input_ids"])
    n = len(ids) // seq_len
    if n == 0:
        raise InvalidConfigError(f"replay_bytes: sample too small for {seq_len}-token sequences")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _replay_kl(model: Any, batch: Any, peft_model: Any = None) -> Any:
    """Mean per-token KL(base || adapter) on ``batch``; the base is the model with its adapter
    disabled (no gradient). ``peft_model`` is the PeftModel when ``model`` wraps it (DDP)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), (peft_model or model).disable_adapter():
        base = F.log_softmax(model(input_ids=batch).logits.float(), dim=-1)
    tuned = F.log_softmax(model(input_ids=batch).logits.float(), dim=-1)
    tokens = batch.shape[0] * batch.shape[1]
    return F.kl_div(tuned, base, log_target=True, reduction="sum") / tokens


def _with_replay(
    trainer_cls: type, chunks: Any, weight: float, batch_size: int, seed: int, kind: str = "lm"
):
    """The trainer class plus ``weight`` x a replay loss on a batch of general code in every
    training step: the language-modelling loss (``lm``) or the KL divergence from the base
    (``kl``). The batch is drawn from the step number and the seed, so a resumed run draws
    what an uninterrupted one would."""
    import torch

    class ReplayTrainer(trainer_cls):  # type: ignore[misc, valid-type]
        replay_losses: list[float]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
            if not model.training:
                return result
            loss = result[0] if return_outputs else result
            generator = torch.Generator().manual_seed(seed * 1_000_003 + self.state.global_step)
            rows = torch.randint(0, chunks.shape[0], (batch_size,), generator=generator)
            batch = chunks[rows].to(loss.device)
            if kind == "kl":
                replay = _replay_kl(model, batch, self.accelerator.unwrap_model(model))
            else:
                replay = model(input_ids=batch, labels=batch).loss
            self.replay_losses.append(float(replay.detach()))
            loss = loss + weight * replay
            return (loss, result[1]) if return_outputs else loss

    ReplayTrainer.__name__ = f"Replay{trainer_cls.__name__}"
    ReplayTrainer.replay_losses = []
    return ReplayTrainer


# ---------------------------------------------------------------- the run


def _fingerprint(config: TrainConfig, snapshot_card_hash: str, base_hash: str) -> dict[str, Any]:
    data = {k: v for k, v in config.to_json().items() if k not in _RUNTIME_ONLY}
    data["snapshot_dir"] = str(Path(config.snapshot_dir).resolve())
    data["base_model_dir"] = str(Path(config.base_model_dir).resolve())
    data["snapshot_card_hash"] = snapshot_card_hash
    data["base_model_hash"] = base_hash
    return data


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ModelWriteError(f"cannot write {path}: {exc}") from exc


def _prepare_output(config: TrainConfig, fingerprint: dict[str, Any]) -> bool:
    """Create or check the run directory; True when there is a checkpoint to resume from."""
    out = config.output_dir
    config_path = out / CONFIG_NAME
    checkpoints = out / CHECKPOINT_DIRNAME
    has_checkpoint = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    if config_path.exists() or has_checkpoint or (out / ADAPTER_DIRNAME).exists():
        if not config.resume:
            raise RunExistsError(
                f"output_dir: {out} holds an earlier run; pass resume to continue it "
                "or choose another directory"
            )
        try:
            recorded = json.loads(config_path.read_text(encoding="utf-8"))["fingerprint"]
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise CheckpointMismatchError(f"cannot read {config_path}: {exc}") from exc
        changed = sorted(
            k for k in fingerprint.keys() | recorded.keys() if fingerprint.get(k) != recorded.get(k)
        )
        if changed:
            raise CheckpointMismatchError(
                f"output_dir: {out} was trained with a different config (differs in: "
                f"{', '.join(changed)}); delete it or choose another directory"
            )
        shutil.rmtree(out / ADAPTER_DIRNAME, ignore_errors=True)
        return has_checkpoint
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelWriteError(f"cannot create {out}: {exc}") from exc
    _write_json_atomic(config_path, {"config": config.to_json(), "fingerprint": fingerprint})
    return False


def _use_bf16(config: TrainConfig) -> bool:
    import torch

    if config.bf16 is not None:
        if config.bf16 and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
            raise InvalidConfigError("bf16: needs a CUDA GPU with bf16 support")
        return config.bf16
    on_gpu = config.device in ("cuda", "auto") and torch.cuda.is_available()
    return bool(on_gpu and torch.cuda.is_bf16_supported())


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def planned_steps(config: TrainConfig, rows: int) -> int | None:
    """The step budget handed to the trainer: max_steps, else min_steps when the epochs would
    give fewer steps (None: let the epochs decide)."""
    if config.max_steps is not None:
        return config.max_steps
    per_epoch = math.ceil(rows / config.batch_size)
    by_epochs = math.ceil(per_epoch * config.num_epochs)
    return config.min_steps if by_epochs < config.min_steps else None


def _trainer_args(config: TrainConfig, method: str, max_length: int, bf16: bool, rows: int) -> Any:
    steps = planned_steps(config, rows)
    common: dict[str, Any] = {
        "output_dir": str(config.output_dir / CHECKPOINT_DIRNAME),
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.num_epochs,
        "max_steps": steps if steps is not None else -1,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": 1,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "seed": config.seed,
        "data_seed": config.seed,
        "save_strategy": "steps",
        "save_steps": config.checkpoint_every_steps,
        "save_total_limit": 2,
        "logging_steps": 1,
        "report_to": "none",
        "bf16": bf16,
        "fp16": False,
        "use_cpu": config.device == "cpu",
        "activation_checkpointing": False,  # slow on CPU (trap 2); LoRA on small models fits
        "dataloader_num_workers": 0,
        "disable_tqdm": False,
        "max_length": max_length,
    }
    if method == "kto":
        from trl import KTOConfig

        return KTOConfig(**common, beta=config.beta)
    if method == "dpo_sft":
        from trl import DPOConfig

        return DPOConfig(
            **common,
            beta=config.beta,
            loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, config.sft_weight],
        )
    from trl import SFTConfig

    return SFTConfig(**common, completion_only_loss=True)


def _trainer_class(method: str) -> type:
    if method == "kto":
        from trl import KTOTrainer

        return KTOTrainer
    if method == "dpo_sft":
        from trl import DPOTrainer

        return DPOTrainer
    from trl import SFTTrainer

    return SFTTrainer


def train(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train a LoRA adapter on the snapshot's train split; see the module docstring."""
    card, card_hash = _read_card(config.snapshot_dir)
    base_hash = base_model_hash(config.base_model_dir)
    train_counts = {
        name: len(load_snapshot_rows(config.snapshot_dir, name, "train"))
        for name in ("pairs", "labels", "sft")
    }
    method = resolve_method(config.method, train_counts)
    rows = _training_rows(config.snapshot_dir, method)
    if not rows:
        raise EmptyTrainingSetError(
            f"snapshot {card.get('id', config.snapshot_dir)} has no training rows for "
            f"method {method} (train rows: {train_counts})"
        )
    if method == "kto":
        if config.batch_size < 2:
            raise InvalidConfigError("batch_size: KTO needs at least 2 (its KL estimate)")
        labels = {bool(r["label"]) for r in rows}
        if labels != {True, False}:
            raise EmptyTrainingSetError("kto: the training rows need both kept and rejected texts")
    fingerprint = _fingerprint(config, card_hash, base_hash)
    resume_from_checkpoint = _prepare_output(config, fingerprint)

    import torch

    with _threads(config.num_threads), torch.random.fork_rng(devices=[]):
        return _run(
            config,
            card,
            card_hash,
            base_hash,
            method,
            rows,
            resume_from_checkpoint,
            train_counts,
            progress=progress,
        )


def _run(
    config: TrainConfig,
    card: dict[str, Any],
    card_hash: str,
    base_hash: str,
    method: str,
    rows: list[dict[str, Any]],
    resume_from_checkpoint: bool,
    train_counts: dict[str, int],
    *,
    progress: bool,
) -> TrainResult:
    import transformers

    transformers.set_seed(config.seed)
    with _quiet_libraries(progress):
        return _run_quietly(
            config,
            card,
            card_hash,
            base_hash,
            method,
            rows,
            resume_from_checkpoint,
            train_counts,
            progress=progress,
        )


@contextmanager
def _quiet_libraries(progress: bool) -> Iterator[None]:
    """Third-party deprecation chatter off; library progress bars only when asked for."""
    import warnings

    import datasets
    import transformers

    was_datasets_bars = datasets.is_progress_bar_enabled()
    was_hf_bars = transformers.utils.logging.is_progress_bar_enabled()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    if not progress:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # peft reads the deprecated is_gradient_checkpointing alias of transformers 5.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if was_datasets_bars:
            datasets.enable_progress_bars()
        if was_hf_bars:
            transformers.utils.logging.enable_progress_bar()


def _run_quietly(
    config: TrainConfig,
    card: dict[str, Any],
    card_hash: str,
    base_hash: str,
    method: str,
    rows: list[dict[str, Any]],
    resume_from_checkpoint: bool,
    train_counts: dict[str, int],
    *,
    progress: bool,
) -> TrainResult:
    import torch
    import transformers
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bf16 = _use_bf16(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.base_model_dir)
        model = AutoModelForCausalLM.from_pretrained(config.base_model_dir, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise InvalidConfigError(
            f"base_model_dir: cannot load a causal LM from {config.base_model_dir}: {exc}"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(model.config, "max_position_embeddings", None) or config.max_length
    max_length = min(config.max_length, int(context))
    args = _trainer_args(config, method, max_length, bf16, len(rows))
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=(
            "all-linear" if config.target_modules == ["all-linear"] else config.target_modules
        ),
        task_type="CAUSAL_LM",
    )
    dataset = _dataset(rows, shuffle_seed=config.seed if method == "kto" else None)
    trainer_cls = _trainer_class(method)
    replay_info: dict[str, Any] | None = None
    if config.replay_weight > 0:
        texts, replay_info = replay_texts(replay_sources(config), config.replay_bytes)
        chunks = _replay_chunks(tokenizer, texts, max_length)
        replay_info = {**replay_info, "sequences": int(chunks.shape[0]), "seq_len": max_length}
        trainer_cls = _with_replay(
            trainer_cls,
            chunks,
            config.replay_weight,
            config.replay_batch_size,
            config.seed,
            config.replay_loss,
        )
    try:
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
        )
    except ValueError as exc:
        raise InvalidConfigError(f"{method}: {exc}") from exc
    if not progress:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
    start_step = _latest_checkpoint_step(config.output_dir / CHECKPOINT_DIRNAME)
    start_step = start_step if resume_from_checkpoint else 0
    started = time.monotonic()
    try:
        output = trainer.train(resume_from_checkpoint=True if resume_from_checkpoint else None)
    except (RuntimeError, ValueError) as exc:
        raise TrainingFailedError(f"{method} training failed: {exc}") from exc
    wall_s = time.monotonic() - started
    steps = int(trainer.state.global_step)

    adapter_dir = config.output_dir / ADAPTER_DIRNAME
    staging = config.output_dir / f".{ADAPTER_DIRNAME}.partial"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        trainer.model.save_pretrained(staging)
        os.replace(staging, adapter_dir)
    except OSError as exc:
        raise ModelWriteError(f"cannot save the adapter to {adapter_dir}: {exc}") from exc
    adapter_hash = directory_hash(adapter_dir)

    history = [
        {k: v for k, v in entry.items() if isinstance(v, (int, float))}
        for entry in trainer.state.log_history
    ]
    losses = [e["loss"] for e in history if "loss" in e]
    session_steps = max(steps - start_step, 1)
    metrics = {
        "method": method,
        "steps": steps,
        "epochs": float(trainer.state.epoch or 0.0),
        "train_rows": len(rows),
        "snapshot_train_rows": train_counts,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "train_runtime_s": round(float(output.metrics.get("train_runtime", wall_s)), 3),
        "seconds_per_step": round(wall_s / session_steps, 4),
        "resumed": resume_from_checkpoint,
        "max_length": max_length,
        "bf16": bf16,
        "replay": replay_info,
        "replay_loss": _mean_tail(getattr(trainer, "replay_losses", [])),
        "log_history": history,
        "adapter_hash": adapter_hash,
        "base_model_hash": base_hash,
        "snapshot_id": card.get("id"),
        "snapshot_card_hash": card_hash,
        "policy_versions": card.get("policy_versions", []),
        "rules_version": card.get("rules_version"),
        "config": config.to_json(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": _version("trl"),
            "peft": _version("peft"),
        },
    }
    _write_json_atomic(config.output_dir / METRICS_NAME, metrics)
    log.info("%s: %d steps in %.1f s, adapter %s", method, steps, wall_s, adapter_hash[:12])
    return TrainResult(
        output_dir=config.output_dir,
        adapter_dir=adapter_dir,
        method=method,
        steps=steps,
        adapter_hash=adapter_hash,
        base_model_hash=base_hash,
        snapshot_id=str(card.get("id", config.snapshot_dir.name)),
        snapshot_card_hash=card_hash,
        metrics=metrics,
    )


def _mean_tail(values: list[float], n: int = 10) -> float | None:
    tail = values[-n:]
    return round(sum(tail) / len(tail), 5) if tail else None


def _latest_checkpoint_step(checkpoints: Path) -> int:
    steps = [
        int(p.name.rsplit("-", 1)[1])
        for p in checkpoints.glob("checkpoint-*")
        if p.name.rsplit("-", 1)[1].isdigit()
    ]
    return max(steps, default=0)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
