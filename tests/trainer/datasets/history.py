"""Hand-made feedback histories, landed as Parquet exactly as the gateway's store lands them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from feedback_store import ParquetLander

T0 = datetime(2025, 5, 5, 9, 0, tzinfo=UTC)
KEY = b"test-dataset-key"
FILE_HEAD = (
    "import math\n\n\n"
    "def area(radius):\n"
    "    return math.pi * radius ** 2\n\n\n"
    "def total(items):\n"
    "    s = 0\n"
    "    for i in items:\n"
    "        "
)


@dataclass
class History:
    """Builds suggestion and event records; ``land`` writes them as one batch."""

    tenant: str = "acme"
    user: str = "u-alice"
    records: list[dict[str, Any]] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def suggest(
        self,
        at: float,
        prefix: str,
        completion: str,
        *,
        suffix: str | None = "\n    return s\n",
        file_path: str | None = "src/calc.py",
        template: str | None = "starcoder-fim-v1",
        source: str = "openai",
        client: str = "vscode",
        choices: list[str] | None = None,
        user: str | None = None,
        request_id: str | None = None,
        **fields: Any,
    ) -> list[str]:
        """One request at T0 + ``at`` seconds; returns its suggestion ids (one per choice)."""
        n = next(self._ids)
        request = request_id or f"req-{n}"
        ids = []
        for index, text in enumerate(choices or [completion]):
            sid = f"{request}-{index}"
            record = {
                "record_type": "suggestion",
                "suggestion_id": sid,
                "request_id": request,
                "tenant": self.tenant,
                "team": None,
                "repo": "acme/calc",
                "user_hash": user or self.user,
                "client_name": client,
                "client_version": "1.0",
                "source": source,
                "language": "python",
                "file_path": file_path,
                "prefix": prefix,
                "suffix": suffix,
                "completion": text,
                "choice_index": index,
                "model_version": "base@1",
                "backend": "openai_upstream",
                "latency_ms": 20.0,
                "created_at": T0 + timedelta(seconds=at),
                "policy_version": "sha256:p1",
                "redaction_counts": {},
                "prompt_template": template,
            }
            record.update(fields)
            self.records.append(record)
            ids.append(sid)
        return ids

    def event(self, sid: str, type_: str, at: float, **fields: Any) -> None:
        record = {
            "record_type": "event",
            "event_id": f"ev-{next(self._ids)}",
            "suggestion_id": sid,
            "tenant": self.tenant,
            "user_hash": fields.pop("user", self.user),
            "type": type_,
            "ts": T0 + timedelta(seconds=at),
            "accepted_text": None,
            "final_text": None,
            "accept_kind": "full" if type_ == "accepted" else None,
            "elapsed_ms": None,
            "window_s": None,
            "client_name": "vscode",
            "source": "native",
            "policy_version": "sha256:p1",
            "redaction_counts": {},
            "received_at": T0 + timedelta(seconds=at),
        }
        record.update(fields)
        self.records.append(record)

    def land(self, parquet_dir: Path, batch: int = 1) -> None:
        ParquetLander(parquet_dir).land(f"{batch:020d}", self.records)
        self.records = []


ROOT = Path(__file__).resolve().parents[3]
SHIPPED_RULES = (ROOT / "policies" / "signals.yaml").read_text()


def rules_text(**replacements: str) -> str:
    """The shipped rules with ``old=new`` line replacements (keys are the old text)."""
    text = SHIPPED_RULES
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def no_split_rules(**replacements: str) -> Any:
    from trainer.datasets import parse_rules

    return parse_rules(rules_text(**{"eval_fraction: 0.1": "eval_fraction: 0.0", **replacements}))


def fim(prefix: str, suffix: str | None = "\n    return s\n") -> str:
    return f"<fim_prefix>{prefix}<fim_suffix>{suffix or ''}<fim_middle>"


def build(
    tmp_path: Path,
    history: History,
    *,
    rules: Any = None,
    until: datetime | None = None,
    **config: Any,
) -> Any:
    from trainer.datasets import BuildConfig, build_snapshot

    parquet = tmp_path / "parquet"
    if history.records:
        history.land(parquet, batch=len(list(parquet.rglob("*.parquet"))) + 1)
    return build_snapshot(
        BuildConfig(
            parquet_dir=parquet,
            datasets_dir=tmp_path / "datasets",
            since=T0,
            until=until or T0 + timedelta(hours=2),
            rules=rules or no_split_rules(),
            context_key=KEY,
            threads=1,
            memory_limit="500MB",
            **config,
        )
    )


def read_set(snapshot: Any, name: str, split: str = "train") -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(snapshot.path / name / f"{split}.parquet").to_pylist()


def lineage(snapshot: Any) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for name in ("pairs", "labels", "rewards", "sft"):
        for split in ("train", "eval"):
            rows += pq.read_table(snapshot.path / "lineage" / name / f"{split}.parquet").to_pylist()
    return rows
