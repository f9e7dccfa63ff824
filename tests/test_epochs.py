"""Epoch assembly rules, from hand-written sentences, plus fuzzing of parser + assembler together."""

from __future__ import annotations

import datetime as dt
import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.config.gnss import RECORDED_DATE_FLOOR, GnssConfig
from edge_agent.gnss.epochs import KNOT_MPS, EpochAssembler, Fix, virtual_mono
from edge_agent.gnss.nmea import checksum
from edge_agent.gnss.source import NmeaDecoder


def sentence(body: str) -> str:
    return f"${body}*{checksum(body.encode()):02X}"


def epochs(*bodies: str, virtual: bool = False, **cfg) -> tuple[list[Fix], NmeaDecoder]:
    # The dates these tests write are judged against the historical floor unless a test sets its own (a live
    # receiver's default floor is this release: test_a_live_receiver_is_floored_at_this_release...).
    decoder = NmeaDecoder(GnssConfig(**({"date_floor": RECORDED_DATE_FLOOR} | cfg)), virtual_clock=virtual)
    data = "".join(sentence(b) + "\r\n" for b in bodies).encode()
    return decoder.feed(data) + decoder.flush(), decoder


def rmc(time="123519.00", status="A", date="230394", speed="022.4", course="084.4", faa="A",
        lat="4807.038", ns="N", lon="01131.000", ew="E"):
    return f"GPRMC,{time},{status},{lat},{ns},{lon},{ew},{speed},{course},{date},003.1,W,{faa}"


def gga(time="123519.00", quality="1", sats="08", hdop="0.9", alt="545.4", lat="4807.038", lon="01131.000"):
    return f"GPGGA,{time},{lat},N,{lon},E,{quality},{sats},{hdop},{alt},M,46.9,M,,"


def test_one_epoch_from_rmc_gga_gsa():
    fixes, decoder = epochs(rmc(), gga(), "GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1")
    assert len(fixes) == 1
    fix = fixes[0]
    # 1994 is before the default date floor (2000): a GPS week rollover, moved forward by 1024 weeks.
    assert fix.utc == dt.datetime(1994, 3, 23, 12, 35, 19, tzinfo=dt.UTC) + dt.timedelta(weeks=1024)
    assert fix.mode == 3
    assert fix.lat == pytest.approx(48 + 7.038 / 60)
    assert fix.lon == pytest.approx(11 + 31.0 / 60)
    assert fix.alt_m == pytest.approx(545.4)
    assert fix.speed_mps == pytest.approx(22.4 * KNOT_MPS)
    assert fix.track_deg == pytest.approx(84.4)
    assert fix.sats == 8 and fix.hdop == pytest.approx(0.9)
    assert fix.eph_m == pytest.approx(0.9 * GnssConfig().uere_m)
    assert decoder.summary()["epochs"] == 1 and decoder.summary()["fixes"] == 1


def test_date_floor_off_keeps_1994():
    fixes, _ = epochs(rmc(), date_floor=dt.date(1980, 1, 6))
    assert fixes[0].utc == dt.datetime(1994, 3, 23, 12, 35, 19, tzinfo=dt.UTC)


def test_southern_western_hemispheres_are_negative():
    fixes, _ = epochs(rmc(ns="S", ew="W", date="230326"))
    assert fixes[0].lat < 0 and fixes[0].lon < 0


@pytest.mark.parametrize("body", [
    rmc(status="V"),
    rmc(faa="N"),
])
def test_rmc_void_or_faa_n_is_no_fix(body):
    fix = epochs(body)[0][0]
    assert fix.mode == 0 and fix.lat is None and fix.lon is None and fix.speed_mps is None


@pytest.mark.parametrize("quality", ["0", ""])
def test_gga_quality_0_or_empty_is_no_fix(quality):
    fix = epochs(gga(quality=quality))[0][0]
    assert fix.mode == 0 and fix.lat is None


def test_no_fix_wins_over_a_fix_in_the_same_epoch():
    fix = epochs(rmc(), gga(quality="0"))[0][0]
    assert fix.mode == 0


