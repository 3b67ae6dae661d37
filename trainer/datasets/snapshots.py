"""Reading published snapshots: list, card, integrity check. Snapshots are never changed."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from .errors import SnapshotCorrupt, SnapshotNotFound

__all__ = ["list_snapshots", "read_card", "snapshot_summary", "verify_snapshot"]

_ID = re.compile(r"^ds-[0-9]{8}T[0-9]{6}Z-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}$")


def _card_path(datasets_dir: Path, snapshot_id: str) -> Path:
    if not _ID.fullmatch(snapshot_id):  # also keeps ids from naming paths outside the dir
        raise SnapshotNotFound(f"no snapshot {snapshot_id!r}")
    return Path(datasets_dir) / snapshot_id / "card.json"


def read_card(datasets_dir: Path, snapshot_id: str) -> dict[str, Any]:
    """The card of one snapshot."""
    path = _card_path(datasets_dir, snapshot_id)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SnapshotNotFound(f"no snapshot {snapshot_id!r}") from exc
    except OSError as exc:
        raise SnapshotCorrupt(f"cannot read the card of {snapshot_id}: {exc.strerror}") from exc
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SnapshotCorrupt(f"the card of {snapshot_id} is not JSON") from exc
    if not isinstance(card, dict) or card.get("id") != snapshot_id:
        raise SnapshotCorrupt(f"the card of {snapshot_id} does not name it")
    return card


def snapshot_summary(card: dict[str, Any]) -> dict[str, Any]:
    """The listing fields of a card."""
    counts = card.get("counts", {})
    return {
        "id": card["id"],
        "built_at": card.get("built_at"),
        "time_range": card.get("time_range"),
        "scope": card.get("scope"),
        "tenants": card.get("tenants", []),
        "languages": card.get("languages", []),
        "rules_version": card.get("rules_version"),
        "rows": {name: entry.get("rows", 0) for name, entry in counts.items()},
        "split_rows": card.get("split", {}).get("rows"),
    }


def list_snapshots(datasets_dir: Path) -> list[dict[str, Any]]:
    """Summaries of every published snapshot, newest build first (unreadable ones skipped)."""
    root = Path(datasets_dir)
    if not root.is_dir():
        return []
    out = []
    for entry in root.iterdir():
        if not _ID.fullmatch(entry.name):
            continue  # builds in progress (.build-*) and anything else
        try:
            out.append(snapshot_summary(read_card(root, entry.name)))
        except (SnapshotNotFound, SnapshotCorrupt):
            continue
    out.sort(key=lambda s: (s.get("built_at") or "", s["id"]), reverse=True)
    return out


def verify_snapshot(datasets_dir: Path, snapshot_id: str) -> dict[str, Any]:
    """Recompute every file's hash against the card; SnapshotCorrupt names the first mismatch."""
    card = read_card(datasets_dir, snapshot_id)
    root = Path(datasets_dir) / snapshot_id
    for name, entry in sorted(card.get("files", {}).items()):
        digest = hashlib.sha256()
        try:
            with open(root / name, "rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise SnapshotCorrupt(f"{snapshot_id}/{name}: {exc.strerror}") from exc
        if digest.hexdigest() != entry.get("sha256"):
            raise SnapshotCorrupt(f"{snapshot_id}/{name} does not match its content hash")
    return card
