"""Access control: API keys (plain and hashed), open paths, CORS and request ids, on a real
server driven by the official `openai` client and plain HTTP."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import text_generation
import text_generation.errors

from app.core.errors import AccessConfigError
from app.http.auth import ApiKeyRing, bearer_token, read_digest_file
from tests.support.openai_client import FLAN, FLAN_HUB_ID, openai_client
from tests.support.server import REPO_ROOT, RunningServer, running_server

PLAIN_KEYS = ("alpha-key-1f2e", "beta-key-9c8d")
HASHED_KEY = "gamma-key-from-file-77"
WRONG_KEY = "wrong-key-3a3a"
ORIGIN = "https://app.example"
CHAT = {"model": FLAN, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- keys and headers ------------------------------------------------------------------------


def test_keys_file_takes_digests_comments_and_sha256sum_lines(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        f"# team keys\n\n{sha256_hex('one')}\n{sha256_hex('two').upper()}  -  # ci\n"
    )
    ring = ApiKeyRing(tuple(read_digest_file(keys_file)))
    assert ring.accepts("one")
    assert ring.accepts("two")
    assert not ring.accepts("three")


@pytest.mark.parametrize(
    ("content", "message"),
    [("not-a-digest\n", "keys:1: expected a SHA-256"), ("# nothing\n", "holds no key digests")],
)
def test_bad_keys_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(content)
    with pytest.raises(AccessConfigError, match=message):
        read_digest_file(keys_file)


def test_missing_keys_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AccessConfigError, match="cannot read"):
        read_digest_file(tmp_path / "absent")


def test_no_keys_means_authentication_is_off() -> None:
    assert not ApiKeyRing(()).enabled
    assert not ApiKeyRing(()).accepts("")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (b"Bearer abc", "abc"),
        (b"bearer   abc  ", "abc"),
        (b"Basic abc", None),
        (b"Bearer ", None),
        (b"abc", None),
    ],
)
def test_bearer_token_parsing(header: bytes, token: str | None) -> None:
    assert bearer_token([(b"authorization", header)]) == token


def test_no_authorization_header_has_no_token() -> None:
    assert bearer_token([(b"content-type", b"application/json")]) is None


def test_serve_with_a_bad_keys_file_exits_with_one_line(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("secret-in-plain-text\n")
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", FLAN, "--port", "0"],
        cwd=REPO_ROOT,
        env={"LAMINI_API_KEYS_FILE": str(keys_file), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "expected a SHA-256 hex digest" in result.stderr
    assert "secret-in-plain-text" not in result.stderr


# --- a server with keys ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(
    tiny_twin: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    tiny_twin(FLAN_HUB_ID)
    keys_file = tmp_path_factory.mktemp("auth") / "api-keys.sha256"
    keys_file.write_text(f"# from the vault\n{sha256_hex(HASHED_KEY)}\n")
    env = {
        "LAMINI_API_KEYS": ",".join(PLAIN_KEYS),
        "LAMINI_API_KEYS_FILE": str(keys_file),
        "LAMINI_AUTH_PROTECT_METRICS": "true",
        "LAMINI_CORS_ALLOW_ORIGINS": ORIGIN,
        "LAMINI_LOG_FORMAT": "json",
    }
    with running_server([FLAN], env=env) as running:
        yield running


def authorization(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("key", [*PLAIN_KEYS, HASHED_KEY])
def test_every_configured_key_is_accepted(server: RunningServer, key: str) -> None:
    client = openai_client(server, api_key=key)
    chat = client.chat.completions.create(**CHAT)
    assert chat.choices[0].message.role == "assistant"
    assert client.completions.create(model=FLAN, prompt="Hi", max_tokens=2).choices


def test_a_wrong_key_is_a_401_for_the_openai_client(server: RunningServer) -> None:
    client = openai_client(server, api_key=WRONG_KEY)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(**CHAT)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert WRONG_KEY not in caught.value.message
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_missing_header_is_a_401_that_says_what_to_send(server: RunningServer) -> None:
    response = server.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "missing_api_key"
    assert error["type"] == "invalid_request_error"
    assert "Authorization: Bearer" in error["message"]


@pytest.mark.parametrize("path", ["/generate", "/generate_stream", "/"])
def test_tgi_generation_routes_need_a_key_too(server: RunningServer, path: str) -> None:
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}
    refused = server.post(path, json=body, headers=authorization(WRONG_KEY))
    assert refused.status_code == 401
    assert refused.json()["error_type"] == "authentication"
    assert server.post(path, json=body, headers=authorization(PLAIN_KEYS[0])).status_code == 200


def test_the_text_generation_client_sends_its_key_in_headers(server: RunningServer) -> None:
    keyed = text_generation.Client(server.base_url, headers=authorization(HASHED_KEY))
    assert keyed.generate("Hi", max_new_tokens=2).generated_text is not None
    with pytest.raises(text_generation.errors.UnknownError, match="missing API key"):
        text_generation.Client(server.base_url).generate("Hi", max_new_tokens=2)


def test_health_and_readiness_stay_open(server: RunningServer) -> None:
    assert server.get("/health").status_code == 200
    assert server.get("/ready").status_code == 200


def test_metrics_can_be_protected(server: RunningServer) -> None:
    assert server.get("/metrics").status_code == 401
    assert server.get("/metrics", headers=authorization(HASHED_KEY)).status_code == 200


def test_request_ids_are_echoed_even_on_a_401(server: RunningServer) -> None:
    refused = server.post("/v1/completions", json={}, headers={"X-Request-ID": "trace-401"})
    assert refused.status_code == 401
    assert refused.headers["x-request-id"] == "trace-401"
    generated = server.post("/v1/completions", json={})
    assert len(generated.headers["x-request-id"]) == 32


def test_cors_preflight_is_answered_without_a_key(server: RunningServer) -> None:
    preflight = server.client().options(
        "/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()


def test_cors_headers_reach_the_browser_on_success_and_on_401(server: RunningServer) -> None:
    for key in (PLAIN_KEYS[1], WRONG_KEY):
        response = server.post(
            "/v1/chat/completions", json=CHAT, headers={"Origin": ORIGIN, **authorization(key)}
        )
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


def test_other_origins_get_no_cors_headers(server: RunningServer) -> None:
    response = server.post(
        "/v1/chat/completions",
        json=CHAT,
        headers={"Origin": "https://evil.example", **authorization(PLAIN_KEYS[0])},
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_keys_never_reach_the_log(server: RunningServer) -> None:
    server.post("/v1/chat/completions", json=CHAT, headers=authorization(WRONG_KEY))
    server.post("/v1/chat/completions", json=CHAT, headers=authorization(PLAIN_KEYS[0]))
    log = server.log()
    assert "401" in log
    for secret in (*PLAIN_KEYS, HASHED_KEY, WRONG_KEY):
        assert secret not in log
