"""A labeled corpus of IDE payloads for measuring redaction: seeded and deterministic.

`generate(seed, n)` returns `Sample`s: windows on source files in twelve syntaxes (Python,
JavaScript, TypeScript, Java, Go, YAML, JSON, .env, shell, Dockerfile, Terraform, SQL) that
carry secrets of every kind the default policy names, personal data (e-mail addresses,
phone numbers, person names in comments and strings, IP addresses, user names in home
paths) and hard negatives (identifiers named after secrets, git SHAs, UUIDs, lockfile
digests, public keys, placeholders, hashes, base64 images, name-like product words).
Every secret and personal datum is a gold `Span` (kind, category, start, end); hard
negatives are `Span`s of category "negative".

Secret values are built at run time (GitHub and npm tokens with a valid CRC32 checksum),
so nothing credential-shaped sits in the repository.

`score(samples, findings)` turns per-sample findings of any tool into recall, precision,
leaks and false positives on negatives; `gristmill_findings` reads a Redactor's findings.
"""

from __future__ import annotations

import base64
import json
import random
import string
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

SECRET = "secret"
PII = "pii"
NEGATIVE = "negative"

LANGUAGES = (
    "python",
    "javascript",
    "typescript",
    "java",
    "go",
    "yaml",
    "json",
    "dotenv",
    "shell",
    "dockerfile",
    "terraform",
    "sql",
)


@dataclass(frozen=True)
class Span:
    kind: str
    category: str  # secret | pii | negative
    start: int
    end: int


@dataclass(frozen=True)
class Sample:
    id: str
    language: str
    file_path: str
    text: str
    spans: tuple[Span, ...]

    @property
    def gold(self) -> tuple[Span, ...]:
        return tuple(s for s in self.spans if s.category != NEGATIVE)

    @property
    def negatives(self) -> tuple[Span, ...]:
        return tuple(s for s in self.spans if s.category == NEGATIVE)


# --- text assembly ---------------------------------------------------------------------------

Part = tuple[str, str, str]  # (text, kind, category); kind "" = plain text


def lit(text: str) -> Part:
    return (text, "", "")


def secret(kind: str, value: str) -> Part:
    return (value, kind, SECRET)


def pii(kind: str, value: str) -> Part:
    return (value, kind, PII)


def neg(kind: str, value: str) -> Part:
    return (value, kind, NEGATIVE)


class Builder:
    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.spans: list[Span] = []

    def add(self, parts: Iterable[Part]) -> None:
        for text, kind, category in parts:
            if kind:
                self.spans.append(Span(kind, category, self._length, self._length + len(text)))
            self._parts.append(text)
            self._length += len(text)

    @property
    def text(self) -> str:
        return "".join(self._parts)


# --- random values ---------------------------------------------------------------------------

B62 = string.ascii_letters + string.digits
B64 = B62 + "+/"
URLSAFE = B62 + "-_"
HEX = "0123456789abcdef"
_B62_ORDER = string.digits + string.ascii_uppercase + string.ascii_lowercase


def chars(rng: random.Random, n: int, alphabet: str = B62) -> str:
    """Random characters; every class the alphabet has shows up, as in real random keys."""
    classes = [c for c in (str.isdigit, str.isupper, str.islower) if any(map(c, alphabet))]
    while True:
        value = "".join(rng.choice(alphabet) for _ in range(n))
        if n < 8 or all(any(c(ch) for ch in value) for c in classes):
            return value


def checksummed(rng: random.Random, prefix: str) -> str:
    """`prefix` + 30 random + base62 CRC32 of them (GitHub's and npm's token format)."""
    body = chars(rng, 30)
    crc = zlib.crc32(body.encode())
    digits = ""
    while crc:
        crc, rest = divmod(crc, 62)
        digits = _B62_ORDER[rest] + digits
    return prefix + body + digits.rjust(6, "0")


def b64(rng: random.Random, n_bytes: int) -> str:
    return base64.b64encode(rng.randbytes(n_bytes)).decode()


def b64url(obj: object) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def pem_body(rng: random.Random, lines: int) -> list[str]:
    return [b64(rng, 48) for _ in range(lines)]


FIRST = (
    "James Maria Wei Aisha Oliver Sofia Mateo Priya Lukas Chen Fatima Noah Yuki Elena Omar "
    "Hannah Diego Ingrid Kwame Olga Rafael Mei Arjun Chloe Tomasz Leila Samuel Ana Hiroshi "
    "Grace Ahmed Nadia Daniel Zoe Ivan Lucia Emeka Sara Jonas Amara Pedro Freya Ravi Julia "
    "Marcus Nina Kenji Rosa Patrick Alice Dmitri Carmen Thomas Laura Hugo Emma Felix Irene "
    "Andrew Beatriz Kofi Helen Stefan Mariana Victor Claire Nikolai Elif Robert Ines Michael "
    "Sophie Benjamin Yasmin Gabriel Naomi Adrian Martina"
).split()
LAST = (
    "Smith Garcia Wang Okafor Johansson Rossi Hernandez Patel Schmidt Li Haddad Nguyen Tanaka "
    "Petrova Khan Mueller Lopez Larsen Mensah Ivanova Silva Zhang Sharma Dubois Kowalski "
    "Rahimi Cohen Pereira Yamamoto Murphy Hassan Novak Fischer Brown Sokolov Romero Eze Berg "
    "Weber Diallo Costa Nielsen Gupta Becker Anderson Moreau Suzuki Santos Walsh Taylor "
    "Kuznetsov Ortiz Lindqvist Baker Sato Alvarez Osei Martin Hughes Jensen Fernandes "
    "Kovacs Campbell Yilmaz Clarke Morales Bianchi Richter Kaur Wilson Svensson Adeyemi"
).split()
DOMAINS = (
    "acme-corp.com globex.io initech.com contoso.net umbrella-labs.org hooli.dev "
    "gmail.com outlook.com fastmail.fm corp.internal"
).split()


