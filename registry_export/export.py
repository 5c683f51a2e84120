"""``dosereg export``: the registry submission batch, the billing flags and the report.

One pass over the catalog's studies, in constant memory: each study is evaluated with the
configured rules, fed to the completeness report and, when it is new or changed since
the last batch, written out:

* to the registry (``registry/<facility_id>/<batch_id>/``: ``studies.parquet``,
  ``events.parquet``, ``submission.json``, ``manifest.json``) when its registry code is
  ``G9327`` and its content fingerprint differs from the one last submitted (never
  submitted, or it gained a dose object since: submitted again under the same
  pseudonymous UID);
* to billing (``flags/<batch_id>.csv`` and ``.parquet``) when its flags row differs from
  the one billing last got in what billing acts on: registry and nomenclature codes,
  accession number, study UID, patient ID and date (a reworded reason alone is not news);
* ``reports/completeness-<batch_id>.html`` and ``.csv`` cover every study of the catalog.

Everything is written under a staging folder ``.staging-<batch_id>`` in the output folder
and renamed into place only when complete; the export state
(``<data_dir>/export-state.sqlite``) is committed after that. An export with nothing new
writes nothing at all -- no empty batch -- and says so (``dosereg report`` still writes
the completeness report on demand). Parts of a batch with no rows are left out: a batch
whose studies are all ``G9326`` or ``excluded`` has flags and a report but no registry
folder, and a batch that only re-submits changed studies whose flags did not change has
no flags files.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import multiprocessing
import os
import pickle
import re
import shutil
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dosereg.config import Config
from dosereg.extract import Event, StudyRecord

from . import dosimetry
from .deid import Pseudonymizer, deidentify_study
from .report import scanner_label
from .rules import Rules, evaluated_dict, rules_from_config, with_verdicts
from .state import ExportState, StudyState, state_path

log = logging.getLogger("dosereg.export")

SUBMISSION_SCHEMA_ID = "dosereg.submission/1"
MANIFEST_SCHEMA_ID = "dosereg.manifest/1"
STAGING_PREFIX = ".staging-"
_STAGING_NAME = re.compile(r"^\.staging-\d{8}T\d{6}Z-\d{4,}$")

# Derived from the record by the rules (not part of its content) or volatile.
_NOT_CONTENT = frozenset({"completeness", "classification", "flags", "export", "source_file"})


# -- helpers ------------------------------------------------------------------------------

def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def iso_utc(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


FINGERPRINT_PREFIX = "p1:"  # fingerprints of earlier versions are 32 hex digits without a prefix


def _content(d: dict[str, Any]) -> dict[str, Any]:
    core = {k: v for k, v in d.items() if k not in _NOT_CONTENT}
    core["dose_objects"] = [
        {k: v for k, v in o.items() if k != "received_at"} for o in d.get("dose_objects") or ()
    ]
    return core


def content_fingerprint(d: dict[str, Any]) -> str:
    """Hash of what the study record says (not the verdicts, not when objects arrived).

    The record's values serialised with pickle without its memo (so the bytes depend on the
    values only, not on which objects happen to be shared), which is several times faster
    than JSON; field order is fixed by the record model, so no key sorting is needed.
    """
    return FINGERPRINT_PREFIX + hashlib.sha256(_value_bytes(_content(d))).hexdigest()[:32]


def _json_content(core: dict[str, Any]) -> str:
    return json.dumps(core, ensure_ascii=False, default=str, separators=(",", ":"), check_circular=False)


def legacy_fingerprint(d: dict[str, Any]) -> str:
    """The fingerprint earlier versions stored (JSON of the content), to recognise their submissions."""
    return hashlib.sha256(_json_content(_content(d)).encode("utf-8")).hexdigest()[:32]


def same_content(stored: str | None, fingerprint: str, d: dict[str, Any]) -> bool:
    """Whether the stored registry fingerprint is this content's (in either format)."""
    if stored is None:
        return False
    if stored.startswith(FINGERPRINT_PREFIX):
        return stored == fingerprint
    return stored == legacy_fingerprint(d)


