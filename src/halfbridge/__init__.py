"""The partner's half-gateway: the daemons behind the video-protection interconnect with the PP's PVPP."""

__version__ = "0.2.0"