def person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(FIRST), rng.choice(LAST)


def email_of(rng: random.Random, first: str, last: str) -> str:
    local = rng.choice(
        [f"{first}.{last}", f"{first[0]}{last}", f"{first}{rng.randint(1, 99)}", f"{last}.{first}"]
    ).lower()
    return f"{local}@{rng.choice(DOMAINS)}"


def username_of(rng: random.Random, first: str, last: str) -> str:
    return rng.choice([f"{first[0]}{last}", f"{first}.{last}", first, f"{first}{last[0]}"]).lower()


def phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    area = rng.choice(["415", "212", "646", "312", "617", "206", "503", "720"])
    exchange = str(rng.randint(201, 998)).replace("555", "556")
    line = d(4)
    return rng.choice(
        [
            f"+1 {area} {exchange} {line}",
            f"({area}) {exchange}-{line}",
            f"{area}-{exchange}-{line}",
            f"+44 20 7{d(3)} {d(4)}",
            f"+49 30 {d(8)}",
            f"+33 1 4{d(1)} {d(2)} {d(2)} {d(2)}",
            f"+91 9{d(4)} {d(5)}",
            f"+61 2 9{d(3)} {d(4)}",
        ]
    )


def ip_address(rng: random.Random) -> str:
    r = rng.randint
    return rng.choice(
        [
            f"10.{r(0, 255)}.{r(0, 255)}.{r(1, 254)}",
            f"192.168.{r(0, 255)}.{r(1, 254)}",
            f"172.{r(16, 31)}.{r(0, 255)}.{r(1, 254)}",
            f"{r(11, 99)}.{r(1, 254)}.{r(0, 255)}.{r(1, 254)}",
            f"2001:db8:{r(1, 0xFFFF):x}::{r(1, 0xFFFF):x}",
            f"fe80::{r(1, 0xFFFF):x}:{r(1, 0xFFFF):x}:{r(1, 0xFFFF):x}:{r(1, 0xFFFF):x}",
        ]
    )


# --- languages -------------------------------------------------------------------------------


def _words(name: str) -> list[str]:
    return name.lower().replace("-", "_").split("_")


def styled(name: str, style: str) -> str:
    w = _words(name)
    if style == "upper":
        return "_".join(w).upper()
    if style == "camel":
        return w[0] + "".join(x.title() for x in w[1:])
    if style == "pascal":
        return "".join(x.title() for x in w)
    if style == "kebab":
        return "-".join(w)
    if style == "dotted":
        return ".".join(w)
    return "_".join(w)


# Assignment templates per language: (before-value template, after-value, name style).
ASSIGN: dict[str, list[tuple[str, str, str]]] = {
    "python": [
        ('{n} = "', '"\n', "upper"),
        ("{n} = '", "'\n", "snake"),
        ('    "{n}": "', '",\n', "snake"),
        ('client = Client({n}="', '", timeout=30)\n', "snake"),
        ('os.environ.setdefault("{n}", "', '")\n', "upper"),
    ],
    "javascript": [
        ("const {n} = '", "';\n", "camel"),
        ('  {n}: "', '",\n', "camel"),
        ("process.env.{n} = process.env.{n} || '", "';\n", "upper"),
    ],
    "typescript": [
        ('export const {n}: string = "', '";\n', "camel"),
        ("  {n}: '", "',\n", "camel"),
        ("private readonly {n} = `", "`;\n", "camel"),
    ],
    "java": [
        ('    private static final String {n} = "', '";\n', "upper"),
        ('        props.setProperty("{n}", "', '");\n', "dotted"),
        ('        String {n} = "', '";\n', "camel"),
    ],
    "go": [
        ('\t{n} := "', '"\n', "camel"),
        ('\t\t{n}: "', '",\n', "pascal"),
        ('\tos.Setenv("{n}", "', '")\n', "upper"),
    ],
    "yaml": [
        ("  {n}: ", "\n", "snake"),
        ('    {n}: "', '"\n', "snake"),
        ("      - name: {n}\n        value: ", "\n", "upper"),
    ],
    "json": [('  "{n}": "', '",\n', "snake"), ('    "{n}": "', '"\n', "camel")],
    "dotenv": [("{n}=", "\n", "upper"), ('{n}="', '"\n', "upper")],
    "shell": [
        ('export {n}="', '"\n', "upper"),
        ("{n}='", "'\n", "upper"),
        ('deploy --{n} "', '" --region eu-west-1\n', "kebab"),
    ],
    "dockerfile": [
        ("ENV {n}=", "\n", "upper"),
        ("ARG {n}=", "\n", "upper"),
        ("ENV {n} ", "\n", "upper"),
    ],
    "terraform": [('  {n} = "', '"\n', "snake"), ('  {n}      = "', '"\n', "snake")],
    "sql": [("INSERT INTO app_config (name, value) VALUES ('{n}', '", "');\n", "snake")],
}

COMMENT = {
    "python": "#",
    "javascript": "//",
    "typescript": "//",
    "java": "    //",
    "go": "\t//",
    "yaml": "#",
    "dotenv": "#",
    "shell": "#",
    "dockerfile": "#",
    "terraform": "#",
    "sql": "--",
}

