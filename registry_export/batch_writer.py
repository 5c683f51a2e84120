"""What a batch writes from its evaluated studies besides the billing flags: the completeness
report (every study) and the registry data files (the studies to submit).

The export calls :meth:`~BatchWriter.add` for every evaluated study, then
:meth:`~BatchWriter.finish` once (or :meth:`~BatchWriter.abort` when it gives the batch up).
:class:`BatchWriter` does the work in the calling process; :mod:`.writer_process` runs it in a
second process for large batches, behind the same three methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dosereg.conf.config import Config
from dosereg.extract import StudyRecord

from .deid import Pseudonymizer
from .registry_files import RegistryFiles
from .rules import Evaluation, study_dict


@dataclass(frozen=True)
class ReportTarget:
    folder: Path
    stem: str  # the files' name without suffix: completeness-<batch_id>
    batch_id: str


@dataclass(frozen=True)
class Written:
    registry_rows: dict[str, int] | None  # rows per registry data file; None: no study submitted, no file
    report_paths: list[Path]


class StudyWriter(Protocol):
    """What the export feeds its evaluated studies to (:class:`BatchWriter`, or
    :func:`.writer_process.open_writer`'s)."""

    def add(self, record: StudyRecord, evaluation: Evaluation, to_registry: bool,
            d: dict[str, Any] | None = None) -> None: ...

    def finish(self, report_to: ReportTarget | None) -> Written: ...

    def abort(self) -> None: ...


class BatchWriter:
    """The report and the registry files of one batch, written in this process."""

    def __init__(self, cfg: Config, registry_folder: Path, header: dict[str, Any], pseudo: Pseudonymizer,
                 reported: Mapping[str, tuple[str, str | None]] | None = None) -> None:
        from .report import ReportBuilder

        self.report = ReportBuilder(cfg, reported)
        self.registry = RegistryFiles(registry_folder, header, pseudo)

    def add(self, record: StudyRecord, evaluation: Evaluation, to_registry: bool,
            d: dict[str, Any] | None = None) -> None:
        """One evaluated study (``d``: its JSON study record, :func:`.rules.study_dict`, made here
        when not given and the study goes to the registry)."""
        self.report.add_evaluated(record, evaluation)
        if to_registry:
            self.registry.add(d if d is not None else study_dict(record, evaluation), record.events)

    def finish(self, report_to: ReportTarget | None) -> Written:
        """Close the registry files and write the report into ``report_to`` (None: no report)."""
        rows = self.registry.close()
        paths = self.report.write(report_to.folder, report_to.stem, batch_id=report_to.batch_id) \
            if report_to is not None else []
        return Written(rows, paths)

    def abort(self) -> None:
        """Nothing to stop: the files are left to the staging folder's removal."""
