"""conf.fsutil.parse_utc: the one reading of the ISO times dosereg records and its users type."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from dosereg.conf.fsutil import parse_utc, utc_now


def test_parse_utc_reads_z_offsets_naive_and_dates_and_refuses_the_rest() -> None:
    utc = timezone.utc
    assert parse_utc("2026-12-02T10:15:30.5Z") == datetime(2026, 12, 2, 10, 15, 30, 500000, tzinfo=utc)
    assert parse_utc("2026-12-02T11:15:30+01:00") == datetime(2026, 12, 2, 10, 15, 30, tzinfo=utc)
    assert parse_utc(" 2026-12-02T10:15:30 ") == datetime(2026, 12, 2, 10, 15, 30, tzinfo=utc)  # naive: UTC
    assert parse_utc("2026-12-02") == datetime(2026, 12, 2, tzinfo=utc)
    assert parse_utc("2026-12-02T10:15:30+01:00").utcoffset() == timedelta(hours=1)  # the offset kept
    for bad in (None, "", "yesterday", "2026-13-01", "2026-12-02T25:00"):
        assert parse_utc(bad) is None, bad
    assert abs(datetime.now(timezone.utc) - parse_utc(utc_now())) < timedelta(seconds=5)  # type: ignore[operator]
