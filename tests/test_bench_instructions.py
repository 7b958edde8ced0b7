"""``benchmarks/bench_instructions.py``'s reading of callgrind's files, and its refusal when
valgrind is missing. The benchmark itself runs for minutes under callgrind, so it is not run
here; the parser is what turns a dump into the figures, and a wrong reading would print
wrong figures without any error."""

from __future__ import annotations

import ctypes
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_instructions  # noqa: E402
from bench_instructions import Needed, build_marker, parse_callgrind  # noqa: E402

# A dump cut from a real one (callgrind 3.19), names compressed after their first use.
DUMP = """\
version: 1
creator: callgrind-3.19.0
positions: line
events: Ir
summary: 860

ob=(4) /root/.pyenv/versions/3.11.7/bin/python3.11
fl=(6) ./csu/../sysdeps/nptl/libc_start_call_main.h
fn=(7) (below main)
cob=(1) /usr/lib/x86_64-linux-gnu/libc.so.6
cfi=(1) ./csu/libc-start.c
cfn=(1) __libc_start_main@@GLIBC_2.34
calls=1 0
0 860

ob=(1)
fl=(1)
fn=(1) __libc_start_main@@GLIBC_2.34
cob=(2) /root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0
cfi=(2) Modules/main.c
cfn=(2) Py_RunMain
calls=0 29
360 860

ob=(2)
fl=(3) Modules/gcmodule.c
fn=(3) gc_collect_main
12 200
+3 50
cob=(1)
cfi=(4) malloc.c
cfn=(5) malloc
calls=1 10
* 30
cfi=(3)
cfn=(4) deduce_unreachable
calls=2 40
* 120

fn=(4)
40 120

fl=(5) Modules/_json.c
ob=(3) /root/.pyenv/versions/3.11.7/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so
fn=(6) encoder_call
5 400
cob=(1)
cfn=(5)
calls=3 10
* 60
cob=(2)
cfn=(3)
calls=1 12
* 400

ob=(1)
fn=(5)
10 90
totals: 860
"""

LIBC = "libc.so.6"
PYTHON = "libpython3.11.so.1.0"
JSON = "_json.cpython-311-x86_64-linux-gnu.so"


def test_costs_are_read_by_function_and_object_through_compressed_names() -> None:
    dump = parse_callgrind(DUMP)
    assert dump.total == 860
    assert dump.own == {("gc_collect_main", PYTHON): 250, ("deduce_unreachable", PYTHON): 120,
                        ("encoder_call", JSON): 400, ("malloc", LIBC): 90}
    # a call's cost line is the call's, not its caller's own; a callee's object is the
    # caller's unless cob= says otherwise, and cob= holds for its own call only (so read, all
    # 3380 calls of a real dump went to a function defined in the object they were given)
    assert dump.calls[("gc_collect_main", PYTHON), ("deduce_unreachable", PYTHON)] == 120
    assert dump.calls[("encoder_call", JSON), ("malloc", LIBC)] == 60
    assert dump.calls[("encoder_call", JSON), ("gc_collect_main", PYTHON)] == 400


def test_a_call_under_way_at_the_dump_is_not_a_call_made_in_it() -> None:
    """``calls=0``: main was running when the dump was taken; counting its arc would charge
    the whole dump to the call from libc into libpython."""
    dump = parse_callgrind(DUMP)
    assert (("__libc_start_main@@GLIBC_2.34", LIBC), ("Py_RunMain", PYTHON)) not in dump.calls
    # nor is the call from below main (callgrind 3.19 writes it as made once)
    assert not [arc for arc in dump.calls if arc[0][0] == "(below main)"]
    assert dump.entered()[PYTHON] == 400                 # only _json's call of the collector


def test_inclusive_and_entered_costs() -> None:
    dump = parse_callgrind(DUMP)
    assert dump.inclusive(("gc_collect_main", PYTHON)) == 250 + 120 + 30
    assert dump.entered() == {LIBC: 30 + 60, PYTHON: 400}


def test_a_missing_valgrind_is_refused_with_what_to_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bench_instructions.shutil, "which", lambda name: None)
    with pytest.raises(Needed, match=r"valgrind is not on PATH: install it"):
        build_marker(tmp_path)


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("cc") is None,
                    reason="needs valgrind and a C compiler")
def test_the_marker_builds_and_does_nothing_outside_valgrind(tmp_path: Path) -> None:
    marker = ctypes.CDLL(str(build_marker(tmp_path)))
    assert marker.marker_on_valgrind() == 0
    marker.marker_toggle()                  # a client request outside valgrind: no effect


def test_a_call_under_way_at_the_dump_is_kept_apart_with_its_cost_so_far() -> None:
    dump = parse_callgrind(DUMP)
    assert dump.underway == {(("__libc_start_main@@GLIBC_2.34", LIBC), ("Py_RunMain", PYTHON)):
                             860}


def test_by_package_charges_each_instruction_to_the_innermost_package() -> None:
    """trio's step (1000 in all) calls ours (600 in all), which calls json (100) and, through
    it, trio again (50, recursion named ``'2`` by callgrind); the harness's frame is under
    way at the dump. Each package keeps what ran while it was innermost."""
    import instruction_attribution
    from callgrind_files import Dump

    def arc(caller: str, callee: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return (caller, "attribution.so"), (callee, "attribution.so")

    dump = Dump(total=1200)
    dump.underway[arc("attributed", "pkg_benchmarks__from__none")] = 1200
    dump.calls[arc("attributed", "pkg_trio__from__benchmarks")] = 1000
    dump.calls[arc("attributed", "pkg_voiceagent__from__trio")] = 600
    dump.calls[arc("attributed", "pkg_json__from__voiceagent")] = 100
    dump.calls[arc("attributed", "pkg_trio__from__json'2")] = 50
    dump.calls[arc("pkg_voiceagent__from__trio", "fn_3")] = 600
    own = instruction_attribution.by_package(dump)
    assert {k: v for k, v in own.items() if v} == {
        "benchmarks": 200, "trio": 400 + 50, "voiceagent": 500, "json": 50}
    assert sum(own.values()) == dump.total
    assert instruction_attribution.by_function(dump, {3: "voiceagent.x.run"}) == {
        "voiceagent.x.run": 600}
