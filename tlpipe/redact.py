"""One place that makes a URI or a message safe to print: user info and secret-looking query values removed."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_KEYS = re.compile(r"(pass|secret|token|key|signature|credential|auth|session)", re.IGNORECASE)
# scheme://user:password@host or scheme://token@host anywhere inside a longer text
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/\s@'\"]+)@")


def redact(uri: str) -> str:
    """`uri` without credentials: `postgresql://alice:pw@db/x?sslkey=k` -> `postgresql://***@db/x?sslkey=***`."""
    text = str(uri)
    try:
        parts = urlsplit(text)
    except ValueError:
        return redact_text(text)
    if not parts.scheme or not parts.netloc:
        return redact_text(text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = [(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """A message with every `scheme://userinfo@` credential and every given secret value masked."""
    out = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", str(text))
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, "***")
    return out
