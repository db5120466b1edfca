"""Takes docs/console.png, the README's screenshot of the console: a local stack with a few
tokens and two weeks of usage, signed in as admin in Debian's headless chromium.

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

from extauthz.admin import tokens
from extauthz.config import Settings
from extauthz.dev.stack import Stack, free_base_port

TOKENS = (  # name, routes, scopes, ttl days, rate limit, requests a day
    ("iris classifier (prod)", ["densenet161"], ["inference"], 90, "600/m", 5200),
    ("batch scoring job", ["densenet161"], ["inference"], 30, None, 1800),
    ("deployment A CI", ["deployment-a"], [], 7, "60/m", 300),
    ("model ops", ["densenet161-management"], ["management"], 30, None, 40),
    ("team A developers", ["deployment-a", "deployment-b"], ["tokens:manage"], 30, None, 0),
)


def seed(stack: Stack) -> str:
    """The tokens and their usage; returns the id whose usage the screenshot shows."""
    store, now, rng = stack.store(), time.time(), random.Random(7)  # noqa: S311 (made-up usage figures)
    today = int(now // 86400)
    shown = ""
    for name, routes, scopes, days, limit, daily in TOKENS:
        made = tokens.create(
            store,
            routes,
            scopes,
            name=name,
            now=now,
            ttl_seconds=days * 86400,
            rate_limit=tokens.parse_rate_limit(limit) if limit else None,
            actor="cli:alice",
        )
        shown = shown or made.record.id
        if daily:
            counts = {
                (made.record.id, day): [
                    int(daily * rng.uniform(0.6, 1.3) * (0.5 if (day + 3) % 7 < 2 else 1)),
                    rng.choice([0, 0, 0, rng.randint(5, 90)]) if limit else 0,
                ]
                for day in range(today - 13, today + 1)
            }
            store.add_usage(counts, {made.record.id: now - rng.uniform(5, 3000)}, 90)
    return shown


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as state:
        stack = Stack(free_base_port(), Path(state), Path("examples/policy.yaml"), Settings())
        stack.start()
        try:
            shown = seed(stack)
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
                driver.get(stack.console_url)
                driver.find_element(By.ID, "login-token").send_keys(admin + "\n")
                time.sleep(1.0)
                row = driver.find_element(By.CSS_SELECTOR, f'tr[data-id="{shown}"]')
                row.find_element(By.CSS_SELECTOR, "button[aria-label^='Usage']").click()
                time.sleep(0.8)
                height = driver.execute_script("return document.body.scrollHeight")
                driver.set_window_size(1280, min(int(height) + 20, 1800))
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
