"""The test-run policy in tests/conftest.py: HELPLINE_REQUIRE_ALL=1 turns skips into failures."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
APP_FIXTURES_MARKER = "# --- application fixtures (server, clients) ---"

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


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A subprocess: the inner run imports its own copy of conftest.py, untouched by this session.
    return project.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function", *args
    )


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # The inner run gets the real harness part of conftest.py (everything above the application
    # fixtures, which need the modules beside it), not a copy of its logic.
    harness = CONFTEST.read_text(encoding="utf-8").split(APP_FIXTURES_MARKER)[0]
    pytester.makeconftest(harness)
    pytester.makepyfile(test_sample=SAMPLE)
    monkeypatch.delenv("HELPLINE_REQUIRE_ALL", raising=False)
    monkeypatch.delenv("HELPLINE_TEST_DATABASE_URL", raising=False)
    return pytester


def test_skips_stay_skips_by_default(project: pytest.Pytester) -> None:
    result = run(project)
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    result.stdout.fnmatch_lines(["helpline database backend: sqlite*"])
    assert "skipped tests fail" not in result.stdout.str()


def test_require_all_turns_every_skip_into_a_failure(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELPLINE_REQUIRE_ALL", "1")
    result = run(project, "-rf")
    # Skips raised during set-up (fixture, skipif mark) fail there, which pytest counts as errors.
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["HELPLINE_REQUIRE_ALL=1: skipped tests fail"])
    # Each failure carries the skip reason.
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_skips_in_fixture*",
            "skipped, but HELPLINE_REQUIRE_ALL=1 forbids skips: Skipped: no browser in fixture",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_marked_skip*",
            "skipped, but HELPLINE_REQUIRE_ALL=1 forbids skips: Skipped: marked off",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_skips _*",
            "skipped, but HELPLINE_REQUIRE_ALL=1 forbids skips: Skipped: needs chromium",
        ]
    )


def test_require_all_fails_a_module_level_skip(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(
        test_optional="import pytest\npytest.importorskip('no_such_module_for_helpline')\n"
    )
    monkeypatch.setenv("HELPLINE_REQUIRE_ALL", "1")
    result = run(project, "test_optional.py")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*HELPLINE_REQUIRE_ALL=1 forbids skips*no_such_module_for_helpline*"])


def test_report_header_names_the_postgres_backend(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELPLINE_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:1/helpline")
    result = run(project, "-k", "passes")
    result.stdout.fnmatch_lines(["helpline database backend: postgresql at *127.0.0.1:1*"])
