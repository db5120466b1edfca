"""Takes docs/console.png, the README's screenshot of the console: a local stack with a few
teams, tokens and two weeks of usage (requests, LLM models and tokens), signed in as admin
in Debian's headless chromium, on the Teams page with a team opened.

    .venv/bin/python scripts/console_screenshot.py [docs/console.png]
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from extauthz.admin import teams, tokens
from extauthz.config import Settings
from extauthz.dev.stack import Stack, free_base_port
from extauthz.storage.store import TOKEN_KINDS

TEAMS = (  # id, name, models, rate limit, LLM token limit
    ("research", "Research", ["demo-*"], "1200/m", "2000000/d"),
    ("support-bots", "Support bots", ["demo-small"], "300/m", "500000/d"),
    ("acme", "Acme Corp (pilot)", None, None, "100000/d"),
)
SHOWN = "research"  # the team the screenshot opens
# name, routes, scopes, team, ttl days, rate limit, requests a day, {model: share}
TokenRow = tuple[str, list[str], list[str], str | None, int, str | None, int, dict[str, float]]
TOKENS: tuple[TokenRow, ...] = (
    ("iris classifier (prod)", ["densenet161"], ["inference"], None, 90, "600/m", 5200, {}),
    ("batch scoring job", ["densenet161"], ["inference"], None, 30, None, 1800, {}),
    ("notebooks", ["llm"], [], "research", 30, "60/m", 900, {"demo-small": 0.7, "demo-large": 0.3}),
    ("eval pipeline", ["llm"], [], "research", 7, None, 400, {"demo-large": 1.0}),
    ("research leads", ["llm"], ["tokens:manage"], "research", 30, None, 0, {}),
    ("support bot", ["llm"], [], "support-bots", 30, "120/m", 1500, {"demo-small": 1.0}),
    ("deployment A CI", ["deployment-a"], [], None, 7, "60/m", 300, {}),
)  # fmt: skip
WORDS = {"demo-small": (420, 160), "demo-large": (900, 380)}  # prompt, completion per request


def seed(stack: Stack) -> None:
    """The teams, the tokens and their usage: made-up figures, written as the servers'
    usage flush writes them."""
    store, now, rng = stack.store(), time.time(), random.Random(7)  # noqa: S311 (made-up usage figures)
    today = int(now // 86400)
    for team_id, name, team_models, rate, token_limit in TEAMS:
        teams.create(
            store,
            team_id,
            name,
            team_models,
            tokens.parse_rate_limit(rate) if rate else None,
            tokens.parse_token_limit(token_limit) if token_limit else None,
            now,
            "cli:alice",
        )
    for name, routes, scopes, team, days, limit, daily, split in TOKENS:
        made = tokens.create(
            store,
            routes,
            scopes,
            name=name,
            now=now,
            ttl_seconds=days * 86400,
            rate_limit=tokens.parse_rate_limit(limit) if limit else None,
            actor="cli:alice",
            team=team,
        )
        if not daily:
            continue
        token_id = made.record.id
        counts: dict[tuple[str, int], list[int]] = {}
        models: dict[tuple[str, int, str], int] = {}
        charged: dict[tuple[str, int, str], list[int]] = {}
        for day in range(today - 13, today + 1):
            allowed = int(daily * rng.uniform(0.6, 1.3) * (0.5 if (day + 3) % 7 < 2 else 1))
            limited = rng.choice([0, 0, 0, rng.randint(5, 90)]) if limit else 0
            counts[token_id, day] = [allowed, limited]
            for model, share in split.items():
                n = int(allowed * share)
                prompt, completion = WORDS[model]
                models[token_id, day, model] = n
                kinds = [
                    int(n * prompt * rng.uniform(0.7, 1.3)),
                    int(n * completion * rng.uniform(0.7, 1.3)),
                ]
                charged[token_id, day, model] = kinds + [0] * (len(TOKEN_KINDS) - 2)
        store.add_usage(f"screenshot-{token_id}", counts, 90, models=models, tokens=charged)
        store.raise_last_used({token_id: now - rng.uniform(5, 3000)})


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as state:
        stack = Stack(free_base_port(), Path(state), Path("examples/policy.yaml"), Settings())
        stack.start()
        try:
            seed(stack)
            admin = tokens.create(
                stack.store(), ["*"], ["admin"], name="console admin", now=time.time()
            ).token
            options = webdriver.ChromeOptions()
            options.binary_location = "/usr/bin/chromium"
            for flag in (
                "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--window-size=1280,1100", "--hide-scrollbars", f"--user-data-dir={state}/c",
            ):  # fmt: skip
                options.add_argument(flag)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
            try:
                driver.get(f"{stack.console_url}#teams/{SHOWN}")
                driver.find_element(By.ID, "login-token").send_keys(admin + "\n")
                deadline = time.monotonic() + 10
                while not driver.find_elements(By.CSS_SELECTOR, "#team-chart .model g.day") or (
                    "…" in driver.find_element(By.ID, "teams-body").text  # (token counts)
                ):
                    if time.monotonic() > deadline:
                        raise SystemExit("the team's usage chart did not render")
                    time.sleep(0.1)
                time.sleep(0.5)
                # the whole page: its height, plus what the window's frame takes of it
                height, frame = driver.execute_script(
                    "return [document.documentElement.scrollHeight, outerHeight - innerHeight]"
                )
                driver.set_window_size(1280, min(int(height) + int(frame), 2400))
                driver.execute_script("window.scrollTo(0, 0)")
                time.sleep(0.3)
                driver.save_screenshot(str(out))
            finally:
                driver.quit()
        finally:
            stack.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console.png"))
