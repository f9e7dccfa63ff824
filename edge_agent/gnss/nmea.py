"""Strict NMEA 0183 framing and parsing.

Bytes from a receiver are cut into lines, and each line is searched for one sentence: from the last `$` before
the last `*` to the two hex digits after that `*`. Whatever surrounds it (binary UBX/SiRF frames, a `$$` prefix,
a truncated sentence on the same line) is junk. The checksum is required and verified (hex in either case), a
length cap stops runaway lines, and only sentence types that pynmea2 knows are turned into pynmea2 objects; the
few types the epoch assembler uses are built, other known types are only counted, unknown ones too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

import pynmea2

log = logging.getLogger(__name__)

# The sentence types the epoch assembler reads; every other valid sentence is counted and dropped unparsed.
USED_TYPES = frozenset({"RMC", "GGA", "GLL", "GNS", "GSA", "VTG", "ZDA", "GST"})
DEFAULT_MAX_CHARS = 160
_MAX_BUFFER = 8192  # a line longer than this without a newline is binary junk: keep only its tail
# Two hex digits (either case) -> their value: one lookup, where int(digits, 16) alone would also take " 7" or "+7".
_HEX_DIGITS = "0123456789abcdefABCDEF"
_HEX_PAIRS = {f"{a}{b}".encode(): int(f"{a}{b}", 16) for a in _HEX_DIGITS for b in _HEX_DIGITS}


@dataclass
class ParseStats:
    """What the parser saw; `sentences` counts only sentences with a valid checksum."""

    lines: int = 0
    sentences: int = 0
    used: int = 0
    bad_checksum: int = 0
    no_checksum: int = 0
    too_long: int = 0
    malformed: int = 0
    unknown_type: int = 0
    proprietary: int = 0
    other_types: int = 0
    junk_bytes: int = 0
    unknown_names: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "unknown_names"}


class LineSplitter:
    """Cuts a byte stream into lines at CR or LF, whatever the chunking; bounds memory on binary junk."""

    def __init__(self, stats: ParseStats, max_buffer: int = _MAX_BUFFER) -> None:
        self._stats = stats
        self._max_buffer = max_buffer
        self._tail = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._tail + data
        if b"\r" in buf:
            buf = buf.replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > self._max_buffer:
            # A binary blob with no newline: a sentence cannot be longer than the cap, so only the tail may matter.
            keep = self._max_buffer // 2
            self._stats.junk_bytes += len(self._tail) - keep
            self._tail = self._tail[-keep:]
        return [line for line in lines if line]

    def flush(self) -> list[bytes]:
        tail, self._tail = self._tail, b""
        return [tail] if tail else []


_FOLD_MASKS = [(1 << (8 * k)) - 1 for k in range(129)]  # k bytes of ones: the folds of a body up to 256 bytes


def checksum(body: bytes) -> int:
    """XOR of the bytes between `$` and `*`. The bytes are read as one integer and folded in halves (XOR of the
    two halves, again and again, down to one byte): a handful of big-integer operations instead of a call per
    byte (bench/bench_nmea.py: ~20 % faster on a sentence)."""
    x = int.from_bytes(body, "little")
    n = len(body)
    while n > 1:
        half = (n + 1) >> 1
        x = (x >> (half << 3)) ^ (x & (_FOLD_MASKS[half] if half < 129 else (1 << (half << 3)) - 1))
        n = half
    return x


class NmeaParser:
    """Turns lines into pynmea2 sentence objects, counting everything it drops."""

    def __init__(self, max_chars: int = DEFAULT_MAX_CHARS, stats: ParseStats | None = None) -> None:
        self.max_chars = max_chars
        self.stats = stats if stats is not None else ParseStats()
        self._talker_types = pynmea2.TalkerSentence.sentence_types

    def parse_line(self, line: bytes | str) -> pynmea2.TalkerSentence | None:
        """One line -> the sentence the assembler needs, or None (counted in stats)."""
        if isinstance(line, str):
            line = line.encode("latin-1", "replace")
        stats = self.stats
        stats.lines += 1
        star = line.rfind(b"*")
        start = line.rfind(b"$", 0, star if star >= 0 else len(line))
        if start < 0:
            stats.junk_bytes += len(line)
            return None
        if star < 0:
            stats.no_checksum += 1
            return None
        if star - start + 3 > self.max_chars:
            stats.too_long += 1
            return None
        stated = _HEX_PAIRS.get(line[star + 1:star + 3])
        if stated is None or line[star + 3:].strip():
            stats.bad_checksum += 1  # missing, cut short or not hex
            return None
        body = line[start + 1:star]
        if checksum(body) != stated:
            stats.bad_checksum += 1
            return None
        if not body.isascii():
            stats.malformed += 1
            return None
        stats.sentences += 1
        if start:
            stats.junk_bytes += start
        return self._build(body.decode("ascii"))

    def _build(self, text: str) -> pynmea2.TalkerSentence | None:
        stats = self.stats
        address, _, rest = text.partition(",")
        if address[:1] == "P":
            stats.proprietary += 1
            return None
        if len(address) != 5 or not address.isalnum():
            stats.malformed += 1
            return None
        kind = address[2:]
        if kind not in USED_TYPES:
            if kind in self._talker_types:
                stats.other_types += 1
            else:
                stats.unknown_type += 1
                stats.unknown_names[kind] = stats.unknown_names.get(kind, 0) + 1
            return None
        stats.used += 1
        # What TalkerSentence(talker, kind, fields) builds, without its __init__: that goes through the class's
        # __setattr__ (a field-name lookup per attribute) and copies the list (2.5x slower).
        cls = self._talker_types[kind]
        msg = cls.__new__(cls)
        vars(msg).update(talker=address[:2], sentence_type=kind, data=rest.split(","))
        return msg
