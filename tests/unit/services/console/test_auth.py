"""Who may write to the console: token, sessions, the trusted proxy, CSRF tokens, sign-in throttling."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from services.console.auth import Authenticator, SignInLimiter, check_console_auth, configured_token
from shared.errors import ConfigError
from shared.settings import ConsoleSettings

TOKEN = "a-long-enough-token"


def test_the_token_is_compared_whole() -> None:
    auth = Authenticator(TOKEN)
    assert auth.token_matches(TOKEN)
    for wrong in ("", TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
        assert not auth.token_matches(wrong)
    assert not Authenticator(None).token_matches("")


def test_sessions_are_signed_expire_and_end_with_a_new_token() -> None:
    auth = Authenticator(TOKEN, session_s=60)
    cookie = auth.issue_session("Ana", now=1000)
    operator = auth.session_operator(cookie, now=1030)
    assert operator is not None and (operator.name, operator.authenticated_by) == ("Ana", "token")
    assert auth.session_operator(cookie, now=1061) is None
    payload, _, signature = cookie.partition(".")
    assert auth.session_operator(payload[:-2] + "xx." + signature, now=1030) is None
    assert Authenticator(TOKEN).session_operator(cookie, now=1030) is not None  # a restart keeps it
    assert Authenticator(TOKEN + "-rotated").session_operator(cookie, now=1030) is None


def test_csrf_tokens_are_bound_to_the_session() -> None:
    auth = Authenticator(TOKEN)
    ana = auth.session_operator(auth.issue_session("Ana"))
    ana_again = auth.session_operator(auth.issue_session("Ana"))
    assert ana is not None and ana_again is not None
    assert auth.csrf_matches(ana, auth.csrf_token(ana))
    assert not auth.csrf_matches(ana_again, auth.csrf_token(ana))
    assert not auth.csrf_matches(ana, "")


def test_the_proxy_header_counts_only_from_a_trusted_address_and_only_when_configured() -> None:
    auth = Authenticator(None, proxy_header="X-Remote-User", trusted_proxies=["10.0.0.5"])
    operator = auth.proxy_operator({"x-remote-user": "bo"}, "10.0.0.5")
    assert operator is not None and (operator.name, operator.authenticated_by) == ("bo", "proxy")
    assert auth.proxy_operator({"x-remote-user": "bo"}, "10.0.0.6") is None
    assert auth.proxy_operator({}, "10.0.0.5") is None
    assert Authenticator(TOKEN).proxy_operator({"x-remote-user": "bo"}, "127.0.0.1") is None


def test_failed_sign_ins_are_limited_per_address_for_a_minute() -> None:
    limiter = SignInLimiter(2, max_addresses=2)
    limiter.failed("a", now=0)
    limiter.failed("a", now=1)
    assert limiter.blocked("a", now=2) and not limiter.blocked("b", now=2)
    assert not limiter.blocked("a", now=62)
    for address in ("b", "c", "d"):
        limiter.failed(address, now=3)
    assert len(limiter._failures) == 2  # bounded memory


def test_the_token_from_settings_or_file(tmp_path: Path) -> None:
    assert configured_token(ConsoleSettings(token=SecretStr(TOKEN))) == TOKEN
    secret = tmp_path / "console_token"
    secret.write_text(TOKEN + "\n")
    assert configured_token(ConsoleSettings(token_file=secret)) == TOKEN
    secret.write_text("")
    assert configured_token(ConsoleSettings(token_file=secret)) is None
    with pytest.raises(ConfigError, match="at least 16"):
        configured_token(ConsoleSettings(token=SecretStr("short")))
    with pytest.raises(ConfigError, match="cannot read"):
        configured_token(ConsoleSettings(token_file=tmp_path / "absent"))


def test_a_console_without_any_way_in_must_be_declared_read_only() -> None:
    with pytest.raises(ConfigError, match="PUBLIC_READ"):
        check_console_auth(ConsoleSettings())
    assert check_console_auth(ConsoleSettings(public_read=True)) is None
    assert check_console_auth(ConsoleSettings(trusted_proxy_header="X-User")) is None
