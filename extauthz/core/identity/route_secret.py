"""`basic`: HTTP Basic with the route's fixed username; the password is a secret looked up
exactly like a bearer token (a route secret from the policy, or a token)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from extauthz.core.credentials import BasicCredential, Credential
from extauthz.core.identity.base import Context, IdentityResult, Rejected
from extauthz.core.identity.secrets import identify_secret


@dataclass(frozen=True)
class RouteSecret:
    name: str = "basic"
    scheme: str = "Basic"
    headers: tuple[str, ...] = ("authorization",)

    def identify(self, credential: Credential, ctx: Context) -> IdentityResult | None:
        username = ctx.route.basic_username
        if not isinstance(credential, BasicCredential) or username is None:
            return None
        if not hmac.compare_digest(credential.username.encode(), username.encode()):
            return Rejected("wrong_basic_username", "invalid credential", presented=False)
        return identify_secret(credential.password, ctx)


ROUTE_SECRET = RouteSecret()
