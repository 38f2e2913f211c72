"""Serving an aiohttp application on loopback, shared by the simulator's HTTP servers."""

from __future__ import annotations

import socket
import ssl

from aiohttp import web


async def serve(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Start `app` on host:port (port 0: any free port); the runner and the bound port.

    The socket is bound here rather than by aiohttp so that port 0 reports the real port,
    and nothing is left running when binding or starting fails.
    """
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        sock = socket.create_server((host, port))
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(sock.getsockname()[1])
