"""Tests that export more than once, or read billing flags, take their batches through the
lifecycle first: billing flags are written only when a batch is acknowledged, and a study of
an unfinished batch is offered again only once that batch ends (docs/lifecycle.md)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from dosereg.conf.config import Config, DestinationSettings, load_config
from dosereg.registry_export import approve, list_batches, send


def acknowledge_all(cfg: Config) -> list[str]:
    """Approve every batch awaiting review and send it to a drop folder (a real ``folder``
    destination) until acknowledged: what a site does after each export. The batch ids."""
    drop = DestinationSettings(name="drop", kind="folder", path=str(cfg.data_dir / "test-drop"))
    cfg = replace(cfg, registry=replace(cfg.registry, destinations=(drop,)))
    out = []
    for b in list_batches(cfg):
        if b["state"] == "pending_review":
            approve(cfg, b["batch_id"], by="test")
            out.append(b["batch_id"])
    result = send(cfg, lambda: [])
    assert result.ok, result.summary()
    return out


def acknowledge_all_in(data: Path, env: dict[str, str], config: Path | None = None) -> list[str]:
    """:func:`acknowledge_all` for a data directory the CLI wrote (``env``: the secret)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return acknowledge_all(load_config(str(config) if config else None, data_dir=str(data)))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
