"""Configuration (docs/configuration.md): TOML in, typed settings out.

Every key of the packaged ``conf/dosereg.toml`` is known with its type; a file may
leave keys out (the packaged default applies) but an unknown key or a wrong type is a
:class:`ConfigError` naming the key and the file.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .alerts import AlertsSettings, parse_alerts
from .dose import DoseSettings
from .logging import LoggingSettings, parse_logging
from .reference_levels import ReferenceLevelsSettings
from .web import WebSettings, parse_web

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from .pacs import PacsSettings

# The packaged conf/ folder is the package ``dosereg.conf`` (pyproject's package-dir).
CONF_DIR = Path(str(importlib.resources.files("dosereg.conf")))
DEFAULT_CONFIG = CONF_DIR / "dosereg.toml"


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


@dataclass(frozen=True)
class ListenerSettings:
    ae_title: str = "DOSEREG"
    require_called_ae_title: bool = False
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_ae_titles: tuple[str, ...] = ()
    max_associations: int = 10
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    tls_certificate: str = ""
    tls_private_key: str = ""
    tls_ca_certificates: str = ""
    max_pdu_size: int = 65536
    max_pending_bytes: int = 268435456
    association_deadline_s: float = 30.0
    pdu_deadline_s: float = 60.0
    max_associations_per_address: int = 10
    reserved_for_allowed: int = 2


@dataclass(frozen=True)
class ExtractSettings:
    """Bounds on what reading one object may cost, whatever the object claims."""

    max_inflated_bytes: int = 268435456
    max_nesting: int = 64


@dataclass(frozen=True)
class StorageSettings:
    data_dir: str = "dosereg-data"


@dataclass(frozen=True)
class SiteSettings:
    facility_id: str = "FACILITY-0001"
    pseudonym_secret_env: str = "DOSEREG_SECRET"


#: the SR storage classes (ingest's accepted classes less Secondary Capture): what a DICOM
#: registry gateway such as the ACR DIR's DIR Link takes by default (it refuses secondary captures)
DICOM_SR_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.73",  # Patient Radiation Dose SR
)
DESTINATION_KINDS = ("dicom", "https", "folder")
DESTINATION_OBJECTS = ("deidentified", "original")


@dataclass(frozen=True)
class DestinationSettings:
    """One ``[[registry.destinations]]`` table (docs/destinations.md): where ``send`` delivers a batch.

    One type for the three kinds, so the batch lifecycle keeps a tuple of them; the keys
    that do not belong to ``kind`` keep their defaults (a file that sets one is an error).
    """

    name: str
    kind: str
    timeout_s: float = 60.0  # connect, each request or DIMSE message
    max_attempts: int = 3  # attempts within one delivery
    retry_backoff_s: float = 2.0  # wait before the second attempt, doubled after each one
    retry_total_s: float = 300.0  # no attempt starts later than this after the first
    # kind = "dicom": C-STORE to a registry gateway AE
    ae_title: str = ""
    host: str = ""
    port: int = 0
    calling_ae_title: str = ""  # empty in the file: the listener's AE title
    tls_certificate: str = ""  # dicom and https: our certificate (with tls_private_key)
    tls_private_key: str = ""
    tls_ca_certificates: str = ""  # dicom and https: CA bundle the peer's certificate must chain to
    objects: str = "deidentified"
    sop_classes: tuple[str, ...] = DICOM_SR_CLASSES
    storage_commitment: bool = False
    commitment_timeout_s: float = 60.0
    # kind = "https"
    url: str = ""
    token_env: str = ""  # the NAME of the environment variable holding the bearer token
    # kind = "folder"
    path: str = ""


@dataclass(frozen=True)
class RegistrySettings:
    profile: str = "acr-dir"
    date_precision: str = "day"
    destinations: tuple[DestinationSettings, ...] = ()


@dataclass(frozen=True)
class ReviewSettings:
    """``[review]``: whether a new batch waits for a person's approval before it may be sent."""

    required: bool = True


