"""Writes docs/openapi.json, the management API's OpenAPI document, from the code (the
document `extauthz admin` serves at /openapi.json); a test fails while they differ.

    .venv/bin/python scripts/openapi.py [docs/openapi.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "docs" / "openapi.json"


def text() -> str:
    """The document as it is committed: indented, keys in the order FastAPI gives them."""
    from extauthz.admin.api import openapi_document

    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    """Write the document to argv[0] (else docs/openapi.json)."""
    out = Path(argv[0]) if argv else DEFAULT
    out.write_text(text(), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # (this checkout's extauthz, installed or not)
    sys.exit(main(sys.argv[1:]))
