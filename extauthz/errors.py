"""One error hierarchy for the whole package.

Library errors (redis, yaml, grpc) are translated into these at the module boundary,
so callers catch by meaning: configuration, policy, store or usage.
"""

from __future__ import annotations


class ExtAuthzError(Exception):
    """Root of every error extauthz raises on purpose."""


class ConfigError(ExtAuthzError):
    """A setting is missing or invalid (command line, environment or config file)."""


class UsageError(ExtAuthzError):
    """The user asked for something that cannot be done as asked (CLI)."""


class PolicyError(ExtAuthzError):
    """A policy file is invalid; carries the file, line and key at fault."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class StoreError(ExtAuthzError):
    """Something is wrong with the store (Redis)."""


class StoreUnavailable(StoreError):
    """Redis cannot be reached or did not answer in time: decisions needing it fail closed."""


class MalformedRecord(StoreError):
    """A record in Redis does not have the documented shape."""


class TooManyFailures(ExtAuthzError):
    """This client failed to authenticate too often: no Redis lookup for it now (→ 429)."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many failed authentications; retry in {retry_after:.1f}s")


class JwksError(ExtAuthzError):
    """A JWKS or discovery document could not be fetched or has no usable key."""


class StackError(ExtAuthzError):
    """A part of the local stack could not be found or started."""