PATHS = {
    "python": ["src/{m}/settings.py", "app/{m}/client.py", "scripts/{m}.py", "tests/test_{m}.py"],
    "javascript": ["src/{m}/index.js", "lib/{m}.js", "config/{m}.config.js"],
    "typescript": ["src/{m}/service.ts", "web/src/{m}.tsx", "packages/{m}/src/client.ts"],
    "java": ["src/main/java/com/acme/{M}Config.java", "app/src/main/java/io/{m}/{M}Client.java"],
    "go": ["cmd/{m}/main.go", "internal/{m}/client.go", "pkg/{m}/config.go"],
    "yaml": ["deploy/{m}/values.yaml", "config/{m}.yml", ".github/workflows/{m}.yml"],
    "json": ["config/{m}.json", "secrets-template/{m}.json", "keys/{m}-sa.json"],
    "dotenv": ["deploy/{m}.env", "docker/{m}/app.env"],
    "shell": ["scripts/{m}.sh", "bin/{m}-deploy.sh", "ops/{m}/bootstrap.sh"],
    "dockerfile": ["Dockerfile", "docker/{m}/Dockerfile", "services/{m}/Dockerfile"],
    "terraform": ["infra/{m}/main.tf", "terraform/{m}/variables.tf", "infra/{m}.tfvars"],
    "sql": ["db/migrations/00{d}_{m}.sql", "sql/{m}_seed.sql"],
}
MODULES = "billing auth payments search ingest notify reports gateway worker orders users".split()

FILLER: dict[str, list[str]] = {
    "python": [
        "import logging\nimport os\n",
        "from dataclasses import dataclass\n",
        "log = logging.getLogger(__name__)\n",
        "\n\ndef retry(fn, attempts=3):\n    for i in range(attempts):\n        try:\n"
        "            return fn()\n        except TimeoutError:\n"
        "            log.warning('retry %d', i)\n",
        "\n@dataclass\nclass Settings:\n    region: str = 'eu-west-1'\n"
        "    timeout_s: float = 30.0\n",
        "    rows = [r for r in rows if r.get('active')]\n",
    ],
    "javascript": [
        "const express = require('express');\nconst app = express();\n",
        "app.get('/health', (req, res) => res.json({ ok: true }));\n",
        "module.exports = { start, stop };\n",
        "async function fetchUsers(page) {\n  const res = await fetch(`/api/users?page=${page}`);\n"
        "  return res.json();\n}\n",
    ],
    "typescript": [
        "import { Injectable } from '@angular/core';\nimport axios from 'axios';\n",
        "export interface Order {\n  id: string;\n  total: number;\n}\n",
        "  async load(id: string): Promise<Order> {\n"
        "    return (await this.http.get(`/orders/${id}`)).data;\n  }\n",
    ],
    "java": [
        "package com.acme.app;\n\nimport java.util.Properties;\n",
        "public class AppConfig {\n",
        "    public Properties load() {\n        Properties props = new Properties();\n",
        "        return props;\n    }\n",
    ],
    "go": [
        'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n',
        "func main() {\n",
        "\tif err != nil {\n\t\tfmt.Fprintln(os.Stderr, err)\n\t\tos.Exit(1)\n\t}\n",
        "\tcfg := Config{\n",
    ],
    "yaml": [
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n",
        "spec:\n  replicas: 3\n  template:\n    spec:\n      containers:\n        - name: web\n",
        "database:\n  pool_size: 10\n  timeout: 30s\n",
        "jobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/checkout@v4\n",
    ],
    "json": [
        '{\n  "name": "service",\n  "version": "1.4.2",\n',
        '  "retries": 3,\n  "debug": false,\n',
    ],
    "dotenv": ["NODE_ENV=production\nPORT=8080\n", "LOG_LEVEL=info\nREGION=eu-west-1\n"],
    "shell": [
        "#!/usr/bin/env bash\nset -euo pipefail\n",
        'cd "$(dirname "$0")/.."\n',
        'for f in build/*.tar.gz; do\n  echo "uploading $f"\ndone\n',
    ],
    "dockerfile": [
        "FROM python:3.11-slim\nWORKDIR /app\n",
        "COPY requirements.txt .\nRUN pip install --no-cache-dir -r requirements.txt\n",
        'COPY . .\nCMD ["python", "-m", "app"]\n',
    ],
    "terraform": [
        'provider "aws" {\n  region = var.region\n}\n',
        'resource "aws_db_instance" "main" {\n  engine         = "postgres"\n'
        '  instance_class = "db.t3.micro"\n',
        "}\n",
    ],
    "sql": [
        "CREATE TABLE users (\n  id BIGSERIAL PRIMARY KEY,\n"
        "  created_at TIMESTAMPTZ NOT NULL\n);\n",
        "CREATE INDEX idx_users_created ON users (created_at);\n",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO reporting;\n",
    ],
}


def assign(rng: random.Random, lang: str, name: str, value: Sequence[Part]) -> list[Part]:
    before, after, style = rng.choice(ASSIGN[lang])
    return [lit(before.format(n=styled(name, style))), *value, lit(after)]


# --- secrets ---------------------------------------------------------------------------------

# kind -> (value factory, names to assign it to). Self-identifying formats also get neutral
# names; formats only recognisable by context (AWS secret key, Datadog, Twilio auth tokens)
# get the names people give them.
ValueFactory = Callable[[random.Random], list[Part]]
NEUTRAL = ["default_value", "client_config", "fallback", "conn", "value"]


def _one(kind: str, make: Callable[[random.Random], str]) -> ValueFactory:
    return lambda rng: [secret(kind, make(rng))]


