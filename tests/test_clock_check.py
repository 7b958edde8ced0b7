"""The check in conftest.py (``pytest_runtest_setup``) that a test whose fixture uses a virtual
clock names the clock itself: pytest-trio hands trio.run only the clock among the test's own
arguments, so without the check such a test runs on the real clock with nothing said. Run
here on a small session of its own (pytest's ``pytester``), the hook taken from conftest.py:
it fails the test that leaves the clock to its fixture, and lets pass the one that names it
and one that uses no clock."""

from __future__ import annotations

import pytest

# named in the one module that uses it rather than in conftest.py (which could: it is an
# initial conftest): pytest loads it as this module is collected
pytest_plugins = ["pytester"]

INNER_TESTS = '''
import pytest
import trio


@pytest.fixture
async def settled(autojump_clock):
    """A fixture that jumps the clock: the test's own trio.run must get it."""
    yield autojump_clock


async def test_leaves_the_clock_to_its_fixture(settled):
    await trio.sleep(0)         # on the real clock, without the check: it would pass


async def test_names_the_clock(settled, autojump_clock):
    await trio.sleep(3600)
    assert trio.current_time() >= 3600


async def test_with_no_clock():
    await trio.sleep(0)
'''


@pytest.mark.timeout(60)
def test_a_test_leaving_the_clock_to_a_fixture_fails_and_one_naming_it_passes(
        pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makeconftest("from tests.conftest import pytest_runtest_setup  # noqa: F401\n")
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of test_leaves_the_clock_to_its_fixture*",
        "a fixture of this test uses `autojump_clock`, the test does not: pytest-trio would "
        "run it on the real clock; add `autojump_clock: trio.testing.MockClock` to the "
        "test's arguments"])
