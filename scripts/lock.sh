#!/usr/bin/env bash
# Regenerates the lock files from pyproject.toml: every package pinned, with the hashes of
# all its files (uv pip compile). Run after changing dependencies in pyproject.toml, then
# `make deps` (a test fails while pyproject.toml and the locks disagree).
#   requirements/runtime.lock  what the package needs (the Dockerfile installs it)
#   requirements/dev.lock      that plus the dev/test tools (scripts/install-deps.sh, CI)
#   requirements/litellm.lock  LiteLLM's proxy, in a virtualenv of its own (.venv-litellm):
#                              the OpenAI-compatible server the LLM tests run extauthz against
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
common=(--generate-hashes --python-version 3.11 --custom-compile-command scripts/lock.sh --quiet)
"$UV" pip compile pyproject.toml "${common[@]}" --upgrade -o requirements/runtime.lock
# the same versions for what both hold: the runtime lock constrains the dev one
"$UV" pip compile pyproject.toml --extra dev -c requirements/runtime.lock "${common[@]}" \
  --upgrade -o requirements/dev.lock
# (its own pins: a server the tests start, never imported by extauthz)
printf 'litellm[proxy]==%s\n' "${LITELLM_VERSION:-1.108.7}" |
  "$UV" pip compile - "${common[@]}" -o requirements/litellm.lock
