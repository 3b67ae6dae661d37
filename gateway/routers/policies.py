"""Redaction policy administration (role security_admin; auditor reads history and audit).

The policy is deployment-wide (per-tenant rules live in its `overrides`); every change goes
through the policy store (validate -> store -> activate -> audit) and the running pool is
hot-reloaded before the PUT answers.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import Principal
from gateway.deps import RuntimeDep, role
from gateway.errors import GatewayError, NotFound, Unprocessable
from redaction import (
    Explanation,
    PolicyError,
    PolicyNotFound,
    RedactionError,
    RedactionPolicy,
    Redactor,
    parse_policy,
)

router = APIRouter(tags=["policies"])

SecurityAdmin = Annotated[Principal, Depends(role("security_admin"))]
Reader = Annotated[Principal, Depends(role("security_admin", "auditor"))]

MAX_SAMPLES = 100
MAX_REPLAY = 1000
STORED_NOTE = (
    "Stored records were already redacted by the policy active when they were written, so "
    "this counts only what the candidate finds beyond that in the stored (redacted) text; "
    "anything the earlier policy replaced is not visible to either policy."
)


# --- models --------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyText(BaseModel):
    version: str = Field(description="Content hash of the policy's meaning.")
    text: str = Field(description="The policy YAML as accepted.")
    activated_at: str | None = None
    actor: str | None = None
    reason: str | None = None


class PutPolicy(_Body):
    policy: str = Field(min_length=1, description="The complete policy YAML text.")
    reason: str = Field(min_length=1, max_length=2000, description="Why (kept in the audit log).")


class PutResult(BaseModel):
    version: str
    previous: str | None
    changed: bool = Field(description="False when the policy means the same as the active one.")


class ValidateBody(_Body):
    policy: str = Field(min_length=1, description="Policy YAML text to check.")


class FieldProblem(BaseModel):
    loc: str
    line: int | None
    msg: str


class ValidateResult(BaseModel):
    valid: bool
    version: str | None = None
    errors: list[FieldProblem] = Field(default_factory=list)


class ActivationOut(BaseModel):
    time: str
    actor: str
    reason: str
    version: str
    previous: str | None


class HistoryOut(BaseModel):
    active: str | None
    activations: list[ActivationOut]


class DiffOut(BaseModel):
    from_version: str
    to_version: str
    summary: dict[str, Any]
    unified: str


class Sample(_Body):
    text: str = Field(description="Text to run the candidate policy on.")
    field: str = Field("prefix", description="Record field the text stands for.")
    file_path: str | None = Field(None, description="Path rules and code/prose syntax use it.")
    repo: str | None = Field(None, description="owner/name: opt-out list and overrides.")
    tenant: str | None = Field(None, description="Tenant for overrides; default the caller's.")


class DryRunBody(_Body):
    policy: str | None = Field(
        None, description="Candidate policy YAML; default: the active policy."
    )
    samples: list[Sample] = Field(default_factory=list, max_length=MAX_SAMPLES)
    replay_last: int = Field(
        0,
        ge=0,
        le=MAX_REPLAY,
        description="Also replay the caller's tenant's last N stored suggestions.",
    )


class FindingOut(BaseModel):
    field: str
    entity: str
    start: int
    end: int
    score: float
    recognizer: str
    action: str


class SampleResult(BaseModel):
    redacted: str | None = Field(description="The text as it would be stored (None: dropped).")
    dropped: str | None = Field(description="opt_out_repo | path_rule | entity:<NAME> | None")
    overrides: list[str]
    findings: list[FindingOut]


class ReplayResult(BaseModel):
    records: int = Field(description="Stored suggestions replayed.")
    active_version: str
    candidate_version: str
    additional_findings: dict[str, int] = Field(
        description="Per entity: findings of the candidate that the active policy does not "
        "make on the same stored text."
    )
    would_drop: dict[str, int] = Field(
        description="Records the candidate would not store, by reason (the active one does)."
    )
    note: str = STORED_NOTE


class DryRunResult(BaseModel):
    version: str
    samples: list[SampleResult]
    replay: ReplayResult | None = None


class AuditEntryOut(BaseModel):
    seq: int
    time: str
    actor: str
    action: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class VerifyOut(BaseModel):
    ok: bool
    entries: int
    first_bad_seq: int | None
    first_bad_line: int | None
    reason: str | None


class AuditOut(BaseModel):
    entries: list[AuditEntryOut]
    verify: VerifyOut


# --- helpers -------------------------------------------------------------------------------


def actor_of(principal: Principal) -> str:
    return f"api:{principal.tenant}/{principal.user} ({principal.token_id})"


def _unprocessable(exc: PolicyError) -> Unprocessable:
    return Unprocessable(str(exc), errors=[dict(e) for e in exc.errors])


def _parse(text: str) -> RedactionPolicy:
    try:
        return parse_policy(text, source="<request>")
    except PolicyError as exc:
        raise _unprocessable(exc) from exc


def _not_found(exc: PolicyNotFound) -> NotFound:
    return NotFound(str(exc))


def _redactor(runtime: Any, policy: RedactionPolicy) -> Redactor:
    try:
        return Redactor(policy, key=runtime.key)
    except RedactionError as exc:
        error = GatewayError(f"cannot build a redactor for this policy: {exc}")
        error.status = getattr(exc, "http_status", 500)
        raise error from exc


# --- routes --------------------------------------------------------------------------------


@router.get(
    "/v1/policies/redaction",
    response_model=PolicyText,
    summary="The active redaction policy (YAML) and its version",
)
async def get_policy(_: Reader, runtime: RuntimeDep) -> PolicyText:
    store = runtime.policies
    version = await asyncio.to_thread(store.active_version)
    if version is None:
        raise NotFound("no active policy")
    text = await asyncio.to_thread(store.text, version)
    history = await asyncio.to_thread(store.history, 1)
    last = history[0] if history else None
    return PolicyText(
        version=version,
        text=text,
        activated_at=last.time if last else None,
        actor=last.actor if last else None,
        reason=last.reason if last else None,
    )


@router.put(
    "/v1/policies/redaction",
    response_model=PutResult,
    summary="Validate, store and activate a policy; audited with who and why",
    responses={422: {"description": "The policy is refused; `errors` name field and line."}},
)
async def put_policy(body: PutPolicy, principal: SecurityAdmin, runtime: RuntimeDep) -> PutResult:
    # The engine must build for this policy (e.g. its NER model is installed) before it
    # becomes active: a stored policy the pool cannot load would leave store and pool apart.
    await asyncio.to_thread(_redactor, runtime, _parse(body.policy))
    try:
        result = await asyncio.to_thread(
            runtime.policies.apply,
            body.policy,
            actor=actor_of(principal),
            reason=body.reason,
            source="<api>",
        )
    except PolicyError as exc:
        raise _unprocessable(exc) from exc
    await runtime.reload_policy()
    return PutResult(
        version=result.policy.version, previous=result.previous, changed=result.changed
    )


@router.post(
    "/v1/policies/validate",
    response_model=ValidateResult,
    summary="Check a policy without storing it (200 with valid=false and field/line errors)",
)
async def validate_policy(body: ValidateBody, _: SecurityAdmin) -> ValidateResult:
    try:
        policy = parse_policy(body.policy, source="<request>")
    except PolicyError as exc:
        return ValidateResult(valid=False, errors=[FieldProblem(**e) for e in exc.errors])
    return ValidateResult(valid=True, version=policy.version)


@router.get(
    "/v1/policies/history",
    response_model=HistoryOut,
    summary="Activations of the redaction policy, newest first",
)
async def policy_history(
    _: Reader, runtime: RuntimeDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> HistoryOut:
    store = runtime.policies
    activations = await asyncio.to_thread(store.history, limit)
    return HistoryOut(
        active=await asyncio.to_thread(store.active_version),
        activations=[ActivationOut(**a.__dict__) for a in activations],
    )


@router.get(
    "/v1/policies/diff",
    response_model=DiffOut,
    summary="What changed between two stored versions (structured summary + unified diff)",
)
async def policy_diff(
    _: Reader,
    runtime: RuntimeDep,
    from_: Annotated[str, Query(alias="from", description="Older version.")],
    to: Annotated[str | None, Query(description="Newer version; default the active one.")] = None,
) -> DiffOut:
    store = runtime.policies
    target = to or await asyncio.to_thread(store.active_version)
    if target is None:
        raise NotFound("no active policy")
    try:
        diff = await asyncio.to_thread(store.diff, from_, target)
    except PolicyNotFound as exc:
        raise _not_found(exc) from exc
    return DiffOut(**diff.to_dict())


@router.post(
    "/v1/policies/dry-run",
    response_model=DryRunResult,
    summary="Run a candidate policy on sample texts and/or the last N stored suggestions",
    responses={422: {"description": "The candidate policy is refused."}},
)
async def dry_run(body: DryRunBody, principal: SecurityAdmin, runtime: RuntimeDep) -> DryRunResult:
    if not body.samples and not body.replay_last:
        raise Unprocessable(
            "give samples, replay_last or both",
            errors=[{"loc": ["body", "samples"], "msg": "nothing to dry-run"}],
        )
    active = runtime.pool.policy
    candidate = _parse(body.policy) if body.policy is not None else active
    timeout_s = runtime.settings.redaction_timeout_s
    redactor = await asyncio.to_thread(_redactor, runtime, candidate)

    def run_samples() -> list[SampleResult]:
        out = []
        for sample in body.samples:
            explanation = redactor.explain(
                {sample.field: sample.text},
                file_path=sample.file_path,
                repo=sample.repo,
                tenant=sample.tenant or principal.tenant,
                timeout_s=timeout_s,
            )
            out.append(_sample_result(explanation, sample.field))
        return out

    try:
        samples = await asyncio.to_thread(run_samples)
        replay = None
        if body.replay_last:
            replay = await _replay(runtime, principal, candidate, redactor, body.replay_last)
    except PolicyError as exc:
        raise _unprocessable(exc) from exc
    return DryRunResult(version=candidate.version, samples=samples, replay=replay)


def _sample_result(explanation: Explanation, field: str) -> SampleResult:
    return SampleResult(
        redacted=explanation.fields.get(field) if explanation.dropped is None else None,
        dropped=explanation.dropped,
        overrides=explanation.overrides,
        findings=[FindingOut(**f.__dict__) for f in explanation.findings],
    )


async def _replay(
    runtime: Any,
    principal: Principal,
    candidate: RedactionPolicy,
    candidate_redactor: Redactor,
    n: int,
) -> ReplayResult:
    from feedback_store import StoreError

    active = runtime.pool.policy
    sql = (
        "SELECT prefix, suffix, completion, file_path, repo FROM suggestions "
        "WHERE tenant = $tenant ORDER BY created_at DESC LIMIT $n"
    )
    try:
        result = await asyncio.to_thread(
            runtime.store.catalog().query, sql, {"tenant": principal.tenant, "n": n}
        )
    except StoreError as exc:
        if "suggestions" in str(exc):  # nothing landed yet: no table to read
            rows: list[tuple] = []
        else:
            raise
    else:
        rows = result.rows
    active_redactor = (
        candidate_redactor
        if active.version == candidate.version
        else await asyncio.to_thread(_redactor, runtime, active)
    )
    timeout_s = runtime.settings.redaction_timeout_s

    def compare() -> tuple[Counter[str], Counter[str]]:
        extra: Counter[str] = Counter()
        drops: Counter[str] = Counter()
        for prefix, suffix, completion, file_path, repo in rows:
            fields = {"prefix": prefix, "suffix": suffix, "completion": completion}
            where = {"file_path": file_path, "repo": repo, "tenant": principal.tenant}
            new = candidate_redactor.explain(fields, timeout_s=timeout_s, **where)
            old = active_redactor.explain(fields, timeout_s=timeout_s, **where)
            if new.dropped and not old.dropped:
                drops[new.dropped.split(":", 1)[0]] += 1
            seen = {(f.field, f.start, f.end, f.entity) for f in old.findings}
            for f in new.findings:
                if (f.field, f.start, f.end, f.entity) not in seen:
                    extra[f.entity] += 1
        return extra, drops

    extra, drops = await asyncio.to_thread(compare)
    return ReplayResult(
        records=len(rows),
        active_version=active.version,
        candidate_version=candidate.version,
        additional_findings=dict(sorted(extra.items())),
        would_drop=dict(sorted(drops.items())),
    )


@router.get(
    "/v1/audit",
    response_model=AuditOut,
    summary="The audit log, newest first, with the result of verifying its hash chain",
)
async def audit_log(
    _: Reader,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    action: Annotated[
        str | None, Query(description="Only actions starting with this, e.g. policy.")
    ] = None,
) -> AuditOut:
    audit = runtime.audit
    entries = await asyncio.to_thread(audit.tail, limit, action_prefix=action)
    verification = await asyncio.to_thread(audit.verify)
    return AuditOut(
        entries=[AuditEntryOut(**e.to_dict()) for e in entries],
        verify=VerifyOut(**verification.to_dict()),
    )


@router.get(
    "/v1/audit/verify",
    response_model=VerifyOut,
    summary="Verify the audit log's hash chain; names the first broken entry",
)
async def audit_verify(_: Reader, runtime: RuntimeDep) -> VerifyOut:
    verification = await asyncio.to_thread(runtime.audit.verify)
    return VerifyOut(**verification.to_dict())