def rules_key(rules: Rules) -> str:
    """What evaluating a record depends on besides the record: the loaded profile, nomenclature
    table and classification settings, and the code that evaluates (rules, dosimetry, model)."""
    from dosereg.extract import model

    from . import rules as rules_module

    h = hashlib.sha256()
    for module in (rules_module, dosimetry, model):
        h.update(Path(str(module.__file__)).read_bytes())
    p, nom = rules.profile, rules.nomenclature
    h.update(repr((p.name, p.version, p.required, p.recommended, sorted(nom.entries.items()),
                   nom.playbook_schemes, nom.path.name, rules.non_patient, rules.rt_planning)).encode("utf-8"))
    return h.hexdigest()[:32]


_SUBMITTED = ":G9327"  # on a study's stored input key: its code was G9327 (already submitted since)


def input_key(d: dict[str, Any], rules_key: str) -> str:
    """Key of everything an evaluation of the record ``d`` (= ``record.to_dict()``) sees."""
    return hashlib.sha256(rules_key.encode("ascii") + _value_bytes(d)).hexdigest()[:32]


def _value_bytes(value: Any) -> bytes:
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=5)
    pickler.fast = True  # no memo: equal values give equal bytes
    try:
        pickler.dump(value)
        return buf.getvalue()
    except (pickle.PicklingError, TypeError, AttributeError, ValueError):
        return _json_content(value).encode("utf-8")


def flags_row(d: dict[str, Any]) -> dict[str, Any]:
    """The billing row of an evaluated study (spec section 5's columns, reasons in words)."""
    flags = d.get("flags") or {}
    reasons = [*(flags.get("registry_reasons") or ()), *(flags.get("nomenclature_reasons") or ())]
    return {
        "accession_number": d.get("accession_number"),
        "study_instance_uid": d.get("study_instance_uid"),
        "patient_id": (d.get("patient") or {}).get("id"),
        "study_date": d.get("study_date"),
        "registry_code": flags.get("registry_code"),
        "nomenclature_code": flags.get("nomenclature_code"),
        "reasons": "; ".join(str(r) for r in reasons),
    }


def _row_key(row: dict[str, Any]) -> str:
    """What billing acts on: the codes and the keys they are filed under (not the wording of reasons)."""
    blob = "\x1f".join("\x1e" if v is None else str(v) for k, v in row.items() if k != "reasons")
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def profile_info(rules: Any, cfg: Config) -> dict[str, str | None]:
    """The registry profile's name and version, as the rules loaded it."""
    profile = getattr(rules, "profile", None)
    name = getattr(profile, "name", None)
    version = getattr(profile, "version", None)
    return {
        "name": str(name) if name is not None else cfg.registry.profile,
        "version": str(version) if version is not None else None,
    }


def add_registry_values(deid: dict[str, Any], events: list[Event], timing: list[bool]) -> None:
    """Phantom-normalised CTDIvol/DLP, body region and SSDE on each de-identified event."""
    total: float | None = None
    for out, ev, is_timing in zip(deid["events"], events, timing, strict=True):
        head = dosimetry.is_head_exam(ev)
        ctdi, dlp = dosimetry.normalised_dose(ev, head)
        out["body_region"] = "head" if head else "body"
        out["normalised_phantom"] = "head16" if head else "body32"  # dosimetry.standard_phantom
        out["normalised_ctdivol_mGy"] = ctdi
        out["normalised_dlp_mGycm"] = dlp
        out["ssde_estimate_mGy"] = dosimetry.ssde_mGy(ev, head)
        if dlp is not None and not is_timing:
            total = (total or 0.0) + dlp
    deid["normalised_total_dlp_mGycm"] = total


# -- the result ---------------------------------------------------------------------------

