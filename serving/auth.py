"""Optional API tokens: `Authorization: Bearer <token>` on every endpoint but the health checks and the page.

* SADTALKER_API_TOKENS: comma-separated tokens (e.g. one per client, so one can be revoked alone).
* SADTALKER_API_TOKEN_FILE: a file with one token per line (`#` comments and blank lines ignored); keeps tokens
  out of the process environment and `docker inspect`. Both may be set: the union is accepted.
* SADTALKER_METRICS_REQUIRE_TOKEN (0): 1 = /metrics needs a token too (Prometheus then sends it as
  `authorization: {credentials: ...}`); by default scrapers need none.

Neither set = no authentication (the service's behaviour before tokens existed). Open without a token:
/livez, /readyz, /healthz (orchestrators probe them without credentials), /metrics unless configured, and the
static page under /ui (HTML/JS/CSS with no data: the page asks for the token and sends it on every call).
Everything else, including the OpenAPI page and schema, answers 401 without a valid token.

Tokens are compared with `hmac.compare_digest` against every configured token (no early exit), and never logged:
the middleware does not log, and BentoML's access log records paths and status codes, not headers.
CORS stays off unless SADTALKER_CORS_ORIGINS lists allowed origins (comma-separated, e.g.
`https://app.example`; `*` allows any): `OptionalCORSMiddleware` then answers preflights and adds the headers.
It sits outside the token check, because preflight requests carry no credentials by design; the actual
cross-origin calls still need the token. (OPTIONS requests are not token-checked in any case: they reach no
endpoint.)
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.config import ConfigError, env_flag

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
PAGE_PREFIX = "/ui"
#: Shortest token accepted from the configuration: a short shared secret is guessable over the network.
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class TokenConfig:
    tokens: tuple[bytes, ...] = ()
    metrics_open: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TokenConfig:
        """Read the token variables; raises ConfigError (naming the variable, never the token) on bad values."""
        env = os.environ if env is None else env
        found: list[str] = []
        raw = env.get("SADTALKER_API_TOKENS", "")
        found += [part.strip() for part in raw.split(",") if part.strip()]
        file_name = env.get("SADTALKER_API_TOKEN_FILE", "").strip()
        if file_name:
            try:
                text = Path(file_name).expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise ConfigError(f"SADTALKER_API_TOKEN_FILE: cannot read {file_name} ({reason})") from None
            lines = [line.strip() for line in text.splitlines()]
            from_file = [line for line in lines if line and not line.startswith("#")]
            if not from_file:
                raise ConfigError(f"SADTALKER_API_TOKEN_FILE: {file_name} holds no token")
            found += from_file
        for index, token in enumerate(found, 1):
            if len(token) < MIN_TOKEN_LENGTH or any(ch.isspace() or not ch.isprintable() for ch in token):
                raise ConfigError(
                    f"API token #{index} (SADTALKER_API_TOKENS / SADTALKER_API_TOKEN_FILE) must be at least "
                    f"{MIN_TOKEN_LENGTH} printable characters without spaces (e.g. `openssl rand -hex 24`)"
                )
        metrics_open = not env_flag(env, "SADTALKER_METRICS_REQUIRE_TOKEN", False)
        return cls(tokens=tuple(token.encode() for token in dict.fromkeys(found)), metrics_open=metrics_open)

    def accepts(self, presented: bytes) -> bool:
        """Constant-time comparison against every token (the loop never stops early)."""
        matched = False
        for token in self.tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched

    def is_open(self, path: str) -> bool:
        if path in HEALTH_PATHS:
            return True
        if path == "/metrics":
            return self.metrics_open
        return path == PAGE_PREFIX or path.startswith(PAGE_PREFIX + "/")


def bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


class TokenAuthMiddleware:
    """ASGI middleware (added with `Service.add_asgi_middleware`); reads its config when BentoML builds the app."""

    def __init__(self, app: ASGIApp, config: TokenConfig | None = None) -> None:
        self.app = app
        self.config = TokenConfig.from_env() if config is None else config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.config.enabled or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if self.config.is_open(path):
            await self.app(scope, receive, send)
            return
        presented = bearer_token(scope)
        if presented is not None and self.config.accepts(presented):
            await self.app(scope, receive, send)
            return
        reason = "missing" if presented is None else "invalid"
        body = json.dumps(
            {"error": f"authorization: {reason} API token; send the header 'Authorization: Bearer <token>'"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="sadtalker"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def cors_origins(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """SADTALKER_CORS_ORIGINS as a tuple (empty = CORS off)."""
    env = os.environ if env is None else env
    origins = tuple(
        part.strip().rstrip("/") for part in env.get("SADTALKER_CORS_ORIGINS", "").split(",") if part.strip()
    )
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ConfigError(f"SADTALKER_CORS_ORIGINS: {origin!r} must look like https://host[:port] (or be *)")
    return origins


class OptionalCORSMiddleware:
    """Starlette's CORSMiddleware when SADTALKER_CORS_ORIGINS is set, else a pass-through (added before the token
    middleware, so it is the outer one)."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...] | None = None) -> None:
        origins = cors_origins() if origins is None else origins
        self.app: ASGIApp = app
        if origins:
            from starlette.middleware.cors import CORSMiddleware

            self.app = CORSMiddleware(
                app,
                allow_origins=list(origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
                expose_headers=["X-SadTalker-Job-Id", "X-SadTalker-Output", "Retry-After"],
                max_age=600,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
