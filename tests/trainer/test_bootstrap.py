"""trainer.bootstrap: the tiny model directory, its tokenizer, FIM data, training and resume."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

import trainer
from trainer import BootstrapConfig, bootstrap_model, is_complete_model_dir, read_manifest
from trainer.bootstrap import (
    CHECKPOINT_DIRNAME,
    EOT,
    FIM_MIDDLE,
    FIM_PAD,
    FIM_PREFIX,
    FIM_SUFFIX,
    MANIFEST_NAME,
    SPECIAL_TOKENS,
    _encode_documents,
    format_fim,
)
from trainer.errors import (
    CheckpointMismatchError,
    CorpusTooSmallError,
    IncompleteModelError,
    InvalidConfigError,
    ManifestError,
    ModelWriteError,
    NoSourcesError,
    TrainerError,
)

SNIPPET = textwrap.dedent(
    '''\
    import os


    def read_lines(path):
        """Return the lines of a text file."""
        with open(path, encoding="utf-8") as handle:
            return [line.rstrip("\\n") for line in handle]


    class Counter:
        def __init__(self):
            self.count = 0

        def add(self, value=1):
            self.count += value
            return self.count
    '''
)

# A child process that trains like the fixture but dies hard (os._exit: no finally blocks,
# no cleanup) at a chosen point. Wrapping the real private function is fault injection: the
# only way to kill a run at an exact step.
CRASH_SCRIPT = textwrap.dedent(
    """\
    import json, os, sys
    import trainer.bootstrap as bootstrap

    config = bootstrap.BootstrapConfig(**json.loads(sys.argv[1]))
    crash_point, crash_step = sys.argv[2], int(sys.argv[3])
    real_save_checkpoint = bootstrap._save_checkpoint
    real_write_json = bootstrap._write_json_atomic

    def save_checkpoint_then_crash(*args, **kwargs):
        path = real_save_checkpoint(*args, **kwargs)
        if crash_point == "after_checkpoint" and args[-1].step >= crash_step:
            os._exit(77)
        return path

    def crash_before_manifest(path, payload):
        if crash_point == "before_manifest" and path.name == bootstrap.MANIFEST_NAME:
            os._exit(77)
        real_write_json(path, payload)

    bootstrap._save_checkpoint = save_checkpoint_then_crash
    bootstrap._write_json_atomic = crash_before_manifest
    bootstrap.bootstrap_model(config, progress=False)
    """
)
CRASH_STEP = 30


def _run_and_crash(config: BootstrapConfig, crash_point: str, checkpoint_every_s: float) -> None:
    """Train in a child process that kills itself at `crash_point` (fault injection)."""
    child_config = dataclasses.replace(config, checkpoint_every_s=checkpoint_every_s)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASH_SCRIPT,
            json.dumps(child_config.to_json()),
            crash_point,
            str(CRASH_STEP),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 77, result.stderr[-3000:]


@pytest.fixture(scope="module")
def crashed_mid_training(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_config: BootstrapConfig
) -> BootstrapConfig:
    """A run of the fixture's config, checkpointing every step, killed after step 30."""
    config = dataclasses.replace(
        tiny_model_config, output_dir=tmp_path_factory.mktemp("crashed") / "model"
    )
    _run_and_crash(config, "after_checkpoint", checkpoint_every_s=0.0)
    return config


def _copy_run(config: BootstrapConfig, destination: Path) -> BootstrapConfig:
    shutil.copytree(config.output_dir, destination)
    return dataclasses.replace(config, output_dir=destination)


def _sequence_loss(model: torch.nn.Module, ids: list[int]) -> float:
    batch = torch.tensor([ids])
    with torch.no_grad():
        return float(model(input_ids=batch, labels=batch).loss)


