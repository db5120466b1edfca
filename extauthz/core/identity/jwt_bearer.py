"""`jwt`: an OIDC/JWT bearer token, verified against the route's issuer (signature, iss,
aud, times); the route's audience check stands in for a grant."""

from __future__ import annotations

from dataclasses import dataclass

from extauthz.core.credentials import BearerCredential, Credential, looks_like_jwt
from extauthz.core.identity.base import Context, Identity, IdentityResult, Rejected, Unavailable
from extauthz.core.jwt_verify import JwtIdentity, JwtRejected, JwtUnavailable
from extauthz.core.token_record import TEAM_ID
from extauthz.errors import MalformedRecord, StoreError


@dataclass(frozen=True)
class JwtBearer:
    name: str = "jwt"
    scheme: str = "Bearer"
    headers: tuple[str, ...] = ("authorization",)

    def identify(self, credential: Credential, ctx: Context) -> IdentityResult | None:
        settings = ctx.route.jwt
        if (
            not isinstance(credential, BearerCredential)
            or settings is None
            or not looks_like_jwt(credential.token)
        ):
            return None
        # a JWT answer also depends on the IdP's keys and the token's times: never reused
        if ctx.verify_jwt is None:
            return Rejected("jwt_unsupported", "jwt not accepted", valid_until=None)
        match ctx.verify_jwt(credential.token, settings, ctx.now):
            case JwtUnavailable():
                return Unavailable("jwks_unavailable")
            case JwtRejected(reason=why):
                return Rejected("invalid_jwt", why, valid_until=None)
            case JwtIdentity() as jwt:
                # namespaced: a JWT subject never shares a token id's counters or header value
                subject = f"jwt:{settings.issuer}:{jwt.subject}"
                team = None
                if jwt.team is not None and TEAM_ID.fullmatch(jwt.team):
                    try:
                        team = ctx.teams(jwt.team)
                    except MalformedRecord:
                        pass  # (a team edited badly by hand: as one that does not exist)
                    except StoreError:
                        return Unavailable("store_unavailable")
                return Identity(
                    subject,
                    jwt.scopes,
                    None,
                    "granted_jwt",
                    jwt.headers,
                    valid_until=None,
                    models=jwt.models,
                    team_id=jwt.team,
                    team=team,
                )
        return None  # pragma: no cover (the match is exhaustive)


JWT_BEARER = JwtBearer()
