"""The pass of one export over the studies: which are new, and what the batch does with each.

First :func:`anything_new` looks for one study that is not settled (:func:`.decision.settled`):
with the source's versions it reads only those and export state; without, the records (no
evaluation). When every study is settled the export has nothing new and stops there.

Otherwise :class:`Scan` reads every record once: evaluates it (the report covers every
study), decides (:func:`.decision.decide`), hands it to the batch writer (report, and the
registry files when it goes to the registry), writes its billing row when billing gets one,
and records the batch's members and the settled studies in export state as it goes, a
thousand at a time, so memory does not grow with the catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dosereg.extract import StudyRecord

from . import legacy
from .batch_writer import StudyWriter
from .batches import member_info
from .decision import REGISTRY_CODE, Decision, decide, settled
from .fingerprint import content_fingerprint, flags_key, input_key
from .rules import Rules, evaluate, study_dict
from .source import StudySource, VersionCursor, versions_of
from .state import Evaluated, ExportState, Member, StudyLookup, StudyState
from .writers import flags_row

FLUSH_EVERY = 1000  # members and settled studies recorded per statement


@dataclass
class Counts:
    """What the pass found (the batch's summary)."""

    studies_seen: int = 0
    registry_studies: int = 0
    registry_resubmitted: int = 0
    registry_events: int = 0
    flag_rows: int = 0
    skipped_no_uid: int = 0
    already_submitted: int = 0

    @property
    def nothing_new(self) -> bool:
        return self.registry_studies == 0 and self.flag_rows == 0


def anything_new(source: StudySource, lookup: Callable[[], StudyLookup], rules_key: str) -> Counts | None:
    """None when some study is not settled (the export must evaluate); else the counts of a
    pass that found nothing new. With the source's versions no record is read."""
    versions = versions_of(source)
    with lookup() as known:
        if versions is not None:
            return _all_settled(((uid, None, version) for uid, version in versions()), known, rules_key)
        return _all_settled(_input_keys(source, rules_key), known, rules_key)


def _input_keys(source: StudySource, rules_key: str) -> Iterator[tuple[str | None, str | None, None]]:
    """(uid, input key, no version) of every record of ``source``."""
    for record in source.records():
        d = record.to_dict()
        uid = d.get("study_instance_uid")
        yield uid, input_key(d, rules_key) if uid else None, None


def _all_settled(studies: Iterable[tuple[str | None, str | None, str | None]], known: StudyLookup,
                 rules_key: str) -> Counts | None:
    """The counts when every (uid, input key, version) is settled, else None (at the first that is not)."""
    counts = Counts()
    for uid, ikey, version in studies:
        counts.studies_seen += 1
        if not uid:
            counts.skipped_no_uid += 1  # never sent: nothing new either way
            continue
        state = known.get(uid)
        if state is None or not settled(state, rules_key, input_key=ikey, source_version=version):
            return None
        counts.already_submitted += state.evaluated.last_code == REGISTRY_CODE
    return counts


@dataclass
class Scan:
    """One pass over every record of ``source``, feeding ``writer`` and recording in ``state``
    (None: a preview, which records nothing). Billing rows are kept with the members and
    written when the batch is acknowledged (:mod:`.billing`); ``blocked`` studies (of an
    unfinished batch, or held) are reported on but not offered."""

    rules: Rules
    rules_key: str
    batch_id: str
    writer: StudyWriter
    flags_dir: Path
    state: ExportState | None
    blocked: frozenset[str] = frozenset()
    counts: Counts = field(default_factory=Counts, init=False)
    _members: list[Member] = field(default_factory=list, init=False)
    _settled: list[tuple[str, Evaluated]] = field(default_factory=list, init=False)

    def run(self, source: StudySource, lookup: Callable[[], StudyLookup]) -> Counts:
        versions = versions_of(source)
        cursor = VersionCursor(versions() if versions is not None else ())
        with lookup() as known:
            for record in source.records():
                self._study(record, known, cursor)
        self._flush()
        return self.counts

    def _study(self, record: StudyRecord, known: StudyLookup, cursor: VersionCursor) -> None:
        counts = self.counts
        counts.studies_seen += 1
        uid = record.study_instance_uid
        # what the study is evaluated with: the source's version of it or, without one, the
        # record itself (its input key)
        version = cursor.get(uid) if uid else None
        ikey = input_key(record.to_dict(), self.rules_key) if uid and version is None else None
        evaluation = evaluate(record, self.rules)
        if not uid:
            counts.skipped_no_uid += 1
            self.writer.add(record, evaluation, False)
            return
        d = study_dict(record, evaluation)
        fp = content_fingerprint(d)
        row = flags_row(d)
        fkey = flags_key(row)
        code = (d.get("flags") or {}).get("registry_code")
        state = legacy.in_current_form(known.get(uid), d, fp)
        decision = decide(code, fp, fkey, state)
        if decision.sends and uid in self.blocked:  # in an unfinished batch, or held: not offered now
            self.writer.add(record, evaluation, False)
            return
        self.writer.add(record, evaluation, decision.to_registry, d)
        evaluated = Evaluated(ikey, code, version, self.rules_key)
        self._count(decision, len(record.events or ()))
        info = member_info(d, row) if decision.sends and self.state is not None else None
        self._record(uid, decision, fp, fkey, evaluated, state, info)

    def _count(self, decision: Decision, events: int) -> None:
        counts = self.counts
        counts.already_submitted += decision.already_submitted
        if decision.to_registry:
            counts.registry_studies += 1
            counts.registry_events += events
            counts.registry_resubmitted += decision.resubmission
        counts.flag_rows += decision.to_flags

    def _record(self, uid: str, decision: Decision, fp: str, fkey: str, evaluated: Evaluated,
                state: StudyState | None, info: str | None) -> None:
        if self.state is None:
            return
        if decision.sends:
            self._members.append(Member(uid, decision.to_registry, decision.to_flags,
                                        fp if decision.to_registry else None,
                                        fkey if decision.to_flags else None, evaluated, info))
        elif state is not None and state.evaluated != evaluated:
            self._settled.append((uid, evaluated))
        if len(self._members) >= FLUSH_EVERY or len(self._settled) >= FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if self.state is not None:
            if self._members:
                self.state.add_members(self.batch_id, self._members)
            if self._settled:
                self.state.settle(self._settled)
        self._members, self._settled = [], []

