"""Where the shared research data lives, for tests that read it (tau-bench retail, ...).

The data sits next to the repository checkout (``../shared/data``); a checkout without it skips those
tests with a reason instead of failing.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """``<checkout>/../shared/data``; calls ``pytest.skip`` when that folder is missing."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"../shared/data not present: {path} is missing (shared datasets not checked out)")
    return path