def test_gst_sigmas_give_eph_in_metres():
    fix = epochs(rmc(), gga(), "GPGST,123519.00,1.2,3.0,2.0,45.0,1.5,2.0,3.1")[0][0]
    assert fix.eph_m == pytest.approx(math.hypot(1.5, 2.0))


def test_hdop_times_uere_without_gst():
    fix = epochs(rmc(), gga(hdop="2.0"), uere_m=5.0)[0][0]
    assert fix.eph_m == pytest.approx(10.0)


def test_gsa_gives_2d():
    fix = epochs(rmc(), gga(), "GPGSA,A,2,04,05,09,,,,,,,,,,2.5,1.3,2.1")[0][0]
    assert fix.mode == 2


def test_mode_without_gsa_depends_on_altitude():
    assert epochs(rmc())[0][0].mode == 2
    assert epochs(rmc(), gga())[0][0].mode == 3


def test_vtg_gives_speed_and_track_when_rmc_does_not():
    fix = epochs(rmc(speed="", course=""), "GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A")[0][0]
    assert fix.speed_mps == pytest.approx(10.2 / 3.6)
    assert fix.track_deg == pytest.approx(54.7)


def test_zda_gives_the_date_for_a_gga_only_receiver():
    fix = epochs(gga(), "GPZDA,123519.00,05,08,2026,00,00")[0][0]
    assert fix.utc == dt.datetime(2026, 8, 5, 12, 35, 19, tzinfo=dt.UTC)


def test_gga_before_any_date_has_no_utc():
    fixes, decoder = epochs(gga(time="235958"), rmc(time="235959", date="010626"))
    assert fixes[0].utc is None and fixes[0].mode == 3
    assert fixes[1].utc == dt.datetime(2026, 6, 1, 23, 59, 59, tzinfo=dt.UTC)
    assert decoder.summary()["no_date"] == 1


def test_undated_epochs_are_not_on_the_virtual_clock():
    fixes, _ = epochs(gga(time="235958"), rmc(time="235959", date="010626"), virtual=True)
    assert math.isnan(fixes[0].t_mono)
    assert fixes[1].t_mono == virtual_mono(fixes[1].utc)


def test_utc_midnight_rollover_without_a_new_date():
    fixes, _ = epochs(rmc(time="235959.50", date="311226"), gga(time="000000.50"), gga(time="000001.50"))
    assert [f.utc.isoformat() for f in fixes] == [
        "2026-12-31T23:59:59.500000+00:00", "2027-01-01T00:00:00.500000+00:00", "2027-01-01T00:00:01.500000+00:00"]


def test_midnight_rollover_agrees_with_the_next_rmc():
    fixes, _ = epochs(rmc(time="235959", date="280226"), gga(time="000000"), rmc(time="000000", date="010326"))
    assert fixes[1].utc == dt.datetime(2026, 3, 1, 0, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("yy", "year"), [("26", 2026), ("79", 2079), ("00", 2000)])
def test_two_digit_year_pivot(yy, year):
    fix = epochs(rmc(date="0106" + yy))[0][0]
    assert fix.utc.year == year


def test_gps_week_rollover_1999_after_2019():
    # A receiver with an old 1024-week window reports 1999-08-22 when it is really 2019-04-07.
    fix = epochs(rmc(date="220899"))[0][0]
    assert fix.utc.date() == dt.date(2019, 4, 7)
    fix = epochs(gga(), "GPZDA,123519.00,22,08,1999,00,00")[0][0]
    assert fix.utc.date() == dt.date(2019, 4, 7)


def test_week_rollover_floor_is_configurable():
    fix = epochs(rmc(date="010105"), date_floor=dt.date(2019, 4, 7))[0][0]
    assert fix.utc.date() == dt.date(2005, 1, 1) + dt.timedelta(weeks=1024)


def test_time_going_backwards_is_counted():
    fixes, decoder = epochs(rmc(time="120000", date="010626"), rmc(time="120001", date="010626"),
                            rmc(time="110000", date="010626"))
    assert fixes[2].utc < fixes[1].utc
    assert decoder.summary()["time_backwards"] == 1


