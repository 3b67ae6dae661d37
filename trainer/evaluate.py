"""The evaluation gate: may a trained adapter go to canary?

On the snapshot's held-out (eval) split and a fixed general-code set, the candidate adapter,
the active model (an adapter on the same base, or the base itself) and the base are scored:

1. preference: implicit rewards ``beta * (logp_model(y|x) - logp_base(y|x))`` of the kept and
   the rejected completion of each eval pair; accuracy is the share of pairs whose kept text
   gets the higher reward (ties count half, so the base scores 0.5) and the margin is the mean
   reward difference (the base scores 0). Unpaired labels count when there are no pairs: a kept
   text should get a positive reward, a rejected one a negative;
2. generation: greedy completions of the eval prompts, scored by edit similarity to what
   developers kept minus edit similarity to what they rejected;
3. general code: perplexity on a deterministic sample of the interpreter's ``test`` package,
   which bootstrap pretraining skips (it excludes directories named test/tests).

The candidate passes when it beats the active model on 1 (accuracy and margin) and 2, and its
perplexity is within ``perplexity_margin`` of the base's (the base, so drift cannot
accumulate from version to version).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import EvaluationError, InvalidConfigError
from trainer.train import load_snapshot_rows

if TYPE_CHECKING:
    import torch

__all__ = [
    "GateConfig",
    "GateResult",
    "ModelScores",
    "evaluate_candidate",
    "general_code_texts",
    "preference_scores",
]


def _default_general_code_dirs() -> list[Path]:
    return [Path(sysconfig.get_paths()["stdlib"]) / "test"]


@dataclass
class GateConfig:
    """How the gate measures and decides."""

    perplexity_margin: float = field(
        default=0.03,
        metadata={
            "help": "Largest allowed relative rise of general-code perplexity over the base."
        },
    )
    beta: float = field(default=0.1, metadata={"help": "Scale of the implicit reward."})
    max_pairs: int = field(
        default=256, metadata={"help": "Eval pairs (or labelled rows) scored, in snapshot order."}
    )
    max_generations: int = field(
        default=32, metadata={"help": "Eval prompts completed greedily and compared."}
    )
    max_new_tokens: int = field(default=48, metadata={"help": "Cap on each generation."})
    max_length: int = field(
        default=512, metadata={"help": "Tokens per scored sequence; capped at the model context."}
    )
    general_code_dirs: list[Path] = field(
        default_factory=_default_general_code_dirs,
        metadata={
            "help": "Where the general-code sample comes from; default: the standard "
            "library's test package (not used in bootstrap pretraining)."
        },
    )
    general_code_bytes: int = field(
        default=100_000, metadata={"help": "Size of the general-code sample in bytes."}
    )
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass."})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads; default: the cores available."}
    )

    def __post_init__(self) -> None:
        self.general_code_dirs = [Path(d) for d in self.general_code_dirs]
        problems = [
            msg
            for bad, msg in (
                (self.perplexity_margin < 0, "perplexity_margin must be >= 0"),
                (self.beta <= 0, "beta must be > 0"),
                (self.max_pairs < 1, "max_pairs must be >= 1"),
                (self.max_generations < 0, "max_generations must be >= 0"),
                (self.max_new_tokens < 1, "max_new_tokens must be >= 1"),
                (self.max_length < 8, "max_length must be >= 8"),
                (self.general_code_bytes < 1000, "general_code_bytes must be >= 1000"),
                (self.batch_size < 1, "batch_size must be >= 1"),
            )
            if bad
        ]
        if problems:
            raise InvalidConfigError("; ".join(problems))


@dataclass(frozen=True)
class ModelScores:
    """One model's numbers on the gate's data."""

    preference_accuracy: float | None
    reward_margin: float | None
    preference_rows: int
    kept_similarity: float | None
    rejected_similarity: float | None
    generation_score: float | None
    generations: int
    perplexity: float


@dataclass(frozen=True)
class GateResult:
    """The numbers and the decision; stored with the model version."""

    passed: bool
    checks: dict[str, bool]
    reasons: list[str]
    candidate: ModelScores
    active: ModelScores
    base: ModelScores
    active_version: str | None
    perplexity_margin: float
    perplexity_limit: float
    general_code: dict[str, Any]
    snapshot_id: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GateResult:
        values = dict(data)
        for name in ("candidate", "active", "base"):
            values[name] = ModelScores(**values[name])
        return cls(**values)


# ---------------------------------------------------------------- data


def general_code_texts(dirs: list[Path], max_bytes: int) -> tuple[list[str], dict[str, Any]]:
    """A deterministic sample of Python files: ordered by the hash of their relative path."""
    found: list[tuple[str, Path]] = []
    for root in dirs:
        if not root.is_dir():
            continue
        for path in root.rglob("*.py"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            found.append((hashlib.sha256(rel.encode()).hexdigest(), path))
    texts, info = read_code_sample(found, max_bytes, dirs)
    if not texts:
        names = ", ".join(str(d) for d in dirs)
        raise EvaluationError(f"general_code_dirs: no readable *.py files under {names}")
    return texts, info


def read_code_sample(
    found: list[tuple[str, Path]], max_bytes: int, dirs: list[Path]
) -> tuple[list[str], dict[str, Any]]:
    """Read (sort key, path) files in key order until max_bytes: the texts (unreadable and
    blank files skipped, the last one cut) and what was read (dirs, files, bytes, sha256)."""
    texts: list[str] = []
    digest = hashlib.sha256()
    total = 0
    for _, path in sorted(found):
        if total >= max_bytes:
            break
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text.strip():
            continue
        text = text[: max_bytes - total]
        texts.append(text)
        total += len(text.encode())
        digest.update(text.encode() + b"\0")
    info = {"dirs": [str(d) for d in dirs], "files": len(texts), "bytes": total}
    info["sha256"] = digest.hexdigest()
    return texts, info


# ---------------------------------------------------------------- scoring


def _completion_ids(tokenizer: Any, prompt: str, completion: str, max_length: int) -> tuple:
    """Token ids of prompt+completion+EOS and where the completion starts (as TRL splits it)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + completion + (tokenizer.eos_token or ""))["input_ids"]
    start = 0
    for a, b in zip(prompt_ids, full, strict=False):
        if a != b:
            break
        start += 1
    if len(full) > max_length:  # keep the end: the completion matters, the prompt's start less
        cut = len(full) - max_length
        full = full[cut:]
        start = max(start - cut, 0)
    return full, max(start, 1)


