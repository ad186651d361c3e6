"""Field checks that several integrations' settings make the same way.

The PagerDuty and Opsgenie settings each accept their vendor's endpoint in a global and
an EU form and store the canonical URL; they and Datadog each accept a key of a fixed
shape, stripped of the blanks a paste brings along, and refuse anything else with a
message saying what the key must look like. The logic was written out in every
validator; it lives here once, and each settings class only says its pattern and words.
"""

from __future__ import annotations

import re

from pydantic import SecretStr

__all__ = ["regional_url", "shaped_secret"]


def regional_url(value: str, pattern: re.Pattern[str], url: str, eu_url: str, error: str) -> str:
    """`url`, or `eu_url` when `pattern` (whose group 1 is the EU part of the host)
    matched it with that group; ValueError(`error`) when `value` does not match."""
    match = pattern.fullmatch(value.strip())
    if match is None:
        raise ValueError(error)
    return eu_url if match.group(1) else url


def shaped_secret(value: SecretStr, pattern: str | re.Pattern[str], error: str) -> SecretStr:
    """The secret without surrounding blanks when it fully matches `pattern`, else
    ValueError(`error`)."""
    key = value.get_secret_value().strip()
    if not re.fullmatch(pattern, key):
        raise ValueError(error)
    return SecretStr(key)