def test_timeless_sentences_before_their_epoch_sirf_order():
    # SiRF: GSA then RMC for each epoch; the GSA must not land in the previous epoch.
    fixes, _ = epochs("GPGSA,A,2,04,05,09,,,,,,,,,,2.5,1.3,2.1", rmc(time="120000", date="010626"),
                      "GPGSA,A,3,04,05,09,12,,,,,,,,,2.5,1.3,2.1", rmc(time="120001", date="010626"),
                      "GPGSA,A,2,04,05,09,,,,,,,,,,2.5,1.3,2.1", rmc(time="120002", date="010626"))
    assert [f.mode for f in fixes] == [2, 3, 2]


def test_timeless_sentences_inside_their_epoch_ublox_order():
    # u-blox: RMC VTG GGA GSA GSV GLL; GSA belongs to the epoch it follows.
    def cycle(t, mode):
        return [rmc(time=t, date="010626"), "GPVTG,054.7,T,,M,005.5,N,010.2,K,A", gga(time=t),
                f"GPGSA,A,{mode},04,05,09,,,,,,,,,,2.5,1.3,2.1", "GPGSV,1,1,00",
                f"GPGLL,4807.038,N,01131.000,E,{t},A,A"]
    fixes, _ = epochs(*cycle("120000", 3), *cycle("120001", 2), *cycle("120002", 3))
    assert [f.mode for f in fixes] == [3, 2, 3]


def test_dead_reckoning_is_flagged_estimated():
    assert epochs(rmc(faa="E"))[0][0].estimated
    assert epochs(gga(quality="6"))[0][0].estimated
    assert not epochs(rmc())[0][0].estimated


@pytest.mark.parametrize("lat", ["9100.000", "4860.000", "48x7.038", "48.07038", "nan", ""])
def test_invalid_coordinates_are_unknown_not_guessed(lat):
    fix = epochs(rmc(lat=lat))[0][0]
    assert fix.lat is None and fix.mode == 0


@pytest.mark.parametrize("speed", ["-1.0", "nan", "inf", "99999"])
def test_invalid_speed_is_unknown(speed):
    assert epochs(rmc(speed=speed))[0][0].speed_mps is None


@pytest.mark.parametrize("time", ["246000", "125960", "12:35:19", "1235", ""])
def test_invalid_time_makes_no_epoch(time):
    fixes, decoder = epochs(rmc(time=time))
    assert fixes == [] and decoder.summary()["sentences"] == 1


def test_real_u_blox_epoch_from_a_capture_line():
    # From the u-blox ZED-F9P capture (gpsd test data): NMEA 4.1 RMC with a nav-status field.
    fixes, _ = epochs("GNRMC,003956.00,A,4552.65403,S,17030.00668,E,0.025,,120419,,,A,V",
                      "GNGGA,003956.00,4552.65403,S,17030.00668,E,1,12,0.64,14.2,M,1.8,M,,")
    fix = fixes[0]
    assert fix.utc == dt.datetime(2019, 4, 12, 0, 39, 56, tzinfo=dt.UTC)
    assert fix.lat == pytest.approx(-45.8775672, abs=1e-7) and fix.lon == pytest.approx(170.5001113, abs=1e-7)
    assert fix.track_deg is None and fix.sats == 12


# --- fuzzing: the assembler never raises and never emits values outside their ranges

FIELD = st.text(alphabet="0123456789.-+NSEWAVMKTne", max_size=12)
TYPES = st.sampled_from(["RMC", "GGA", "GLL", "GNS", "GSA", "VTG", "ZDA", "GST"])


def check_ranges(fix: Fix) -> None:
    assert fix.mode in (0, 2, 3)
    if fix.mode:
        assert fix.lat is not None and -90 <= fix.lat <= 90
        assert fix.lon is not None and -180 <= fix.lon <= 180
    else:
        assert fix.lat is None and fix.lon is None
    for value in (fix.lat, fix.lon, fix.alt_m, fix.speed_mps, fix.track_deg, fix.eph_m, fix.hdop):
        assert value is None or math.isfinite(value)
    assert fix.speed_mps is None or 0 <= fix.speed_mps <= 600
    assert fix.track_deg is None or 0 <= fix.track_deg < 360
    assert fix.eph_m is None or fix.eph_m >= 0
    assert fix.hdop is None or fix.hdop > 0
    assert fix.sats is None or 0 <= fix.sats < 256
    assert fix.utc is None or fix.utc.tzinfo is not None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["GP", "GN", "BD"]), TYPES, st.lists(FIELD, max_size=14)), max_size=25))
