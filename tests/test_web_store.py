"""``web.sqlite``: the slow-down of failed logins per account and per address, sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from dosereg.web import AccountError, Store
from dosereg.web import store as store_module

PASSWORD = "correct horse battery staple"


def test_failed_logins_slow_down_per_account_and_per_address(tmp_path: Path) -> None:
    s = Store(tmp_path)
    free_a, free_b = store_module.FREE_ACCOUNT_FAILURES, store_module.FREE_ADDRESS_FAILURES
    for _ in range(free_a - 1):
        s.note_failure("alice", "10.0.0.1")
    assert s.login_wait("alice", "10.0.0.1") == 0
    s.note_failure("alice", "10.0.0.1")
    first = s.login_wait("alice", "10.0.0.9")  # the account is slowed from any address
    assert 0 < first <= store_module.BASE_DELAY_S
    s.note_failure("alice", "10.0.0.1")
    assert first < s.login_wait("alice", "10.0.0.9") <= 2 * store_module.BASE_DELAY_S  # doubling
    assert s.login_wait("bob", "10.0.0.9") == 0  # others are not
    for i in range(free_b):  # one address trying many names
        s.note_failure(f"name{i}", "10.0.0.7")
    assert s.login_wait("carol", "10.0.0.7") > 0 and s.login_wait("carol", "10.0.0.8") == 0
    s.clear_failures("alice")
    assert s.login_wait("alice", "10.0.0.9") == 0


def test_sessions_end_at_logout_and_with_the_account(tmp_path: Path) -> None:
    s = Store(tmp_path)
    s.add_user("alice", "physicist", PASSWORD)
    who = s.check_password("alice", PASSWORD)
    assert who is not None and who.role == "physicist" and who.may("billing") and who.may("viewer")
    assert s.check_password("alice", PASSWORD + "x") is None and s.check_password("nobody", PASSWORD) is None
    sid, csrf = s.new_session(who, hours=1)
    found = s.session(sid)
    assert found is not None and found[0].name == "alice" and found[1] == csrf
    s.end_session(sid)
    assert s.session(sid) is None
    sid, _ = s.new_session(who, hours=1)
    expired, _ = s.new_session(who, hours=-1)
    assert s.session(expired) is None
    s.remove_user("alice")
    assert s.session(sid) is None
    with pytest.raises(AccountError, match="role"):
        s.add_user("bob", "admin", PASSWORD)
    with pytest.raises(AccountError, match="name"):
        s.add_user("bob smith", "viewer", PASSWORD)