def _completion_logps(
    model: Any, tokenizer: Any, items: list[tuple[str, str]], max_length: int, batch_size: int
) -> list[float]:
    import torch

    encoded = [_completion_ids(tokenizer, p, c, max_length) for p, c in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i : i + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            score = torch.zeros((len(chunk), width), dtype=torch.bool)
            for row, (seq, start) in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
                score[row, start : len(seq)] = True
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logps = torch.log_softmax(logits[:, :-1], dim=-1)
            token_logps = logps.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            chosen = score[:, 1:].to(device)
            out.extend((token_logps * chosen).sum(dim=1).tolist())
    return out


def _perplexity(model: Any, chunks: torch.Tensor, batch_size: int) -> float:
    import torch

    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, chunks.shape[0], batch_size):
            batch = chunks[i : i + batch_size].to(device)
            loss = model(input_ids=batch, labels=batch).loss
            total += float(loss) * batch.shape[0]
            count += batch.shape[0]
    return math.exp(total / count)


def _general_chunks(tokenizer: Any, texts: list[str], seq_len: int) -> torch.Tensor:
    import torch

    eos = tokenizer.eos_token or ""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text + eos)["input_ids"])
    n = len(ids) // seq_len
    if n == 0:
        raise EvaluationError(f"general_code_bytes: sample too small for {seq_len}-token chunks")
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@dataclass(frozen=True)
class _EvalData:
    pairs: list[dict[str, str]]
    unpaired: list[dict[str, Any]]
    generations: list[tuple[str, str | None, str | None]]  # prompt, kept, rejected


def _eval_data(snapshot_dir: Path, config: GateConfig) -> _EvalData:
    pairs = load_snapshot_rows(snapshot_dir, "pairs", "eval")[: config.max_pairs]
    unpaired = [] if pairs else load_snapshot_rows(snapshot_dir, "labels", "eval")
    unpaired = unpaired[: config.max_pairs]
    generations: list[tuple[str, str | None, str | None]] = [
        (p["prompt"], p["chosen"], p["rejected"]) for p in pairs
    ]
    generations += [
        (
            r["prompt"],
            r["completion"] if r["label"] else None,
            None if r["label"] else r["completion"],
        )
        for r in unpaired
    ]
    return _EvalData(pairs, unpaired, generations[: config.max_generations])


