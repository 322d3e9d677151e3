"""Pure payload encoders: readings in, bytes out. No I/O, so transports stay swappable."""

from gateway.encoders.line_protocol import LineProtocolEncoder, encode_line
from gateway.encoders.uns_json import (
    Message,
    PayloadEncoder,
    UnsJsonEncoder,
    format_ts,
    sanitize_level,
)

__all__ = [
    "LineProtocolEncoder",
    "Message",
    "PayloadEncoder",
    "UnsJsonEncoder",
    "encode_line",
    "format_ts",
    "sanitize_level",
]
