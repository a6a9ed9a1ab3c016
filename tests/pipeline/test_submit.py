"""pipelines.submit: credentials from flags or the environment reach kfp.Client and never reach the output."""

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines import submit as sub
from tests.conftest import REPO
from tlpipe.errors import PipelineError

TOKEN = "canary-token-7f3a9c1e"
COOKIE_VALUE = "canary-cookie-5b8d2e"
COOKIE = f"authservice_session={COOKIE_VALUE}"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No ambient credentials: no env variables, no service-account token file."""
    for var in (sub.TOKEN_ENV, sub.COOKIE_ENV, sub.NAMESPACE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(sub.SA_TOKEN_PATH_ENV, str(tmp_path / "no-sa-token"))


class FakeClient:
    """Stands in for kfp.Client: records what it was given, optionally fails like the real API."""

    calls: list = []
    state = "SUCCEEDED"
    error: Exception | None = None

    def __init__(self, host=None, namespace="kubeflow", **kwargs):
        FakeClient.calls.append(("init", host, namespace, kwargs))

    def create_run_from_pipeline_package(
        self, pipeline_file, arguments=None, run_name=None, experiment_name=None, namespace=None, **kwargs
    ):
        if FakeClient.error is not None:
            raise FakeClient.error
        FakeClient.calls.append(("create", Path(pipeline_file).name, arguments, experiment_name, namespace))
        return SimpleNamespace(run_id="run-1")

    def wait_for_run_completion(self, run_id, timeout):
        FakeClient.calls.append(("wait", run_id, timeout))
        return SimpleNamespace(state=FakeClient.state)


@pytest.fixture
def fake_kfp(monkeypatch, tmp_path):
    import kfp

    monkeypatch.setattr(kfp, "Client", FakeClient)
    FakeClient.calls, FakeClient.state, FakeClient.error = [], "SUCCEEDED", None
    package = tmp_path / "training_pipeline.yaml"
    package.write_text("pipelineInfo: {name: tlpipe-training}\n")
    return package


def _assert_no_secrets(text: str) -> None:
    assert TOKEN not in text and COOKIE_VALUE not in text, text


def test_token_cookie_and_namespace_are_passed_through(fake_kfp, capsys):
    run = sub.submit(
        "http://kfp.example:8080",
        "tlpipe-dev",
        fake_kfp,
        {"fine_tune_epochs": 3},
        namespace="team-a",
        wait=True,
        timeout=900,
        token=TOKEN,
        cookies=COOKIE,
    )
    assert run.run_id == "run-1"
    (_, host, namespace, kwargs), create, wait = FakeClient.calls
    assert (host, namespace) == ("http://kfp.example:8080", "team-a")
    assert kwargs == {"existing_token": TOKEN, "cookies": COOKIE}
    assert create == ("create", "training_pipeline.yaml", {"fine_tune_epochs": 3}, "tlpipe-dev", "team-a")
    assert wait == ("wait", "run-1", 900)
    out = capsys.readouterr()
    assert "submitted run run-1" in out.out and "finished: SUCCEEDED" in out.out
    _assert_no_secrets(out.out + out.err)


def test_credentials_and_namespace_from_the_environment(fake_kfp, monkeypatch, capsys):
    monkeypatch.setenv(sub.TOKEN_ENV, TOKEN)
    monkeypatch.setenv(sub.COOKIE_ENV, COOKIE)
    monkeypatch.setenv(sub.NAMESPACE_ENV, "team-b")
    sub.submit("http://kfp.example:8080", "e", fake_kfp, {})
    (_, _, namespace, kwargs), (*_, create_namespace) = FakeClient.calls
    assert namespace == create_namespace == "team-b"
    assert kwargs == {"existing_token": TOKEN, "cookies": COOKIE}
    _assert_no_secrets("".join(capsys.readouterr()))


def test_credentials_from_env_feed_submit(fake_kfp, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    monkeypatch.setenv(sub.COOKIE_ENV, COOKIE)
    sub.submit("http://kfp.example", "e", fake_kfp, {}, **sub.credentials_from_env(str(token_file)))
    assert FakeClient.calls[0][3] == {"existing_token": TOKEN, "cookies": COOKIE}
    FakeClient.calls = []
    sub.submit("http://kfp.example", "e", fake_kfp, {}, token_file=str(token_file))
    assert FakeClient.calls[0][3] == {"existing_token": TOKEN, "cookies": COOKIE}


def test_token_file_wins_over_the_environment(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    monkeypatch.setenv(sub.TOKEN_ENV, "from-env-token")
    assert sub.credentials_from_env(str(token_file)) == {"existing_token": TOKEN}
    assert sub.credentials_from_env(None) == {"existing_token": "from-env-token"}


def test_service_account_token_file_when_present(tmp_path, monkeypatch):
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    assert sub.credentials_from_env(None) == {}  # nothing configured: kfp.Client's own defaults
    sa_token = tmp_path / "sa-token"
    sa_token.write_text(TOKEN)
    monkeypatch.setenv(sub.SA_TOKEN_PATH_ENV, str(sa_token))
    creds = sub.credentials_from_env(None)["credentials"]
    assert isinstance(creds, ServiceAccountTokenVolumeCredentials)
    config = SimpleNamespace(api_key={})
    creds.refresh_api_key_hook(config)  # re-read on every request, as kfp.Client does
    assert config.api_key["authorization"] == TOKEN


def test_unreadable_token_file_names_the_file_only(tmp_path):
    with pytest.raises(PipelineError, match="--token-file .*missing"):
        sub.credentials_from_env(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(PipelineError, match="is empty"):
        sub.credentials_from_env(str(empty))


def test_api_errors_are_one_redacted_line(fake_kfp, capsys):
    from kfp_server_api import ApiException

    FakeClient.error = error = ApiException(status=401, reason="Unauthorized")
    error.body = f'{{"error": "bad token {TOKEN}"}}'
    with pytest.raises(PipelineError) as err:
        sub.submit("https://kfp.example", "e", fake_kfp, {}, token=TOKEN, cookies=COOKIE)
    message = str(err.value)
    assert "\n" not in message and "HTTP 401 Unauthorized" in message and "--token-file" in message
    _assert_no_secrets(message)

    FakeClient.error = RuntimeError(f"proxy said: Authorization: Bearer {TOKEN}; Cookie: {COOKIE}\nmore")
    with pytest.raises(PipelineError) as err:
        sub.submit("https://user:hunter22@kfp.example", "e", fake_kfp, {}, token=TOKEN, cookies=COOKIE)
    message = str(err.value)
    assert "\n" not in message and "hunter22" not in message
    _assert_no_secrets(message)
    _assert_no_secrets("".join(capsys.readouterr()))


def test_failed_run_exits_non_zero(fake_kfp):
    FakeClient.state = "FAILED"
    with pytest.raises(SystemExit):
        sub.submit("http://kfp.example", "e", fake_kfp, {}, wait=True)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on leaving the block: nothing listens there


@pytest.mark.parametrize("namespace", [None, "team-a"])
def test_unreachable_host_is_one_line_with_the_real_client(tmp_path, capsys, namespace):
    package = tmp_path / "p.yaml"
    package.write_text("pipelineInfo: {name: tlpipe-training}\n")
    host = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(PipelineError) as err:
        sub.submit(host, "e", package, {}, namespace=namespace, token=TOKEN, cookies=COOKIE)
    message = str(err.value)
    assert message.startswith(f"KFP API at {host}: ") and "\n" not in message, message
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    _assert_no_secrets(message + out.out + out.err)


class Refusing(http.server.BaseHTTPRequestHandler):
    """A KFP API that answers every request with `status` and `body()`, and counts the requests it got."""

    status = 401
    requests: list[str] = []

    def body(self) -> bytes:
        return json.dumps({"error": "refused", "code": 16}).encode()

    def _refuse(self):
        type(self).requests.append(self.path)
        body = self.body()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *args):
        pass


class EchoUnauthorized(Refusing):
    """A KFP API that refuses every request and echoes the credentials it was sent in the body."""

    def body(self) -> bytes:
        echo = {"Authorization": self.headers.get("Authorization", ""), "Cookie": self.headers.get("Cookie", "")}
        body = json.dumps({"error": "Unauthorized", "code": 16, "echo": echo}).encode()
        return body + (
            f"\nrequest headers: Authorization: {self.headers.get('Authorization')}; "
            f"Cookie: {self.headers.get('Cookie')}".encode()
        )


@contextlib.contextmanager
def serving(handler):
    """An HTTP server on loopback with `handler`; yields its URL and stops it after."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def echo_401():
    with serving(EchoUnauthorized) as url:
        yield url


