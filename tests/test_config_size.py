"""SADTALKER_SIZE: which render size (and so which SadTalker_V0.0.2_<size>.safetensors) the service loads."""

from __future__ import annotations

import pytest

from serving.config import ConfigError, ServingConfig


@pytest.mark.parametrize(("value", "size"), [(None, 256), ("", 256), ("256", 256), ("512", 512), (" 512 ", 512)])
def test_render_size_is_parsed(value: str | None, size: int) -> None:
    env = {} if value is None else {"SADTALKER_SIZE": value}
    assert ServingConfig.from_env(env).render_size == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1024", "SADTALKER_SIZE=1024 must be one of 256, 512"),
        ("384", "SADTALKER_SIZE=384 must be one of 256, 512"),
        ("128", "SADTALKER_SIZE='128' must be >= 256"),
        ("large", "SADTALKER_SIZE='large' is not an integer"),
        ("512px", "SADTALKER_SIZE='512px' is not an integer"),
    ],
)
def test_bad_render_size_is_one_clear_error(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ServingConfig.from_env({"SADTALKER_SIZE": value})
    assert str(raised.value) == message
