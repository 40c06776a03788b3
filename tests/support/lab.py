"""Small acts on the lab's hosts that several molecule tests need."""

from __future__ import annotations

import base64
import json
import shlex
import textwrap


def put(host, path: str, data: bytes, owner: str = "root", mode: str = "0644") -> None:
    """Write `data` beside `path` and rename it over (as the daemons replace their files)."""
    encoded = base64.b64encode(data).decode()
    host.check_output(
        f"echo {encoded} | base64 -d > {path}.new && chown {owner} {path}.new && chmod {mode} {path}.new"
        f" && mv {path}.new {path}"
    )


# Run on a lab host: TCP connections to HOST on PORTS at once; prints {port: outcome}.
# "timeout" is silence (a drop); "refused" would be a reject or a closed port answering.
PROBE = textwrap.dedent(
    """
    import asyncio, errno, json, sys
    host, ports, wait = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], float(sys.argv[3])
    async def one(port):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait)
            writer.close()
            return "open"
        except asyncio.TimeoutError:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as exc:
            return errno.errorcode.get(exc.errno, str(exc))
    async def main():
        return dict(zip(ports, await asyncio.gather(*(one(p) for p in ports))))
    print(json.dumps(asyncio.run(main())))
    """
)


def probe(host, address: str, ports, wait: float = 3.0) -> dict[int, str]:
    """What `host` meets on each of `ports` of `address`: open, refused, timeout (a drop) or an errno."""
    command = shlex.join(["python3", "-c", PROBE, address, ",".join(map(str, ports)), str(wait)])
    return {int(k): v for k, v in json.loads(host.check_output(command)).items()}


# Run on a gateway: print the body of a URL, an error's body too (a failing /healthz answers 503 with its problems).
READ = (
    "python3 -c 'import sys, urllib.request, urllib.error\n"
    "try: print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n"
    "except urllib.error.HTTPError as e: print(e.read().decode())'"
)


def relay_health(gw) -> dict:
    """The relay's /healthz, asked on the gateway at its management address (relay.json says where)."""
    config = json.loads(gw.check_output("cat /etc/halfbridge/relay.json"))
    return json.loads(gw.check_output(f"{READ} http://{config['management_host']}:{config['management_port']}/healthz"))
