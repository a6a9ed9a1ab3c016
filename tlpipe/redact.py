"""The one redaction routine: a URI, a message, a log line or an HTTP body made safe to print.

`redact_text` masks three things, in this order:

1. the user info of every `scheme://user:password@host` in the text. The password may hold raw `@`, `/` and `:`
   (people paste DSNs unencoded), so the user info runs to the *last* `@` of the whitespace-free token, not the
   first; a token whose part before that `@` looks like a plain path (a `/` and no `:`) is left alone;
2. the value of every secret-looking `key=value`, `key: value` or `"key": "value"`: keys such as password,
   sslpassword, token, secret, X-Amz-Signature, api_key, session; `Authorization`, `Cookie` and `Set-Cookie`
   header values up to the end of the line (or the closing quote);
3. every string given in `secrets` (a token or cookie the caller holds), raw and percent-encoded.

Hand-written because no maintained library does this: `urllib.parse` splits a raw `@` or `/` in a password
wrongly and finds no URL inside free text; SQLAlchemy's `URL.render_as_string` masks only its own URLs.
A password holding whitespace cannot be told apart from the text around it and is not supported.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from urllib.parse import quote

MASK = "***"
# scheme:// then a token without whitespace; the user info is what precedes the token's last "@"
_URL = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<rest>\S+)")
_SECRET_WORDS = (
    r"pass(?:word|wd)?|pwd|secret|token|signature|credential|session|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|sslkey"
)
_HEADER_KEYS = r"authorization|proxy-authorization|cookie|set-cookie"
# A quoted value ends at its closing quote only where delimiters and then whitespace or the end follow (JSON, a
# dict or kwargs repr). Elsewhere the quote belongs to the value: `password='')abc` and `Authorization: '')abc`
# mask all of it, since a secret never holds whitespace but may hold quotes and brackets.
_QUOTED = r"""(?P<q>["'])(?P<qval>(?:\\.|(?!(?P=q)).)*)(?P=q)(?=[,;&)\]}]*(?:\s|$))"""
# a key (quoted or not), then = or :, then a value: quoted (_QUOTED), or up to whitespace or &
_KEY_VALUE = re.compile(
    r"""(?P<key>(?P<kq>["']?)(?<![\w.\-])[\w.\-]*(?:""" + _SECRET_WORDS + r""")[\w.\-]*(?P=kq))"""
    r"""(?P<sep>\s*[=:]\s*)(?:""" + _QUOTED + r"""|(?P<val>[^\s&]+))""",
    re.IGNORECASE,
)
_HEADER = re.compile(
    r"""(?P<key>(?P<kq>["']?)(?<![\w\-])(?:""" + _HEADER_KEYS + r""")(?P=kq))"""
    r"""(?P<sep>\s*[=:]\s*)(?:""" + _QUOTED + r"""|(?P<val>[^\r\n]+))""",
    re.IGNORECASE,
)


def redact_text(text: object, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every credential masked (see the module docstring for what counts as one).

    Args:
        text: Anything printable: a URI, an exception message, a log line, an HTTP response body.
        secrets: Exact values that must never show (e.g. the token a client was given); shorter than 4
            characters are ignored, since masking them would garble the text without protecting anything.

    Returns:
        The text with `***` in place of each credential.
    """
    out = _URL.sub(_mask_userinfo, str(text))
    out = _HEADER.sub(_mask_value, out)
    out = _KEY_VALUE.sub(_mask_value, out)
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            out = out.replace(form, MASK)
    return out


def redact(uri: object) -> str:
    """A URI without credentials: `postgresql://alice:pw@db/x?sslpassword=k` -> `postgresql://***@db/x?sslpassword=***`.

    The same routine as `redact_text`; the name says the caller holds a URI.
    """
    return redact_text(uri)


def _mask_userinfo(match: re.Match) -> str:
    rest = match.group("rest")
    userinfo, at, host = rest.rpartition("@")
    if not at or ("/" in userinfo and ":" not in userinfo):  # no user info, or an "@" inside a plain path
        return match.group(0)
    return f"{match.group('scheme')}{MASK}@{host}"


def _mask_value(match: re.Match) -> str:
    quote_char = match.group("q") or ""
    return f"{match.group('key')}{match.group('sep')}{quote_char}{MASK}{quote_char}"


def holds_credentials(uri: str) -> bool:
    """Whether `uri` carries a credential (user info or a secret query value) that belongs in the environment."""
    return redact_text(uri) != str(uri)


class _Redacting:
    """A text stream that passes every write through `redact_text` (print and logging write whole messages)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def redacted_console() -> Iterator[None]:
    """Every line a step prints or logs to stdout/stderr goes through the one redaction routine.

    Also re-points logging handlers made before the block (e.g. at a library's import) at the wrapped stream.
    """
    saved = sys.stdout, sys.stderr
    wrapped = {id(s): _Redacting(s) for s in saved}
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    handlers = {
        id(h): h
        for lg in loggers
        for h in lg.handlers
        if isinstance(h, logging.StreamHandler) and id(h.stream) in wrapped
    }.values()
    sys.stdout, sys.stderr = (wrapped[id(s)] for s in saved)
    for handler in handlers:
        handler.setStream(wrapped[id(handler.stream)])
    try:
        yield
    finally:
        for handler in handlers:
            handler.setStream(handler.stream._stream)
        sys.stdout, sys.stderr = saved
