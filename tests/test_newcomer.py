"""What a newcomer reads first (issue 27): the README's quick start and its commands table.

The commands table is checked against the commands themselves (click's parameters), so that a
new command or option cannot be added without its row: whatever commands exist are checked.
"""

import re
import shlex
from pathlib import Path

import click
import pytest

from mlp_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else None]


def commands(group: click.Group = main, prefix: str = "") -> dict[str, click.Command]:
    """Every command as it is typed after `mlp-cli` ("train", or "group sub" for a nested group)."""
    out = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out.update(commands(command, f"{prefix}{name} "))
        elif not command.hidden:
            out[prefix + name] = command
    return out


def rows_of(name: str) -> str:
    """The rows of the commands table whose first cell shows `mlp-cli NAME`, joined."""
    rows = []
    for line in section("Commands").splitlines():
        if line.startswith("| `"):
            first = line[2:].split(" | ", 1)[0]
            if re.search(rf"`mlp-cli {re.escape(name)}(?=[ `])", first):
                rows.append(line)
    return "\n".join(rows)


def mentioned(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


@pytest.mark.parametrize("name", sorted(commands()))
def test_the_readme_lists_every_option_of_every_command(name):
    rows = rows_of(name)
    assert rows, f"README's commands section has no row for `mlp-cli {name} ...`"
    for param in commands()[name].params:
        if isinstance(param, click.Option) and not param.hidden:
            for option in [*param.opts, *param.secondary_opts]:
                assert mentioned(rows, option), f"README's rows of `mlp-cli {name}` do not show {option}"
        elif isinstance(param, click.Argument):
            metavar = param.metavar or param.name.upper()
            word = re.findall(r"[A-Z][A-Z_]*(?:=[A-Z]+)?", metavar)[-1]  # [KEY=VALUE]... -> KEY=VALUE
            assert word in rows, f"README's rows of `mlp-cli {name}` do not show its argument {metavar}"


def test_the_readme_lists_the_program_s_own_options():
    table = section("Commands")
    for param in main.params:
        for option in getattr(param, "opts", []):
            assert mentioned(table, option), option
    for option in main.context_settings["help_option_names"]:
        assert mentioned(table, option), option


def quick_start() -> list[list[str]]:
    lines = [line[4:] for line in section("Quick start").splitlines() if line.startswith("    ")]
    return [shlex.split(line, comments=True) for line in lines]


def test_the_quick_start_can_be_pasted_line_by_line_into_a_fresh_clone():
    """Each line needs only what the lines before it made: the venv before it is activated, a run
    directory before it is resumed or evaluated, and files that the clone has."""
    lines = quick_start()
    assert lines[0] == ["make", "setup"] and "setup:" in (ROOT / "Makefile").read_text()
    assert lines[1] == ["source", ".venv/bin/activate"]
    made = set()
    for words in lines[2:]:
        assert words[0] == "mlp-cli" and words[1] in commands(), words
        options = dict(zip(words, words[1:]))
        for option in ("--config", "--sweep"):
            if option in options:
                assert (ROOT / options[option]).is_file(), f"{options[option]} is not in the clone"
        assert "--resume" not in options or Path(options["--resume"]) in made, words
        for word in words[2:]:  # a run directory, or a file in one, that this line reads
            path = Path(word)
            if path.parts[:1] == ("runs",) and word != options.get("--out"):
                assert made & {path, *path.parents}, f"{' '.join(words)}: {word} is not made by an earlier line"
        if "--out" in options:
            made.add(Path(options["--out"]))