def test_fuzz_assembler_emits_only_valid_fixes(sentences):
    decoder = NmeaDecoder(GnssConfig(), virtual_clock=True)
    data = "".join(sentence(talker + kind + "," + ",".join(fields)) + "\r\n" for talker, kind, fields in sentences)
    for fix in decoder.feed(data.encode()) + decoder.flush():
        check_ranges(fix)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.sampled_from(["A", "V"]),
    st.floats(0, 9000, allow_nan=False), st.floats(0, 17999, allow_nan=False), st.floats(0, 999),
    st.integers(1, 31), st.integers(1, 12), st.integers(0, 99)), max_size=20))
def test_fuzz_plausible_rmc_streams(rows):
    assembler = EpochAssembler()
    decoder = NmeaDecoder(GnssConfig())
    decoder.assembler = assembler
    lines = []
    for hh, mm, ss, status, lat, lon, speed, day, month, yy in rows:
        lines.append(sentence(f"GPRMC,{hh:02d}{mm:02d}{ss:02d}.00,{status},{lat:09.4f},N,{lon:010.4f},E,"
                              f"{speed:.1f},12.0,{day:02d}{month:02d}{yy:02d},,,A"))
    for fix in decoder.feed(("\r\n".join(lines) + "\r\n").encode()) + decoder.flush():
        check_ranges(fix)


PIECES = [sentence(rmc()) + "\r\n", sentence(gga()) + "\r\n", sentence(rmc(time="123520.00")) + "\r\n",
          sentence(gga(time="000001")) + "\r\n", sentence("GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1") + "\r\n",
          sentence("GPZDA,235959.99,31,12,1999,00,00") + "\r\n", "$GPGGA,1235", "\r\n", "$$", "*7F"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=30), st.sampled_from(PIECES).map(str.encode)), max_size=30),
       st.integers(1, 64))
def test_fuzz_decoder_on_junk_mixed_with_sentences(pieces, chunk):
    decoder = NmeaDecoder(GnssConfig(), virtual_clock=True)
    data = b"".join(pieces)
    fixes = []
    for i in range(0, len(data), chunk):
        fixes += decoder.feed(data[i:i + chunk])
    fixes += decoder.flush()
    for fix in fixes:
        check_ranges(fix)
    assert decoder.summary()["epochs"] == len(fixes)


def test_gga_satellite_count_is_kept_when_plausible():
    assert epochs(rmc(), gga(sats="12"))[0][0].sats == 12
    assert epochs(rmc(), gga(sats="255"))[0][0].sats == 255
    assert epochs(rmc(), gga(sats="256"))[0][0].sats is None


def test_numbers_with_python_underscores_are_not_numbers():
    fix = epochs(rmc(speed="1_0.0"))[0][0]
    assert fix.speed_mps is None


def test_vtg_speed_in_knots_when_it_has_no_kmh():
    fix = epochs(rmc(speed="", course=""), "GPVTG,054.7,T,034.4,M,005.5,N,,K,A")[0][0]
    assert fix.speed_mps == pytest.approx(5.5 * KNOT_MPS)


def test_vtg_does_not_override_the_rmc_course_and_speed():
    fix = epochs(rmc(speed="010.0", course="084.4"), "GPVTG,054.7,T,034.4,M,005.5,N,010.2,K,A")[0][0]
    assert fix.track_deg == pytest.approx(84.4)
    assert fix.speed_mps == pytest.approx(10.0 * KNOT_MPS)


