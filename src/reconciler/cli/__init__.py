"""The `reconciler` command: each subcommand is a few lines over the library.

Errors we raise on purpose are printed as one clear message, never a traceback (``--debug`` shows one). Exit codes:
0 success, 1 the spec or the plan has errors, 2 usage errors.
"""

from reconciler.cli import contacts, journeys, messages, reconcile, reports, state, workspace
from reconciler.cli.main import main

__all__ = ["contacts", "journeys", "main", "messages", "reconcile", "reports", "state", "workspace"]
