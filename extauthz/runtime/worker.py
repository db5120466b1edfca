"""One worker of `extauthz serve --workers N`, started by the supervisor:
`python -m extauthz.runtime.worker INDEX`, with the Settings as JSON on standard input."""

from __future__ import annotations

import json
import sys

from extauthz.config import Settings
from extauthz.runtime import logs
from extauthz.runtime.server import serve


def main() -> int:
    index = int(sys.argv[1])
    settings = Settings(**json.load(sys.stdin))
    logs.setup(settings.log_format, settings.log_level)
    serve(settings, reuse_port=True, worker_index=index)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
