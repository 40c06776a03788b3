"""Who is asking, and whether they may (article 6).

A client is the certificate of its TLS connection, read once per connection. It gets in
when the certificate is made for client authentication, carries one of the PKI's policies
(when the configuration names them), names an agent the PP designated, is valid now and
not revoked, nor any CA above it, against the CRLs in force (asked on every request: a
resumed TLS session skipped the handshake's checks, and a CRL can arrive mid-connection),
and while revocation can be checked at all.
"""

from __future__ import annotations

import weakref

from aiohttp import web

from halfbridge.relay.problems import Problem
from halfbridge.relay.trust import TrustKeeper
from halfbridge.tls import describe


class Gate:
    def __init__(self, designated: list[str], policies: list[str], keeper: TrustKeeper, partner: str) -> None:
        self.designated = frozenset(designated)
        self.policies = list(policies)
        self.keeper = keeper
        self.partner = partner  # who runs the gateway, as the refusals name it
        # Each TLS connection's certificate, read once; a connection in here is in the history already.
        self._peers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def who(self, request: web.BaseRequest) -> tuple[dict, bool]:
        """The connection's certificate (empty without one), and whether this is the connection's first request."""
        connection = request.transport.get_extra_info("ssl_object") if request.transport else None
        if connection is None:
            return {}, False
        if connection in self._peers:
            return self._peers[connection], False
        der = connection.getpeercert(binary_form=True)
        who = self._peers[connection] = describe(der) if der else {}
        return who, True

    def forget(self, request: web.BaseRequest) -> None:
        """The connection's next request is its first again (its authentication could not be recorded)."""
        connection = request.transport.get_extra_info("ssl_object") if request.transport else None
        if connection is not None:
            self._peers.pop(connection, None)

    def refusal(self, who: dict) -> Problem | None:
        """Why this certificate may not come in, or None."""
        if not who:
            return Problem(
                403,
                "client-certificate-required",
                "this service admits only designated agents: present your client certificate",
            )
        if not who["client_auth"]:
            return Problem(
                403,
                "not-a-client-certificate",
                f"the certificate of {who['agent']} is not made for client authentication (no clientAuth usage)",
            )
        if self.policies and not set(self.policies) & set(who["policies"]):
            return Problem(
                403,
                "certificate-policy",
                f"the certificate of {who['agent']} carries none of the PKI's policies ({', '.join(self.policies)})",
            )
        if who["agent"] not in self.designated:
            return Problem(
                403, "not-designated", f"{who['agent']} is not among the agents the PP designated for this service"
            )
        why = self.keeper.refusal(who)
        if why is not None:
            kind = "certificate-revoked" if "revoked" in why else "certificate-invalid"
            return Problem(403, kind, why)
        if self.keeper.problems:
            return Problem(
                403,
                "revocation-unknown",
                f"{self.partner}'s gateway cannot check certificates for revocation right now, so it lets nobody in: "
                + "; ".join(self.keeper.problems),
            )
        return None
