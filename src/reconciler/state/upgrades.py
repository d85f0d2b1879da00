"""What old databases hold, made readable by the migrations that upgrade them (state/schema.py)."""

from __future__ import annotations

import json
import math

from reconciler.state.postgres import StateDatabase


def repaired_json(text: object, empty: str) -> str:
    """Stored JSON made readable: non-finite numbers as null; anything unreadable, or of the wrong shape, `empty`."""

    def finite(number: str) -> float | None:
        value = float(number)
        return value if math.isfinite(value) else None

    try:
        value = json.loads(str(text), parse_constant=lambda _: None, parse_float=finite)
    except (ValueError, RecursionError):
        return empty
    if not isinstance(value, dict if empty == "{}" else list):
        return empty
    return json.dumps(value, allow_nan=False)


def settings_from_keys(legacy: dict[str, str]) -> str:
    """A Settings document from the keys 0.3 kept (the next apply replaces it with the workspace's own)."""
    grace = int(legacy.get("settings.schedule_grace") or 21600)
    document = {
        "kind": "Settings",
        "name": "default",
        "organization": json.loads(legacy.get("settings.organization") or "{}"),
        "public_url": legacy["settings.public_url"],
        "timezone": legacy.get("settings.timezone") or "UTC",
        "signing_key_env": legacy.get("settings.signing_key_env") or "RECONCILER_SECRET",
        "senders": {"default": json.loads(legacy.get("settings.default_sender") or "{}")},
        "transports": json.loads(legacy.get("settings.transports") or "{}"),
        "defaults": {"sender": "default", "transport": legacy.get("settings.default_transport") or "outbox"},
        "schedule_grace": f"{max(1, grace // 60)}m",
        "quiet_hours": json.loads(legacy.get("settings.quiet_hours") or "null"),
        "frequency_cap": json.loads(legacy.get("settings.frequency_cap") or "null"),
        "api": {"token_env": legacy.get("settings.api_token_env") or "RECONCILER_API_TOKEN"},
    }
    return json.dumps(document)


_JSON_COLUMNS = (
    ("contact", "fields", "{}", "SELECT id, fields FROM contacts WHERE json_valid(fields) = 0", "contacts SET fields"),
    ("contact", "tags", "[]", "SELECT id, tags FROM contacts WHERE json_valid(tags) = 0", "contacts SET tags"),
    (
        "event",
        "properties",
        "{}",
        "SELECT id, properties FROM events WHERE json_valid(properties) = 0",
        "events SET properties",
    ),
)


def repair_stored_json(db: StateDatabase) -> list[str]:
    """Stored JSON that cannot be read (json_valid() says 0), repaired in place; what was repaired, as
    "contact 12 fields"."""
    repaired: list[str] = []
    for label, column, empty, select, update in _JSON_COLUMNS:
        for row_id, text in db.conn.execute(select).fetchall():
            db.conn.execute("UPDATE " + update + " = ? WHERE id = ?", (repaired_json(text, empty), row_id))
            repaired.append(f"{label} {row_id} {column}")
    return repaired