@pytest.mark.parametrize("sigmas", ["-1.5,2.0", "1.5,-2.0", ",2.0", "1.5,", "0.0,0.0", "1e200,1e200", "nan,1.0"])
def test_gst_with_a_negative_zero_absurd_or_missing_sigma_is_ignored(sigmas):
    fix = epochs(rmc(), gga(hdop="2.0"), f"GPGST,123519.00,1.2,3.0,2.0,45.0,{sigmas},3.1", uere_m=5.0)[0][0]
    assert fix.eph_m == pytest.approx(10.0)  # HDOP x UERE, as without GST


def test_coordinates_stop_at_the_poles_and_the_antimeridian():
    from edge_agent.gnss.epochs import latitude, longitude

    assert longitude("18000.000", "W") == -180.0 and longitude("18000.006", "E") is None
    assert latitude("9000.000", "N") == 90.0 and latitude("9000.006", "S") is None
    assert longitude("9000.000", "N") is None and latitude("4807.038", "E") is None


def test_fixes_are_immutable_values():
    import dataclasses

    fix = epochs(rmc(), gga())[0][0]
    assert fix == dataclasses.replace(fix) and hash(fix) == hash(dataclasses.replace(fix))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fix.lat = 0.0  # type: ignore[misc]


def gns(modes: str = "AN", alt: str = "545.4") -> str:
    return f"GNGNS,123519.00,4807.038,N,01131.000,E,{modes},08,0.9,{alt},46.9,,,V"


def test_a_gns_only_receiver_gives_position_altitude_and_satellites():
    fix = epochs(rmc(), gns(alt="-10.5"))[0][0]
    assert fix.lat == pytest.approx(48 + 7.038 / 60) and fix.lon == pytest.approx(11 + 31.0 / 60)
    assert fix.alt_m == pytest.approx(-10.5) and fix.sats == 8 and not fix.estimated
    assert epochs(rmc(), gns(alt="-1000.0"))[0][0].alt_m is None  # below the Dead Sea: not an altitude


@pytest.mark.parametrize(("modes", "estimated"), [("EN", True), ("E", True), ("AE", False), ("DN", False)])
def test_gns_dead_reckoning_on_every_system_is_estimated(modes, estimated):
    assert epochs(rmc(), gns(modes=modes))[0][0].estimated is estimated


@pytest.mark.parametrize(("hdop", "expected"), [("0.0", None), ("0", None), ("0.5", 0.5), ("99.9", 99.9),
                                                ("100.0", None)])
def test_dop_zero_means_unknown(hdop, expected):
    from edge_agent.gnss.epochs import dop

    assert dop(hdop) == expected


def test_coordinates_without_decimal_minutes():
    from edge_agent.gnss.epochs import latitude, longitude

    assert latitude("4807", "N") == pytest.approx(48 + 7 / 60)
    assert longitude("01131", "W") == pytest.approx(-(11 + 31 / 60))
    assert latitude("4860", "N") is None  # 60 minutes is the next degree


def test_a_live_receiver_is_floored_at_this_release_and_a_recording_is_not():
    from edge_agent.config.gnss import LIVE_DATE_FLOOR, GnssConfig
    from edge_agent.gnss.source import NmeaDecoder

    assert dt.date.today() >= LIVE_DATE_FLOOR  # a floor after a true date would move that date 1024 weeks ahead
    rolled = (dt.date.today() - dt.timedelta(weeks=1024)).strftime("%d%m%y")
    line = (sentence(rmc(date=rolled)) + "\r\n").encode()

    def date_of(decoder: NmeaDecoder) -> dt.date:
        return (decoder.feed(line) + decoder.close_epoch())[0].utc.date()

    assert date_of(NmeaDecoder(GnssConfig())) == dt.date.today()  # the rollover put right
    old = dt.date.today() - dt.timedelta(weeks=1024)
    assert date_of(NmeaDecoder(GnssConfig(), virtual_clock=True)) == old  # an old recording stays old
    assert date_of(NmeaDecoder(GnssConfig(date_floor=dt.date(2000, 1, 1)))) == old  # the operator's floor wins


