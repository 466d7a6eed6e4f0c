"""We test these aspects: the shared HTTP client keeps no cookies.

* a cookie set by one provider's reply is never sent on a later request (the client is
  shared by every chain of every namespace), with either transport.
"""

from __future__ import annotations

import pytest
from aiohttp import web

from chainop.providers import http


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_cookies_set_by_a_provider_are_never_sent_back(transport):
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"data": []})
        response.set_cookie("lb", "tenant-a-session", path="/")
        return response

    app = web.Application()
    app.router.add_get("/v1/models", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = http.build_client(transport=transport)
    try:
        for _ in range(2):
            reply = await client.get(f"http://127.0.0.1:{port}/v1/models")
            assert reply.status_code == 200
            assert "set-cookie" in reply.headers  # the server really sets one
        assert seen == [None, None]
        assert len(client.cookies.jar) == 0
    finally:
        await client.aclose()
        await runner.cleanup()