def preference_scores(
    rewards_kept: list[float], rewards_rejected: list[float], unpaired: list[tuple[float, bool]]
) -> tuple[float | None, float | None, int]:
    """(accuracy, margin, rows) from implicit rewards; ties count half."""
    if rewards_kept:
        wins = [
            1.0 if k - r > 1e-9 else 0.0 if r - k > 1e-9 else 0.5
            for k, r in zip(rewards_kept, rewards_rejected, strict=True)
        ]
        margin = sum(k - r for k, r in zip(rewards_kept, rewards_rejected, strict=True))
        return sum(wins) / len(wins), margin / len(wins), len(wins)
    if unpaired:
        wins = [0.5 if abs(r) <= 1e-9 else float((r > 0) == label) for r, label in unpaired]
        good = [r for r, label in unpaired if label]
        bad = [r for r, label in unpaired if not label]
        margin = (sum(good) / len(good) if good else 0.0) - (sum(bad) / len(bad) if bad else 0.0)
        return sum(wins) / len(wins), margin, len(wins)
    return None, None, 0


def _first_lines(text: str, like: str) -> str:
    lines = like.strip("\n").count("\n") + 1
    stripped = text.lstrip("\n")
    return "\n".join(stripped.split("\n")[:lines])


def _generate(model: Any, tokenizer: Any, prompt: str, reference: str, cfg: GateConfig, ctx: int):
    import torch

    budget = min(cfg.max_new_tokens, len(tokenizer(reference)["input_ids"]) + 8)
    ids = tokenizer(prompt)["input_ids"][-max(ctx - budget, 1) :]
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids], device=device),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


def _score_model(
    model: Any,
    tokenizer: Any,
    data: _EvalData,
    base_logps: dict[str, list[float]],
    chunks: torch.Tensor,
    cfg: GateConfig,
    ctx: int,
    *,
    is_base: bool,
) -> ModelScores:
    from feedback_store import edit_similarity

    max_len = min(cfg.max_length, ctx)
    kept_r: list[float] = []
    rejected_r: list[float] = []
    unpaired: list[tuple[float, bool]] = []
    if data.pairs:
        kept = _completion_logps(
            model,
            tokenizer,
            [(p["prompt"], p["chosen"]) for p in data.pairs],
            max_len,
            cfg.batch_size,
        )
        rejected = _completion_logps(
            model,
            tokenizer,
            [(p["prompt"], p["rejected"]) for p in data.pairs],
            max_len,
            cfg.batch_size,
        )
        if is_base:
            base_logps["kept"], base_logps["rejected"] = kept, rejected
        kept_r = [cfg.beta * (a - b) for a, b in zip(kept, base_logps["kept"], strict=True)]
        rejected_r = [
            cfg.beta * (a - b) for a, b in zip(rejected, base_logps["rejected"], strict=True)
        ]
    elif data.unpaired:
        logps = _completion_logps(
            model,
            tokenizer,
            [(r["prompt"], r["completion"]) for r in data.unpaired],
            max_len,
            cfg.batch_size,
        )
        if is_base:
            base_logps["unpaired"] = logps
        unpaired = [
            (cfg.beta * (a - b), bool(r["label"]))
            for a, b, r in zip(logps, base_logps["unpaired"], data.unpaired, strict=True)
        ]
    accuracy, margin, rows = preference_scores(kept_r, rejected_r, unpaired)

    kept_sims: list[float] = []
    rejected_sims: list[float] = []
    for prompt, kept_text, rejected_text in data.generations:
        reference = kept_text if kept_text is not None else rejected_text or ""
        generated = _generate(model, tokenizer, prompt, reference, cfg, ctx)
        if kept_text is not None:
            kept_sims.append(edit_similarity(_first_lines(generated, kept_text), kept_text))
        if rejected_text is not None:
            rejected_sims.append(
                edit_similarity(_first_lines(generated, rejected_text), rejected_text)
            )
    kept_mean = sum(kept_sims) / len(kept_sims) if kept_sims else None
    rejected_mean = sum(rejected_sims) / len(rejected_sims) if rejected_sims else None
    generation_score = (
        None
        if kept_mean is None and rejected_mean is None
        else (kept_mean or 0.0) - (rejected_mean or 0.0)
    )
    return ModelScores(
        preference_accuracy=accuracy,
        reward_margin=margin,
        preference_rows=rows,
        kept_similarity=kept_mean,
        rejected_similarity=rejected_mean,
        generation_score=generation_score,
        generations=len(data.generations),
        perplexity=_perplexity(model, chunks, cfg.batch_size),
    )


def _beats(candidate: float | None, active: float | None) -> bool:
    return candidate is not None and active is not None and candidate > active + 1e-9


