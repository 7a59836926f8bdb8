"""The README starts where a user starts: its first commands are the two Quickstart commands (CI runs the
second), it stays short, and every relative link of it and of docs/ resolves."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ('python -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[experiments]" '
       "&& python run.py")
TEST = ('python -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 -e ".[experiments,test]" '
        "&& pytest")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_quickstart_has_two_commands_run_and_test():
    assert quickstart_commands() == [RUN, TEST]


def test_the_quickstart_commands_are_the_first_commands_of_the_readme():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(\w*)\n(.*?)```", readme, re.S)
    assert first_block.group(1) == "bash"
    assert [line for line in first_block.group(2).splitlines() if line.strip()] == [RUN, TEST]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quickstart_commands()[1] in ci


def test_the_readme_is_at_most_250_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_relative_link_resolves():
    assert len(DOCS) > 1
    broken = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor of the same page
            if not (doc.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []
