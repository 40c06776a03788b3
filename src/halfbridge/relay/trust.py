"""The PP's smartcard PKI as the relay holds it (article 6): anchors, CRLs, the TLS context.

`TrustKeeper.follow()` runs every second: when the anchors or a CRL file change it reads
them again and builds the TLS context of the next connections. A trust problem (anchors
that cannot be read, a CA without CRL, a CRL expired, without nextUpdate or badly signed)
refuses everyone, and stays until a reload succeeds without it: the relay never goes back
to the trust it had before the problem.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from pathlib import Path

from halfbridge.tls import Trust, server_context

log = logging.getLogger("halfbridge.relay")


def utc(moment: dt.datetime | None) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}" if moment else "no nextUpdate"


class TrustKeeper:
    def __init__(self, certificate: Path, key: Path, anchors: Path, crl_dir: Path | None, warn_hours: float) -> None:
        self.certificate, self.key, self.anchors, self.crl_dir = certificate, key, anchors, crl_dir
        self.warn_hours = warn_hours
        self.trust: Trust | None = None  # the anchors and CRLs in force
        self.problems: list[str] = []  # why revocation cannot be checked: then nobody gets in
        self.load_error: str | None = None  # the last reload failed: this, until one succeeds
        self._stamp: tuple | None = None
        self._context: ssl.SSLContext | None = None
        self._warned: set[str] = set()

    def context(self) -> ssl.SSLContext:
        """The TLS context new connections take."""
        if self._context is None:
            self.load()
        return self._context

    def load(self) -> None:
        """Read the anchors and CRLs and build the next connections' context; raises OSError or ValueError
        at the first load (the relay cannot start without its certificate), keeps a problem after."""
        stamp = Trust(self.anchors, self.crl_dir).stamp()
        try:
            trust = Trust.load(self.anchors, self.crl_dir)
            context = server_context(self.certificate, self.key, trust)
        except (OSError, ValueError, ssl.SSLError) as exc:
            if self._context is None:
                raise
            self._stamp = stamp
            self.load_error = f"the trust anchors or the relay's certificate cannot be read ({exc})"
            log.error("relay: nobody gets in: %s", self.load_error)
            self.check()
            return
        first = self.trust is None
        self.trust, self._context, self._stamp, self.load_error = trust, context, stamp, None
        if self.crl_dir is None:
            log.warning("relay: no CRL directory: client certificates are not checked for revocation")
        else:
            expiries = ", ".join(f"{issuer} until {utc(when)}" for issuer, when in trust.expiries().items())
            log.info("relay: %s CRLs: %s", "using" if first else "reloaded", expiries or "none")
        self.check()

    def follow(self) -> None:
        """Reload when a file changed, else check the CRLs in force against the clock."""
        if Trust(self.anchors, self.crl_dir).stamp() != self._stamp:
            self.load()
        else:
            self.check()

    def check(self, now: dt.datetime | None = None) -> list[str]:
        """The problems now (logged when they appear and when they clear); warns of a CRL about to expire."""
        now = now or dt.datetime.now(dt.UTC)
        problems = ([self.load_error] if self.load_error else []) + (self.trust.problems(now) if self.trust else [])
        for problem in problems:
            if problem not in self.problems:
                log.error("relay: revocation cannot be checked, nobody gets in: %s", problem)
        if self.problems and not problems:
            log.info("relay: every CRL is current again: designated agents get in")
        self.problems = problems
        if not problems:
            soon = now + dt.timedelta(hours=self.warn_hours)
            for issuer, expiry in self.expiries().items():
                key = f"{issuer}@{expiry}"
                if expiry is not None and expiry <= soon and key not in self._warned:
                    self._warned.add(key)
                    log.warning(
                        "relay: the CRL of %s expires at %s (in %.1f h): if halfbridge-crl cannot fetch a new one "
                        "by then, nobody gets in",
                        issuer,
                        utc(expiry),
                        (expiry - now).total_seconds() / 3600,
                    )
        return problems

    def expiries(self) -> dict[str, dt.datetime | None]:
        return self.trust.expiries() if self.trust else {}

    def refusal(self, who: dict) -> str | None:
        """Why this certificate, or a CA above it, may not be used now (expired, revoked), or None."""
        return self.trust.refusal(who) if self.trust else None
