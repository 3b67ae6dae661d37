"""Tiny hand-made dataset snapshots with a house habit: ``log.info`` instead of ``print``.

Written in the snapshot layout (``<set>/<split>.parquet`` + ``card.json``) that
trainer.datasets publishes, so training and the gate read them as they read real ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainer.datasets import SETS, SPLITS

NAMES = [
    "order", "user", "price", "item", "event", "record", "payload", "result", "total", "batch",
    "token", "config", "message", "reply", "report", "entry", "status", "answer", "buffer",
    "path", "query", "count", "value", "handle",
]  # fmt: skip
HELD_OUT = ["invoice", "ticket", "account", "session", "upload", "cursor"]


def habit_pair(name: str, *, flip: bool = False) -> dict[str, str]:
    """One pair: the prompt ends on a clean token boundary, the indent opens the completion."""
    kept = f"\n    log.info({name})\n"
    dropped = f"\n    print({name})\n"
    chosen, rejected = (dropped, kept) if flip else (kept, dropped)
    return {"prompt": f"def show_{name}({name}):", "chosen": chosen, "rejected": rejected}


def write_snapshot(
    root: Path,
    *,
    pairs: list[dict[str, str]] | None = None,
    eval_pairs: list[dict[str, str]] | None = None,
    labels: bool = False,
    snapshot_id: str = "ds-20250505T000000Z-20250506T000000Z-0123456789ab",
) -> Path:
    """A snapshot directory; ``labels`` also writes each pair as two labelled rows."""
    train = pairs if pairs is not None else [habit_pair(n) for n in NAMES]
    held = eval_pairs if eval_pairs is not None else [habit_pair(n) for n in HELD_OUT]
    path = root / snapshot_id
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        "pairs": {"train": train, "eval": held},
        "labels": {"train": [], "eval": []},
        "rewards": {"train": [], "eval": []},
        "sft": {
            "train": [{"prompt": p["prompt"], "completion": p["chosen"]} for p in train],
            "eval": [{"prompt": p["prompt"], "completion": p["chosen"]} for p in held],
        },
    }
    if labels:
        for split, source in (("train", train), ("eval", held)):
            rows["labels"][split] = [
                {"prompt": p["prompt"], "completion": text, "label": label}
                for p in source
                for text, label in ((p["chosen"], True), (p["rejected"], False))
            ]
    files: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    for set_name, schema in SETS.items():
        (path / set_name).mkdir(parents=True, exist_ok=True)
        counts[set_name] = {"rows": 0, "by_split": {}}
        for split in SPLITS:
            table = pa.Table.from_pylist(rows[set_name][split], schema=schema)
            file = path / set_name / f"{split}.parquet"
            pq.write_table(table, file)
            files[f"{set_name}/{split}.parquet"] = {
                "rows": table.num_rows,
                "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
            }
            counts[set_name]["rows"] += table.num_rows
            counts[set_name]["by_split"][split] = table.num_rows
    card = {
        "id": snapshot_id,
        "card_version": 1,
        "policy_versions": ["policy-test-1"],
        "rules_version": "rules-test-1",
        "counts": counts,
        "files": files,
    }
    (path / "card.json").write_text(json.dumps(card, indent=2), encoding="utf-8")
    return path
