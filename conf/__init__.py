"""Packaged configuration: default TOML, registry profiles, nomenclature table, JSON schemas."""
