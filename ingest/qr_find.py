"""C-FIND against the PACS (Study Root Query/Retrieve Information Model, PS3.4 Annex C).

* :func:`ct_studies` -- the CT studies of a day, study level with ModalitiesInStudy (0008,0061)
  = CT. A PACS that does not match on ModalitiesInStudy either returns it (then it is
  filtered here) or leaves it empty (then the study's series are asked for, Modality = CT: the
  series-level fallback), and one that refuses the key is asked again without it. A day whose
  answer reaches ``pacs.max_results``, or that the PACS reports as cut short (a failure or
  cancel status after matches), is split in halves by Study Time (0008,0030) until each
  part is answered whole: a result limit never truncates silently.
* :func:`study_series` / :func:`series_instances` -- series and instances of one study.

Answers are read one at a time and kept as small tuples (:class:`Study`, :class:`Series`,
:class:`Instance`), never as datasets: a day of a busy archive costs a few hundred bytes per study.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from pydicom.dataset import Dataset

from .qr_session import QueryError, Session

log = logging.getLogger("dosereg.ingest.reconcile")

#: C-FIND statuses (PS3.4 C.4.1.1.4): pending, with and without unsupported optional keys
_PENDING = (0xFF00, 0xFF01)
#: statuses that end a C-FIND with the answers given so far being only part of the matches
_CUT_SHORT = (0xA700, 0xFE00, 0xB000)
#: Study Time ranges narrower than this are not split further (seconds)
_MIN_SPLIT_S = 60


@dataclass(frozen=True)
class Study:
    """What the study-level answer says of one CT study."""

    study_instance_uid: str
    accession_number: str | None
    study_date: str | None  # YYYYMMDD as the PACS gives it
    study_time: str | None
    study_description: str | None
    patient_id: str | None


@dataclass(frozen=True)
class Series:
    series_instance_uid: str
    modality: str
    series_description: str
    station_name: str | None
    instances: int | None  # Number of Series Related Instances, when the PACS says


@dataclass(frozen=True)
class Instance:
    sop_instance_uid: str
    sop_class_uid: str | None
    image_type: tuple[str, ...]


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
        return tuple(str(v).strip().upper() for v in value)
    return tuple(v.strip().upper() for v in str(value).split("\\"))


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


class _Answer:
    """The matches of one C-FIND (each as ``convert`` made it) and how it ended."""

    def __init__(self) -> None:
        self.matches: list[Any] = []
        self.status: int | None = None
        self.comment = ""

    @property
    def cut_short(self) -> bool:
        return self.status in _CUT_SHORT and bool(self.matches)


def _find(session: Session, query: Dataset, convert: Any = None) -> _Answer:
    """One C-FIND, each match turned into what is kept of it by ``convert`` as it arrives."""
    answer = _Answer()
    for status, identifier in session.find(query):
        code = int(status.Status)
        if code in _PENDING:
            if identifier is not None:
                answer.matches.append(identifier if convert is None else convert(identifier))
            continue
        answer.status = code
        answer.comment = str(status.get("ErrorComment", "") or "")
    return answer


def _study_query(day: str, time_range: str | None, with_modalities: bool) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    q.StudyDate = day
    q.StudyTime = time_range or ""
    q.AccessionNumber = ""
    q.StudyDescription = ""
    q.PatientID = ""
    q.ModalitiesInStudy = "CT" if with_modalities else ""
    return q


def _study_of(ds: Dataset) -> tuple[Study, tuple[str, ...]] | None:
    """What is kept of a study-level match: the study and its modalities (None without a UID)."""
    uid = _text(ds, "StudyInstanceUID")
    if not uid:
        return None
    return (Study(uid, _text(ds, "AccessionNumber"), _text(ds, "StudyDate"), _text(ds, "StudyTime"),
                  _text(ds, "StudyDescription"), _text(ds, "PatientID")), _values(ds, "ModalitiesInStudy"))


class StudyFinder:
    """The CT studies of each day asked for, one C-FIND (or a few, when split) per day."""

    def __init__(self, session: Session, max_results: int = 0) -> None:
        self.session = session
        self.max_results = max_results
        self.modalities_key = True  # cleared once the PACS refuses ModalitiesInStudy
        self.warnings: list[str] = []

    def ct_studies(self, day: str) -> Iterator[Study]:
        """The CT studies of ``day`` (YYYYMMDD), each once."""
        seen: set[str] = set()
        for match in self._range(day, 0, 24 * 3600 - 1):
            if match is None:
                continue
            study, modalities = match
            if study.study_date is None:
                study = replace(study, study_date=day)
            if study.study_instance_uid in seen:
                continue
            seen.add(study.study_instance_uid)
            if self._is_ct(modalities, study.study_instance_uid):
                yield study

    def _range(self, day: str, start: int, end: int) -> Iterator[tuple[Study, tuple[str, ...]] | None]:
        """The study-level matches of ``day`` between ``start`` and ``end`` (seconds of the day)."""
        whole = start == 0 and end == 24 * 3600 - 1
        time_range = None if whole else f"{_hms(start)}-{_hms(end)}"
        answer = self._ask(day, time_range)
        if answer.status in (0xA900, 0xC000) and self.modalities_key and not answer.matches:
            log.warning("the PACS refuses ModalitiesInStudy in a study-level C-FIND (status 0x%04X): "
                        "asking for every study and checking the series' modalities", answer.status)
            self.modalities_key = False
            answer = self._ask(day, time_range)
        if answer.status not in (0x0000, None) and not answer.cut_short:
            raise QueryError(f"C-FIND of the studies of {day} {time_range or ''}".rstrip()
                             + f": status 0x{answer.status:04X} {answer.comment}".rstrip())
        full = self.max_results > 0 and len(answer.matches) >= self.max_results
        if not (full or answer.cut_short):
            yield from answer.matches
            return
        matches = len(answer.matches)
        del answer
        if end - start < _MIN_SPLIT_S:
            message = (f"{day} {time_range}: {matches} studies answered within one minute and the PACS "
                       "may have more (pacs.max_results); some may be missing")
            log.warning("%s", message)
            self.warnings.append(message)
            yield from self._ask(day, time_range).matches
            return
        log.info("%s %s: %d answers reach the PACS's limit; asking for each half", day, time_range or "", matches)
        middle = (start + end) // 2
        yield from self._range(day, start, middle)
        yield from self._range(day, middle + 1, end)

    def _ask(self, day: str, time_range: str | None) -> _Answer:
        return _find(self.session, _study_query(day, time_range, self.modalities_key), _study_of)

    def _is_ct(self, modalities: tuple[str, ...], uid: str) -> bool:
        if modalities:
            return "CT" in modalities
        # the PACS did not say: ask for the study's CT series (the series-level fallback)
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = uid
        q.SeriesInstanceUID = ""
        q.Modality = "CT"
        answer = _find(self.session, q)
        return any(_text(m, "Modality") in (None, "CT") for m in answer.matches)


def study_series(session: Session, study_uid: str) -> tuple[list[Series], int | None, str]:
    """Every series of the study; with the final status and its comment (a failure: no series)."""
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = ""
    q.Modality = ""
    q.SeriesDescription = ""
    q.StationName = ""
    q.NumberOfSeriesRelatedInstances = ""
    answer = _find(session, q)
    out = []
    for m in answer.matches:
        uid = _text(m, "SeriesInstanceUID")
        if uid:
            n: Any = m.get("NumberOfSeriesRelatedInstances")
            out.append(Series(uid, (_text(m, "Modality") or "").upper(), _text(m, "SeriesDescription") or "",
                              _text(m, "StationName"), int(n) if n not in (None, "") else None))
    return out, answer.status, answer.comment


def series_instances(session: Session, study_uid: str, series_uid: str) -> tuple[list[Instance], int | None, str]:
    """Every instance of one series (SOP Instance and Class UID, Image Type), with the final status."""
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = study_uid
    q.SeriesInstanceUID = series_uid
    q.SOPInstanceUID = ""
    q.SOPClassUID = ""
    q.ImageType = ""
    answer = _find(session, q)
    out = [Instance(uid, _text(m, "SOPClassUID"), _values(m, "ImageType"))
           for m in answer.matches if (uid := _text(m, "SOPInstanceUID"))]
    return out, answer.status, answer.comment


__all__ = ["Instance", "Series", "Study", "StudyFinder", "series_instances", "study_series"]
