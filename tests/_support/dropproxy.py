"""A TCP proxy on 127.0.0.1 that can cut every connection through it, or lose everything
without closing anything: the network faults that tests inject between a member and the relay
(a NAT timeout, a Wi-Fi switch, a partition)."""

from __future__ import annotations

import trio


class DropProxy:
    """A TCP proxy on 127.0.0.1 that can cut every connection passing through it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.drops = 0
        #: Connections accepted so far (a member that comes back after a drop dials again).
        self.connections = 0
        #: A partition: bytes through the proxy vanish, new connections are accepted and never
        #: reach the target, and nothing is closed (neither side learns of it from the network).
        self.blackhole = False
        self._scopes: set[trio.CancelScope] = set()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                if self.blackhole:
                    await trio.sleep_forever()
                server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                async with client, server, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, client, server, nursery.cancel_scope)
                    nursery.start_soon(self._pipe, server, client, nursery.cancel_scope)
            finally:
                self._scopes.discard(scope)
        # A cut connection is closed abruptly, like a NAT timeout or a Wi-Fi switch.
        await client.aclose()

    async def _pipe(self, src, dst, scope):
        try:
            async for chunk in src:
                if not self.blackhole:
                    await dst.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if self.blackhole:
            await trio.sleep_forever()  # a partition does not carry the close either
        scope.cancel()

    def drop_all(self) -> None:
        self.drops += len(self._scopes)
        for scope in list(self._scopes):
            scope.cancel()
