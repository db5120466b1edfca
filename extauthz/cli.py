"""Command-line entry points only: parse arguments, call the modules, print, exit.

Every mistake prints one line `extauthz: error: ...` saying what is wrong and how to fix it,
and exits non-zero (2 for usage and configuration, 1 when Redis cannot be reached; 4 when a
live server did not confirm a change; `check` exits 3 for a request it would deny).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from extauthz import __version__
from extauthz.config import Settings, add_setting_flags, load_settings, span_batching
from extauthz.dev import DEFAULT_BASE_PORT, PORTS_USED
from extauthz.errors import (
    ConfigError,
    ExtAuthzError,
    InvalidValue,
    MalformedRecord,
    PolicyError,
    StoreUnavailable,
    UnknownRoute,
    UnknownTeam,
    UnknownToken,
    UsageError,
    shown,
)
from extauthz.storage.store import TOKEN_KINDS, Store, open_store

CLI_REDIS_TIMEOUT = 5.0  # seconds: the CLI may wait longer than the decision path


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    settings: Settings | None = None
    try:
        settings = load_settings(vars(args))
        return int(args.func(args, settings))
    except StoreUnavailable as e:
        where = settings.redis_url_redacted if settings else "Redis"
        _error(f"cannot reach Redis at {where} ({e}); start redis-server or set --redis-url")
        return 1
    except (ConfigError, UsageError, PolicyError) as e:
        _error(_worded(e))
        return 2
    except ExtAuthzError as e:  # Redis refused or answered an error, a malformed record...
        _error(str(e))
        return 1
    except BrokenPipeError:  # `extauthz token list | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 128 + signal.SIGPIPE  # as a command killed by SIGPIPE exits


def _worded(error: ExtAuthzError) -> str:
    """A domain error in the words of this command line (flags, commands to run)."""
    match error:
        case UnknownRoute(why=why, fix=fix):
            return f"{why}: {fix}, or pass --allow-unknown-route if its policy comes later"
        case InvalidValue(field=field, value=value, rule=rule):
            if value is None:
                return f"missing --{field}: {rule}"
            return f"invalid --{field} {shown(value)}: {rule}"
        case UnknownToken():
            return (
                f"{error} (see `extauthz token list`; a token made with redis-cli is found "
                "after `extauthz token reindex`)"
            )
        case UnknownTeam():
            return f"{error} (see `extauthz team list`; `extauthz team create ID` makes one)"
    return str(error)


def _error(message: str) -> None:
    print(f"extauthz: error: {_shown(message)}", file=sys.stderr)


def _store(settings: Settings) -> Store:
    return open_store(
        settings.redis_url, settings.key_prefix, max(settings.redis_timeout, CLI_REDIS_TIMEOUT)
    )


def _setup_logging(settings: Settings) -> None:
    from extauthz.runtime import logs

    logs.setup(settings.log_format, settings.log_level)


# --- serve ----------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.runtime import tls
    from extauthz.runtime.supervisor import default_workers, supervise
    from extauthz.runtime.webhooks import webhook_config

    _setup_logging(settings)
    if settings.otlp_endpoint:  # (a bad OTEL_BSP_* variable: one line now, before any worker)
        span_batching(os.environ)
    workers = settings.workers or default_workers()
    if workers > 1:
        tls.for_server(settings)  # unreadable files: one line now, not a crash loop of workers
        webhook_config(settings)
        return supervise(settings, workers)
    from extauthz.runtime.server import serve

    serve(settings)
    return 0


# --- sync -----------------------------------------------------------------------------------


def _cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin.sync import sync
    from extauthz.core.policy import load_policy_file

    if args.watch:
        return _sync_watch(args, settings)
    doc = load_policy_file(args.policy)
    _warn(doc.warnings)
    check = args.check
    result = sync(_store(settings), doc, prune=args.prune, dry_run=args.dry_run or check)
    for line in result.lines():
        print(line)
    if check and result.changed:
        print(f"the published policy differs from {args.policy}: run `extauthz sync` on it")
        return 1
    if not result.changed:
        print(f"no change (policy version {result.version})")
    elif args.dry_run:
        print(f"dry run: would publish policy version {result.version}")
    else:
        print(f"published policy version {result.version}")
    _warn(result.warnings)
    return 0


def _sync_watch(args: argparse.Namespace, settings: Settings) -> int:
    """`sync --watch`: in the foreground until SIGTERM or Ctrl-C (a Deployment, a service)."""
    import threading

    from extauthz.admin.sync import watch

    if args.dry_run or args.check:
        raise UsageError("--watch publishes: it takes neither --dry-run nor --check")
    if not 0.1 <= args.interval <= 3600:
        raise UsageError(f"--interval {args.interval:g}: give seconds from 0.1 to 3600")
    _setup_logging(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):  # (Ctrl-C in a terminal)
        watch(_store(settings), args.policy, stop, prune=args.prune, interval=args.interval)
    return 0


# --- team -----------------------------------------------------------------------------------


def _team_limits(args: argparse.Namespace, keep: Any) -> dict[str, Any]:
    """The team fields given on the command line (`keep` where one was not; `none`
    removes a limit, `--model none` the model list)."""
    from extauthz.admin import tokens
    from extauthz.admin.teams import limit_change

    models: Any = keep if args.model is None else None if args.model == ["none"] else args.model
    return {
        "name": keep if args.name is None else args.name,
        "models": models,
        "rate_limit": limit_change(args.rate_limit, tokens.parse_rate_limit, keep),
        "token_limit": limit_change(args.token_limit, tokens.parse_token_limit, keep),
        "budget": limit_change(args.budget, tokens.parse_budget, keep),
        "allowed_cidrs": _cidrs_given(args.allow_cidr, keep),
    }


def _cidrs_given(values: list[str] | None, keep: Any) -> Any:
    """`--allow-cidr` values: `keep` when none is given, None for `--allow-cidr none` (any
    address), else the list (checked by admin/tokens.check_cidrs)."""
    return keep if values is None else None if values == ["none"] else values


def _print_team(record: Any, args: argparse.Namespace, count: int | None = None) -> None:
    shown = record.to_json()
    if count is not None:
        shown["tokens"] = count
    if args.json:
        print(json.dumps(shown))
        return
    for key, value in shown.items():
        text = "any" if key == "models" and value is None else value
        if isinstance(text, list):
            text = ", ".join(text)
        print(_shown(f"{key + ':':<13}{'-' if text is None else text}"))


def _cmd_team_create(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import teams

    given = _team_limits(args, None)
    made = teams.create(
        _store(settings), args.id, given["name"] or "", given["models"], given["rate_limit"],
        given["token_limit"], time.time(), budget=given["budget"],
        allowed_cidrs=given["allowed_cidrs"],
    )  # fmt: skip
    _warn(made.warnings)
    _print_team(made.record, args)
    return 0


def _cmd_team_update(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import teams

    given = _team_limits(args, teams.UNCHANGED)
    changed = teams.update(_store(settings), args.id, now=time.time(), **given)
    _warn(changed.warnings)
    _print_team(changed.record, args)
    return 0


def _cmd_team_show(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import teams

    store = _store(settings)
    record = teams.show(store, args.id)
    _print_team(record, args, len(teams.members(store, args.id)))
    return 0


def _cmd_team_list(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import teams

    rows = iter(teams.listing(_store(settings)))
    first = next(rows, None)  # Redis answers (or the error is all that is printed) first
    if not args.json:
        print(f"{'ID':<24} {'RATE LIMIT':<12} {'TOKEN LIMIT':<14} {'MODELS':<24} NAME")
    for record in itertools.chain(() if first is None else (first,), rows):
        if isinstance(record, MalformedRecord):
            print(json.dumps({"error": str(record)}) if args.json else _shown(f"? {record}"))
        elif args.json:
            print(json.dumps(record.to_json()))
        else:
            models = "any" if record.models is None else ",".join(sorted(record.models))
            print(
                _shown(
                    f"{record.id:<24} {record.rate_limit or '-'!s:<12} "
                    f"{record.token_limit or '-'!s:<14} {models:<24} {record.name}"
                )
            )
    return 0


def _cmd_team_usage(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import teams

    if not 1 <= args.days <= 366:
        raise InvalidValue("days", str(args.days), "from 1 to 366")
    report = teams.usage(_store(settings), args.id, args.days, time.time())
    if args.json:
        print(json.dumps(report))
        return 0
    print(_shown(f"team:   {report['id']} ({report['tokens']} tokens)"))
    _print_days(report["days"])
    return 0


def _cmd_team_delete(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import teams

    deleted = teams.delete(_store(settings), args.id, args.revoke_tokens, time.time())
    _warn(deleted.warnings)
    print(json.dumps({"id": args.id, "deleted": True}) if args.json else f"deleted team {args.id}")
    return 0


# --- token ----------------------------------------------------------------------------------


def _expires(record: Any) -> str:
    return _when(record.expires_at, "never")


def _when(seconds: int | None, none: str) -> str:
    if seconds is None:
        return none
    try:
        when = dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (ValueError, OverflowError, OSError):
        return str(seconds)  # records are range-checked; this is a last resort
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _one_field(text: str) -> str:
    """A value printed among others on one line: quoted (JSON) when it holds a space, a
    quote or anything but visible ASCII, so that it always reads as one field."""
    return text if text and all("!" <= c <= "~" and c != '"' for c in text) else json.dumps(text)


def _shown(text: str) -> str:
    """A value for the terminal: printable as it is, else with its control characters and
    undecodable bytes escaped (a forged row or an escape sequence never reaches the screen)."""
    return text if text.isprintable() else ascii(text)[1:-1]


def _print_issued(issued: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**issued.record.to_json(), "token": issued.token}))
        return
    record = issued.record
    print(f"id:      {_shown(record.id)}")
    print(f"routes:  {_shown(','.join(sorted(record.routes)))}")
    print(f"scopes:  {_shown(','.join(sorted(record.scopes))) or '-'}")
    print(f"expires: {_expires(record)}")
    print("token (shown once, store it now):")
    print(issued.token)


def _also(warning: str | None) -> list[str]:
    return [] if warning is None else [warning]


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"extauthz: warning: {_shown(line)}", file=sys.stderr)


def _cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import tokens

    ttl = tokens.parse_ttl(args.ttl) if args.ttl is not None else None
    llm_limit = args.token_limit  # (an empty value is given, and refused)
    issued = tokens.create(
        _store(settings),
        routes=args.route or (),
        scopes=args.scope or (),
        ttl_seconds=ttl,
        name=args.name or "",
        now=time.time(),
        token_id=args.id,
        rate_limit=None if args.rate_limit is None else tokens.parse_rate_limit(args.rate_limit),
        models=args.model,
        token_limit=None if llm_limit is None else tokens.parse_token_limit(llm_limit),
        allow_unknown_route=args.allow_unknown_route,
        team=args.team,
        budget=None if args.budget is None else tokens.parse_budget(args.budget),
        allowed_cidrs=_cidrs_given(args.allow_cidr, None),
    )
    _warn(issued.warnings)
    _print_issued(issued, args.json)
    return 0


def _cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import tokens

    if args.limit is not None and args.limit < 0:
        raise InvalidValue("limit", str(args.limit), "must be 0 or more")
    rows = tokens.listing(_store(settings), route=args.route, limit=args.limit)
    first = next(rows, None)  # Redis answers (or the error is all that is printed) first
    if not args.json:
        print(f"{'ID':<20} {'ROUTES':<28} {'SCOPES':<22} {'EXPIRES':<20} {'LAST USED':<20} NAME")
    for digest, record in itertools.chain(() if first is None else (first,), rows):
        if args.json:
            fields = (
                {"error": str(record)} if isinstance(record, MalformedRecord) else record.to_json()
            )
            print(json.dumps({"hash": digest, **fields}))
        elif isinstance(record, MalformedRecord):
            print(_shown(f"{'?':<20} malformed record at hash {digest}: {record}"))
        else:
            print(
                f"{_shown(record.id):<20} {_shown(','.join(sorted(record.routes))):<28} "
                f"{_shown(','.join(sorted(record.scopes))) or '-':<22} {_expires(record):<20} "
                f"{_when(record.last_used, '-'):<20} {_shown(record.name)}"
            )
    return 0


def _print_record(record: Any, as_json: bool) -> None:
    data = record.to_json()
    if as_json:
        print(json.dumps(data))
        return
    data["expires_at"] = _expires(record)
    data["last_used"] = _when(record.last_used, "never")
    for key, value in data.items():
        shown = ",".join(value) if isinstance(value, list) else value
        print(f"{key + ':':<12} {_shown(str(shown)) if shown not in (None, '') else '-'}")


def _cmd_token_show(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import tokens

    _print_record(tokens.show(_store(settings), args.id), args.json)
    return 0


def _cmd_token_update(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import tokens

    if args.ttl is not None and args.no_expiry:
        raise UsageError("give --ttl or --no-expiry, not both")
    llm_limit = args.token_limit  # (an empty value is given, and refused)
    updated = tokens.update(
        _store(settings),
        args.id,
        routes=args.route,
        scopes=args.scope,
        name=args.name,
        ttl_seconds=tokens.parse_ttl(args.ttl) if args.ttl is not None else None,
        no_expiry=args.no_expiry,
        rate_limit="keep" if args.rate_limit is None else tokens.parse_rate_limit(args.rate_limit),
        now=time.time(),
        confirm=settings.ack_timeout,
        models=None if args.all_models else args.model or "keep",
        token_limit="keep" if llm_limit is None else tokens.parse_token_limit(llm_limit),
        allow_unknown_route=args.allow_unknown_route,
        team="keep" if args.team is None else None if args.team == "none" else args.team,
        budget="keep" if args.budget is None else tokens.parse_budget(args.budget),
        allowed_cidrs=_cidrs_given(args.allow_cidr, "keep"),
    )
    _warn(updated.warnings)
    _print_record(updated.record, args.json)
    return _unconfirmed("updated", updated.unconfirmed, settings)


def _cmd_token_usage(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import tokens

    if not 1 <= args.days <= 366:
        raise InvalidValue("days", str(args.days), "from 1 to 366")
    report = tokens.usage(_store(settings), args.id, args.days, time.time())
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"id:        {_shown(report['id'])}")
    print(f"last used: {_when(report['last_used'], 'never')}")
    _print_days(report["days"])
    return 0


def _print_days(days: list[dict[str, Any]]) -> None:
    """Usage per UTC day (token usage, team usage): requests, and per model its requests
    and LLM tokens."""
    print(f"{'DATE':<12} {'ALLOWED':>10} {'RATE LIMITED':>13}")
    for day in days:
        print(f"{day['date']:<12} {day['allowed']:>10} {day['rate_limited']:>13}")
        for model, counts in day.get("models", {}).items():
            tokens_used = ""
            if any(kind in counts for kind in TOKEN_KINDS):
                tokens_used = (
                    f"   LLM tokens: {counts.get('prompt_tokens', 0)} prompt, "
                    f"{counts.get('completion_tokens', 0)} completion"
                )
                estimated = counts.get("estimated_completion_tokens", 0)
                tokens_used += f", {estimated} estimated" if estimated else ""
            if "cost_usd" in counts:
                tokens_used += f"   ${counts['cost_usd']:.6f}"
            print(f"  {_shown(model):<10} {counts.get('requests', 0):>10}{tokens_used}")


def _cmd_token_reindex(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import tokens

    result = tokens.reindex(_store(settings))
    print(
        f"scanned {result.scanned} token keys: {result.added} added to the index, "
        f"{result.removed} entries of deleted or expired tokens removed"
    )
    if result.marked_management:
        print(
            f"{result.marked_management} tokens with scope admin or tokens:manage marked "
            "kind=management: valid at the management API only, no longer at model routes"
        )
    _warn(result.warnings)
    for conflict in result.conflicts:
        _warn([f"token key {conflict}: another token has this id, or its entry is broken"])
    for digest in result.no_id:
        _warn([f"token key {digest} has no usable id (or is not a hash): fix or delete it"])
    return 0


def _cmd_token_export(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin.token_files import export_lines

    for line in export_lines(_store(settings), args.route):
        print(line)
    return 0


def _cmd_token_import(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import audit
    from extauthz.admin.token_files import plan_import, read_import_file

    store, now = _store(settings), time.time()
    entries = read_import_file(args.file, now)
    plan = plan_import(
        store, entries, args.file, now, args.replace, allow_unknown_route=args.allow_unknown_route
    )
    _warn(plan.warnings)
    if not args.dry_run:
        from extauthz.admin.tokens import described
        from extauthz.storage.token_index import ImportItem, TokenIndex

        actor, source = audit.cli_actor(), audit.readable(args.file)

        def events(batch: list[ImportItem]) -> list[dict[str, str]]:
            # one event per token written, in the same transaction as the write
            return [
                audit.event(
                    actor,
                    f"token.{item.action}",
                    item.record.id,
                    {**described(item.record), "import": source},
                    now,
                )
                for item in batch
            ]

        TokenIndex(store).write_many(plan.items, events, audit.MAX_EVENTS)
        if plan.items:
            counts = {a: plan.count(a) for a in ("create", "update", "replace")}
            _warn(_also(audit.record(store, actor, "token.import", args.file, counts)))
    print(plan.summary(args.dry_run))
    return 0


EXIT_UNCONFIRMED = 4  # done in Redis, but some live server did not confirm in time


def _cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import tokens

    revoked = tokens.revoke(_store(settings), args.id, settings.ack_timeout)
    count = revoked.count
    if args.json:
        print(
            json.dumps({"id": args.id, "revoked": count, "unconfirmed": list(revoked.unconfirmed)})
        )
    else:
        print(f"revoked {_shown(args.id)}" + (f" ({count} tokens)" if count > 1 else ""))
    _warn(revoked.warnings)
    return _unconfirmed("revoked", revoked.unconfirmed, settings)


EXIT_NOT_OURS = 3  # `token leaked`: no token of ours has this secret (nothing done)


_OUR_SECRET = re.compile(r"eat_(?:[0-9A-Za-z]{38}|[0-9A-Za-z_-]{43})(?![0-9A-Za-z_-])")


def _pasted_secret(text: str) -> str:
    """The secret in what was pasted: surrounding blanks and quotes and a `Bearer ` in front
    taken off; in a longer text (a log line), the one extauthz secret it holds, if one."""
    secret = text.strip().strip("'\"`").strip()
    if secret[:7].lower() == "bearer ":
        secret = secret[7:].strip()
    found = {m.group(0) for m in _OUR_SECRET.finditer(secret)}
    if len(found) == 1 and secret not in found:
        (secret,) = found
    return secret


def _cmd_token_leaked(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import audit, leaks
    from extauthz.core.secret_scanning import Match

    secret = args.secret
    if secret == "-":  # noqa: S105 (the word for stdin, not a password)
        line = sys.stdin.buffer.readline(8194).decode("utf-8", "surrogateescape")
        secret = line.removesuffix("\n").removesuffix("\r")
        if len(secret) > 8192:
            raise InvalidValue("secret", "(from stdin)", "at most 8192 characters, one line")
    secret = _pasted_secret(secret)
    if not secret:
        raise InvalidValue("secret", "", "give the leaked secret, or - to read it from stdin")
    match = Match(secret, "", args.url or "", "manual")
    handled = leaks.report(
        _store(settings), [match], actor=audit.cli_actor(), confirm=settings.ack_timeout
    )
    token_id = handled.found.get(match.digest)
    label = handled.feedback[0]["label"]
    if args.json:
        shown = {"id": token_id, "label": label, "on_leak": handled.on_leak}
        unconfirmed = list(handled.unconfirmed)
        print(json.dumps({**shown, "revoked": handled.revoked, "unconfirmed": unconfirmed}))
    elif label == "false_positive":
        print("not ours: no token has this secret (nothing done)")
    elif token_id is None:
        print("a route secret of the policy: change it in the policy file and sync")
    elif handled.on_leak == "revoke":
        print(f"revoked {_shown(token_id or '(a token key without an id)')}")
    else:
        print(f"kept {_shown(token_id or '(a token key without an id)')} (on_leak: notify)")
    _warn(handled.warnings)
    if label == "false_positive":
        return EXIT_NOT_OURS
    return _unconfirmed("revoked", handled.unconfirmed, settings)


def _cmd_token_rotate(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import tokens

    grace = tokens.parse_ttl(args.grace, "grace") if args.grace is not None else None
    issued = tokens.rotate(_store(settings), args.id, settings.ack_timeout, grace, time.time())
    _warn(issued.warnings)
    _print_issued(issued, args.json)
    return _unconfirmed("rotated", issued.unconfirmed, settings)


def _unconfirmed(done: str, servers: tuple[str, ...], settings: Settings) -> int:
    """Exit 0 when every live server confirmed; else name the others and exit 4."""
    if not servers:
        return 0
    _error(
        f"{done} in Redis, but {len(servers)} live server(s) did not confirm within "
        f"{settings.ack_timeout:g}s: {', '.join(servers)} (a server whose invalidation channel "
        "is down reads every token from Redis; check its logs)"
    )
    return EXIT_UNCONFIRMED


# --- admin ----------------------------------------------------------------------------------


def _cmd_admin(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import server
    from extauthz.admin.api import create_app
    from extauthz.config import split_address, split_networks
    from extauthz.runtime.alerts import webhooks_for
    from extauthz.runtime.auth_failures import FailureLimiter

    _setup_logging(settings)
    store = _store(settings)
    webhooks = webhooks_for(settings, store)  # (token.leaked, token.expiring)
    failures = (
        FailureLimiter(settings.auth_failure_rate, settings.auth_failure_burst)
        if settings.auth_failure_burst > 0
        else None
    )
    host, port = split_address(settings.admin_listen)
    keys = None
    if settings.secret_scanning_keys:  # (unusable: one line now, not a 401 for every report)
        from extauthz.admin.leaks import KeysFile

        keys = KeysFile(settings.secret_scanning_keys)
    if webhooks is not None:
        webhooks.start()
    try:
        server.run(
            create_app(store, failures, keys),
            host or "127.0.0.1",
            port,
            split_networks(settings.admin_trusted_proxies) or [],
            settings.admin_request_timeout,
            settings.admin_max_connections,
        )
    finally:
        if webhooks is not None:
            webhooks.stop()
    return 0


MAX_PRICE_FILE = 64 << 20  # LiteLLM's cost map is a few MB


def _cmd_prices_import(args: argparse.Namespace, settings: Settings) -> int:
    """Print the `prices:` YAML for models of LiteLLM's cost map."""
    from extauthz.core.prices import litellm_prices
    from extauthz.files import describe, read_regular_file

    try:
        table = json.loads(read_regular_file(args.file, MAX_PRICE_FILE))
    except OSError as e:
        raise UsageError(f"cannot read {_shown(args.file)}: {describe(e)}") from None
    except (ValueError, RecursionError):
        raise UsageError(
            f"{_shown(args.file)} is not JSON: give LiteLLM's model_prices_and_context_window.json"
        ) from None
    if not isinstance(table, dict):
        raise UsageError(
            f"{_shown(args.file)}: expected a JSON object of models (LiteLLM's cost map)"
        )
    try:
        found = litellm_prices(table, args.model or ())
    except ValueError as e:
        raise InvalidValue("model", ",".join(args.model or ()), str(e)) from None
    if not found:
        raise UsageError(
            f"no model of {_shown(args.file)} with input and output prices matches "
            f"{' '.join(args.model or ('(any)',))}: check the names (exact, or prefix*)"
        )
    print("prices:  # USD per million tokens (extauthz prices import)")
    for model, price in found.items():
        values = ", ".join(f"{key}: {value}" for key, value in price.items())
        print(f"  {json.dumps(model)}: {{{values}}}")
    return 0


