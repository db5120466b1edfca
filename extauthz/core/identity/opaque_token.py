"""`bearer`: an opaque token (`Authorization: Bearer eat_...`) or a route secret, looked up
by its hash."""

from __future__ import annotations

from dataclasses import dataclass

from extauthz.core.credentials import BearerCredential, Credential
from extauthz.core.identity.base import Context, IdentityResult
from extauthz.core.identity.secrets import identify_secret


@dataclass(frozen=True)
class OpaqueToken:
    name: str = "bearer"
    scheme: str = "Bearer"
    headers: tuple[str, ...] = ("authorization",)

    def identify(self, credential: Credential, ctx: Context) -> IdentityResult | None:
        if not isinstance(credential, BearerCredential):
            return None
        return identify_secret(credential.token, ctx)


OPAQUE_TOKEN = OpaqueToken()
