"""A bearer-token server compatible with distribution 2.8's ``auth: token``.

At construction it generates an EC P-256 key and a self-signed certificate, written as PEM to
``cert_path`` (the registry's ``rootcertbundle``). ``GET /token`` (and the OAuth2 ``POST
/token`` form used by containerd) issue ES256 JWTs whose header carries the certificate in
``x5c`` (or, with ``header_mode="kid"``, the libtrust key id of the public key).

Policy: the configured user gets every requested action; anonymous callers get only ``pull``
on repositories named ``public/...``; wrong credentials are answered with 401.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Literal

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.net import ThreadedAiohttpServer

HeaderMode = Literal["x5c", "kid"]


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """Return the libtrust key id (``ABCD:EFGH:...``) of a public key, as distribution uses."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256(der).digest()[:30]
    encoded = base64.b32encode(digest).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """Split ``repository:NAME:pull,push`` into (type, name, actions); None if malformed."""
    first = scope.find(":")
    last = scope.rfind(":")
    if first <= 0 or last == first:
        return None
    actions = [a for a in scope[last + 1 :].split(",") if a]
    return scope[:first], scope[first + 1 : last], actions


class TokenServer(ThreadedAiohttpServer):
    """Threaded token server; see the module docstring for the policy."""

    def __init__(
        self,
        workdir: Path,
        *,
        username: str = "mirror-user",
        password: str = "s3cret",
        expires_in: int = 300,
        service: str = "mirror-test-registry",
        issuer: str = "mirror-test-token-issuer",
        header_mode: HeaderMode = "x5c",
        port: int = 0,
    ) -> None:
        super().__init__(self._build_app, port=port, name="token-server")
        self.username = username
        self.password = password
        self.expires_in = expires_in
        self.service = service
        self.issuer = issuer
        self.header_mode: HeaderMode = header_mode
        self.issued: list[tuple[str | None, tuple[str, ...]]] = []
        self.refused: list[tuple[str | None, tuple[str, ...]]] = []
        self._issued_lock = threading.Lock()
        workdir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = self._self_signed_cert()
        self.cert_path = workdir / "token-signer.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    # -- public helpers ---------------------------------------------------------------------

    @property
    def realm(self) -> str:
        """The token endpoint URL (the registry's ``auth.token.realm``)."""
        return f"{self.url}/token"

    def count(self, scope_contains: str = "") -> int:
        """Count issued tokens whose scopes include one containing ``scope_contains``."""
        with self._issued_lock:
            entries = list(self.issued)
        if not scope_contains:
            return len(entries)
        return sum(1 for _, scopes in entries if any(scope_contains in s for s in scopes))

    def reset(self) -> None:
        """Forget the issued/refused records."""
        with self._issued_lock:
            self.issued.clear()
            self.refused.clear()

    def issue_token(self, user: str | None, scopes: list[str]) -> str:
        """Build and sign a token for ``user`` with the policy applied to ``scopes``."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.expires_in,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": self._grant(user, scopes),
        }
        headers: dict[str, Any] = {"typ": "JWT"}
        if self.header_mode == "x5c":
            der = self._cert.public_bytes(serialization.Encoding.DER)
            headers["x5c"] = [base64.b64encode(der).decode()]
        else:
            headers["kid"] = libtrust_key_id(self._key.public_key())
        return jwt.encode(claims, self._key, algorithm="ES256", headers=headers)

    # -- internals --------------------------------------------------------------------------

    def _self_signed_cert(self) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror test token signer")])
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    def _grant(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        access: list[dict[str, Any]] = []
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is None:
                continue
            kind, name, actions = parsed
            if user is None:
                public = kind == "repository" and name.startswith("public/")
                actions = [a for a in actions if a == "pull"] if public else []
            if actions:
                access.append({"type": kind, "name": name, "actions": actions})
        return access

    def _check_basic(self, header: str | None) -> tuple[bool, str | None]:
        """Return (ok, user) for an Authorization header; no header = anonymous."""
        if not header:
            return True, None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False, None
        return self._check_password(user, password), user

    def _check_password(self, user: str, password: str) -> bool:
        return secrets.compare_digest(
            f"{user}:{password}".encode(), f"{self.username}:{self.password}".encode()
        )

    def _respond(self, user: str | None, scopes: list[str]) -> web.Response:
        token = self.issue_token(user, scopes)
        with self._issued_lock:
            self.issued.append((user, tuple(scopes)))
        issued_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "token": token,
            "access_token": token,
            "expires_in": self.expires_in,
            "issued_at": issued_at,
        }
        return web.json_response(body)

    def _unauthorized(self, user: str | None, scopes: list[str]) -> web.Response:
        with self._issued_lock:
            self.refused.append((user, tuple(scopes)))
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="mirror-test-token"'},
        )

    async def _handle_get(self, request: web.Request) -> web.Response:
        scopes = request.query.getall("scope", [])
        ok, user = self._check_basic(request.headers.get("Authorization"))
        if not ok:
            return self._unauthorized(user, scopes)
        return self._respond(user, scopes)

    async def _handle_post(self, request: web.Request) -> web.Response:
        form = await request.post()
        scopes = " ".join(str(v) for v in form.getall("scope", [])).split()
        grant = str(form.get("grant_type", ""))
        if grant != "password":
            # containerd then falls back to GET with Basic credentials
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        user = str(form.get("username", ""))
        if not self._check_password(user, str(form.get("password", ""))):
            return self._unauthorized(user, scopes)
        return self._respond(user, scopes)

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self._handle_get)
        app.router.add_post("/token", self._handle_post)
        return app