@dataclass
class ExportResult:
    batch_id: str | None
    created_at: str
    out_dir: Path
    studies_seen: int = 0
    registry_studies: int = 0
    registry_resubmitted: int = 0
    registry_events: int = 0
    flag_rows: int = 0
    skipped_no_uid: int = 0
    already_submitted: int = 0
    registry_dir: Path | None = None
    flags_paths: list[Path] = field(default_factory=list)
    report_paths: list[Path] = field(default_factory=list)
    previous_batch: str | None = None

    @property
    def paths(self) -> list[Path]:
        out = []
        if self.registry_dir is not None:
            out += [self.registry_dir / n for n in
                    ("studies.parquet", "events.parquet", "submission.json", "manifest.json")]
        return out + self.flags_paths + self.report_paths

    def summary(self) -> str:
        if self.batch_id is None:
            since = f" since batch {self.previous_batch}" if self.previous_batch else ""
            return (f"nothing new to export{since}: {self.studies_seen} studies in the catalog, "
                    f"none new or changed; no batch written (`dosereg report` writes the completeness report)")
        lines = [
            f"batch {self.batch_id}: {self.studies_seen} studies evaluated; "
            f"{self.registry_studies} to the registry ({self.registry_resubmitted} re-submitted after a change, "
            f"{self.registry_events} events), {self.flag_rows} billing flag rows"
        ]
        if self.skipped_no_uid:
            lines.append(f"  {self.skipped_no_uid} studies without a Study Instance UID were skipped")
        if self.registry_dir is None:
            lines.append("  registry: nothing to submit in this batch (no new or changed G9327 study)")
        lines += [f"  {p}" for p in self.paths]
        return "\n".join(lines)


class _Staging:
    """The files of one batch, written under ``<out>/.staging-<batch_id>/``."""

    def __init__(self, out: Path, batch_id: str) -> None:
        self.out = out
        self.root = out / f"{STAGING_PREFIX}{batch_id}"
        self.root.mkdir(parents=True)
        self.registry = self.root / "registry"
        self.flags = self.root / "flags"
        self.reports = self.root / "reports"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _remove_stale_staging(out: Path) -> None:
    """Left by an export that crashed (we hold the state lock, so none is running)."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        if _STAGING_NAME.match(p.name) and p.is_dir():
            log.warning("removing %s left by an interrupted export", p)
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# = json.dumps(study, ensure_ascii=False), built once; study dicts are trees (no cycle check needed)
_STUDY_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False)


class _Submission:
    """``submission.json`` written one study at a time (a JSON object with a ``studies`` array)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "w", encoding="utf-8")
        head = json.dumps(header, ensure_ascii=False, indent=1)
        self._fh.write(head[:-2] + ',\n "studies": [')
        self._first = True
        self.rows = 0

    def append(self, study: dict[str, Any]) -> None:
        self._fh.write(("\n  " if self._first else ",\n  ") + _STUDY_JSON.encode(study))
        self._first = False
        self.rows += 1

    def close(self) -> None:
        self._fh.write("\n ]\n}\n")
        self._fh.close()


# -- the registry files -------------------------------------------------------------------

class _RegistryFiles:
    """``studies.parquet``, ``events.parquet`` and ``submission.json`` of one batch, fed the
    evaluated studies to submit (de-identified and given their registry values here)."""

    def __init__(self, folder: Path, header: dict[str, Any], pseudo: Pseudonymizer) -> None:
        from .writers import EVENT_GROUPS, EVENT_SCHEMA, STUDY_GROUPS, STUDY_SCHEMA, ChunkedParquet

        self.header = header
        self.pseudo = pseudo
        self.studies = ChunkedParquet(folder / "studies.parquet", STUDY_SCHEMA, groups=STUDY_GROUPS)
        self.events = ChunkedParquet(folder / "events.parquet", EVENT_SCHEMA, groups=EVENT_GROUPS)
        self.submission_path = folder / "submission.json"
        self.submission: _Submission | None = None
        # what every row carries before the record's own fields
        self.prefix = {"facility_id": header["facility_id"], "batch_id": header["batch_id"],
                       "registry_profile": header["profile"], "date_precision": header["date_precision"]}

    def add(self, d: dict[str, Any], events: Sequence[Event] | None = None) -> None:
        """One evaluated study (``events``: its Event objects, rebuilt from ``d`` when not given)."""
        if self.submission is None:
            self.submission = _Submission(self.submission_path, self.header)
        deid = deidentify_study(d, self.pseudo, self.header["date_precision"])
        if events is None or len(events) != len(deid["events"]):
            events = [Event.from_dict(e) for e in d.get("events") or ()]
        add_registry_values(deid, list(events), [e["is_timing_run"] for e in deid["events"]])
        deid = {**self.prefix, **deid}
        self.submission.append(deid)
        self.studies.append_nested(deid)  # the schema's columns: "events" is left out
        pseudo_uid = deid["study_instance_uid"]
        for i, ev in enumerate(deid["events"]):
            self.events.append_nested({**ev, "study_instance_uid": pseudo_uid, "event_index": i})

    def close(self) -> dict[str, int] | None:
        """Finish the files; their row counts, or None when no study was added."""
        self.studies.close()
        self.events.close()
        if self.submission is None:
            return None
        self.submission.close()
        return {"studies.parquet": self.studies.rows, "events.parquet": self.events.rows,
                "submission.json": self.submission.rows}


class _BatchWork:
    """What a batch does with each evaluated study besides the decisions: the completeness
    report (every study) and the registry files (the studies to submit)."""

    def __init__(self, cfg: Config, registry_folder: Path, header: dict[str, Any], pseudo: Pseudonymizer) -> None:
        from .report import ReportBuilder  # report imports this module's helpers

        self.report = ReportBuilder(cfg)
        self.registry = _RegistryFiles(registry_folder, header, pseudo)

    def add(self, d: dict[str, Any], events: Sequence[Event] | None, to_registry: bool) -> None:
        if events is None or len(events) != len(d.get("events") or ()):
            events = [Event.from_dict(e) for e in d.get("events") or ()]
        self.report.add(None, d, events)
        if to_registry:
            self.registry.add(d, events)

    def close_registry(self) -> dict[str, int] | None:
        """Finish the registry files: row counts per file, or None when no study was submitted."""
        return self.registry.close()

    def write_report(self, report_to: tuple[Path, str, str] | None) -> list[Path]:
        """The report files written into ``report_to`` = (folder, stem, batch id); none when it is None."""
        return self.report.write(*report_to[:2], batch_id=report_to[2]) if report_to is not None else []


#: Studies of one batch above which the report and the registry files are worked out by a
#: second process (fork), in parallel with reading and evaluating the catalog; below it (and
#: where fork is not available) everything runs in this process.
PARALLEL_AFTER = 500
_WORKER_BATCH = 250  # studies per message to the second process


class _BatchSink:
    """Feeds :class:`_BatchWork` in this process, or in a forked one for large batches."""

    def __init__(self, args: tuple[Any, ...]) -> None:
        self._args = args
        self._pending: list[tuple[dict[str, Any], StudyRecord | None, bool]] = []
        self._work: _BatchWork | None = None
        self._proc: Any = None
        self._conn: Any = None
        self._batch: list[tuple[dict[str, Any], bool]] = []

    def add(self, d: dict[str, Any], record: StudyRecord | None, to_registry: bool) -> None:
        if self._work is not None:
            self._work.add(d, record.events if record is not None else None, to_registry)
        elif self._proc is not None:
            self._batch.append((d, to_registry))
            if len(self._batch) >= _WORKER_BATCH:
                self._send(self._batch)
                self._batch = []
        else:
            self._pending.append((d, record, to_registry))
            if len(self._pending) >= PARALLEL_AFTER:
                self._start(parallel=True)

    def _start(self, parallel: bool) -> None:
        pending, self._pending = self._pending, []
        if parallel and "fork" in multiprocessing.get_all_start_methods():
            ctx = multiprocessing.get_context("fork")
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=_batch_worker, args=(child, self._args),
                                     name="dosereg-export-writer", daemon=True)
            self._proc.start()
            child.close()
            for d, _, to_registry in pending:
                self.add(d, None, to_registry)
        else:
            self._work = _BatchWork(*self._args)
            for d, record, to_registry in pending:
                self.add(d, record, to_registry)

    def _send(self, message: Any) -> None:
        try:
            self._conn.send(message)
        except OSError:  # the worker is gone: say why
            self._fail()

    def _fail(self, message: str = "exited without a word") -> None:
        try:
            if self._conn.poll(5):
                _, message = self._conn.recv()
        except (OSError, EOFError):
            pass
        self.abort()
        raise RuntimeError(f"export: the second export process failed: {message}")

    def close_registry(self, report_to: tuple[Path, str, str] | None) -> dict[str, int] | None:
        """Every study is in: finish the registry files (row counts, or None when no study was
        submitted); a second process goes on to write the report to ``report_to`` meanwhile."""
        if self._work is None and self._proc is None:
            self._start(parallel=False)
        if self._work is not None:
            return self._work.close_registry()
        if self._batch:
            self._send(self._batch)
            self._batch = []
        self._send(("finish", report_to))
        return self._receive()  # type: ignore[no-any-return]

    def write_report(self, report_to: tuple[Path, str, str] | None) -> list[Path]:
        """The report files (same ``report_to`` as given to :meth:`close_registry`)."""
        if self._work is not None:
            return self._work.write_report(report_to)
        paths = self._receive()
        self._proc.join()
        self._proc = None
        return paths  # type: ignore[no-any-return]

    def _receive(self) -> Any:
        try:
            kind, value = self._conn.recv()
        except (OSError, EOFError):
            self._fail()
            raise  # not reached: _fail raises
        if kind != "ok":
            self._fail(value)
        return value

    def abort(self) -> None:
        """Stop a worker still running (the batch is being abandoned)."""
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join()
            self._proc = None


