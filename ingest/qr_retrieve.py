"""Which objects of a study are dose objects, and fetching them through the ingest path.

Dose objects are the SR instances of the storage classes dosereg takes in, and Philips dose
screens: Secondary Capture instances whose series description or image type names a dose
screen. No other image is ever asked for (a CT series' images are not even listed, unless the
series is small enough to be a screen series).

* C-GET (``pacs.retrieve = "c-get"``, the default): the PACS sends the objects back on the
  query association; each C-STORE sub-operation is taken in by :func:`.cstore.take_in` exactly
  as the listener takes one in (checked, spooled, fsync'ed, noted) and processed here, as
  ``dosereg import`` processes what it takes in (claimed until catalogued).
* C-MOVE: the PACS sends them to the listener's AE title, where ``dosereg listen`` takes them
  in; this waits (up to ``pacs.timeout_s`` after the C-MOVE ends) until they are catalogued.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from .catalog import Catalog
from .classes import ACCEPTED_SOP_CLASSES
from .cstore import take_in
from .importer import _process_retrying
from .pipeline import Pipeline, TransientError
from .qr_find import Instance, Series
from .qr_session import Session

log = logging.getLogger("dosereg.ingest.reconcile")

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASSES = frozenset(c for c in ACCEPTED_SOP_CLASSES if c != SECONDARY_CAPTURE)
#: a series description naming a dose screen (Philips "Dose Info"; "Dose Report", "Patient Protocol"
#: screens of other vendors are SC too, but only Philips' are read: docs/study-record.md)
DOSE_SCREEN = re.compile(r"\bdose[ _]?(info|report|screen|summary)\b|\bradiation dose\b", re.IGNORECASE)
#: a series of at most this many instances may be a screen series whatever its description says
SMALL_SERIES = 3


def names_dose_screen(series_description: str, image_type: Iterable[str] = ()) -> bool:
    return bool(DOSE_SCREEN.search(series_description)) or any("DOSE" in v.upper() for v in image_type)


def worth_listing(series: Series) -> bool:
    """Whether the series may hold a dose object, so that its instances are asked for."""
    if series.modality == "SR" or names_dose_screen(series.series_description):
        return True
    return series.modality in ("OT", "SC") or (series.instances is not None and series.instances <= SMALL_SERIES)


def is_dose_object(series: Series, instance: Instance) -> bool:
    """An SR of a class dosereg takes in, or a Secondary Capture dose screen; never another image."""
    sop_class = instance.sop_class_uid
    if series.modality == "SR":
        return sop_class is None or sop_class in SR_CLASSES
    if sop_class == SECONDARY_CAPTURE:
        return names_dose_screen(series.series_description, instance.image_type)
    if sop_class is None:  # the PACS did not say: only what the description names a dose screen
        return bool(DOSE_SCREEN.search(series.series_description))
    return sop_class in SR_CLASSES


@dataclass
class Fetched:
    """What one retrieval (one study's dose objects) gave."""

    new: int = 0  # catalogued now (new or replacing)
    known: int = 0  # the same bytes were already kept
    quarantined: int = 0
    failures: list[str] = field(default_factory=list)


def _query(level: str, study_uid: str, series_uid: str, sop_uids: list[str] | None) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = level
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = series_uid
    if sop_uids is not None:
        q.SOPInstanceUID = sop_uids[0] if len(sop_uids) == 1 else sop_uids
    return q


def _final_problem(status: Dataset | None, what: str) -> str | None:
    """The failure (or warning) a C-GET/C-MOVE ended with, in words; None for Success."""
    if status is None:
        return f"{what}: no final status"
    code = int(status.Status)
    if code == 0x0000:
        return None
    failed = status.get("NumberOfFailedSuboperations")
    comment = str(status.get("ErrorComment", "") or "")
    detail = f", {failed} sub-operation(s) failed" if failed else ""
    return f"{what}: status 0x{code:04X}{detail}" + (f" ({comment})" if comment else "")


class Retriever:
    """Fetches dose objects of studies into the catalog, by C-GET or C-MOVE."""

    def __init__(self, session: Session | None, pipeline: Pipeline, catalog: Catalog, method: str,
                 move_destination: str = "", wait_s: float = 60.0) -> None:
        self.session = session
        self.pipeline = pipeline
        self.catalog = catalog
        self.method = method
        self.move_destination = move_destination
        self.wait_s = wait_s
        self._current = Fetched()
        self._lock = threading.Lock()

    def on_store(self, event: Any) -> Any:
        """A C-STORE sub-operation of a C-GET: taken in like the listener's, processed here."""
        status, item = take_in(self.pipeline, event, state="importing")
        if item is None:
            return status
        try:
            outcome = _process_retrying(self.pipeline, item, None, None)
        except TransientError as exc:
            # spooled and noted: the next listen, import or reconcile processes it
            log.error("%s: cannot catalog it now (%s); it stays in %s", item.name, exc, self.pipeline.spool_dir)
            outcome = "transient"
        finally:
            self.pipeline.release(item)
        with self._lock:
            if outcome in ("new", "replaced"):
                self._current.new += 1
            elif outcome.startswith("quarantined:"):
                self._current.quarantined += 1
            else:
                self._current.known += 1
        return status

    def fetch(self, study_uid: str, wanted: list[tuple[Series, list[str], bool]]) -> Fetched:
        """Retrieve ``wanted``: (series, SOP Instance UIDs, whether they are the whole series)."""
        assert self.session is not None
        self._current = Fetched()
        for series, sop_uids, whole in wanted:
            if not sop_uids:
                continue
            if whole:
                self._one(_query("SERIES", study_uid, series.series_instance_uid, None), sop_uids)
            else:
                for uid in sop_uids:
                    self._one(_query("IMAGE", study_uid, series.series_instance_uid, [uid]), [uid])
        return self._current

    def _one(self, query: Dataset, sop_uids: list[str]) -> None:
        assert self.session is not None
        what = f"C-{self.method[2:].upper()} of series {query.SeriesInstanceUID}"
        final = None
        if self.method == "c-get":
            for status, _identifier in self.session.get(query):
                final = status
        else:
            for status, _identifier in self.session.move(query, self.move_destination):
                final = status
        problem = _final_problem(final, what)
        if problem:
            log.warning("%s", problem)
            self._current.failures.append(problem)
        if self.method == "c-move":
            self._await_moved(sop_uids)

    def _await_moved(self, sop_uids: list[str]) -> None:
        """Until the listener has catalogued (or quarantined) the objects moved, or ``wait_s``."""
        deadline = time.monotonic() + self.wait_s
        pending = set(sop_uids)
        while True:
            settled = self.catalog.held_instances(pending, in_flight=False)
            self._current.new += len(settled)
            pending -= settled
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if pending:
            self._current.failures.append(
                f"{len(pending)} object(s) moved to {self.move_destination} not catalogued within "
                f"{self.wait_s:g} s (is `dosereg listen` processing?)")


__all__ = ["DOSE_SCREEN", "Fetched", "Retriever", "is_dose_object", "names_dose_screen", "worth_listing"]
