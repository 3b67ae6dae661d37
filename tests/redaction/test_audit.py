"""The hash-chained audit log: append, verify, tampering of every kind, concurrent writers."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from redaction import AuditLog
from redaction.audit import GENESIS, entry_hash
from redaction.errors import AuditError


def _log(tmp_path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    for i in range(n):
        log.append(
            f"cli:user{i}",
            "policy.apply",
            {"old_version": f"sha256:{i:016x}", "new_version": f"sha256:{i + 1:016x}"},
        )
    return log


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines(keepends=True)


def test_when_entries_appended_then_chain_links_each_to_the_previous(tmp_path):
    log = _log(tmp_path, 3)
    entries = list(log.entries())
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS
    assert entries[1].prev_hash == entries[0].hash
    assert entries[2].hash == entry_hash(entries[2].to_dict())
    assert entries[2].details["new_version"] == "sha256:0000000000000003"
    assert log.verify().to_dict() == {
        "ok": True,
        "entries": 3,
        "first_bad_seq": None,
        "first_bad_line": None,
        "reason": None,
    }


def test_when_log_does_not_exist_then_verify_is_ok_and_empty(tmp_path):
    result = AuditLog(tmp_path / "none.jsonl").verify()
    assert result.ok and result.entries == 0


def test_when_tail_asked_then_newest_first_and_filtered(tmp_path):
    log = _log(tmp_path, 4)
    log.append("api:acme/root", "model.promote", {"model": "m2"})
    assert [e.seq for e in log.tail(2)] == [5, 4]
    assert [e.action for e in log.tail(10, action_prefix="model.")] == ["model.promote"]


@pytest.mark.parametrize(
    "tamper,bad_seq,bad_line,reason",
    [
        # a detail edited in place (the hash no longer matches)
        (lambda ls: [ls[0], ls[1].replace("user1", "mallory"), *ls[2:]], 2, 2, "edited"),
        # an entry deleted from the middle
        (lambda ls: [ls[0], ls[1], ls[3], ls[4]], 4, 3, "link broken"),
        # two entries swapped
        (lambda ls: [ls[0], ls[2], ls[1], ls[3], ls[4]], 3, 2, "link broken"),
        # an entry inserted (a copy of an earlier one)
        (lambda ls: [ls[0], ls[1], ls[0], *ls[2:]], 1, 3, "link broken"),
        # garbage written into the file
        (lambda ls: [ls[0], "not json\n", *ls[1:]], None, 2, "not valid JSON"),
        # the last entries cut off (caught by the head file)
        (lambda ls: ls[:3], 5, 4, "removed from the end"),
        # a line cut in the middle of writing
        (lambda ls: [*ls[:4], ls[4][:20]], None, 5, "incomplete"),
    ],
)
def test_when_log_tampered_then_verify_names_the_first_broken_entry(
    tmp_path, tamper, bad_seq, bad_line, reason
):
    log = _log(tmp_path, 5)
    log.path.write_text("".join(tamper(_lines(log))))
    result = log.verify()
    assert not result.ok
    assert (result.first_bad_seq, result.first_bad_line) == (bad_seq, bad_line)
    assert reason in (result.reason or "")


def test_when_entry_rehashed_after_edit_then_the_next_link_breaks(tmp_path):
    """An attacker who recomputes the edited entry's hash still breaks the chain after it."""
    log = _log(tmp_path, 3)
    lines = _lines(log)
    entry = json.loads(lines[1])
    entry["actor"] = "mallory"
    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry, sort_keys=True) + "\n"
    log.path.write_text("".join(lines))
    result = log.verify()
    assert (result.ok, result.first_bad_seq) == (False, 3)


def test_when_last_line_is_broken_then_append_refuses(tmp_path):
    log = _log(tmp_path, 2)
    with log.path.open("a") as f:
        f.write("{broken\n")
    with pytest.raises(AuditError, match="audit verify"):
        log.append("cli:x", "policy.apply")


@pytest.mark.parametrize("actor,action", [("", "policy.apply"), ("cli:x", "")])
def test_when_actor_or_action_missing_then_refused(tmp_path, actor, action):
    with pytest.raises(ValueError, match="actor and an action"):
        AuditLog(tmp_path / "a.jsonl").append(actor, action)


def test_when_details_too_large_then_refused(tmp_path):
    with pytest.raises(ValueError, match="audit details"):
        AuditLog(tmp_path / "a.jsonl").append("cli:x", "export", {"blob": "x" * 70_000})


def test_when_threads_append_concurrently_then_chain_stays_intact(tmp_path):
    path = tmp_path / "audit.jsonl"

    def writer(i: int) -> None:
        log = AuditLog(path)  # each its own file description, as separate processes have
        for j in range(25):
            log.append(f"thread:{i}", "test.append", {"n": j})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = AuditLog(path).verify()
    assert result.ok and result.entries == 100


def test_when_processes_append_concurrently_then_chain_stays_intact(tmp_path):
    path = tmp_path / "audit.jsonl"
    # The audit module alone, without the package's __init__ (Presidio, spaCy): the
    # processes start in well under a second and really overlap.
    package_dir = Path(__import__("redaction").__file__).parent
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('redaction'); pkg.__path__ = [{str(package_dir)!r}]\n"
        "sys.modules['redaction'] = pkg\n"
        "from redaction.audit import AuditLog\n"
        "log = AuditLog(sys.argv[1])\n"
        "for j in range(30): log.append('proc:' + sys.argv[2], 'test.append', {'n': j})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(i)]) for i in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    result = AuditLog(path).verify()
    assert result.ok and result.entries == 90
