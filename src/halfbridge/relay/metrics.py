"""The relay's counters, and their Prometheus exposition on the management side (/metrics)."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from halfbridge.metrics import build_info, family, gauge, label
from halfbridge.quotad import MODES


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(counter: dict, key) -> None:
    counter[key] = counter.get(key, 0) + 1


@dataclass
class Metrics:
    requests: dict[int, int] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)
    # By flow mode (halfbridge.quotad.MODES): live, playback, download.
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))
    flows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))
    durations: dict[str, list[float]] = field(default_factory=lambda: {mode: [0.0, 0] for mode in MODES})
    handshakes_refused: dict[str, int] = field(default_factory=dict)
    # Connections the relay closed itself, by reason (halfbridge.relay.connections).
    connections_cut: dict[str, int] = field(default_factory=dict)

    def refused(self, kind: str) -> None:
        _count(self.refusals, kind)

    def answered(self, status: int) -> None:
        _count(self.requests, status)

    def handshake_refused(self, kind: str) -> None:
        _count(self.handshakes_refused, kind)

    def cut(self, reason: str) -> None:
        _count(self.connections_cut, reason)

    def ended(self, mode: str, seconds: float) -> None:
        self.durations[mode][0] += seconds
        self.durations[mode][1] += 1

    def lines(
        self,
        quota: dict | None,
        open_flows: int,
        connections: int,
        suspended: bool,
        checkable: bool,
        crl_expiries: dict[str, dt.datetime | None],
        convention_end: float | None = None,
        convention_ended: bool = False,
        healthy: bool = True,
        clock: dict | None = None,
        version: str | None = None,
    ) -> list[str]:
        """Every family; `quota` is the quota daemon's answer to `list`, None when it does not answer;
        `healthy` whether /healthz passes; `clock` the clock as /healthz shows it (None: not known); `version` the
        package's unless given."""
        up = quota is not None
        quota = quota or {}
        clock = clock or {}
        offset = clock.get("offset_seconds")
        return [
            *build_info("relay", version),
            *gauge(
                "halfbridge_relay_healthy",
                "1 exactly when /healthz passes (quota daemon answering, store present, revocation checkable).",
                int(healthy),
            ),
            *gauge(
                "halfbridge_clock_synchronised",
                "1 while halfbridge-clock's fresh state says the clock is synchronised (docs/time.md).",
                int(clock.get("synchronised") is True),
            ),
            *family(
                "halfbridge_clock_offset_seconds",
                "gauge",
                "The clock's offset from its time source as chronyd estimates it, positive when ahead (seconds).",
                [("", f"{offset:.9f}")] if _number(offset) else [],
            ),
            *gauge("halfbridge_quota_up", "1 when the quota daemon answers.", int(up)),
            *gauge("halfbridge_flows_in_use", "Quota slots in use (all relays).", quota.get("in_use", 0)),
            *gauge("halfbridge_flows_limit", "Simultaneous flows the convention allows.", quota.get("limit", 0)),
            *gauge("halfbridge_relay_open_flows", "Flows this relay is serving.", open_flows),
            *gauge("halfbridge_relay_connections", "TLS connections open on the PP's side.", connections),
            *gauge(
                "halfbridge_interconnect_suspended",
                "1 while the partner has suspended the interconnect (article 8).",
                int(suspended),
            ),
            *gauge(
                "halfbridge_relay_convention_ended",
                "1 once the convention is no longer in force: every request is refused (article 11).",
                int(convention_ended),
            ),
            *family(
                "halfbridge_convention_end_timestamp_seconds",
                "gauge",
                "When the convention ends (00:00, Paris time, of its first day out of force; Unix time).",
                [("", f"{convention_end:.0f}")] if convention_end is not None else [],
            ),
            *gauge(
                "halfbridge_revocation_checkable",
                "1 while every CA of the PP's PKI has a current CRL; 0: nobody gets in (article 6).",
                int(checkable),
            ),
            *family(
                "halfbridge_crl_next_update_timestamp_seconds",
                "gauge",
                "When each CRL in force expires (nextUpdate, Unix time): alert well before.",
                (
                    (f'{{issuer="{label(issuer)}"}}', f"{when.timestamp():.0f}")
                    for issuer, when in crl_expiries.items()
                    if when
                ),
            ),
            *family(
                "halfbridge_tls_handshakes_refused_total",
                "counter",
                "TLS handshakes refused, by reason (revoked, expired, unknown CA, old protocol...).",
                ((f'{{reason="{k}"}}', v) for k, v in sorted(self.handshakes_refused.items())),
            ),
            *family(
                "halfbridge_relay_connections_cut_total",
                "counter",
                "Connections the relay closed itself, by reason (per-peer limit, handshake, header or idle deadline, "
                "stalled reader).",
                ((f'{{reason="{k}"}}', v) for k, v in sorted(self.connections_cut.items())),
            ),
            *family(
                "halfbridge_relay_requests_total",
                "counter",
                "Requests answered, by status.",
                ((f'{{status="{k}"}}', v) for k, v in sorted(self.requests.items())),
            ),
            *family(
                "halfbridge_relay_refusals_total",
                "counter",
                "Requests refused, by reason.",
                ((f'{{reason="{k}"}}', v) for k, v in sorted(self.refusals.items())),
            ),
            *family(
                "halfbridge_relay_flows_total",
                "counter",
                "Flows started, by mode.",
                ((f'{{mode="{k}"}}', v) for k, v in self.flows.items()),
            ),
            *family(
                "halfbridge_relay_bytes_total",
                "counter",
                "Bytes sent, by mode.",
                ((f'{{mode="{k}"}}', v) for k, v in self.bytes.items()),
            ),
            *family(
                "halfbridge_relay_flow_seconds",
                "summary",
                "Durations of ended flows, by mode.",
                [
                    *((f'_sum{{mode="{k}"}}', f"{v[0]:.3f}") for k, v in self.durations.items()),
                    *((f'_count{{mode="{k}"}}', v[1]) for k, v in self.durations.items()),
                ],
            ),
        ]