@dataclass(frozen=True)
class NonPatientSettings:
    """Globs on patient ID / name and study description; regular expressions (case-insensitive,
    docs/classification.md) on event protocols, requested procedure and station name."""

    patient_id: tuple[str, ...] = ()
    patient_name: tuple[str, ...] = ()
    study_description: tuple[str, ...] = ()
    acquisition_protocol: tuple[str, ...] = ()
    requested_procedure: tuple[str, ...] = ()
    station_name: tuple[str, ...] = ()


@dataclass(frozen=True)
class RtPlanningSettings:
    text: tuple[str, ...] = ()
    station_names: tuple[str, ...] = ()
    procedure_codes: tuple[str, ...] = ()
    manufacturers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClassificationSettings:
    non_patient: NonPatientSettings = field(default_factory=NonPatientSettings)
    rt_planning: RtPlanningSettings = field(default_factory=RtPlanningSettings)


@dataclass(frozen=True)
class NomenclatureSettings:
    table: str = "nomenclature.csv"


@dataclass(frozen=True)
class NotificationSettings:
    adult_head: float = 80.0
    adult_body: float = 50.0
    paediatric_head_under_2y: float = 50.0
    paediatric_head_2_to_5y: float = 60.0
    paediatric_body_under_10y: float = 25.0
    brain_perfusion: float = 600.0
    cardiac_prospective: float = 50.0
    cardiac_retrospective: float = 150.0


