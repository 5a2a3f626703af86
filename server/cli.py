"""`hoinghi` command line: run the server, mint a join link for a site, load the site registry.

`token` loads settings exactly as `serve` does, so a link printed at the hub console is
signed with the secret the running server checks (same data dir => same secret file) and
points at the URL the server advertises. The token travels in the URL fragment (`#t=`),
which browsers never send to the server, so it cannot end up in access logs or proxies.

Operator mistakes (bad config, unknown meeting) print one plain line and exit 2; a
traceback would only hide the message from the person at the console.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from server.auth import ROLES, SecretFileError, TokenService
from server.config import ConfigError, Settings, load_settings
from server.storage import SAMPLE_SITES_CSV, SiteImportError, Storage, StorageError

EXIT_USAGE = 2


class CliError(Exception):
    """A problem the operator can fix; printed without a traceback."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _add_settings_flags(p: argparse.ArgumentParser, *, with_host: bool) -> None:
    if with_host:
        p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="HTTP port (default 8080)")
    p.add_argument("--data-dir", type=Path, help="database, secret and config directory (default ./hoinghi-data)")
    p.add_argument("--announce-ip", help="IP address sites use to reach this server (behind NAT / in Docker)")
    p.add_argument("--public-url", help="base of join links, e.g. https://hoinghi.example.gov.vn")
    p.add_argument("--config", type=Path, help="TOML config file (default <data-dir>/hoinghi.toml if present)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hoinghi", description="Self-hosted WebRTC conferencing server.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the conferencing server until stopped")
    _add_settings_flags(serve, with_host=True)
    serve.add_argument("--egress-mbps", type=int, help="the server's uplink for media in Mbit/s; layers are lowered to stay under it (default 0: unlimited)")
    serve.add_argument("--workers", help='media worker processes: "auto" (one per core, default), 0 = media in one process, or a number')
    serve.add_argument("--rtc-port-min", type=int, help="lowest UDP port for media (with --rtc-port-max; default: any)")
    serve.add_argument("--rtc-port-max", type=int, help="highest UDP port for media (open this range in the firewall)")

    token = sub.add_parser("token", help="print a join link for one site")
    token.add_argument("--meeting", required=True, help="meeting id (e.g. demo)")
    token.add_argument("--site", required=True, help="site id the link is for")
    token.add_argument("--role", required=True, choices=ROLES, help="hub, operator or site")
    token.add_argument("--name", help="display name shown to other participants")
    token.add_argument("--ttl", type=_positive_int, help="validity in seconds (default: token_ttl_s setting)")
    _add_settings_flags(token, with_host=False)

    sites = sub.add_parser("sites", help="load or print the site registry (province -> district -> commune)")
    sites_sub = sites.add_subparsers(dest="sites_command", required=True, metavar="ACTION")
    imp = sites_sub.add_parser("import", help="load sites from a CSV file: id,name,level,parent_id")
    imp.add_argument("file", type=Path, help=f"CSV file (the shipped sample: {SAMPLE_SITES_CSV})")
    imp.add_argument("--replace", action="store_true", help="also delete registered sites that are not in the file")
    _add_settings_flags(imp, with_host=False)
    sample = sites_sub.add_parser("sample", help="load the shipped sample registry of 164 sites")
    _add_settings_flags(sample, with_host=False)
    export = sites_sub.add_parser("export", help="print the registry as CSV")
    _add_settings_flags(export, with_host=False)

    rehearse = sub.add_parser(
        "rehearse", help="rehearse a conference: N synthetic sites with real links, report (HTML + JSON)"
    )
    try:
        from loadtest.rehearse_args import add_arguments as _rehearse_arguments
    except ModuleNotFoundError:  # an installation without the load-test tools
        _rehearse_arguments = None
    if _rehearse_arguments is not None:
        _rehearse_arguments(rehearse)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        "host": getattr(args, "host", None),
        "port": args.port,
        "data_dir": args.data_dir,
        "announce_ip": args.announce_ip,
        "public_url": args.public_url,
        "egress_mbps": getattr(args, "egress_mbps", None),
        "rtc_port_min": getattr(args, "rtc_port_min", None),
        "workers": getattr(args, "workers", None),
        "rtc_port_max": getattr(args, "rtc_port_max", None),
    }
    return load_settings(config_file=args.config, env=os.environ, overrides=overrides)


