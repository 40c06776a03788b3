"""A live flow goes on across a restart of its recorder (an upgrade of the recorder only), and ends when the
recorder does not come back."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from halfbridge.relay import Problem, sources


async def _serve(path, chunks: list[bytes]):
    """A recorder's tap: each connection gets `chunks`, then the tap closes (the recorder stops)."""

    async def one(_reader, writer):
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(one, path=str(path))


def test_a_live_flow_goes_on_when_the_recorder_comes_back(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "RESUME_POLL", 0.05)

    async def run():
        before = await _serve(tmp_path / "cam-1.sock", [b"before-restart"])
        got = []
        async with contextlib.aclosing(sources.live(tmp_path, "cam-1")) as flow:
            got.append(await anext(flow))
            before.close()
            await before.wait_closed()
            (tmp_path / "cam-1.sock").unlink()
            await asyncio.sleep(0.3)  # the recorder restarting: no tap at all for a while
            after = await _serve(tmp_path / "cam-1.sock", [b"after-restart"])
            got.append(await asyncio.wait_for(anext(flow), 5))
            after.close()
        return got

    assert asyncio.run(run()) == [b"before-restart", b"after-restart"]


def test_a_live_flow_ends_when_the_recorder_does_not_come_back(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "RESUME_POLL", 0.05)
    monkeypatch.setattr(sources, "LIVE_RESUME", 0.5)

    async def run():
        server = await _serve(tmp_path / "cam-1.sock", [b"only"])
        got = []
        async for chunk in sources.live(tmp_path, "cam-1"):
            got.append(chunk)
            server.close()  # the recorder stops for good
            await server.wait_closed()
        return got

    assert asyncio.run(asyncio.wait_for(run(), 10)) == [b"only"]


def test_a_live_flow_ends_when_the_recorder_is_back_but_its_camera_is_not(tmp_path, monkeypatch):
    """The recorder's process runs (its tap answers) but the camera sends nothing: the flow ends at the deadline,
    not after the silence of a running flow."""
    monkeypatch.setattr(sources, "RESUME_POLL", 0.05)
    monkeypatch.setattr(sources, "LIVE_RESUME", 1.0)
    quiet = asyncio.Event()

    async def one(_reader, writer):
        if not quiet.is_set():
            quiet.set()
            writer.write(b"before the camera dropped")
            await writer.drain()
            writer.close()
        else:
            await asyncio.sleep(60)  # connected, silent

    async def run():
        server = await asyncio.start_unix_server(one, path=str(tmp_path / "cam-1.sock"))
        got = [chunk async for chunk in sources.live(tmp_path, "cam-1")]
        server.close()
        return got

    started = time.monotonic()
    assert asyncio.run(asyncio.wait_for(run(), 10)) == [b"before the camera dropped"]
    assert time.monotonic() - started < 5


def test_a_tap_that_closes_before_any_byte_is_a_502(tmp_path):
    async def run():
        server = await _serve(tmp_path / "cam-1.sock", [])
        try:
            return [chunk async for chunk in sources.live(tmp_path, "cam-1")]
        finally:
            server.close()

    with pytest.raises(Problem) as refused:
        asyncio.run(run())
    assert refused.value.status == 502
