"""Dataset snapshots: stored feedback -> TRL-ready Parquet sets and a card, by the signal rules.

All heavy lifting is DuckDB SQL over the Parquet store (feedback_store.FeedbackDB), with the
survival matcher compiled (feedback_store._native; SQL and Python without a C compiler). The
steps, each a table:

1. ``b_sugg``: suggestions created in [since, until) (duplicates dropped, earliest landing
   wins); Continue's dev-data records inherit the template of the request the gateway served
   for them (same user, prefix, suffix and completion), since Continue renders its prompt
   through our API;
2. ``b_facts``: per suggestion, what its events (before ``until``) say; ``b_req``: one row per
   request per file, in time order (the observations of the inference);
3. ``b_state``: outcome facts, visible time, exclusions that need no inference;
4. inference: for each suggestion that needs it, the latest later request of the same user and
   file within each survival window, the longest first, until one shows the insertion point
   completely; matched as the module docstring of feedback_store.feedback_queries says;
5. ``b_out``: one outcome per suggestion (see policies/signals.yaml), or an exclusion reason;
6. ``b_ctx``: the prompt each decided request was served with, its keyed context hash, dedup
   and the time split; ``b_kctx`` numbers the kept contexts in output order (crank);
   ``b_rows``: the rows of each set, rule by rule in context order, without duplicates;
7. one pass over slices of contexts gathers their rows and writes every set and split, each
   with its lineage file beside it (row i explains row i), then the card.

Prompts are rendered with the recorded template from the stored (redacted) prefix and suffix,
the exact text the backend rendered (the embedded backend may have cut the prefix to fit its
context window; training truncates to its own max_length). For templates without FIM tokens
(plain-v1) the prompt ends in code, and a prompt ending in whitespace or half a word tokenizes
differently inside the full text (TRAINING_NOTES trap 8): there the trailing whitespace and
word characters move from the prompt to the front of every completion, so prompt + completion
is still exactly the served text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feedback_store import (
    TEMPLATE_FAMILIES,
    FeedbackDB,
    MatchParams,
    StoreError,
    _native,
    match_later_requests,
)

from .errors import BuildFailed, BuildInvalid
from .rules import SignalRules

__all__ = [
    "LINEAGE_SCHEMA",
    "BuildConfig",
    "PROMPT_SHIFT_PATTERN",
    "SETS",
    "SPLITS",
    "Snapshot",
    "build_snapshot",
    "prompt_and_shift",
]

SPLITS = ("train", "eval")
SETS: dict[str, pa.Schema] = {
    "pairs": pa.schema(
        [("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())]
    ),
    "labels": pa.schema(
        [("prompt", pa.string()), ("completion", pa.string()), ("label", pa.bool_())]
    ),
    "rewards": pa.schema(
        [("prompt", pa.string()), ("completion", pa.string()), ("reward", pa.float64())]
    ),
    "sft": pa.schema([("prompt", pa.string()), ("completion", pa.string())]),
}
_SET_FORMATS = {
    "pairs": "prompt/chosen/rejected (DPO, ORPO, reward models)",
    "labels": "prompt/completion/label (KTO, unpaired preference)",
    "rewards": "prompt/completion/reward (reward-weighted or offline RL)",
    "sft": "prompt/completion (SFT)",
}
LINEAGE_SCHEMA = pa.schema(
    [
        ("set", pa.string()),
        ("split", pa.string()),
        ("row", pa.int64()),
        ("tenant", pa.string()),
        ("suggestion_id", pa.string()),
        ("other_suggestion_id", pa.string()),
        ("request_id", pa.string()),
        ("rule", pa.string()),
        ("weight", pa.float64()),
        ("context_hash", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("language", pa.string()),
        ("model_version", pa.string()),
        ("policy_version", pa.string()),
        ("evidence", pa.string()),
        ("similarity", pa.float64()),
        ("elapsed_s", pa.float64()),
    ]
)

# Trailing whitespace and word characters of a prompt without FIM tokens move to the
# completion (same regex in Python and DuckDB's RE2: leftmost match reaching the end).
PROMPT_SHIFT_PATTERN = r"[ \t\r\n\f\v]*[A-Za-z0-9_]*$"
_SHIFT_RE = re.compile(PROMPT_SHIFT_PATTERN.removesuffix("$") + r"\Z")
_PLACEHOLDER_RE = r"<[A-Z][A-Z0-9_]*(?:_[0-9]+|:[0-9a-f]+)>"
# DuckDB's memory limit by default. The build's peak is about this plus 0.5 GB (the matcher's
# and the Parquet writers' buffers): 3.4 GB at 10M events, under the 4 GB it may take; at 2GB
# the tables spill 2.5 GB to disk and the build takes 10% longer.
DEFAULT_MEMORY_LIMIT = "3GB"
# Contexts whose prompts are rendered at once while writing (about 1.5 KB each).
_PROMPT_SLICE = 50_000
# Rows joined to their stored texts at once (see _Builder._file_chunks).
_TEXT_CHUNK = 400_000
# A suggestion's integer key: its file's number times this, plus its row in the file.
_SK_FILE = 4_294_967_296
_OUTCOME_STATUSES = (
    "accepted_kept",
    "accepted_unobserved",
    "accepted_edited",
    "accepted_deleted",
    "inferred_kept",
    "dismissed",
    "dismissed_handwritten",
)
# Every rule a row can come from (see emit_rows), sorted.
_RULES = tuple(
    sorted(
        {
            *_OUTCOME_STATUSES,
            *(f"partial_{s}" for s in _OUTCOME_STATUSES if s.startswith("accepted")),
            "handwritten_text",
            "edited_text",
            "choice_over_others",
        }
    )
)


def prompt_and_shift(template: str, rendered: str) -> tuple[str, str]:
    """(training prompt, text moved to the front of each completion) for a rendered prompt."""
    if TEMPLATE_FAMILIES.get(template) != "plain":
        return rendered, ""
    match = _SHIFT_RE.search(rendered)
    shift = match.group(0) if match else ""
    if shift == rendered:
        return rendered, ""
    return rendered[: len(rendered) - len(shift)], shift


@dataclass(frozen=True)
class BuildConfig:
    """One snapshot build."""

    parquet_dir: Path = field(metadata={"help": "The store's Parquet directory."})
    datasets_dir: Path = field(metadata={"help": "Where snapshots live (data_dir/datasets)."})
    since: datetime = field(metadata={"help": "Suggestions created at or after (tz-aware)."})
    until: datetime = field(
        metadata={
            "help": "Suggestions created before; also the 'now' of the build: later "
            "events and requests are ignored, which keeps a build reproducible."
        }
    )
    rules: SignalRules = field(metadata={"help": "Validated signal rules."})
    context_key: bytes = field(
        repr=False, metadata={"help": "Secret for the keyed context hash (dedup, leakage)."}
    )
    tenants: tuple[str, ...] | None = field(
        default=None, metadata={"help": "Only these tenants (None: every tenant)."}
    )
    opted_out_repos: tuple[str, ...] = field(
        default=(),
        metadata={"help": "Extra opted-out repositories (e.g. the redaction policy's)."},
    )
    threads: int | None = field(default=None, metadata={"help": "DuckDB threads (None: all)."})
    memory_limit: str | None = field(
        default=DEFAULT_MEMORY_LIMIT,
        metadata={"help": "DuckDB memory limit; beyond it tables spill to disk."},
    )
    row_group_rows: int = field(default=20_000, metadata={"help": "Rows per Parquet row group."})


@dataclass(frozen=True)
class Snapshot:
    id: str
    path: Path
    card: dict[str, Any]
    created: bool  # False when an identical snapshot already existed


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ts(value: datetime) -> str:
    return f"TIMESTAMPTZ {_q(value.astimezone(UTC).isoformat())}"


def _glob_regex(pattern: str) -> str:
    """A case-insensitive-by-lowering glob as an RE2 regex (* any run, ? one character)."""
    out = []
    for piece in re.split(r"([*?])", pattern.strip().lower()):
        if piece == "*":
            out.append(".*")
        elif piece == "?":
            out.append(".")
        elif piece:
            out.append(r"\Q" + piece + r"\E")
    return "".join(out)


def build_snapshot(
    config: BuildConfig, *, progress: Callable[[str], None] | None = None
) -> Snapshot:
    """Build (or find) the snapshot for these inputs. Snapshots are immutable: the same store
    content, range and rules give the same id and byte-identical set files."""
    for name, value in (("since", config.since), ("until", config.until)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise BuildInvalid(f"{name} must be a timezone-aware datetime")
    if config.since >= config.until:
        raise BuildInvalid("since must be before until")
    if config.tenants is not None and not config.tenants:
        raise BuildInvalid("tenants: give at least one tenant, or None for all")
    if not config.context_key:
        raise BuildInvalid("context_key must not be empty")
    if config.row_group_rows < 1:
        raise BuildInvalid("row_group_rows must be positive")
    config.datasets_dir.mkdir(parents=True, exist_ok=True)
    work = config.datasets_dir / f".build-{secrets.token_hex(6)}"
    work.mkdir()
    say = progress or (lambda _: None)
    try:
        try:
            with FeedbackDB(
                config.parquet_dir,
                threads=config.threads,
                memory_limit=config.memory_limit,
                temp_dir=work / ".spill",
                keep_allocated=config.memory_limit is not None,
            ) as db:
                card = _Builder(db, config, work, say).run()
        except StoreError as exc:
            raise BuildFailed(f"dataset build failed in DuckDB: {exc}") from exc
        except OSError as exc:
            raise BuildFailed(f"dataset build failed: {exc.strerror}: {exc.filename}") from exc
        shutil.rmtree(work / ".spill", ignore_errors=True)
        return _commit(config.datasets_dir, work, card)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _commit(datasets_dir: Path, work: Path, card: dict[str, Any]) -> Snapshot:
    snapshot_id = card["id"]
    final = datasets_dir / snapshot_id
    for path in work.rglob("*.parquet"):
        path.chmod(0o444)
    (work / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (work / "card.json").chmod(0o444)
    if final.exists():
        existing = json.loads((final / "card.json").read_text())
        if existing.get("files") == card["files"]:
            return Snapshot(snapshot_id, final, existing, created=False)
        raise BuildFailed(f"snapshot {snapshot_id} exists with other content")
    _fsync_tree(work)
    try:
        os.rename(work, final)
    except OSError as exc:  # a concurrent identical build won the rename
        if final.exists():
            existing = json.loads((final / "card.json").read_text())
            return Snapshot(snapshot_id, final, existing, created=False)
        raise BuildFailed(f"cannot publish snapshot {snapshot_id}: {exc.strerror}") from exc
    fd = os.open(datasets_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return Snapshot(snapshot_id, final, card, created=True)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class _Builder:
    def __init__(
        self, db: FeedbackDB, config: BuildConfig, work: Path, say: Callable[[str], None]
    ) -> None:
        self.db = db
        self.config = config
        self.work = work
        self.say = say
        self.doc = config.rules.document
        self.longest = config.rules.longest_window_s
        self.since = _ts(config.since)
        self.until = _ts(config.until)
        self.timings: dict[str, float] = {}
        # Filled while writing: rows per (set, split, rule, label), distinct lineage values.
        self.row_counts: dict[tuple[str, str, str, bool | None], int] = {}
        self.distinct: dict[str, set[str]] = {
            name: set() for name in ("tenant", "language", "model_version", "policy_version")
        }
        # Filled by the tallies (tally_inference, tally_contexts, tally_outcomes), before the
        # write.
        self.context_exclusions: list[tuple[Any, ...]] = []
        self.outcomes: dict[str, int] = {}
        self.exclusions: dict[str, int] = {}
        self.evidence: dict[str, int] = {}
        self.inference_methods: dict[str, int] = {}
        self.split_contexts: dict[str, int] = {}
        self.considered = 0
        self.used: tuple[Any, ...] = (None, None, 0)
        self.cutoff: int | None = None

    def step(self, name: str, *statements: str) -> None:
        started = time.perf_counter()
        for sql in statements:
            self.db.execute(sql)
        self.timings[name] = round(time.perf_counter() - started, 3)
        self.say(f"{name}: {self.timings[name]:.1f} s")

    def drop(self, *tables: str) -> None:
        """Free what later steps no longer read (less to spill)."""
        for table in tables:
            self.db.execute(f"DROP TABLE IF EXISTS {table}")

    def run(self) -> dict[str, Any]:
        self.load_suggestions()
        self.load_facts()
        self.load_state()
        self.drop("b_sugg", "b_facts", "b_tclients", "b_twin_cand", "b_twin")
        self.infer()
        self.drop("b_cand", "b_ctext", "b_obs", "b_chain", "b_match", "b_req")
        self.decide()
        self.tally_inference()
        self.drop("b_state", "b_evidence")
        self.contexts()
        self.tally_contexts()
        self.drop("b_ctx", "b_cut")
        self.emit_rows()
        self.tally_outcomes()
        files = self.write()
        return self.card(files)

    # -- 1. suggestions -----------------------------------------------------------------------

    def load_suggestions(self) -> None:
        tenants = ""
        if self.config.tenants is not None:
            tenants = f"AND tenant IN ({', '.join(_q(t) for t in self.config.tenants)})"
        text = "prefix || coalesce(suffix, '') || completion"
        self.step(
            "suggestions",
            # Files by a small integer, in landing order (batch, then path); b_raw is the store
            # with that number, for joins back to the text of a row.
            """
            CREATE TABLE b_files AS
            SELECT _file AS path, row_number() OVER (ORDER BY min(_batch), _file) AS fid
            FROM raw_suggestions GROUP BY _file
            """,
            """
            CREATE VIEW b_raw AS
            SELECT r.*, f.fid FROM raw_suggestions r JOIN b_files f ON f.path = r._file
            """,
            # The values of the few-valued columns, in one pass over the store.
            "CREATE TABLE b_values AS SELECT DISTINCT "
            + ", ".join(f"{value} AS {name}" for name, value, _ in _STORE_ENUMS)
            + " FROM raw_suggestions",
            *[
                f"CREATE TYPE gm_s_{name} AS ENUM (SELECT DISTINCT v FROM (SELECT {name} AS v "
                f"FROM b_values{extra}) WHERE v IS NOT NULL ORDER BY 1)"
                for name, _, extra in _STORE_ENUMS
            ],
            "DROP TABLE b_values",
            f"""
            CREATE TABLE b_sugg AS
            SELECT tenant::gm_s_tenant AS tenant, suggestion_id, request_id, user_hash, repo,
                source::gm_s_source AS source, language::gm_s_language AS language,
                file_path, choice_index, model_version::gm_s_model_version AS model_version,
                policy_version::gm_s_policy_version AS policy_version, created_at,
                prompt_template::gm_s_prompt_template AS prompt_template,
                coalesce(client_name, '')::gm_s_client_name AS client_name, completion,
                fid, _row, fid::BIGINT * {_SK_FILE} + _row AS sk,
                -- The request and file stream keys (see requests), hashed once here.
                hash(tenant::gm_s_tenant, request_id) AS rk,
                CASE WHEN file_path IS NOT NULL
                    THEN hash(tenant::gm_s_tenant, user_hash, file_path) END AS stream,
                CASE WHEN source IN ('continue', 'openai') THEN substr(prefix, -64) END AS tail64,
                CASE WHEN source IN ('continue', 'openai')
                    THEN hash(prefix, coalesce(suffix, '')) END AS text_hash,
                CASE WHEN cardinality(redaction_counts) > 0 THEN
                    (length({text}) - length(regexp_replace({text}, '{_PLACEHOLDER_RE}', '',
                    'g')))::DOUBLE / greatest(length({text}), 1)
                ELSE 0.0 END AS redacted_share
            FROM b_raw
            WHERE created_at >= {self.since} AND created_at < {self.until} {tenants}
            """,
            # A duplicate that slipped through landing: the earliest landed copy wins. Found by
            # a hash of the key (cheaper to group than the strings), ranked by the key itself.
            """
            DELETE FROM b_sugg USING (
                SELECT fid, _row FROM (
                    SELECT fid, _row, row_number() OVER (
                        PARTITION BY tenant, suggestion_id ORDER BY fid, _row) AS rn
                    FROM b_sugg WHERE hash(tenant, suggestion_id) IN (
                        SELECT hash(tenant, suggestion_id) AS h FROM b_sugg
                        GROUP BY h HAVING count(*) > 1
                    )
                ) WHERE rn > 1
            ) d WHERE b_sugg.fid = d.fid AND b_sugg._row = d._row
            """,
        )
        # Continue's dev-data record of a completion the gateway served: same user, prompt
        # and completion, served first. It takes the served request's template.
        self.step(
            "continue_twins",
            f"""
            CREATE TABLE b_twin_cand AS
            SELECT c.tenant, c.suggestion_id AS alias_id, c.fid AS a_file, c._row AS a_row,
                arg_max(s.fid, (s.created_at, s.suggestion_id)) AS t_file,
                arg_max(s._row, (s.created_at, s.suggestion_id)) AS t_row,
                arg_max(s.prompt_template, (s.created_at, s.suggestion_id)) AS template,
                arg_max(s.text_hash, (s.created_at, s.suggestion_id)) = c.text_hash AS same_text
            FROM b_sugg c JOIN b_sugg s
              ON s.tenant = c.tenant AND s.user_hash = c.user_hash
             AND s.completion = c.completion AND s.tail64 = c.tail64
             AND s.source = 'openai' AND s.prompt_template IS NOT NULL
             AND s.created_at <= c.created_at
             AND s.created_at >= c.created_at - to_microseconds({int(self.longest * 1e6)})
            WHERE c.source = 'continue' AND c.prompt_template IS NULL
            GROUP BY c.tenant, c.suggestion_id, c.fid, c._row, c.text_hash
            """,
            # Same prompt: a 64-bit hash of prefix and suffix (taken while reading them anyway).
            """
            CREATE TABLE b_twin AS
            SELECT tenant, alias_id, template FROM b_twin_cand WHERE same_text
            """,
            """
            UPDATE b_sugg SET prompt_template = t.template FROM b_twin t
            WHERE b_sugg.tenant = t.tenant AND b_sugg.suggestion_id = t.alias_id
            """,
            "ALTER TABLE b_sugg DROP COLUMN tail64",
            "ALTER TABLE b_sugg DROP COLUMN text_hash",
        )

    # -- 2. events and requests ---------------------------------------------------------------

    def load_facts(self) -> None:
        longest_us = int(self.longest * 1e6)
        order = "(ts, event_id, coalesce(accepted_text, ''))"
        self.step(
            "events",
            f"""
            CREATE TABLE b_facts AS
            -- Each event finds its suggestion once (a join on the id strings, materialized for
            -- both uses below; joining twice cost 0.6 s more at 10M events). The texts are
            -- aggregated apart, from the few accepted, edited and survived events only.
            WITH ej AS MATERIALIZED (
                SELECT s.sk, e.type, e.ts, e.elapsed_ms, e.source, e.event_id, e.accept_kind,
                    e.accepted_text, e.final_text, e.window_s,
                    epoch_us(e.ts) - epoch_us(s.created_at) AS since_created_us
                FROM raw_events e JOIN b_sugg s
                  ON s.tenant = e.tenant AND s.suggestion_id = e.suggestion_id
                WHERE e.ts < {self.until}
            ),
            ev AS (SELECT sk, type, ts, elapsed_ms, source FROM ej),
            texts AS (
                SELECT sk, type, ts, event_id, accept_kind, accepted_text, final_text, window_s,
                    since_created_us
                FROM ej WHERE type IN ('accepted', 'edited', 'survived')
            ),
            flags AS (
                SELECT sk,
                    bool_or(type = 'shown') AS shown,
                    min(ts) FILTER (WHERE type = 'shown') AS shown_at,
                    bool_or(type = 'shown' AND source IN ('native', 'tabby')) AS shown_timed,
                    bool_or(type IN ('accepted', 'edited', 'survived')) AS accepted,
                    min(ts) FILTER (WHERE type = 'accepted') AS accepted_at,
                    bool_or(type = 'rejected') AS rejected,
                    min(ts) FILTER (WHERE type = 'rejected') AS rejected_at,
                    max(elapsed_ms) FILTER (WHERE type = 'rejected') AS rejected_elapsed_ms,
                    bool_or(type = 'rejected' AND source IN ('native', 'tabby'))
                        AS rejected_timed
                FROM ev GROUP BY sk
            ),
            said AS (
                SELECT sk,
                    arg_max_null(accept_kind, {order}) FILTER (WHERE type = 'accepted')
                        AS accept_kind,
                    arg_max_null(accepted_text, {order}) FILTER (WHERE type = 'accepted')
                        AS accepted_text,
                    arg_max(final_text, (window_s, ts, event_id, final_text)) FILTER (
                        WHERE type = 'survived' AND window_s <= {self.longest}
                        AND final_text IS NOT NULL) AS survived_text,
                    max(window_s) FILTER (
                        WHERE type = 'survived' AND window_s <= {self.longest}
                        AND final_text IS NOT NULL) AS survived_s,
                    arg_max(final_text, (ts, event_id, final_text)) FILTER (
                        WHERE type = 'edited' AND final_text IS NOT NULL
                        AND since_created_us <= {longest_us}) AS edited_text,
                    max(since_created_us / 1e6) FILTER (
                        WHERE type = 'edited' AND final_text IS NOT NULL
                        AND since_created_us <= {longest_us}) AS edited_s
                FROM texts GROUP BY sk
            )
            SELECT f.*, t.* EXCLUDE (sk) FROM flags f LEFT JOIN said t ON t.sk = f.sk
            """,
        )
        # Requests per file in time order; okey is unique per file stream (ties broken by a
        # hash of the request id), which keeps the ASOF joins below deterministic. A file
        # stream (tenant, user, file) is keyed by a 64-bit hash: two streams would have to
        # collide (about 1 in 2**64 per pair) to see each other's requests. A request is keyed
        # the same way (rk, a hash of tenant and request id): narrow integer keys make this
        # grouping of millions of requests twice as fast as the strings.
        self.step(
            "requests",
            f"""
            CREATE TABLE b_req AS
            WITH r AS (
                SELECT s.rk,
                    min(s.stream) AS stream,
                    min(s.created_at) AS created_at,
                    -- The first choice (ties, which well-formed records never have, by store
                    -- position): a number, not a (choice, id) struct, is cheap to compare.
                    arg_min(s.sk, s.choice_index::HUGEINT * 18446744073709551616 + s.sk) AS rep,
                    min(s.source) AS source,
                    bool_or(coalesce(f.accepted, false)) AS edit_accepted,
                    min(hash(s.request_id)) AS request_hash
                FROM b_sugg s LEFT JOIN b_facts f ON f.sk = s.sk
                WHERE s.file_path IS NOT NULL AND s.source <> 'chat'
                GROUP BY rk
            )
            SELECT rk, stream, created_at, source, edit_accepted,
                rep // {_SK_FILE} AS rep_file, rep % {_SK_FILE} AS rep_row,
                -- The place among requests of the same stream and time: a row's number in
                -- the stream minus the first number of its time (one sort for both windows).
                epoch_us(created_at) * 1024 + (row_number() OVER w - rank() OVER t) AS okey,
                (epoch_us(lead(created_at) OVER w) - epoch_us(created_at)) / 1000.0 AS gap_ms
            FROM r
            WINDOW w AS (PARTITION BY stream ORDER BY created_at, request_hash),
                t AS (PARTITION BY stream ORDER BY created_at)
            """,
            """
            CREATE TABLE b_tclients AS
            SELECT DISTINCT s.tenant, s.user_hash, s.client_name
            FROM b_sugg s SEMI JOIN b_facts f ON f.sk = s.sk
            """,
        )

    # -- 3. state -----------------------------------------------------------------------------

    def load_state(self) -> None:
        templates = ", ".join(_q(name) for name in TEMPLATE_FAMILIES)
        repos = [*self.doc.exclusions.opted_out_repos, *self.config.opted_out_repos]
        opted_out = "false"
        if repos:
            regex = "|".join(f"(?:{_glob_regex(p)})" for p in repos)
            opted_out = f"coalesce(regexp_full_match(lower(trim(s.repo)), {_q(regex)}), false)"
        partial = "f.accept_kind IN ('line', 'word') AND coalesce(f.accepted_text, '') <> ''"
        edited_later = (
            "f.edited_text IS NOT NULL AND (f.survived_text IS NULL OR f.edited_s >= f.survived_s)"
        )
        timed = (
            "CASE WHEN f.rejected_timed AND f.shown_timed AND f.rejected_at >= f.shown_at "
            "THEN (epoch_us(f.rejected_at) - epoch_us(f.shown_at)) / 1000.0 END"
        )
        self.step(
            "state",
            f"CREATE TYPE gm_pre_excluded AS ENUM ({', '.join(map(_q, _PRE_EXCLUDED))})",
            f"""
            CREATE TABLE b_state AS
            SELECT s.tenant, s.suggestion_id, s.request_id,
                -- The request by its 64-bit hash, as in b_req (rows, contexts and the card join
                -- on it, not on the two strings).
                s.rk,
                -- The file stream (tenant, user, file) by its 64-bit hash, as in b_req; NULL
                -- without a file.
                s.stream,
                coalesce(s.language, 'unknown'::gm_s_language) AS language,
                s.model_version, s.policy_version, s.created_at, s.prompt_template,
                -- The store file and row are sk's (sk // _SK_FILE, sk % _SK_FILE).
                s.completion, s.sk,
                coalesce(f.shown, false) AS shown,
                coalesce(f.accepted, false) AS accepted,
                coalesce(f.rejected, false) AS rejected,
                -- The text inserted, where it is not the completion (a partial accept): held
                -- once, not a second copy of every completion.
                CASE WHEN {partial} THEN f.accepted_text END AS partial_text,
                CASE WHEN {partial} THEN least(1.0, length(f.accepted_text)
                    / greatest(length(s.completion), 1)) ELSE 1.0 END AS fraction,
                coalesce(f.accepted_at, s.created_at) AS after_ts,
                CASE WHEN {edited_later} THEN f.edited_text ELSE f.survived_text END
                    AS native_text,
                CASE WHEN {edited_later} THEN f.edited_s ELSE f.survived_s END
                    AS native_elapsed_s,
                CASE WHEN coalesce(f.rejected, false)
                     THEN coalesce(f.rejected_elapsed_ms, {timed}, r.gap_ms)
                     ELSE r.gap_ms END AS visible_ms,
                tc.tenant IS NOT NULL AS telemetry_client,
                epoch_us({self.until}) - epoch_us(coalesce(f.accepted_at, s.created_at))
                    >= {int(self.longest * 1e6)} AS window_passed,
                CASE
                    WHEN s.prompt_template IS NULL OR s.prompt_template NOT IN ({templates})
                        THEN 'unknown_template'
                    WHEN {opted_out} THEN 'opted_out_repo'
                    WHEN s.redacted_share > {self.doc.exclusions.max_redacted_share}
                        THEN 'redacted_share'
                    WHEN gm_blank(s.completion) THEN 'empty_completion'
                    WHEN f.sk IS NULL AND tc.tenant IS NOT NULL THEN 'not_shown'
                END::gm_pre_excluded AS pre_excluded
            FROM b_sugg s
            LEFT JOIN b_facts f ON f.sk = s.sk
            LEFT JOIN b_req r ON r.rk = s.rk
            LEFT JOIN b_tclients tc ON tc.tenant = s.tenant AND tc.user_hash = s.user_hash
                AND tc.client_name = s.client_name
            """,
        )

    def _visible_ok(self, column: str = "visible_ms") -> str:
        visibility = self.doc.visibility
        unknown = "true" if visibility.when_unknown == "visible" else "false"
        return f"coalesce({column} >= {visibility.min_visible_ms}, {unknown})"

    # -- 4. inference -------------------------------------------------------------------------

    def infer(self) -> None:
        inference = self.doc.inference
        params = inference.match_params()
        evidence = """
            CREATE TABLE b_evidence (sk BIGINT, okey BIGINT,
                obs_at TIMESTAMPTZ, found BOOLEAN, complete BOOLEAN, method VARCHAR,
                text VARCHAR, compare_from VARCHAR, compare_to VARCHAR, clean BOOLEAN,
                moved_found BOOLEAN, similarity DOUBLE)
        """
        enabled = "true" if inference.enabled else "false"
        without = "true" if inference.without_telemetry else "false"
        self.step(
            "candidates",
            evidence,
            f"""
            CREATE TABLE b_cand AS
            SELECT sk, stream, after_ts, accepted,
                coalesce(partial_text, completion) AS inserted, sk // {_SK_FILE} AS fid,
                sk % {_SK_FILE} AS _row,
                epoch_us(after_ts) * 1024 + 1023 AS floor_key
            FROM b_state
            WHERE pre_excluded IS NULL AND stream IS NOT NULL AND {enabled}
              AND CASE WHEN accepted THEN native_text IS NULL
                       WHEN rejected OR shown THEN {self._visible_ok()}
                       ELSE {without} AND NOT telemetry_client AND {self._visible_ok()} END
            """,
            """
            CREATE TABLE b_ctext (sk BIGINT, accepted BOOLEAN, inserted VARCHAR, prefix VARCHAR,
                suffix VARCHAR)
            """,
        )
        # The candidates' own texts, cut once for every round (joined before cutting, so
        # only the candidates' rows are cut), a few store files at a time.
        started = time.perf_counter()
        for chunk in self._file_chunks("b_cand", "fid"):
            self.db.execute(
                f"""
                INSERT INTO b_ctext
                SELECT c.sk, c.accepted, c.inserted,
                    substr(p.prefix, -{params.prefix_tail_chars + 1}) AS prefix,
                    substr(p.suffix, 1, {params.suffix_head_chars}) AS suffix
                FROM (SELECT * FROM b_cand WHERE fid BETWEEN $lo AND $hi) c
                JOIN ({self._texts()}) p ON p.fid = c.fid AND p._row = c._row
                """,
                chunk,
            )
        self.timings["candidate_texts"] = round(time.perf_counter() - started, 3)
        self.say(f"candidate_texts: {self.timings['candidate_texts']:.1f} s")
        # The latest later request within each survival window, the longest first, until one
        # shows the insertion point completely (or the text moved). Each round looks before the
        # previous round's observation, so the observations of the shorter windows follow from
        # the first one alone: round 1 is matched, then the chain of rounds 2.. of the
        # unresolved candidates is matched at once and the first resolved round counts.
        windows = sorted(self.doc.survival.windows_s, reverse=True)
        obs_columns = """
            p.sk, r.okey, r.created_at AS obs_at, r.rep_file, r.rep_row,
            r.source AS obs_source, r.edit_accepted, r.okey - 1 AS next_bound
        """

        def bound(window: float, previous: str) -> str:
            return (
                f"least({previous}, epoch_us(least(p.after_ts + to_microseconds("
                f"{int(window * 1e6)}), {self.until})) * 1024 + 1023)"
            )

        asof = """
            ASOF JOIN b_req r ON p.stream = r.stream AND {bound} >= r.okey
            WHERE r.okey > p.floor_key
        """
        started = time.perf_counter()
        self.db.execute(
            f"""
            CREATE TABLE b_obs AS SELECT 1 AS round, {obs_columns}
            FROM b_cand p {asof.format(bound=bound(windows[0], "9223372036854775807"))}
            """
        )
        self._match("b_obs", "b_match", params)
        resolved = "(found AND complete) OR moved_found"
        self.db.execute(
            f"INSERT INTO b_evidence SELECT sk, okey, obs_at, found, "
            f"complete, method, text, compare_from, compare_to, clean, moved_found, "
            f"similarity FROM b_match WHERE {resolved}"
        )
        first = round(time.perf_counter() - started, 3)
        self.timings[f"inference_{int(windows[0])}s"] = first
        self.say(f"inference within {windows[0]:g} s: {first:.1f} s")
        if len(windows) == 1:
            return
        started = time.perf_counter()
        self.db.execute(
            f"""
            CREATE TABLE b_chain AS
            SELECT o.* FROM b_obs o SEMI JOIN b_match m
              ON m.sk = o.sk
             AND NOT ({resolved})
            """
        )
        self.db.execute("DROP TABLE b_obs")
        self.db.execute("DROP TABLE b_match")
        self.db.execute("CREATE TABLE b_obs AS SELECT * FROM b_chain LIMIT 0")
        for index, window in enumerate(windows[1:], 2):
            self.db.execute(
                f"""
                CREATE OR REPLACE TABLE b_chain AS SELECT {index} AS round, {obs_columns}
                FROM (SELECT c.next_bound, d.* FROM b_chain c JOIN b_cand d
                      ON d.sk = c.sk) p
                {asof.format(bound=bound(window, "p.next_bound"))}
                """
            )
            self.db.execute("INSERT INTO b_obs SELECT * FROM b_chain")
        self._match("b_obs", "b_match", params)
        self.db.execute(
            f"""
            INSERT INTO b_evidence SELECT sk, okey, obs_at, found, complete,
                method, text, compare_from, compare_to, clean, moved_found, similarity
            FROM b_match m WHERE {resolved}
            QUALIFY row_number() OVER (PARTITION BY sk ORDER BY round) = 1
            """
        )
        self.timings["inference_later_windows"] = round(time.perf_counter() - started, 3)
        self.say(f"inference, later windows: {self.timings['inference_later_windows']:.1f} s")

    def _match(self, obs: str, out: str, params: MatchParams) -> None:
        """Match each observation of ``obs`` against its candidate (see feedback_queries)."""
        source = f"""
            SELECT o.sk, o.round, o.okey, o.obs_at, c.accepted,
                c.inserted, c.prefix, c.suffix,
                CASE WHEN o.obs_source = 'continue_edit' THEN ''
                     ELSE q.prefix END AS later_prefix,
                CASE WHEN o.obs_source <> 'continue_edit' THEN q.suffix
                     WHEN o.edit_accepted
                        THEN CASE WHEN q.source = 'continue_edit' THEN q.completion END
                     WHEN q.source = 'continue_edit' THEN q.prefix
                     ELSE substr(q.prefix, -{params.later_prefix_chars}) END AS later_suffix
            FROM (SELECT * FROM {obs} WHERE sk BETWEEN $low AND $high) o
            JOIN (SELECT * FROM b_ctext WHERE sk BETWEEN $low AND $high) c ON c.sk = o.sk
            JOIN ({self._texts()}) q ON q.fid = o.rep_file AND q._row = o.rep_row
        """
        keys = [
            ("sk", "BIGINT"),
            ("round", "INTEGER"),
            ("okey", "BIGINT"),
            ("obs_at", "TIMESTAMPTZ"),
        ]
        # By the candidates' own files (b_ctext was written in that order, so each chunk reads
        # a run of it); the later requests are in the files of about the same days.
        chunks = []
        for chunk in self._file_chunks(obs, f"sk // {_SK_FILE}"):
            low, high = chunk["lo"] * _SK_FILE, (chunk["hi"] + 1) * _SK_FILE - 1
            later = [
                row[0]
                for row in self.db.rows(
                    f"SELECT DISTINCT b.path FROM {obs} o JOIN b_files b ON b.fid = o.rep_file "
                    f"WHERE o.sk BETWEEN {low} AND {high} ORDER BY 1"
                )
            ]
            chunks.append((source, {"low": low, "high": high, "files": later}))
        # The similarity is all the build keeps of the compared texts.
        match_later_requests(self.db, chunks, keys, out, params, compared=False)

    def _file_chunks(self, table: str, fid: str) -> list[dict[str, Any]]:
        """The store files that rows of ``table`` point at (column ``fid``), in runs of whole
        files holding about _TEXT_CHUNK rows each: {lo, hi, files} for ``_texts``. Joining a few
        million rows to their texts at once spills to disk and costs several times more."""
        chunks: list[dict[str, Any]] = []
        current: list[tuple[int, str]] = []
        rows = 0
        for file_id, path, n in self.db.rows(
            f"SELECT b.fid, b.path, t.n FROM (SELECT {fid} AS fid, count(*) AS n FROM {table} "
            f"GROUP BY ALL) t JOIN b_files b USING (fid) ORDER BY b.fid"
        ):
            current.append((file_id, path))
            rows += n
            if rows >= _TEXT_CHUNK:
                chunks.append(_chunk(current))
                current, rows = [], 0
        if current:
            chunks.append(_chunk(current))
        return chunks

    @staticmethod
    def _texts() -> str:
        """Rows of the store files $files with fid and _row, as b_raw has them."""
        return """
            SELECT b.fid, r.file_row_number AS _row, r.source, r.prefix, r.suffix, r.completion
            FROM read_parquet($files, union_by_name = true, filename = true,
                file_row_number = true) r
            JOIN b_files b ON b.path = r.filename
        """

    # -- 5. outcomes --------------------------------------------------------------------------

    def decide(self) -> None:
        keep = self.doc.survival.keep_threshold
        visible = self.doc.visibility
        unknown_excluded = visible.when_unknown == "exclude"
        self.step(
            "outcomes",
            f"""
            CREATE TABLE b_out AS
            WITH j AS (
                SELECT st.*, coalesce(st.partial_text, st.completion) AS inserted,
                    ev.obs_at, ev.method AS obs_method, ev.text AS obs_text,
                    ev.clean AS obs_clean, ev.similarity AS obs_sim,
                    coalesce(ev.found AND ev.complete, false) AS obs_ok,
                    coalesce(ev.moved_found, false) AS moved
                FROM b_state st LEFT JOIN b_evidence ev ON ev.sk = st.sk
            ),
            k AS (
                SELECT *, CASE
                    WHEN native_text IS NOT NULL THEN 'native'
                    WHEN obs_ok AND obs_sim >= {keep} THEN 'inferred'
                    WHEN moved THEN 'moved'
                    WHEN obs_ok THEN 'inferred' END AS evidence
                FROM j
            ),
            l AS (
                SELECT *,
                    CASE evidence WHEN 'native' THEN gm_similarity(inserted, native_text)
                        WHEN 'moved' THEN 1.0 WHEN 'inferred' THEN obs_sim END AS evidence_sim,
                    CASE evidence WHEN 'native' THEN native_text WHEN 'moved' THEN inserted
                        WHEN 'inferred' THEN obs_text END AS evidence_text,
                    CASE evidence WHEN 'inferred' THEN obs_clean ELSE evidence IS NOT NULL END
                        AS evidence_clean,
                    CASE evidence WHEN 'native' THEN native_elapsed_s
                        WHEN 'moved' THEN (epoch_us(obs_at) - epoch_us(after_ts)) / 1e6
                        WHEN 'inferred' THEN (epoch_us(obs_at) - epoch_us(after_ts)) / 1e6
                        END AS evidence_elapsed_s
                FROM k
            ),
            m AS (
                SELECT *, CASE
                    WHEN pre_excluded IS NOT NULL THEN NULL
                    WHEN accepted THEN CASE
                        WHEN evidence IS NULL AND NOT window_passed THEN NULL
                        WHEN evidence IS NULL THEN 'accepted_unobserved'
                        WHEN gm_blank(evidence_text) THEN 'accepted_deleted'
                        WHEN evidence_sim >= {keep} THEN 'accepted_kept'
                        ELSE 'accepted_edited' END
                    WHEN evidence_sim >= {keep} THEN 'inferred_kept'
                    WHEN rejected OR shown OR evidence IS NOT NULL THEN CASE
                        WHEN NOT rejected AND NOT window_passed THEN NULL
                        WHEN NOT {self._visible_ok()} THEN NULL
                        WHEN evidence = 'inferred' AND evidence_clean
                             AND NOT gm_blank(evidence_text) THEN 'dismissed_handwritten'
                        ELSE 'dismissed' END
                    END AS status
                FROM l
            )
            -- Only what rows, contexts and the card read: a narrower table is cheaper to write.
            SELECT sk, tenant, suggestion_id, request_id, rk, stream, language,
                model_version, policy_version, created_at, prompt_template, completion,
                accepted, partial_text, fraction, evidence, evidence_sim, evidence_text,
                evidence_clean, evidence_elapsed_s, status, CASE
                WHEN status IS NOT NULL THEN NULL
                WHEN pre_excluded IS NOT NULL THEN pre_excluded
                WHEN accepted THEN 'no_outcome_yet'
                WHEN rejected OR shown OR evidence IS NOT NULL THEN CASE
                    WHEN NOT rejected AND NOT window_passed THEN 'no_outcome_yet'
                    WHEN visible_ms IS NULL AND {str(unknown_excluded).lower()}
                        THEN 'visibility_unknown'
                    ELSE 'not_visible_long_enough' END
                WHEN window_passed THEN 'no_outcome'
                ELSE 'no_outcome_yet' END AS excluded
            FROM m
            """,
        )

    # -- 6. rows and contexts -----------------------------------------------------------------

    def emit_rows(self) -> None:
        """``b_rows``: every row of every set, with its context's rank (crank) and split.

        Rows are inserted rule by rule from ``b_w`` (the decided suggestions whose context
        reaches a split), so each rule's rows are stored in about context order and the
        writer's slices by context read a few runs of the table, not all of it. ``b_w`` is not
        sorted: the join keeps ``b_out``'s storage order, the order cranks are numbered in, close
        enough for the zone maps (a sort cost 1 s; the writer sorts each slice anyway)."""
        rules = self.config.rules
        set_index = {name: i for i, name in enumerate(SETS)}
        taken = (
            "status IN ('accepted_kept', 'accepted_unobserved', 'accepted_edited', "
            "'accepted_deleted', 'inferred_kept')"
        )
        survival = (
            f"CASE WHEN status = 'accepted_unobserved' THEN "
            f"{self.doc.reward.unobserved_survival} WHEN {taken} THEN evidence_sim ELSE 0.0 END"
        )
        fraction = (
            f"CASE WHEN status = 'inferred_kept' THEN 1.0 WHEN {taken} THEN fraction ELSE 0.0 END"
        )
        reward = rules.reward_sql(f"CASE WHEN {taken} THEN 1 ELSE 0 END", fraction, survival)
        common = (
            "evidence, evidence_sim AS similarity, evidence_elapsed_s AS elapsed_s, "
            "language, model_version, policy_version, crank, split"
        )
        edited_pair = (
            "status IN ('accepted_kept', 'accepted_edited') AND evidence_clean "
            "AND NOT gm_blank(evidence_text) AND gm_norm_differs(evidence_text, inserted)"
        )
        started = time.perf_counter()
        self.db.execute(
            """
            CREATE TABLE b_w AS
            SELECT o.sk, o.tenant, o.suggestion_id, o.request_id, o.rk, o.status, o.accepted,
                o.fraction, coalesce(o.partial_text, o.completion) AS inserted, o.completion,
                o.evidence, o.evidence_sim,
                o.evidence_elapsed_s, o.evidence_clean, o.evidence_text, o.language,
                o.model_version, o.policy_version, k.crank, k.split, CASE
                    WHEN o.status IN ('accepted_kept', 'accepted_edited', 'inferred_kept')
                         AND o.evidence_clean AND NOT gm_blank(o.evidence_text)
                        THEN o.evidence_text
                    WHEN o.status IN ('accepted_kept', 'accepted_unobserved')
                        THEN coalesce(o.partial_text, o.completion)
                    WHEN o.status = 'inferred_kept' THEN o.completion
                    WHEN o.status = 'dismissed_handwritten' THEN o.evidence_text
                    END AS wanted_text
            FROM b_out o JOIN b_kctx k ON k.rk = o.rk
            WHERE o.status IS NOT NULL
            """
        )
        # Lineage columns with a few values are ENUMs in b_rows (a byte a row, not a string):
        # cheaper to insert, hold and gather; the writer casts them back to strings. Tenant,
        # language and versions are since the first table (_STORE_ENUMS).
        self.db.execute(
            "CREATE TYPE gm_evidence AS ENUM (SELECT DISTINCT evidence FROM b_w "
            "WHERE evidence IS NOT NULL ORDER BY 1)"
        )
        # Rules and splits too, their values sorted (dedup orders by rule, the write by split).
        self.db.execute(f"CREATE TYPE gm_rule AS ENUM ({', '.join(map(_q, _RULES))})")
        self.db.execute(f"CREATE TYPE gm_split AS ENUM ({', '.join(map(_q, sorted(SPLITS)))})")
        self.db.execute(
            """
            CREATE TABLE b_rows (set_index INTEGER, tenant gm_s_tenant, suggestion_id VARCHAR,
                other_id VARCHAR, request_id VARCHAR, rule gm_rule, completion VARCHAR,
                chosen VARCHAR, rejected VARCHAR, label BOOLEAN, reward DOUBLE, weight DOUBLE,
                evidence gm_evidence, similarity DOUBLE, elapsed_s DOUBLE,
                language gm_s_language, model_version gm_s_model_version,
                policy_version gm_s_policy_version, crank BIGINT, split gm_split, sk BIGINT,
                kind INTEGER, other_sk BIGINT)
            """
        )
        # Each row ends with sk, kind (its insert's number) and other_sk: its order within a
        # context and set.
        inserts = [
            f"""
            SELECT {set_index["labels"]}, tenant, suggestion_id, NULL, request_id,
                CASE WHEN fraction < 1 AND status LIKE 'accepted%' THEN 'partial_' || status
                     ELSE status END,
                CASE WHEN status LIKE 'accepted%' THEN inserted ELSE completion END,
                NULL, NULL,
                status IN ('accepted_kept', 'accepted_unobserved', 'inferred_kept'), NULL,
                CASE WHEN status LIKE 'accepted%' THEN fraction ELSE 1.0 END, {common}, sk, 0,
                NULL
            FROM b_w WHERE status <> 'accepted_edited'
            """,
            f"""
            SELECT {set_index["labels"]}, tenant, suggestion_id, NULL, request_id,
                CASE WHEN status = 'dismissed_handwritten' THEN 'handwritten_text'
                     ELSE 'edited_text' END,
                evidence_text, NULL, NULL, true, NULL, 1.0, {common}, sk, 1, NULL
            FROM b_w WHERE status = 'dismissed_handwritten' OR ({edited_pair})
            """,
            f"""
            SELECT {set_index["pairs"]}, tenant, suggestion_id, NULL, request_id,
                CASE WHEN status = 'dismissed_handwritten' THEN 'dismissed_handwritten'
                     ELSE 'accepted_edited' END,
                NULL, evidence_text,
                CASE WHEN status = 'dismissed_handwritten' THEN completion ELSE inserted END,
                NULL, NULL, 1.0, {common}, sk, 2, NULL
            FROM b_w WHERE status = 'dismissed_handwritten' OR ({edited_pair})
            """,
            # Requests with several choices, one of them accepted: the accepted one's wanted
            # text over each other choice.
            f"""
            WITH n AS (
                SELECT rk FROM b_out SEMI JOIN (
                    SELECT rk FROM b_w WHERE accepted AND wanted_text IS NOT NULL
                ) t USING (rk)
                GROUP BY ALL HAVING count(*) > 1 AND count(*) FILTER (WHERE accepted) = 1
            )
            SELECT {set_index["pairs"]}, a.tenant, a.suggestion_id, b.suggestion_id,
                a.request_id, 'choice_over_others', NULL, a.wanted_text, b.completion, NULL,
                NULL, 1.0, a.evidence, a.evidence_sim, a.evidence_elapsed_s, a.language,
                a.model_version, a.policy_version, a.crank, a.split, a.sk, 3, b.sk
            FROM b_w a
            JOIN n ON n.rk = a.rk
            JOIN (SELECT rk, suggestion_id, completion, sk FROM b_out SEMI JOIN n USING (rk)) b
              ON b.rk = a.rk AND b.suggestion_id <> a.suggestion_id
            WHERE a.accepted AND a.wanted_text IS NOT NULL
              AND NOT gm_blank(b.completion)
              AND gm_norm_differs(b.completion, a.wanted_text)
            ORDER BY a.crank
            """,
            f"""
            SELECT {set_index["sft"]}, tenant, suggestion_id, NULL, request_id, status,
                wanted_text, NULL, NULL, NULL, NULL,
                CASE WHEN status LIKE 'accepted%' THEN fraction ELSE 1.0 END, {common}, sk, 4,
                NULL
            FROM b_w WHERE wanted_text IS NOT NULL AND NOT gm_blank(wanted_text)
            """,
            f"""
            SELECT {set_index["rewards"]}, tenant, suggestion_id, NULL, request_id, status,
                completion, NULL, NULL, NULL, {reward}, 1.0, {common}, sk, 5, NULL
            FROM b_w
            """,
        ]
        for sql in inserts:
            self.db.execute("INSERT INTO b_rows " + sql)
        self.drop("b_w")
        self.timings["rows"] = round(time.perf_counter() - started, 3)
        self.say(f"rows: {self.timings['rows']:.1f} s")
        # Duplicates within a set and context (same content): the first by suggestion id, rule
        # and other suggestion stays. Kept contexts have distinct context hashes, so crank stands
        # for the hash here. Duplicates are rare, so only their groups are ranked. Two different
        # rows of one set and context with colliding 64-bit content hashes (about 1 in 2**64)
        # would lose one.
        self.step(
            "dedup",
            """
            DELETE FROM b_rows WHERE rowid IN (
                SELECT r.rowid FROM b_rows r JOIN (
                    SELECT set_index, crank, hash(completion, chosen, rejected, label) AS content
                    FROM b_rows
                    GROUP BY ALL HAVING count(*) > 1
                ) d ON d.set_index = r.set_index AND d.crank = r.crank
                    AND d.content = hash(r.completion, r.chosen, r.rejected, r.label)
                QUALIFY row_number() OVER (
                    PARTITION BY r.set_index, r.crank, d.content
                    ORDER BY r.suggestion_id, r.rule, coalesce(r.other_id, '')) > 1
            )
            """,
        )

    def contexts(self) -> None:
        key = self.config.context_key.hex()
        plain = ", ".join(_q(n) for n, f in TEMPLATE_FAMILIES.items() if f == "plain") or "''"
        split = self.doc.split
        started = time.perf_counter()
        self.db.execute(
            f"""
            CREATE TABLE b_need AS
            SELECT min(s.tenant) AS tenant, min(s.request_id) AS request_id, s.rk,
                min(s.created_at) AS created_at,
                min(s.stream) AS stream,
                min(s.prompt_template) AS template,
                arg_min(s.sk, s.suggestion_id) // {_SK_FILE} AS f,
                arg_min(s.sk, s.suggestion_id) % {_SK_FILE} AS w
            FROM b_out s SEMI JOIN (SELECT rk FROM b_out WHERE status IS NOT NULL) r USING (rk)
            GROUP BY s.rk
            """
        )
        hashed = f"""
            WITH rendered AS (
                SELECT n.*, gm_render(n.template, p.prefix, p.suffix) AS prompt
                FROM (SELECT * FROM b_need WHERE f BETWEEN $lo AND $hi) n
                JOIN ({{texts}}) p ON p.fid = n.f AND p._row = n.w
            ),
            shifted AS (
                SELECT * EXCLUDE (prompt),
                    CASE WHEN template IN ({plain})
                         THEN regexp_extract(prompt, {_q(PROMPT_SHIFT_PATTERN)}) ELSE '' END
                        AS shift0,
                    prompt
                FROM rendered
            )
            SELECT * EXCLUDE (prompt, shift0),
                CASE WHEN shift0 = prompt THEN '' ELSE shift0 END AS shift,
                sha256({_q(key)} || md5(CASE WHEN shift0 = '' OR shift0 = prompt THEN prompt
                    ELSE substr(prompt, 1, length(prompt) - length(shift0)) END))
                    AS context_hash
            FROM shifted
        """
        self.db.execute(
            "CREATE TABLE b_ctx AS " + hashed.format(texts="SELECT * FROM b_raw LIMIT 0"),
            {"lo": 0, "hi": -1},
        )
        for chunk in self._file_chunks("b_need", "f"):
            self.db.execute("INSERT INTO b_ctx " + hashed.format(texts=self._texts()), chunk)
        self.drop("b_need")
        self.timings["context_hashes"] = round(time.perf_counter() - started, 3)
        self.say(f"context_hashes: {self.timings['context_hashes']:.1f} s")
        self.step(
            "contexts",
            # One request per context (the earliest); the others are duplicates.
            "ALTER TABLE b_ctx ADD COLUMN kept BOOLEAN",
            """
            UPDATE b_ctx SET kept = d.rn = 1 FROM (
                SELECT rk, row_number() OVER (
                    PARTITION BY context_hash ORDER BY created_at, tenant, request_id) AS rn
                FROM b_ctx
            ) d WHERE b_ctx.rk = d.rk
            """,
        )
        if split.eval_fraction > 0:
            cutoff = (
                f"(SELECT quantile_disc(created_at, {1 - split.eval_fraction}) "
                "FROM b_ctx WHERE kept)"
            )
        else:
            cutoff = "NULL::TIMESTAMPTZ"
        purge_us = int(split.purge_s * 1e6)
        self.step(
            "split",
            f"""
            CREATE TABLE b_cut AS SELECT {cutoff} AS cutoff
            """,
            "ALTER TABLE b_ctx ADD COLUMN split VARCHAR",
            """
            UPDATE b_ctx SET split = CASE
                WHEN NOT kept THEN NULL
                WHEN created_at >= (SELECT cutoff FROM b_cut) THEN 'eval' ELSE 'train' END
            """,
            # A train context just before the cut from a file with eval contexts is dropped.
            f"""
            UPDATE b_ctx SET split = NULL, kept = NULL
            WHERE split = 'train'
              AND epoch_us(created_at) >= epoch_us((SELECT cutoff FROM b_cut)) - {purge_us}
              AND stream IS NOT NULL
              AND EXISTS (
                SELECT 1 FROM b_ctx e WHERE e.split = 'eval' AND e.tenant = b_ctx.tenant
                  AND e.stream = b_ctx.stream)
            """,
            # Contexts that reach the sets, numbered in output order: storage order (the store
            # file and row their prompt is read from), so each slice of contexts the writer
            # renders reads a few store files once, whatever time range a file covers (landing
            # batches, compacted days). Every sort and join below is on this integer. Numbered
            # on the two integers alone and joined back: a window over the whole rows sorts
            # their hashes and ids too (2.4M contexts: 1.7 -> 0.7 s).
            """
            CREATE TABLE b_kctx AS
            WITH r AS (
                SELECT f, w, row_number() OVER (ORDER BY f, w) - 1 AS crank
                FROM b_ctx WHERE split IS NOT NULL
            )
            SELECT c.tenant, c.request_id, c.rk, c.f, c.w, c.template, c.shift, c.context_hash,
                c.split, c.created_at, r.crank
            FROM b_ctx c JOIN r ON r.f = c.f AND r.w = c.w
            """,
        )

    # -- 7. files -----------------------------------------------------------------------------

    def write(self) -> dict[str, dict[str, Any]]:
        """Every set and split, and beside each its lineage (row i of lineage/<set>/<split>
        explains row i of <set>/<split>), in one pass over the contexts in output order."""
        started = time.perf_counter()
        writers: dict[tuple[str, str], tuple[_SetWriter, _SetWriter]] = {}
        for set_name, schema in SETS.items():
            for split in SPLITS:
                path = self.work / set_name / f"{split}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                trail = self.work / "lineage" / set_name / f"{split}.parquet"
                trail.parent.mkdir(parents=True, exist_ok=True)
                writers[(set_name, split)] = (
                    _SetWriter(path, schema, self.config.row_group_rows),
                    _SetWriter(trail, LINEAGE_SCHEMA, self.config.row_group_rows),
                )
        set_names = list(SETS)
        lineage_names = [n for n in LINEAGE_SCHEMA.names if n not in ("set", "split")]
        (contexts,) = self.db.rows("SELECT count(*) FROM b_kctx")[0]
        # Parquet encoding runs in threads (pyarrow releases the GIL), one per set and split so
        # each file's rows stay in order, while DuckDB gathers the next slice.
        pools = {key: ThreadPoolExecutor(1) for key in writers}

        def put(key: tuple[str, str], context: _SliceContexts, chunk: pa.Table) -> None:
            # In the key's writer thread: the lineage's copy and the encoding run beside
            # DuckDB's next slice. A context's prompt and hash are not copied for each of its
            # rows: each row's is a view into the slice's (see _Texts).
            writer, trail = writers[key]
            n = chunk.num_rows
            at = chunk.column("at").to_numpy()
            columns = {"prompt": context.prompts.take(at)}
            for name in writer.schema.names[1:]:
                columns[name] = chunk.column(name)
            writer.write(pa.table(columns).cast(writer.arrow_schema))
            lineage = {
                "set": pa.repeat(pa.scalar(key[0], pa.string()), n),
                "split": pa.repeat(pa.scalar(key[1], pa.string()), n),
            }
            for name in lineage_names:
                if name == "context_hash":
                    lineage[name] = context.hashes.take(at)
                elif name == "created_at":
                    lineage[name] = context.created_at.take(at)
                else:
                    lineage[name] = chunk.column(name)
            trail.write(pa.table(lineage).cast(trail.arrow_schema))

        written: dict[tuple[str, str], int] = {}  # rows of each set and split so far
        try:
            in_flight: list[Future[None]] = []
            # Contexts in slices of output order: each slice renders its prompts once (reading
            # only the files that hold them) and gathers its rows (b_rows holds each rule's
            # rows in context order, so a slice reads a few runs of it).
            for low in range(0, contexts, _PROMPT_SLICE):
                high = min(low + _PROMPT_SLICE, contexts)
                context = self._slice_contexts(low, high)
                # In row order: by set and split, then context (storage order), then the
                # suggestion's place in the store, the rule's insert and the other suggestion's
                # place (integers: no string sort); a row's number is its place in that order
                # (the rows of earlier slices, then its rank in this one).
                rows = _arrow(
                    self.db,
                    f"""
                    SELECT r.set_index, r.split::VARCHAR AS split, r.crank - {low} AS at,
                        CASE WHEN r.completion IS NOT NULL THEN k.shift || r.completion END
                            AS completion,
                        CASE WHEN r.chosen IS NOT NULL THEN k.shift || r.chosen END AS chosen,
                        CASE WHEN r.rejected IS NOT NULL THEN k.shift || r.rejected END
                            AS rejected,
                        r.label, r.reward, r.tenant, r.suggestion_id,
                        r.other_id AS other_suggestion_id, r.request_id, r.rule::VARCHAR AS rule,
                        r.weight,
                        r.language, r.model_version, r.policy_version, r.evidence,
                        r.similarity, r.elapsed_s
                    FROM (SELECT * FROM b_rows WHERE crank >= {low} AND crank < {high}) r
                    JOIN (SELECT crank, shift FROM b_kctx
                          WHERE crank >= {low} AND crank < {high}) k ON k.crank = r.crank
                    ORDER BY r.set_index, r.split DESC, r.crank, r.sk, r.kind, r.other_sk
                    """,
                )
                submitted = []
                for (set_index, split), chunk in _runs(rows, ("set_index", "split")):
                    key = (set_names[set_index], split)
                    base = written.get(key, 0)
                    written[key] = base + chunk.num_rows
                    chunk = chunk.append_column(
                        "row", pa.array(np.arange(base, base + chunk.num_rows, dtype=np.int64))
                    )
                    self._tally(key, chunk)
                    submitted.append(pools[key].submit(put, key, context, chunk))
                del context, rows
                for future in in_flight:  # at most two slices in memory
                    future.result()
                in_flight = submitted
            for future in in_flight:
                future.result()
            self.drop("b_slice")
        finally:
            for pool in pools.values():
                pool.shutdown(wait=True, cancel_futures=True)
            for pair in writers.values():
                for writer in pair:
                    writer.close()
        self.timings["write"] = round(time.perf_counter() - started, 3)
        self.say(f"write: {self.timings['write']:.1f} s")
        files: dict[str, dict[str, Any]] = {}
        for (set_name, split), (writer, trail) in sorted(writers.items()):
            files[f"{set_name}/{split}.parquet"] = writer.summary()
            files[f"lineage/{set_name}/{split}.parquet"] = trail.summary()
        return files

    def _tally(self, key: tuple[str, str], chunk: pa.Table) -> None:
        """Count a chunk of rows of one set and split for the card."""
        counted = chunk.group_by(["rule", "label"]).aggregate([("row", "count")])
        for rule, label, n in zip(
            counted.column("rule").to_pylist(),
            counted.column("label").to_pylist(),
            counted.column("row_count").to_pylist(),
            strict=True,
        ):
            entry = (key[0], key[1], rule, label)
            self.row_counts[entry] = self.row_counts.get(entry, 0) + n
        for name, seen in self.distinct.items():
            seen.update(v for v in pc.unique(chunk.column(name)).to_pylist() if v is not None)

    def _slice_contexts(self, low: int, high: int) -> _SliceContexts:
        """What contexts low..high-1 give each of their rows: the prompt, and for the lineage
        the context hash and time (once per context, not in every row of the rows query)."""
        context = _arrow(
            self.db,
            f"""
            SELECT context_hash, created_at FROM b_kctx
            WHERE crank >= {low} AND crank < {high} ORDER BY crank
            """,
        )
        if context.num_rows != high - low:
            raise BuildFailed(f"contexts {low}..{high}: {context.num_rows} found")
        return _SliceContexts(
            prompts=self._prompts(low, high),
            hashes=_Texts(context.column("context_hash"), np.arange(high - low)),
            created_at=context.column("created_at").combine_chunks(),
        )

    def _prompts(self, low: int, high: int) -> _Texts:
        """The training prompts of contexts low..high-1, in crank order."""
        # The slice's contexts in a table of their own: its exact size lets the optimizer build
        # the join's hash table on them and stream the store rows past it (estimated from a
        # range filter on b_kctx, the store side looked smaller: every prefix and suffix of
        # the files was copied into the hash table, three times slower).
        self.db.execute(
            f"""
            CREATE OR REPLACE TABLE b_slice AS
            SELECT b.path, k.w, k.crank, k.template, k.shift
            FROM b_kctx k JOIN b_files b ON b.fid = k.f
            WHERE k.crank >= {low} AND k.crank < {high}
            """
        )
        files = [row[0] for row in self.db.rows("SELECT DISTINCT path FROM b_slice ORDER BY 1")]
        # Unordered (a sort would move every prompt): crank puts them in order below.
        table = _arrow(
            self.db,
            """
            SELECT crank, CASE WHEN shift = '' THEN prompt
                ELSE substr(prompt, 1, length(prompt) - length(shift)) END AS prompt
            FROM (
                SELECT t.crank, t.shift, gm_render(t.template, r.prefix, r.suffix) AS prompt
                FROM read_parquet($files, union_by_name = true, filename = true,
                    file_row_number = true) r
                JOIN b_slice t ON t.path = r.filename AND t.w = r.file_row_number
            )
            """,
            {"files": files},
        )
        if table.num_rows != high - low:
            raise BuildFailed(f"prompts of contexts {low}..{high}: {table.num_rows} rendered")
        # Not moved into crank order (a copy of every prompt): their views are. Cranks are
        # exactly low..high-1.
        where = np.empty(high - low, np.int64)
        where[table.column("crank").to_numpy() - low] = np.arange(table.num_rows)
        return _Texts(table.column("prompt"), where)

    # Each tally counts for the card as soon as a table's last reader is done, so the table is
    # dropped there and does not sit in memory (or spill) through the later steps.

    def tally_inference(self) -> None:
        """The card's counts of inference methods (``b_evidence``, read last by decide)."""
        self.inference_methods = dict(
            self.db.rows("SELECT method, count(*) FROM b_evidence GROUP BY ALL ORDER BY ALL")
        )

    def tally_contexts(self) -> None:
        """The card's counts of contexts per split, the cut, and the decided suggestions whose
        context was a duplicate or purged at the cut (``b_ctx``, ``b_cut``: read last here)."""
        self.context_exclusions = self.db.rows(
            """
            SELECT CASE WHEN c.kept IS NULL THEN 'split_purge' ELSE 'duplicate_context' END,
                count(*)
            FROM b_out o JOIN b_ctx c ON c.rk = o.rk
            WHERE o.status IS NOT NULL AND c.split IS NULL GROUP BY ALL ORDER BY ALL
            """
        )
        self.split_contexts = dict(
            self.db.rows(
                "SELECT split, count(*) FROM b_ctx WHERE split IS NOT NULL GROUP BY ALL "
                "ORDER BY ALL"
            )
        )
        self.cutoff = self.db.rows("SELECT epoch_us(cutoff) FROM b_cut")[0][0]

    def tally_outcomes(self) -> None:
        """The card's counts of outcomes, exclusions and evidence; then ``b_out`` is dropped,
        so the write has its memory."""
        self.outcomes = dict(
            self.db.rows(
                "SELECT status, count(*) FROM b_out WHERE status IS NOT NULL GROUP BY ALL "
                "ORDER BY ALL"
            )
        )
        self.exclusions = dict(
            self.db.rows(
                "SELECT excluded, count(*) FROM b_out WHERE excluded IS NOT NULL GROUP BY ALL "
                "ORDER BY ALL"
            )
        )
        self.exclusions.update(self.context_exclusions)
        (self.considered,) = self.db.rows("SELECT count(*) FROM b_out")[0]
        self.used = self.db.rows(
            """
            SELECT epoch_us(min(created_at)), epoch_us(max(created_at)),
                count(DISTINCT context_hash)
            FROM b_kctx k SEMI JOIN b_rows r ON r.crank = k.crank
            """
        )[0]
        self.evidence = dict(
            self.db.rows(
                "SELECT coalesce(evidence, 'none'), count(*) FROM b_out WHERE status IS NOT NULL "
                "GROUP BY ALL ORDER BY ALL"
            )
        )
        self.drop("b_out")

    def card(self, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        rules = self.config.rules
        counts: dict[str, Any] = {}
        for (set_name, split, rule, label), n in sorted(
            self.row_counts.items(), key=lambda item: repr(item[0])
        ):
            entry = counts.setdefault(set_name, {"rows": 0, "by_split": {}, "by_rule": {}})
            entry["rows"] += n
            entry["by_split"][split] = entry["by_split"].get(split, 0) + n
            entry["by_rule"][rule] = entry["by_rule"].get(rule, 0) + n
            if set_name == "labels":
                name = "true" if label else "false"
                entry.setdefault("by_label", {}).setdefault(name, 0)
                entry["by_label"][name] += n
        for set_name in SETS:
            counts.setdefault(set_name, {"rows": 0, "by_split": {}, "by_rule": {}})
            for split in SPLITS:
                counts[set_name]["by_split"].setdefault(split, 0)
        counts["labels"].setdefault("by_label", {"true": 0, "false": 0})
        statuses, exclusions, considered = self.outcomes, self.exclusions, self.considered
        used, split_contexts, cutoff = self.used, self.split_contexts, self.cutoff
        evidence, inference_methods = self.evidence, self.inference_methods

        def distinct(column: str) -> list[str]:
            return sorted(self.distinct[column])

        digest = hashlib.sha256(
            json.dumps(
                {
                    "rules": rules.version,
                    "since": self.config.since.astimezone(UTC).isoformat(),
                    "until": self.config.until.astimezone(UTC).isoformat(),
                    "tenants": list(self.config.tenants) if self.config.tenants else None,
                    "files": {name: f["sha256"] for name, f in files.items()},
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()
        since = self.config.since.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        until = self.config.until.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        return {
            "id": f"ds-{since}-{until}-{digest[:12]}",
            "card_version": 1,
            "built_at": datetime.now(UTC).isoformat(),
            "time_range": {
                "since": self.config.since.astimezone(UTC).isoformat(),
                "until": self.config.until.astimezone(UTC).isoformat(),
                "first_context": _iso(used[0]),
                "last_context": _iso(used[1]),
            },
            "scope": {"tenants": list(self.config.tenants) if self.config.tenants else None},
            "tenants": distinct("tenant"),
            "languages": distinct("language"),
            "model_versions": distinct("model_version"),
            "policy_versions": distinct("policy_version"),
            "rules_version": rules.version,
            "rules_source": rules.source,
            "rules": rules.canonical(),
            "reward": {
                "formula": self.doc.reward.formula,
                "clamped_to": [0.0, 1.0],
                "variables": {
                    "accepted": "1 if taken (accepted, or inferred kept), else 0",
                    "fraction": "accepted share of a partial accept; 1 for full accepts and "
                    "inferred keeps, 0 when not taken",
                    "survival": "edit similarity at the latest window; "
                    f"{self.doc.reward.unobserved_survival} when unobserved after the longest "
                    "window; 0 when not taken",
                },
            },
            "formats": _SET_FORMATS,
            "counts": counts,
            "outcomes": statuses,
            "evidence": evidence,
            "inference_methods": inference_methods,
            "exclusions": exclusions,
            "suggestions_considered": considered,
            "split": {
                "by": "time",
                "cutoff": _iso(cutoff),
                "contexts": {s: split_contexts.get(s, 0) for s in SPLITS},
                "rows": {s: sum(counts[n]["by_split"].get(s, 0) for n in SETS) for s in SPLITS},
                "eval_fraction": self.doc.split.eval_fraction,
                "purge_s": self.doc.split.purge_s,
                "context_hash": "sha256(dataset key hex + md5 hex of the training prompt); "
                "no context hash is in both splits",
            },
            "prompt": {
                "rendering": "the recorded template (prompt_template) over the stored, "
                "redacted prefix and suffix: the served prompt",
                "boundary": "for templates without FIM tokens, trailing whitespace and word "
                f"characters ({PROMPT_SHIFT_PATTERN}) move from the prompt to the front of "
                "each completion; prompt + completion is the served text",
            },
            "matching": "feedback_store.feedback_queries: exact then fuzzy (whitespace-"
            "insensitive) left anchor on the prefix, extent by the suggestion's line count, "
            "right anchor on the suffix's next line, complete only when the later cursor is "
            "outside the span; moved text found unchanged elsewhere counts as kept; limits: "
            "window around the later cursor, first anchor occurrence, lines inserted inside a "
            "span shift its extent",
            "matcher": "compiled" if _native.available() else "sql",
            "files": files,
            "timings_s": self.timings,
        }


def _chunk(files: list[tuple[int, str]]) -> dict[str, Any]:
    return {"lo": files[0][0], "hi": files[-1][0], "files": [path for _, path in files]}


def _arrow(db: FeedbackDB, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
    batches = list(db.batches(sql, params))
    if not batches:
        return pa.table({})
    return pa.Table.from_batches(batches)


def _runs(table: pa.Table, keys: tuple[str, ...]) -> list[tuple[tuple[Any, ...], pa.Table]]:
    """Consecutive rows with equal keys, as (key values, rows); the table is sorted by keys."""
    if not table.num_rows:
        return []
    starts = [0]
    for key in keys:
        column = table.column(key).combine_chunks()
        if len(column) > 1:
            differs = pc.not_equal(column.slice(1), column.slice(0, len(column) - 1))
            starts += [i + 1 for i in pc.indices_nonzero(differs).to_pylist()]
    bounds = sorted(set(starts)) + [table.num_rows]
    return [
        (tuple(table.column(k)[a].as_py() for k in keys), table.slice(a, b - a))
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]


class _Texts:
    """A slice's texts of each context (prompts, context hashes) as string views (16 bytes a
    row: a length and the place of the text in DuckDB's exported buffers), so the rows of every
    set and split that share a context point at one copy of its text until the Parquet writer
    encodes it: at 10M events the writers copied 3.5 copies of 3.6 GB of prompts before."""

    def __init__(self, texts: pa.ChunkedArray, order: np.ndarray) -> None:
        views = texts.cast(pa.string_view()).combine_chunks()
        if views.null_count:
            raise BuildFailed(f"{views.null_count} texts of a slice's contexts are NULL")
        raw = np.frombuffer(views.buffers()[1], np.uint64).reshape(-1, 2)
        self._views = raw[views.offset : views.offset + len(views)][order]
        self._texts = views.buffers()[2:]

    def take(self, rows: np.ndarray) -> pa.Array:
        """The texts of the slice's rows ``rows`` (offsets into the slice), in that order."""
        views = self._views[rows]
        return pa.Array.from_buffers(
            pa.string_view(), len(views), [None, pa.py_buffer(views), *self._texts], null_count=0
        )


@dataclass(frozen=True)
class _SliceContexts:
    """A slice's contexts, by offset in the slice (crank - low)."""

    prompts: _Texts
    hashes: _Texts
    created_at: pa.Array


def _compact(table: pa.Table) -> pa.Table:
    """The table with its string views' texts copied out of the slices they point into (so a
    carried-over rest does not keep a whole slice's texts in memory), chunks unchanged."""
    return pa.table(
        [
            c.cast(pa.string()).cast(pa.string_view()) if pa.types.is_string_view(c.type) else c
            for c in table.columns
        ],
        schema=table.schema,
    )


def _iso(epoch_us: int | None) -> str | None:
    if epoch_us is None:
        return None
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=epoch_us)).isoformat()


# Why a suggestion is left out before its outcome is decided (b_state.pre_excluded).
_PRE_EXCLUDED = (
    "unknown_template",
    "opted_out_repo",
    "redacted_share",
    "empty_completion",
    "not_shown",
)

# Store columns with few values, held as ENUMs from the first table on (a byte a row, not a
# string): (name, value, extra rows), the values sorted so min() and ordering are the strings'.
_STORE_ENUMS = (
    ("tenant", "tenant", ""),
    ("source", "source", ""),
    ("language", "language", " UNION ALL SELECT 'unknown'"),
    ("model_version", "model_version", ""),
    ("policy_version", "policy_version", ""),
    ("prompt_template", "prompt_template", ""),
    ("client_name", "coalesce(client_name, '')", ""),
)

# Columns the writers take as string views (see _Texts).
_VIEWS = frozenset(("prompt", "context_hash"))

# Code texts, ids and hashes: nearly all distinct, and no reader selects them by range.
_TEXTS_AND_IDS = frozenset(
    (
        "prompt",
        "completion",
        "chosen",
        "rejected",
        "suggestion_id",
        "other_suggestion_id",
        "request_id",
        "context_hash",
    )
)

# Min/max statistics of code text serve no reader (nobody filters prompts by range), and each
# page would carry two whole texts: without them the sets are about 6% smaller. Random ids and
# hashes: a row group's range of them skips nothing either.
_NO_STATISTICS = _TEXTS_AND_IDS

# Columns of nearly distinct values. A dictionary is only dropped once it outgrows its page
# (1 MB), which a row group's numbers never do: each row group's row numbers, times and
# similarities were hashed into a dictionary as large as the column (lineage 13% larger and
# 12% slower to encode).
_NO_DICTIONARY = _TEXTS_AND_IDS | {"row", "created_at", "similarity", "elapsed_s"}


class _SetWriter:
    """Parquet with fixed row groups, so the same rows always give the same bytes.

    Texts may come as string views (``arrow_schema``, what ``write`` takes): they are encoded
    as the strings of ``schema``, which the file declares, byte for byte as if they had been
    strings (only the Arrow type stored in the footer would differ, and it is the schema's)."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int) -> None:
        self.path = path
        self.schema = schema
        self.arrow_schema = pa.schema(
            [
                pa.field(f.name, pa.string_view(), f.nullable)
                if pa.types.is_string(f.type) and f.name in _VIEWS
                else f
                for f in schema
            ]
        )
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        # Texts and ids are nearly all distinct: a dictionary would be tried and dropped for
        # every page of them. zstd at level 1: the same size on code text at less cost.
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            path,
            self.arrow_schema,
            compression="zstd",
            compression_level=1,
            use_dictionary=[n for n in schema.names if n not in _NO_DICTIONARY],
            write_statistics=[n for n in schema.names if n not in _NO_STATISTICS],
            store_schema=False,
        )

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= self.row_group_rows:
            combined = pa.concat_tables(self._pending)
            start = 0
            while combined.num_rows - start >= self.row_group_rows:
                self._put(combined.slice(start, self.row_group_rows))
                start += self.row_group_rows
            rest = combined.slice(start)
            self._pending = [rest] if rest.num_rows else []
            self._pending_rows = rest.num_rows
        # Rows waiting for the next table keep their own texts, not their slice's. Only the
        # last table waiting can be new (a rest is never longer than the table just written).
        if self._pending:
            self._pending[-1] = _compact(self._pending[-1])

    def _put(self, rows: pa.Table) -> None:
        assert self._writer is not None
        # One chunk per column: the Parquet writer cuts pages in batches counted from the start
        # of each chunk, so the bytes would depend on where DuckDB's batches and the slices
        # ended. Views are joined without copying their texts; the short texts and numbers are
        # copied once here.
        if any(column.num_chunks > 1 for column in rows.columns):
            rows = rows.combine_chunks()
        self._writer.write_table(rows, row_group_size=rows.num_rows)
        self.rows += rows.num_rows

    def close(self) -> None:
        if self._writer is None:
            return
        if self._pending_rows:
            self._put(pa.concat_tables(self._pending))
            self._pending, self._pending_rows = [], 0
        self._writer.add_key_value_metadata(_arrow_schema_metadata(self.schema))
        self._writer.close()
        self._writer = None

    def summary(self) -> dict[str, Any]:
        return _file_summary(self.path, self.rows)


def _arrow_schema_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """The footer metadata pyarrow writes for ``schema`` (the Arrow schema a reader gets)."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    metadata = pq.ParquetFile(pa.BufferReader(sink.getvalue())).metadata.metadata
    assert metadata is not None
    return dict(metadata)


def _file_summary(path: Path, rows: int) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"rows": rows, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}