def evaluate_candidate(
    candidate_adapter: Path | str,
    base_model_dir: Path | str,
    snapshot_dir: Path | str,
    *,
    active_adapter: Path | str | None = None,
    active_version: str | None = None,
    config: GateConfig | None = None,
) -> GateResult:
    """Score candidate, active (default: the base) and base; decide whether to promote."""
    cfg = config or GateConfig()
    snapshot_dir = Path(snapshot_dir)
    for name, path in (
        ("candidate_adapter", candidate_adapter),
        ("active_adapter", active_adapter),
    ):
        if path is not None and not (Path(path) / "adapter_config.json").is_file():
            raise EvaluationError(f"{name}: {path} is not a PEFT adapter directory")
    data = _eval_data(snapshot_dir, cfg)
    texts, general_info = general_code_texts(cfg.general_code_dirs, cfg.general_code_bytes)

    import torch

    previous_threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _evaluate(
            Path(candidate_adapter),
            Path(base_model_dir),
            snapshot_dir,
            active_adapter,
            active_version,
            cfg,
            data,
            texts,
            general_info,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _evaluate(
    candidate_adapter: Path,
    base_model_dir: Path,
    snapshot_dir: Path,
    active_adapter: Path | str | None,
    active_version: str | None,
    cfg: GateConfig,
    data: _EvalData,
    texts: list[str],
    general_info: dict[str, Any],
) -> GateResult:
    import warnings

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.train import _quiet_libraries

    with _quiet_libraries(progress=False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
        try:
            tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
            base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
            model = PeftModel.from_pretrained(base, candidate_adapter, adapter_name="candidate")
            if active_adapter is not None:
                model.load_adapter(str(active_adapter), adapter_name="active")
        except (OSError, ValueError, RuntimeError) as exc:
            raise EvaluationError(f"cannot load the models to evaluate: {exc}") from exc
        model.eval()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        ctx = int(getattr(base.config, "max_position_embeddings", None) or cfg.max_length)
        chunks = _general_chunks(tokenizer, texts, min(ctx, cfg.max_length))
        general_info = {**general_info, "chunks": int(chunks.shape[0]), "seq_len": chunks.shape[1]}
        general_info["source"] = "stdlib test package (not in bootstrap pretraining)"
        base_logps: dict[str, list[float]] = {}
        with model.disable_adapter():
            base_scores = _score_model(
                model, tokenizer, data, base_logps, chunks, cfg, ctx, is_base=True
            )
        model.set_adapter("candidate")
        candidate = _score_model(
            model, tokenizer, data, base_logps, chunks, cfg, ctx, is_base=False
        )
        if active_adapter is not None:
            model.set_adapter("active")
            active = _score_model(
                model, tokenizer, data, base_logps, chunks, cfg, ctx, is_base=False
            )
        else:
            active = base_scores

    limit = base_scores.perplexity * (1.0 + cfg.perplexity_margin)
    checks = {
        "preference_accuracy": _beats(candidate.preference_accuracy, active.preference_accuracy),
        "reward_margin": _beats(candidate.reward_margin, active.reward_margin),
        "generation": _beats(candidate.generation_score, active.generation_score),
        "perplexity": candidate.perplexity <= limit,
    }
    against = active_version or "the base model"
    reasons = []
    if candidate.preference_rows == 0:
        reasons.append("the snapshot's eval split has no pairs or labels to judge preference by")
    if not checks["preference_accuracy"]:
        reasons.append(
            f"preference accuracy {_fmt(candidate.preference_accuracy)} does not beat "
            f"{against}'s {_fmt(active.preference_accuracy)}"
        )
    if not checks["reward_margin"]:
        reasons.append(
            f"reward margin {_fmt(candidate.reward_margin)} does not beat "
            f"{against}'s {_fmt(active.reward_margin)}"
        )
    if not checks["generation"]:
        reasons.append(
            f"generation score (kept minus rejected similarity) {_fmt(candidate.generation_score)} "
            f"does not beat {against}'s {_fmt(active.generation_score)}"
        )
    if not checks["perplexity"]:
        reasons.append(
            f"general-code perplexity {candidate.perplexity:.3f} exceeds the base's "
            f"{base_scores.perplexity:.3f} by more than {cfg.perplexity_margin:.1%}"
        )
    return GateResult(
        passed=all(checks.values()),
        checks=checks,
        reasons=reasons,
        candidate=candidate,
        active=active,
        base=base_scores,
        active_version=active_version,
        perplexity_margin=cfg.perplexity_margin,
        perplexity_limit=limit,
        general_code=general_info,
        snapshot_id=snapshot_dir.name,
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
