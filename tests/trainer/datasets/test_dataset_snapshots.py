"""Snapshots: idempotence, immutability, time split without leakage, TRL loading, inference
on replayed request sequences through the whole build."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.trainer.datasets.history import (
    FILE_HEAD,
    KEY,
    T0,
    History,
    build,
    fim,
    lineage,
    no_split_rules,
    read_set,
    rules_text,
)
from trainer.datasets import (
    SETS,
    BuildConfig,
    BuildInvalid,
    SnapshotCorrupt,
    SnapshotNotFound,
    build_snapshot,
    list_snapshots,
    load_rules,
    parse_rules,
    read_card,
    verify_snapshot,
)

LINES = [f"    value_{i} = compute(items, {i})" for i in range(40)]


def busy_history(seed: int = 3, files: int = 6, steps: int = 12) -> History:
    """Several files, each written line by line over an hour, with every kind of outcome."""
    rng = random.Random(seed)
    h = History()
    for f in range(files):
        path = f"src/mod_{f}.py"
        head = f"def handler_{f}(items):\n"
        written: list[str] = []
        for step in range(steps):
            at = f * 7 + step * 300.0  # five minutes apart: windows pass between steps
            true = LINES[(f * 5 + step) % len(LINES)]
            prefix = head + "".join(line + "\n" for line in written) + "    "
            good = rng.random() < 0.5
            text = true.strip() if good else "pass"
            [sid] = h.suggest(at, prefix, text, suffix="\n", file_path=path)
            h.event(sid, "shown", at + 0.1)
            if good:
                h.event(sid, "accepted", at + 1.0)
            else:
                h.event(sid, "rejected", at + 2.0, elapsed_ms=1900.0)
            written.append(true)
    return h


def test_when_same_inputs_built_twice_then_content_hashes_are_byte_identical(tmp_path: Path):
    h = busy_history()
    records = list(h.records)
    first = build(tmp_path / "a", h, rules=load_rules())
    h.records = records
    second = build(tmp_path / "b", h, rules=load_rules())
    again = build(tmp_path / "a", History(), rules=load_rules())  # same store, same range
    assert first.id == second.id == again.id
    assert first.card["files"] == second.card["files"]
    for name in first.card["files"]:
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes()
    assert first.created and second.created and not again.created
    assert first.card["counts"]["labels"]["rows"] > 0


def test_when_built_then_snapshot_is_listed_verified_and_immutable(tmp_path: Path):
    snap = build(tmp_path, busy_history())
    datasets = tmp_path / "datasets"
    [summary] = list_snapshots(datasets)
    assert summary["id"] == snap.id and summary["rows"]["labels"] > 0
    assert read_card(datasets, snap.id)["rules_version"] == no_split_rules().version
    assert verify_snapshot(datasets, snap.id)["id"] == snap.id
    labels = snap.path / "labels" / "train.parquet"
    assert labels.stat().st_mode & 0o222 == 0  # read-only
    labels.chmod(0o644)
    labels.write_bytes(labels.read_bytes() + b"x")
    with pytest.raises(SnapshotCorrupt):
        verify_snapshot(datasets, snap.id)
    with pytest.raises(SnapshotNotFound):
        read_card(datasets, "../../etc")


def test_when_split_by_time_then_no_context_is_in_both_and_eval_is_latest(tmp_path: Path):
    h = busy_history(files=8, steps=15)
    # the same prompt served again later: one context, so it must stay on one side
    [dup] = h.suggest(8 * 7 + 15 * 300.0, "def handler_0(items):\n    ", "pass", suffix="\n")
    h.event(dup, "shown", 8 * 7 + 15 * 300.0 + 0.1)
    h.event(dup, "rejected", 8 * 7 + 15 * 300.0 + 2, elapsed_ms=1900.0)
    rules = parse_rules(rules_text(**{"eval_fraction: 0.1": "eval_fraction: 0.25"}))
    snap = build(tmp_path, h, rules=rules, until=T0 + timedelta(hours=3))
    rows = lineage(snap)
    train = {r["context_hash"] for r in rows if r["split"] == "train"}
    evals = {r["context_hash"] for r in rows if r["split"] == "eval"}
    assert train and evals and not train & evals
    assert max(r["created_at"] for r in rows if r["split"] == "train") < min(
        r["created_at"] for r in rows if r["split"] == "eval"
    )
    # purge: train contexts of a file with eval contexts, just before the cut, were dropped
    assert snap.card["exclusions"]["split_purge"] > 0
    assert snap.card["split"]["contexts"]["eval"] > 0
    assert snap.card["exclusions"].get("duplicate_context", 0) >= 1


def test_when_each_set_loaded_with_datasets_then_trl_columns_come_back(tmp_path: Path):
    from datasets import load_dataset

    snap = build(tmp_path, busy_history(), rules=load_rules())
    expected = {name: schema.names for name, schema in SETS.items()}
    for name, columns in expected.items():
        files = {
            split: str(snap.path / name / f"{split}.parquet")
            for split in ("train", "eval")
            if pq.read_metadata(snap.path / name / f"{split}.parquet").num_rows
        }
        assert files, name
        loaded = load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
        for split, dataset in loaded.items():
            assert dataset.column_names == columns
            assert len(dataset) == snap.card["counts"][name]["by_split"][split]


def test_when_card_written_then_it_names_everything_a_reviewer_needs(tmp_path: Path):
    snap = build(tmp_path, busy_history(), rules=load_rules())
    card = json.loads((snap.path / "card.json").read_text())
    for key in (
        "counts",
        "time_range",
        "tenants",
        "languages",
        "policy_versions",
        "rules_version",
        "rules",
        "reward",
        "split",
        "files",
        "exclusions",
        "matching",
    ):
        assert key in card, key
    assert card["tenants"] == ["acme"] and card["languages"] == ["python"]
    assert card["policy_versions"] == ["sha256:p1"]
    assert card["reward"]["formula"] == load_rules().document.reward.formula
    assert set(card["counts"]["labels"]["by_label"]) == {"true", "false"}
    assert sum(card["split"]["rows"].values()) == sum(c["rows"] for c in card["counts"].values())
    for name, entry in card["files"].items():
        assert len(entry["sha256"]) == 64, name


# A suggestion from an OpenAI-API client (no events at all), then the developer's next request
# in that file. (name, text written where the suggestion went, expected outcome, pair chosen)
SEQUENCES = [
    ("kept", "s += i.price * i.quantity", "inferred_kept", None),
    ("edited", "s += i.price", "dismissed_handwritten", "s += i.price"),
    ("deleted", "", "dismissed", None),
    ("handwritten", "s = s + i.cost", "dismissed_handwritten", "s = s + i.cost"),
]


@pytest.mark.parametrize("name,written,outcome,chosen", SEQUENCES, ids=[s[0] for s in SEQUENCES])
def test_when_requests_replayed_without_events_then_outcome_is_inferred(
    tmp_path: Path, name, written, outcome, chosen
):
    h = History()
    suggestion = "s += i.price * i.quantity"
    [sid] = h.suggest(0, FILE_HEAD, suggestion, client="openai-python")
    # a deleted line leaves no cursor line at all: the next line follows the loop header
    head = FILE_HEAD + written + "\n" if written else FILE_HEAD[: -len("        ")]
    later = head + "    return s\n\n\ndef f():\n    "
    h.suggest(60, later, "pass", suffix="\n", client="openai-python")
    snap = build(tmp_path, h)
    assert snap.card["outcomes"].get(outcome) == 1, snap.card["outcomes"]
    pairs = read_set(snap, "pairs")
    if chosen is None:
        assert pairs == []
    else:
        assert pairs == [{"prompt": fim(FILE_HEAD), "chosen": chosen, "rejected": suggestion}]
    assert [r["suggestion_id"] for r in lineage(snap) if r["set"] == "rewards"][:1] == [sid]


@pytest.mark.parametrize(
    "name,later_prefix,survival",
    [
        # moved: the accepted line now stands above, another line took its place
        ("moved", "import math\n\ns += i.price * i.quantity\n" + FILE_HEAD[13:] + "pass\n", 1.0),
        # re-indented: whitespace changes only
        (
            "reindented",
            FILE_HEAD.replace("\n    ", "\n      ") + "  s += i.price * i.quantity\n",
            1.0,
        ),
    ],
)
def test_when_accepted_text_moved_or_reindented_then_it_counts_as_kept(
    tmp_path: Path, name, later_prefix, survival
):
    h = History()
    [sid] = h.suggest(0, FILE_HEAD, "s += i.price * i.quantity", source="tabby")
    h.event(sid, "shown", 0.1, source="tabby")
    h.event(sid, "accepted", 1.0, source="tabby")
    h.suggest(90, later_prefix, "x", suffix="\n    return s\n", source="tabby")
    snap = build(tmp_path, h)
    assert snap.card["outcomes"] == {"accepted_kept": 1}
    [row] = [r for r in lineage(snap) if r["set"] == "rewards"]
    assert row["similarity"] == pytest.approx(survival)
    assert row["evidence"] == ("moved" if name == "moved" else "inferred")


@pytest.mark.parametrize(
    "change,error",
    [
        ({"since": T0 + timedelta(hours=3)}, "since must be before until"),
        ({"tenants": ()}, "tenants"),
        ({"context_key": b""}, "context_key"),
    ],
)
def test_when_build_arguments_are_wrong_then_build_is_refused(tmp_path: Path, change, error):
    config = {
        "parquet_dir": tmp_path / "parquet",
        "datasets_dir": tmp_path / "datasets",
        "since": T0,
        "until": T0 + timedelta(hours=2),
        "rules": load_rules(),
        "context_key": KEY,
    }
    config.update(change)
    with pytest.raises(BuildInvalid, match=error):
        build_snapshot(BuildConfig(**config))


def test_when_store_is_empty_then_snapshot_has_empty_sets(tmp_path: Path):
    snap = build(tmp_path, History())
    assert {name: c["rows"] for name, c in snap.card["counts"].items()} == dict.fromkeys(SETS, 0)
    assert read_set(snap, "labels") == []
