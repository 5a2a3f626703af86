"""Composition: settings + storage + tokens + signaling + media -> one aiohttp application.

Nothing here forwards packets or parses messages; it wires the packages together, serves the
web client, and turns settings into the forwarding core's MediaSettings.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

from aiohttp import web

from media import MediaSettings
from media.fastpath import NATIVE
from media.network import PortRange, is_local_address
from media.pool import WorkerPool, default_workers
from server.admin import setup_routes as setup_admin_routes
from server.metrics import setup_routes as setup_metrics_routes
from server.recordings import setup_routes as setup_recording_routes
from server.auth import AuthError, TokenService
from server.config import Settings
from server.storage import Storage
from server.turn import IceServers
from signaling.service import SignalingService

logger = logging.getLogger("hoinghi")

WEB_ROOT = Path(__file__).resolve().parent.parent / "web-client"

SIGNALING_KEY = web.AppKey("signaling", SignalingService)
STORAGE_KEY = web.AppKey("storage", Storage)
POOL_KEY = web.AppKey("media_pool", object)  # media.pool.WorkerPool, or None (media in-process)


def media_settings(settings: Settings) -> MediaSettings:
    """Bind where the announced address lives; otherwise bind all and announce (NAT 1:1)."""
    bind: Optional[list[str]] = None
    if settings.announce_ip and is_local_address(settings.announce_ip):
        bind = [settings.announce_ip]
    return MediaSettings(
        bind_addresses=bind,
        announce_ip=settings.announce_ip,
        video_slots=settings.video_slots,
        audio_slots=settings.audio_slots,
        opus_dtx=settings.opus_dtx,
        port_range=PortRange(settings.rtc_port_min, settings.rtc_port_max) if settings.rtc_port_min else None,
    )


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # aiortc/aioice log SDP and ICE credentials at debug level; keep them quiet by default.
    for noisy in ("aiortc", "aioice"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


def _page(name: str):
    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_ROOT / name, headers={"Cache-Control": "no-cache"})

    return handler


async def _healthz(request: web.Request) -> web.Response:
    sig = request.app[SIGNALING_KEY]
    rooms = {mid: len(room.sessions) for mid, room in sig.rooms.items()}
    return web.json_response({"status": "ok", "time": time.time(), "rooms": rooms, "connections": len(sig.sessions)})


async def _index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/site")


@web.middleware
async def _security_headers(request: web.Request, handler):
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    return response


async def build_app(settings: Settings, storage: Storage, tokens: TokenService) -> web.Application:
    app = web.Application(middlewares=[_security_headers], client_max_size=1024 * 1024)
    media = media_settings(settings)
    pool: Optional[WorkerPool] = None
    if settings.workers != 0:
        count = default_workers() if settings.workers < 0 else settings.workers
        pool = WorkerPool(count, media, log_level=settings.log_level.upper(), log_json=settings.log_format == "json")
        await pool.start()
    signaling = SignalingService(
        tokens, storage, media, max_participants=settings.max_participants, auth_error=AuthError, egress_bps=settings.egress_mbps * 1_000_000,
        join_concurrency=settings.join_concurrency, joins_per_second=settings.joins_per_second,
        ice_servers=IceServers(settings.turn_urls, settings.turn_secret, settings.turn_ttl_s).for_site,
        media_pool=pool,
    )
    app[POOL_KEY] = pool
    app[SIGNALING_KEY] = signaling
    app[STORAGE_KEY] = storage
    app.router.add_get("/", _index)
    app.router.add_get("/site", _page("site.html"))
    app.router.add_get("/hub", _page("hub.html"))
    app.router.add_get("/ws", signaling.handle)
    app.router.add_get("/healthz", _healthz)
    app.router.add_static("/static", WEB_ROOT, show_index=False)
    setup_admin_routes(app, storage, tokens, signaling, settings=settings)
    setup_recording_routes(app, storage, tokens, signaling)
    setup_metrics_routes(app, signaling)

    async def on_shutdown(app: web.Application) -> None:
        await signaling.shutdown()
        if pool is not None:
            await pool.stop()

    app.on_shutdown.append(on_shutdown)
    return app


def run(settings: Settings) -> None:
    setup_logging(settings)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    storage = Storage(settings.db_path)
    if settings.demo_meeting:
        storage.ensure_demo()
    tokens = TokenService(settings.secret_path)

    async def make() -> web.Application:
        return await build_app(settings, storage, tokens)

    logger.info("hoinghi serving on http://%s:%s (join links: %s)", settings.host, settings.port, settings.public_url)
    logger.info(
        "per-copy path: %s", "native (media/_fastpath.c)" if NATIVE else
        "Python (the native module is not built: install gcc and reinstall for ~40 % less CPU per forwarded packet)",
    )
    if settings.demo_meeting:
        logger.info(
            "demo meeting ready; make a hub link with: hoinghi token --meeting demo --site hub --role hub --data-dir %s",
            settings.data_dir,
        )
    try:
        # SIGTERM: stop listening, on_shutdown tells every site to come back (bye
        # server_shutdown) and closes media; connections left after 3 s are cut.
        web.run_app(
            make(), host=settings.host, port=settings.port, access_log_format='%a "%r" %s %b %Tf', print=None,
            shutdown_timeout=3.0,
        )
        logger.info("hoinghi stopped")
    finally:
        storage.close()
