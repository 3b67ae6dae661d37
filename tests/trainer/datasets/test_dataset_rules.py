"""The signal rules file: shipped defaults, schema, refusal of bad files, the reward formula."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from trainer.datasets import RulesInvalid, load_rules, parse_rules, rules_json_schema

ROOT = Path(__file__).resolve().parents[3]


def test_when_shipped_rules_loaded_then_issue_defaults_hold():
    rules = load_rules()
    doc = rules.document
    assert doc.survival.windows_s == [30, 120, 300, 600]
    assert doc.survival.keep_threshold == 0.67
    assert doc.visibility.min_visible_ms == 750
    assert rules.version.startswith("sha256:") and len(rules.version) == 23


def test_when_schema_generated_then_it_equals_the_shipped_file():
    """Regenerate with: python -c 'import json; from trainer.datasets import rules_json_schema;
    print(json.dumps(rules_json_schema(), indent=2, sort_keys=True))' > policies/signals.schema.json
    """
    shipped = json.loads((ROOT / "policies" / "signals.schema.json").read_text())
    assert shipped == rules_json_schema()


def test_when_only_comments_change_then_version_is_the_same():
    text = (ROOT / "policies" / "signals.yaml").read_text()
    assert parse_rules(text).version == parse_rules("# note\n" + text).version
    changed = text.replace("keep_threshold: 0.67", "keep_threshold: 0.7")
    assert parse_rules(changed).version != parse_rules(text).version


@pytest.mark.parametrize(
    "text,loc,line",
    [
        # a threshold outside [0, 1]
        ("schema_version: 1\nsurvival:\n  keep_threshold: 1.5\n", "survival.keep_threshold", 3),
        # windows must ascend
        ("schema_version: 1\nsurvival:\n  windows_s: [600, 30]\n", "survival.windows_s", 3),
        # an unknown key is refused, not ignored
        ("schema_version: 1\nvisibility:\n  min_visible: 10\n", "visibility.min_visible", 3),
        # a name the formula does not know
        ("schema_version: 1\nreward:\n  formula: accepted * speed\n", "reward.formula", 3),
        # division by zero at some corner of the variables
        ("schema_version: 1\nreward:\n  formula: 1 / survival\n", "reward.formula", 3),
        # function calls other than min/max
        ("schema_version: 1\nreward:\n  formula: abs(survival)\n", "reward.formula", 3),
        # the same key twice
        (
            "schema_version: 1\nsplit:\n  eval_fraction: 0.1\n  eval_fraction: 0.2\n",
            "split.eval_fraction",
            4,
        ),
    ],
)
def test_when_rules_are_bad_then_they_are_refused_with_field_and_line(text, loc, line):
    with pytest.raises(RulesInvalid) as caught:
        parse_rules(text)
    assert caught.value.http_status == 422
    assert {"loc": loc, "line": line} in [
        {"loc": e["loc"], "line": e["line"]} for e in caught.value.errors
    ]


def test_when_yaml_is_broken_then_rules_are_refused():
    with pytest.raises(RulesInvalid):
        parse_rules("schema_version: [1\n")


@pytest.mark.parametrize(
    "formula,values,expected",
    [
        ("accepted * fraction * (0.4 + 0.6 * survival)", (1, 1.0, 0.5), 0.7),
        ("accepted * fraction * (0.4 + 0.6 * survival)", (0, 0.0, 0.0), 0.0),
        ("min(1, survival + 0.5)", (1, 1.0, 0.8), 1.0),
        ("max(0, survival - 0.5) * 2", (1, 1.0, 0.75), 0.5),
        ("2 * accepted", (1, 1.0, 1.0), 1.0),  # clamped to 1
        ("-accepted", (1, 1.0, 1.0), 0.0),  # clamped to 0
    ],
)
def test_when_reward_evaluated_then_python_and_sql_agree(formula, values, expected):
    rules = parse_rules(f"schema_version: 1\nreward:\n  formula: '{formula}'\n")
    assert rules.reward(*values) == pytest.approx(expected)
    sql = rules.reward_sql(*(repr(float(v)) for v in values))
    (value,) = duckdb.connect().execute(f"SELECT {sql}").fetchone()
    assert value == pytest.approx(expected)
