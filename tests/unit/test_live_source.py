"""A live flow goes on across a restart of its recorder (an upgrade of the recorder only), and ends when the
recorder does not come back."""

from __future__ import annotations

import asyncio
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


async def _watch(tmp_path, got: list[bytes]) -> None:
    """A viewer: every chunk of camera cam-1's live flow, as it comes, until the flow ends."""
    async for chunk in sources.live(tmp_path, "cam-1"):
        got.append(chunk)


async def _restart(path, before, after_chunks: list[bytes] | None, down: float = 0.3):
    """The recorder restarts: its tap goes away for `down` seconds, and a new one listens (sending `after_chunks`
    to each connection, or closing each at once when None: nothing to stream yet)."""
    before.close()
    await before.wait_closed()
    path.unlink()
    await asyncio.sleep(down)
    if after_chunks is None:

        async def nothing(_reader, writer):
            writer.close()

        return await asyncio.start_unix_server(nothing, path=str(path))
    return await _serve(path, after_chunks)


def test_a_live_flow_goes_on_when_the_recorder_comes_back(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "RESUME_POLL", 0.05)
    path = tmp_path / "cam-1.sock"

    async def run():
        got: list[bytes] = []
        before = await _serve(path, [b"before-restart"])
        viewer = asyncio.create_task(_watch(tmp_path, got))
        await asyncio.sleep(0.2)  # the viewer has the first bytes and waits for more
        after = await _restart(path, before, [b"after-restart"])
        await asyncio.sleep(0.5)
        assert not viewer.done(), "the flow ended at the recorder's restart"
        viewer.cancel()
        after.close()
        return got

    assert asyncio.run(asyncio.wait_for(run(), 10))[:2] == [b"before-restart", b"after-restart"]


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


def test_a_live_flow_ends_with_its_cameras_run_when_the_recorder_stays_up(tmp_path, monkeypatch):
    """The recorder's tap ends the flow and goes on answering (the camera dropped, the recorder waits for it): the
    flow ends within the grace, and a tap that would serve again is not taken for a restart."""
    monkeypatch.setattr(sources, "RESUME_POLL", 0.05)
    monkeypatch.setattr(sources, "RESTART_GRACE", 0.5)

    async def run():
        server = await _serve(tmp_path / "cam-1.sock", [b"the camera's run"])
        got = [chunk async for chunk in sources.live(tmp_path, "cam-1")]
        server.close()
        return got

    started = time.monotonic()
    assert asyncio.run(asyncio.wait_for(run(), 10)) == [b"the camera's run"]
    assert time.monotonic() - started < 3


def test_a_recorder_back_without_its_camera_ends_the_flow_at_the_deadline(tmp_path, monkeypatch):
    """The recorder restarts and comes back, but its camera sends nothing (its tap accepts and closes at once):
    the flow ends at the resume's deadline, not later."""
    monkeypatch.setattr(sources, "RESUME_POLL", 0.05)
    monkeypatch.setattr(sources, "LIVE_RESUME", 1.0)
    path = tmp_path / "cam-1.sock"

    async def run():
        got: list[bytes] = []
        before = await _serve(path, [b"before the restart"])
        viewer = asyncio.create_task(_watch(tmp_path, got))
        await asyncio.sleep(0.2)
        after = await _restart(path, before, None)
        await asyncio.wait_for(viewer, 5)
        after.close()
        return got

    started = time.monotonic()
    assert asyncio.run(asyncio.wait_for(run(), 10)) == [b"before the restart"]
    assert time.monotonic() - started < 3


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
