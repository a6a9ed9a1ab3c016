"""Is the tracking store there? One-line answers within seconds, before MLflow's minutes of retries."""

from __future__ import annotations

from tlpipe.errors import PipelineError
from tlpipe.redact import redact, redact_text


def sql_uri(uri: str) -> str:
    """A PostgreSQL tracking URI with the driver this project ships (psycopg2)."""
    if uri.startswith("postgresql://"):
        return uri.replace("postgresql://", "postgresql+psycopg2://", 1)
    return uri


CHECK_SECONDS = 12  # a tracking store that does not answer fails the step within this, not MLflow's minutes


def check_sql_store(uri: str, retries: int = 2, what: str = "MLflow tracking") -> None:
    """Fail in one line, within CHECK_SECONDS, when a PostgreSQL tracking store does not answer.

    MLflow retries a SQL store that is down for minutes, logging each attempt; direct connection
    attempts with a short timeout answer first.
    """
    if not uri.startswith("postgresql"):
        return
    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError

    def connect(timeout: int) -> None:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": timeout})
        try:
            with engine.connect():
                return
        finally:
            engine.dispose()

    _probe(uri, connect, retries, SQLAlchemyError, what)


def check_http_store(uri: str, retries: int = 2, what: str = "MLflow tracking") -> None:
    """Fail in one line, within CHECK_SECONDS, when an HTTP tracking server does not answer.

    MLflow's HTTP client retries a server that is down for minutes (7 retries with backoff, 120 s each);
    a GET of the server's /health with a short timeout answers first. Any HTTP answer counts (a 401 or 404
    is a server that answers), except a proxy's 502-504 for a server behind it that is down.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)  # user info dropped: urllib cannot send it, and /health needs no login
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    health = urlunsplit(
        (parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path.rstrip("/") + "/health", "", "")
    )

    def get(timeout: int) -> None:
        try:
            urllib.request.urlopen(health, timeout=timeout).close()  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as exc:
            if exc.code in (502, 503, 504):
                raise

    _probe(uri, get, retries, OSError, what)


def _probe(uri: str, attempt_once, retries: int, errors, what: str) -> None:
    import time

    deadline = time.monotonic() + CHECK_SECONDS
    for attempt in range(retries + 1):
        remaining = deadline - time.monotonic()
        try:
            attempt_once(max(1, min(5, int(remaining))))
            return
        except errors as exc:
            pause = 1 + attempt
            if attempt == retries or deadline - time.monotonic() < pause + 1:
                reason = redact_text(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
                raise PipelineError(
                    f"{what} at {redact(uri)} did not answer after {attempt} retries "
                    f"({reason}); start the server or set MLFLOW_TRACKING_URI"
                ) from None
            time.sleep(pause)