def _openai(rng: random.Random) -> str:
    return rng.choice(
        [
            "sk-proj-" + chars(rng, 48, URLSAFE),
            "sk-" + chars(rng, 20) + "T3BlbkFJ" + chars(rng, 20),
            "sk-svcacct-" + chars(rng, 56, URLSAFE),
        ]
    )


def _github(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return "github_pat_" + chars(rng, 22) + "_" + chars(rng, 59)
    return checksummed(rng, rng.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]))


def _slack(rng: random.Random) -> str:
    digits = string.digits
    return (
        f"{rng.choice(['xoxb', 'xoxp', 'xoxa', 'xoxe'])}-{chars(rng, 12, digits)}-"
        f"{chars(rng, 13, digits)}-{chars(rng, 24)}"
    )


def _jwt(rng: random.Random) -> str:
    payload = {
        "sub": str(rng.randint(1000, 99999)),
        "iat": rng.randint(1_600_000_000, 1_800_000_000),
    }
    return ".".join(
        [b64url({"alg": "HS256", "typ": "JWT"}), b64url(payload), chars(rng, 43, URLSAFE)]
    )


def _azure_conn(rng: random.Random) -> list[Part]:
    account = rng.choice(MODULES) + "store" + str(rng.randint(1, 99))
    return [
        lit(f"DefaultEndpointsProtocol=https;AccountName={account};AccountKey="),
        secret("azure_storage_key", b64(rng, 64)),
        lit(";EndpointSuffix=core.windows.net"),
    ]


def _azure_sas(rng: random.Random) -> list[Part]:
    sig = b64(rng, 32).replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    account = rng.choice(MODULES) + "blobs"
    return [
        lit(
            f"https://{account}.blob.core.windows.net/exports/report.csv?sv=2022-11-02&ss=b"
            f"&srt=sco&sp=rl&se=2025-0{rng.randint(1, 9)}-15T10:00:00Z&spr=https&sig="
        ),
        secret("azure_sas_token", sig),
    ]


def _twilio(rng: random.Random) -> list[Part]:
    hex32 = lambda: chars(rng, 32, HEX)  # noqa: E731
    return [secret("twilio", rng.choice(["AC", "SK"]) + hex32())]


