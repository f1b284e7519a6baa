"""Credentials never leave in logs, journals or MLflow: URIs are shown with secrets masked.

A URI may carry a password (`http://user:PASSWORD@host`) or a signed query
(`?X-Amz-Signature=...&token=...`); `redact` masks both wherever they appear in a text, and
`redact_obj` does so through nested dicts and lists (a config written to the journal).
"""

from __future__ import annotations

import re

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*):(?P<secret>[^/@\s]+)@")
_QUERY = re.compile(
    r"(?P<key>[?&](?:[A-Za-z0-9_-]*(?:signature|token|secret|password|passwd|pwd|"
    r"credential|key|sig)[A-Za-z0-9_-]*))=(?P<value>[^&\s#]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """The text with every URI password and secret-looking query value masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['key']}={MASK}", text)


def redact_obj(obj):
    """`redact` applied to every string inside dicts, lists and tuples."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_obj(v) for v in obj)
    return obj


def is_redacted(text: str) -> bool:
    return f":{MASK}@" in text or f"={MASK}" in text
