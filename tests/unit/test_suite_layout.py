"""The test suite's own layout: pytest imports test files by basename (no packages), so two files
with one name in unit/ and integration/ stop the whole collection."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_file_basenames_are_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert len(names) > 10  # the suite was found
    assert [n for n, c in names.items() if c > 1] == []
