"""The state database: the only package that runs SQL."""

from reconciler.state.campaigns import CampaignRecord
from reconciler.state.db import StateError, open_db, write
from reconciler.state.observe import ObservedState, Signature, observe

__all__ = ["CampaignRecord", "ObservedState", "Signature", "StateError", "observe", "open_db", "write"]
