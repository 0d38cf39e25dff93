"""Single sign-on with OpenID Connect providers configured on control: discovery, the authorization code flow
with PKCE, state and nonce, and ID tokens checked against the provider's JWKS (joserfc).

Providers come from a JSON file (`--oidc-providers-file`): a list of {name, issuer, clientId, and the client
secret in a file (clientSecretFile) or an environment variable (clientSecretEnv)}, never in the file itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
_DISCOVERY_TTL = 3600.0  # seconds the provider's metadata and keys are kept before fetching them again


class ProviderConfigError(ValueError):
    """--oidc-providers-file does not describe usable providers: says which entry and field, and what to do."""


class LoginFailed(Exception):
    """The provider's answer does not log anyone in (the message is for the visitor and the log; no secrets)."""


@dataclass
class Provider:
    name: str
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    groups_claim: str = "groups"
    _metadata: dict | None = field(default=None, repr=False)
    _keys: KeySet | None = field(default=None, repr=False)
    _fetched: float = 0.0

    async def metadata(self, client: httpx.AsyncClient) -> dict:
        """The provider's discovery document (OpenID Connect Discovery 1.0), cached for an hour."""
        if self._metadata is None or time.monotonic() - self._fetched > _DISCOVERY_TTL:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await _get_json(client, url)
            if document.get("issuer") != self.issuer:
                raise LoginFailed(f"the discovery document of {self.name} names issuer {document.get('issuer')!r}, "
                                  f"not {self.issuer!r}")
            self._metadata, self._keys, self._fetched = document, None, time.monotonic()
        return self._metadata

    async def keys(self, client: httpx.AsyncClient, refresh: bool = False) -> KeySet:
        if self._keys is None or refresh:
            self._keys = KeySet.import_key_set(await _get_json(client, (await self.metadata(client))["jwks_uri"]))
        return self._keys


def load_providers(path: str | None) -> tuple[Provider, ...]:
    """The providers of the JSON file at `path` (None: no SSO); ProviderConfigError says what to fix."""
    if not path:
        return ()
    where = f"--oidc-providers-file {path}"
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ProviderConfigError(f"{where}: cannot read it as JSON ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise ProviderConfigError(f"{where}: must be a JSON list of providers, each "
                                  '{"name", "issuer", "clientId", "clientSecretFile" or "clientSecretEnv"}')
    providers, names = [], set()
    for index, entry in enumerate(entries):
        at = f"{where}: provider {index}"
        if not isinstance(entry, dict):
            raise ProviderConfigError(f"{at} must be an object")
        for key in ("name", "issuer", "clientId"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ProviderConfigError(f"{at}: {key} is required (a string)")
        if entry["name"] in names:
            raise ProviderConfigError(f"{at}: the name {entry['name']!r} is used twice")
        names.add(entry["name"])
        if not entry["issuer"].startswith(("https://", "http://")):
            raise ProviderConfigError(f"{at}: issuer must be an https:// URL")
        providers.append(Provider(entry["name"], entry["issuer"], entry["clientId"], _client_secret(entry, at),
                                  entry.get("groupsClaim", "groups")))
    return tuple(providers)


def _client_secret(entry: dict, at: str) -> str:
    if entry.get("clientSecretFile"):
        try:
            return Path(entry["clientSecretFile"]).read_text().strip()
        except OSError as exc:
            raise ProviderConfigError(f"{at}: clientSecretFile: {exc}") from None
    if entry.get("clientSecretEnv"):
        value = os.environ.get(entry["clientSecretEnv"], "")
        if not value:
            raise ProviderConfigError(f"{at}: the environment variable {entry['clientSecretEnv']} is empty or unset")
        return value
    raise ProviderConfigError(f"{at}: give the client secret as clientSecretFile or clientSecretEnv")


@dataclass(frozen=True)
class Attempt:
    """One login under way: what the callback must find again (kept in a signed cookie on control's origin)."""

    provider: str
    state: str
    nonce: str
    verifier: str

    @classmethod
    def new(cls, provider: str) -> Attempt:
        return cls(provider, secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48))

    @property
    def challenge(self) -> str:
        """The PKCE S256 code challenge (RFC 7636)."""
        return base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=").decode()


