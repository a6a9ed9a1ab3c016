"""tlpipe.redact: no canary survives, whatever the password holds and wherever the URL sits in a message."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlpipe.errors import ConfigError, PipelineError
from tlpipe.redact import holds_credentials, redact, redact_text

CANARY = "Zq9canary"
# every character a user may paste raw into a DSN password, the URL delimiters first
TRICKY = "@/:?#%&=+!$'\"()*,;[]~|^`{}<>\\" + "abcXYZ0189-._"
SCHEMES = ("http", "https", "postgresql", "postgresql+psycopg2", "mysql", "s3", "mlflow-artifacts")
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._ ", max_size=20)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def password():
    """A password holding the canary between any of the tricky characters (no whitespace)."""
    side = st.text(alphabet=TRICKY, max_size=8)
    return st.builds(lambda a, b: f"{a}{CANARY}{b}", side, side)


@st.composite
def url_with_password(draw):
    secret = draw(password())
    if draw(st.booleans()):
        secret = quote(secret, safe="") if draw(st.booleans()) else quote(secret, safe=":@/")
    scheme = draw(st.sampled_from(SCHEMES))
    user = draw(st.sampled_from(("alice", "", "a.b-c", "svc@corp")))
    host = draw(st.sampled_from(("db", "127.0.0.1", "kfp.example.com", "[::1]")))
    port = draw(st.sampled_from(("", ":5432", ":8080")))
    path = draw(st.sampled_from(("", "/", "/mlflow", "/a/b@c", "/x?sslmode=require", "/x?a=1&b=@")))
    return secret, f"{scheme}://{user}:{secret}@{host}{port}{path}"


@given(url_with_password(), WORDS, st.sampled_from(("", " ", ": ", "(", "'", '"', "=", "\n")), WORDS)
@PROPERTY
def test_no_canary_survives_in_a_url_anywhere_in_a_message(case, before, glue, after):
    secret, url = case
    text = f"{before}{glue}{url}{glue[::-1]} {after}"
    out = redact_text(text)
    assert CANARY not in out and secret not in out, (text, out)
    assert holds_credentials(url)


@given(
    st.sampled_from(
        (
            "password",
            "sslpassword",
            "PGPASSWORD",
            "token",
            "access_token",
            "secret",
            "client_secret",
            "X-Amz-Signature",
            "X-Amz-Security-Token",
            "api_key",
        )
    ),
    st.text(alphabet=TRICKY.replace("&", ""), max_size=6),
    st.sampled_from(("query", "dsn", "json", "repr", "colon")),
    WORDS,
)
@PROPERTY
def test_no_canary_survives_as_a_key_value_secret(key, extra, shape, after):
    value = f"{extra}{CANARY}"
    text = {
        "query": f"https://bucket.s3.amazonaws.com/k?X-Amz-Date=1&{key}={quote(value, safe='')}&z=1 {after}",
        "dsn": f"host=db {key}={value} user=app {after}",
        "json": json.dumps({"error": after, key: value, "user": "app"}),
        "repr": repr({"error": after, key: value, "user": "app"}),
        "colon": f"{after} {key}: {value}",
    }[shape]
    out = redact_text(text)
    assert CANARY not in out, (text, out)


@given(
    st.sampled_from(("Authorization", "authorization", "Proxy-Authorization", "Cookie", "Set-Cookie")),
    st.sampled_from(("Bearer ", "Basic ", "", "authservice_session=", "a=1; session=")),
    st.text(alphabet=TRICKY, max_size=6),
    st.sampled_from(("header", "json", "repr")),
)
@PROPERTY
def test_no_canary_survives_in_header_values(header, prefix, extra, shape):
    value = f"{prefix}{extra}{CANARY}"
    text = {
        "header": f"HTTP/1.1 401\r\nContent-Type: text/plain\r\n{header}: {value}\r\nX-Other: 1\r\n",
        "json": json.dumps({"headers": {header: value, "Host": "kfp"}}),
        "repr": f"HTTPHeaderDict({ {header: value, 'Host': 'kfp'}!r})",
    }[shape]
    out = redact_text(text)
    assert CANARY not in out, (text, out)
    assert "Content-Type: text/plain" in out or shape != "header"


@given(st.text(alphabet=TRICKY + " ", min_size=4, max_size=12), WORDS, WORDS)
@PROPERTY
def test_given_secret_values_never_show_raw_or_percent_encoded(secret, before, after):
    text = f"{before}{secret}{after} token in the URL: https://h/?t={quote(secret, safe='')}"
    assert secret not in redact_text(text, (secret,))
    assert quote(secret, safe="") not in redact_text(text, (secret,))


@given(url_with_password())
@PROPERTY
def test_the_code_refuses_credentials_in_tune_storage_without_printing_them(case):
    from tlpipe.config import parse_params
    from tlpipe.sections import TuneConfig
    from tlpipe.tuning.study import make_storage

    secret, url = case
    with pytest.raises(PipelineError) as err:
        make_storage(TuneConfig(), url)
    assert CANARY not in str(err.value) and secret not in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_params({"tune": {"storage": url}})
    assert CANARY not in str(err.value) and secret not in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:p@ss@host/x", "http://***@host/x"),  # the tail of a password holding "@" leaked
        ("postgresql://u:p/ss:w@db:5432/x", "postgresql://***@db:5432/x"),  # a raw "/" in the password
        ("failed: x?sslpassword=S3cr3t&sslmode=require", "failed: x?sslpassword=***&sslmode=require"),
        ("postgresql://alice:pw@db:5432/x?sslpassword=k&a=1", "postgresql://***@db:5432/x?sslpassword=***&a=1"),
        ("Authorization: Bearer abc.def\nnext line", "Authorization: ***\nnext line"),
        ('{"Cookie": "authservice_session=zz", "Host": "kfp"}', '{"Cookie": "***", "Host": "kfp"}'),
        # a quote inside the secret is not a closing quote unless whitespace follows (hypothesis found both)
        ("HTTP/1.1 401\r\nAuthorization: '')tail\r\nX: 1", "HTTP/1.1 401\r\nAuthorization: ***\r\nX: 1"),
        ("host=db password='')tail user=app", "host=db password=*** user=app"),
        ("f(token='abc')", "f(token='***')"),  # a kwargs repr keeps its quotes
        ("s3://bucket/photos/a@2x.png", "s3://bucket/photos/a@2x.png"),  # an "@" in a plain path stays
        ("tune.regimes = []: list should have at least 1 item", "tune.regimes = []: list should have at least 1 item"),
    ],
)
def test_examples(text, expected):
    assert redact_text(text) == expected == redact(text)
    assert holds_credentials(text) == (text != expected)


def test_every_line_a_step_prints_or_logs_is_redacted(tmp_path):
    """The CLI boundary wraps stdout, stderr and existing log handlers: a step that prints a URI leaks nothing."""
    import subprocess
    import sys

    from tests.conftest import REPO

    script = tmp_path / "step.py"
    script.write_text(
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "from tlpipe.cli import run_main\n"
        "def main(argv):\n"
        f"    print('tracking at http://alice:p@ss/{CANARY}@db:5000/ ready')\n"
        f"    logging.getLogger('x').warning('retrying with Authorization: Bearer {CANARY}')\n"
        f"    sys.stderr.write('dsn host=db password={CANARY}\\n')\n"
        "run_main(main)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert CANARY not in output, output
    assert "http://***@db:5000/ ready" in proc.stdout and "Authorization: ***" in proc.stderr
