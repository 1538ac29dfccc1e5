"""Under CI=true a test that skips for a missing service (PostgreSQL, Node) fails instead,
so that a green CI never hides an untested store or client; any other skip stays a skip."""

from __future__ import annotations

import pytest

SUITE = """
import pytest
from tests.conftest import service_missing

def test_needs_postgres():
    service_missing("no PostgreSQL listening on 127.0.0.1:5432")

def test_skips_for_another_reason():
    pytest.skip("not relevant on this platform")

def test_passes():
    pass
"""


@pytest.mark.parametrize(("ci", "failed", "skipped"), [("true", 1, 1), ("", 0, 2)])
def test_ci_turns_a_skip_for_a_missing_service_into_a_failure(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, failed: int, skipped: int
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest("from tests.conftest import pytest_runtest_makereport  # noqa: F401")
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_services=SUITE)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=failed, skipped=skipped)
    if failed:
        result.stdout.fnmatch_lines(["*CI=true and a service the suite needs is missing*"])
