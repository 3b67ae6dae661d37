"""Canary analysis: is the canary version's acceptance different from the active one's?

Each arm is the suggestions served since the canary started, by the model_version the router
records for it (``<base>@<hash>+v3``; the active arm may be the base model). Shown means a
shown or accepted event; acceptance = accepted / shown, as in the analytics.

The test is the pooled two-proportion z-test::

    p = (a_c + a_a) / (n_c + n_a)
    z = (a_c/n_c - a_a/n_a) / sqrt(p (1 - p) (1/n_c + 1/n_a))

two-sided at ``confidence`` (critical |z| = Phi^-1(1 - (1 - confidence) / 2), 1.96 at 0.95),
and only once both arms have at least ``min_shown`` shown suggestions. Significantly better:
promote the canary to active. Significantly worse: auto-rollback (retire the canary). Otherwise
keep collecting. Each decision goes through the registry and into the audit log with the
numbers, under the actor ``gristmill:canary``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from statistics import NormalDist
from typing import Any, Literal

from feedback_store import FeedbackStore
from gateway.routing import ModelRouter
from trainer import ModelRegistry
from trainer.errors import InvalidTransitionError

__all__ = ["ACTOR", "Arm", "CanaryAnalyzer", "CanaryReport", "decide", "two_proportion_z"]

log = logging.getLogger("gristmill")

ACTOR = "gristmill:canary"
Action = Literal["promote", "rollback", "wait", "none"]


@dataclass(frozen=True, slots=True)
class Arm:
    """One side of the comparison."""

    version: str | None  # registry version id; None = the base model
    model_version: str  # what its suggestions record
    shown: int
    accepted: int

    @property
    def acceptance(self) -> float:
        return self.accepted / self.shown if self.shown else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "acceptance": round(self.acceptance, 6)}


@dataclass(frozen=True, slots=True)
class CanaryReport:
    """The numbers and what they call for; ``applied`` once the decision was carried out."""

    action: Action
    reason: str
    canary: Arm | None
    active: Arm | None
    z: float | None
    p_value: float | None
    critical_z: float
    confidence: float
    min_shown: int
    since: str | None = None
    applied: bool = False
    event: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "canary": self.canary.to_json() if self.canary else None,
            "active": self.active.to_json() if self.active else None,
            "z": None if self.z is None else round(self.z, 6),
            "p_value": None if self.p_value is None else round(self.p_value, 8),
            "critical_z": round(self.critical_z, 6),
            "confidence": self.confidence,
            "min_shown": self.min_shown,
            "since": self.since,
            "applied": self.applied,
            "event": self.event,
        }


def two_proportion_z(
    accepted_a: int, shown_a: int, accepted_b: int, shown_b: int
) -> tuple[float, float]:
    """(z, two-sided p-value) for ``b`` against ``a``; z > 0 when b's rate is higher.
    (0, 1) when either arm is empty or the pooled rate is 0 or 1 (no evidence either way)."""
    if shown_a <= 0 or shown_b <= 0:
        return 0.0, 1.0
    pooled = (accepted_a + accepted_b) / (shown_a + shown_b)
    variance = pooled * (1 - pooled) * (1 / shown_a + 1 / shown_b)
    if variance <= 0:
        return 0.0, 1.0
    z = (accepted_b / shown_b - accepted_a / shown_a) / math.sqrt(variance)
    return z, 2 * (1 - NormalDist().cdf(abs(z)))


def critical_z(confidence: float) -> float:
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def decide(
    canary: Arm, active: Arm, *, confidence: float = 0.95, min_shown: int = 200
) -> CanaryReport:
    """What the counts call for (nothing is applied here)."""
    threshold = critical_z(confidence)
    if min(canary.shown, active.shown) < min_shown:
        return CanaryReport(
            "wait",
            f"collecting: {canary.shown} shown for the canary and {active.shown} for the active "
            f"arm; each needs {min_shown}",
            canary, active, None, None, threshold, confidence, min_shown,
        )  # fmt: skip
    z, p_value = two_proportion_z(active.accepted, active.shown, canary.accepted, canary.shown)
    rates = f"acceptance {canary.acceptance:.4f} vs {active.acceptance:.4f}"
    numbers = f"z={z:.3f}, p={p_value:.4g}, critical |z|={threshold:.3f}"
    if z >= threshold:
        action: Action = "promote"
        reason = f"canary significantly better at {confidence:.0%}: {rates} ({numbers})"
    elif z <= -threshold:
        action = "rollback"
        reason = f"canary significantly worse at {confidence:.0%}: {rates} ({numbers})"
    else:
        action = "wait"
        reason = f"no significant difference yet: {rates} ({numbers})"
    return CanaryReport(
        action, reason, canary, active, z, p_value, threshold, confidence, min_shown
    )


@dataclass
class CanaryAnalyzer:
    """Reads per-arm counts from the feedback store and carries out the decision.

    ``audit`` receives each registry event (with the analysis under ``canary_analysis``);
    the gateway passes ``gateway.cli_train.write_audit`` bound to its settings.
    """

    registry: ModelRegistry
    router: ModelRouter
    store: FeedbackStore
    audit: Callable[[dict[str, Any]], None]
    confidence: float = 0.95
    min_shown: int = 200

    async def report(self) -> CanaryReport:
        """The current numbers and decision, without acting."""
        return await asyncio.to_thread(self._report)

    async def run_once(self) -> CanaryReport:
        """Judge the canary and act: promote, roll back (retire) or keep waiting."""
        report = await self.report()
        if report.action not in ("promote", "rollback") or report.canary is None:
            return report
        version = report.canary.version
        assert version is not None
        details = report.to_json()
        try:
            if report.action == "promote":
                event = await asyncio.to_thread(
                    self.registry.promote, version, actor=ACTOR, reason=report.reason
                )
            else:
                event = await asyncio.to_thread(
                    self.registry.retire, version, actor=ACTOR, reason=report.reason
                )
        except InvalidTransitionError as exc:  # someone else moved it meanwhile
            log.info("canary %s already moved: %s", version, exc.detail)
            await self.router.reload(force=True)
            return report
        event = {**event, "decision": f"auto-{report.action}", "canary_analysis": details}
        await asyncio.to_thread(self.audit, event)
        await self.router.reload(force=True)
        log.info("canary %s: auto-%s (%s)", version, report.action, report.reason)
        return CanaryReport(**{**_fields(report), "applied": True, "event": event})

    def _report(self) -> CanaryReport:
        threshold = critical_z(self.confidence)
        canary = self.registry.canary()
        if canary is None:
            return CanaryReport(
                "none", "no canary version", None, None, None, None, threshold,
                self.confidence, self.min_shown,
            )  # fmt: skip
        active = self.registry.active()
        since = _entered_canary(canary.history)
        canary_mv = self.router.model_version(canary.id)
        active_mv = self.router.model_version(active.id if active else None)
        counts = self._counts([canary_mv, active_mv], since)
        arms = [
            Arm(version, mv, *counts.get(mv, (0, 0)))
            for version, mv in ((canary.id, canary_mv), (active.id if active else None, active_mv))
        ]
        report = decide(arms[0], arms[1], confidence=self.confidence, min_shown=self.min_shown)
        return CanaryReport(**{**_fields(report), "since": since})

    def _counts(self, model_versions: list[str], since: str | None) -> dict[str, tuple[int, int]]:
        """(shown, accepted) per model_version over every tenant, since the canary started."""
        where = "model_version IN (?, ?)"
        params: list[Any] = list(model_versions)
        if since is not None:
            where += " AND created_at >= CAST(? AS TIMESTAMPTZ)"
            params.append(datetime.fromisoformat(since))
        result = self.store.catalog().query(
            f"""SELECT model_version,
                       count(*) FILTER (WHERE shown) AS shown,
                       count(*) FILTER (WHERE accepted) AS accepted
                FROM feedback WHERE {where} GROUP BY model_version""",
            params,
            max_rows=None,
        )
        return {str(mv): (int(shown), int(accepted)) for mv, shown, accepted in result.rows}


def _entered_canary(history: list[dict[str, Any]]) -> str | None:
    for entry in reversed(history):
        if entry.get("to_state") == "canary":
            return entry.get("at")
    return None


def _fields(report: CanaryReport) -> dict[str, Any]:
    return {name: getattr(report, name) for name in CanaryReport.__dataclass_fields__}
