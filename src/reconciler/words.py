"""The small words of messages, so that every message reads as a sentence: "an integer", "1 row", "3 rows"."""

from __future__ import annotations


def a(word: str) -> str:
    """`word` with its indefinite article: "an integer field", "a date field"."""
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def count(number: int, noun: str, plural: str | None = None) -> str:
    """`number` and the noun in the number it needs: "1 row", "2 rows", "10,000 rows"."""
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"
