"""trainer.train: LoRA training with TRL on tiny habit snapshots (CPU, a few steps each)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.trainer.habits import write_snapshot
from trainer import TrainConfig, train
from trainer.errors import (
    CheckpointMismatchError,
    EmptyTrainingSetError,
    InvalidConfigError,
    RunExistsError,
)
from trainer.evaluate import _completion_logps
from trainer.train import load_snapshot_rows, resolve_method


def config(snapshot: Path, model: Path, out: Path, **overrides) -> TrainConfig:
    values = {
        "max_steps": 4,
        "batch_size": 8,
        "num_threads": 1,
        "checkpoint_every_steps": 2,
        "learning_rate": 1e-3,
        "replay_weight": 0.0,  # replay has its own tests; the rest stay fast
    }
    values.update(overrides)
    return TrainConfig(snapshot_dir=snapshot, base_model_dir=model, output_dir=out, **values)


def adapter_weights(adapter_dir: Path) -> dict:
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def pair_margin(model_dir: Path, adapter_dir: Path | None, rows: list[dict]) -> float:
    """Mean log-prob(chosen) - log-prob(rejected) under the base or base+adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        with warnings.catch_warnings():
            # peft reads transformers 5's deprecated is_gradient_checkpointing alias.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    kept = _completion_logps(model, tokenizer, [(r["prompt"], r["chosen"]) for r in rows], 128, 8)
    dropped = _completion_logps(
        model, tokenizer, [(r["prompt"], r["rejected"]) for r in rows], 128, 8
    )
    return sum(k - d for k, d in zip(kept, dropped, strict=True)) / len(rows)


@pytest.mark.parametrize(
    "method,labels",
    [
        ("dpo_sft", False),  # pairs with the SFT term
        ("kto", True),  # unpaired labels (pairs join as labelled rows)
        ("sft", False),  # kept completions only
    ],
)
def test_when_trained_then_adapter_changes_and_training_margin_improves(
    tiny_model_dir: Path, tmp_path: Path, method: str, labels: bool
) -> None:
    snapshot = write_snapshot(tmp_path / "datasets", labels=labels)
    result = train(
        config(snapshot, tiny_model_dir, tmp_path / "run", method=method, max_steps=6),
        progress=False,
    )
    assert result.method == method and result.steps == 6
    weights = adapter_weights(result.adapter_dir)
    # LoRA B matrices start at zero; training must have moved them.
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(float(t.abs().max()) > 0 for t in lora_b)
    rows = load_snapshot_rows(snapshot, "pairs", "train")
    before = pair_margin(tiny_model_dir, None, rows)
    after = pair_margin(tiny_model_dir, result.adapter_dir, rows)
    assert after > before
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["method"] == method and metrics["steps"] == 6
    assert metrics["adapter_hash"] == result.adapter_hash
    assert metrics["snapshot_id"] == snapshot.name
    assert metrics["seconds_per_step"] > 0


def test_when_run_resumed_from_a_checkpoint_then_adapter_equals_uninterrupted_run(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    snapshot = write_snapshot(tmp_path / "datasets")
    whole = train(config(snapshot, tiny_model_dir, tmp_path / "whole"), progress=False)
    # The interrupted run: what a kill after step 2 leaves (config + the step-2 checkpoint).
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copy(whole.output_dir / "train_config.json", cut / "train_config.json")
    shutil.copytree(
        whole.output_dir / "checkpoints" / "checkpoint-2", cut / "checkpoints" / "checkpoint-2"
    )
    with pytest.raises(RunExistsError, match="output_dir"):
        train(config(snapshot, tiny_model_dir, cut), progress=False)
    resumed = train(config(snapshot, tiny_model_dir, cut, resume=True), progress=False)
    assert resumed.steps == whole.steps == 4
    assert resumed.metrics["resumed"] is True
    expected, got = adapter_weights(whole.adapter_dir), adapter_weights(resumed.adapter_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] - got[name]).abs().max() < 1e-6, name


def test_when_resumed_with_a_different_config_then_refused_naming_the_field(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    snapshot = write_snapshot(tmp_path / "datasets")
    train(config(snapshot, tiny_model_dir, tmp_path / "run", max_steps=2), progress=False)
    with pytest.raises(CheckpointMismatchError, match="learning_rate"):
        train(
            config(
                snapshot, tiny_model_dir, tmp_path / "run", max_steps=2, learning_rate=5e-4,
                resume=True,
            ),
            progress=False,
        )  # fmt: skip


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"method": "ppo"}, "method"),  # not a method we offer
        ({"lora_r": 0}, "lora_r"),  # rank must be positive
        ({"batch_size": 0}, "batch_size"),  # empty batches
        ({"learning_rate": -1.0}, "learning_rate"),  # negative step size
        ({"device": "tpu"}, "device"),  # unsupported device
        ({"replay_loss": "mse"}, "replay_loss"),  # replay minimizes lm or kl only
    ],
)
def test_when_config_value_is_bad_then_error_names_the_field(
    tmp_path: Path, overrides: dict, field: str
) -> None:
    with pytest.raises(InvalidConfigError, match=field):
        TrainConfig(
            snapshot_dir=tmp_path, base_model_dir=tmp_path, output_dir=tmp_path, **overrides
        )


def test_when_mapping_has_unknown_or_mistyped_key_then_error_names_it(tmp_path: Path) -> None:
    base = {"snapshot_dir": "s", "base_model_dir": "m", "output_dir": "o"}
    with pytest.raises(InvalidConfigError, match="lora_rank"):
        TrainConfig.from_mapping({**base, "lora_rank": 8})
    with pytest.raises(InvalidConfigError, match="max_steps"):
        TrainConfig.from_mapping({**base, "max_steps": "ten"})
    assert TrainConfig.from_mapping({**base, "max_steps": 3}).max_steps == 3


