"""The repository's own commands: CI runs the test command README.md gives users."""

import os
import re

from helpers import REPO


def _pytest_part(command: str) -> str:
  return command[command.index("python -m pytest"):].strip()


def test_ci_runs_the_readme_test_command():
  readme = open(os.path.join(REPO, "README.md")).read()
  blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
  command2 = [line for line in blocks[1].splitlines() if not line.startswith("#")][0]
  ci = open(os.path.join(REPO, ".ci", "run")).read()
  ci_tests = [line for line in ci.splitlines() if line.startswith("python -m pytest")]
  assert ci_tests == [_pytest_part(command2)]
  assert "--durations" in ci_tests[0]  # slow tests stay visible in every CI log
