"""The spec language: one pydantic model per document kind, and the DesiredState a workspace adds up to."""

from reconciler.spec.contact import BUILTIN_FIELDS, Contact
from reconciler.spec.documents import (
    Campaign,
    CustomField,
    MailingList,
    Segment,
    Settings,
)
from reconciler.spec.workflow import Workflow
from reconciler.spec.workspace import KINDS, DesiredState, PageFile, Source, TemplateFile

__all__ = [
    "BUILTIN_FIELDS",
    "KINDS",
    "Campaign",
    "Contact",
    "CustomField",
    "DesiredState",
    "MailingList",
    "PageFile",
    "Segment",
    "Settings",
    "Source",
    "TemplateFile",
    "Workflow",
]