def _submit(host: str, tmp_path, credentials: dict, *extra: str) -> subprocess.CompletedProcess:
    """`training_pipeline submit` of a stub package to `host`, with only `credentials` from the environment."""
    package = tmp_path / "p.yaml"
    package.write_text("pipelineInfo: {name: tlpipe-training}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), sub.SA_TOKEN_PATH_ENV: str(tmp_path / "none"), "HOME": str(tmp_path)}
    for key in (sub.NAMESPACE_ENV, sub.TOKEN_ENV, sub.COOKIE_ENV):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "pipelines.training_pipeline", "--params", str(REPO / "params.yaml"), "submit"]
    cmd += ["--host", host, "--experiment", "e", "--package", str(package), *extra]
    return subprocess.run(cmd, cwd=tmp_path, env={**env, **credentials}, capture_output=True, text=True)


@pytest.mark.parametrize("namespace", [[], ["--namespace", "team-a"]], ids=["healthz-retries", "namespace"])
def test_a_401_that_echoes_the_credentials_is_one_line_with_the_token_hint(echo_401, tmp_path, namespace):
    proc = _submit(echo_401, tmp_path, {sub.TOKEN_ENV: TOKEN, sub.COOKIE_ENV: COOKIE}, *namespace)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert output.count(TOKEN) + output.count(COOKIE_VALUE) == 0, output
    assert len(output.strip().splitlines()) <= 3, output
    assert "HTTP 401" in proc.stderr and "--audience=pipelines.kubeflow.org" in proc.stderr, output
    assert "kubectl create token default-editor -n " + ("team-a" if namespace else "<namespace>") in proc.stderr


@pytest.mark.parametrize("status", [401, 500])
def test_submit_without_namespace_fails_after_one_health_check(tmp_path, status):
    """kfp.Client retries a failing healthz 5 times 5 s apart (25 s); submit asks once and says it in one line.

    Counted in requests rather than seconds, so a busy machine cannot fail it.
    """
    import time

    handler = type("Refusal", (Refusing,), {"status": status, "requests": []})
    started = time.monotonic()
    with serving(handler) as url:
        proc = _submit(url, tmp_path, {})
    print(
        f"submit against a {status} answered in {time.monotonic() - started:.1f} s, {len(handler.requests)} request(s)"
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: KFP API at ") and f"HTTP {status}" in lines[0], lines
    assert handler.requests == ["/apis/v2beta1/healthz"], handler.requests
