"""The test-run policy in tests/conftest.py: HELPLINE_REQUIRE_ALL=1 turns skips into failures."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

SAMPLE = """
import pytest

def test_passes():
    pass

def test_skips():
    pytest.skip("needs chromium")

@pytest.fixture
def browser():
    pytest.skip("no browser in fixture")

def test_skips_in_fixture(browser):
    pass

@pytest.mark.skipif(True, reason="marked off")
def test_marked_skip():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # The inner run gets our real conftest, not a copy of its logic.
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8"))
    pytester.makepyfile(test_sample=SAMPLE)
    monkeypatch.delenv("HELPLINE_REQUIRE_ALL", raising=False)
    monkeypatch.delenv("HELPLINE_TEST_DATABASE_URL", raising=False)
    return pytester


def test_skips_stay_skips_by_default(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert "skipped tests fail" not in result.stdout.str()


def test_require_all_turns_every_skip_into_a_failure(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELPLINE_REQUIRE_ALL", "1")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-rf")
    # The skip inside a fixture fails at set-up, which pytest counts as an error.
    result.assert_outcomes(passed=1, failed=2, errors=1, xfailed=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        [
            "*HELPLINE_REQUIRE_ALL=1: skipped tests fail*",
            "*test_skips*HELPLINE_REQUIRE_ALL=1 forbids skips: Skipped: needs chromium*",
            "*test_marked_skip*HELPLINE_REQUIRE_ALL=1 forbids skips: marked off*",
        ]
    )


def test_require_all_fails_a_module_level_skip(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(
        test_optional="import pytest\npytest.importorskip('no_such_module_for_helpline')\n"
    )
    monkeypatch.setenv("HELPLINE_REQUIRE_ALL", "1")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "test_optional.py")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*HELPLINE_REQUIRE_ALL=1 forbids skips*no_such_module_for_helpline*"])


def test_report_header_names_the_backend(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-k", "passes")
    result.stdout.fnmatch_lines(["helpline database backend: sqlite*"])
    monkeypatch.setenv("HELPLINE_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:1/helpline")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "-k", "passes")
    result.stdout.fnmatch_lines(["helpline database backend: postgresql at *127.0.0.1:1*"])