def _vault(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return rng.choice(["hvs.", "hvb."]) + chars(rng, rng.choice([24, 90]), URLSAFE)
    return "s." + chars(rng, 24)


def _url_credentials(rng: random.Random) -> list[Part]:
    scheme, port = rng.choice(
        [("postgresql", 5432), ("mysql", 3306), ("mongodb", 27017), ("redis", 6379), ("amqp", 5672)]
    )
    user = rng.choice(["app", "svc_orders", "admin", "reporting"])
    return [
        lit(f"{scheme}://{user}:"),
        secret("url_credentials", chars(rng, rng.randint(12, 24))),
        lit(f"@db-{rng.randint(1, 9)}.prod.internal:{port}/{rng.choice(MODULES)}"),
    ]


def generic_value(rng: random.Random, name: str) -> str:
    options: list[Callable[[], str]] = [
        lambda: chars(rng, rng.randint(16, 40)),
        lambda: chars(rng, rng.randint(16, 32), B62 + "!#%^*-_"),
        lambda: chars(rng, rng.choice([32, 64]), HEX),
        lambda: b64(rng, rng.choice([24, 32])),
    ]
    if "pass" in name or "pwd" in name:
        word = rng.choice(["Sunflower", "Tr0ub4dor", "Marble", "Kestrel", "Quartz", "Nimbus"])
        options.append(lambda: f"{word}{rng.choice('#!@$&')}{rng.randint(10, 9999)}")
    return rng.choice(options)()


GENERIC_NAMES = (
    "db_password admin_password smtp_password password passwd api_key secret_key auth_token "
    "client_secret access_token jwt_secret signing_key encryption_key session_secret "
    "webhook_secret refresh_token api_secret private_token"
).split()


SECRET_KINDS: dict[str, tuple[ValueFactory, list[str]]] = {
    "aws_access_key": (
        _one("aws_access_key", lambda r: "AKIA" + chars(r, 16, string.ascii_uppercase + "234567")),
        ["aws_access_key_id", "access_key_id", *NEUTRAL],
    ),
    "aws_secret_key": (
        _one("aws_secret_key", lambda r: chars(r, 40, B64)),
        ["aws_secret_access_key", "secret_access_key", "aws_secret_key"],
    ),
    "github_token": (_one("github_token", _github), ["github_token", "gh_token", *NEUTRAL]),
    "gitlab_token": (
        _one("gitlab_token", lambda r: "glpat-" + chars(r, 20, URLSAFE)),
        ["gitlab_token", "private_token", *NEUTRAL],
    ),
    "slack_token": (_one("slack_token", _slack), ["slack_bot_token", "slack_token", *NEUTRAL]),
    "slack_webhook": (
        _one(
            "slack_webhook",
            lambda r: (
                f"https://hooks.slack.com/services/T{chars(r, 8, string.ascii_uppercase)}"
                f"/B{chars(r, 10, string.ascii_uppercase + string.digits)}/{chars(r, 24)}"
            ),
        ),
        ["slack_webhook_url", "alerts_hook", *NEUTRAL],
    ),
    "stripe_key": (
        _one("stripe_key", lambda r: r.choice(["sk_live_", "rk_live_"]) + chars(r, 24)),
        ["stripe_secret_key", "stripe_api_key", *NEUTRAL],
    ),
    "openai_api_key": (_one("openai_api_key", _openai), ["openai_api_key", *NEUTRAL]),
    "anthropic_api_key": (
        _one("anthropic_api_key", lambda r: "sk-ant-api03-" + chars(r, 93, URLSAFE) + "AA"),
        ["anthropic_api_key", *NEUTRAL],
    ),
    "google_api_key": (
        _one("google_api_key", lambda r: "AIza" + chars(r, 35, URLSAFE)),
        ["google_api_key", "maps_key", *NEUTRAL],
    ),
    "jwt": (_one("jwt", _jwt), ["auth_header_token", "session_jwt", *NEUTRAL]),
    "npm_token": (
        _one("npm_token", lambda r: checksummed(r, "npm_")),
        ["npm_token", "npm_auth", *NEUTRAL],
    ),
    "pypi_token": (
        _one(
            "pypi_token",
            lambda r: (
                "pypi-AgEIcHlwaS5vcmc"
                + base64.urlsafe_b64encode(r.randbytes(rng_len(r))).decode().rstrip("=")
            ),
        ),
        ["pypi_token", "twine_password", *NEUTRAL],
    ),
    "azure_storage_key": (
        _azure_conn,
        ["azure_storage_connection_string", "storage_conn", *NEUTRAL],
    ),
    "azure_sas_token": (_azure_sas, ["export_url", "blob_sas_url", *NEUTRAL]),
    "twilio": (_twilio, ["twilio_account_sid", "twilio_api_key", *NEUTRAL]),
    "twilio_auth_token": (
        lambda r: [secret("twilio", chars(r, 32, HEX))],
        ["twilio_auth_token", "twilio_token"],
    ),
    "sendgrid_api_key": (
        _one("sendgrid_api_key", lambda r: f"SG.{chars(r, 22, URLSAFE)}.{chars(r, 43, URLSAFE)}"),
        ["sendgrid_api_key", "mail_key", *NEUTRAL],
    ),
    "vault_token": (_one("vault_token", _vault), ["vault_token", "vault_root_token"]),
    "datadog_key": (
        lambda r: [
            secret("datadog_key", chars(r, 32, HEX) if r.random() < 0.5 else chars(r, 40, HEX))
        ],
        ["dd_api_key", "dd_app_key", "datadog_api_key", "datadog_app_key"],
    ),
    "url_credentials": (_url_credentials, ["database_url", "broker_url", "dsn", *NEUTRAL]),
    "generic_secret": (lambda r: [], GENERIC_NAMES),  # value depends on the name; see below
}


def rng_len(rng: random.Random) -> int:
    return rng.randint(110, 160)


def secret_snippet(rng: random.Random, lang: str, kind: str) -> list[Part]:
    if kind == "private_key":
        return pem_snippet(rng, lang)
    if kind == "gcp_service_account":
        return gcp_snippet(rng, lang)
    factory, names = SECRET_KINDS[kind]
    name = rng.choice(names)
    if kind == "generic_secret":
        if lang == "sql" and rng.random() < 0.7:
            return sql_password(rng)
        value = [secret("generic_secret", generic_value(rng, name))]
    else:
        value = factory(rng)
    return assign(rng, lang, name, value)


def sql_password(rng: random.Random) -> list[Part]:
    pw = generic_value(rng, "password")
    user = rng.choice(["app", "reporting", "etl_user", "svc_billing"])
    before, after = rng.choice(
        [
            (f"CREATE USER {user} IDENTIFIED BY '", "';\n"),
            (f"ALTER USER {user} WITH PASSWORD '", "';\n"),
            (f"CREATE ROLE {user} LOGIN PASSWORD '", "' VALID UNTIL 'infinity';\n"),
            (f"SET PASSWORD FOR '{user}'@'%' = '", "';\n"),
        ]
    )
    return [lit(before), secret("generic_secret", pw), lit(after)]


def pem_snippet(rng: random.Random, lang: str) -> list[Part]:
    label = rng.choice(["RSA ", "EC ", "OPENSSH ", "", "ENCRYPTED "])
    body = pem_body(rng, rng.randint(3, 8))
    block = [f"-----BEGIN {label}PRIVATE KEY-----", *body, f"-----END {label}PRIVATE KEY-----"]
    if lang == "python":
        return [lit('SIGNING_KEY = """'), secret("private_key", "\n".join(block)), lit('"""\n')]
    if lang in ("javascript", "typescript"):
        return [lit("const signingKey = `"), secret("private_key", "\n".join(block)), lit("`;\n")]
    if lang == "yaml":
        indented = "\n".join("    " + line for line in block)
        return [lit("  tls_key: |\n    "), secret("private_key", indented[4:]), lit("\n")]
    if lang == "shell":
        return [
            lit("cat > ~/.ssh/deploy_key <<'EOF'\n"),
            secret("private_key", "\n".join(block)),
            lit("\nEOF\nchmod 600 ~/.ssh/deploy_key\n"),
        ]
    escaped = "\\n".join(block)
    return assign(rng, lang, "tls_private_key", [secret("private_key", escaped), lit("\\n")])


def gcp_snippet(rng: random.Random, lang: str) -> list[Part]:
    project = rng.choice(MODULES) + "-prod-" + str(rng.randint(100, 999))
    key = (
        "\\n".join(
            [
                "-----BEGIN PRIVATE KEY-----",
                *pem_body(rng, rng.randint(4, 10)),
                "-----END PRIVATE KEY-----",
            ]
        )
        + "\\n"
    )
    sa = f"{rng.choice(MODULES)}-sa@{project}.iam.gserviceaccount.com"
    parts = [
        lit('{\n  "type": "service_account",\n  "project_id": "' + project + '",\n'),
        lit('  "private_key_id": "'),
        secret("gcp_service_account", chars(rng, 40, HEX)),
        lit('",\n  "private_key": "'),
        secret("gcp_service_account", key),
        lit('",\n  "client_email": "'),
        pii("email", sa),
        lit(f'",\n  "client_id": "{rng.randint(10**20, 10**21)}",\n'),
        lit('  "token_uri": "https://oauth2.googleapis.com/token"\n}\n'),
    ]
    if lang == "json":
        return parts
    if lang == "python":
        return [lit("SERVICE_ACCOUNT_INFO = "), *parts]
    return [lit(f"{COMMENT.get(lang, '#')} service account key\n"), *parts]


ALL_SECRET_KINDS = (
    *[k for k in SECRET_KINDS if k not in ("generic_secret", "twilio_auth_token")],
    "twilio_auth_token",
    "private_key",
    "gcp_service_account",
    "generic_secret",
)


def twilio_context(rng: random.Random, lang: str) -> list[Part]:
    """Twilio auth tokens are plain hex: realistic code names Twilio near them."""
    c = COMMENT.get(lang, "#")
    return [lit(f"{c} Twilio credentials for SMS alerts\n")] if lang != "json" else []


# --- personal data ---------------------------------------------------------------------------


def pii_snippet(rng: random.Random, lang: str) -> list[Part]:
    first, last = person(rng)
    name = f"{first} {last}"
    c = COMMENT.get(lang)
    choice = rng.randrange(12)
    if lang == "json":
        return (
            [
                lit('  "author": "'),
                pii("person", name),
                lit(" <"),
                pii("email", email_of(rng, first, last)),
                lit('>",\n'),
            ]
            if choice < 5
            else assign(rng, lang, "support_phone", [pii("phone", phone(rng))])
        )
    if choice == 0:
        return [
            lit(f"{c} Author: "),
            pii("person", name),
            lit(" <"),
            pii("email", email_of(rng, first, last)),
            lit(">\n"),
        ]
    if choice == 1:
        return [
            lit(f"{c} TODO: ask "),
            pii("person", name),
            lit(" about the retry budget before release\n"),
        ]
    if choice == 2:
        return [
            lit(f"{c} On-call for this service: "),
            pii("person", name),
            lit(", "),
            pii("phone", phone(rng)),
            lit("\n"),
        ]
    if choice == 3:
        return [
            lit(f"{c} Contact "),
            pii("person", name),
            lit(" ("),
            pii("email", email_of(rng, first, last)),
            lit(") for staging access\n"),
        ]
    if choice == 4:
        home = rng.choice(
            ["/home/{u}/projects/data", "/Users/{u}/Downloads/exports", "/home/{u}/.cache/app"]
        )
        before, after = home.split("{u}")
        return assign(
            rng,
            lang,
            "data_dir",
            [lit(before), pii("path_username", username_of(rng, first, last)), lit(after)],
        )
    if choice == 5:
        user = username_of(rng, first, last)
        sep = (
            rng.choice(["\\", "\\\\"])
            if lang not in ("yaml", "dotenv", "dockerfile", "shell")
            else "\\"
        )
        return assign(
            rng,
            lang,
            "log_path",
            [
                lit(f"C:{sep}Users{sep}"),
                pii("path_username", user),
                lit(f"{sep}AppData{sep}Local{sep}app{sep}debug.log"),
            ],
        )
    if choice == 6:
        return assign(
            rng,
            lang,
            rng.choice(["db_host", "upstream_ip", "bastion"]),
            [pii("ip_address", ip_address(rng))],
        )
    if choice == 7:
        return assign(
            rng,
            lang,
            rng.choice(["admin_email", "alert_recipient", "owner"]),
            [pii("email", email_of(rng, first, last))],
        )
    if choice == 8:
        return [
            lit(f"{c} Reviewed by "),
            pii("person", name),
            lit(f" on 2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}; see the runbook\n"),
        ]
    if choice == 10:  # no cue phrase: NER alone
        return [lit(f"{c} "), pii("person", name), lit(" wrote the first version of this parser\n")]
    if choice == 11:
        return assign(rng, lang, "greeting", [lit("Welcome back, "), pii("person", name), lit("!")])
    return [
        lit(f"{c} Copied from "),
        pii("person", name),
        lit("'s notebook, do not change the thresholds\n"),
    ]


# --- hard negatives --------------------------------------------------------------------------

_PUBLIC_SSH_HEAD = "AAAAB3NzaC1yc2EAAAADAQABAAABAQ"


def negative_snippet(rng: random.Random, lang: str) -> list[Part]:
    choice = rng.randrange(15)
    if choice == 0 and lang in ("python", "javascript", "typescript", "java", "go"):
        return {
            "python": [
                lit("password_field = "),
                neg("identifier", "forms.CharField(widget=forms.PasswordInput)"),
                lit("\n"),
            ],
            "javascript": [
                lit("const token = "),
                neg("identifier", "await getToken(user)"),
                lit(";\n"),
            ],
            "typescript": [
                lit("const apiKey: string = "),
                neg("identifier", "config.get('apiKey')"),
                lit(";\n"),
            ],
            "java": [
                lit("        String password = "),
                neg("identifier", 'request.getParameter("password")'),
                lit(";\n"),
            ],
            "go": [lit("\ttoken, err := "), neg("identifier", "auth.GetToken(ctx)"), lit("\n")],
        }[lang]
    if choice == 1 and lang == "python":
        return [
            lit("def "),
            neg("identifier", "get_token"),
            lit("(self) -> str:\n    return self._token\n"),
        ]
    if choice in (0, 1):
        return assign(
            rng,
            lang,
            "secret_name",
            [
                neg(
                    "identifier",
                    rng.choice(["prod-db-credentials", "api-gateway-signing", "refresh_token"]),
                )
            ],
        )
    if choice == 2:
        return assign(
            rng,
            lang,
            rng.choice(["commit_sha", "revision", "base_ref"]),
            [neg("git_sha", chars(rng, 40, HEX))],
        )
    if choice == 3:
        return assign(
            rng,
            lang,
            rng.choice(["request_id", "tenant_id", "trace_id"]),
            [neg("uuid", str(uuid.UUID(int=rng.getrandbits(128), version=4)))],
        )
    if choice == 4:
        return [
            lit('    "integrity": "'),
            neg("lockfile_digest", "sha512-" + b64(rng, 64)),
            lit('",\n'),
        ]
    if choice == 5:
        return assign(
            rng,
            lang,
            "deploy_public_key",
            [
                neg(
                    "public_key",
                    "ssh-rsa " + _PUBLIC_SSH_HEAD + chars(rng, 300, B64) + " deploy@ci-runner",
                )
            ],
        )
    if choice == 6:
        body = "\n".join(pem_body(rng, 3))
        return [
            lit(f"{COMMENT.get(lang, '#')} verification key\n") if lang != "json" else lit(""),
            *assign(
                rng,
                lang,
                "jwt_public_key",
                [
                    neg(
                        "public_key",
                        "-----BEGIN PUBLIC KEY-----\\n"
                        + body.replace("\n", "\\n")
                        + "\\n-----END PUBLIC KEY-----",
                    )
                ],
            ),
        ]
    if choice == 7:
        value = rng.choice(
            [
                "<YOUR_API_KEY>",
                "changeme",
                "x" * 32,
                "your-token-here",
                "${DB_PASSWORD}",
                "{{ vault_db_password }}",
                "AKIA" + "IOSFODNN7EXAMPLE",
                "ghp_" + "x" * 36,
                "REPLACE_ME",
                "********",
            ]
        )
        return assign(
            rng,
            lang,
            rng.choice(["api_key", "password", "auth_token", "client_secret"]),
            [neg("placeholder", value)],
        )
    if choice == 8:
        return assign(
            rng,
            lang,
            rng.choice(["checksum", "etag", "sha256", "content_hash"]),
            [neg("hash", chars(rng, rng.choice([32, 40, 64]), HEX))],
        )
    if choice == 9:
        return assign(
            rng,
            lang,
            "logo",
            [neg("base64_image", "data:image/png;base64,iVBORw0KGgo" + b64(rng, 240))],
        )
    if choice == 10:
        word = rng.choice(
            [
                "Visual Studio Code",
                "Apache Kafka",
                "Google Cloud Storage",
                "Docker Compose",
                "Hello World",
                "Amazon Web Services",
                "Grafana Dashboard",
                "Redis Cluster",
            ]
        )
        return assign(
            rng, lang, rng.choice(["title", "label", "service_name"]), [neg("name_like", word)]
        )
    if choice == 11:
        return assign(
            rng,
            lang,
            rng.choice(["max_int", "epoch_ms", "order_number"]),
            [
                neg(
                    "number",
                    str(
                        rng.choice(
                            [2147483647, 1700000000123, 4294967295, rng.randint(10**9, 10**11)]
                        )
                    ),
                )
            ],
        )
    if choice == 12:
        path = rng.choice(
            [
                "/home/runner/work/app/app",
                "/home/ubuntu/app/current",
                "C:\\Users\\Public\\Documents",
                "/Users/Shared/build",
            ]
        )
        return assign(rng, lang, "workdir", [neg("service_path", path)])
    if choice == 13:
        return assign(
            rng, lang, "bind_host", [neg("loopback", rng.choice(["127.0.0.1", "0.0.0.0"]))]
        )
    return (
        [
            lit(
                f"{COMMENT.get(lang, '#')} Uses the "
                f"{rng.choice(['Kafka', 'Postgres', 'Grafana'])} client; see "
            ),
            neg("name_like", rng.choice(["Retry Policy", "Load Balancer", "Access Control"])),
            lit(" docs\n"),
        ]
        if lang != "json"
        else assign(rng, lang, "mode", [neg("name_like", "Read Only")])
    )


# --- samples ---------------------------------------------------------------------------------


def _path(rng: random.Random, lang: str) -> str:
    module = rng.choice(MODULES)
    return rng.choice(PATHS[lang]).format(m=module, M=module.title(), d=rng.randint(1, 9))


def make_sample(rng: random.Random, index: int, seed: int) -> Sample:
    lang = (
        LANGUAGES[index % len(LANGUAGES)] if index < len(LANGUAGES) * 2 else rng.choice(LANGUAGES)
    )
    # generic assignments come in many syntaxes: they get more samples than one format
    kinds = [*ALL_SECRET_KINDS, *["generic_secret"] * 5]
    snippets: list[list[Part]] = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2])):
        kind = (
            kinds[(index + len(snippets)) % len(kinds)] if rng.random() < 0.5 else rng.choice(kinds)
        )
        if kind == "twilio_auth_token":
            snippets.append(twilio_context(rng, lang) + secret_snippet(rng, lang, kind))
        else:
            snippets.append(secret_snippet(rng, lang, kind))
    for _ in range(rng.choice([0, 1, 1, 2])):
        snippets.append(pii_snippet(rng, lang))
    for _ in range(rng.choice([1, 1, 2, 3])):
        snippets.append(negative_snippet(rng, lang))
    rng.shuffle(snippets)
    filler = FILLER[lang]
    builder = Builder()
    builder.add([lit(filler[0])])
    for snippet in snippets:
        builder.add(snippet)
        if rng.random() < 0.6:
            builder.add([lit(rng.choice(filler))])
    # The cursor: a prefix ends part-way into a line.
    tail = rng.choice(filler)
    builder.add([lit(tail[: rng.randint(1, max(1, len(tail) - 1))])])
    return Sample(
        id=f"s{seed}-{index}",
        language=lang,
        file_path=_path(rng, lang),
        text=builder.text,
        spans=tuple(builder.spans),
    )