def test_when_config_fields_listed_then_each_has_help_text() -> None:
    missing = [
        f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("help", "").strip()
    ]
    assert missing == []


@pytest.mark.parametrize(
    "counts,expected",
    [
        ({"labels": 3, "pairs": 5, "sft": 4}, "sft"),  # kept completions win
        ({"labels": 0, "pairs": 5}, "sft"),  # pairs only: their chosen texts are kept
        ({"labels": 6, "pairs": 0, "sft": 0}, "kto"),  # only labels
        ({"labels": 0, "pairs": 0, "sft": 4}, "sft"),  # kept completions only
    ],
)
def test_when_method_is_auto_then_it_uses_what_the_snapshot_has(counts, expected) -> None:
    assert resolve_method("auto", counts) == expected
    assert resolve_method("sft", counts) == "sft"


def test_when_snapshot_has_no_rows_for_the_method_then_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    snapshot = write_snapshot(tmp_path / "datasets", pairs=[], eval_pairs=[])
    with pytest.raises(EmptyTrainingSetError, match="no training rows"):
        train(config(snapshot, tiny_model_dir, tmp_path / "run"), progress=False)


def test_when_snapshot_dir_is_not_a_snapshot_then_error_names_the_field(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidConfigError, match="snapshot_dir"):
        train(config(tmp_path / "nope", tiny_model_dir, tmp_path / "run"), progress=False)


def test_when_kto_rows_come_from_pairs_and_labels_then_each_row_counts_once(
    tmp_path: Path,
) -> None:
    from trainer.train import _training_rows

    # labels=True writes every pair's two halves as labelled rows too: the same feedback twice.
    snapshot = write_snapshot(tmp_path / "datasets", labels=True)
    pairs = load_snapshot_rows(snapshot, "pairs", "train")
    rows = _training_rows(snapshot, "kto")
    keys = [(r["prompt"], r["completion"], r["label"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * len(pairs)
    assert sum(r["label"] for r in rows) == len(pairs)


def test_when_replay_is_on_then_replay_loss_and_sample_are_recorded(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    snapshot = write_snapshot(tmp_path / "datasets")
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "tests").mkdir()
    (code / "pkg" / "util.py").write_text("def add(a, b):\n    return a + b\n" * 200)
    (code / "tests" / "test_util.py").write_text("GATE_ONLY = 1\n" * 200)
    result = train(
        config(
            snapshot, tiny_model_dir, tmp_path / "run", method="dpo_sft", replay_weight=1.0,
            replay_batch_size=2, replay_bytes=4000, replay_dirs=[str(code)],
        ),
        progress=False,
    )  # fmt: skip
    replay = result.metrics["replay"]
    # Only the package file: test directories are the gate's kind of data, never replayed.
    assert replay["files"] == 1 and replay["dirs"] == [str(code)]
    assert replay["bytes"] == 4000 and replay["sequences"] >= 1
    assert result.metrics["replay_loss"] > 0
    assert result.metrics["config"]["replay_weight"] == 1.0


def test_when_replay_run_is_resumed_then_adapter_equals_uninterrupted_run(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    snapshot = write_snapshot(tmp_path / "datasets")
    extra = {"replay_weight": 0.5, "replay_batch_size": 2, "replay_bytes": 20_000}
    whole = train(config(snapshot, tiny_model_dir, tmp_path / "whole", **extra), progress=False)
    cut = tmp_path / "cut"
    cut.mkdir()
    shutil.copy(whole.output_dir / "train_config.json", cut / "train_config.json")
    shutil.copytree(
        whole.output_dir / "checkpoints" / "checkpoint-2", cut / "checkpoints" / "checkpoint-2"
    )
    resumed = train(config(snapshot, tiny_model_dir, cut, resume=True, **extra), progress=False)
    expected, got = adapter_weights(whole.adapter_dir), adapter_weights(resumed.adapter_dir)
    for name in expected:
        assert (expected[name] - got[name]).abs().max() < 1e-6, name


def test_when_snapshot_is_small_then_min_steps_sets_the_step_count(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from trainer.train import planned_steps

    snapshot = write_snapshot(tmp_path / "datasets")  # 24 pairs: 3 steps per epoch at batch 8
    cfg = config(snapshot, tiny_model_dir, tmp_path / "run", max_steps=None, min_steps=5)
    assert planned_steps(cfg, 24) == 5
    assert planned_steps(dataclasses.replace(cfg, num_epochs=2.0), 24) is None  # 6 steps >= 5
    assert planned_steps(dataclasses.replace(cfg, min_steps=0), 24) is None  # epochs decide
    assert planned_steps(dataclasses.replace(cfg, max_steps=2), 24) == 2  # max_steps wins
    result = train(cfg, progress=False)
    assert result.steps == 5 and result.metrics["epochs"] > 1.0


def test_kl_replay_is_zero_for_a_fresh_adapter_and_grows_when_it_moves(
    tiny_model_dir: Path,
) -> None:
    """The kl replay loss compares the adapter with the base (the adapter disabled): a fresh
    LoRA adapter (B = 0) is the base, so the loss is 0; moved weights make it positive."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.train import _replay_kl

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # peft reads transformers 5's deprecated is_gradient_checkpointing alias.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = get_peft_model(model, lora)
    batch = torch.randint(5, 200, (2, 16))
    assert float(_replay_kl(model, batch).detach()) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5 * torch.randn_like(param))
    moved = _replay_kl(model, batch)
    assert float(moved.detach()) > 1e-3
    moved.backward()  # the loss trains the adapter
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
