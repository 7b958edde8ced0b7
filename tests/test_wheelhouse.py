"""The wheelhouse the install tests use offline (tests/wheelhouse.py): one filled from other
locks, for another Python, or not at all stops those tests with the command that fills it,
before any pip runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests import wheelhouse
from tests.wheelhouse import (
    FILL,
    LOCKS,
    WheelhouseUnusable,
    open_wheelhouse,
    unusable,
    write_record,
)


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A folder recorded as filled from copies of the locks, with one wheel in it."""
    locks = []
    for lock in LOCKS:
        locks.append(tmp_path / lock.name)
        shutil.copy(lock, locks[-1])
    folder = tmp_path / "wheelhouse"
    (folder / wheelhouse.WHEELS).mkdir(parents=True)
    (folder / wheelhouse.WHEELS / "pkg-1.0-py3-none-any.whl").write_bytes(b"PK")
    write_record(folder, locks)
    assert unusable(folder, locks) is None
    return folder, locks


def test_a_wheelhouse_never_filled_stops_the_tests_with_the_command_that_fills_it(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(WheelhouseUnusable) as raised:
        open_wheelhouse(out, folder=tmp_path / "never-filled")
    assert "never-filled has not been filled" in str(raised.value)
    assert f"Fill it with `{FILL}`" in str(raised.value)
    assert not out.exists()                     # no pip ran


def test_a_lock_changed_since_the_fill_makes_it_stale(
        filled: tuple[Path, list[Path]]) -> None:
    folder, locks = filled
    changed = next(lock for lock in locks if lock.name == "build.lock.txt")
    changed.write_text(changed.read_text().replace("hatchling==", "hatchling==9"))
    problem = unusable(folder, locks)
    assert problem == f"{changed} changed since {folder} was filled"


def test_a_fill_for_another_python_is_stale(filled: tuple[Path, list[Path]]) -> None:
    folder, locks = filled
    record = json.loads((folder / wheelhouse.RECORD).read_text())
    (folder / wheelhouse.RECORD).write_text(json.dumps({**record, "python": "cpython 3.99"}))
    problem = unusable(folder, locks)
    assert problem is not None
    assert problem.startswith(f"{folder} holds wheels for cpython 3.99 on ")
    assert problem.endswith(f"the tests run on {wheelhouse.wheels_for()['python']} on "
                            f"{wheelhouse.wheels_for()['platform']}")


def test_a_wheel_gone_since_the_fill_is_noticed(filled: tuple[Path, list[Path]]) -> None:
    folder, locks = filled
    (folder / wheelhouse.WHEELS / "pkg-1.0-py3-none-any.whl").unlink()
    assert unusable(folder, locks) == (
        f"1 of the files in {folder / wheelhouse.WHEELS} are gone "
        "(pkg-1.0-py3-none-any.whl, ...)")


def test_a_record_that_cannot_be_read_says_so(filled: tuple[Path, list[Path]]) -> None:
    folder, locks = filled
    (folder / wheelhouse.RECORD).write_text('{"locks": {')
    problem = unusable(folder, locks)
    assert problem is not None
    assert problem.startswith(f"{folder / wheelhouse.RECORD} cannot be read")