def generate(seed: int, n: int) -> list[Sample]:
    """`n` samples; the same seed always gives the same samples."""
    rng = random.Random(seed)
    return [make_sample(random.Random(rng.getrandbits(64)), i, seed) for i in range(n)]


# --- scoring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A tool's finding, by category (secret | pii)."""

    start: int
    end: int
    category: str
    label: str = ""


@dataclass
class Scores:
    gold: Counter[tuple[str, str]] = field(default_factory=Counter)  # (category, kind)
    covered: Counter[tuple[str, str]] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)  # category -> findings
    true_found: Counter[str] = field(default_factory=Counter)
    negative_hits: Counter[str] = field(default_factory=Counter)  # negative kind -> findings
    negatives: Counter[str] = field(default_factory=Counter)
    leaks: list[tuple[str, str]] = field(default_factory=list)  # (sample id, kind)
    bytes: int = 0

    def recall(self, category: str) -> float:
        total = sum(v for (c, _), v in self.gold.items() if c == category)
        hit = sum(v for (c, _), v in self.covered.items() if c == category)
        return hit / total if total else float("nan")

    def precision(self, category: str) -> float:
        return (
            self.true_found[category] / self.found[category]
            if self.found[category]
            else float("nan")
        )

    def kind_recall(self) -> dict[tuple[str, str], float]:
        return {key: self.covered[key] / n for key, n in sorted(self.gold.items())}


