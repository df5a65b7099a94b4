"""A `bentoml.SyncHTTPClient` that also takes `pathlib.Path` for the server-side path arguments.

`bentoml.SyncHTTPClient(url)` builds its requests from the JSON schema the server publishes, not from our
Pydantic model, and serialises arguments with plain `json.dumps`; a `Path` argument therefore fails
client-side ("Object of type PosixPath is not JSON serializable"). With the stock client pass `str(path)`;
or use this subclass, which converts every `os.PathLike` argument to its string before the call:

    with SadTalkerClient("http://127.0.0.1:3000") as client:
        client.generate(driven_audio=Path("/data/in/a.wav"), source_image=Path("/data/in/p.png"), option="crop")
"""

from __future__ import annotations

import os
from typing import Any

import bentoml


def _plain(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


class SadTalkerClient(bentoml.SyncHTTPClient):
    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Like `bentoml.SyncHTTPClient.call` (and so every endpoint method), with Path arguments as strings."""
        return super().call(name, *map(_plain, args), **{key: _plain(value) for key, value in kwargs.items()})
