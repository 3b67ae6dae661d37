"""Personal data: addresses, phones, IPs, user names in paths, and person names - the last
only in comments, strings and prose, never in identifiers."""

from __future__ import annotations

import pytest

from redaction import Redactor
from tests.redaction.conftest import KEY, make_policy

PERSONAL = [
    # (text, file path, raw values that must be gone, placeholders that must appear)
    (
        "# contact jane.doe@acme-corp.com for access\n",
        "a.py",
        ["jane.doe@acme-corp.com"],
        ["<EMAIL_1>"],
    ),
    ('SUPPORT = "ops@payments.internal"\n', "a.py", ["ops@payments.internal"], ["<EMAIL_1>"]),
    ("# on call: +1 (415) 555-0134\n", "a.py", ["555-0134"], ["<PHONE_1>"]),
    ('HELPDESK = "+44 20 7946 0958"\n', "a.py", ["7946 0958"], ["<PHONE_1>"]),
    ('upstream = "10.20.30.40:8080"\n', "a.py", ["10.20.30.40"], ["<IP_ADDRESS_1>"]),
    (
        "allow 2001:db8:85a3::8a2e:370:7334 only\n",
        "notes.txt",
        ["2001:db8:85a3::8a2e:370:7334"],
        ["<IP_ADDRESS_1>"],
    ),
]


@pytest.mark.parametrize("text,path,raw,placeholders", PERSONAL)
def test_when_personal_data_then_replaced(redactor, text, path, raw, placeholders):
    out = redactor.redact({"prefix": text}, file_path=path)
    assert out is not None
    for value in raw:
        assert value not in out.fields["prefix"]
    for placeholder in placeholders:
        assert placeholder in out.fields["prefix"]


PATHS = [
    (
        'open("/home/jdoe/projects/app/data.csv")',
        "jdoe",
        '"/home/<USERNAME_1>/projects/app/data.csv"',
    ),
    ("cd /Users/jane.smith/src && make", "jane.smith", "/Users/<USERNAME_1>/src"),
    (
        r'LOG = r"C:\Users\mgarcia\AppData\Local\app.log"',
        "mgarcia",
        r"C:\Users\<USERNAME_1>\AppData",
    ),
    (
        'LOG = "C:\\\\Users\\\\mgarcia\\\\AppData"',
        "mgarcia",
        "C:\\\\Users\\\\<USERNAME_1>\\\\AppData",
    ),
    ("C:/Users/John Smith/Documents/notes.md", "John Smith", "C:/Users/<USERNAME_1>/Documents"),
]


@pytest.mark.parametrize("text,user,expected", PATHS)
def test_when_user_name_in_path_then_only_the_name_replaced(redactor, text, user, expected):
    out = redactor.redact({"prefix": text}, file_path="run.sh")
    assert out is not None
    assert user not in out.fields["prefix"]
    assert expected in out.fields["prefix"]


@pytest.mark.parametrize(
    "text",
    [
        "WORKDIR = '/home/runner/work/app'\n",  # CI runner account
        "cp x /Users/Shared/tmp/\n",  # macOS shared folder
        "path = f'/home/{user}/app'\n",  # template
        'url = "https://example.org/home/about"\n',  # a web page, not a home directory
    ],
)
def test_when_path_holds_no_personal_account_then_unchanged(redactor, text):
    out = redactor.redact({"prefix": text}, file_path="a.py")
    assert out is not None
    assert out.fields["prefix"] == text


def test_when_person_named_in_comment_string_and_docstring_then_replaced(redactor):
    code = (
        "def notify(user):\n"
        '    """Escalate to Priya Raman when the queue stalls."""\n'
        "    # reviewed by Thomas Mueller\n"
        '    return send(user, note="Ask Maria Garcia first")\n'
    )
    out = redactor.redact({"prefix": code}, file_path="jobs.py")
    assert out is not None
    text = out.fields["prefix"]
    for name in ("Priya", "Raman", "Thomas", "Mueller", "Maria", "Garcia"):
        assert name not in text
    assert text.count("<PERSON_") == 3
    assert text.startswith("def notify(user):\n")


def test_when_names_are_identifiers_then_person_not_fired(redactor):
    """NER never sees code, and hits that look like identifiers are discarded."""
    code = (
        "class MariaGarcia(Base):\n"
        "    john_smith = Column(String)\n"
        "    def send_to_alice(self, Bob):\n"
        "        return Bob.notify(self.john_smith)\n"
        "# see get_user_name() and Session.commit\n"
    )
    out = redactor.redact({"prefix": code}, file_path="models.py")
    assert out is not None
    assert out.fields["prefix"] == code
    assert "PERSON" not in out.counts


def test_when_field_declared_prose_then_ner_runs_on_all_of_it():
    policy = make_policy(prose_fields=["chat"])
    prose_redactor = Redactor(policy, key=KEY)  # reuses the process's loaded spaCy model
    out = prose_redactor.redact(
        {"chat": "Olivia Bennett asked for the report", "prefix": "olivia_bennett = 1\n"},
        file_path="a.py",
    )
    assert out is not None
    assert out.fields["chat"] == "<PERSON_1> asked for the report"
    assert out.fields["prefix"] == "olivia_bennett = 1\n"
