"""The overlay address a Yggdrasil public key owns (pure)."""

from __future__ import annotations

import ipaddress


def address_for_key(key_hex: str) -> str | None:
    """The Yggdrasil (0.4 and 0.5) IPv6 address of an ed25519 public key (yggdrasil-go
    src/address/address.go AddrForKey): 0x02, the count of leading ones of the inverted key, then the bits after
    the first zero."""
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        return None
    if len(key) != 32:
        return None
    inverted = bytes(b ^ 0xFF for b in key)
    bits = "".join(f"{b:08b}" for b in inverted)
    ones = len(bits) - len(bits.lstrip("1"))
    rest = bits[ones + 1 :]
    tail = bytes(int(rest[i : i + 8], 2) for i in range(0, len(rest) - len(rest) % 8, 8))
    raw = (bytes([0x02, ones]) + tail + bytes(16))[:16]  # a fixed 16-byte array in Go: short tails end in zeros
    return str(ipaddress.IPv6Address(raw))
