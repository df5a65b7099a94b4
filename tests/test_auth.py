"""API tokens: configuration and the ASGI middleware (on a small Starlette app; the real server is in
test_web_http.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.auth import TokenAuthMiddleware, TokenConfig
from serving.config import ConfigError

A = "a-token-0123456789abcdef"
B = "b-token-0123456789abcdef"


def app_with(config: TokenConfig) -> TestClient:
    async def ok(request):  # noqa: ANN001, ANN202
        return PlainTextResponse(f"{request.method} {request.url.path}")

    paths = ["/generate", "/livez", "/readyz", "/metrics", "/ui/", "/ui/app.js", "/", "/uix"]
    app = Starlette(routes=[Route(p, ok, methods=["GET", "POST", "OPTIONS"]) for p in paths])
    return TestClient(TokenAuthMiddleware(app, config))


def test_tokens_from_env_list_and_file(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# comment\n\n  {B}  \n{A}\n")
    config = TokenConfig.from_env({"SADTALKER_API_TOKENS": f" {A},, ", "SADTALKER_API_TOKEN_FILE": str(token_file)})
    assert config.enabled and config.tokens == (A.encode(), B.encode())  # deduplicated, order kept
    assert config.metrics_open
    assert not TokenConfig.from_env({}).enabled
    assert not TokenConfig.from_env({"SADTALKER_METRICS_REQUIRE_TOKEN": "1", "SADTALKER_API_TOKENS": A}).metrics_open


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SADTALKER_API_TOKENS": "short"}, "at least 16 printable characters"),
        ({"SADTALKER_API_TOKEN_FILE": "/nonexistent/tokens"}, "SADTALKER_API_TOKEN_FILE: cannot read"),
        ({"SADTALKER_METRICS_REQUIRE_TOKEN": "maybe"}, "SADTALKER_METRICS_REQUIRE_TOKEN"),
    ],
)
def test_bad_token_settings_are_config_errors_without_the_token(env: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        TokenConfig.from_env(env)
    assert "short" not in str(info.value)  # a token value never appears in a message


def test_empty_token_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="holds no token"):
        TokenConfig.from_env({"SADTALKER_API_TOKEN_FILE": str(tmp_path / "tokens")})


def test_middleware_requires_a_valid_bearer_token_except_on_open_paths() -> None:
    client = app_with(TokenConfig(tokens=(A.encode(), B.encode())))
    for path in ("/generate", "/", "/uix"):  # /uix only looks like the page's prefix
        assert client.post(path).status_code == 401
        assert client.post(path, headers={"Authorization": f"Bearer {A}x"}).status_code == 401
        assert client.post(path, headers={"Authorization": f"Token {A}"}).status_code == 401
        assert client.post(path, headers={"Authorization": "Bearer "}).status_code == 401
        for token in (A, B):
            answer = client.post(path, headers={"Authorization": f"bearer {token}"})
            assert (answer.status_code, answer.text) == (200, f"POST {path}")
    denied = client.post("/generate")
    assert denied.headers["www-authenticate"] == 'Bearer realm="sadtalker"' and "missing" in denied.json()["error"]
    for path in ("/livez", "/readyz", "/metrics", "/ui/", "/ui/app.js"):
        assert client.get(path).status_code == 200, path
    assert client.options("/generate").status_code == 200  # CORS preflight passes to BentoML's CORS handling


def test_metrics_can_require_the_token_and_no_tokens_means_open() -> None:
    closed = app_with(TokenConfig(tokens=(A.encode(),), metrics_open=False))
    assert closed.get("/metrics").status_code == 401
    assert closed.get("/metrics", headers={"Authorization": f"Bearer {A}"}).status_code == 200
    assert app_with(TokenConfig()).post("/generate").status_code == 200


def test_cors_is_off_unless_origins_are_configured() -> None:
    from serving.auth import OptionalCORSMiddleware, cors_origins

    def stack(origins: tuple[str, ...]) -> TestClient:
        inner = app_with(TokenConfig(tokens=(A.encode(),))).app  # the token middleware around the routes
        return TestClient(OptionalCORSMiddleware(inner, origins))

    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    on = stack(("https://app.example",))
    answer = on.options("/generate", headers=preflight)  # no token: preflights never carry one
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    call = on.post("/generate", headers={"Origin": "https://app.example", "Authorization": f"Bearer {A}"})
    assert call.status_code == 200 and call.headers["access-control-allow-origin"] == "https://app.example"
    assert on.post("/generate", headers={"Origin": "https://app.example"}).status_code == 401  # still needs it
    assert on.options("/generate", headers={**preflight, "Origin": "https://evil.example"}).status_code == 400

    off = stack(())
    assert (
        "access-control-allow-origin"
        not in off.post("/generate", headers={"Origin": "https://app.example", "Authorization": f"Bearer {A}"}).headers
    )
    assert cors_origins({"SADTALKER_CORS_ORIGINS": " https://a.example/, http://b:8080 "}) == (
        "https://a.example",
        "http://b:8080",
    )
    assert cors_origins({}) == ()
    with pytest.raises(ConfigError, match="SADTALKER_CORS_ORIGINS"):
        cors_origins({"SADTALKER_CORS_ORIGINS": "app.example"})
