"""The state database: the only package that runs SQL (ARCHITECTURE)."""

from reconciler.state.db import StateError, open_db, state_path, write
from reconciler.state.observe import CampaignRecord, ObservedState, Signature, observe

__all__ = ["CampaignRecord", "ObservedState", "Signature", "StateError", "observe", "open_db", "state_path", "write"]
