"""Start a run of a compiled pipeline package on a Kubeflow Pipelines API server, with credentials.

Multi-user Kubeflow answers only authenticated requests (kubeflow/pipelines#7133). Credentials come from
the environment or a file, never from pipeline parameters, and are never printed (error messages are
redacted):

- a bearer token: `--token-file FILE`, else `$KF_PIPELINES_TOKEN`;
- else the projected service-account token that Kubeflow mounts into notebooks and pods
  (`$KF_PIPELINES_SA_TOKEN_PATH`, default /var/run/secrets/kubeflow/pipelines/token) when it exists;
  it is re-read on every request, so kubelet refreshes are picked up;
- a session cookie, e.g. `authservice_session=...` from a browser login: `$KF_PIPELINES_COOKIE`;
- the profile namespace: `--namespace`, else `$KF_PIPELINES_NAMESPACE`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TOKEN_ENV = "KF_PIPELINES_TOKEN"
COOKIE_ENV = "KF_PIPELINES_COOKIE"
NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # the variable kfp itself reads
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
AUTH_HINT = (
    "for a token, run kubectl create token default-editor -n {namespace} --audience=pipelines.kubeflow.org "
    "> token, then pass --token-file token (or $KF_PIPELINES_TOKEN), or a session cookie in "
    "$KF_PIPELINES_COOKIE; and --namespace"
)


def credentials_from_env(token_file: str | None) -> dict[str, Any]:
    """Keyword arguments for `kfp.Client` that authenticate it: a token, token-file credentials, a cookie.

    Args:
        token_file: A file holding a bearer token; it takes precedence over `$KF_PIPELINES_TOKEN`.

    Returns:
        Some of `existing_token`, `credentials` (a ServiceAccountTokenVolumeCredentials) and `cookies`;
        empty when nothing is configured.

    Raises:
        PipelineError: `token_file` cannot be read or is empty.
    """
    from tlpipe.errors import PipelineError

    kwargs: dict[str, Any] = {}
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PipelineError(f"--token-file {token_file}: cannot read it ({exc.strerror})") from None
        if not token:
            raise PipelineError(f"--token-file {token_file} is empty")
        kwargs["existing_token"] = token
    elif os.environ.get(TOKEN_ENV, "").strip():
        kwargs["existing_token"] = os.environ[TOKEN_ENV].strip()
    else:
        sa_path = os.environ.get(SA_TOKEN_PATH_ENV) or SA_TOKEN_PATH
        if os.path.isfile(sa_path):
            from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

            kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=sa_path)
    if os.environ.get(COOKIE_ENV, "").strip():
        kwargs["cookies"] = os.environ[COOKIE_ENV].strip()
    return kwargs


def submit(
    host: str,
    experiment: str,
    package: Path | str,
    arguments: dict[str, Any],
    namespace: str | None = None,
    wait: bool = False,
    timeout: int = 6 * 3600,
    run_name: str | None = None,
    token: str | None = None,
    cookies: str | None = None,
    *,
    token_file: str | None = None,
    existing_token: str | None = None,
    credentials: Any = None,
):
    """Upload `package` as a run of `experiment` on the KFP API server at `host`; optionally wait for it.

    Args:
        host: The KFP API URL, e.g. http://localhost:8080 (a port-forward) or https://kubeflow.example.com/pipeline.
        experiment: The experiment name (created if missing).
        package: A compiled pipeline package (IR YAML).
        arguments: Pipeline parameters.
        namespace: The Kubeflow profile namespace; None = `$KF_PIPELINES_NAMESPACE`, else the server's default.
        wait: Wait for the run and exit non-zero unless it succeeds.
        timeout: Seconds to wait.
        run_name: Name of the run; default "tlpipe-training <time>".
        token: A bearer token; overrides `token_file` and the environment.
        cookies: A Cookie header value; overrides `$KF_PIPELINES_COOKIE`.
        token_file: A file holding a bearer token (see `credentials_from_env`).
        existing_token: Same as `token`; with `credentials` and `cookies` these are the keys
            `credentials_from_env` returns, so `submit(..., **credentials_from_env(path))` works.
        credentials: A kfp `TokenCredentialsBase` (e.g. a service-account token file).

    Returns:
        The run (`run.run_id`).

    Raises:
        PipelineError: The API could not be reached or refused the request (one line, no credentials).
        SystemExit: With `wait`, the run ended in a state other than SUCCEEDED.
    """
    from tlpipe.errors import PipelineError
    from tlpipe.redact import redact

    auth = credentials_from_env(token_file)  # the environment's, unless given here
    token = token or existing_token
    if token or credentials:
        auth.pop("existing_token", None)
        auth.pop("credentials", None)
        auth.update({"existing_token": token} if token else {"credentials": credentials})
    if cookies:
        auth["cookies"] = cookies
    secrets = _secret_values(auth)
    namespace = namespace or os.environ.get(NAMESPACE_ENV) or None

    where = redact(host)
    logged: list[logging.LogRecord] = []

    def one_line(exc: Exception) -> str:
        return api_error_line(exc, logged, secrets, namespace)

    try:
        with warnings.catch_warnings(), kfp_logs_captured(logged):  # kfp warns on every Client() (v2 backend)
            warnings.simplefilter("ignore", FutureWarning)
            client = _client(host, namespace, auth)
            run = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                experiment_name=experiment,
                namespace=namespace,
                run_name=run_name or f"tlpipe-training {time.strftime('%Y-%m-%d %H:%M:%S')}",
            )
    except Exception as exc:  # connection refused, auth, HTTP errors from the KFP API: one line for a person
        raise PipelineError(
            f"KFP API at {where}: {one_line(exc)}; check --host (e.g. a port-forward to "
            "ml-pipeline-ui) and that you are logged in to the cluster"
        ) from None
    print(f"submitted run {run.run_id} to experiment {experiment!r} on {where}")
    if wait:
        try:
            with kfp_logs_captured(logged):
                done = client.wait_for_run_completion(run.run_id, timeout=timeout)
        except Exception as exc:  # timeout or API errors while polling
            raise PipelineError(f"waiting for run {run.run_id} on {where}: {one_line(exc)}") from None
        state = getattr(done, "state", None) or getattr(getattr(done, "run", None), "status", "unknown")
        print(f"run {run.run_id} finished: {state}")
        if str(state).upper() not in ("SUCCEEDED", "SUCCESS"):
            raise SystemExit(1)
    return run


def _client(host: str, namespace: str | None, auth: dict[str, Any]):
    """A `kfp.Client` whose health check is a single request.

    Without a namespace, `kfp.Client()` asks the API's healthz endpoint whether it is multi-user, and kfp's
    `get_kfp_healthz` retries a failing answer 5 times, 5 s apart: a server that answers 401 or 500 costs 25 s
    before the one-line error. A person at a terminal reruns; one request answers the same question, and its
    ApiException carries the status and body that `api_error_line` reports.
    """
    import kfp

    class OneProbeClient(kfp.Client):
        def get_kfp_healthz(self, sleep_duration: int = 5):
            return self.healthzs.healthz_service_get_healthz()  # the public API kfp.Client builds in __init__

    return OneProbeClient(host=host, namespace=namespace, **auth) if namespace else OneProbeClient(host=host, **auth)


@contextlib.contextmanager
def kfp_logs_captured(records: list[logging.LogRecord]) -> Iterator[list[logging.LogRecord]]:
    """Keep the kfp client's logging off the console for the block; its records are appended to `records`.

    kfp logs through the root logger, e.g. a full traceback with the response body (which may echo the
    request's Authorization and Cookie headers) on each of `get_kfp_healthz`'s five attempts; the caller
    turns the records into one redacted line instead (`api_error_line`).
    """

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [Keep(logging.WARNING)]
    try:
        yield records
    finally:
        root.handlers = saved


def api_error_line(
    exc: BaseException, records: list[logging.LogRecord], secrets: tuple[str, ...] = (), namespace: str | None = None
) -> str:
    """One redacted line for a failed KFP API call: the HTTP status, a hint for 401/403, the response body.

    Args:
        exc: What the kfp client raised (an ApiException, or e.g. the TimeoutError `get_kfp_healthz` raises
            after its retries, whose cause is only in the logged records).
        records: The log records `kfp_logs_captured` kept; the last ApiException among them is the cause.
        secrets: Values to mask besides what `redact_text` finds by itself (the token, the cookie).
        namespace: The profile namespace, for the hint's `kubectl create token` command.
    """
    from kfp_server_api import ApiException

    from tlpipe.redact import redact_text

    causes = [exc] + [r.exc_info[1] for r in reversed(records) if r.exc_info and r.exc_info[1] is not None]
    api: Any = next((c for c in causes if isinstance(c, ApiException) and getattr(c, "status", None)), None)
    if api is None:
        return redact_text((str(exc).splitlines() or [type(exc).__name__])[0][:300], secrets)
    line = f"HTTP {api.status} {api.reason}"
    if api.status in (401, 403):
        line += "; " + AUTH_HINT.format(namespace=namespace or "<namespace>")
    body = " ".join(str(api.body or "").split())[:300]
    return redact_text(f"{line}; response: {body}" if body else line, secrets)


def _secret_values(auth: dict[str, Any]) -> tuple[str, ...]:
    """The strings a message must never show: the token, the whole cookie header and each cookie value."""
    values = [auth.get("existing_token") or ""]
    cookie = auth.get("cookies") or ""
    values += [cookie] + [part.partition("=")[2].strip() for part in cookie.split(";")]
    return tuple(v for v in values if v)
