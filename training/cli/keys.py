"""``tierwise keys create|list|revoke|rotate``: API keys kept as data, in the key store the config
names (``tierwise.router.keys``). A new secret is printed once; only its SHA-256 is stored. Running
servers see a change at their next poll (``keys.poll_interval_s``), on SIGHUP, and a new key at
once when it first reaches them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from tierwise.router.config import ConfigError, load_config
from tierwise.router.keys import (
    KeyInputError,
    KeyManager,
    KeyStoreUnavailable,
    NewSecret,
    open_key_store,
    parse_budget,
    parse_duration,
)
from tierwise.router.keys.manage import describe

T = TypeVar("T")
err = Console(stderr=True)

# The manager's names for its inputs -> the options that carry them here.
_OPTIONS = {
    "tenant": "--tenant",
    "name": "--name",
    "expires_in_s": "--expires",
    "rpm": "--rpm",
    "tpm": "--tpm",
    "budget_usd": "--budget-usd",
    "grace_s": "--grace",
    "key": "ID|NAME",
}

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config file (names the key store)")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
KeyArgument = Annotated[str, typer.Argument(metavar="ID|NAME", help="the key's id or name")]


def keys_app() -> typer.Typer:
    app = typer.Typer(
        help="API keys kept as data: create (the secret is shown once), list, revoke, rotate.",
        no_args_is_help=True,
    )
    app.command()(create)
    app.command("list")(list_keys)
    app.command()(revoke)
    app.command()(rotate)
    return app


@contextmanager
def _manager(config: Path) -> Iterator[KeyManager]:
    """The manager over the configured store; a bad input exits 2 naming its option, an
    unreachable store exits 1."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    try:
        store = open_key_store(cfg)
    except KeyStoreUnavailable as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    try:
        yield KeyManager(store, {key.label for key in cfg.auth.api_keys})
    except KeyInputError as exc:
        err.print(f"[red]error:[/red] {_OPTIONS.get(exc.field, exc.field)}: {exc.message}")
        raise typer.Exit(2) from None
    except KeyStoreUnavailable as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    finally:
        store.close()


def _parsed(text: str | None, parse: Callable[[str], T]) -> T | None:
    return None if text is None else parse(text)


def _print_secret(made: NewSecret, as_json: bool) -> None:
    info = describe(made.record, time.time())
    if as_json:
        typer.echo(json.dumps({"key": info, "secret": made.secret}, indent=2))
        return
    err.print(f"key {info['name']} ({info['id']}) of tenant {info['tenant']}: the secret below is shown once")
    typer.echo(made.secret)


def create(
    config: ConfigOption,
    tenant: Annotated[str, typer.Option(help="the tenant the key's requests are billed to")],
    name: Annotated[
        str | None, typer.Option(help="names the key in reports, metrics, budgets (default: its id)")
    ] = None,
    expires: Annotated[str | None, typer.Option(help="lifetime: 30d, 12h, 90m, 2w (default: never)")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="may use the Admin service across tenants")] = False,
    rpm: Annotated[int | None, typer.Option(min=1, help="requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="tokens per minute")] = None,
    budget_usd: Annotated[
        str | None,
        typer.Option("--budget-usd", help="spend limit: USD per day or month, like 5/day or 100/month"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a key and print its secret once."""
    with _manager(config) as manager:
        made = manager.create(
            tenant,
            name=name,
            expires_in_s=_parsed(expires, lambda t: parse_duration(t, "expires_in_s")),
            admin=admin,
            rpm=rpm,
            tpm=tpm,
            budget=_parsed(budget_usd, parse_budget),
        )
    _print_secret(made, as_json)


def list_keys(
    config: ConfigOption,
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the stored keys (never a secret)."""
    with _manager(config) as manager:
        records = manager.list(tenant)
    now = time.time()
    infos = [describe(r, now) for r in records]
    if as_json:
        typer.echo(json.dumps(infos, indent=2))
        return
    table = Table(title=f"{len(infos)} stored keys")
    columns = ("id", "name", "tenant", "state", "admin", "expires_at", "rpm", "tpm", "budget_usd")
    for column in columns:
        table.add_column(column)
    for info in infos:
        budget = f"{info['budget_usd']}/{info['budget_window']}" if info["budget_usd"] else "-"
        table.add_row(
            info["id"],
            info["name"],
            info["tenant"],
            info["state"],
            "yes" if info["admin"] else "",
            info["expires_at"] or "never",
            str(info["rpm"] or "-"),
            str(info["tpm"] or "-"),
            budget,
        )
    Console().print(table)


def revoke(config: ConfigOption, key: KeyArgument) -> None:
    """Revoke a key: refused from the servers' next poll on; calls already running finish."""
    with _manager(config) as manager:
        record = manager.revoke(key)
    err.print(f"key {record.name} ({record.id}) revoked")


def rotate(
    config: ConfigOption,
    key: KeyArgument,
    grace: Annotated[
        str | None,
        typer.Option(help="the old secret keeps working this long: 1h, 7d (default: revoked at once)"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Give a key a new secret (printed once); its id, name, limits and budget stay."""
    with _manager(config) as manager:
        made = manager.rotate(key, grace_s=_parsed(grace, lambda t: parse_duration(t, "grace_s")) or 0.0)
    _print_secret(made, as_json)
