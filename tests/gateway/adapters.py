"""Real PEFT LoRA adapters for the tiny model, built in well under a second.

``init_lora_weights=False`` gives random A and B matrices, so the adapter visibly changes what
the model generates (a freshly trained adapter starts with B = 0 and would change nothing);
different seeds give different adapters. Registered the way ``gristmill train`` registers.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from trainer import ModelRegistry, ModelVersion, base_model_hash


def make_adapter(model_dir: Path, out: Path, *, seed: int) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    config = LoraConfig(
        r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    with warnings.catch_warnings():
        # peft reads transformers 5's deprecated is_gradient_checkpointing alias
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return out


def register_adapter(
    registry: ModelRegistry, adapter: Path, model_dir: Path, *, base_hash: str | None = None
) -> ModelVersion:
    version, _ = registry.register(
        adapter,
        base_model_dir=model_dir,
        base_model_hash=base_hash or base_model_hash(model_dir),
        snapshot_id="ds-test",
        snapshot_card_hash="c" * 64,
        policy_versions=["p1"],
        rules_version="r1",
        method="kto",
        training_config={},
        metrics={},
        gate={"passed": True, "reasons": []},
        actor="test",
    )
    return version
