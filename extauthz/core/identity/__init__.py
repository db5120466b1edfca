"""Identity, the first stage of a decision: who is calling, one module per credential kind.

KINDS is the one table of credential kinds: the policy file's `credentials:` values, the
order in which kinds may claim a credential (a JWT-shaped bearer token goes to `jwt` when the
route accepts it, else to `bearer`), the WWW-Authenticate challenge and the headers Envoy
sends. A new kind is a module beside these and one line here.
"""

from __future__ import annotations

from extauthz.core.identity.base import CredentialKind
from extauthz.core.identity.jwt_bearer import JWT_BEARER
from extauthz.core.identity.opaque_token import OPAQUE_TOKEN
from extauthz.core.identity.route_secret import ROUTE_SECRET

KINDS: dict[str, CredentialKind] = {
    kind.name: kind
    for kind in (
        JWT_BEARER,
        OPAQUE_TOKEN,
        ROUTE_SECRET,
    )
}


def request_headers() -> tuple[str, ...]:
    """Every request header some kind reads (what Envoy must send besides x-extauthz-*)."""
    return tuple(sorted({h for kind in KINDS.values() for h in kind.headers}))
