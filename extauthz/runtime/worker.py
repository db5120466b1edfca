"""One worker of `extauthz serve --workers N`, started by the supervisor:
`python -m extauthz.runtime.worker INDEX` (the index names it in `ps`), with its Settings,
its own metrics address included, as JSON on standard input."""

from __future__ import annotations

import json
import sys

from extauthz.config import Settings
from extauthz.runtime import logs
from extauthz.runtime.server import serve


def main() -> int:
    settings = Settings(**json.load(sys.stdin))  # (its own metrics address included)
    logs.setup(settings.log_format, settings.log_level)
    serve(settings, reuse_port=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