def _raw_tokenizer(model_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def _parse_psm(text: str) -> tuple[str, str, str]:
    """Split one decoded PSM example into (prefix, middle, suffix), checking sentinel order."""
    assert text.startswith(FIM_PREFIX) and text.endswith(EOT), text[:80]
    body = text[len(FIM_PREFIX) : -len(EOT)]
    prefix, rest = body.split(FIM_SUFFIX)
    suffix, middle = rest.split(FIM_MIDDLE)
    return prefix, middle, suffix


def _split_examples(stream: list[int], eot_id: int) -> list[list[int]]:
    examples, current = [], []
    for token in stream:
        current.append(token)
        if token == eot_id:
            examples.append(current)
            current = []
    assert current == [], "stream must end with end-of-text"
    return examples


# ---------------------------------------------------------------- package and config


def test_when_package_imported_then_api_is_pinned_and_torch_stays_unloaded() -> None:
    assert sorted(trainer.__all__) == sorted(
        [
            "BootstrapConfig",
            "bootstrap_model",
            "errors",
            "is_complete_model_dir",
            "read_manifest",
            # datasets (issue 4)
            "BuildConfig",
            "BuildFailed",
            "BuildInvalid",
            "DatasetError",
            "RulesInvalid",
            "SignalRules",
            "Snapshot",
            "SnapshotCorrupt",
            "SnapshotNotFound",
            "build_snapshot",
            "list_snapshots",
            "load_rules",
            "read_card",
            "verify_snapshot",
            # training, gate, registry (issue 5)
            "GateConfig",
            "GateResult",
            "ModelRegistry",
            "ModelScores",
            "ModelVersion",
            "TrainConfig",
            "TrainResult",
            "base_model_hash",
            "evaluate_candidate",
            "train",
            # the loop and its simulated developers (issue 5)
            "CONVENTIONS",
            "CycleResult",
            "Developer",
            "LoopConfig",
            "judge",
            "make_population",
            "run_cycle",
            "run_population",
        ]
    )
    heavy = "{'torch', 'transformers', 'tokenizers'}"
    probe = f"import sys, trainer; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_when_config_fields_listed_then_each_has_help_text() -> None:
    fields = dataclasses.fields(BootstrapConfig)
    missing = [f.name for f in fields if not str(f.metadata.get("help", "")).strip()]
    assert missing == []
    assert {"output_dir", "max_minutes", "max_steps", "fim_rate", "source_dirs"} <= {
        f.name for f in fields
    }


def test_when_config_defaults_used_then_they_describe_the_stdlib_model(tmp_path: Path) -> None:
    config = BootstrapConfig(output_dir=tmp_path)
    assert (config.vocab_size, config.hidden_size, config.num_layers, config.seq_len) == (
        4096,
        256,
        6,
        256,
    )
    assert config.max_minutes == 5.0 and config.max_steps is None
    assert len(config.source_dirs) == 1 and (config.source_dirs[0] / "os.py").is_file()


def test_when_config_round_trips_through_json_then_it_is_equal(tmp_path: Path) -> None:
    config = BootstrapConfig.tiny(tmp_path / "m", source_dirs=[tmp_path])
    again = BootstrapConfig(**json.loads(json.dumps(config.to_json())))
    assert again == config


@pytest.mark.parametrize(
    "overrides",
    [
        {"fim_rate": 1.5},  # a share above one
        {"num_heads": 3},  # 64 is not divisible by 3
        {"val_fraction": 0.0},  # no validation set
        {"max_steps": 0},  # nothing to train
        {"vocab_size": 200},  # smaller than the byte alphabet
    ],
)
def test_when_config_value_out_of_range_then_invalid_config_error(
    tmp_path: Path, overrides: dict[str, object]
) -> None:
    with pytest.raises(InvalidConfigError) as info:
        BootstrapConfig.tiny(tmp_path, **overrides)
    assert info.value.http_status == 422


# ---------------------------------------------------------------- the built directory


@pytest.mark.slow
def test_when_tiny_model_loaded_offline_then_it_generates(tiny_model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.tie_word_embeddings is True
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    inputs = tokenizer("def add(a, b):\n    return", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert 1 <= new_tokens.shape[0] <= 8
    assert isinstance(tokenizer.decode(new_tokens), str)


@pytest.mark.slow
@pytest.mark.parametrize("token", SPECIAL_TOKENS)
def test_when_special_token_encoded_then_it_is_a_single_token(
    tiny_model_dir: Path, token: str
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    ids = tokenizer.encode(token, add_special_tokens=False)
    assert ids == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.decode(ids) == token


@pytest.mark.slow
def test_when_tokenizer_loaded_then_eos_and_pad_match_the_model(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    assert (tokenizer.eos_token, tokenizer.pad_token) == (EOT, FIM_PAD)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.decode(tokenizer.encode(SNIPPET, add_special_tokens=False)) == SNIPPET


@pytest.mark.slow
def test_when_chat_template_applied_then_turns_render_in_order(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    messages = [
        {"role": "system", "content": "Answer in Python."},
        {"role": "user", "content": "Add two numbers."},
        {"role": "assistant", "content": "a + b"},
        {"role": "user", "content": "Now three."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "### System\nAnswer in Python.\n"
        "### User\nAdd two numbers.\n"
        f"### Assistant\na + b{EOT}\n"
        "### User\nNow three.\n"
        "### Assistant\n"
    )
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    assert tokenizer.eos_token_id in (ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.mark.slow
def test_when_model_built_then_manifest_describes_it(
    tiny_model_dir: Path, tiny_model_config: BootstrapConfig
) -> None:
    manifest = read_manifest(tiny_model_dir)
    assert manifest["complete"] is True
    assert manifest["config"] == tiny_model_config.to_json()
    assert manifest["steps"] == tiny_model_config.max_steps
    assert manifest["stopped_by"] == "max_steps"
    per_step = tiny_model_config.batch_size * tiny_model_config.seq_len
    assert manifest["tokens_seen"] == tiny_model_config.max_steps * per_step
    assert len(manifest["corpus_hash"]) == 64 and len(manifest["weights_hash"]) == 64
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    assert not (tiny_model_dir / CHECKPOINT_DIRNAME).exists()
    modes = {(tiny_model_dir / name).stat().st_mode & 0o777 for name in manifest["files"]}
    assert len(modes) == 1  # the weights are not left owner-only while the rest is not


@pytest.mark.slow
def test_when_trained_then_loss_is_lower_than_untrained(tiny_model_dir: Path) -> None:
    manifest = read_manifest(tiny_model_dir)
    assert manifest["loss_log"][-1][1] < manifest["loss_log"][0][1]
    assert manifest["final_val_loss"] < manifest["initial_val_loss"]
    # Independent of the trainer's own bookkeeping: code it never saw, same architecture.
    trained = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    torch.manual_seed(123)
    untrained = LlamaForCausalLM(trained.config).eval()
    ids = tokenizer.encode(SNIPPET, add_special_tokens=False)
    assert _sequence_loss(trained, ids) < _sequence_loss(untrained, ids) - 1.0


# ---------------------------------------------------------------- FIM data


def test_when_fim_formatted_then_psm_order_is_used() -> None:
    assert format_fim("def f():\n    ", "return 1", "\n") == (
        "<|fim_prefix|>def f():\n    <|fim_suffix|>\n<|fim_middle|>return 1<|endoftext|>"
    )


@pytest.mark.slow
def test_when_every_file_is_fim_then_each_window_is_one_psm_example(
    tiny_model_dir: Path,
) -> None:
    tokenizer = _raw_tokenizer(tiny_model_dir)
    eot_id = tokenizer.token_to_id(EOT)
    text = SNIPPET * 12  # several 124-token windows
    stream = list(
        _encode_documents(tokenizer, [text], fim_rate=1.0, seq_len=128, rng=random.Random(3))
    )
    examples = _split_examples(stream, eot_id)
    assert len(examples) > 3
    pieces = []
    for example in examples:
        decoded = tokenizer.decode(example, skip_special_tokens=False)
        prefix, middle, suffix = _parse_psm(decoded)
        # Training ids are exactly what the PSM string tokenizes to at inference time.
        assert tokenizer.encode(format_fim(prefix, middle, suffix)).ids == example
        pieces.append(prefix + middle + suffix)
    assert "".join(pieces) == text  # windows cover the file without gaps or overlap


@pytest.mark.slow
def test_when_no_file_is_fim_then_files_are_kept_whole_and_end_with_eot(
    tiny_model_dir: Path,
) -> None:
    tokenizer = _raw_tokenizer(tiny_model_dir)
    texts = [SNIPPET, "x = 1\n"]
    stream = list(
        _encode_documents(tokenizer, texts, fim_rate=0.0, seq_len=128, rng=random.Random(3))
    )
    eot_id = tokenizer.token_to_id(EOT)
    expected = [i for t in texts for i in [*tokenizer.encode(t).ids, eot_id]]
    assert stream == expected
    fim_ids = {tokenizer.token_to_id(t) for t in (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)}
    assert fim_ids.isdisjoint(stream)


@pytest.mark.slow
def test_when_fim_rate_is_half_then_both_kinds_of_examples_appear(tiny_model_dir: Path) -> None:
    tokenizer = _raw_tokenizer(tiny_model_dir)
    texts = [f"value_{i} = {i}\n" for i in range(200)]
    stream = list(
        _encode_documents(tokenizer, texts, fim_rate=0.5, seq_len=128, rng=random.Random(0))
    )
    examples = _split_examples(stream, tokenizer.token_to_id(EOT))
    fim_share = sum(e[0] == tokenizer.token_to_id(FIM_PREFIX) for e in examples) / len(examples)
    assert len(examples) == 200
    assert 0.35 < fim_share < 0.65


# ---------------------------------------------------------------- resume, idempotence, crashes


@pytest.mark.slow
def test_when_killed_after_a_checkpoint_then_resume_reaches_the_same_weights(
    crashed_mid_training: BootstrapConfig, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = _copy_run(crashed_mid_training, tmp_path / "model")
    checkpoints = sorted(p.name for p in (config.output_dir / CHECKPOINT_DIRNAME).glob("*.pt"))
    assert checkpoints[-1] == f"step-{CRASH_STEP:08d}.pt"
    assert not is_complete_model_dir(config.output_dir)

    bootstrap_model(config, progress=False)

    resumed, uninterrupted = read_manifest(config.output_dir), read_manifest(tiny_model_dir)
    assert resumed["weights_hash"] == uninterrupted["weights_hash"]
    for key in ("steps", "tokens_seen", "loss_log", "final_val_loss", "corpus_hash"):
        assert resumed[key] == uninterrupted[key], key


@pytest.mark.slow
def test_when_checkpoints_come_from_another_config_then_resume_is_refused(
    crashed_mid_training: BootstrapConfig, tmp_path: Path
) -> None:
    config = _copy_run(crashed_mid_training, tmp_path / "model")
    with pytest.raises(CheckpointMismatchError, match="seed") as info:
        bootstrap_model(dataclasses.replace(config, seed=1), progress=False)
    assert info.value.http_status == 409
    assert not is_complete_model_dir(config.output_dir)


@pytest.mark.slow
def test_when_checkpointed_tokenizer_is_missing_then_resume_is_refused(
    crashed_mid_training: BootstrapConfig, tmp_path: Path
) -> None:
    config = _copy_run(crashed_mid_training, tmp_path / "model")
    (config.output_dir / CHECKPOINT_DIRNAME / "tokenizer.json").unlink()
    with pytest.raises(CheckpointMismatchError, match="tokenizer.json"):
        bootstrap_model(config, progress=False)


@pytest.mark.slow
def test_when_killed_before_the_manifest_then_dir_is_incomplete_and_a_rerun_finishes(
    tiny_model_config: BootstrapConfig, tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = dataclasses.replace(tiny_model_config, output_dir=tmp_path / "model")
    # No checkpoint is due in so short a run: the rerun starts over and must still match.
    _run_and_crash(config, "before_manifest", checkpoint_every_s=600.0)
    assert (config.output_dir / "model.safetensors").is_file()
    assert not is_complete_model_dir(config.output_dir)
    with pytest.raises(IncompleteModelError):
        read_manifest(config.output_dir)

    bootstrap_model(config, progress=False)

    assert (
        read_manifest(config.output_dir)["weights_hash"]
        == read_manifest(tiny_model_dir)["weights_hash"]
    )


@pytest.mark.slow
def test_when_model_dir_is_complete_then_second_call_returns_without_writing(
    tiny_model_config: BootstrapConfig, tiny_model_dir: Path
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in tiny_model_dir.iterdir()}
    assert bootstrap_model(tiny_model_config, progress=False) == tiny_model_dir
    after = {p.name: p.stat().st_mtime_ns for p in tiny_model_dir.iterdir()}
    assert after == before


# ---------------------------------------------------------------- errors and incomplete dirs


@pytest.mark.parametrize("make_dir", [True, False])  # empty dir; dir that does not exist
def test_when_sources_have_no_python_files_then_no_sources_error(
    tmp_path: Path, make_dir: bool
) -> None:
    sources = tmp_path / "sources"
    if make_dir:
        sources.mkdir()
        (sources / "README.txt").write_text("not python\n")
    config = BootstrapConfig.tiny(tmp_path / "model", source_dirs=[sources])
    with pytest.raises(NoSourcesError) as info:
        bootstrap_model(config, progress=False)
    assert str(sources) in str(info.value)
    assert info.value.source_dirs == [sources]
    assert isinstance(info.value, TrainerError) and info.value.http_status == 422
    assert not is_complete_model_dir(config.output_dir)


def test_when_only_one_source_file_then_corpus_too_small(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "one.py").write_text("x = 1\n")
    config = BootstrapConfig.tiny(tmp_path / "model", source_dirs=[sources])
    with pytest.raises(CorpusTooSmallError):
        bootstrap_model(config, progress=False)


def test_when_output_dir_cannot_be_created_then_model_write_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ModelWriteError) as info:
        bootstrap_model(BootstrapConfig.tiny(blocker / "model"), progress=False)
    assert isinstance(info.value.__cause__, OSError)


def _drop_manifest(d: Path) -> None:
    (d / MANIFEST_NAME).unlink()


def _truncate_weights(d: Path) -> None:
    (d / "model.safetensors").write_bytes(b"")


def _mark_incomplete(d: Path) -> None:
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    (d / MANIFEST_NAME).write_text(json.dumps({**manifest, "complete": False}))


def _corrupt_manifest(d: Path) -> None:
    (d / MANIFEST_NAME).write_text("{not json")


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (_drop_manifest, IncompleteModelError),  # crash before the manifest landed
        (_truncate_weights, IncompleteModelError),  # weights replaced or cut short
        (_mark_incomplete, IncompleteModelError),  # manifest says it is not finished
        (_corrupt_manifest, ManifestError),  # manifest unreadable
    ],
)
@pytest.mark.slow
def test_when_model_dir_is_damaged_then_it_is_not_complete(
    tiny_model_dir: Path, tmp_path: Path, damage, error
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    assert is_complete_model_dir(copy)
    damage(copy)
    assert not is_complete_model_dir(copy)
    with pytest.raises(error):
        read_manifest(copy)
