"""A flow's life: admission by the quota daemon (article 4), renewal while the client reads,
and its end, each recorded (`flow.start`, `flow.end`). A flow is live, playback, or the
download of a request's extraction package: each holds one slot of the quota.

A flow holds a lease of the quota daemon from before its first byte to after its last;
the lease is renewed every `renew_seconds`, and a flow whose lease cannot be renewed
ends. Flows end too when the convention ends, when the interconnect is suspended, when
revocation cannot be checked, when their agent's certificate is revoked (`cut`), and when
the client reads nothing for `stall_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from halfbridge.audit import AuditError
from halfbridge.fmp4 import Remuxer
from halfbridge.quotad import AsyncQuotaClient, QuotaError
from halfbridge.relay.metrics import Metrics
from halfbridge.relay.problems import TS_TYPE, Problem, unrecorded
from halfbridge.relay.sources import as_mp4

log = logging.getLogger("halfbridge.relay")

Audit = Callable[..., Awaitable[None]]  # (event, request, **fields): raises AuditError
# A flow's bytes, or what makes them from the flow's lease once admitted (a peer's node endpoint is asked with it).
Source = AsyncIterator[bytes] | Callable[[str], AsyncIterator[bytes]]


class Flows:
    def __init__(
        self,
        quota: AsyncQuotaClient,
        audit: Audit,
        metrics: Metrics,
        renew_seconds: float,
        stall_seconds: float,
        partner: str,
    ) -> None:
        self.quota, self.audit, self.metrics = quota, audit, metrics
        self.renew_seconds, self.stall_seconds = renew_seconds, stall_seconds
        self.partner = partner  # who runs the gateway, as the refusals name it
        self.open: dict[str, dict] = {}  # this relay's flows, by lease
        self._ending: set[asyncio.Task] = set()  # flows whose end is being recorded (held: not collected)

    def cut(self, flows, reason: str) -> None:
        """End these flows now (their task is cancelled); `reason` goes into their `flow.end`."""
        for flow in list(flows):
            if "cut" not in flow:
                flow["cut"] = reason
                flow["task"].cancel()
                log.warning("%s flow of %s on %s: %s", flow["mode"], flow["agent"], flow["camera"], reason)

    async def run(
        self,
        request: web.Request,
        camera_id: str,
        mode: str,
        fields: dict,
        source: Source,
        headers: dict | None = None,
        content_type: str | None = None,
        length: int | None = None,
    ) -> web.StreamResponse:
        """Admit the flow, stream `source` to the client until either ends, release and record its end.

        The body is MPEG-TS, or fragmented MP4 when `fields` say `format` mp4, unless `content_type` says
        what else it is; `length`, when known, is its Content-Length (a download: the client can tell a
        body cut short). `source` may be a function of the flow's lease that makes its bytes."""
        who = request["who"]
        lease = await self._admit(who["agent"], camera_id, mode, source)
        if callable(source):  # an async generator is not: this makes one, which runs nothing until read
            source = source(lease)
        started, sent = time.monotonic(), 0
        renewer = asyncio.create_task(self._renew(lease))
        self.open[lease] = {
            "camera": camera_id,
            "mode": mode,
            "agent": who["agent"],
            "who": who,
            "task": asyncio.current_task(),
        }
        ended = "the client went away"
        remuxer = Remuxer() if fields.get("format") == "mp4" else None
        chunks = source if remuxer is None else as_mp4(source, remuxer, camera_id)
        response = None
        try:
            try:
                await self.audit("flow.start", request, camera=camera_id, mode=mode, lease=lease, **fields)
            except AuditError as exc:
                raise unrecorded(exc, self.partner) from None
            self.metrics.flows[mode] += 1
            async for chunk in chunks:
                if response is None:
                    kind = content_type or (TS_TYPE if remuxer is None else remuxer.content_type)
                    response = web.StreamResponse(
                        headers={"Content-Type": kind, "Cache-Control": "no-store", **(headers or {})}
                    )
                    if length is not None:
                        response.content_length = length
                    await response.prepare(request)
                if renewer.done():
                    ended = renewer.result()
                    break
                try:
                    async with asyncio.timeout(self.stall_seconds):
                        await response.write(chunk)
                except TimeoutError:
                    ended = self._stalled(request)
                    break
                except ConnectionError:
                    break  # the client went away: the flow ends here
                sent += len(chunk)
                self.metrics.bytes[mode] += len(chunk)
            else:
                ended = "the stream ended"
            if response is None:
                raise Problem(
                    502, "camera-unavailable", f"camera {camera_id} sent nothing: it may be down (see /v1/cameras)"
                )
            try:
                async with asyncio.timeout(self.stall_seconds):
                    await response.write_eof()
            except TimeoutError:
                ended = self._stalled(request)
            except ConnectionError:
                pass
            return response
        except Problem as problem:
            ended = problem.detail
            raise
        finally:
            renewer.cancel()
            ended = self.open.pop(lease, {}).get("cut", ended)
            duration = time.monotonic() - started
            self.metrics.ended(mode, duration)
            # In a task of its own, shielded: a handler cancelled now (its client gone, the server
            # stopping) still closes the sources, records the end and frees the slot, never leaks it.
            end = asyncio.ensure_future(
                self._end(request, (chunks, source), lease, camera_id, mode, fields, sent, duration, ended)
            )
            self._ending.add(end)
            end.add_done_callback(self._ending.discard)
            await asyncio.shield(end)

    async def _end(
        self,
        request: web.Request,
        sources: tuple,
        lease: str,
        camera_id: str,
        mode: str,
        fields: dict,
        sent: int,
        duration: float,
        ended: str,
    ) -> None:
        """Close the flow's sources, record its end, then free its slot (in that order: the history never
        shows more flows than the quota)."""
        for source in sources:
            with contextlib.suppress(Exception):
                await source.aclose()
        try:
            await self.audit(
                "flow.end",
                request,
                camera=camera_id,
                mode=mode,
                lease=lease,
                bytes=sent,
                seconds=round(duration, 3),
                ended=ended,
                **fields,
            )
        except AuditError as exc:
            log.error("%s", exc)
        with contextlib.suppress(QuotaError):
            await self.quota.release(lease)
        agent = request["who"]["agent"]
        log.info("%s flow of %s on %s ended after %.1f s, %d bytes: %s", mode, agent, camera_id, duration, sent, ended)

    def _stalled(self, request: web.Request) -> str:
        """The client reads nothing: its connection is dropped, and the flow ends."""
        self.metrics.cut("stalled-reader")
        if request.transport is not None:
            request.transport.abort()
        return f"the client read nothing for {self.stall_seconds:g} s"

    async def _admit(self, agent: str, camera_id: str, mode: str, source: Source) -> str:
        """A lease of the quota daemon, or the refusal (the source, never started, is closed)."""
        try:
            granted = await self.quota.acquire(agent, camera_id, mode)
        except QuotaError as exc:
            await _close(source)
            raise Problem(503, "quota-daemon-unreachable", str(exc)) from None
        if granted.get("ok"):
            return granted["lease"]
        await _close(source)
        if granted.get("error") == "quota_full":
            limit = granted.get("limit")
            raise Problem(429, "quota-full", granted.get("message", ""), in_use=granted.get("in_use"), limit=limit)
        if granted.get("error") == "starting":
            retry = granted.get("retry_after")
            raise Problem(503, "quota-starting", granted.get("message", ""), retry_after=retry)
        if granted.get("error") == "cluster_unavailable":  # the cluster's quota (etcd) has no quorum from here
            raise Problem(503, "quota-unavailable", granted.get("message", ""), limit=granted.get("limit"))
        raise Problem(503, "quota-refused", f"the quota daemon refused the flow: {granted.get('message')}")

    async def _renew(self, lease: str) -> str:
        """Renew the lease until cancelled; returns why the flow must stop if it cannot."""
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                answer = await self.quota.renew(lease)
            except QuotaError as exc:
                log.error("%s", exc)
                return "the quota daemon could not renew the flow's lease"
            if not answer.get("ok"):
                return f"the flow's lease was lost ({answer.get('message')})"


async def _close(source: Source) -> None:
    if not callable(source):
        await source.aclose()
