"""Who may write: the sign-in token, sessions, the trusted proxy's header and CSRF tokens.

Two ways to be an operator (docs/operations.md, "Operator console"):

- **token**: the configured secret, compared in constant time; the operator gives a name at sign-in,
  recorded with every judgement as ``authenticated_by=token`` (the token proves access to the console,
  the name is the operator's word). The session is a cookie: the name and expiry, signed with a key
  derived from the token (so a restart keeps sessions and a new token ends them). HttpOnly,
  SameSite=Strict, Secure when configured.
- **proxy**: a header naming the operator, set by an authenticating reverse proxy, taken only from
  the proxy's own addresses (``authenticated_by=proxy``). Off unless configured.

Every state-changing request carries a CSRF token bound to the session (an HMAC of it) and, when the
browser sends one, an Origin equal to the console's own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ConfigError
from shared.settings import ConsoleSettings

SESSION_COOKIE = "lineguard_console"
TOKEN_MIN_LENGTH = 16
_MAX_COOKIE = 1024


@dataclass(frozen=True)
class Operator:
    name: str
    authenticated_by: str  # "token" or "proxy" (FEEDBACK_AUTH)
    binding: str  # what CSRF tokens are bound to: the session cookie, or the proxy's name


def configured_token(cfg: ConsoleSettings) -> str | None:
    """The sign-in token from the settings or its file (an empty file: none); ``ConfigError`` when too
    short to be a secret."""
    token = cfg.token.get_secret_value() if cfg.token is not None else None
    if not token and cfg.token_file is not None:
        try:
            token = Path(cfg.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"LINEGUARD_CONSOLE__TOKEN_FILE: cannot read {cfg.token_file} ({exc.strerror})"
            ) from None
    token = (token or "").strip()
    if token and len(token) < TOKEN_MIN_LENGTH:
        raise ConfigError(f"the console token must be at least {TOKEN_MIN_LENGTH} characters")
    return token or None


def check_console_auth(cfg: ConsoleSettings) -> str | None:
    """The token, after checking that the console can be used at all: a token or a trusted proxy
    header, or pages deliberately public (then it is read-only)."""
    token = configured_token(cfg)
    if token is None and not cfg.trusted_proxy_header and not cfg.public_read:
        raise ConfigError(
            "the console needs a sign-in token (LINEGUARD_CONSOLE__TOKEN or __TOKEN_FILE) or a trusted "
            "proxy header (LINEGUARD_CONSOLE__TRUSTED_PROXY_HEADER); or LINEGUARD_CONSOLE__PUBLIC_READ=true "
            "for a read-only console"
        )
    return token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authenticator:
    def __init__(
        self,
        token: str | None,
        *,
        proxy_header: str | None = None,
        trusted_proxies: list[str] | None = None,
        session_s: float = 12 * 3600,
    ) -> None:
        self._token_digest = hashlib.sha256(token.encode()).digest() if token else None
        # Sessions signed with a key from the token survive restarts and end with a new token.
        seed = token.encode() if token else os.urandom(32)
        self._key = hashlib.sha256(b"lineguard-console-session\0" + seed).digest()
        self.proxy_header = proxy_header.lower() if proxy_header else None
        self.trusted_proxies = set(trusted_proxies or ())
        self.session_s = session_s

    @property
    def token_sign_in(self) -> bool:
        return self._token_digest is not None

    def token_matches(self, given: str) -> bool:
        """Constant time whatever the lengths: the digests are compared, never the strings."""
        if self._token_digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._token_digest)

    def issue_session(self, name: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        body = json.dumps({"op": name, "exp": int(now + self.session_s), "n": secrets.token_hex(8)})
        payload = _b64(body.encode())
        return f"{payload}.{self._sign(payload)}"

    def session_operator(self, cookie: str | None, now: float | None = None) -> Operator | None:
        if not cookie or len(cookie) > _MAX_COOKIE or self._token_digest is None:
            return None
        payload, _, signature = cookie.partition(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
            name, expires = body["op"], body["exp"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(name, str) or not isinstance(expires, int):
            return None
        if expires < (time.time() if now is None else now):
            return None
        return Operator(name, "token", cookie)

    def proxy_operator(self, headers: dict[str, str], client_host: str | None) -> Operator | None:
        """The operator the trusted proxy names; None when the header is off, absent, or the request
        does not come from a trusted proxy address."""
        if self.proxy_header is None or client_host not in self.trusted_proxies:
            return None
        name = headers.get(self.proxy_header, "").strip()
        if not name:
            return None
        return Operator(name, "proxy", "proxy:" + name)

    def csrf_token(self, operator: Operator) -> str:
        return self._sign("csrf\0" + operator.binding)

    def csrf_matches(self, operator: Operator, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf_token(operator).encode())

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())


class SignInLimiter:
    """Failed sign-ins per client address in the last minute; addresses remembered are bounded."""

    def __init__(self, per_minute: int, max_addresses: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def blocked(self, address: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        failures = self._failures.get(address)
        if failures is None:
            return False
        while failures and failures[0] < now - 60:
            failures.popleft()
        return len(failures) >= self.per_minute

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        failures = self._failures.pop(address, None) or deque(maxlen=self.per_minute)
        failures.append(now)
        self._failures[address] = failures
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
