"""Teams at scale (docs/teams.md): how long `team show`, a team's tokens and `team usage`
take with few teams and with many, and how `team list` streams, on a private redis-server
with the project's own code.

For each size (`--sizes 10,10000` teams by default) it makes that many teams
(`admin/teams.py` create), then one more team with `--members` tokens (100) made by
`admin/tokens.py` create with `--team`, each used on one UTC day by the server's
`UsageMeter`, and times (median of `--repeat` runs) the measured team's show, members and
usage, and `team list` read to its end (its peak memory with tracemalloc). The figure is
the ratio of each time at the largest size to the same at the smallest, measured in the
same run: near 1 for show, members and usage (they read the team's own keys only), and
about the ratio of sizes for list (it reads every team, a page of 500 a round trip).

    python bench/teams.py [--sizes 10,10000] [--members 100] [--repeat 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.private_redis import private_redis  # noqa: E402
from extauthz.admin import teams, tokens  # noqa: E402
from extauthz.admin.sync import sync  # noqa: E402
from extauthz.core.policy import load_policy_file  # noqa: E402
from extauthz.runtime.usage import UsageMeter  # noqa: E402
from extauthz.storage.store import Store, open_store  # noqa: E402

MEASURED = "measured"


def timed(run: Callable[[], object], repeat: int) -> float:
    """The median seconds of `repeat` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fill(store: Store, count: int, members: int) -> None:
    """`count` teams beside the measured one, which gets `members` used tokens."""
    now = time.time()
    have = sum(1 for t in teams.listing(store) if getattr(t, "id", "") != MEASURED)
    for i in range(have, count):
        teams.create(store, f"team-{i:06d}", now=now)
    if store.team_record(MEASURED) is None:
        teams.create(store, MEASURED, now=now)
        meter = UsageMeter(store, flush_every=10**9)
        for _ in range(members):
            made = tokens.create(store, ["llm"], now=now, team=MEASURED)
            meter.count(made.record.id, True, now, "demo-small")
        meter.flush()


def measure(store: Store, size: int, members: int, repeat: int) -> dict[str, Any]:
    fill(store, size, members)
    now = time.time()

    def listing() -> int:
        return sum(1 for _ in teams.listing(store))

    tracemalloc.start()
    listed = listing()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "teams": listed,
        "show": timed(lambda: teams.show(store, MEASURED), repeat),
        "members": timed(lambda: teams.members(store, MEASURED), repeat),
        "usage": timed(lambda: teams.usage(store, MEASURED, 7, now), repeat),
        "list": timed(listing, max(1, repeat // 2)),
        "list_peak_mb": peak / 2**20,
    }


def render(rows: list[dict[str, Any]], members: int) -> str:
    small, large = rows[0], rows[-1]
    lines = [
        f"| teams | show ms | {members} tokens ms | usage (7 days) ms | list ms | list peak MB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['teams']:,} | {row['show'] * 1e3:.2f} | {row['members'] * 1e3:.1f} | "
            f"{row['usage'] * 1e3:.1f} | {row['list'] * 1e3:.0f} | {row['list_peak_mb']:.1f} |"
        )
    ratios = ", ".join(
        f"{key} {large[key] / small[key]:.2f}" for key in ("show", "members", "usage", "list")
    )
    lines.append(f"\n{large['teams']:,} teams / {small['teams']:,}, time ratios: {ratios}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,10000", help="team counts, ascending")
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with private_redis("extauthz-teams-") as (port, _):
        os.environ.pop("EXTAUTHZ_REDIS_URL", None)
        store = open_store(f"redis://127.0.0.1:{port}/0", "extauthz:", 5.0)
        doc = load_policy_file(str(REPO / "examples/policy.yaml"))
        sync(store, doc, env={"DENSENET161_SECRET": "bench-secret-value"})
        rows = [measure(store, size, args.members, args.repeat) for size in sizes]
    print(render(rows, args.members))
    if args.json:
        Path(args.json).write_text(json.dumps({"members": args.members, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
