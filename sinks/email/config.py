"""Settings of the Email integration (INTEGRATIONS-SPEC: Email).

The spec has one field: the addresses to notify ("press Enter after each email to add
multiple addresses"). The SMTP relay is not a per-integration setting: it is the
operator's, read from `ALERTRELAY_SMTP_*` (see `sinks.email.sink.SmtpRelay`).
"""

from __future__ import annotations

from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator

__all__ = ["MAX_RECIPIENTS", "EmailSettings", "ascii_address", "normalize_address"]

MAX_RECIPIENTS = 50
"""Addresses per integration after duplicates are removed: one SMTP transaction carries
them all, and relays commonly cap RCPT TO per message (Postfix 1000, Gmail 100, some
ESPs 50); past a few dozen a distribution list is the better tool."""

_MAX_RAW_ITEMS = 1000  # refuse absurd lists before validating each entry


def _shown(value: str) -> str:
    """An address as quoted in an error message: one line, bounded."""
    text = value if len(value) <= 80 else value[:79] + "…"
    return repr(text)


def normalize_address(value: str) -> str:
    """The address as stored: syntax checked by email-validator (RFC 5321/5322 with the
    practical limits: dot-atom local part of at most 64 characters, a real domain, no
    display name, quoted local part, IP literal or special-use domain such as .local),
    domain lower-cased. Non-ASCII local parts are refused because they need SMTPUTF8,
    which relays do not all offer; internationalized domains are fine (sent as IDNA)."""
    try:
        result = validate_email(
            value, check_deliverability=False, allow_smtputf8=False, strict=True
        )
    except EmailNotValidError as exc:
        raise ValueError(f"{_shown(value)} is not a valid email address: {exc}") from None
    return result.normalized


def ascii_address(value: str) -> str:
    """The ASCII (IDNA) form of a stored address, for the SMTP envelope and headers."""
    result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    return result.ascii_email or result.normalized


def _one_address(value: str) -> str:
    value = value.strip(" \t")  # what a form leaves around; CR/LF stay and are refused
    if not value:
        raise ValueError("email address is empty")
    return normalize_address(value)


EmailAddress = Annotated[str, AfterValidator(_one_address)]


class EmailSettings(BaseModel):
    """`emails`: one or more distinct, valid addresses (at most `MAX_RECIPIENTS`)."""

    model_config = ConfigDict(extra="forbid")

    emails: list[EmailAddress]

    @field_validator("emails", mode="before")
    @classmethod
    def _a_list(cls, value: object) -> object:
        if not isinstance(value, list | tuple):
            raise ValueError("emails must be a list of email addresses")
        if len(value) > _MAX_RAW_ITEMS:
            raise ValueError(f"at most {MAX_RECIPIENTS} email addresses are allowed")
        return value

    @field_validator("emails")
    @classmethod
    def _distinct_and_bounded(cls, emails: list[str]) -> list[str]:
        """Duplicates differing only in case go (first spelling kept, order kept):
        one person must not get the same alert twice."""
        seen: dict[str, str] = {}
        for address in emails:
            seen.setdefault(address.lower(), address)
        distinct = list(seen.values())
        if not distinct:
            raise ValueError("at least one email address is required")
        if len(distinct) > MAX_RECIPIENTS:
            raise ValueError(
                f"at most {MAX_RECIPIENTS} email addresses are allowed (got {len(distinct)}); "
                "use a distribution list for more"
            )
        return distinct
