"""The recognizers for npm, PyPI, Azure storage keys and SAS tokens, Twilio, SendGrid, Vault,
Datadog, and the GitHub/npm token checksum: positives are replaced by their typed placeholder,
look-alikes without the format's context stay as they are. Values are generated at run time."""

from __future__ import annotations

import random
import string
import uuid

import pytest
import yaml

from redaction import Redactor
from redaction.recognizers import crc32_checksum_ok
from tests.data.redaction_corpus import B62, HEX, URLSAFE, b64, chars, checksummed
from tests.redaction.conftest import DEFAULT_POLICY, KEY, pattern_only_policy

RNG_SEED = 11


@pytest.fixture
def rng() -> random.Random:
    return random.Random(RNG_SEED)


# Each builder returns (text, secret, file path).
def npm_checksummed(r: random.Random):
    s = checksummed(r, "npm_")
    return f"//registry.npmjs.org/:_authToken={s}\n", s, "ci/npmrc.template"


def npm_in_code(r: random.Random):
    s = checksummed(r, "npm_")
    return f'const publishToken = "{s}";\n', s, "scripts/publish.js"


def npm_legacy_uuid(r: random.Random):
    s = str(uuid.UUID(int=r.getrandbits(128), version=4))
    return f"//registry.npmjs.org/:_authToken={s}\n", s, "ci/npmrc.template"


def pypi(r: random.Random):
    s = "pypi-AgEIcHlwaS5vcmc" + chars(r, 140, URLSAFE)
    return f"TWINE_USERNAME=__token__\nTWINE_PASSWORD={s}\n", s, "ci/publish.sh"


def azure_connection_string(r: random.Random):
    s = b64(r, 64)
    text = (
        'conn = "DefaultEndpointsProtocol=https;AccountName=billingstore;'
        f'AccountKey={s};EndpointSuffix=core.windows.net"\n'
    )
    return text, s, "src/storage.py"


def azure_sas(r: random.Random):
    s = b64(r, 32).replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    url = (
        "https://acct.blob.core.windows.net/c/a.csv?sv=2022-11-02&ss=b&srt=o&sp=r"
        f"&se=2025-01-01T00:00:00Z&spr=https&sig={s}"
    )
    return f'EXPORT_URL = "{url}"\n', s, "src/export.py"


def twilio_sid(prefix: str):
    def build(r: random.Random):
        s = prefix + chars(r, 32, HEX)
        return f'client = Client("{s}", auth)\n', s, "src/sms.py"

    return build


def twilio_auth_token(r: random.Random):
    s = chars(r, 32, HEX)
    text = f"from twilio.rest import Client\n\nclient = Client(account_sid, '{s}')\n"
    return text, s, "src/sms.py"


def sendgrid(r: random.Random):
    s = f"SG.{chars(r, 22, URLSAFE)}.{chars(r, 43, URLSAFE)}"
    return f"sg = SendGridAPIClient('{s}')\n", s, "src/mail.py"


def vault_service_token(r: random.Random):
    s = "hvs." + chars(r, 90, URLSAFE)
    return f'client = hvac.Client(url=VAULT_ADDR, t="{s}")\n', s, "src/vault.py"


def vault_legacy_token(r: random.Random):
    s = "s." + chars(r, 24)
    return f"export VAULT_TOKEN={s}\nvault kv get secret/app\n", s, "ops/vault.sh"


def datadog_api_key(r: random.Random):
    s = chars(r, 32, HEX)
    return f"DD_API_KEY={s}\nDD_SITE=datadoghq.eu\n", s, "deploy/agent.env"


def datadog_app_key(r: random.Random):
    s = chars(r, 40, HEX)
    return f'props.setProperty("dd.app.key", "{s}");\n', s, "src/Config.java"


def datadog_k8s_env(r: random.Random):
    s = chars(r, 40, HEX)
    text = f"        env:\n          - name: DATADOG_APP_KEY\n            value: {s}\n"
    return text, s, "deploy/web.yaml"


def github_checksummed(r: random.Random):
    s = checksummed(r, "ghs_")
    return f"TOKEN = '{s}'\n", s, "src/gh.py"


NEW_SECRETS = [
    pytest.param(npm_checksummed, "NPM_TOKEN", id="npm-npmrc"),
    pytest.param(npm_in_code, "NPM_TOKEN", id="npm-in-code"),
    pytest.param(npm_legacy_uuid, "NPM_TOKEN", id="npm-legacy-uuid-in-npmrc"),
    pytest.param(pypi, "PYPI_TOKEN", id="pypi-upload-token"),
    pytest.param(azure_connection_string, "AZURE_STORAGE_KEY", id="azure-account-key"),
    pytest.param(azure_sas, "AZURE_SAS_TOKEN", id="azure-sas-sig"),
    pytest.param(twilio_sid("AC"), "TWILIO_KEY", id="twilio-account-sid"),
    pytest.param(twilio_sid("SK"), "TWILIO_KEY", id="twilio-api-key"),
    pytest.param(twilio_auth_token, "TWILIO_KEY", id="twilio-auth-token-near-twilio"),
    pytest.param(sendgrid, "SENDGRID_API_KEY", id="sendgrid"),
    pytest.param(vault_service_token, "VAULT_TOKEN", id="vault-hvs"),
    pytest.param(vault_legacy_token, "VAULT_TOKEN", id="vault-legacy-near-vault"),
    pytest.param(datadog_api_key, "DATADOG_KEY", id="datadog-api-key"),
    pytest.param(datadog_app_key, "DATADOG_KEY", id="datadog-app-key-dotted-name"),
    pytest.param(datadog_k8s_env, "DATADOG_KEY", id="datadog-k8s-name-value-pair"),
    pytest.param(github_checksummed, "GITHUB_TOKEN", id="github-checksummed"),
]


