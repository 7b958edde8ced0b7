"""``voiceagent init DIR``: a new agent project, in its own folder, that depends on voiceagent.

The files come from the templates shipped in the package (``voiceagent.scaffold``); see
docs/build-your-own-agent.md for what to do with them.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from voiceagent.scaffold import Project, ScaffoldError, name_for_folder, render

DESCRIPTION = """\
Create a new agent project in DIR, ready to run offline and tested:

  config/usecases/NAME.yaml  the agent: prompt, one tool, one DTMF handler, scripted rules
  config/profiles.yaml       callers known by number
  PACKAGE/tools.py           the tool's code, registered with @voiceagent.tools.tool
  tests/test_NAME.py         calls through the real server (voiceagent.app.testing)
  .env.example, .env         settings: TOOLS, CONFIG_DIR, STORE=sqlite, LLM=scripted
  pyproject.toml             the package, depending on voiceagent
  Dockerfile, docker-compose.yml, README.md

PACKAGE is NAME in snake_case. DIR must be new or empty (a .git is fine), unless --force."""


def add_command(commands: Any) -> None:
    """Add ``init`` to ``voiceagent``'s subparsers (``argparse._SubParsersAction``)."""
    init = commands.add_parser(
        "init", help="create a new agent project (use case, tool, tests, Docker) in a folder",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_argument("directory", type=Path, metavar="DIR",
                      help="the project's folder: created if need be; must be empty unless "
                           "--force")
    init.add_argument("--name", default=None,
                      help="the use case's name, lowerCamelCase or snake_case (bikeShop, "
                           "bike_shop); the Python package is its snake_case (default: from "
                           "DIR's name, my-agent -> myAgent)")
    init.add_argument("--force", action="store_true",
                      help="write into a folder that is not empty, replacing files of the "
                           "same names (an existing .env is kept)")
    init.set_defaults(run=_init)


def _init(args: argparse.Namespace) -> int:
    target: Path = args.directory
    try:
        name = args.name or name_for_folder(target)
        if name is None:
            raise ScaffoldError(f"{target}: no use case name can be made from this folder's "
                                "name; pass --name (bikeShop, bike_shop)")
        project = Project.named(name)
        written = render(project, target, force=args.force)
    except ScaffoldError as err:
        print(f"voiceagent: init: {err}", file=sys.stderr)
        return 2
    print(f"Created {project.title} in {target}/ (use case {project.name}, package "
          f"{project.package}):")
    for path in sorted(written, key=lambda p: (len(p.parts), str(p))):
        print(f"  {path}")
    print("\nNext (with voiceagent installed in this environment):")
    print(f"  cd {shlex.quote(str(target))}")
    print('  python -m pip install -e ".[test]"')
    print("  pytest")
    print("  voiceagent serve      # and in a second terminal, in that folder:")
    print('  set -a; . ./.env; set +a; voiceagent call --say "When are you open?"')
    return 0
