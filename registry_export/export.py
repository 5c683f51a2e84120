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

Everything is written under a staging folder ``.staging-<batch_id>`` in the data directory;
when it is complete the batch's *intent* (its studies, fingerprints and the SHA-256 of every
file) is committed to export state (``<data_dir>/export-state.sqlite``), then the files are
renamed into place and a second transaction records the batch as exported. A crash at any
instant is repaired by the next export before anything else (:mod:`.placement`): the batch
is completed or adopted when any of its billing or registry files was placed, discarded
when none was, so a study is never submitted twice nor its flags written twice. The export
refuses a pseudonym secret other than the one export state recorded (``dosereg secret
change`` is the deliberate way). Every file and folder written is owner-only.

``export --out DIR`` is a preview: the registry files and the report of the batch the next
export would write go to DIR, nothing else is written (no flags) and no state is recorded,
so the next export is unaffected. An export with nothing new
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
import pickle
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dosereg.conf.config import Config
from dosereg.extract import Event, StudyRecord

from . import dosimetry
from .deid import Pseudonymizer, deidentify_study
from .placement import STAGING_PREFIX, Staging, crash_point, place, remove_stale_staging, repair
from .report import scanner_label
from .rules import Rules, evaluated_dict, rules_from_config, with_verdicts, without_implausible
from .state import BatchFile, ExportState, StudyState, export_lock, state_path

__all__ = ["STAGING_PREFIX", "ExportResult", "SecretChangedError", "change_secret", "export_batch", "export_marks",
           "recorded_secret", "repair_interrupted", "studies_table"]

log = logging.getLogger("dosereg.export")