def join_url(settings: Settings, role: str, token: str) -> str:
    page = "site" if role == "site" else "hub"
    return f"{settings.join_base_url}/{page}#t={token}"


def cmd_token(args: argparse.Namespace) -> int:
    settings = _settings(args)
    storage = Storage(settings.db_path)
    try:
        if settings.demo_meeting:
            storage.ensure_demo()
        meeting = storage.get_meeting(args.meeting)
        if meeting is None:
            known = ", ".join(m.id for m in storage.list_meetings()) or "none"
            raise CliError(f"meeting {args.meeting!r} does not exist in {settings.db_path} (known: {known})")
        if meeting.status == "ended":
            raise CliError(f"meeting {args.meeting!r} has ended; no new join links can be issued")
        if not storage.site_may_join(meeting.id, args.site):
            raise CliError(f"site {args.site!r} is not invited to meeting {meeting.id!r}")
    finally:
        storage.close()

    ttl = args.ttl or settings.token_ttl_s
    token = TokenService(settings.secret_path).issue(meeting.id, args.site, args.role, ttl, name=args.name)
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() + ttl))
    print(
        f"Join link for site {args.site!r} as {args.role} in meeting {meeting.id!r} "
        f"({meeting.title}), valid until {until}:",
        file=sys.stderr,
    )
    print(join_url(settings, args.role, token), flush=True)
    return 0


def cmd_sites(args: argparse.Namespace) -> int:
    settings = _settings(args)
    storage = Storage(settings.db_path)
    try:
        if args.sites_command == "export":
            sys.stdout.write(storage.sites_csv())
            return 0
        if args.sites_command == "sample":
            counts = storage.load_sample_sites()
        else:
            try:
                text = args.file.read_text(encoding="utf-8-sig")
            except FileNotFoundError:
                raise CliError(f"file {args.file} does not exist") from None
            except UnicodeDecodeError:
                raise CliError(f"file {args.file} is not UTF-8 text; in Excel use 'Save as: CSV UTF-8'") from None
            except OSError as exc:
                raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
            try:
                counts = storage.import_sites_csv(text, replace=args.replace)
            except SiteImportError as exc:
                lines = "\n  ".join(exc.errors[:30])
                more = f"\n  … and {len(exc.errors) - 30} more" if len(exc.errors) > 30 else ""
                raise CliError(f"{args.file} was not imported (nothing changed):\n  {lines}{more}") from None
    finally:
        storage.close()
    print(
        f"Sites: {counts['added']} added, {counts['updated']} updated, {counts['removed']} removed; "
        f"{counts['total']} in the registry ({settings.db_path}).",
        file=sys.stderr,
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        from server.app import run  # imported late: pulls in aiortc/av, slow and heavy
    except ModuleNotFoundError as exc:
        if exc.name in ("server.app",):
            raise CliError("this installation has no server (server/app.py is missing)") from None
        raise
    check_open_files(settings)
    try:
        run(settings)
    except KeyboardInterrupt:
        return 130
    return 0


def check_open_files(settings: Settings) -> None:
    """Raise the open-files soft limit to the hard one; warn when it cannot cover every site."""
    from server.config import local_ipv4_addresses
    from server.fdlimit import raise_open_files_limit

    addresses = 1 if settings.announce_ip else max(1, len(local_ipv4_addresses()))
    check = raise_open_files_limit(settings.max_participants, addresses)
    if check.warning:
        print(f"hoinghi: warning: {check.warning}", file=sys.stderr, flush=True)


def cmd_rehearse(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    try:
        from loadtest.rehearse import run_cli
    except ModuleNotFoundError:
        raise CliError("this installation has no load-test tools (loadtest/ is missing)") from None
    rest = list(argv)[1:] if argv is not None else None
    return run_cli(args, rest)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "rehearse":
        return cmd_rehearse(args, argv)
    handler = {"serve": cmd_serve, "token": cmd_token, "sites": cmd_sites}[args.command]
    try:
        return handler(args)
    except (CliError, ConfigError, StorageError, SecretFileError) as exc:
        print(f"hoinghi: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
