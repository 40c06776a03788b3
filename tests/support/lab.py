"""Small acts on the lab's hosts that several molecule tests need."""

from __future__ import annotations

import base64


def put(host, path: str, data: bytes, owner: str = "root", mode: str = "0644") -> None:
    """Write `data` beside `path` and rename it over (as the daemons replace their files)."""
    encoded = base64.b64encode(data).decode()
    host.check_output(
        f"echo {encoded} | base64 -d > {path}.new && chown {owner} {path}.new && chmod {mode} {path}.new"
        f" && mv {path}.new {path}"
    )
