"""``bench_instructions.py --by-package``: whose Python code a turn's instructions run under.

Callgrind names C functions only: all Python code is ``_PyEval_EvalFrameDefault``. So the
attributed child installs a frame evaluator (PEP 523) from a small generated C library: each
frame is classified once by its code object's file (a package, below) and, when its package
differs from the running one, is evaluated through a C function named for the pair
``pkg_<package>__from__<caller's package>``; each function of ours also through one of a
pool of slot functions, ``fn_<n>``, whose names the child prints. Callgrind then charges
every instruction (the interpreter's, json's C, libc's, libcrypto's...) to the innermost
package's trampoline, and a package's own instructions are the calls into its trampolines
less the calls from them into another package's: exact, whatever the nesting. A function's
inclusive cost is the calls into its slot (every resume of a coroutine included).

The evaluator has a price: CPython 3.11 makes Python-to-Python calls in one C loop unless a
frame evaluator is set, and each transition adds a C call; the attributed run's total is
printed beside the plain run's, and the shares are of the attributed total.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callgrind_files import Dump

ROOT = Path(__file__).resolve().parent.parent
# a file's package: site-packages' by their top name, ours, the harness, the standard library
# (json and logging apart), code made at run time; "other" for the rest
PACKAGES = ("(none)", "voiceagent", "actors", "trio", "hypercorn", "wsproto", "h11", "quart",
            "botocore", "boto3", "json", "logging", "stdlib", "generated", "benchmarks",
            "other")
SLOTS = 2048                  # functions of ours given their own trampoline (first seen first)
OURS = ("voiceagent", "actors")
PAIR = re.compile(r"^pkg_(\w+?)__from__(\w+?)(?:'\d+)?$")
SLOT = re.compile(r"^fn_(\d+)(?:'\d+)?$")
STDLIB = os.path.dirname(os.__file__)


def package_of(path: str) -> str:
    """A code object's package, by its file."""
    if "site-packages" in path:
        top = path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
        return top if top in PACKAGES else "other"
    if path.startswith(str(ROOT) + os.sep):
        top = path[len(str(ROOT)) + 1:].split("/", 1)[0]
        return top if top in OURS else "benchmarks"       # the harness: benchmarks/, tests/
    if path.startswith(STDLIB + os.sep):
        top = path[len(STDLIB) + 1:].split("/", 1)[0]
        return top if top in ("json", "logging") else "stdlib"
    if path.startswith("<frozen"):
        return "stdlib"
    # attrs' and dataclasses' made methods ("<attrs generated init ...>", "<string>")
    return "generated" if path.startswith("<") else "other"


def c_source() -> str:
    count = len(PACKAGES)
    lines = ["#include <Python.h>",
             "/* CPython 3.11's _PyInterpreterFrame begins so (Include/internal/pycore_frame.h) */",
             "struct frame_head { PyObject *f_func, *f_globals, *f_builtins, *f_locals;",
             "                    PyCodeObject *f_code; };",
             "typedef PyObject *(*eval_t)(PyThreadState *, struct _PyInterpreterFrame *, int);",
             "static __thread int current = 0, busy = 0;",
             "static Py_ssize_t extra_index = -1;",
             "static PyObject *classify = NULL;",
             "#define EVAL(ts, f, t) _PyEval_EvalFrameDefault(ts, f, t)"]
    for slot in range(SLOTS):
        lines.append(f"__attribute__((noinline)) PyObject *fn_{slot}(PyThreadState *ts, "
                     "struct _PyInterpreterFrame *f, int t) "
                     "{ PyObject *r = EVAL(ts, f, t); __asm__ volatile(\"\"); return r; }")
    lines.append(f"static eval_t slots[{SLOTS}] = {{"
                 + ", ".join(f"fn_{n}" for n in range(SLOTS)) + "};")
    for child in range(count):
        for parent in range(count):
            lines.append(
                f"__attribute__((noinline)) PyObject *pkg_{PACKAGES[child].strip('()')}__from__"
                f"{PACKAGES[parent].strip('()')}(PyThreadState *ts, "
                "struct _PyInterpreterFrame *f, int t, int slot) { int saved = current; "
                f"current = {child}; PyObject *r = slot >= 0 ? slots[slot](ts, f, t) "
                ": EVAL(ts, f, t); current = saved; return r; }")
    lines.append(f"static PyObject *(*pairs[{count}][{count}])(PyThreadState *, "
                 "struct _PyInterpreterFrame *, int, int) = {"
                 + ", ".join("{" + ", ".join(
                     f"pkg_{PACKAGES[c].strip('()')}__from__{PACKAGES[p].strip('()')}"
                     for p in range(count)) + "}" for c in range(count)) + "};")
    lines.append(f"""
static PyObject *attributed(PyThreadState *ts, struct _PyInterpreterFrame *f, int t) {{
    if (busy) return EVAL(ts, f, t);
    PyObject *code = (PyObject *)((struct frame_head *)f)->f_code;
    void *extra = NULL;
    long value;
    if (_PyCode_GetExtra(code, extra_index, &extra) == 0 && extra != NULL) {{
        value = (long)(intptr_t)extra - 1;
    }} else {{
        PyObject *type, *error, *trace;
        PyErr_Fetch(&type, &error, &trace);
        busy = 1;
        PyObject *answer = PyObject_CallOneArg(classify, code);
        busy = 0;
        value = answer ? PyLong_AsLong(answer) : 0;
        Py_XDECREF(answer);
        PyErr_Clear();
        PyErr_Restore(type, error, trace);
        _PyCode_SetExtra(code, extra_index, (void *)(intptr_t)(value + 1));
    }}
    int package = (int)(value % {count}), slot = (int)(value / {count}) - 1;
    if (package == current)
        return slot >= 0 ? slots[slot](ts, f, t) : EVAL(ts, f, t);
    return pairs[package][current](ts, f, t, slot);
}}

int attribution_start(PyObject *classifier) {{
    extra_index = _PyEval_RequestCodeExtraIndex(NULL);
    if (extra_index < 0) return -1;
    Py_INCREF(classifier);
    classify = classifier;
    _PyInterpreterState_SetEvalFrameFunc(PyInterpreterState_Get(), attributed);
    return 0;
}}""")
    return "\n".join(lines) + "\n"


