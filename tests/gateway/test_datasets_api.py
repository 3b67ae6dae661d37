"""Datasets through the live gateway: serve, report, build a snapshot (API and CLI), read it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from feedback_store import render_template
from gateway.cli import app as cli
from trainer.datasets import prompt_and_shift

COMPLETION = "return a + b\n"  # what the fake upstream answers


def _serve(gw, i: int) -> tuple[str, str]:
    prompt = f"def f{i}(a, b):\n    "
    body = {"prompt": prompt, "gristmill": {"language": "python", "file_path": f"src/f{i}.py"}}
    r = gw.client.post("/v1/completions", json=body, headers=gw.auth("dev"))
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["suggestion_id"], prompt


def _history(gw) -> dict[str, str]:
    """Four suggestions: kept, dismissed, accepted and edited, dismissed too fast."""
    sids = {}
    prompts = {}
    for i, name in enumerate(["kept", "dismissed", "edited", "flash"]):
        sids[name], prompts[name] = _serve(gw, i)
    events = []
    for name, sid in sids.items():
        events.append({"event_id": f"{name}-shown", "suggestion_id": sid, "type": "shown"})
    events += [
        {"event_id": "k-a", "suggestion_id": sids["kept"], "type": "accepted"},
        {
            "event_id": "k-s",
            "suggestion_id": sids["kept"],
            "type": "survived",
            "window_s": 600,
            "final_text": COMPLETION,
        },
        {
            "event_id": "d-r",
            "suggestion_id": sids["dismissed"],
            "type": "rejected",
            "elapsed_ms": 1500,
        },
        {"event_id": "e-a", "suggestion_id": sids["edited"], "type": "accepted"},
        {
            "event_id": "e-s",
            "suggestion_id": sids["edited"],
            "type": "survived",
            "window_s": 600,
            "final_text": "return a - b\n",
        },
        {"event_id": "f-r", "suggestion_id": sids["flash"], "type": "rejected", "elapsed_ms": 100},
    ]
    r = gw.client.post("/v1/telemetry/events", json={"events": events}, headers=gw.auth("dev"))
    assert r.status_code == 202, r.text
    gw.flush()
    return prompts


def _rows(gw, snapshot_id: str, name: str) -> list[dict]:
    root = gw.settings.data_dir / "datasets" / snapshot_id / name
    return [
        row
        for split in ("train", "eval")
        for row in pq.read_table(root / f"{split}.parquet").to_pylist()
    ]


def test_when_feedback_recorded_then_api_builds_a_snapshot_with_the_expected_sets(gw):
    prompts = _history(gw)
    now = datetime.now(UTC)
    window = {
        "since": (now - timedelta(hours=1)).isoformat(),
        "until": (now + timedelta(hours=1)).isoformat(),
    }
    r = gw.client.post("/v1/datasets", json=window, headers=gw.auth("ml"))
    assert r.status_code == 201, r.text
    summary = r.json()
    assert summary["tenants"] == ["acme"] and summary["scope"] == {"tenants": ["acme"]}

    def trl(name: str) -> tuple[str, str]:
        # the upstream backend serves plain-v1: the prompt's trailing indentation moves
        return prompt_and_shift("plain-v1", render_template("plain-v1", prompts[name], None))

    kept_prompt, kept_shift = trl("kept")
    edited_prompt, edited_shift = trl("edited")
    dismissed_prompt, dismissed_shift = trl("dismissed")
    labels = sorted(_rows(gw, summary["id"], "labels"), key=lambda r: (r["prompt"], r["label"]))
    assert labels == sorted(
        [
            {"prompt": kept_prompt, "completion": kept_shift + COMPLETION, "label": True},
            {
                "prompt": dismissed_prompt,
                "completion": dismissed_shift + COMPLETION,
                "label": False,
            },
            {"prompt": edited_prompt, "completion": edited_shift + COMPLETION, "label": True},
            {"prompt": edited_prompt, "completion": edited_shift + "return a - b\n", "label": True},
        ],
        key=lambda r: (r["prompt"], r["label"]),
    )
    assert _rows(gw, summary["id"], "pairs") == [
        {
            "prompt": edited_prompt,
            "chosen": edited_shift + "return a - b\n",
            "rejected": edited_shift + COMPLETION,
        }
    ]
    card = gw.client.get(f"/v1/datasets/{summary['id']}", headers=gw.auth("ml")).json()
    assert card["exclusions"] == {"not_visible_long_enough": 1}
    assert card["outcomes"] == {"accepted_kept": 2, "dismissed": 1}
    # the same build again finds the same, immutable snapshot
    again = gw.client.post("/v1/datasets", json=window, headers=gw.auth("ml"))
    assert again.status_code == 200 and again.json()["id"] == summary["id"]


def test_when_snapshots_listed_then_roles_and_tenants_are_enforced(gw):
    _history(gw)
    now = datetime.now(UTC)
    window = {
        "since": (now - timedelta(hours=1)).isoformat(),
        "until": (now + timedelta(hours=1)).isoformat(),
    }
    snapshot_id = gw.client.post("/v1/datasets", json=window, headers=gw.auth("ml")).json()["id"]
    listed = gw.client.get("/v1/datasets", headers=gw.auth("ml")).json()["snapshots"]
    assert [s["id"] for s in listed] == [snapshot_id]
    # another tenant's ml engineer sees nothing of acme, not even that the snapshot exists
    assert gw.client.get("/v1/datasets", headers=gw.auth("other")).json() == {"snapshots": []}
    assert gw.client.get(f"/v1/datasets/{snapshot_id}", headers=gw.auth("other")).status_code == 404
    # developers and auditors do not read datasets
    for who in ("dev", "auditor"):
        assert gw.client.get("/v1/datasets", headers=gw.auth(who)).status_code == 403
    assert gw.client.post("/v1/datasets", json=window, headers=gw.auth("dev")).status_code == 403


@pytest.mark.parametrize(
    "body,status",
    [
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, 422),  # backwards
        ({"since": "2026-01-01T00:00:00", "until": "2026-01-02T00:00:00"}, 422),  # no zone
        ({"since": "2026-01-01T00:00:00Z"}, 422),  # until missing
    ],
)
def test_when_build_request_is_wrong_then_problem_json(gw, body, status):
    r = gw.client.post("/v1/datasets", json=body, headers=gw.auth("ml"))
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/problem+json")


def test_when_cli_builds_and_lists_then_it_reads_the_gateway_store(gw):
    _history(gw)
    now = datetime.now(UTC)
    data_dir = str(gw.settings.data_dir)
    result = CliRunner().invoke(
        cli,
        [
            "datasets",
            "build",
            "--since",
            (now - timedelta(hours=1)).isoformat(),
            "--until",
            (now + timedelta(hours=1)).isoformat(),
            "--tenant",
            "acme",
            "--threads",
            "1",
            "--data-dir",
            data_dir,
        ],
    )
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)
    assert built["created"] is True and built["rows"]["labels"] == 4
    listed = CliRunner().invoke(cli, ["datasets", "list", "--data-dir", data_dir])
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [built["id"]]
    shown = CliRunner().invoke(
        cli, ["datasets", "show", built["id"], "--verify", "--data-dir", data_dir]
    )
    assert shown.exit_code == 0 and json.loads(shown.stdout)["id"] == built["id"]
    bad = CliRunner().invoke(
        cli,
        [
            "datasets",
            "build",
            "--since",
            "yesterday",
            "--until",
            "2026-01-01",
            "--data-dir",
            data_dir,
        ],
    )
    assert bad.exit_code == 2 and "--since" in bad.output


def test_when_repo_opted_out_by_applied_policy_then_build_leaves_it_out(gw):
    """The opt-out list comes from the active policy in the store (changed through the
    policy API), not from the shipped file."""
    for i, repo in enumerate(["acme/web", "acme/secret-project"]):
        body = {
            "prompt": f"def g{i}(a, b):\n    ",
            "gristmill": {"language": "python", "file_path": f"src/g{i}.py", "repo": repo},
        }
        r = gw.client.post("/v1/completions", json=body, headers=gw.auth("dev"))
        assert r.status_code == 200, r.text
        sid = r.json()["choices"][0]["suggestion_id"]
        events = [
            {"event_id": f"{i}-s", "suggestion_id": sid, "type": "shown"},
            {"event_id": f"{i}-a", "suggestion_id": sid, "type": "accepted"},
        ]
        r = gw.client.post("/v1/telemetry/events", json={"events": events}, headers=gw.auth("dev"))
        assert r.status_code == 202, r.text
    gw.flush()
    current = gw.client.get("/v1/policies/redaction", headers=gw.auth("admin")).json()
    policy = current["text"].replace("opt_out_repos: []", 'opt_out_repos: ["acme/secret-*"]')
    assert policy != current["text"]
    r = gw.client.put(
        "/v1/policies/redaction",
        json={"policy": policy, "reason": "project under NDA"},
        headers=gw.auth("admin"),
    )
    assert r.status_code == 200, r.text
    now = datetime.now(UTC)
    window = {
        "since": (now - timedelta(hours=1)).isoformat(),
        "until": (now + timedelta(hours=1)).isoformat(),
    }
    r = gw.client.post("/v1/datasets", json=window, headers=gw.auth("ml"))
    assert r.status_code == 201, r.text
    prompts = [row["prompt"] for row in _rows(gw, r.json()["id"], "labels")]
    assert any("def g0(" in p for p in prompts)
    assert not any("def g1(" in p for p in prompts)


def test_when_no_memory_limit_given_then_cli_and_api_use_the_builds_default() -> None:
    """One default (the one the bench measures): the CLI's and build_config's are the build's."""
    import inspect

    from gateway.cli_datasets import build_cmd, build_config
    from trainer.datasets import DEFAULT_MEMORY_LIMIT, BuildConfig

    assert BuildConfig.__dataclass_fields__["memory_limit"].default == DEFAULT_MEMORY_LIMIT
    for function in (build_cmd, build_config):
        parameter = inspect.signature(function).parameters["memory_limit"]
        assert parameter.default == DEFAULT_MEMORY_LIMIT, function.__name__