@dataclass(frozen=True)
class Config:
    listener: ListenerSettings = field(default_factory=ListenerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    site: SiteSettings = field(default_factory=SiteSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    classification: ClassificationSettings = field(default_factory=ClassificationSettings)
    nomenclature: NomenclatureSettings = field(default_factory=NomenclatureSettings)
    notification: NotificationSettings = field(default_factory=NotificationSettings)
    extract: ExtractSettings = field(default_factory=ExtractSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    web: WebSettings = field(default_factory=WebSettings)
    pacs: PacsSettings | None = None  # [pacs] (conf/pacs.py): None when not configured
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    dose: DoseSettings = field(default_factory=DoseSettings)
    reference_levels: ReferenceLevelsSettings = field(default_factory=ReferenceLevelsSettings)
    alerts: AlertsSettings = field(default_factory=AlertsSettings)  # [alerts] (conf/alerts.py)
    path: Path = DEFAULT_CONFIG  # the file this configuration was read from

    @property
    def config_dir(self) -> Path:
        return self.path.parent

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir)

    @property
    def nomenclature_table(self) -> Path:
        p = Path(self.nomenclature.table)
        if p.is_absolute():
            return p
        candidate = self.config_dir / p
        return candidate if candidate.exists() else CONF_DIR / p

    @property
    def profile_path(self) -> Path:
        """The registry profile: a name means the packaged profile of that name; a path, that file."""
        name = self.registry.profile
        if "/" in name or name.endswith(".toml"):
            p = Path(name)
            return p if p.is_absolute() else self.config_dir / p
        return CONF_DIR / "registry_profiles" / f"{name}.toml"


_SECTIONS: dict[str, type] = {
    "listener": ListenerSettings,
    "storage": StorageSettings,
    "site": SiteSettings,
    "registry": RegistrySettings,
    "nomenclature": NomenclatureSettings,
    "notification": NotificationSettings,
    "extract": ExtractSettings,
    "review": ReviewSettings,
    "dose": DoseSettings,
    "reference_levels": ReferenceLevelsSettings,
}
_CLASSIFICATION: dict[str, type] = {"non_patient": NonPatientSettings, "rt_planning": RtPlanningSettings}
_CHOICES = {("registry", "date_precision"): ("day", "month", "year")}
# numeric settings that only make sense within a range (inclusive)
_RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("listener", "port"): (1, 65535),
    ("listener", "max_associations"): (1, 1000),
    ("listener", "acse_timeout_s"): (0.1, 86400),
    ("listener", "dimse_timeout_s"): (0.1, 86400),
    ("listener", "network_timeout_s"): (0.1, 86400),
    # a PDU must hold at least a P-DATA header; 2**32-1 is the protocol's own limit
    ("listener", "max_pdu_size"): (4096, 2**32 - 1),
    ("listener", "max_pending_bytes"): (1 << 20, 1 << 40),
    ("listener", "association_deadline_s"): (0.1, 86400),
    ("listener", "pdu_deadline_s"): (0.1, 86400),
    ("listener", "max_associations_per_address"): (1, 1000),
    ("listener", "reserved_for_allowed"): (0, 1000),
    ("extract", "max_inflated_bytes"): (1 << 16, 1 << 40),
    ("extract", "max_nesting"): (8, 10000),
    ("dose", "timing_run_max_ctdivol_mgy"): (0.0, 10000.0),
    ("dose", "patient_history_days"): (1, 36500),
    ("reference_levels", "local_period_days"): (1, 36500),
    ("reference_levels", "local_min_n"): (1, 1000000),
}


def _coerce(value: Any, default: Any, key: str, where: Path) -> Any:
    """Check ``value`` against the type of the default; name the key when it is wrong."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")
    if isinstance(default, int) and not isinstance(default, bool) and type(default) is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be a whole number, not {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: {key} must be a number, not {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: {key} must be a string, not {value!r}")
    if isinstance(default, tuple):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{where}: {key} must be a list of strings, not {value!r}")
    raise ConfigError(f"{where}: {key} has an unsupported value {value!r}")  # pragma: no cover


def _section(cls: type, data: Any, base: Any, name: str, where: Path) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [{name}] must be a table, not {data!r}")
    known = {f.name: getattr(base, f.name) for f in fields(cls)}
    kwargs = dict(known)
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {name}.{key} (known: {', '.join(sorted(known))})")
        full = f"{name}.{key}"
        kwargs[key] = _coerce(value, known[key], full, where)
        choices = _CHOICES.get((name, key))
        if choices and kwargs[key] not in choices:
            raise ConfigError(f"{where}: {full} must be one of {', '.join(choices)}, not {value!r}")
        bounds = _RANGES.get((name, key))
        if bounds and not bounds[0] <= kwargs[key] <= bounds[1]:
            raise ConfigError(f"{where}: {full} must be between {bounds[0]:g} and {bounds[1]:g}, not {value!r}")
    return cls(**kwargs)


# -- [[registry.destinations]] (docs/destinations.md) -------------------------------------

_DESTINATION_COMMON = ("name", "kind", "timeout_s", "max_attempts", "retry_backoff_s", "retry_total_s")
_TLS_KEYS = ("tls_certificate", "tls_private_key", "tls_ca_certificates")
_DESTINATION_KEYS: dict[str, tuple[str, ...]] = {
    "dicom": ("ae_title", "host", "port", "calling_ae_title", *_TLS_KEYS, "objects", "sop_classes",
              "storage_commitment", "commitment_timeout_s"),
    "https": ("url", "token_env", *_TLS_KEYS),
    "folder": ("path",),
}
_DESTINATION_REQUIRED: dict[str, tuple[str, ...]] = {
    "dicom": ("ae_title", "host", "port"), "https": ("url", "token_env"), "folder": ("path",),
}
_DESTINATION_RANGES: dict[str, tuple[float, float]] = {
    "timeout_s": (0.1, 86400), "max_attempts": (1, 100), "retry_backoff_s": (0, 3600),
    "retry_total_s": (0, 7 * 86400), "port": (1, 65535), "commitment_timeout_s": (0.1, 86400),
}
_DESTINATION_CHOICES: dict[str, tuple[str, ...]] = {"objects": DESTINATION_OBJECTS}
_DESTINATION_FIELDS = tuple(f.name for f in fields(DestinationSettings))


def _ae_title_problem(value: str) -> str | None:
    """Why ``value`` is not an AE title (PS3.5 AE: 1-16 characters of the default repertoire, no backslash)."""
    text = value.strip()
    if not text or len(value) > 16:
        return "must be 1-16 characters"
    if any(not 0x20 <= ord(c) < 0x7F or c == "\\" for c in value):
        return "must be printable ASCII without a backslash"
    return None


def _url_problem(value: str) -> str | None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme != "https" or not parts.hostname:
        return "must be an https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (the token is read from token_env)"
    if parts.query or parts.fragment:
        return "must not have a query or a fragment"
    return None


def _destination_problems(d: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(key, what is wrong) for the values that are well typed but unusable."""
    for key in ("ae_title", "calling_ae_title"):
        if d.get(key):
            problem = _ae_title_problem(d[key])
            if problem:
                yield key, problem
    if "host" in d and not d["host"].strip():
        yield "host", "must not be empty"
    if "url" in d:
        problem = _url_problem(d["url"])
        if problem:
            yield "url", problem
    if "token_env" in d and not d["token_env"].strip():
        yield "token_env", "must name an environment variable"
    if "path" in d and not d["path"].strip():
        yield "path", "must not be empty"
    if "sop_classes" in d:
        if not d["sop_classes"]:
            yield "sop_classes", "must name at least one SOP class"
        bad = [u for u in d["sop_classes"] if not _is_uid(u)]
        if bad:
            yield "sop_classes", f"holds a value that is not a UID: {bad[0]!r}"
    if bool(d.get("tls_certificate")) != bool(d.get("tls_private_key")):
        yield "tls_private_key" if d.get("tls_certificate") else "tls_certificate", \
            "tls_certificate and tls_private_key must be set together"


def _is_uid(value: str) -> bool:
    parts = value.split(".")
    return 0 < len(value) <= 64 and all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts)