def _covered(text: str, span: Span, findings: Sequence[Found]) -> bool:
    """Every letter and digit of the gold span lies inside some finding."""
    marks = bytearray(span.end - span.start)
    for f in findings:
        lo, hi = max(f.start, span.start), min(f.end, span.end)
        for i in range(lo, hi):
            marks[i - span.start] = 1
    return all(marks[i] or not text[span.start + i].isalnum() for i in range(len(marks)))


def _overlaps(a_start: int, a_end: int, b: Span) -> bool:
    return a_start < b.end and b.start < a_end


def score(samples: Sequence[Sample], findings: Mapping[str, Sequence[Found]]) -> Scores:
    """Recall (gold fully covered by findings of its category), precision (findings
    overlapping gold), leaks (gold secrets not fully covered by any finding) and findings on
    hard negatives."""
    s = Scores()
    for sample in samples:
        found = findings.get(sample.id, ())
        s.bytes += len(sample.text.encode())
        gold = sample.gold
        for span in gold:
            key = (span.category, span.kind)
            s.gold[key] += 1
            if _covered(sample.text, span, [f for f in found if f.category == span.category]):
                s.covered[key] += 1
            if span.category == SECRET and not _covered(sample.text, span, found):
                s.leaks.append((sample.id, span.kind))
        for span in sample.negatives:
            s.negatives[span.kind] += 1
        for f in found:
            s.found[f.category] += 1
            if any(_overlaps(f.start, f.end, g) for g in gold):
                s.true_found[f.category] += 1
            else:
                for span in sample.negatives:
                    if _overlaps(f.start, f.end, span):
                        s.negative_hits[span.kind] += 1
                        break
    return s