async def authorization_url(provider: Provider, client: httpx.AsyncClient, attempt: Attempt, redirect_uri: str) -> str:
    endpoint = (await provider.metadata(client))["authorization_endpoint"]
    query = {"response_type": "code", "client_id": provider.client_id, "redirect_uri": redirect_uri,
             "scope": "openid email profile", "state": attempt.state, "nonce": attempt.nonce,
             "code_challenge": attempt.challenge, "code_challenge_method": "S256"}
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)


@dataclass(frozen=True)
class User:
    subject: str
    email: str
    groups: tuple[str, ...]


async def redeem(provider: Provider, client: httpx.AsyncClient, attempt: Attempt, code: str,
                 redirect_uri: str) -> User:
    """Exchange the authorization code (with the PKCE verifier) and check the ID token: signature by the
    provider's keys, issuer, audience, expiry and our nonce."""
    metadata = await provider.metadata(client)
    try:
        response = await client.post(metadata["token_endpoint"], data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
            "code_verifier": attempt.verifier}, auth=(provider.client_id, provider.client_secret))
    except httpx.HTTPError as exc:
        raise LoginFailed(f"the token endpoint of {provider.name} is unreachable: {exc}") from None
    if response.status_code != 200:
        raise LoginFailed(f"{provider.name} refused the code ({response.status_code})")
    id_token = response.json().get("id_token")
    if not isinstance(id_token, str):
        raise LoginFailed(f"{provider.name} returned no ID token")
    claims = await _verified_claims(provider, client, id_token)
    registry = jwt.JWTClaimsRegistry(leeway=60, iss={"essential": True, "value": provider.issuer},
                                     aud={"essential": True, "value": provider.client_id},
                                     nonce={"essential": True, "value": attempt.nonce},
                                     sub={"essential": True}, exp={"essential": True})
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise LoginFailed(f"the ID token of {provider.name} does not check out: {exc.error}") from None
    if isinstance(claims.get("aud"), list) and len(claims["aud"]) > 1 and claims.get("azp") != provider.client_id:
        raise LoginFailed(f"the ID token of {provider.name} was issued to another party")
    if "email" not in claims and metadata.get("userinfo_endpoint") and response.json().get("access_token"):
        claims = {**claims, **await _userinfo(provider, client, metadata["userinfo_endpoint"],
                                              response.json()["access_token"], claims["sub"])}
    email = claims.get("email") if isinstance(claims.get("email"), str) else ""
    if email and claims.get("email_verified") is False:
        email = ""  # an unverified address proves nothing
    groups = claims.get(provider.groups_claim, [])
    groups = tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else ()
    return User(str(claims["sub"]), email.lower(), groups)


async def _userinfo(provider: Provider, client: httpx.AsyncClient, url: str, access_token: str, subject: str) -> dict:
    """The UserInfo claims (OpenID Connect Core §5.3): many providers put e-mail and groups only there. They
    count only for the ID token's subject (§5.3.2)."""
    try:
        response = await client.get(url, headers={"authorization": f"Bearer {access_token}"})
        info = response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        info = {}
    if not isinstance(info, dict) or info.get("sub") != subject:
        return {}
    return {name: info[name] for name in ("email", "email_verified", provider.groups_claim) if name in info}


async def _verified_claims(provider: Provider, client: httpx.AsyncClient, id_token: str) -> dict:
    for refresh in (False, True):  # a key we do not know yet: the provider rotated its keys
        try:
            return jwt.decode(id_token, await provider.keys(client, refresh), algorithms=ALGORITHMS).claims
        except JoseError as exc:
            failure = exc
        except ValueError as exc:  # not a JWT at all
            raise LoginFailed(f"the ID token of {provider.name} is malformed: {exc}") from None
    raise LoginFailed(f"the ID token of {provider.name} is not signed by its keys: {failure.error}")


async def _get_json(client: httpx.AsyncClient, url: str) -> dict:
    try:
        response = await client.get(url)
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise LoginFailed(f"{url} did not answer with JSON: {exc}") from None
    if not isinstance(document, dict):
        raise LoginFailed(f"{url} did not answer with a JSON object")
    return document