def _batch_worker(conn: Any, args: tuple[Any, ...]) -> None:
    """The second process: lists of (evaluated study, to registry) in, then ("finish", report_to)."""
    try:
        work = _BatchWork(*args)
        while True:
            message = conn.recv()
            if isinstance(message, tuple):  # ("finish", report_to)
                conn.send(("ok", work.close_registry()))
                conn.send(("ok", work.write_report(message[1])))
                break
            for d, to_registry in message:
                work.add(d, None, to_registry)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", "".join(traceback.format_exception_only(type(exc), exc)).strip()))
    finally:
        conn.close()


# -- export -------------------------------------------------------------------------------

@contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """The export allocates millions of short-lived, acyclic dicts and lists (freed by reference
    counting); the cyclic collector's passes over them and the export state cost a quarter of
    the time, so it is paused for the export and restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def export_batch(cfg: Config, studies: Callable[[], Iterator[StudyRecord]],
                 out_dir: Path | None = None) -> ExportResult:
    """Write one batch of every study not yet submitted or changed since (module docstring)."""
    with _without_cyclic_gc():
        return _export_batch(cfg, studies, out_dir)


def _export_batch(cfg: Config, studies: Callable[[], Iterator[StudyRecord]], out_dir: Path | None) -> ExportResult:
    from .writers import FlagsWriter

    pseudo = Pseudonymizer.from_config(cfg)  # refuse before touching anything
    precision = cfg.registry.date_precision
    rules = rules_from_config(cfg)
    profile = profile_info(rules, cfg)
    facility = cfg.site.facility_id
    out = Path(out_dir) if out_dir is not None else cfg.data_dir

    state = ExportState(state_path(cfg))
    try:
        state.begin()
        now = utc_now()
        created_at = iso_utc(now)
        seq = state.next_seq()
        batch_id = f"{now:%Y%m%dT%H%M%SZ}-{seq:04d}"
        previous = state.last_batch()
        result = ExportResult(batch_id=batch_id, created_at=created_at, out_dir=out,
                              previous_batch=previous[0] if previous else None)
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(out)
        staging = _Staging(out, batch_id)
        sinks: list[_BatchSink] = []
        try:
            header = {"schema": SUBMISSION_SCHEMA_ID, "facility_id": facility, "batch_id": batch_id,
                      "created_at": created_at, "profile": profile, "date_precision": precision}
            work = _BatchSink((cfg, staging.registry, header, pseudo))
            sinks.append(work)
            flags: FlagsWriter | None = None
            known_studies = state.studies()
            recorded: list[tuple[str, str | None, str | None, str, str, str | None]] = []
            settled: list[tuple[str, str]] = []
            rkey = rules_key(rules)
            # Studies settled by an earlier export (evaluated with the same record and rules, and
            # nothing to send since) need no evaluation to decide: while only such studies come,
            # they are just counted. The report needs every study evaluated, though, so the first
            # study that is not settled has those evaluated (a second pass over them) first.
            unevaluated = 0
            for record in studies():
                result.studies_seen += 1
                d = record.to_dict()
                uid = d.get("study_instance_uid")
                known = known_studies.get(uid) if uid else None
                ikey = input_key(d, rkey) if uid else None
                if unevaluated >= 0:
                    stored = known.input_key if known is not None else None
                    if stored is not None and stored in (ikey, f"{ikey}{_SUBMITTED}"):
                        unevaluated += 1
                        result.already_submitted += stored.endswith(_SUBMITTED)
                        continue
                    if unevaluated:
                        _report_settled(studies, unevaluated, rules, work)
                    unevaluated = -1  # from here on every study is evaluated
                with_verdicts(d, record, rules)
                if not uid:
                    result.skipped_no_uid += 1
                    work.add(d, record, False)
                    continue
                fp = content_fingerprint(d)
                code = (d.get("flags") or {}).get("registry_code")
                to_registry = code == "G9327" and (known is None or not same_content(known.registry_fingerprint, fp, d))
                if code == "G9327" and not to_registry:
                    result.already_submitted += 1
                row = flags_row(d)
                key = _row_key(row)
                to_flags = known is None or known.flags_key != key
                work.add(d, record, to_registry)
                if to_registry:
                    result.registry_studies += 1
                    result.registry_events += len(d.get("events") or ())
                    if known is not None and known.registry_fingerprint is not None:
                        result.registry_resubmitted += 1
                if to_flags:
                    if flags is None:
                        flags = FlagsWriter(staging.flags / f"{batch_id}.csv", staging.flags / f"{batch_id}.parquet")
                    flags.append(row)
                    result.flag_rows += 1
                settled_key = f"{ikey}{_SUBMITTED}" if code == "G9327" else ikey
                if to_registry or to_flags:
                    recorded.append((uid, fp if to_registry else None, key if to_flags else None, batch_id,
                                     created_at, settled_key))
                    known_studies[uid] = StudyState(
                        fp if to_registry else (known.registry_fingerprint if known else None),
                        key if to_flags else (known.flags_key if known else None), settled_key)
                    if len(recorded) >= 1000:
                        state.record_studies(recorded)
                        recorded = []
                elif known is not None and known.input_key != settled_key and settled_key is not None:
                    settled.append((uid, settled_key))
            state.record_studies(recorded)
            state.settle(settled)
            if flags is not None:
                flags.close()
            nothing_new = result.registry_studies == 0 and result.flag_rows == 0
            report_to = None if nothing_new else (staging.reports, f"completeness-{batch_id}", batch_id)
            registry_rows = work.close_registry(report_to)
            if registry_rows is not None:  # while a second process writes the report
                _write_manifest(staging.registry, facility, batch_id, created_at, registry_rows)
            report_files = work.write_report(report_to)

            if nothing_new:
                staging.remove()
                state.commit()  # only the input keys of studies found settled (no batch is recorded)
                result.batch_id = None
                log.info("export: nothing new (%d studies seen)", result.studies_seen)
                return result

            _place(staging, out, facility, batch_id, result, registry_rows is not None, flags is not None,
                   report_files)
            state.record_batch(batch_id, seq, created_at, facility, str(out.resolve()), result.studies_seen,
                               result.registry_studies, result.registry_events, result.flag_rows)
            state.commit()
            log.info("export: batch %s written (%d registry studies, %d flag rows)",
                     batch_id, result.registry_studies, result.flag_rows)
            return result
        finally:
            for sink in sinks:
                sink.abort()
            staging.remove()
    finally:
        state.rollback()
        state.close()


def _report_settled(studies: Callable[[], Iterator[StudyRecord]], n: int, rules: Rules, work: _BatchSink) -> None:
    """Evaluate the first ``n`` studies (settled ones, passed over undecided) for the report."""
    for i, record in enumerate(studies()):
        if i >= n:
            break
        work.add(evaluated_dict(record, rules), record, False)


def _write_manifest(folder: Path, facility: str, batch_id: str, created_at: str, rows: dict[str, int]) -> None:
    from .writers import sha256_file

    files = []
    for name, count in rows.items():
        p = folder / name
        files.append({"name": name, "rows": count, "bytes": p.stat().st_size, "sha256": sha256_file(p)})
    manifest = {"schema": MANIFEST_SCHEMA_ID, "facility_id": facility, "batch_id": batch_id,
                "created_at": created_at, "files": files}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    for p in folder.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())


def _place(staging: _Staging, out: Path, facility: str, batch_id: str, result: ExportResult,
           registry: bool, flags: bool, report_files: list[Path]) -> None:
    """Rename the finished files into place: reports, flags, then the registry folder last."""
    reports_dir = out / "reports"
    reports_dir.mkdir(parents=True, exist_ok=True)
    for p in report_files:
        target = reports_dir / p.name
        os.replace(p, target)
        result.report_paths.append(target)
    if flags:
        flags_dir = out / "flags"
        flags_dir.mkdir(parents=True, exist_ok=True)
        for suffix in (".csv", ".parquet"):
            target = flags_dir / f"{batch_id}{suffix}"
            os.replace(staging.flags / f"{batch_id}{suffix}", target)
            result.flags_paths.append(target)
        _fsync_dir(flags_dir)
    if registry:
        parent = out / "registry" / facility
        parent.mkdir(parents=True, exist_ok=True)
        target = parent / batch_id
        if target.exists():
            raise FileExistsError(f"{target}: a batch with this id already exists")
        os.rename(staging.registry, target)
        _fsync_dir(parent)
        result.registry_dir = target


def export_marks(cfg: Config) -> dict[str, dict[str, Any]]:
    """study_instance_uid -> {"batch_id", "exported_at"} of the last batch the study was in."""
    path = state_path(cfg)
    if not path.exists():
        return {}
    state = ExportState(path, readonly=True)
    try:
        return state.marks()
    finally:
        state.close()


# -- the `dosereg studies` table ----------------------------------------------------------

def _cut(text: Any, width: int) -> str:
    s = "" if text is None else " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def _num(value: Any) -> str:
    if value is None:
        return ""
    try:
        return f"{float(value):.1f}"
    except (TypeError, ValueError):
        return str(value)


def studies_table(evaluated_dicts: Iterable[dict[str, Any]]) -> str:
    """The human table of ``dosereg studies``: one line per study, newest first."""
    headers = ("Date", "Accession", "Description", "Scanner", "Events", "DLP mGy·cm", "Status",
               "Registry", "Nomencl.", "Exported")
    widths_max = (10, 16, 30, 30, 6, 10, 10, 8, 8, 21)
    rows = []
    for d in evaluated_dicts:
        if d.get("error"):
            status = "error"
        else:
            status = (d.get("completeness") or {}).get("status") or ""
        flags = d.get("flags") or {}
        export = d.get("export") or {}
        rows.append((
            d.get("study_date") or "",
            _cut(d.get("accession_number"), widths_max[1]),
            _cut(d.get("study_description") or d.get("requested_procedure_description"), widths_max[2]),
            _cut(scanner_label(d.get("equipment") or {}, missing=""), widths_max[3]),
            str(d.get("total_events") if d.get("total_events") is not None else len(d.get("events") or ())),
            _num(d.get("total_dlp_mGycm")),
            status,
            flags.get("registry_code") or "",
            flags.get("nomenclature_code") or "",
            export.get("batch_id") or "",
        ))
    if not rows:
        return "no studies in the catalog\n"
    rows.sort(key=lambda r: r[0], reverse=True)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    right = {4, 5}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(headers), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in rows]
    incomplete = sum(1 for r in rows if r[6] != "complete")
    out.append(f"{len(rows)} studies, {incomplete} incomplete or in error")
    return "\n".join(out) + "\n"
