"""Shared fixtures: a real hoinghi server (aiohttp app, real SQLite file, real tokens) on loopback."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer

from server.app import build_app, SIGNALING_KEY
from server.auth import TokenService
from server.config import Settings
from server.storage import Storage


@dataclass
class RunningServer:
    url: str
    settings: Settings
    storage: Storage
    tokens: TokenService
    server: TestServer

    def token(self, site: str, role: str = "site", meeting: str = "demo", ttl: int = 600, name: str | None = None) -> str:
        return self.tokens.issue(meeting, site, role, ttl, name=name)

    @property
    def signaling(self):
        return self.server.app[SIGNALING_KEY]


@asynccontextmanager
async def _serve(tmp_path: Path, workers: int) -> AsyncIterator[RunningServer]:
    """The real app on a loopback port with a fresh SQLite file and the demo meeting."""
    settings = Settings(data_dir=tmp_path, host="127.0.0.1", port=0, announce_ip="127.0.0.1", workers=workers)
    storage = Storage(settings.db_path)
    storage.ensure_demo()
    tokens = TokenService(settings.secret_path)
    app = await build_app(settings, storage, tokens)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield RunningServer(f"http://127.0.0.1:{server.port}", settings, storage, tokens, server)
    finally:
        await server.close()
        storage.close()


@pytest.fixture
async def hoinghi_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """Media in the server process itself (workers = 0): exact counters, fast start."""
    async with _serve(tmp_path, workers=0) as running:
        yield running


@pytest.fixture
async def hoinghi_workers(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """The server as production runs it: media in two worker processes (media/pool.py)."""
    async with _serve(tmp_path, workers=2) as running:
        yield running