SUBMISSION_SCHEMA_ID = "dosereg.submission/1"
MANIFEST_SCHEMA_ID = "dosereg.manifest/1"
SECRET_FINGERPRINT = "secret_fingerprint"  # export state's meta keys
PSEUDONYMS_CHANGED_AT = "pseudonyms_changed_at"

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
    return json.dumps(core, ensure_ascii=False, default=str, separators=(",", ":"), check_circular=False,
                      allow_nan=False)


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
    h.update(repr((p.name, p.version, p.required, p.recommended, p.optional, sorted(nom.entries.items()),
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
    """The billing row of an evaluated study (docs/files.md columns, reasons in words)."""
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
    repaired: list[str] = field(default_factory=list)  # what was done to batches an interrupted export left
    preview: bool = False  # `export --out DIR`: nothing recorded

    @property
    def paths(self) -> list[Path]:
        out = []
        if self.registry_dir is not None:
            out += [self.registry_dir / n for n in
                    ("studies.parquet", "events.parquet", "submission.json", "manifest.json")]
        return out + self.flags_paths + self.report_paths

    def summary(self) -> str:
        repaired = [f"repaired: {r}" for r in self.repaired]
        if self.batch_id is None:
            since = f" since batch {self.previous_batch}" if self.previous_batch else ""
            return "\n".join([*repaired, (
                f"nothing new to export{since}: {self.studies_seen} studies in the catalog, "
                f"none new or changed; no batch written (`dosereg report` writes the completeness report)")])
        if self.preview:
            lines = [
                f"preview of batch {self.batch_id} (nothing recorded: the next export is unaffected): "
                f"{self.studies_seen} studies evaluated; {self.registry_studies} would go to the registry "
                f"({self.registry_resubmitted} re-submitted after a change, {self.registry_events} events), "
                f"{self.flag_rows} billing flag rows would be written (not in a preview)"
            ]
        else:
            lines = [*repaired,
                     f"batch {self.batch_id}: {self.studies_seen} studies evaluated; "
                     f"{self.registry_studies} to the registry ({self.registry_resubmitted} re-submitted after a "
                     f"change, {self.registry_events} events), {self.flag_rows} billing flag rows"]
        if self.skipped_no_uid:
            lines.append(f"  {self.skipped_no_uid} studies without a Study Instance UID were skipped")
        if self.registry_dir is None:
            lines.append("  registry: nothing to submit in this batch (no new or changed G9327 study)")
        lines += [f"  {p}" for p in self.paths]
        return "\n".join(lines)


# = json.dumps(study, ensure_ascii=False), built once; study dicts are trees (no cycle check needed)
_STUDY_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False, allow_nan=False)


class _Submission:
    """``submission.json`` written one study at a time (a JSON object with a ``studies`` array)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "w", encoding="utf-8")
        head = json.dumps(header, ensure_ascii=False, indent=1, allow_nan=False)
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
        if (d.get("completeness") or {}).get("implausible"):
            # implausible values never reach the registry (null in their place), nor do the
            # registry values computed from them: the events are rebuilt from the blanked copy
            d = without_implausible(d)
            events = None
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


class SecretChangedError(ValueError):
    """The pseudonym secret is not the one export state recorded: refuse (``dosereg secret change``)."""


def secret_changed_message(cfg: Config, path: Path) -> str:
    name = cfg.site.pseudonym_secret_env
    return (f"the pseudonym secret in environment variable {name} is not the one recorded in {path}: "
            f"with another secret every study submitted again would get a new pseudonym, so the registry "
            f"would count it twice; set the previous secret again, or run `dosereg secret change` to start "
            f"using this one on purpose")


def _check_secret(state: ExportState, pseudo: Pseudonymizer, cfg: Config, now: str) -> str | None:
    """Refuse another secret than the recorded one (record it on first use); the time pseudonyms
    last changed (``dosereg secret change``), or None."""
    recorded = state.meta(SECRET_FINGERPRINT)
    if recorded is None:
        if state.last_batch() is not None:
            log.warning("export: %s recorded no pseudonym secret fingerprint (made by an earlier dosereg): "
                        "recording this secret's; if earlier batches used another, run `dosereg secret change`",
                        state.path)
        state.set_meta(SECRET_FINGERPRINT, pseudo.fingerprint)
        state.set_meta("secret_recorded_at", now)
        state.log(None, "secret_recorded", "fingerprint of the pseudonym secret recorded", at=now)
    elif recorded != pseudo.fingerprint:
        raise SecretChangedError(secret_changed_message(cfg, state.path))
    return state.meta(PSEUDONYMS_CHANGED_AT)


def export_batch(cfg: Config, studies: Callable[[], Iterator[StudyRecord]],
                 out_dir: Path | None = None) -> ExportResult:
    """Write one batch of every study not yet submitted or changed since (module docstring).

    With ``out_dir`` it is a preview: the registry files and the report go to ``out_dir``, and
    no state, batch or flag is recorded (the next export is unaffected).
    """
    pseudo = Pseudonymizer.from_config(cfg)  # refuse before touching anything
    with _without_cyclic_gc():
        if out_dir is not None:
            return _preview(cfg, studies, Path(out_dir), pseudo)
        with export_lock(cfg):
            state = ExportState(state_path(cfg))
            try:
                return _export_locked(cfg, studies, state, pseudo)
            finally:
                state.rollback()
                state.close()


def repair_interrupted(state: ExportState, now: str) -> list[str]:
    """Repair every batch an interrupted export left ``writing`` (:func:`placement.repair`)."""
    return [repair(state, intent, now) for intent in state.intents()]


@dataclass
class _Batch:
    """What one batch is: its id, where it goes, what it is compared against."""

    cfg: Config
    batch_id: str
    seq: int
    created_at: str
    out: Path
    pseudo: Pseudonymizer
    known: dict[str, StudyState]
    pseudonyms_changed_at: str | None
    preview: bool = False


def _export_locked(cfg: Config, studies: Callable[[], Iterator[StudyRecord]], state: ExportState,
                   pseudo: Pseudonymizer) -> ExportResult:
    out = cfg.data_dir
    state.begin()
    now = utc_now()
    changed_at = _check_secret(state, pseudo, cfg, iso_utc(now))
    repaired = repair_interrupted(state, iso_utc(now))
    state.commit()
    state.begin()
    seq = state.next_seq()
    previous = state.last_batch()
    batch = _Batch(cfg, f"{now:%Y%m%dT%H%M%SZ}-{seq:04d}", seq, iso_utc(now), out, pseudo, state.studies(),
                   changed_at)
    result = ExportResult(batch_id=batch.batch_id, created_at=batch.created_at, out_dir=out,
                          previous_batch=previous[0] if previous else None, repaired=repaired)
    remove_stale_staging(out)
    staging = Staging(out, batch.batch_id)
    keep_staging = False
    try:
        files = _write_staged(batch, studies, staging, result, state)
        if files is None:
            state.commit()  # only the input keys of studies found settled (no batch is recorded)
            result.batch_id = None
            log.info("export: nothing new (%d studies seen)", result.studies_seen)
            return result
        crash_point("after_staging")
        state.record_intent(batch.batch_id, seq, batch.created_at, cfg.site.facility_id, out, staging.root,
                            (result.studies_seen, result.registry_studies, result.registry_events,
                             result.flag_rows), files, pseudo.fingerprint, changed_at)
        state.commit()
        keep_staging = True  # from here on an interrupted batch is repaired from its staging folder
        crash_point("after_intent")
        placed = place(staging, cfg.site.facility_id, batch.batch_id, files)
        result.registry_dir = placed.registry_dir
        result.flags_paths = placed.flags_paths or []
        result.report_paths = placed.report_paths or []
        state.begin()
        state.complete(batch.batch_id, placed.registry_dir, iso_utc(utc_now()))
        crash_point("before_state_commit")
        state.commit()
        crash_point("after_state_commit")
        staging.remove()
        log.info("export: batch %s written (%d registry studies, %d flag rows)",
                 batch.batch_id, result.registry_studies, result.flag_rows)
        return result
    finally:
        if not keep_staging:
            staging.remove()


def _preview(cfg: Config, studies: Callable[[], Iterator[StudyRecord]], out: Path,
             pseudo: Pseudonymizer) -> ExportResult:
    """``export --out DIR``: the batch the next export would write, into DIR; nothing recorded."""
    path = state_path(cfg)
    known: dict[str, StudyState] = {}
    seq, previous, changed_at = 1, None, None
    if path.exists():
        state = ExportState(path, readonly=True)
        try:
            recorded = state.meta(SECRET_FINGERPRINT)
            if recorded is not None and recorded != pseudo.fingerprint:
                raise SecretChangedError(secret_changed_message(cfg, path))
            if state.intents():
                log.warning("export: an interrupted batch is waiting for the next export to repair it; "
                            "the preview shows what the export state says now")
            known, seq, previous = state.studies(), state.next_seq(), state.last_batch()
            changed_at = state.meta(PSEUDONYMS_CHANGED_AT)
        finally:
            state.close()
    now = utc_now()
    batch = _Batch(cfg, f"{now:%Y%m%dT%H%M%SZ}-{seq:04d}", seq, iso_utc(now), out, pseudo, known, changed_at,
                   preview=True)
    result = ExportResult(batch_id=batch.batch_id, created_at=batch.created_at, out_dir=out,
                          previous_batch=previous[0] if previous else None, preview=True)
    staging = Staging(out, batch.batch_id)
    try:
        files = _write_staged(batch, studies, staging, result, None)
        if files is None:
            result.batch_id = None
            return result
        placed = place(staging, cfg.site.facility_id, batch.batch_id, files)
        result.registry_dir = placed.registry_dir
        result.report_paths = placed.report_paths or []
        return result
    finally:
        staging.remove()


def _write_staged(batch: _Batch, studies: Callable[[], Iterator[StudyRecord]], staging: Staging,
                  result: ExportResult, state: ExportState | None) -> list[BatchFile] | None:
    """Evaluate every study and write the batch's files under ``staging`` (with ``state``: its
    members recorded in the open transaction); the staged files, or None when nothing is new."""
    cfg = batch.cfg
    rules = rules_from_config(cfg)
    header = {"schema": SUBMISSION_SCHEMA_ID, "facility_id": cfg.site.facility_id, "batch_id": batch.batch_id,
              "created_at": batch.created_at, "profile": profile_info(rules, cfg),
              "date_precision": cfg.registry.date_precision}
    work = _BatchSink((cfg, staging.registry, header, batch.pseudo))
    try:
        decide = _Decisions(batch, rules, staging, result, state, work)
        decide.run(studies)
        nothing_new = result.registry_studies == 0 and result.flag_rows == 0
        report_to = None if nothing_new else (staging.reports, f"completeness-{batch.batch_id}", batch.batch_id)
        registry_rows = work.close_registry(report_to)
        hashes: dict[str, tuple[str, int]] = {}
        if registry_rows is not None:  # while a second process writes the report
            hashes = _write_manifest(staging.registry, header, registry_rows, batch.pseudonyms_changed_at)
        else:  # no study to submit: no registry folder (the writers leave empty files)
            for p in staging.registry.iterdir():
                p.unlink()
        work.write_report(report_to)
    finally:
        work.abort()
    if nothing_new:
        return None
    staging.make_private()
    return staging.files(hashes)


class _Decisions:
    """One pass over the catalog: each study evaluated, given to the report and, when new or
    changed, to the registry files and the billing flags; the batch's members recorded."""

    def __init__(self, batch: _Batch, rules: Rules, staging: Staging, result: ExportResult,
                 state: ExportState | None, work: _BatchSink) -> None:
        self.batch, self.rules, self.staging, self.result = batch, rules, staging, result
        self.state, self.work = state, work
        self.flags: Any = None  # FlagsWriter, opened on the first row (never in a preview)
        self.members: list[tuple[str, bool, bool, str | None, str | None, str | None]] = []
        self.settled: list[tuple[str, str]] = []
        self.rkey = rules_key(rules)

    def run(self, studies: Callable[[], Iterator[StudyRecord]]) -> None:
        # Studies settled by an earlier export (evaluated with the same record and rules, and
        # nothing to send since) need no evaluation to decide: while only such studies come,
        # they are just counted. The report needs every study evaluated, though, so the first
        # study that is not settled has those evaluated (a second pass over them) first.
        unevaluated = 0
        known_studies, result = self.batch.known, self.result
        for record in studies():
            result.studies_seen += 1
            d = record.to_dict()
            uid = d.get("study_instance_uid")
            known = known_studies.get(uid) if uid else None
            ikey = input_key(d, self.rkey) if uid else None
            if unevaluated >= 0:
                stored = known.input_key if known is not None else None
                if stored is not None and stored in (ikey, f"{ikey}{_SUBMITTED}"):
                    unevaluated += 1
                    result.already_submitted += stored.endswith(_SUBMITTED)
                    continue
                if unevaluated:
                    _report_settled(studies, unevaluated, self.rules, self.work)
                unevaluated = -1  # from here on every study is evaluated
            with_verdicts(d, record, self.rules)
            if not uid or ikey is None:
                result.skipped_no_uid += 1
                self.work.add(d, record, False)
                continue
            self._decide(d, record, uid, known, ikey)
        self._flush()
        if self.state is not None:
            self.state.settle(self.settled)
        if self.flags is not None:
            self.flags.close()

    def _decide(self, d: dict[str, Any], record: StudyRecord, uid: str, known: StudyState | None,
                ikey: str) -> None:
        result = self.result
        fp = content_fingerprint(d)
        code = (d.get("flags") or {}).get("registry_code")
        to_registry = code == "G9327" and (known is None or not same_content(known.registry_fingerprint, fp, d))
        if code == "G9327" and not to_registry:
            result.already_submitted += 1
        row = flags_row(d)
        key = _row_key(row)
        to_flags = known is None or known.flags_key != key
        self.work.add(d, record, to_registry)
        if to_registry:
            result.registry_studies += 1
            result.registry_events += len(d.get("events") or ())
            if known is not None and known.registry_fingerprint is not None:
                result.registry_resubmitted += 1
        if to_flags:
            self._flag(row)
        settled_key = f"{ikey}{_SUBMITTED}" if code == "G9327" else ikey
        if to_registry or to_flags:
            self.members.append((uid, to_registry, to_flags, fp if to_registry else None,
                                 key if to_flags else None, settled_key))
            self.batch.known[uid] = StudyState(
                fp if to_registry else (known.registry_fingerprint if known else None),
                key if to_flags else (known.flags_key if known else None), settled_key)
            if len(self.members) >= 1000:
                self._flush()
        elif known is not None and known.input_key != settled_key:
            self.settled.append((uid, settled_key))

    def _flag(self, row: dict[str, Any]) -> None:
        self.result.flag_rows += 1
        if self.batch.preview:
            return  # a preview records no flag (docs/README.md)
        if self.flags is None:
            from .writers import FlagsWriter

            name = self.batch.batch_id
            self.flags = FlagsWriter(self.staging.flags / f"{name}.csv", self.staging.flags / f"{name}.parquet")
        self.flags.append(row)

    def _flush(self) -> None:
        if self.state is not None and self.members:
            self.state.add_members(self.batch.batch_id, self.members)
        self.members = []


def _report_settled(studies: Callable[[], Iterator[StudyRecord]], n: int, rules: Rules, work: _BatchSink) -> None:
    """Evaluate the first ``n`` studies (settled ones, passed over undecided) for the report."""
    for i, record in enumerate(studies()):
        if i >= n:
            break
        work.add(evaluated_dict(record, rules), record, False)


def _write_manifest(folder: Path, header: dict[str, Any], rows: dict[str, int],
                    pseudonyms_changed_at: str | None) -> dict[str, tuple[str, int]]:
    """``manifest.json``; (SHA-256, bytes) of each registry file, the manifest's own included."""
    from .writers import sha256_file

    files = []
    hashes: dict[str, tuple[str, int]] = {}
    for name, count in rows.items():
        p = folder / name
        sha, size = sha256_file(p), p.stat().st_size
        files.append({"name": name, "rows": count, "bytes": size, "sha256": sha})
        hashes[name] = (sha, size)
    manifest = {"schema": MANIFEST_SCHEMA_ID, "facility_id": header["facility_id"], "batch_id": header["batch_id"],
                "created_at": header["created_at"], "files": files,
                # set once `dosereg secret change` has been run: pseudonyms from before that time
                # and from this batch differ for the same study
                "pseudonyms_changed_at": pseudonyms_changed_at}
    data = (json.dumps(manifest, indent=1, allow_nan=False) + "\n").encode("utf-8")
    (folder / "manifest.json").write_bytes(data)
    hashes["manifest.json"] = (hashlib.sha256(data).hexdigest(), len(data))
    return hashes


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


# -- `dosereg secret change` --------------------------------------------------------------

def recorded_secret(cfg: Config) -> tuple[str, bool | None]:
    """(the configured secret's fingerprint, whether it is the recorded one: None when none is recorded)."""
    fp = Pseudonymizer.from_config(cfg).fingerprint
    path = state_path(cfg)
    if not path.exists():
        return fp, None
    state = ExportState(path, readonly=True)
    try:
        recorded = state.meta(SECRET_FINGERPRINT)
    finally:
        state.close()
    return fp, None if recorded is None else recorded == fp


def change_secret(cfg: Config, actor: str | None = None) -> str | None:
    """Record the configured secret as the site's (``dosereg secret change``, after confirmation).

    Returns the time pseudonyms changed (every later batch's manifest carries it as
    ``pseudonyms_changed_at``), or None when nothing changed (already the recorded secret, or
    the first secret recorded before any batch).
    """
    fp = Pseudonymizer.from_config(cfg).fingerprint
    with export_lock(cfg):
        state = ExportState(state_path(cfg))
        try:
            state.begin()
            now = iso_utc(utc_now())
            recorded = state.meta(SECRET_FINGERPRINT)
            if recorded == fp:
                return None
            state.set_meta(SECRET_FINGERPRINT, fp)
            state.set_meta("secret_recorded_at", now)
            changed = recorded is not None or state.last_batch() is not None
            if changed:
                state.set_meta(PSEUDONYMS_CHANGED_AT, now)
            state.log(None, "secret_change", "pseudonym secret changed: later batches carry new pseudonyms"
                      if changed else "pseudonym secret recorded (no batch before it)", at=now, actor=actor)
            state.commit()
            return now if changed else None
        finally:
            state.rollback()
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
