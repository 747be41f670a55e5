"""swergio's wire format, which server and clients must share: a JSON body behind a fixed-size
length header."""
from __future__ import annotations

FORMAT = "utf-8"  # message encoding
HEADER_LENGTH = 10  # bytes of the length header in front of every message
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a longer announced body is a broken header, not a message
TOKEN = "TOKEN"  # in a connection's first message: SWARM_TOKEN, for a server that has one


def frame(body: bytes) -> bytes:
    """The body's length, left-aligned in HEADER_LENGTH bytes, then the body."""
    return f"{len(body):<{HEADER_LENGTH}}".encode(FORMAT) + body


def body_length(header: bytes) -> int | None:
    """The body length a frame header announces; None for a header that is not a sane length."""
    try:
        length = int(header.decode(FORMAT).strip())
    except (UnicodeDecodeError, ValueError):
        return None
    return length if 0 <= length <= MAX_MESSAGE_BYTES else None
