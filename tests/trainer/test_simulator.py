"""The simulated developers: determinism, the documented decision rule, and a live gateway.

The live test serves from the fake OpenAI-compatible upstream (a stand-in for the model
server, tests/support/fake_upstream.py) whose one answer is set per test, so that some holes
get a matching suggestion, some a near miss and some one that breaks the convention.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

import tests.support.fake_upstream as fake_upstream
from trainer.simulator import (
    CONVENTIONS,
    HELD_OUT_NAMES,
    TRAINING_NAMES,
    GatewayClient,
    SimulatorError,
    judge,
    make_population,
    run_population,
)

LOG_LINE = 'log.info("save %s", order)'


def test_when_the_seed_is_the_same_then_the_population_is_the_same() -> None:
    first = make_population(7, developers=3, files_per_developer=4)
    again = make_population(7, developers=3, files_per_developer=4)
    other = make_population(8, developers=3, files_per_developer=4)

    assert first == again
    assert first != other
    assert all(len(f.holes) == 2 for d in first for f in d.files)


def test_when_a_file_has_several_holes_then_each_uses_another_convention() -> None:
    population = make_population(1, developers=4, files_per_developer=6, holes_per_file=4)

    for developer in population:
        for source in developer.files:
            assert sorted(h.convention for h in source.holes) == sorted(CONVENTIONS)


def test_when_held_out_developers_are_made_then_no_identifier_is_shared_with_training() -> None:
    heldout = make_population(0, developers=4, files_per_developer=6, names=HELD_OUT_NAMES,
                              prefix="heldout")  # fmt: skip
    training = make_population(0, developers=8, files_per_developer=10)

    def prompts(population):
        return {h.before + h.after for d in population for f in d.files for h in f.holes}

    assert not set(TRAINING_NAMES) & set(HELD_OUT_NAMES)
    assert not prompts(heldout) & prompts(training)
    for hole in (h for d in heldout for f in d.files for h in f.holes):
        assert not any(f"_{name}(" in hole.before for name in TRAINING_NAMES)


@pytest.mark.parametrize(
    ("suggestion", "convention", "intended", "action"),
    [
        # exactly what was meant, leading newline and indentation aside: accepted as is
        ("\n    " + LOG_LINE + "\n", "log_wrapper", LOG_LINE, "accept"),
        # one character off: close enough to take as is
        ('log.info("save %s", orders)', "log_wrapper", LOG_LINE, "accept"),
        # another identifier: a near miss, accepted and edited
        ('log.info("save %s", item)', "log_wrapper", LOG_LINE, "edit"),
        # the right first line with more code after it: accepted, the rest deleted (an edit)
        (LOG_LINE + "\n    return order\n    x = 1", "log_wrapper", LOG_LINE, "edit"),
        # breaks the convention (print), however similar: dismissed
        ('print("save %s", order)', "log_wrapper", LOG_LINE, "dismiss"),
        # follows the convention but far from what was meant: dismissed
        ('log.info("shutting the whole system down now")', "log_wrapper", LOG_LINE, "dismiss"),
        # nothing suggested
        ("", "log_wrapper", LOG_LINE, "dismiss"),
        # requests instead of the internal client
        ("response = requests.get(url)", "http_client", "response = http_client.get(url)",
         "dismiss"),
        # the internal client with another method: near miss
        ("response = http_client.post(url)", "http_client", "response = http_client.get(url)",
         "edit"),
        # a def without type hints
        ("def clean_order(order):", "type_hints", "def clean_order(order: str) -> str:",
         "dismiss"),
        # swallowing the error
        ("pass", "app_error", 'raise AppError("load order failed") from exc', "dismiss"),
        # the house pattern without the chained cause
        ('raise AppError("load order failed")', "app_error",
         'raise AppError("load order failed") from exc', "dismiss"),
    ],
)  # fmt: skip
def test_when_a_suggestion_is_judged_then_the_documented_rule_decides(
    suggestion: str, convention: str, intended: str, action: str
) -> None:
    decision = judge(suggestion, intended, convention)

    assert decision.action == action
    if action == "accept":
        assert decision.final_text == suggestion.strip()  # kept as suggested
    else:
        assert decision.final_text == intended  # edited into, or written by hand


def test_when_the_population_arguments_are_bad_then_the_field_is_named() -> None:
    with pytest.raises(ValueError, match="developers"):
        make_population(0, developers=0, files_per_developer=1)
    with pytest.raises(ValueError, match="conventions"):
        make_population(0, developers=1, files_per_developer=1, conventions=["tabs"])
    with pytest.raises(ValueError, match="holes_per_file"):
        make_population(0, developers=1, files_per_developer=1, holes_per_file=9)


def test_when_the_gateway_is_down_then_a_simulator_error_names_the_path() -> None:
    from tests.conftest import free_port

    client = GatewayClient(f"http://127.0.0.1:{free_port()}", "t", timeout_s=2)
    with pytest.raises(SimulatorError, match="/tabby/v1/completions"):
        client.request("POST", "/tabby/v1/completions", {})


def _flush(live) -> None:
    deadline = time.monotonic() + 30
    while live.runtime.ingestor.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    live.runtime.store.flush()


def test_when_developers_use_a_live_gateway_then_their_feedback_lands_with_the_events(
    live_gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.cli_datasets import build_config
    from trainer.datasets import build_snapshot
    from trainer.train import load_snapshot_rows

    # The model server answers every request with the http_client line for GET: a match for
    # fetch_* holes, a near miss for create_*/remove_*, a broken convention for log holes.
    monkeypatch.setattr(fake_upstream, "COMPLETION_TEXT", "response = http_client.get(url)\n")
    population = make_population(
        3, developers=2, files_per_developer=3, conventions=["http_client", "log_wrapper"]
    )
    tokens = {"dev0": live_gateway.tokens["dev"], "dev1": live_gateway.tokens["dev2"]}
    since = datetime.now(UTC) - timedelta(seconds=1)

    report = run_population(live_gateway.url, tokens, population, seed=3)
    _flush(live_gateway)

    actions = {r.action for r in report.results}
    assert report.shown == 12 and report.requests == 12 + 6  # one trailing request per file
    assert actions == {"accept", "edit", "dismiss"}
    assert all(r.action == "dismiss" for r in report.results if r.convention == "log_wrapper")
    catalog = live_gateway.runtime.store.catalog()
    counts = dict(catalog.query("SELECT type, count(*) FROM events GROUP BY type").rows)
    accepted = report.count("accept") + report.count("edit")
    assert counts == {
        "shown": 12,
        "accepted": accepted,
        "rejected": report.count("dismiss"),
        "edited": report.count("edit"),
        "survived": accepted,
    }
    (stored,) = catalog.query("SELECT count(*) FROM suggestions").rows[0]
    assert stored == report.requests

    snapshot = build_snapshot(build_config(live_gateway.settings, since, datetime.now(UTC)))
    pairs = [
        row
        for split in ("train", "eval")
        for row in load_snapshot_rows(snapshot.path, "pairs", split)
    ]
    intended = {r.intended for r in report.results if r.action in ("dismiss", "edit")}
    # hand-written lines, seen only in later prefixes, and edits become the chosen side
    assert {p["chosen"].strip() for p in pairs} == intended
    assert all(p["rejected"].strip() == "response = http_client.get(url)" for p in pairs), pairs