def _destination(table: Any, prefix: str, where: Path, listener_ae_title: str) -> DestinationSettings:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: {prefix} must be a table, not {table!r}")
    kind = table.get("kind")
    if kind is None:
        raise ConfigError(f"{where}: {prefix}.kind is required (one of {', '.join(DESTINATION_KINDS)})")
    if kind not in DESTINATION_KINDS:
        raise ConfigError(f"{where}: {prefix}.kind must be one of {', '.join(DESTINATION_KINDS)}, not {kind!r}")
    allowed = (*_DESTINATION_COMMON, *_DESTINATION_KEYS[kind])
    template = DestinationSettings(name="", kind=kind)
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}.{key}"
        if key not in allowed:
            what = "unknown key" if key not in _DESTINATION_FIELDS else f"not a key of kind {kind!r}:"
            raise ConfigError(f"{where}: {what} {full} (known for kind {kind}: {', '.join(allowed)})")
        kwargs[key] = _coerce(value, getattr(template, key), full, where)
        choices = _DESTINATION_CHOICES.get(key)
        if choices and kwargs[key] not in choices:
            raise ConfigError(f"{where}: {full} must be one of {', '.join(choices)}, not {value!r}")
        bounds = _DESTINATION_RANGES.get(key)
        if bounds and not bounds[0] <= kwargs[key] <= bounds[1]:
            raise ConfigError(f"{where}: {full} must be between {bounds[0]:g} and {bounds[1]:g}, not {value!r}")
    for key in ("name", *_DESTINATION_REQUIRED[kind]):
        if key not in kwargs:
            raise ConfigError(f"{where}: {prefix}.{key} is required for kind {kind}")
    if not kwargs["name"].strip():
        raise ConfigError(f"{where}: {prefix}.name must not be empty")
    for key, problem in _destination_problems(kwargs):
        raise ConfigError(f"{where}: {prefix}.{key} {problem}, not {kwargs.get(key, '')!r}")
    if kind == "dicom" and not kwargs.get("calling_ae_title"):
        kwargs["calling_ae_title"] = listener_ae_title
    return DestinationSettings(**kwargs)


def _destinations(value: Any, where: Path, listener_ae_title: str) -> tuple[DestinationSettings, ...]:
    """``[[registry.destinations]]``: each table checked for its kind; names unique."""
    if not isinstance(value, list):
        raise ConfigError(
            f"{where}: registry.destinations must be an array of tables ([[registry.destinations]]), not {value!r}"
        )
    out: list[DestinationSettings] = []
    seen: dict[str, int] = {}
    for i, table in enumerate(value, 1):  # counted from 1, as a person counts the tables in the file
        dest = _destination(table, f"registry.destinations[{i}]", where, listener_ae_title)
        if dest.name in seen:
            raise ConfigError(
                f"{where}: registry.destinations[{i}].name {dest.name!r} is already the name of "
                f"registry.destinations[{seen[dest.name]}]; names must be unique"
            )
        seen[dest.name] = i
        out.append(dest)
    return tuple(out)


