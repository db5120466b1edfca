"""The headers extauthz sets on an allowed request before it reaches the model (any other
client-sent header with the prefix is removed): one list for the decision, the policy file's
checks and the benchmark."""

from __future__ import annotations

SUBJECT_HEADER = "x-extauthz-subject"
ROUTE_HEADER = "x-extauthz-route"
SCOPES_HEADER = "x-extauthz-scopes"
MODEL_HEADER = "x-extauthz-model"  # LLM routes: the model the request may use
IDENTITY_HEADERS = (SUBJECT_HEADER, ROUTE_HEADER, SCOPES_HEADER)
IDENTITY_PREFIX = "x-extauthz-"
