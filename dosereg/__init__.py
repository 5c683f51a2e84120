"""dosereg: CT radiation-dose registry pipeline.

Stages (each a subpackage with a small public API in its ``__init__``), data flowing one way:
``dosereg.ingest`` (listener, import, spool, catalog) -> ``dosereg.extract`` (dataset ->
typed dose report) -> catalog -> ``dosereg.registry_export`` (rules, flags, files, report).
"""

__version__ = "0.1.0"
