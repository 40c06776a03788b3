"""What etcd's JSON gateway is sent and answers, shared by the asynchronous client (`halfbridge.etcd`, the quota
daemon's) and the synchronous one (`halfbridge.etcd_sync`, the recorders'): the requests' pieces (keys and values
in base64, 64-bit integers as strings), the answers checked and decoded, etcd's refusals, the client's TLS, and
the sentence that says why no endpoint answered. Nothing here does any I/O, nor imports an HTTP client.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

MAX_ANSWER = 1 << 20  # bytes read of one answer; a range of the quota's slots weighs a few KiB
HEADERS = {
    "Content-Type": "application/json",
    # A member without a leader refuses at once ("etcdserver: no leader") instead of waiting for one.
    "Grpc-Metadata-hasleader": "true",
}
# gRPC codes that another member would answer the same way: the request itself is refused, so it is not
# tried again elsewhere (3 invalid argument, 5 not found, 6 already exists, 7 permission denied, 9 failed
# precondition, 11 out of range, 16 unauthenticated). Any other (14 unavailable, "no leader"; 4 deadline
# exceeded; 2 unknown, "context deadline exceeded"; 8 too many requests) is a member that cannot serve.
DEFINITIVE = frozenset((3, 5, 6, 7, 9, 11, 16))
NOT_FOUND = 5


class EtcdError(RuntimeError):
    """etcd cannot be asked, or refused; `code` is etcd's gRPC code when it refused (5: not found).

    The message names each endpoint tried and why it failed (for a log); `brief` says it in a few words,
    without addresses (for a sentence that leaves the gateway)."""

    def __init__(self, message: str, code: int | None = None, brief: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.brief = brief or message


@dataclass
class EtcdSettings:
    endpoints: list[str]
    ca_file: Path
    cert_file: Path
    key_file: Path
    timeout: float = 2.0


def tls_context(settings: EtcdSettings) -> ssl.SSLContext:
    """The client's TLS: etcd's members checked against `ca_file`, this client known by its certificate."""
    try:
        context = ssl.create_default_context(cafile=str(settings.ca_file))
        context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise EtcdError(
            f"cannot use the CA {settings.ca_file}, the certificate {settings.cert_file} "
            f"and the key {settings.key_file} to reach etcd: {exc}"
        ) from None
    return context


# -- the pieces of a request ------------------------------------------------------------


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def prefix_end(prefix: bytes | str) -> bytes:
    """The end of the range of the keys that start with `prefix` (etcd's `range_end` for a prefix)."""
    key = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while key and key[-1] == 0xFF:
        key.pop()
    if not key:
        return b"\0"  # every key
    key[-1] += 1
    return bytes(key)


def absent(key: bytes | str) -> dict:
    """A compare: `key` does not exist (it was never created, or was deleted since)."""
    return {"target": "CREATE", "key": b64(key), "result": "EQUAL", "create_revision": "0"}


def put(key: bytes | str, value: bytes | str, lease: int = 0) -> dict:
    """A request of a transaction: put `value` at `key`, bound to `lease` (0: none)."""
    request = {"key": b64(key), "value": b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def get(key: bytes | str, prefix: bool = False, count_only: bool = False) -> dict:
    """A request of a transaction: read `key` (or every key under it), or only count them."""
    return {"request_range": range_request(key, prefix, keys_only=False, count_only=count_only)}


def range_request(key: bytes | str, prefix: bool, keys_only: bool, count_only: bool = False) -> dict:
    """The body of a range (`/v3/kv/range`, or a transaction's `request_range`)."""
    request = {"key": b64(key)}
    if prefix:
        request["range_end"] = b64(prefix_end(key))
    if keys_only:
        request["keys_only"] = True
    if count_only:
        request["count_only"] = True
    return request


# -- what etcd answers, checked -----------------------------------------------------------


class NotEtcd(ValueError):
    """An answer that is not what etcd sends for this call."""


def integer(value: object, what: str) -> int:
    """etcd's 64-bit integers come as strings of digits (and as nothing at all when zero)."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit() and len(value) <= 20:
        return int(value)
    raise NotEtcd(f"{what} is {_shown(value)}, not a whole number")


def decoded_bytes(value: object, what: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise NotEtcd(f"{what} is {_shown(value)}, not base64")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise NotEtcd(f"{what} is not base64") from None


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def kvs(answer: dict) -> list[dict]:
    """The keys of a range's answer (or a transaction's `response_range`), decoded: key and value as bytes,
    lease, create_revision, mod_revision and version as numbers; `count` is the number of keys it matched."""
    found = answer.get("kvs", [])
    if not isinstance(found, list):
        raise NotEtcd("kvs is not a list")
    decoded = []
    for n, kv in enumerate(found):
        if not isinstance(kv, dict):
            raise NotEtcd(f"key {n} is not an object")
        decoded.append(
            {
                "key": decoded_bytes(kv.get("key"), "a key"),
                "value": decoded_bytes(kv.get("value"), "a value"),
                **{f: integer(kv.get(f), f) for f in ("lease", "create_revision", "mod_revision", "version")},
            }
        )
    return decoded


def count(answer: dict) -> int:
    """The number of keys a range matched (also when only counted)."""
    return integer(answer.get("count"), "count")


def transaction(answer: dict) -> tuple[bool, list[dict]]:
    """A transaction's answer: whether its compares held, and the answers of the requests that ran, a range's as
    {"kvs": `kvs`, "count"}, any other's as etcd gives it."""
    succeeded, responses = answer.get("succeeded", False), answer.get("responses", [])
    if not isinstance(succeeded, bool) or not isinstance(responses, list):
        raise NotEtcd("succeeded or responses is not what a transaction answers")
    inner = []
    for response in responses:
        if not isinstance(response, dict) or len(response) != 1:
            raise NotEtcd("a response is not one response_* object")
        ((kind, value),) = response.items()
        if not isinstance(value, dict):
            raise NotEtcd("a response is not an object")
        inner.append({"kvs": kvs(value), "count": count(value)} if kind == "response_range" else value)
    return succeeded, inner


def answer_of(raw: bytes, status: int, stream: bool) -> dict:
    """The object etcd answered (a stream's first `result`), read from the body `raw` of an HTTP `status`:
    EtcdError when etcd refused, NotEtcd when it is not etcd's answer."""
    text = raw.split(b"\n", 1)[0] if stream else raw
    try:
        answer = json.loads(text)
    except RecursionError:
        raise NotEtcd("JSON nested too deeply") from None
    except ValueError:
        raise NotEtcd(f"HTTP {status}, and a body that is not JSON") from None
    if not isinstance(answer, dict):
        raise NotEtcd(f"HTTP {status}, and JSON that is not an object")
    if "error" in answer:
        raise refusal(answer)
    if stream:
        answer = answer.get("result")
        if not isinstance(answer, dict):
            raise NotEtcd("a stream's line without its result")
    if status != 200:
        raise NotEtcd(f"HTTP {status} without etcd's error")
    return answer


def refusal(answer: dict) -> EtcdError:
    """etcd's error, as the gateway words it: {"error", "code", "message"}, or in a stream
    {"error": {"grpc_code", "http_code", "message"}}."""
    error = answer["error"]
    if isinstance(error, dict):
        code, message = error.get("grpc_code"), error.get("message")
    else:
        code, message = answer.get("code"), answer.get("message", error)
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    text = message if isinstance(message, str) else "an error without a message"
    return EtcdError("".join(c if c.isprintable() else "?" for c in text[:200]), code)


def unanswered(
    path: str, failed: list[str], timeout: float, endpoints: int, leaderless: bool, garbled: bool, silent: int
) -> EtcdError:
    """The error of a call that no endpoint answered: `failed` says each endpoint and why, the brief the cause."""
    if leaderless:
        brief = "its etcd members have no leader: the cluster has lost its quorum"
    elif garbled:
        brief = "an etcd endpoint answered something that is not etcd's"
    elif silent == endpoints:
        brief = f"none of its {endpoints} etcd endpoint(s) answered within {timeout:g} s"
    else:
        brief = f"none of its {endpoints} etcd endpoint(s) could be reached"
    return EtcdError(f"no etcd endpoint answered {path} within {timeout:g} s ({'; '.join(failed)})", brief=brief)


def not_etcd(endpoint: str, call: str, exc: NotEtcd) -> EtcdError:
    return EtcdError(
        f"the answer of etcd at {endpoint} to {call} is not etcd's ({exc})",
        brief="an answer of etcd that cannot be read",
    )


# What the settings of an etcd client may name (the quota daemon's and the recorders' configurations).
GATEWAY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
KEY_PREFIX = re.compile(r"/[\x21-\x7e]{0,200}")


# The keys every client section names (the quota daemon's `etcd`, a recorder's `cluster`).
SECTION_REQUIRED = ("endpoints", "ca_file", "cert_file", "key_file", "gateway")


def shown(value: object) -> str:
    """A value read from a file, shown in a sentence: scalars cut short, containers by their kind."""
    if value is None or isinstance(value, str | int | float | bool):
        text = repr(value)
        return text if len(text) <= 40 else f"{text[:37]}..."
    return f"a {type(value).__name__}"


def client_section(raw: object, fields, optional: str, reader: str, default_prefix: str) -> dict:
    """What a client section shares, checked: endpoints, ca_file, cert_file, key_file, gateway and prefix (as
    the dataclass's arguments), no key outside `fields`; each problem a ValueError with a sentence that names
    `reader` (who must read the files) and the `optional` keys."""
    if not isinstance(raw, dict):
        raise ValueError(f"must be an object of {', '.join(SECTION_REQUIRED)} (and {optional})")
    missing = [key for key in SECTION_REQUIRED if raw.get(key) in (None, "", [])]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"has unknown keys {', '.join(unknown)}")
    endpoints = raw["endpoints"]
    if not isinstance(endpoints, list) or not 1 <= len(endpoints) <= 9:
        raise ValueError("endpoints must be a list of the etcd members' client URLs (1 to 9)")
    for endpoint in endpoints:
        if not https_url(endpoint):
            said = f"the endpoint {shown(endpoint)} is not https://HOST:PORT"
            raise ValueError(f"{said}: the members are reached over TLS only")
    checked: dict = {"endpoints": list(endpoints)}
    for key in ("ca_file", "cert_file", "key_file"):
        value = raw[key]
        if not isinstance(value, str) or not Path(value).is_file() or not os.access(value, os.R_OK):
            raise ValueError(f"{key} {shown(value)} is not a file {reader} can read")
        checked[key] = Path(value)
    gateway = raw["gateway"]
    if not isinstance(gateway, str) or not GATEWAY_NAME.fullmatch(gateway):
        raise ValueError(
            f"gateway {shown(gateway)} must be this gateway's name: letters, digits, '.', '_' or '-', at most 63"
        )
    prefix = raw.get("prefix", default_prefix)
    if not isinstance(prefix, str) or not KEY_PREFIX.fullmatch(prefix) or prefix.endswith("/"):
        raise ValueError(f"prefix {shown(prefix)} must be a key such as {default_prefix} (no space, no final /)")
    return {**checked, "gateway": gateway, "prefix": prefix}


def https_url(value: object) -> bool:
    """An etcd member's client URL: https://HOST[:PORT], nothing else."""
    if not isinstance(value, str) or len(value) > 256:
        return False
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 (a port that is not a number raises)
    except ValueError:
        return False
    plain = not (url.query or url.fragment or url.username or url.password) and url.path in ("", "/")
    return url.scheme == "https" and bool(url.hostname) and plain


class Checked:
    """What both clients do with an answer that is not etcd's: an EtcdError naming the endpoint and the call.
    Needs `endpoints` and `_first` (the endpoint that answered)."""

    endpoints: list[str]
    _first: int

    def _checked(self, read, answer: dict, call: str):
        try:
            return read(answer)
        except NotEtcd as exc:
            raise self._not_etcd(call, exc) from None

    def _not_etcd(self, call: str, exc: NotEtcd) -> EtcdError:
        return not_etcd(self.endpoints[self._first], call, exc)