def build(folder: Path, compiler: str) -> Path:
    """The attribution library, built at -O0: no identical slot functions folded into one,
    no trampoline turned into a jump (either would hide it from callgrind)."""
    if sys.version_info[:2] != (3, 11):
        raise SystemExit("--by-package reads CPython 3.11's frame layout; this is "
                         f"{sys.version.split()[0]}: run it with Python 3.11")
    import sysconfig
    source, library = folder / "attribution.c", folder / "attribution.so"
    source.write_text(c_source())
    built = subprocess.run([compiler, "-O0", "-shared", "-fPIC", "-I",
                            sysconfig.get_paths()["include"], "-o", str(library), str(source)],
                           capture_output=True, text=True, timeout=300)
    if built.returncode != 0:
        raise SystemExit(f"building the attribution library failed:\n{built.stderr[-2000:]}"
                         "it needs Python's headers (python3.11-dev or pyenv's include/)")
    return library


def start(library: str) -> dict[int, str]:
    """In the child: every frame from now on is classified and evaluated through the
    trampolines. Returns the slots given so far, filled in as functions of ours are seen."""
    names: dict[int, str] = {}
    packages = {name: n for n, name in enumerate(PACKAGES)}

    lock = threading.Lock()     # the store's worker threads classify too: one slot each

    def classify(code: Any) -> int:
        package = package_of(code.co_filename)
        slot = -1
        if package in OURS:
            with lock:
                if len(names) < SLOTS:
                    slot = len(names)
                    module = code.co_filename[len(str(ROOT)) + 1:].removesuffix(".py")
                    names[slot] = f"{module.replace('/', '.')}.{code.co_qualname}"
        return (slot + 1) * len(PACKAGES) + packages[package]

    attribution = ctypes.PyDLL(library)
    attribution.attribution_start.argtypes = [ctypes.py_object]
    if attribution.attribution_start(classify) != 0:
        raise SystemExit("the frame evaluator could not be installed")
    return names


def by_package(dump: Dump) -> Counter[str]:
    """Each package's own instructions: the calls into its trampolines less the calls from
    inside them into another package's (a trampoline's caller is the evaluator, so the
    package it was called from is its name's second part). Calls under way at the dump are
    counted on both sides; the result sums to the dump's total."""
    own: Counter[str] = Counter({"none": dump.total})
    for arcs in (dump.calls, dump.underway):
        for (_, callee), cost in arcs.items():
            into = PAIR.match(callee[0])
            if into:
                own[into.group(1)] += cost
                own[into.group(2)] -= cost
    return own


def by_function(dump: Dump, names: dict[int, str]) -> Counter[str]:
    """Inclusive instructions of each function of ours: the calls into its slot."""
    inclusive: Counter[str] = Counter()
    for arcs in (dump.calls, dump.underway):
        for (_, callee), cost in arcs.items():
            slot = SLOT.match(callee[0])
            if slot:
                inclusive[names.get(int(slot.group(1)), f"slot {slot.group(1)}")] += cost
    return inclusive


def report(dumps: list[Dump], split: Callable[[float, float], tuple[float, float]],
           names: dict[int, str], functions: int, meter: list[float],
           plain: tuple[float, float] | None) -> None:
    """The attributed run's figures: by package (the meter's own instructions taken off the
    harness's), then the functions of ours that cost most a turn, inclusive."""
    packages = [by_package(dump) for dump in dumps]
    for counter, cost in zip(packages, meter, strict=True):
        counter["benchmarks"] -= round(cost)
    token, turn = split(*(sum(counter.values()) for counter in packages))
    print(f"\nattributed (ours through the frame evaluator): {token:,.0f} a token, "
          f"{turn:,.0f} a turn" + (f", {token / plain[0]:.2f} and {turn / plain[1]:.2f} "
                                   "times the plain run's" if plain else ""))
    print(f"  by package whose Python code ran (C it called included), per token and "
          f"per turn, and the share of each:\n{'':<4}{'package':<14}{'per token':>12}"
          f"{'':>8}{'per turn':>14}")
    rows = [(name, *split(packages[0][name], packages[1][name]))
            for name in set(packages[0]) | set(packages[1])]
    for name, a_token, a_turn in sorted(rows, key=lambda r: -r[2]):
        if abs(a_token) < 1 and abs(a_turn) < 1:
            continue
        label = "harness" if name == "benchmarks" else name
        print(f"{'':<4}{label:<14}{a_token:>12,.0f}{a_token / token:>8.1%}{a_turn:>14,.0f}"
              f"{a_turn / turn:>8.1%}")
    inclusive = [by_function(dump, names) for dump in dumps]
    print(f"  the {functions} functions of ours that cost most a turn, inclusive (what they "
          "called, and every resume of a coroutine): per token, per turn")
    rows = [(name, *split(inclusive[0][name], inclusive[1][name]))
            for name in set(inclusive[0]) | set(inclusive[1])]
    for name, f_token, f_turn in sorted(rows, key=lambda r: -r[2])[:functions]:
        print(f"    {f_token:>10,.0f}{f_turn:>12,.0f}  {name}")
