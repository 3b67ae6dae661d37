"""Canary assignment (sticky, close to the share) and the two-proportion decisions."""

from __future__ import annotations

import hashlib

import pytest

from gateway.canary import Arm, critical_z, decide, two_proportion_z
from gateway.routing import Routing, in_canary

USERS = [hashlib.sha256(f"user-{i}".encode()).hexdigest() for i in range(10_000)]


@pytest.mark.parametrize("share", [0.01, 0.1, 0.25, 0.5, 0.9])
def test_when_10000_users_are_assigned_then_the_canary_share_is_close_to_the_setting(share):
    chosen = sum(in_canary(user, "v7", share) for user in USERS)
    # binomial sd at n=10,000 is at most 0.005; 4 sd of slack
    assert abs(chosen / len(USERS) - share) < 0.02


def test_when_users_ask_again_then_each_keeps_their_arm() -> None:
    routing = Routing(active="v6", canary="v7", canary_share=0.1)
    first = [routing.choose(user) for user in USERS]
    again = [Routing(active="v6", canary="v7", canary_share=0.1).choose(u) for u in USERS]
    assert first == again
    assert set(first) == {"v6", "v7"}


def test_when_a_new_canary_starts_then_it_draws_a_fresh_sample_of_users() -> None:
    old = {u for u in USERS if in_canary(u, "v7", 0.2)}
    new = {u for u in USERS if in_canary(u, "v8", 0.2)}
    # independent samples overlap in about share^2 of users (400), not share (2000)
    assert 250 < len(old & new) < 550


@pytest.mark.parametrize(
    ("share", "canary", "active", "expected"),
    [
        (0.0, "v7", "v6", {"v6"}),  # share 0: nobody gets the canary
        (1.0, "v7", "v6", {"v7"}),  # share 1: everybody does
        (0.5, None, "v6", {"v6"}),  # no canary: the active version
        (0.5, None, None, {None}),  # nothing promoted yet: the base model
    ],
)
def test_when_share_or_versions_are_extreme_then_routing_follows(share, canary, active, expected):
    routing = Routing(active=active, canary=canary, canary_share=share)
    assert {routing.choose(u) for u in USERS[:500]} == expected


def test_when_counts_are_known_then_z_matches_the_pooled_formula() -> None:
    z, p_value = two_proportion_z(100, 300, 150, 300)
    assert z == pytest.approx(4.140393, abs=1e-5)  # (0.5 - 0.3333) / sqrt(p(1-p)(2/300))
    assert p_value == pytest.approx(3.47e-5, rel=0.01)
    assert two_proportion_z(150, 300, 100, 300)[0] == pytest.approx(-4.140393, abs=1e-5)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ((0, 0, 5, 10), (0.0, 1.0)),  # an empty arm: no evidence
        ((0, 50, 0, 50), (0.0, 1.0)),  # nobody accepts anything: no variance
        ((50, 50, 50, 50), (0.0, 1.0)),  # everybody accepts everything
    ],
)
def test_when_counts_are_degenerate_then_no_evidence(counts, expected) -> None:
    assert two_proportion_z(*counts) == expected


def arm(version, shown, accepted):
    return Arm(version, f"gristmill-base@abc+{version}" if version else "base", shown, accepted)


@pytest.mark.parametrize(
    ("canary", "active", "confidence", "min_shown", "action"),
    [
        ((300, 150), (300, 100), 0.95, 200, "promote"),  # z=+4.1: clearly better
        ((300, 100), (300, 150), 0.95, 200, "rollback"),  # z=-4.1: clearly worse
        ((300, 105), (300, 100), 0.95, 200, "wait"),  # z=+0.4: no difference yet
        ((150, 120), (300, 30), 0.95, 200, "wait"),  # huge gap, but the canary arm is short
        ((300, 150), (199, 10), 0.95, 200, "wait"),  # the active arm is short
        ((400, 127), (400, 96), 0.95, 200, "promote"),  # z=+2.44 passes 1.96 ...
        ((400, 127), (400, 96), 0.99, 200, "wait"),  # ... but not 2.576
        ((400, 96), (400, 127), 0.95, 200, "rollback"),  # z=-2.44
        ((20, 18), (20, 2), 0.95, 20, "promote"),  # a low minimum allows a quick call
    ],
)
def test_when_counts_are_constructed_then_the_decision_follows_the_test(
    canary, active, confidence, min_shown, action
) -> None:
    report = decide(
        arm("v7", *canary), arm("v6", *active), confidence=confidence, min_shown=min_shown
    )
    assert report.action == action, report.reason
    assert report.critical_z == pytest.approx(critical_z(confidence))
    if min(canary[0], active[0]) >= min_shown:
        assert report.z is not None and report.p_value is not None
    else:
        assert report.z is None and "collecting" in report.reason


def test_when_confidence_is_95_percent_then_critical_z_is_1_96() -> None:
    assert critical_z(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert critical_z(0.99) == pytest.approx(2.575829, abs=1e-6)


def test_when_report_is_serialised_then_it_carries_both_arms_and_the_statistic() -> None:
    doc = decide(arm("v7", 300, 150), arm(None, 300, 100)).to_json()
    assert doc["canary"] == {
        "version": "v7",
        "model_version": "gristmill-base@abc+v7",
        "shown": 300,
        "accepted": 150,
        "acceptance": 0.5,
    }
    assert doc["active"]["version"] is None and doc["active"]["acceptance"] == pytest.approx(1 / 3)
    assert doc["z"] == pytest.approx(4.140393, abs=1e-5) and doc["action"] == "promote"