def _registry(value: Any, base: RegistrySettings, where: Path, listener_ae_title: str) -> RegistrySettings:
    if not isinstance(value, dict) or "destinations" not in value:
        section: RegistrySettings = _section(RegistrySettings, value, base, "registry", where)
        return section
    rest = {k: v for k, v in value.items() if k != "destinations"}
    section = _section(RegistrySettings, rest, base, "registry", where)
    return replace(section, destinations=_destinations(value["destinations"], where, listener_ae_title))


def parse_config(data: dict[str, Any], where: Path, base: Config | None = None) -> Config:
    base = base or Config()
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "registry":
            listener = kwargs.get("listener") or _listener_of(data, base, where)
            kwargs[key] = _registry(value, base.registry, where, listener.ae_title)
        elif key == "web":
            kwargs[key] = parse_web(value, base.web, where)
        elif key == "pacs":
            from .pacs import parse_pacs
            listener = kwargs.get("listener") or _listener_of(data, base, where)
            kwargs[key] = parse_pacs(value, where, listener.ae_title)
        elif key == "logging":
            kwargs[key] = parse_logging(value, base.logging, where)
        elif key == "alerts":
            kwargs[key] = parse_alerts(value, base.alerts, where)
        elif key in _SECTIONS:
            kwargs[key] = _section(_SECTIONS[key], value, getattr(base, key), key, where)
        elif key == "classification":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [classification] must be a table")
            sub: dict[str, Any] = {}
            for skey, svalue in value.items():
                if skey not in _CLASSIFICATION:
                    raise ConfigError(
                        f"{where}: unknown key classification.{skey} (known: non_patient, rt_planning)"
                    )
                sub[skey] = _section(
                    _CLASSIFICATION[skey], svalue, getattr(base.classification, skey),
                    f"classification.{skey}", where,
                )
            kwargs["classification"] = ClassificationSettings(
                non_patient=sub.get("non_patient", base.classification.non_patient),
                rt_planning=sub.get("rt_planning", base.classification.rt_planning),
            )
        else:
            raise ConfigError(
                f"{where}: unknown section or key {key!r} "
                f"(known: {', '.join(sorted([*_SECTIONS, 'alerts', 'classification', 'pacs', 'web']))})"
            )
    merged = {name: kwargs.get(name, getattr(base, name)) for name in Config.__dataclass_fields__ if name != "path"}
    return Config(**merged, path=where)


def _listener_of(data: dict[str, Any], base: Config, where: Path) -> ListenerSettings:
    """The listener settings this file makes (a destination's calling AE title defaults to its AE title)."""
    if "listener" in data:
        listener: ListenerSettings = _section(ListenerSettings, data["listener"], base.listener, "listener", where)
        return listener
    return base.listener


def read_toml(path: Path, what: str = "configuration", key: str | None = None) -> dict[str, Any]:
    """Read a TOML file; every failure is a :class:`ConfigError` naming the file (and the
    setting that pointed at it, when given)."""
    where = f" ({key})" if key else ""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found{where}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {what} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror}") from None


_DEFAULTS: Config | None = None


def default_config() -> Config:
    """The packaged defaults (``conf/dosereg.toml``)."""
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = parse_config(read_toml(DEFAULT_CONFIG), DEFAULT_CONFIG)
    return _DEFAULTS


def load_config(path: str | os.PathLike[str] | None = None, data_dir: str | None = None) -> Config:
    """Load ``path``, else ``$DOSEREG_CONFIG``, else the packaged defaults.

    Keys a file leaves out keep the packaged default. ``data_dir`` (the CLI's
    ``--data-dir``) overrides ``storage.data_dir``.
    """
    if path is None:
        path = os.environ.get("DOSEREG_CONFIG") or None
    defaults = default_config()
    if path is None:
        cfg = defaults
    else:
        p = Path(path)
        cfg = parse_config(read_toml(p), p, base=defaults)
    if data_dir is not None:
        cfg = replace(cfg, storage=replace(cfg.storage, data_dir=str(data_dir)))
    return cfg
