"""Each secret kind is replaced by its typed placeholder and its raw value never survives;
code that merely looks secret-adjacent stays exactly as it was."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.redaction.conftest import Fakes


# Each builder returns (text, secret, file path).
def aws_access_key(f: Fakes):
    s = f.aws_access_key()
    return f'client = boto3.client("s3", aws_access_key_id="{s}")\n', s, "src/app.py"


def aws_secret_assigned(f: Fakes):
    s = f.aws_secret_key()
    return f"[default]\naws_secret_access_key = {s}\n", s, "conf/credentials.ini"


def aws_secret_json(f: Fakes):
    s = f.aws_secret_key()
    return f'{{"AccessKeyId": "x", "SecretAccessKey": "{s}"}}', s, "out/creds.json"


def aws_secret_positional(f: Fakes):
    s = f.aws_secret_key()
    return f'Session("{f.aws_access_key()}", "{s}")\n', s, "src/app.py"


def github(prefix: str):
    def build(f: Fakes):
        s = prefix + f.chars(36)
        return f'headers = {{"Authorization": f"token {s}"}}\n', s, "src/gh.py"

    return build


def github_fine_grained(f: Fakes):
    s = "github_pat_" + f.chars(22) + "_" + f.chars(59)
    return f"GH = '{s}'\n", s, "src/gh.py"


def gitlab(f: Fakes):
    s = "glpat-" + f.chars(20)
    return f'gl = gitlab.Gitlab(url, private_token="{s}")\n', s, "src/gl.py"


def slack(prefix: str):
    def build(f: Fakes):
        s = f"{prefix}-{f.chars(11, '0123456789')}-{f.chars(12, '0123456789')}-{f.chars(24)}"
        return f"const client = new WebClient('{s}');\n", s, "web/slack.ts"

    return build


def slack_webhook(f: Fakes):
    team, hook = f.chars(8, "ABCDEFGH0123"), f.chars(8, "XYZ0123")
    s = f"https://hooks.slack.com/services/T{team}/B{hook}/{f.chars(24)}"
    return f'requests.post("{s}", json=msg)\n', s, "src/notify.py"


def stripe(prefix: str):
    def build(f: Fakes):
        s = prefix + f.chars(24)
        return f"stripe.api_key = '{s}'\n", s, "src/pay.py"

    return build


def openai(prefix: str):
    def build(f: Fakes):
        s = prefix + f.chars(48)
        return f'client = OpenAI(api_key="{s}")\n', s, "src/llm.py"

    return build


def anthropic(f: Fakes):
    s = "sk-ant-api03-" + f.chars(80) + "-" + f.chars(6) + "AA"
    return f"ANTHROPIC = '{s}'\n", s, "src/llm.py"


def google(f: Fakes):
    s = "AIza" + f.chars(35, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
    return (
        f'<script src="https://maps.googleapis.com/maps/api/js?key={s}"></script>',
        s,
        "web/index.html",
    )


def jwt(f: Fakes):
    s = f.jwt()
    return f"curl -H 'Authorization: Bearer {s}' https://api.local/\n", s, "scripts/call.sh"


def url_credentials(f: Fakes):
    pw = f.chars(14)
    return (
        f'DATABASE_URL = "postgresql://app_user:{pw}@db.prod.internal:5432/app"\n',
        f"app_user:{pw}",
        "src/db.py",
    )


def generic(template: str, path: str):
    def build(f: Fakes):
        s = f.chars(24, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#%")
        return template.format(s=s), s, path

    return build


SECRETS = [
    pytest.param(aws_access_key, "AWS_ACCESS_KEY", id="aws-access-key-id"),
    pytest.param(aws_secret_assigned, "AWS_SECRET_KEY", id="aws-secret-ini"),
    pytest.param(aws_secret_json, "AWS_SECRET_KEY", id="aws-secret-json"),
    pytest.param(aws_secret_positional, "AWS_SECRET_KEY", id="aws-secret-next-to-key-id"),
    pytest.param(github("ghp_"), "GITHUB_TOKEN", id="github-ghp"),
    pytest.param(github("gho_"), "GITHUB_TOKEN", id="github-gho"),
    pytest.param(github("ghu_"), "GITHUB_TOKEN", id="github-ghu"),
    pytest.param(github("ghs_"), "GITHUB_TOKEN", id="github-ghs"),
    pytest.param(github_fine_grained, "GITHUB_TOKEN", id="github-fine-grained"),
    pytest.param(gitlab, "GITLAB_TOKEN", id="gitlab-glpat"),
    pytest.param(slack("xoxb"), "SLACK_TOKEN", id="slack-bot"),
    pytest.param(slack("xoxp"), "SLACK_TOKEN", id="slack-user"),
    pytest.param(slack_webhook, "SLACK_WEBHOOK", id="slack-webhook"),
    pytest.param(stripe("sk_live_"), "STRIPE_KEY", id="stripe-secret"),
    pytest.param(stripe("rk_live_"), "STRIPE_KEY", id="stripe-restricted"),
    pytest.param(openai("sk-"), "OPENAI_API_KEY", id="openai-legacy"),
    pytest.param(openai("sk-proj-"), "OPENAI_API_KEY", id="openai-project"),
    pytest.param(anthropic, "ANTHROPIC_API_KEY", id="anthropic"),
    pytest.param(google, "GOOGLE_API_KEY", id="google-aiza"),
    pytest.param(jwt, "JWT", id="jwt"),
    pytest.param(url_credentials, "URL_CREDENTIALS", id="url-credentials"),
    # generic assignments, one per syntax
    pytest.param(generic('API_KEY = "{s}"\n', "src/a.py"), "SECRET", id="generic-python"),
    pytest.param(generic("const clientSecret = '{s}';\n", "web/a.ts"), "SECRET", id="generic-ts"),
    pytest.param(generic('String dbPassword = "{s}";\n', "A.java"), "SECRET", id="generic-java"),
    pytest.param(generic('token := "{s}"\n', "main.go"), "SECRET", id="generic-go"),
    pytest.param(generic("db:\n  password: {s}\n", "config.yaml"), "SECRET", id="generic-yaml"),
    pytest.param(generic('{{"auth_token": "{s}"}}', "c.json"), "SECRET", id="generic-json"),
    pytest.param(generic("SECRET_KEY={s}\n", "deploy/app.env.sample"), "SECRET", id="generic-env"),
    pytest.param(generic("export API_TOKEN={s}\n", "run.sh"), "SECRET", id="generic-shell"),
    pytest.param(generic("ENV API_TOKEN {s}\n", "Dockerfile"), "SECRET", id="generic-dockerfile"),
    pytest.param(generic('password = "{s}"\n', "main.tf"), "SECRET", id="generic-terraform"),
    pytest.param(
        generic("CREATE USER app IDENTIFIED BY '{s}';\n", "init.sql"), "SECRET", id="generic-sql"
    ),
    pytest.param(generic("mysql --password {s} -u root\n", "x.sh"), "SECRET", id="generic-cli"),
]


@pytest.mark.parametrize("build,label", SECRETS)
def test_when_secret_in_code_then_typed_placeholder_and_raw_value_gone(
    redactor, fakes, build, label
):
    text, secret, path = build(fakes)
    out = redactor.redact({"prefix": text}, file_path=path)
    assert out is not None
    redacted = out.fields["prefix"]
    assert secret not in redacted
    assert f"<{label}_1>" in redacted


PEM_KINDS = ["RSA ", "EC ", "DSA ", "OPENSSH ", "", "ENCRYPTED "]


@pytest.mark.parametrize("kind", PEM_KINDS, ids=lambda k: k.strip() or "PKCS8")
def test_when_pem_private_key_then_whole_block_replaced(redactor, fakes, kind):
    body = fakes.pem_body()
    block = f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"
    out = redactor.redact({"prefix": f'KEY = """{block}"""\nload(KEY)\n'}, file_path="k.py")
    assert out is not None
    assert out.fields["prefix"] == 'KEY = """<PRIVATE_KEY_1>"""\nload(KEY)\n'


def test_when_pgp_private_key_block_then_replaced(redactor, fakes):
    body = fakes.pem_body()
    block = f"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{body}\n-----END PGP PRIVATE KEY BLOCK-----"
    out = redactor.redact({"prefix": block + "\n"}, file_path="key.asc")
    assert out is not None
    assert out.fields["prefix"] == "<PRIVATE_KEY_1>\n"


def test_when_private_key_in_service_account_json_then_replaced(redactor, fakes):
    body = fakes.pem_body().replace("\n", "\\n")
    key = f"-----BEGIN PRIVATE KEY-----\\n{body}\\n-----END PRIVATE KEY-----\\n"
    text = f'{{"type": "service_account", "private_key": "{key}", "client_id": "1"}}'
    out = redactor.redact({"prefix": text}, file_path="sa.json")
    assert out is not None
    assert body not in out.fields["prefix"]
    assert '"private_key": "<GCP_SERVICE_ACCOUNT_KEY_1>"' in out.fields["prefix"]


def test_when_key_cut_by_cursor_then_both_halves_replaced(redactor, fakes):
    """The prefix ends inside the key (no END), the suffix starts inside it (no BEGIN)."""
    head, tail = fakes.pem_body(2), fakes.pem_body(2)
    prefix = f"KEY = '''-----BEGIN RSA PRIVATE KEY-----\n{head}\n"
    suffix = f"{tail}\n-----END RSA PRIVATE KEY-----'''\nprint(1)\n"
    out = redactor.redact({"prefix": prefix, "suffix": suffix}, file_path="k.py")
    assert out is not None
    assert head not in out.fields["prefix"] and tail not in out.fields["suffix"]
    assert out.fields["suffix"].endswith("'''\nprint(1)\n")


def _lockfile_digest() -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(b"left-pad").digest()).decode()


HARD_NEGATIVES = [
    # identifiers and calls named after secrets
    ("password_field = 'password'\n", "a.py"),
    ("def get_token(self) -> str:\n    return self._token\n", "a.py"),
    ('token = request.headers.get("X-Token")\n', "a.py"),
    ('api_key = os.environ["API_KEY"]\n', "a.py"),
    ("password: str = Field(..., min_length=12)\n", "a.py"),
    ("const token = await getToken(user);\n", "a.ts"),
    ('tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")\n', "a.py"),
    ('TOKEN_TYPE = "Bearer"\nsecret_name = "prod-db-credentials"\n', "a.py"),
    # hashes, ids, digests, public keys
    ('commit = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"\n', "a.py"),
    ('request_id = "123e4567-e89b-12d3-a456-426614174000"\n', "a.py"),
    (f'"integrity": "{_lockfile_digest()}",\n', "package-lock.json"),
    (
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
        "-----END PUBLIC KEY-----\n",
        "k.pub",
    ),
    # documentation placeholders
    ('aws_access_key_id = "AKIAIOSFODNN7EXAMPLE"\n', "a.py"),
    ('api_key = "<YOUR_API_KEY>"\npassword = "changeme"\n', "a.py"),
    ('GITHUB_TOKEN = "ghp_' + "x" * 36 + '"\n', "a.py"),
    ('db_url = "postgres://user:${DB_PASSWORD}@db:5432/app"\n', "a.py"),
    # numbers that are not phone numbers or addresses in code
    ("MAX_INT = 2147483647\nepoch = 1700000000\nversion = '1.2.3'\n", "a.py"),
    ('HOST = "127.0.0.1"\nremote = "git@github.com:org/repo.git"\n', "a.py"),
]


@pytest.mark.parametrize("text,path", HARD_NEGATIVES)
def test_when_code_only_looks_secret_then_unchanged(redactor, text, path):
    out = redactor.redact({"prefix": text}, file_path=path)
    assert out is not None
    assert out.fields["prefix"] == text
    assert out.counts == {}
