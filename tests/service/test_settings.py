"""Settings: defaults < KMNRT_* environment < CLI; refusing unsafe or invalid values."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmnrt.errors import UserInputError
from kmnrt.service.settings import ServiceSettings, is_loopback, load_settings


def test_precedence_env_then_cli():
    env = {"KMNRT_MAX_BATCH": "4", "KMNRT_TTL_S": "12.5", "KMNRT_WARMUP": "false", "KMNRT_BUNDLE": "/b"}
    settings = load_settings({"max_batch": 2, "port": None}, env)
    assert settings.max_batch == 2              # CLI wins
    assert settings.ttl_s == 12.5 and settings.warmup is False and settings.bundle == Path("/b")
    assert settings.port == 8000                # unset CLI option keeps env/default
    assert load_settings({}, {}) == ServiceSettings()


def test_non_loopback_requires_token():
    with pytest.raises(UserInputError, match="requires a token"):
        load_settings({"host": "0.0.0.0"}, {})
    assert load_settings({"host": "0.0.0.0"}, {"KMNRT_TOKEN": "s3cret"}).token == "s3cret"
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.org")


@pytest.mark.parametrize("env", [{"KMNRT_MAX_BATCH": "many"}, {"KMNRT_WARMUP": "maybe"},
                                 {"KMNRT_QUEUE_POLICY": "drop"}, {"KMNRT_TTL_S": "-1"}])
def test_invalid_values_are_user_errors(env):
    with pytest.raises(UserInputError, match="KMNRT_|queue_policy|ttl_s"):
        load_settings({}, env)


def test_a_value_out_of_range_names_where_it_was_set():
    with pytest.raises(UserInputError, match=r"queue_depth must be positive, got 0 \(set by KMNRT_QUEUE_DEPTH='0'\)"):
        load_settings({}, {"KMNRT_QUEUE_DEPTH": "0", "KMNRT_MAX_BATCH": "2"})
    with pytest.raises(UserInputError, match=r"max_batch must be positive, got 0 \(set by --max-batch\)$"):
        load_settings({"max_batch": 0}, {"KMNRT_MAX_BATCH": "2"})
