"""Made-up contacts for trying a workspace (`reconciler contacts sample`) and for the benchmarks.

Deterministic for a seed, spread over time zones and countries, with a few rows a real export would have:
mixed-case duplicates and padded whitespace. Addresses use the reserved example domains (RFC 2606).
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator

FIRST = (
    "Ada",
    "Bruno",
    "Chiara",
    "Dawid",
    "Emma",
    "Farah",
    "Gustav",
    "Hana",
    "Ines",
    "Jonas",
    "Kasia",
    "Liam",
    "Maja",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Vera",
    "Wiktor",
    "Yuki",
    "Zoe",
)
LAST = (
    "Nowak",
    "Rossi",
    "Müller",
    "García",
    "Smith",
    "Kowalski",
    "Dubois",
    "Jensen",
    "Silva",
    "Tanaka",
    "Novak",
    "Öztürk",
    "Hansen",
    "Moreau",
    "Costa",
)
PLACES = (
    ("PL", "Europe/Warsaw"),
    ("DE", "Europe/Berlin"),
    ("IT", "Europe/Rome"),
    ("US", "America/New_York"),
    ("US", "America/Los_Angeles"),
    ("GB", "Europe/London"),
    ("JP", "Asia/Tokyo"),
    ("BR", "America/Sao_Paulo"),
    ("AU", "Australia/Sydney"),
    ("SE", "Europe/Stockholm"),
)
DOMAINS = ("example.com", "example.org", "example.net")
ROASTS = ("light", "medium", "dark")
BREWS = ("espresso", "filter", "aeropress", "french press", "moka")
COLUMNS = (
    "email",
    "first_name",
    "last_name",
    "country",
    "timezone",
    "tags",
    "total_spend",
    "orders_count",
    "favourite_roast",
    "brew_method",
    "wholesale",
)


def sample_rows(count: int, *, seed: int = 2026) -> Iterator[dict[str, str]]:
    """`count` rows of the example workspace's fields; about one in fifty repeats an earlier address."""
    rng = random.Random(seed)
    for index in range(count):
        number = rng.randrange(index) if index > 50 and rng.random() < 0.02 else index
        first, last = FIRST[number % len(FIRST)], LAST[(number // len(FIRST)) % len(LAST)]
        email = f"{first.lower()}.{number}@{DOMAINS[number % len(DOMAINS)]}"
        if number != index:  # the same person again, typed differently
            email = f"  {email.upper()} "
        country, zone = PLACES[rng.randrange(len(PLACES))]
        orders = rng.choice((0, 0, 1, 2, 3, 5, 8))
        yield {
            "email": email,
            "first_name": first,
            "last_name": last,
            "country": country,
            "timezone": zone,
            "tags": "vip" if rng.random() < 0.05 else "",
            "total_spend": f"{orders * rng.uniform(12, 40):.2f}",
            "orders_count": str(orders),
            "favourite_roast": rng.choice(ROASTS),
            "brew_method": rng.choice(BREWS),
            "wholesale": "true" if rng.random() < 0.03 else "false",
        }


def sample_csv(count: int, *, seed: int = 2026) -> Iterator[str]:
    """The rows as CSV text, header first, a chunk at a time."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for index, row in enumerate(sample_rows(count, seed=seed)):
        writer.writerow(row)
        if index % 10_000 == 9_999:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