@pytest.mark.parametrize("build,label", NEW_SECRETS)
def test_when_new_secret_kind_in_code_then_typed_placeholder_and_value_gone(
    redactor, rng, build, label
):
    text, secret, path = build(rng)
    out = redactor.redact({"prefix": text}, file_path=path)
    assert out is not None
    redacted = out.fields["prefix"]
    assert secret not in redacted
    assert f"<{label}_1>" in redacted


def test_when_connection_string_then_only_the_key_is_replaced(redactor, rng):
    text, _, path = azure_connection_string(rng)
    out = redactor.redact({"prefix": text}, file_path=path)
    assert out is not None
    assert (
        "AccountName=billingstore;AccountKey=<AZURE_STORAGE_KEY_1>;EndpointSuffix"
        in (out.fields["prefix"])
    )


def _random_hex(r: random.Random, n: int) -> str:
    return chars(r, n, HEX)


LOOK_ALIKES = [
    # hex of a Datadog / Twilio key's length, with neither name around: an MD5 or a SHA-1
    lambda r: (f'checksum = "{_random_hex(r, 32)}"\n', "src/a.py"),
    lambda r: (f"expected_sha1: {_random_hex(r, 40)}\n", "ci/verify.yaml"),
    # a legacy-Vault-shaped value with no mention of Vault
    lambda r: (f"ref = 's.{chars(r, 24)}'\n", "src/a.py"),
    # sig= in a URL that is not a shared access signature (no sv=, se=/sp=)
    lambda r: (f'url = "https://cdn.local/img.png?w=64&sig={chars(r, 43, B62)}"\n', "src/a.py"),
    # documentation stand-ins
    lambda r: ("NPM_TOKEN=npm_" + "x" * 36 + "\n", "ci/build.sh"),
    lambda r: ("//registry.npmjs.org/:_authToken=${NPM_TOKEN}\n", "ci/npmrc.template"),
    lambda r: ('sg_key = "SG.<your-key>"\n', "src/a.py"),
    # AC/SK followed by hex, but upper-case hex is not a Twilio SID
    lambda r: (f"ACCOUNT = 'AC{chars(r, 32, '0123456789ABCDEF')}'\n", "src/a.py"),
]


@pytest.mark.parametrize("build", LOOK_ALIKES)
def test_when_only_shaped_like_a_new_kind_then_unchanged(redactor, rng, build):
    text, path = build(rng)
    out = redactor.redact({"prefix": text}, file_path=path)
    assert out is not None
    assert out.fields["prefix"] == text
    assert out.counts == {}


def test_when_token_checksum_valid_then_checksum_ok(rng):
    for prefix in ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "npm_"):
        token = checksummed(rng, prefix)
        assert crc32_checksum_ok(token)


def test_when_token_checksum_altered_then_checksum_fails(rng):
    token = checksummed(rng, "ghp_")
    last = token[-1]
    altered = token[:-1] + ("A" if last != "A" else "B")
    assert not crc32_checksum_ok(altered)
    assert not crc32_checksum_ok("ghp_" + chars(rng, 36))  # random: 1 in 62**6 would pass
    assert not crc32_checksum_ok(token[:-1])  # truncated


def _strict_github_redactor() -> Redactor:
    """Default policy (without NER) whose GitHub threshold only a valid checksum reaches."""
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    entities = {k: v for k, v in data["entities"].items() if k != "PERSON"}
    entities["GITHUB_TOKEN"] = {"action": "replace", "threshold": 0.9}
    return Redactor(pattern_only_policy(entities=entities), key=KEY)


def test_when_checksum_valid_then_score_clears_a_strict_threshold(rng):
    redactor = _strict_github_redactor()
    token = checksummed(rng, "ghp_")
    out = redactor.redact({"prefix": f"t = '{token}'\n"}, file_path="a.py")
    assert out is not None
    assert out.fields["prefix"] == "t = '<GITHUB_TOKEN_1>'\n"


def test_when_checksum_invalid_then_default_redacts_but_strict_threshold_keeps(redactor, rng):
    """A random ghp_ token (no checksum) is still redacted by default (0.6 >= 0.5): failing
    safe; a policy that wants fewer false positives raises the threshold above 0.6."""
    token = "ghp_" + chars(rng, 36, string.ascii_letters + string.digits)
    assert not crc32_checksum_ok(token)
    text = f"t = '{token}'\n"
    default = redactor.redact({"prefix": text}, file_path="a.py")
    assert default is not None and token not in default.fields["prefix"]
    strict = _strict_github_redactor().redact({"prefix": text}, file_path="a.py")
    assert strict is not None and strict.fields["prefix"] == text
