"""SYN's partner half-gateway: the daemons behind the video-protection interconnect."""

__version__ = "0.1.0"
