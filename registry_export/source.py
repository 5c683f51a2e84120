"""What an export reads: the studies of the catalog, and, when the catalog can say, their versions.

A :class:`StudySource` has ``records()``: every study record, in study UID order (the
catalog's order). It may also have ``versions()``: (study UID, version key) of every study in
the same order, read without decoding the records, where the version key changes whenever the
study's record does. With versions, an export with nothing new decides so from the versions and
export state alone, decoding no record; without, it reads the records (docs/lifecycle.md).

``versions()`` and ``records()`` must describe the same state of the catalog (one read
transaction, or versions read before records): a version recorded with a newer record than
it names would only cost an evaluation, but one recorded with an older record would hide a
change until the study changes again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

from dosereg.extract import StudyRecord


@runtime_checkable
class StudySource(Protocol):
    def records(self) -> Iterable[StudyRecord]: ...


@runtime_checkable
class VersionedSource(StudySource, Protocol):
    def versions(self) -> Iterable[tuple[str, str]]: ...


class RecordsSource:
    """A source from a function giving the records (``catalog.iter_studies``, a test's list)."""

    def __init__(self, records: Callable[[], Iterable[StudyRecord]]) -> None:
        self._records = records

    def records(self) -> Iterable[StudyRecord]:
        return self._records()


class CatalogSource:
    """A catalog as a source: ``iter_studies()``, and ``study_versions()`` when it has them."""

    def __init__(self, catalog: Any) -> None:
        self._catalog = catalog
        if hasattr(catalog, "study_versions"):
            self.versions = catalog.study_versions  # an instance attribute: VersionedSource

    def records(self) -> Iterable[StudyRecord]:
        return self._catalog.iter_studies()  # type: ignore[no-any-return]


def as_source(source: StudySource | Callable[[], Iterable[StudyRecord]]) -> StudySource:
    """``source`` itself, or a function giving the records as a :class:`RecordsSource`."""
    if isinstance(source, StudySource):
        return source
    return RecordsSource(source)


def versions_of(source: StudySource) -> Callable[[], Iterable[tuple[str, str]]] | None:
    """The source's ``versions`` method, or None when it has none."""
    versions = getattr(source, "versions", None)
    return versions if callable(versions) else None


class VersionCursor:
    """The version of each study asked for in study UID order, read along ``versions`` (one
    forward pass: memory does not grow with the catalog). A UID asked for out of order, or
    that ``versions`` does not list, has no version (its record alone decides)."""

    def __init__(self, versions: Iterable[tuple[str, str]]) -> None:
        self._it: Iterator[tuple[str, str]] = iter(versions)
        self._at: tuple[str, str] | None = next(self._it, None)
        self._last = ""

    def get(self, uid: str) -> str | None:
        if uid < self._last:
            return None
        self._last = uid
        while self._at is not None and self._at[0] < uid:
            self._at = next(self._it, None)
        return self._at[1] if self._at is not None and self._at[0] == uid else None