def _cmd_certs(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from extauthz.dev.local_pki import make_local_pki

    if not 1 <= args.days <= 3650:
        raise InvalidValue("days", str(args.days), "from 1 to 3650")
    directory = Path(args.directory)
    if (directory / "ca.crt").exists():
        print(f"kept the certificates in {_shown(str(directory))} (delete them to make new ones)")
        return 0
    pki = make_local_pki(directory, args.days, "extauthz CA")
    for path in (pki.ca, pki.server_cert, pki.server_key, pki.client_cert, pki.client_key):
        print(_shown(str(path)))
    return 0


# --- audit ----------------------------------------------------------------------------------


def _cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.admin import audit

    if not 1 <= args.limit <= 10_000:
        raise InvalidValue("limit", str(args.limit), "from 1 to 10000")
    for event in audit.tail(_store(settings), args.limit):
        if args.json:
            print(json.dumps(event))
            continue
        detail = json.dumps(event["detail"], sort_keys=True)
        fields = (event["actor"], event["action"], event["target"] or "-")
        print(_shown(f"{_when(event['time'], '-')} {' '.join(map(_one_field, fields))} {detail}"))
    return 0


# --- check ----------------------------------------------------------------------------------


def _cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from extauthz.core.decision import IDENTITY_PREFIX, Outcome, RequestFacts, decide
    from extauthz.runtime.jwks import JwksCache
    from extauthz.runtime.jwt_verifier import JwtVerifier

    store = _store(settings)
    headers: dict[str, str] = {}
    for item in args.header or ():
        name, colon, value = item.partition(":")
        if not colon:
            raise UsageError(f"--header {name!r} has no colon: use --header 'name: value'")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    facts = RequestFacts(
        route=args.route,
        network=args.network,
        source_address=args.source or "",
        authorization=headers.get("authorization"),
        identity_headers_sent=tuple(h for h in headers if h.startswith(IDENTITY_PREFIX)),
    )
    snapshot = store.load_policy()
    jwks = JwksCache(refresh=settings.jwks_refresh, min_refetch=0)
    if snapshot is not None:
        jwks.track(r.jwt for r in snapshot.routes.values() if r.jwt is not None)
    jwks.start()
    verify = JwtVerifier(jwks, first_wait=5.0)
    decision = decide(facts, snapshot, store.token_record, time.time(), verify)
    jwks.stop()
    print(
        json.dumps(
            {
                "outcome": decision.outcome.value,
                "status": decision.status,
                "reason": decision.reason,
                "subject": decision.subject,
                "headers": dict(decision.headers),
                "remove_headers": list(decision.remove_headers),
            }
        )
    )
    if decision.outcome is Outcome.ALLOW:
        return 0
    if decision.outcome is Outcome.DENY:
        return EXIT_DENIED
    hint = (
        "no policy has been synced yet: run `extauthz sync POLICY.yaml`"
        if decision.reason == "no_policy"
        else "something it needs did not answer (Redis, a route's JWKS): check them and retry"
    )
    _error(f"not decided ({decision.reason}): {hint}")
    return 1


EXIT_DENIED = 3  # `check`: the request would be denied (0: allowed; 1: it cannot be decided)
CHECK_EXITS = (
    "Prints the decision as JSON. Exit status: 0 allowed; 3 denied (401, 403, 404, 429...); "
    "1 not decided (no policy synced, Redis or a JWKS did not answer: status 503); "
    "2 a usage mistake."
)


# --- health -----------------------------------------------------------------------------------


def _cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC's own log lines: this line says it
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from extauthz.runtime import tls

    target = args.target or settings.listen
    secure = tls.enabled(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    if secure:
        # the probe presents the server's own certificate and trusts the client CA: one CA
        # signing both (as `extauthz up` does), or --tls-ca for the one that signed the server
        credentials = tls.channel_credentials(
            args.tls_ca or settings.tls_client_ca, settings.tls_cert, settings.tls_key
        )
        options = [("grpc.ssl_target_name_override", args.tls_server_name)]
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as e:
            _error(_health_failure(target, e.code().name, secure, args))
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(status)
    return 0 if status == "SERVING" else 1


def _health_failure(target: str, code: str, secure: bool, args: argparse.Namespace) -> str:
    """Why a health probe failed, and what to give instead: what answers at the target
    (TLS, plain gRPC, nothing) against what the probe spoke."""
    from extauthz.config import split_address
    from extauthz.runtime import tls

    failed = f"health check of {target} failed ({code})"
    if code == "NOT_FOUND":
        return f"{failed}: it has no health status for service {args.service!r} (see --service)"
    kind = None
    if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        with contextlib.suppress(ValueError):  # (a target gRPC reads but not host:port)
            host, port = split_address(target)
            kind = tls.listener_kind(host or "127.0.0.1", port, args.timeout)
    if kind == "none":
        return f"{failed}: nothing accepts connections there; is extauthz serve running on it?"
    if kind == "tls" and not secure:
        return (
            f"{failed}: the port speaks TLS; give the probe the server's TLS settings "
            "(--tls-cert and --tls-key: a certificate its --tls-client-ca signed; --tls-client-ca "
            "or --tls-ca: the CA of its certificate; or the same --config or EXTAUTHZ_TLS_*)"
        )
    if kind == "plain" and secure:
        return (
            f"{failed}: the port does not speak TLS; probe it without --tls-cert, --tls-key, "
            "--tls-client-ca (and without those settings in --config or EXTAUTHZ_TLS_*)"
        )
    if kind == "tls":
        return (
            f"{failed}: the TLS handshake failed; check --tls-ca (the CA that signed the "
            f"server's certificate), --tls-server-name (a name in it; now {args.tls_server_name}) "
            "and that the server's --tls-client-ca signed --tls-cert"
        )
    return f"{failed}; is extauthz serve running there?"


# --- up -------------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from extauthz.dev.stack import up

    policy = Path(args.policy) if args.policy else None
    return up(args.base_port, policy, Path(args.state_dir), settings)


# --- parser ---------------------------------------------------------------------------------


LEAKED_EXITS = (
    "exit codes: 0 ours: revoked (or kept, on_leak: notify) and audited; 3 not ours: nothing "
    "done; 4 revoked, but a live server did not confirm; 2 usage; 1 Redis"
)


class _Parser(argparse.ArgumentParser):
    """argparse, with its mistakes said in the CLI's one-line form (not a usage block)."""

    def error(self, message: str) -> NoReturn:
        _error(f"{message} (see `{self.prog} --help`)")
        raise SystemExit(2)


def _command(sub: Any, name: str, help: str, settings_of: str | None = None) -> Any:
    """A subcommand with `--config` and the flags of every setting it takes (config.py)."""
    parser = sub.add_parser(name, help=help)
    parser.add_argument("--config", help="YAML config file (keys: the settings' names)")
    add_setting_flags(parser, settings_of or name)
    return parser


def _allow_unknown_route(parser: Any) -> None:
    parser.add_argument(
        "--allow-unknown-route",
        action="store_true",
        help="accept routes the synced policy does not have (yet): without it they are "
        "refused, as typos",
    )


def _add_import_parser(tsub: Any) -> None:
    load = _command(tsub, "import", "load tokens from a JSON Lines file", "token")
    load.add_argument("file", metavar="FILE")
    load.add_argument("--dry-run", action="store_true", help="check and count, write nothing")
    load.add_argument(
        "--replace", action="store_true", help="an id with another secret: replace it"
    )
    _allow_unknown_route(load)
    load.set_defaults(func=_cmd_token_import)


def _add_limit_flags(parser: Any) -> None:
    """`token create`'s limits, LLM fields and team."""
    parser.add_argument("--rate-limit", help="requests per window: 600/m (s, m, h, d)")
    parser.add_argument(
        "--model",
        action="append",
        help="LLM model it may use on api: openai routes: a name or prefix*, repeatable "
        "(default: every model its routes serve)",
    )
    parser.add_argument(
        "--token-limit", help="LLM tokens per window: 100000/d (m, h, d, mo = UTC month)"
    )
    parser.add_argument(
        "--budget", help="USD of LLM use per window: 50/mo (m, h, d, mo = UTC month)"
    )
    parser.add_argument("--team", help="the team it belongs to (its models and limits apply too)")


def _add_leaked_parser(tsub: Any) -> None:
    what = "a secret was exposed: revoke its token (policy on_leak) and audit it"
    leaked = _command(tsub, "leaked", what, "token")
    add_setting_flags(leaked, "leaked")  # --ack-timeout
    leaked.add_argument("secret", metavar="SECRET|-", help="the secret; - reads one line of stdin")
    leaked.add_argument("--url", help="where it was found (for the audit event)")
    leaked.add_argument("--json", action="store_true")
    leaked.epilog = LEAKED_EXITS
    leaked.set_defaults(func=_cmd_token_leaked)


def _add_token_parsers(sub: Any) -> None:
    token = sub.add_parser("token", help="create, list, show, update, rotate, revoke tokens")
    tsub = token.add_subparsers(metavar="ACTION")
    create = _command(tsub, "create", "mint a token (shown once)", "token")
    create.add_argument("--route", action="append", help="route name, repeatable; '*' for all")
    create.add_argument("--scope", action="append", help="scope, repeatable (e.g. inference)")
    create.add_argument(
        "--ttl", help="lifetime: 30s, 15m, 1h, 7d (default: the routes' max_token_ttl, or none)"
    )
    create.add_argument("--name", help="a label for humans")
    create.add_argument("--id", help="token id (default: generated tok_...)")
    _add_limit_flags(create)
    _allow_unknown_route(create)
    create.add_argument("--json", action="store_true")
    _allow_cidr(create, "").set_defaults(func=_cmd_token_create)

    listing = _command(tsub, "list", "list tokens in creation order (never secrets)", "token")
    listing.add_argument("--route", help="only tokens that grant this route")
    listing.add_argument("--limit", type=int, help="at most this many")
    listing.add_argument("--json", action="store_true", help="JSON Lines: one object a line")
    listing.set_defaults(func=_cmd_token_list)

    for name, func, text in (
        ("show", _cmd_token_show, "show one token's record"),
        ("update", _cmd_token_update, "change a token's routes, scopes, name or expiry"),
        ("revoke", _cmd_token_revoke, "delete a token: it stops working"),
        ("rotate", _cmd_token_rotate, "new secret for the same id; the old one stops working"),
    ):
        p = _command(tsub, name, text, "token")
        add_setting_flags(p, name)  # update, revoke, rotate: --ack-timeout
        p.add_argument("id", metavar="ID")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        if name == "update":
            p.add_argument("--route", action="append", help="new routes (replace the old)")
            p.add_argument("--scope", action="append", help="new scopes (replace the old)")
            p.add_argument("--name", help="new label")
            p.add_argument("--ttl", help="new lifetime from now: 30s, 15m, 1h, 7d")
            p.add_argument("--no-expiry", action="store_true", help="never expires")
            p.add_argument("--rate-limit", help="600/m (s, m, h, d), or none to remove it")
            p.add_argument("--model", action="append", help="new LLM models (replace the old)")
            p.add_argument("--all-models", action="store_true", help="every model its routes serve")
            p.add_argument("--token-limit", help="100000/d (m, h, d, mo), or none to remove it")
            p.add_argument("--budget", help="USD per window: 50/mo (m, h, d, mo), or none")
            p.add_argument("--team", help="move it into a team, or none to take it out")
            _allow_cidr(p, " (replace the old; none: any address)")
            _allow_unknown_route(p)
        if name == "rotate":
            p.add_argument("--grace", help="the old secret keeps working this long (e.g. 10m)")

    _add_leaked_parser(tsub)
    usage = _command(tsub, "usage", "a token's requests per UTC day and last use", "token")
    usage.add_argument("id", metavar="ID")
    usage.add_argument("--days", type=int, default=7, help="this many days up to today")
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=_cmd_token_usage)
    _command(
        tsub, "reindex", "add tokens made with redis-cli to the id index", "token"
    ).set_defaults(func=_cmd_token_reindex)
    export = _command(tsub, "export", "print tokens as JSON Lines (hashes, never secrets)", "token")
    export.add_argument("--route", help="only tokens that grant this route")
    export.set_defaults(func=_cmd_token_export)
    _add_import_parser(tsub)


def _allow_cidr(parser: argparse.ArgumentParser, more: str) -> argparse.ArgumentParser:
    """Add `--allow-cidr` to `parser` (returned)."""
    parser.add_argument(
        "--allow-cidr",
        action="append",
        metavar="CIDR",
        help="a client network it may be used from (203.0.113.0/24, 2001:db8::/32), "
        f"repeatable; elsewhere: 403 (default: any address){more}",
    )
    return parser


def _add_team_parsers(sub: Any) -> None:
    team = sub.add_parser("team", help="create, list, show, update, delete teams")
    tsub = team.add_subparsers(metavar="ACTION")
    for name, func, text in (
        ("create", _cmd_team_create, "make a team: its tokens share its models and limits"),
        ("update", _cmd_team_update, "change a team's name, models or limits"),
        ("show", _cmd_team_show, "show one team and how many tokens it has"),
        ("usage", _cmd_team_usage, "a team's requests and LLM tokens per UTC day and model"),
        ("delete", _cmd_team_delete, "delete a team (refused while it has tokens)"),
    ):
        p = _command(tsub, name, text, "token")
        p.add_argument("id", metavar="ID")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        if name in ("create", "update"):
            p.add_argument("--name", help="a label for humans")
            p.add_argument(
                "--model",
                action="append",
                help="an LLM model its tokens may use: a name or prefix*, repeatable "
                + ("(default: any)" if name == "create" else "(replace the old; none: any)"),
            )
            p.add_argument("--rate-limit", help="requests per window for all its tokens: 600/m")
            p.add_argument("--token-limit", help="LLM tokens per window for all its tokens")
            p.add_argument("--budget", help="USD of LLM use per window for all its tokens: 500/mo")
            _allow_cidr(p, " (replace the old; none: any address)" if name == "update" else "")
        if name == "usage":
            p.add_argument("--days", type=int, default=7, help="this many days up to today")
        if name == "delete":
            p.add_argument(
                "--revoke-tokens", action="store_true", help="revoke its tokens first (audited)"
            )
    listing = _command(tsub, "list", "list teams in creation order", "token")
    listing.add_argument("--json", action="store_true", help="JSON Lines: one object a line")
    listing.set_defaults(func=_cmd_team_list)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="extauthz", description="Envoy ext_authz server for model endpoints.")
    parser.add_argument("--version", action="version", version=f"extauthz {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    _command(sub, "serve", "run the gRPC ext_authz server").set_defaults(func=_cmd_serve)

    sync = _command(sub, "sync", "load a policy file into Redis")
    sync.add_argument("policy", metavar="POLICY.yaml")
    sync.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    sync.add_argument("--prune", action="store_true", help="remove routes not in the file")
    sync.add_argument(
        "--check",
        action="store_true",
        help="exit 1 (writing nothing) when the published policy differs from the file",
    )
    sync.add_argument(
        "--watch",
        action="store_true",
        help="keep running: sync again whenever the file changes or Redis lost the policy",
    )
    sync.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="with --watch: seconds between looks (default 10)",
    )
    sync.set_defaults(func=_cmd_sync)

    _add_token_parsers(sub)
    _add_team_parsers(sub)
    prices = sub.add_parser("prices", help="model prices for budgets")
    psub = prices.add_subparsers(metavar="ACTION")
    convert = psub.add_parser(
        "import", help="print the policy's prices: for models of LiteLLM's cost map"
    )
    convert.add_argument("file", metavar="FILE", help="model_prices_and_context_window.json")
    convert.add_argument(
        "--model", action="append", help="a model name or prefix*, repeatable (default: all)"
    )
    convert.set_defaults(func=_cmd_prices_import)

    certs = _command(
        sub, "certs", "make a CA and certificates for mutual TLS between Envoy and extauthz"
    )
    certs.add_argument("directory", help="where to write them (kept if already there)")
    certs.add_argument("--days", type=int, default=365, help="how long they are valid")
    certs.set_defaults(func=_cmd_certs)
    _command(sub, "admin", "run the management API (JSON under /v1/)").set_defaults(func=_cmd_admin)

    audit = _command(sub, "audit", "the latest changes: who changed what, when")
    audit.add_argument("--limit", type=int, default=50, help="this many events (default 50)")
    audit.add_argument("--json", action="store_true", help="JSON Lines")
    audit.set_defaults(func=_cmd_audit)

    check = _command(sub, "check", "what-if: decide one request offline")
    check.description, check.epilog = "Decide one request as the server would.", CHECK_EXITS
    check.add_argument("--route", required=True)
    check.add_argument("--header", action="append", help="'name: value', repeatable")
    check.add_argument("--network", help="context extension network (e.g. internal)")
    check.add_argument("--source", help="source IP address")
    check.set_defaults(func=_cmd_check)

    probe = _command(sub, "health", "probe a server's gRPC health")
    probe.add_argument("--target", help="host:port (default: the --listen setting)")
    probe.add_argument("--service", default="envoy.service.auth.v3.Authorization")
    probe.add_argument("--timeout", type=float, default=2.0)
    probe.add_argument("--tls-ca", help="CA of the server's certificate (default --tls-client-ca)")
    probe.add_argument(
        "--tls-server-name", default="extauthz", help="name in the server's certificate"
    )
    probe.set_defaults(func=_cmd_health)

    stack = sub.add_parser("up", help="run the local stack (Redis, extauthz, Envoy, demo model)")
    stack.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help=f"first of the {PORTS_USED} loopback ports it uses (default: {DEFAULT_BASE_PORT})",
    )
    stack.add_argument("--policy", help="policy file (default examples/policy.yaml)")
    stack.add_argument("--state-dir", default=".stack", help="logs, Redis data, envoy.yaml, TLS")
    # the stack runs one server process unless told otherwise (dev/stack.py)
    add_setting_flags(
        stack, "up", {"workers": "server processes of the stack's extauthz (default: 1; 0: 1)"}
    )
    stack.set_defaults(func=_cmd_up)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
