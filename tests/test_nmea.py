"""Strict NMEA framing and parsing, from hand-written sentences, plus fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.gnss.nmea import LineSplitter, NmeaParser, ParseStats, checksum


def sentence(body: str, lower: bool = False, prefix: str = "$") -> str:
    digits = f"{checksum(body.encode()):02X}"
    return f"{prefix}{body}*{digits.lower() if lower else digits}"


GGA = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
RMC = "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"


def test_valid_sentence_is_parsed_with_its_fields():
    parser = NmeaParser()
    msg = parser.parse_line(sentence(GGA).encode())
    assert msg is not None
    assert (msg.talker, msg.sentence_type) == ("GP", "GGA")
    assert msg.data[1] == "4807.038"
    assert parser.stats.sentences == 1 and parser.stats.used == 1


def test_checksum_of_a_real_sentence():
    assert checksum(RMC.encode()) == 0x6A  # the textbook sentence, as receivers send it: *6A


def test_checksum_is_required():
    parser = NmeaParser()
    assert parser.parse_line(("$" + GGA).encode()) is None
    assert parser.stats.no_checksum == 1 and parser.stats.sentences == 0


def test_wrong_checksum_is_rejected_and_counted():
    parser = NmeaParser()
    good = sentence(GGA)
    bad = good[:-2] + f"{(int(good[-2:], 16) ^ 0x01):02X}"
    assert parser.parse_line(bad.encode()) is None
    assert parser.stats.bad_checksum == 1


def test_checksum_hex_in_lower_case_is_accepted():
    parser = NmeaParser()
    body = "GPRMC,205150.00,V,,,,,,,,,,,V"  # checksum 4A: has a letter
    line = sentence(body, lower=True)
    assert line.endswith("*4a")
    assert parser.parse_line(line.encode()) is not None


@pytest.mark.parametrize("junk", ["*4Z", "*", "*4", "*4A junk"])
def test_malformed_checksum_fields_are_bad_checksums(junk):
    parser = NmeaParser()
    assert parser.parse_line(("$" + GGA + junk).encode()) is None
    assert parser.stats.bad_checksum == 1


@pytest.mark.parametrize("after", [" junk", "x", "*", " 00"])
def test_a_right_checksum_with_anything_after_it_is_a_bad_checksum(after):
    """Trailing bytes after the two digits mean a cut or merged line, even when the digits themselves match."""
    parser = NmeaParser()
    assert parser.parse_line((sentence(GGA) + after).encode()) is None
    assert parser.stats.bad_checksum == 1 and parser.stats.sentences == 0


@pytest.mark.parametrize("end", ["", "\r\n", "\n", "  \r\n"])
def test_line_endings_and_trailing_blanks_after_the_checksum_are_fine(end):
    parser = NmeaParser()
    assert parser.parse_line((sentence(GGA) + end).encode()) is not None
    assert parser.stats.sentences == 1 and parser.stats.bad_checksum == 0


@pytest.mark.parametrize("digits", ["Z4", "G1", "-1", " 4", "0x"])
def test_a_checksum_that_is_not_two_hex_digits_is_counted_not_raised(digits):
    parser = NmeaParser()
    assert parser.parse_line(f"${GGA}*{digits}".encode()) is None
    assert parser.stats.bad_checksum == 1


def test_checksum_is_taken_after_the_last_star():
    body = "GPTXT,01,01,02,a*star*inside"
    parser = NmeaParser()
    parser.parse_line(sentence(body).encode())
    assert parser.stats.sentences == 1 and parser.stats.bad_checksum == 0


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "GB", "BD", "GQ", "IN", "QZ"])
def test_any_talker_is_accepted(talker):
    msg = NmeaParser().parse_line(sentence(talker + GGA[2:]).encode())
    assert msg is not None and msg.talker == talker and msg.sentence_type == "GGA"


def test_double_dollar_prefix_is_accepted():
    msg = NmeaParser().parse_line(sentence(GGA, prefix="$$").encode())
    assert msg is not None and msg.sentence_type == "GGA"


def test_binary_junk_before_a_sentence_is_skipped():
    ubx = bytes([0xB5, 0x62, 0x01, 0x07, 0x5C, 0x00, 0x24, 0x2A, 0xFF, 0x00])  # contains '$' and '*' bytes
    parser = NmeaParser()
    msg = parser.parse_line(ubx + sentence(GGA).encode())
    assert msg is not None and msg.sentence_type == "GGA"
    assert parser.stats.junk_bytes > 0


def test_truncated_sentence_followed_by_a_whole_one_on_one_line():
    parser = NmeaParser()
    msg = parser.parse_line(("$GPRMC,123519,A,48" + sentence(GGA)).encode())
    assert msg is not None and msg.sentence_type == "GGA"


def test_truncated_line_is_counted_not_raised():
    parser = NmeaParser()
    assert parser.parse_line(b"$GPGGA,123519,4807.03") is None
    assert parser.stats.no_checksum == 1


def test_length_cap():
    parser = NmeaParser(max_chars=82)
    long_body = "GPTXT,01,01,02," + "x" * 80
    assert parser.parse_line(sentence(long_body).encode()) is None
    assert parser.stats.too_long == 1
    assert NmeaParser(max_chars=200).parse_line(sentence(long_body).encode()) is None  # a TXT: counted, unused
    assert parser.parse_line(sentence(GGA).encode()) is not None


def test_unknown_types_and_proprietary_are_counted_and_ignored():
    parser = NmeaParser()
    assert parser.parse_line(sentence("GPFOO,1,2,3").encode()) is None
    assert parser.parse_line(sentence("PUBX,00,1,2").encode()) is None
    assert parser.parse_line(sentence("GPGSV,1,1,00").encode()) is None
    s = parser.stats
    assert (s.unknown_type, s.proprietary, s.other_types, s.sentences) == (1, 1, 1, 3)
    assert s.unknown_names == {"FOO": 1}


def test_line_splitter_handles_any_chunking_and_line_ending():
    data = (sentence(GGA) + "\r\n" + sentence(RMC) + "\r" + sentence(GGA) + "\n").encode()
    for size in (1, 3, 7, 64, len(data)):
        splitter = LineSplitter(ParseStats())
        lines = []
        for i in range(0, len(data), size):
            lines += splitter.feed(data[i:i + size])
        lines += splitter.flush()
        assert [line.decode() for line in lines] == [sentence(GGA), sentence(RMC), sentence(GGA)]


def test_line_splitter_bounds_memory_on_binary_junk():
    stats = ParseStats()
    splitter = LineSplitter(stats, max_buffer=1000)
    for _ in range(100):
        assert splitter.feed(b"\xb5\x62" * 500) == []
    assert stats.junk_bytes > 90_000
    lines = splitter.feed(sentence(GGA).encode() + b"\r\n")
    assert NmeaParser().parse_line(lines[-1]) is not None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_parser_never_raises_on_bytes(data):
    parser = NmeaParser()
    splitter = LineSplitter(parser.stats)
    for line in splitter.feed(data) + splitter.flush():
        parser.parse_line(line)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="$*,.0123456789ABCDEFNSEWGPRMCVa \r\n", max_size=200))
def test_fuzz_parser_never_raises_on_nmea_like_text(text):
    parser = NmeaParser()
    for line in text.splitlines():
        parser.parse_line(line)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_checksum_is_the_xor_of_all_bytes(body):
    expected = 0
    for byte in body:
        expected ^= byte
    assert checksum(body) == expected


def txt_of_length(n: int) -> str:
    """A valid GPTXT sentence of exactly N characters, '$' to the checksum digits."""
    head = "GPTXT,01,01,02,"
    return sentence(head + "x" * (n - 4 - len(head)))


@pytest.mark.parametrize("max_chars", [82, 160, None])
def test_the_length_cap_is_exact(max_chars):
    """A sentence of exactly the cap is read; one character more is too long (the documented default: 160)."""
    cap = max_chars or 160
    parser = NmeaParser() if max_chars is None else NmeaParser(max_chars=max_chars)
    assert len(txt_of_length(cap)) == cap
    parser.parse_line(txt_of_length(cap).encode())
    assert (parser.stats.sentences, parser.stats.too_long) == (1, 0)
    parser.parse_line(txt_of_length(cap + 1).encode())
    assert (parser.stats.sentences, parser.stats.too_long) == (1, 1)


def test_unknown_sentence_names_are_counted_each():
    parser = NmeaParser()
    for body in ("GPFOO,1", "GNFOO,2", "GPBAR,3"):
        parser.parse_line(sentence(body).encode())
    assert parser.stats.unknown_names == {"FOO": 2, "BAR": 1}
    assert parser.stats.unknown_type == 3


@pytest.mark.parametrize("address", ["GPGGAX", "GPGG", "GP-GA", "G"])
def test_an_address_that_is_not_five_letters_is_malformed(address):
    parser = NmeaParser()
    assert parser.parse_line(sentence(address + GGA[5:]).encode()) is None
    assert (parser.stats.malformed, parser.stats.unknown_type, parser.stats.sentences) == (1, 0, 1)


def test_a_non_ascii_body_with_a_right_checksum_is_malformed_once():
    parser = NmeaParser()
    body = "GPTXT,01,01,02,caf\xe9".encode("latin-1")
    line = b"$" + body + f"*{checksum(body):02X}".encode()
    assert parser.parse_line(line) is None
    assert (parser.stats.malformed, parser.stats.bad_checksum, parser.stats.sentences) == (1, 0, 0)


@pytest.mark.parametrize("delta", [-1, 1, 0x10, -0x10])
def test_checksums_above_and_below_the_right_one_are_rejected(delta):
    right = checksum(GGA.encode())
    parser = NmeaParser()
    assert parser.parse_line(f"${GGA}*{(right + delta) % 256:02X}".encode()) is None
    assert parser.stats.bad_checksum == 1


def test_stats_as_dict_are_the_counters():
    parser = NmeaParser()
    parser.parse_line(sentence(GGA).encode())
    parser.parse_line(sentence("GPFOO,1").encode())
    assert parser.stats.as_dict() == {
        "lines": 2, "sentences": 2, "used": 1, "bad_checksum": 0, "no_checksum": 0, "too_long": 0,
        "malformed": 0, "unknown_type": 1, "proprietary": 0, "other_types": 0, "junk_bytes": 0}


def test_line_splitter_keeps_a_long_line_whole_up_to_its_buffer_then_only_the_tail():
    stats = ParseStats()
    splitter = LineSplitter(stats, max_buffer=1000)
    no_newline = bytes(b for b in range(256) if b not in b"\r\n")
    whole = (no_newline * 4)[:1000]                  # exactly the buffer: still kept whole
    assert splitter.feed(whole) == [] and stats.junk_bytes == 0
    assert splitter.feed(b"\n") == [whole]
    junk = (no_newline * 6)[:1500]                   # 1500 bytes with no newline: the last 500 stay
    assert splitter.feed(junk) == []
    assert stats.junk_bytes == 1000
    assert splitter.feed(b"\n") == [junk[-500:]]
