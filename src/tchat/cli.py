"""The `tchat` command: serve, token, services, perf, config."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tchat import __version__
from tchat.config import Settings, SettingsError, load_settings, settings_table


def _settings_epilog() -> str:
    lines = ["\b", "Settings (environment variables):"]
    for env, default, doc in settings_table():
        lines.append(f"  {env}={default}".ljust(44) + f" {doc}")
    return "\n".join(lines)


def _load(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        click.echo(f"tchat: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="tchat")
def main() -> None:
    """tchat — live streaming (WHIP/WHEP), chat and HLS recording."""


@main.command(epilog=_settings_epilog())
@click.option("--host", help="Bind address (TCHAT_HOST).")
@click.option("--port", type=int, help="HTTP port (TCHAT_PORT).")
@click.option("--sfu-instances", type=int, help="SFU worker processes (NUM_SFU_INSTANCES).")
def serve(host: str | None, port: int | None, sfu_instances: int | None) -> None:
    """Run the HTTP server on embedded defaults unless settings say otherwise."""
    settings = _load(TCHAT_HOST=host, TCHAT_PORT=port, NUM_SFU_INSTANCES=sfu_instances)
    import uvicorn

    from tchat.admin import admin_url, bind_admin_socket
    from tchat.app import create_app
    from tchat.logs import setup_logging

    setup_logging(settings.log_level)
    if settings.admin_port == settings.port:
        click.echo("tchat: TCHAT_ADMIN_PORT must differ from TCHAT_PORT", err=True)
        sys.exit(2)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        ws="websockets-sansio",
        ws_max_size=64 * 1024,  # a larger frame is closed with 1009 before it is buffered
        # the client address a proxy names in X-Forwarded-For, from these peers only
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
    )
    public = config.bind_socket()
    try:
        admin = bind_admin_socket(settings.admin_port)
    except OSError as exc:
        click.echo(f"tchat: admin listener 127.0.0.1:{settings.admin_port}: {exc}", err=True)
        sys.exit(2)
    app.state.services.admin_port = port = admin.getsockname()[1]
    base = settings.base_url
    click.echo(f"tchat {__version__} serving on {base}")
    click.echo(f"  pages    {base}/  studio {base}/studio  watch {base}/watch/{{room}}")
    click.echo(f"  admin    {admin_url(port)} (this host only; never proxy it)")
    click.echo(
        "  tokens   watch page gets chat tokens from the admin listener's /dev/token"
        if settings.dev_tokens_enabled
        else "  tokens   /dev/token off: viewers paste a token (tchat token --role chat)"
    )
    click.echo(f"  health   {base}/healthz")
    click.echo(f"  API docs {base}/docs")
    click.echo(f"  metrics  {base}/metrics")
    click.echo(f"  chat     ws://{settings.host}:{settings.port}/rooms/{{room}}/ws")
    click.echo(f"  WHIP     {base}/whip/{{room}}   WHEP {base}/whep/{{room}}")
    click.echo(f"  records  {base}/recordings (HLS under {base}/cdn/recordings/)")
    click.echo(
        f"  store    chat={settings.chat_store} storage={settings.storage} data={settings.data_dir}"
    )
    uvicorn.Server(config).run(sockets=[public, admin])


@main.command()
@click.option("--room", required=True, help="Room the token is for ('*' for any room).")
@click.option(
    "--role",
    type=click.Choice(["publisher", "viewer", "chat", "moderator"]),
    required=True,
    help="What the holder may do.",
)
@click.option("--identity", default="", help="Who holds it (shown as chat author).")
@click.option("--ttl", default=None, help="Lifetime, e.g. 1h or 30d (TCHAT_TOKEN_TTL).")
@click.option(
    "--url",
    "page_url",
    is_flag=True,
    help="Print the page that uses it (studio for publishers, watch page otherwise: a "
    "moderator gets the moderation controls there), "
    "token in the URL fragment, then the token.",
)
def token(room: str, role: str, identity: str, ttl: str | None, page_url: bool) -> None:
    """Issue a signed token for a room and role."""
    from tchat.auth import issue_token
    from tchat.config import parse_duration

    settings = _load()
    try:
        ttl_s = parse_duration(ttl) if ttl else settings.token_ttl
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ttl") from None
    value = issue_token(settings.token_secret(), room, role, identity, ttl_s)
    if page_url:
        from urllib.parse import quote

        page = "studio?room=" + quote(room) if role == "publisher" else "watch/" + quote(room)
        # the fragment never reaches the server's logs; the page reads it
        click.echo(f"{settings.base_url}/{page}#token={value}")
    click.echo(value)


@main.group()
def services() -> None:
    """Cassandra, Redis and SeaweedFS (S3) as plain processes under .tchat/."""


@services.command("up")
@click.argument("names", nargs=-1)
def services_up(names: tuple[str, ...]) -> None:
    """Install on first use, start, and wait until each answers."""
    from tchat import devservices

    try:
        rows = devservices.up(list(names))
    except devservices.ServiceError as exc:
        click.echo(f"tchat: {exc}", err=True)
        sys.exit(1)
    devservices.print_statuses(rows)
    if any(r.answer is None for r in rows):
        sys.exit(1)


@services.command("down")
@click.argument("names", nargs=-1)
def services_down(names: tuple[str, ...]) -> None:
    """Stop what `up` started (by pid file); leaves other processes alone."""
    from tchat import devservices

    for name, stopped in devservices.down(list(names)):
        click.echo(f"{name:10} {'stopped' if stopped else 'was not running (ours)'}")


@services.command("status")
@click.argument("names", nargs=-1)
def services_status(names: tuple[str, ...]) -> None:
    """Show which services answer; exit 1 if any does not."""
    from tchat import devservices

    rows = devservices.status(list(names))
    devservices.print_statuses(rows)
    if any(r.answer is None for r in rows):
        sys.exit(1)


@main.group()
def perf() -> None:
    """Performance-suite tools."""


@perf.command("report")
@click.option(
    "--reports",
    type=click.Path(path_type=Path),
    default=Path("reports"),
    help="Reports directory (reads latest/*.json).",
)
def perf_report(reports: Path) -> None:
    """Render reports/latest/index.html from every suite's results."""
    from tchat.perf.report import render_report

    try:
        out = render_report(reports / "latest")
    except FileNotFoundError as exc:
        click.echo(f"tchat: {exc}", err=True)
        sys.exit(1)
    click.echo(f"wrote {out}")


@main.command()
@click.option("--markdown", is_flag=True, help="Print docs/configuration.md.")
def config(markdown: bool) -> None:
    """Show the effective settings (or their documentation)."""
    from tchat.config import configuration_markdown

    if markdown:
        click.echo(configuration_markdown(), nl=False)
        return
    settings = _load()
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if name in ("secret", "s3_secret_key") and value:
            value = "***"
        click.echo(f"{field.alias}={value}")


if __name__ == "__main__":
    main()
