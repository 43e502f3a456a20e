"""Memory budgets and sizes as users type them: units, plain number strings, and nonsense refused by name."""

from __future__ import annotations

from typing import Any

import pytest

import tensorstore_ds.serve.budget
from tensorstore_ds.errors import OptionsError
from tensorstore_ds.options import parse_size, plain_number
from tensorstore_ds.serve.budget import resolve_budget

AVAILABLE = 4 * 10**9


@pytest.fixture(autouse=True)
def fixed_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorstore_ds.serve.budget, "available_memory", lambda: AVAILABLE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8Gi", 8 * 2**30),
        ("8GiB", 8 * 2**30),
        ("8gib", 8 * 2**30),
        ("8 GiB", 8 * 2**30),
        ("8GB", 8 * 10**9),
        ("8G", 8 * 10**9),
        ("1.5Gi", 3 * 2**29),
        ("512Mi", 2**29),
        ("512MiB", 2**29),
        ("500 MB", 500 * 10**6),
        ("64Ki", 2**16),
        ("2Ti", 2 * 2**40),
        ("2TB", 2 * 10**12),
        ("100B", 100),
        ("1e9", 10**9),
        (" 4096 ", 4096),
        (4096, 4096),
        (3e9, 3 * 10**9),
        (1.9, 1),  # a float byte count is rounded down
    ],
)
def test_sizes(text: Any, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        ("auto", AVAILABLE // 2),
        ("AUTO", AVAILABLE // 2),
        # A plain number string follows the rule for the number it spells.
        ("0.5", AVAILABLE // 2),
        (0.5, AVAILABLE // 2),
        ("1.0", AVAILABLE),
        (1.0, AVAILABLE),
        ("0.25", AVAILABLE // 4),
        ("1", 1),  # an integer is bytes, as a string too
        (1, 1),
        ("8000000000", 8 * 10**9),
        (8_000_000_000, 8 * 10**9),
        ("3e9", 3 * 10**9),  # a float above 1 is bytes
        (3e9, 3 * 10**9),
        ("8Gi", 8 * 2**30),
        ("0.5GiB", 2**29),  # with a unit it is a size, never a fraction
    ],
)
def test_budget_rule(budget: Any, expected: int) -> None:
    assert resolve_budget(budget) == expected


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (0, r"at least 1 byte, got 0;"),
        ("0", r"at least 1 byte, got '0';"),
        (0.0, r"at least 1 byte, got 0\.0;"),
        ("0GiB", r"at least 1 byte, got '0GiB';"),
        (-1, r"cannot be negative, got -1;"),
        (-0.5, r"cannot be negative, got -0\.5;"),
        ("-2", r"cannot be negative, got '-2';"),
        ("-1GiB", r"cannot be negative, got '-1GiB';"),
        (float("nan"), r"finite number, got nan;"),
        ("nan", r"finite number, got 'nan';"),
        (float("inf"), r"finite number, got inf;"),
        ("inf", r"finite number, got 'inf';"),
        (float("-inf"), r"finite number, got -inf;"),
        ("1e400", r"finite number, got '1e400';"),
        ("1e400GiB", r"finite number of at least 1 byte, got '1e400GiB';"),
        ("0.5B", r"at least 1 byte, got '0.5B';"),
        ("lots", r"cannot read 'lots' as a size; use a whole number of bytes or e\.g\. '8GiB'"),
        ("8 parsecs", r"cannot read '8 parsecs' as a size"),
        ("", r"cannot read '' as a size"),
        (True, r"cannot read True as a size"),
        (None, r"cannot read None as a size"),
    ],
)
def test_nonsense_budget_names_the_value(budget: Any, message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        resolve_budget(budget)


@pytest.mark.parametrize("size", [0, "0", -3, "nan", float("inf"), 0.5])
def test_nonsense_size(size: Any) -> None:
    """parse_size (also behind ``cache_limit``) refuses the same nonsense; a fraction is no size there."""
    with pytest.raises(OptionsError, match=r"a size (must|cannot)"):
        parse_size(size)


def test_plain_number() -> None:
    assert plain_number(" 12 ") == 12 and isinstance(plain_number("12"), int)
    assert plain_number("0.5") == 0.5 and plain_number("1e9") == 1e9
    assert plain_number("8GiB") is None and plain_number("auto") is None