def gristmill_findings(redactor: object, sample: Sample) -> list[Found]:
    """A Redactor's findings on a sample, by category of the entity found.

    Uses the dry-run `explain` when the Redactor has it, else the analysis it runs
    inside `redact` (policy drop rules are not applied: this measures detection).
    """
    from redaction.entities import CATALOGUE, Kind
    from redaction.lexer import kind_for_path

    fields = {"prefix": sample.text}
    raw: Iterable[tuple[int, int, str]]
    explain = getattr(redactor, "explain", None)
    if explain is not None:
        result = explain(fields, file_path=sample.file_path)
        if result.dropped is None or result.findings:
            raw = [(f.start, f.end, f.entity) for f in result.findings]
        else:
            raw = [(0, len(sample.text), "DROPPED")]
    else:
        analyzed = redactor._analyze(fields, kind_for_path(sample.file_path))  # type: ignore[attr-defined]
        raw = [(f.start, f.end, f.entity) for f in redactor._propagate(fields, analyzed)["prefix"]]  # type: ignore[attr-defined]
    out = []
    for start, end, entity in raw:
        entity_type = CATALOGUE.get(entity)
        category = (
            PII if entity_type is not None and entity_type.kind is not Kind.SECRET else SECRET
        )
        out.append(Found(start, end, category, entity))
    return out


def summary(samples: Sequence[Sample]) -> dict[str, int]:
    """Counts of gold spans and negatives by kind (for reports)."""
    counts: dict[str, int] = defaultdict(int)
    for sample in samples:
        for span in sample.spans:
            counts[f"{span.category}:{span.kind}"] += 1
    return dict(sorted(counts.items()))
