"""The workbench's seam to the batch lifecycle: what the pages and the API hand to a
:class:`dosereg.web.Batches` / :class:`dosereg.web.Flags` (a recording fake here; the lifecycle's
own functions once wired), in process through Starlette's test client."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dosereg.conf.config import load_config
from dosereg.ingest import open_catalog
from dosereg.web import ActionRefused, Store, create_app
from tests.synthetic import study_uid, synthetic_study

if TYPE_CHECKING:
    from starlette.testclient import TestClient

PASSWORD = "correct horse battery staple"


class FakeLifecycle:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def all(self) -> list[dict[str, Any]]:
        return [{"batch_id": "20260101T000000Z-0001", "state": "pending_review", "created_at": "2026-01-01T00:00:00Z",
                 "counts": {"G9327": 2, "G9326": 1, "excluded": 0, "held": 0}, "approved_by": None}]

    def review(self, batch_id: str) -> list[dict[str, Any]]:
        return [{"study_instance_uid": study_uid(i), "accession_number": f"ACC{i}", "registry_code": "G9327",
                 "nomenclature_code": "G9318", "reasons": [], "held": False, "changes": None} for i in (1, 2)]

    def of_study(self, study_uid: str) -> list[dict[str, Any]]:
        return [{"batch_id": "20260101T000000Z-0001", "state": "pending_review"}]

    def approve(self, batch_id: str, by: str, comment: str | None) -> None:
        self.calls.append(("approve", batch_id, by, comment))

    def hold(self, batch_id: str, study_uids: Sequence[str], by: str, reason: str) -> None:
        self.calls.append(("hold", batch_id, tuple(study_uids), by, reason))

    def release(self, study_uids: Sequence[str], by: str) -> None:
        self.calls.append(("release", tuple(study_uids), by))

    def reject(self, batch_id: str, by: str, reason: str) -> None:
        if batch_id == "done":
            raise ActionRefused("batch done is acknowledged: it cannot be rejected")
        self.calls.append(("reject", batch_id, by, reason))

    def since(self, when: str | None) -> list[dict[str, Any]]:
        self.calls.append(("since", when))
        return [{"batch_id": "b", "study_instance_uid": study_uid(1), "code": "G9327",
                 "written_at": "2026-01-02T00:00:00Z"}]


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[tuple[TestClient, FakeLifecycle, Store]]:
    cfg = load_config(None, data_dir=str(tmp_path / "data"))
    cat = open_catalog(cfg)
    try:
        cat.add_objects([synthetic_study(i) for i in range(4)])
    finally:
        cat.close()
    store = Store(cfg.data_dir)
    store.add_user("phys", "physicist", PASSWORD)
    store.add_user("bill", "billing", PASSWORD)
    from starlette.testclient import TestClient

    fake = FakeLifecycle()
    with TestClient(create_app(cfg, batches=fake, flags=fake), follow_redirects=False) as client:
        yield client, fake, store
    store.close()


def _login(c: TestClient, name: str) -> str:
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text)
    assert token
    assert c.post("/login", data={"csrf": token.group(1), "name": name, "password": PASSWORD}).status_code == 303
    page = c.get("/batches")
    m = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert m
    return m.group(1)


def test_review_queue_and_actions_reach_the_lifecycle(app: tuple[TestClient, FakeLifecycle, Store]) -> None:
    c, fake, store = app
    csrf = _login(c, "phys")
    page = c.get("/batches")
    assert page.status_code == 200 and "Review 20260101T000000Z-0001" in page.text and "ACC1" in page.text
    assert study_uid(1) not in re.findall(r'value="([^"]*)"', page.text)  # studies go by key in the form
    keys = re.findall(r'name="study" value="([0-9a-f]{32})"', page.text)
    assert len(keys) == 2
    batch = "20260101T000000Z-0001"
    assert c.post("/batches/action", data={"csrf": csrf, "action": "approve", "batch_id": batch,
                                           "comment": "checked"}).status_code == 200
    assert c.post("/batches/action", data={"csrf": csrf, "action": "hold", "batch_id": batch, "study": keys[0],
                                           "comment": "wrong protocol"}).status_code == 200
    assert c.post("/batches/action", data={"csrf": csrf, "action": "release", "batch_id": batch,
                                           "study": keys[0]}).status_code == 200
    assert c.post("/batches/action", data={"csrf": csrf, "action": "reject", "batch_id": batch,
                                           "comment": "profile was wrong"}).status_code == 200
    assert c.post("/batches/action", data={"csrf": csrf, "action": "reject", "batch_id": batch}).status_code == 409
    refused = c.post("/batches/action", data={"csrf": csrf, "action": "reject", "batch_id": "done", "comment": "x"})
    assert refused.status_code == 409 and "cannot be rejected" in refused.text
    assert fake.calls == [
        ("approve", batch, "phys", "checked"),
        ("hold", batch, (study_uid(1),), "phys", "wrong protocol"),
        ("release", (study_uid(1),), "phys"),
        ("reject", batch, "phys", "profile was wrong"),
    ]
    actions = [(r["action"], r["actor"], r["target"]) for r in store.audit_rows() if r["action"] in
               ("approve", "hold", "release", "reject")]
    assert actions == [("approve", "phys", batch), ("hold", "phys", batch), ("release", "phys", batch),
                       ("reject", "phys", batch)]
    assert c.get("/api/batches").json()["batches"][0]["state"] == "pending_review"
    study = c.get(f"/studies/{keys[0]}")
    assert study.status_code == 200 and "20260101T000000Z-0001: pending_review" in study.text


def test_flags_pick_up(app: tuple[TestClient, FakeLifecycle, Store]) -> None:
    c, fake, store = app
    _login(c, "bill")
    r = c.get("/api/flags", params={"since": "2026-01-01T00:00:00Z"})
    assert r.status_code == 200 and r.json()["flags"][0]["written_at"] == "2026-01-02T00:00:00Z"
    csv_text = c.get("/api/flags", headers={"Accept": "text/csv"}).text.splitlines()
    assert csv_text[0] == "batch_id,study_instance_uid,code,written_at" and len(csv_text) == 2
    assert fake.calls == [("since", "2026-01-01T00:00:00Z"), ("since", None)]
    picks = [r for r in store.audit_rows() if r["action"] == "flags pick-up"]
    assert [(p["actor"], p["detail"]) for p in picks] == [("bill", "1 rows"), ("bill", "1 rows")]
    assert c.post("/batches/action", data={"action": "approve", "batch_id": "x"}).status_code == 403


def test_every_route_states_its_role() -> None:
    """The spec's table: viewer reads, billing also reads flags, physicist also acts on batches."""
    from starlette.routing import Route

    from dosereg.web import routes

    roles = {r.path: getattr(r.endpoint, "required_role", None) for r in routes() if isinstance(r, Route)}
    assert roles.pop("/login") is None and roles.pop("/static/plotly.min.js") is None
    assert roles.pop("/batches/action") == "physicist"
    assert roles.pop("/api/flags") == "billing"
    assert set(roles.values()) == {"viewer"}, roles
