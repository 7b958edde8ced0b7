"""`.ci/run` is also the README's second command for a new developer: its optional steps must
not stop it on a machine that cannot take them.

The Chromium step runs as the script has it, in bash with the script's own options, on a PATH
whose `apt-get` answers as a machine's would; only the path it checks for Chromium is pointed
at one that does not exist, so the step runs on this machine too (which has Chromium).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = ROOT / ".ci" / "run"
CHROMIUM_STEP = re.compile(r"^if \[ ! -x /usr/bin/chromium \]; then\n.*?^fi$", re.M | re.S)
APT_GET = """#!/bin/sh
case " $* " in
  *" update "*) exit {update} ;;
  *" install "*) [ {install} = 0 ] || echo "E: Unable to locate package chromium" >&2
                 exit {install} ;;
esac
exit 2
"""


def _run_chromium_step(tmp_path: Path, *, update: int, install: int
                       ) -> subprocess.CompletedProcess[str]:
    found = CHROMIUM_STEP.search(CI_RUN.read_text())
    assert found, ".ci/run no longer has its Chromium step where this test looks"
    step = found.group(0).replace("/usr/bin/chromium", str(tmp_path / "no-chromium"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt_get = bin_dir / "apt-get"
    apt_get.write_text(APT_GET.format(update=update, install=install))
    apt_get.chmod(0o755)
    script = f"set -euo pipefail\n{step}\necho went on\n"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=False)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("update", "install"), [(0, 100), (100, 0), (0, 0)],
                         ids=["no-package", "no-update", "installed"])
def test_ci_run_goes_on_whatever_apt_get_makes_of_chromium(tmp_path: Path, update: int,
                                                           install: int) -> None:
    ran = _run_chromium_step(tmp_path, update=update, install=install)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "went on"
    if update or install:       # the developer is told why the browser tests will be skipped
        assert "browser-phone tests will be skipped" in ran.stderr
    else:
        assert ran.stderr == ""
