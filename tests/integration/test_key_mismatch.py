"""A peer with another cluster key: both sides say so in words an operator can act on.

The receiver runs in its own process (an internal HTTP endpoint and a heartbeat endpoint on
127.0.0.1, key A); this test process sends with key B over real HTTP and UDP. The receiver
must log "cluster key mismatch from ADDR" once (rate-limited, however many arrive); the sender
gets an RpcError naming the peer and the option to check, and logs it once per peer.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from snooze.codes import ErrorCode
from snooze.heartbeat import HeartbeatEndpoint
from snooze.models import NetworkAddress
from snooze.rpc import RpcClient, RpcError
from tests.support import port_range

RECEIVER = textwrap.dedent(
    """
    import asyncio, logging, sys
    from snooze.heartbeat import HeartbeatEndpoint
    from snooze.http import InternalEndpoint, new_app, start_server

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")

    async def main() -> None:
        port = int(sys.argv[1])
        app = new_app()
        endpoint = InternalEndpoint(app, b"key-A", "receiver", lambda: 0)

        async def ping(env):
            return {"pong": True}

        endpoint.on("ping", ping)
        runner = await start_server(app, "127.0.0.1", port)
        hb = HeartbeatEndpoint(b"key-A", "receiver")
        hb.on("gm.heartbeat", lambda env, addr: print("HEARD", env.sender, flush=True))
        await hb.start("127.0.0.1", port)
        print("READY", flush=True)
        try:
            await asyncio.sleep(60)
        finally:
            hb.close()
            await runner.cleanup()

    asyncio.run(main())
    """
)


@pytest.fixture
def receiver(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = port_range(1)
    err = (tmp_path / "receiver.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)], stdout=subprocess.PIPE, stderr=err,
                            text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY", Path(err.name).read_text()
        yield port, proc, Path(err.name)
    finally:
        proc.kill()
        proc.wait(10)
        err.close()


def _wait_log(path: Path, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text()
        if needle in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in the receiver's log:\n{path.read_text()}")


async def test_http_key_mismatch_named_on_both_sides(receiver, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    port, _, log_path = receiver
    client = RpcClient(b"key-B", "sender")
    caplog.set_level(logging.WARNING, logger="snooze.rpc")
    try:
        for _ in range(3):
            with pytest.raises(RpcError) as info:
                await client.call(NetworkAddress("127.0.0.1", port), "ping", {})
            assert info.value.code == ErrorCode.BAD_HMAC
            assert info.value.status == 401
            assert str(info.value.message) == (
                f"peer 127.0.0.1:{port} refused our message: cluster key mismatch "
                "(check [cluster] key / SNOOZE_CLUSTER_KEY)"
            )
        # The right key still works against the same receiver: the refusal was the key's.
        good = RpcClient(b"key-A", "sender")
        try:
            assert await good.call(NetworkAddress("127.0.0.1", port), "ping", {}) == {"pong": True}
        finally:
            await good.close()
    finally:
        await client.close()
    sent = [r.getMessage() for r in caplog.records if "cluster key mismatch" in r.getMessage()]
    assert len(sent) == 1, sent  # three refusals, one line
    assert f"peer 127.0.0.1:{port} refused our message" in sent[0]
    text = _wait_log(log_path, "cluster key mismatch from 127.0.0.1")
    assert text.count("cluster key mismatch from") == 1, text


async def test_heartbeat_key_mismatch_logged_by_receiver(receiver) -> None:  # type: ignore[no-untyped-def]
    port, proc, log_path = receiver
    sender = HeartbeatEndpoint(b"key-B", "sender")
    await sender.start("127.0.0.1", 0)
    assert sender._transport is not None
    src = sender._transport.get_extra_info("sockname")[1]
    try:
        for _ in range(5):
            sender.send("gm.heartbeat", 0, {}, [NetworkAddress("127.0.0.1", port)])
            await asyncio.sleep(0.05)
        text = await asyncio.to_thread(_wait_log, log_path, f"cluster key mismatch from 127.0.0.1:{src}")
        assert text.count("cluster key mismatch from") == 1, text  # rate-limited
    finally:
        sender.close()
    # And with the right key the same receiver hears it: nothing else was wrong.
    right = HeartbeatEndpoint(b"key-A", "sender")
    await right.start("127.0.0.1", 0)
    try:
        right.send("gm.heartbeat", 0, {}, [NetworkAddress("127.0.0.1", port)])
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 10)
        assert line.strip() == "HEARD sender"
    finally:
        right.close()
