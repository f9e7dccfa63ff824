"""Where fixes come from: recordings (`fixes_from_file`) and live sources (`GnssReader`).

Every source ends in the same `NmeaDecoder` (lines -> strict sentences -> epochs -> Fix), except gpsd, whose
JSON reports are already epochs. Recordings are stamped on a virtual clock (seconds of UTC since 2000-01-01)
so that a video's frame times map onto them through UTC; live fixes are stamped with time.monotonic() at the
arrival of the epoch's first sentence, minus the configured receiver latency.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from edge_agent.config.gnss import GnssConfig
from edge_agent.epochs import EpochAssembler, Fix
from edge_agent.nmea import LineSplitter, NmeaParser, ParseStats

log = logging.getLogger(__name__)

CHUNK = 1 << 16


class NmeaDecoder:
    """Bytes in, Fixes out: line splitting, strict parsing and epoch assembly, with all their counters."""

    def __init__(self, cfg: GnssConfig | None = None, virtual_clock: bool = False) -> None:
        cfg = cfg or GnssConfig()
        self.parse_stats = ParseStats()
        self._splitter = LineSplitter(self.parse_stats)
        self._parser = NmeaParser(cfg.max_sentence_chars, self.parse_stats)
        self.assembler = EpochAssembler(uere_m=cfg.uere_m, date_floor=cfg.date_floor, virtual_clock=virtual_clock)

    def feed(self, data: bytes, t_arrival: float = 0.0) -> list[Fix]:
        fixes = []
        parse, add = self._parser.parse_line, self.assembler.feed
        for line in self._splitter.feed(data):
            sentence = parse(line)
            if sentence is not None:
                fix = add(sentence, t_arrival)
                if fix is not None:
                    fixes.append(fix)
        return fixes

    def close_epoch(self) -> list[Fix]:
        """The line went idle: the open epoch is complete."""
        fix = self.assembler.close()
        return [fix] if fix is not None else []

    def flush(self) -> list[Fix]:
        """End of input: the unterminated last line and the open epoch."""
        fixes = []
        for line in self._splitter.flush():
            sentence = self._parser.parse_line(line)
            if sentence is not None:
                fix = self.assembler.feed(sentence)
                if fix is not None:
                    fixes.append(fix)
        return fixes + self.close_epoch()

    def summary(self) -> dict[str, int]:
        p, e = self.parse_stats, self.assembler.stats
        return {
            "sentences": p.sentences, "bad_checksums": p.bad_checksum, "unknown_types": p.unknown_type,
            "epochs": e.epochs, "fixes": e.fixes, "malformed": p.malformed + p.no_checksum, "too_long": p.too_long,
            "proprietary": p.proprietary, "other_types": p.other_types, "junk_bytes": p.junk_bytes,
            "no_date": e.no_date, "time_backwards": e.time_backwards,
        }


def open_input(path: str | Path) -> IO[bytes]:
    """A recording, or stdin for '-'. Raises OSError for an unreadable path."""
    if str(path) == "-":
        return sys.stdin.buffer
    return open(path, "rb")


def decode_stream(stream: IO[bytes], decoder: NmeaDecoder) -> Iterator[Fix]:
    """Every epoch of a byte stream in order (including those without a date, t_mono NaN)."""
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        yield from decoder.feed(chunk)
    yield from decoder.flush()


def fixes_from_file(path: str | Path, cfg: GnssConfig | None = None,
                    decoder: NmeaDecoder | None = None) -> Iterator[Fix]:
    """The epochs of a recording, stamped on the virtual clock (seconds of UTC since 2000-01-01).

    Epochs before the recording's first date cannot be placed on that clock and are left out (counted in
    the decoder's `no_date`). '-' reads stdin.
    """
    decoder = decoder or NmeaDecoder(cfg, virtual_clock=True)
    stream = open_input(path)
    try:
        for fix in decode_stream(stream, decoder):
            if math.isfinite(fix.t_mono):
                yield fix
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
