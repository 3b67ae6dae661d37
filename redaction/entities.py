"""The catalogue of entity types a policy may act on.

Placeholder labels live here, not in the policy: the same entity keeps the same placeholder
(`<EMAIL_1>`) across policy versions, so training data stays consistent.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Kind(IntEnum):
    """What finds an entity; the value is its priority when findings overlap."""

    NER = 1  # spaCy, on comments / strings / prose only
    PII = 2  # structured personal data found by pattern (email, phone, ...)
    SECRET = 3  # credentials


@dataclass(frozen=True)
class EntityType:
    name: str
    label: str
    kind: Kind
    help: str
    # Only findings inside comments, strings or prose count: in code, an integer literal
    # such as 2147483647 is a valid phone number to python-phonenumbers.
    prose_only: bool = False


_ENTITIES = [
    EntityType("AWS_ACCESS_KEY", "AWS_ACCESS_KEY", Kind.SECRET, "AWS access key id (AKIA...)"),
    EntityType("AWS_SECRET_KEY", "AWS_SECRET_KEY", Kind.SECRET, "AWS secret access key"),
    EntityType("PRIVATE_KEY", "PRIVATE_KEY", Kind.SECRET, "PEM private key block (any kind)"),
    EntityType("GITHUB_TOKEN", "GITHUB_TOKEN", Kind.SECRET, "GitHub token (ghp_, github_pat_)"),
    EntityType("GITLAB_TOKEN", "GITLAB_TOKEN", Kind.SECRET, "GitLab token (glpat-, ...)"),
    EntityType("SLACK_TOKEN", "SLACK_TOKEN", Kind.SECRET, "Slack token (xoxb-, xoxp-, ...)"),
    EntityType("SLACK_WEBHOOK", "SLACK_WEBHOOK", Kind.SECRET, "Slack incoming webhook URL"),
    EntityType("STRIPE_KEY", "STRIPE_KEY", Kind.SECRET, "Stripe live key (sk_live_, rk_live_)"),
    EntityType("OPENAI_API_KEY", "OPENAI_API_KEY", Kind.SECRET, "OpenAI key (sk-, sk-proj-)"),
    EntityType("ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY", Kind.SECRET, "Anthropic key (sk-ant-)"),
    EntityType("GOOGLE_API_KEY", "GOOGLE_API_KEY", Kind.SECRET, "Google API key (AIza...)"),
    EntityType("JWT", "JWT", Kind.SECRET, "JSON Web Token"),
    EntityType("URL_CREDENTIALS", "URL_CREDENTIALS", Kind.SECRET, "user:password in a URL"),
    EntityType("NPM_TOKEN", "NPM_TOKEN", Kind.SECRET, "npm access token (npm_, .npmrc _authToken)"),
    EntityType("PYPI_TOKEN", "PYPI_TOKEN", Kind.SECRET, "PyPI upload token (pypi-AgEIcHlwaS5vcmc)"),
    EntityType(
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_KEY",
        Kind.SECRET,
        "Azure storage / service bus key in a connection string (AccountKey=)",
    ),
    EntityType(
        "AZURE_SAS_TOKEN", "AZURE_SAS_TOKEN", Kind.SECRET, "Azure shared access signature (sig=)"
    ),
    EntityType("TWILIO_KEY", "TWILIO_KEY", Kind.SECRET, "Twilio SID (AC/SK) or auth token"),
    EntityType("SENDGRID_API_KEY", "SENDGRID_API_KEY", Kind.SECRET, "SendGrid API key (SG.)"),
    EntityType("VAULT_TOKEN", "VAULT_TOKEN", Kind.SECRET, "HashiCorp Vault token (hvs., s.)"),
    EntityType("DATADOG_KEY", "DATADOG_KEY", Kind.SECRET, "Datadog API or application key"),
    EntityType(
        "GCP_SERVICE_ACCOUNT_KEY",
        "GCP_SERVICE_ACCOUNT_KEY",
        Kind.SECRET,
        "private_key / private_key_id of a GCP service-account JSON key file",
    ),
    EntityType(
        "GENERIC_SECRET", "SECRET", Kind.SECRET, "value assigned to a password/secret/token name"
    ),
    EntityType("EMAIL_ADDRESS", "EMAIL", Kind.PII, "e-mail address"),
    EntityType("PHONE_NUMBER", "PHONE", Kind.PII, "phone number", prose_only=True),
    EntityType("IP_ADDRESS", "IP_ADDRESS", Kind.PII, "IPv4 / IPv6 address"),
    EntityType("PATH_USERNAME", "USERNAME", Kind.PII, "user name inside a home-directory path"),
    EntityType("PERSON", "PERSON", Kind.NER, "person name (NER on comments, strings, prose)", True),
    EntityType(
        "LOCATION", "LOCATION", Kind.NER, "place name (NER on comments, strings, prose)", True
    ),
    EntityType("NRP", "NRP", Kind.NER, "nationality, religious or political group (NER)", True),
]

CATALOGUE: dict[str, EntityType] = {e.name: e for e in _ENTITIES}

# spaCy labels -> Presidio entity names, for the NER kinds above.
NER_LABELS: dict[str, str] = {
    "PERSON": "PERSON",
    "PER": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "NORP": "NRP",
}


def custom_entity(name: str) -> EntityType:
    """The entity type a policy's custom recognizer introduces."""
    return EntityType(name, name, Kind.SECRET, "custom recognizer")
