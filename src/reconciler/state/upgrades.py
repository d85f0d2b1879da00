"""What old databases hold, made readable by the migrations that upgrade them (state/schema.py)."""

from __future__ import annotations

import json
import math


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
