"""Text that a spreadsheet would run as a formula, for every CSV the server hands out (the defects export,
the credentials sheet of `device import`).

What a spreadsheet takes for the start of a formula (OWASP, "CSV Injection"): such a text cell gets a leading
apostrophe, which the spreadsheet shows as text and does not run. Callers leave numbers as they are: a negative
longitude is a number, not a formula.
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def starts_formula(text: str) -> bool:
    """Whether a spreadsheet would take TEXT, as a cell, for a formula."""
    return text.startswith(FORMULA_STARTS)


def safe_text(text: str) -> str:
    """TEXT as a cell a spreadsheet shows and never runs."""
    return "'" + text if starts_formula(text) else text
