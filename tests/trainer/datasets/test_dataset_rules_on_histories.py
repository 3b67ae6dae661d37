"""Each signal rule on a small hand-made history, with the rows it must produce written out."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.trainer.datasets.history import (
    FILE_HEAD,
    T0,
    History,
    build,
    fim,
    lineage,
    no_split_rules,
    read_set,
)

S = "s += i.price"
PROMPT = fim(FILE_HEAD)


def sets(snapshot) -> dict[str, list]:
    return {name: read_set(snapshot, name) for name in ("labels", "pairs", "rewards", "sft")}


def accepted(
    h: History, completion: str = S, *, at: float = 0.0, prefix: str = FILE_HEAD, **fields
) -> str:
    [sid] = h.suggest(at, prefix, completion, **fields)
    h.event(sid, "shown", at + 0.1)
    h.event(sid, "accepted", at + 1.0)
    return sid


def survived(h: History, sid: str, final: str) -> None:
    for window in (30.0, 120.0, 300.0, 600.0):
        h.event(sid, "survived", 1.0 + window, window_s=window, final_text=final)


def test_when_accepted_and_unchanged_at_latest_window_then_positive(tmp_path: Path):
    h = History()
    survived(h, accepted(h), S)
    snap = build(tmp_path, h)
    assert sets(snap) == {
        "labels": [{"prompt": PROMPT, "completion": S, "label": True}],
        "pairs": [],
        "rewards": [{"prompt": PROMPT, "completion": S, "reward": 1.0}],
        "sft": [{"prompt": PROMPT, "completion": S}],
    }
    assert snap.card["outcomes"] == {"accepted_kept": 1}


def test_when_accepted_and_slightly_edited_then_positive_and_pair(tmp_path: Path):
    h = History()
    sid = accepted(h)
    survived(h, sid, S + "s")  # similarity 12/13, above 0.67
    snap = build(tmp_path, h)
    sim = 12 / 13
    got = sets(snap)
    assert got["labels"] == [
        {"prompt": PROMPT, "completion": S, "label": True},
        {"prompt": PROMPT, "completion": S + "s", "label": True},
    ]
    assert got["pairs"] == [{"prompt": PROMPT, "chosen": S + "s", "rejected": S}]
    assert got["sft"] == [{"prompt": PROMPT, "completion": S + "s"}]
    assert got["rewards"][0]["reward"] == pytest.approx(0.4 + 0.6 * sim)


def test_when_accepted_then_rewritten_then_pair_and_no_positive(tmp_path: Path):
    h = History()
    final = "s = sum(x.cost for x in items)"
    survived(h, accepted(h), final)
    snap = build(tmp_path, h)
    got = sets(snap)
    assert got["pairs"] == [{"prompt": PROMPT, "chosen": final, "rejected": S}]
    assert got["labels"] == [{"prompt": PROMPT, "completion": final, "label": True}]
    assert got["sft"] == [{"prompt": PROMPT, "completion": final}]
    assert snap.card["outcomes"] == {"accepted_edited": 1}


def test_when_accepted_then_deleted_then_negative(tmp_path: Path):
    h = History()
    survived(h, accepted(h), "")
    snap = build(tmp_path, h)
    got = sets(snap)
    assert got["labels"] == [{"prompt": PROMPT, "completion": S, "label": False}]
    assert got["pairs"] == [] and got["sft"] == []
    # the shipped formula: accepted * fraction * (0.4 + 0.6 * survival) with survival 0
    assert got["rewards"] == [{"prompt": PROMPT, "completion": S, "reward": pytest.approx(0.4)}]


def test_when_accepted_without_evidence_then_positive_only_after_longest_window(tmp_path: Path):
    h = History()
    accepted(h, file_path=None)  # no file: nothing to infer from
    early = build(tmp_path / "early", h, until=T0 + timedelta(minutes=5))
    assert early.card["exclusions"] == {"no_outcome_yet": 1}
    assert sets(early)["labels"] == []
    h2 = History()
    accepted(h2, file_path=None)
    late = build(tmp_path / "late", h2)
    assert sets(late)["labels"] == [{"prompt": PROMPT, "completion": S, "label": True}]
    assert late.card["outcomes"] == {"accepted_unobserved": 1}


@pytest.mark.parametrize(
    "elapsed_ms,labels,excluded",
    [
        (1500.0, [{"completion": S, "label": False}], {}),  # read long enough: negative
        (300.0, [], {"not_visible_long_enough": 1}),  # flashed by: not a judgment
    ],
)
def test_when_rejected_then_negative_only_if_visible_long_enough(
    tmp_path: Path, elapsed_ms, labels, excluded
):
    h = History()
    [sid] = h.suggest(0, FILE_HEAD, S, file_path=None)
    h.event(sid, "shown", 0.1)
    h.event(sid, "rejected", 0.1 + elapsed_ms / 1000, elapsed_ms=elapsed_ms)
    snap = build(tmp_path, h)
    assert [{k: r[k] for k in ("completion", "label")} for r in read_set(snap, "labels")] == labels
    assert snap.card["exclusions"] == excluded


def test_when_dismissed_then_written_by_hand_then_pair_and_negative(tmp_path: Path):
    h = History()
    [sid] = h.suggest(0, FILE_HEAD, S)
    h.event(sid, "shown", 0.1)
    h.event(sid, "rejected", 2.0, elapsed_ms=1900.0)
    # the developer's next request in that file shows what they wrote instead
    h.suggest(40, FILE_HEAD + "s += i.cost\n    ret", "urn s", suffix="\n", client="openai-x")
    snap = build(tmp_path, h)
    got = sets(snap)
    assert got["pairs"] == [{"prompt": PROMPT, "chosen": "s += i.cost", "rejected": S}]
    assert got["labels"] == [
        {"prompt": PROMPT, "completion": S, "label": False},
        {"prompt": PROMPT, "completion": "s += i.cost", "label": True},
    ]
    assert got["sft"] == [{"prompt": PROMPT, "completion": "s += i.cost"}]
    assert snap.card["outcomes"]["dismissed_handwritten"] == 1


def test_when_one_of_several_choices_accepted_then_pairs_against_the_others(tmp_path: Path):
    h = History()
    [first, second, third] = h.suggest(0, FILE_HEAD, S, choices=[S, "pass", "s = 0"])
    h.event(first, "shown", 0.1)
    h.event(first, "accepted", 1.0)
    survived(h, first, S)
    snap = build(tmp_path, h)
    assert read_set(snap, "pairs") == [
        {"prompt": PROMPT, "chosen": S, "rejected": "pass"},
        {"prompt": PROMPT, "chosen": S, "rejected": "s = 0"},
    ]
    assert {r["other_suggestion_id"] for r in lineage(snap) if r["set"] == "pairs"} == {
        second,
        third,
    }


def test_when_two_choices_have_the_same_text_then_each_set_keeps_one_row_for_them(
    tmp_path: Path,
):
    h = History()
    first, second, third = h.suggest(0, FILE_HEAD, S, choices=["pass", "pass", "s = 0"])
    for sid in (first, second, third):
        h.event(sid, "shown", 0.1)
        h.event(sid, "rejected", 2.1, elapsed_ms=2000.0)
    snap = build(tmp_path, h)
    assert read_set(snap, "labels") == [
        {"prompt": PROMPT, "completion": "pass", "label": False},
        {"prompt": PROMPT, "completion": "s = 0", "label": False},
    ]
    assert [r["completion"] for r in read_set(snap, "rewards")] == ["pass", "s = 0"]
    # The first by suggestion id stays; row numbers have no gap where the duplicate was.
    assert [(r["set"], r["suggestion_id"], r["row"]) for r in lineage(snap)] == [
        ("labels", first, 0),
        ("labels", third, 1),
        ("rewards", first, 0),
        ("rewards", third, 1),
    ]
    assert snap.card["counts"]["labels"]["rows"] == 2


def test_when_partial_accept_then_accepted_part_is_positive_weighted_by_fraction(tmp_path: Path):
    h = History()
    completion = "s += i.price * 2"  # 16 characters; the word accept takes 1
    [sid] = h.suggest(0, FILE_HEAD, completion)
    h.event(sid, "shown", 0.1)
    h.event(sid, "accepted", 1.0, accept_kind="word", accepted_text="s")
    survived(h, sid, "s")
    snap = build(tmp_path, h)
    assert read_set(snap, "labels") == [{"prompt": PROMPT, "completion": "s", "label": True}]
    [row] = [r for r in lineage(snap) if r["set"] == "labels"]
    assert (row["rule"], row["weight"]) == ("partial_accepted_kept", pytest.approx(1 / 16))
    [reward] = read_set(snap, "rewards")
    assert reward == {"prompt": PROMPT, "completion": completion, "reward": pytest.approx(1 / 16)}


def test_when_records_must_not_be_used_then_each_is_excluded_with_its_reason(tmp_path: Path):
    h = History()
    used = accepted(h, file_path=None)
    accepted(h, at=1, repo="Secret/Vault", file_path=None, prefix="# vault\n")
    accepted(
        h,
        "<EMAIL_1> <EMAIL_2>",
        at=2,
        file_path=None,
        prefix="x = '<AWS_SECRET_KEY_1>'\n",
        redaction_counts={"EMAIL_ADDRESS": 2, "AWS_SECRET_KEY": 1},
    )
    accepted(h, at=3, template=None, file_path=None, prefix="# unknown\n")
    h.suggest(4, FILE_HEAD + "#", "x", file_path=None)  # this client sends events; none here
    accepted(h, "   ", at=5, file_path=None, prefix="# empty\n")
    accepted(h, at=6, file_path=None)  # the same prompt again, later: a duplicate
    rules = no_split_rules(**{"opted_out_repos: []": 'opted_out_repos: ["secret/*"]'})
    snap = build(tmp_path, h, rules=rules)
    assert snap.card["exclusions"] == {
        "duplicate_context": 1,
        "empty_completion": 1,
        "not_shown": 1,
        "opted_out_repo": 1,
        "redacted_share": 1,
        "unknown_template": 1,
    }
    assert [r["suggestion_id"] for r in lineage(snap) if r["set"] == "labels"] == [used]


def test_when_template_has_no_fim_tokens_then_prompt_ends_on_a_clean_boundary(tmp_path: Path):
    h = History()
    prefix = "def total(items):\n    ret"
    [sid] = h.suggest(0, prefix, "urn sum(items)", template="plain-v1", file_path=None)
    h.event(sid, "shown", 0.1)
    h.event(sid, "accepted", 1.0)
    snap = build(tmp_path, h)
    [row] = read_set(snap, "labels")
    assert row == {
        "prompt": "def total(items):",
        "completion": "\n    return sum(items)",
        "label": True,
    }
    assert row["prompt"] + row["completion"] == prefix + "urn sum(items)"


def test_when_continue_logs_a_served_completion_then_it_takes_the_served_template(
    tmp_path: Path,
):
    h = History()
    # the gateway served it (OpenAI API, no file path); Continue's dev-data names the outcome
    h.suggest(0, FILE_HEAD, S, file_path=None, client="Continue")
    [alias] = h.suggest(2, FILE_HEAD, S, template=None, source="continue", client="Continue")
    h.event(alias, "shown", 2.0, source="continue")
    h.event(alias, "accepted", 2.0, source="continue")
    snap = build(tmp_path, h)
    assert read_set(snap, "labels") == [{"prompt": PROMPT, "completion": S, "label": True}]
    assert [r["suggestion_id"] for r in lineage(snap) if r["set"] == "labels"] == [alias]


def test_when_a_suggestion_lands_twice_then_the_earliest_copy_counts_once(tmp_path: Path):
    """A duplicate that slipped through landing (a retried batch, here with other text): the
    copy of the earlier batch is the suggestion, and it is counted once."""
    h = History()
    sid = accepted(h)
    survived(h, sid, S)
    [original] = [r for r in h.records if r["record_type"] == "suggestion"]
    h.land(tmp_path / "parquet", batch=1)
    h.records.append({**original, "completion": "s -= i.price"})
    snap = build(tmp_path, h)
    assert sets(snap)["sft"] == [{"prompt": PROMPT, "completion": S}]
    assert snap.card["outcomes"] == {"accepted_kept": 1}