def test_a_live_date_a_rollover_would_move_past_the_boxs_clock_is_not_used(caplog):
    """A receiver sending a date months before this release, live (a wrong date after a cold start; a recording
    fed in through a serial port), was moved 1024 weeks on, to 2045, and the server refused every event as from
    the future. Now the date goes unused and the agent dates events by its own clock."""
    from edge_agent.config.gnss import LIVE_DATE_FLOOR, GnssConfig
    from edge_agent.gnss.source import NmeaDecoder

    before = (LIVE_DATE_FLOOR - dt.timedelta(days=173)).strftime("%d%m%y")
    decoder = NmeaDecoder(GnssConfig())
    with caplog.at_level(logging.WARNING, logger="edge_agent.gnss.epochs"):
        fixes = decoder.feed((sentence(rmc(date=before)) + "\r\n").encode()) + decoder.close_epoch()
    assert fixes and fixes[0].utc is None, fixes[0].utc
    assert decoder.assembler.stats.future_dates == 1 and "after this box's clock" in caplog.text
    recorded = NmeaDecoder(GnssConfig(), virtual_clock=True)  # a recording keeps its own date
    fix = (recorded.feed((sentence(rmc(date=before)) + "\r\n").encode()) + recorded.close_epoch())[0]
    assert fix.utc.date() == LIVE_DATE_FLOOR - dt.timedelta(days=173)


@pytest.mark.parametrize(("quality", "faa"), [("7", "M"), ("8", "S"), ("6", "E")])
def test_manual_and_simulated_fixes_are_not_measurements(quality, faa):
    """A receiver's demo mode (a Garmin Geko sends RMC mode S and GGA quality 8) or a position typed in (7, M)
    passed as a 3-D fix the filter used, and doctor was green."""
    fix = epochs(rmc(faa=faa), gga(quality=quality))[0][0]
    assert fix.estimated
    assert not epochs(rmc(faa="A"), gga(quality="4"))[0][0].estimated  # RTK is measured


@pytest.mark.parametrize(("bodies", "rtk", "uere"), [
    ((rmc(faa="R"), gga(quality="4")), "rtk_fixed", 0.03),
    ((rmc(faa="F"), gga(quality="5")), "rtk_float", 0.5),
    ((gga(quality="4"),), "rtk_fixed", 0.03),  # a GGA-only receiver
    (("GNGNS,123519.00,4807.038,N,01131.000,E,RRN,12,0.9,545.4,46.9,,",), "rtk_fixed", 0.03),
    ((rmc(faa="D"), gga(quality="2")), None, 4.0),  # DGPS/SBAS: metres still, HDOP x uere_m
])
def test_an_rtk_fix_states_centimetres_not_hdop_times_uere(bodies, rtk, uere):
    """An RTK receiver (GGA quality 4/5, FAA R/F) was taken for a plain 3-D fix and stated HDOP x 4 m, a
    hundred times its error: its positions weighed no more than a phone's on the map."""
    fix = epochs(*bodies)[0][0]
    assert fix.rtk == rtk and fix.mode == 3
    assert fix.eph_m == pytest.approx(0.9 * uere)


def test_a_date_that_turns_seconds_after_midnight_keeps_the_rolled_date():
    """A receiver whose RMC still said 31 December at 00:00:00 and 00:00:02 had those fixes dated a day back,
    and the filter reset twice (time went backwards). Yesterday's date in the first seconds is late, not true."""
    fixes, decoder = epochs(rmc(time="235958", date="311226"), rmc(time="000000", date="311226"),
                            rmc(time="000002", date="311226"), rmc(time="000004", date="010127"),
                            rmc(time="000006", date="010127"))
    assert [f.utc.isoformat()[:19] for f in fixes] == [
        "2026-12-31T23:59:58", "2027-01-01T00:00:00", "2027-01-01T00:00:02", "2027-01-01T00:00:04",
        "2027-01-01T00:00:06"]
    assert decoder.assembler.stats.time_backwards == 0 and decoder.assembler.stats.late_dates == 2
    # Outside those seconds a date is believed as before: a receiver set back a day at noon is dated back.
    noon, _ = epochs(rmc(time="235958", date="311226"), rmc(time="000000", date="010127"),
                     rmc(time="120000", date="311226"))
    assert noon[-1].utc.date() == dt.date(2026, 12, 31)
