"""Configuration (docs/configuration.md): TOML in, typed settings out.

Every key of the packaged ``conf/dosereg.toml`` is known with its type; a file may
leave keys out (the packaged default applies) but an unknown key or a wrong type is a
:class:`ConfigError` naming the key and the file.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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


@dataclass(frozen=True)
class RegistrySettings:
    profile: str = "acr-dir"
    date_precision: str = "day"


@dataclass(frozen=True)
class NonPatientSettings:
    patient_id: tuple[str, ...] = ()
    patient_name: tuple[str, ...] = ()
    study_description: tuple[str, ...] = ()


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


def parse_config(data: dict[str, Any], where: Path, base: Config | None = None) -> Config:
    base = base or Config()
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
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
                f"(known: {', '.join(sorted([*_SECTIONS, 'classification']))})"
            )
    merged = {name: kwargs.get(name, getattr(base, name)) for name in Config.__dataclass_fields__ if name != "path"}
    return Config(**merged, path=where)


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
        from dataclasses import replace

        cfg = replace(cfg, storage=replace(cfg.storage, data_dir=str(data_dir)))
    return cfg
