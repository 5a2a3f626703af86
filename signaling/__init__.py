"""The aiohttp WebSocket service that admits sites to meetings and negotiates their media."""
