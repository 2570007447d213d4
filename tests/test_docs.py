"""The README and docs/ stay true: every `python -m fluid_lightning` command they show parses (Lightning
commands with --print_config, which checks every config file, key and type; the others through their
own parser), the README's layout matches the package, and the README stays short."""

import argparse
import re
import shlex

import pytest
from tiny import ROOT

from fluid_lightning.cli import COMMANDS, LIGHTNING_COMMANDS, lightning_cli

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    blocks, info, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if info is None:
                info, body = line[3:].strip(), []
            else:
                blocks.append((info, "\n".join(body)))
                info = None
        elif info is not None:
            body.append(line)
    return blocks


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, argv after `fluid_lightning`) for every command line in a page's shell code blocks."""
    found = []
    for page in PAGES:
        for info, block in code_blocks(page.read_text(encoding="utf-8")):
            if info not in ("", "bash"):
                continue
            for line in block.replace("\\\n", " ").splitlines():
                if "-m fluid_lightning" not in line:
                    continue
                words = shlex.split(line, comments=True)
                if "fluid_lightning" in words and words[words.index("fluid_lightning") - 1] == "-m":
                    found.append((page.name, words[words.index("fluid_lightning") + 1 :]))
    return found


COMMAND_LINES = documented_commands()


def test_the_pages_show_every_command():
    shown = {argv[0] for _, argv in COMMAND_LINES if argv}
    assert shown >= set(COMMANDS) | {"fit", "predict"}, set(COMMANDS) - shown


@pytest.mark.parametrize("page,argv", COMMAND_LINES, ids=[f"{p}:{' '.join(a[:3])}" for p, a in COMMAND_LINES])
def test_documented_command_parses(page, argv, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the pages' paths are relative to the repository
    name = argv[0]
    if name in ("--help", "-h"):
        return
    if name in LIGHTNING_COMMANDS:
        args = [a for a in argv if a != "--print_config"]
        with pytest.raises(SystemExit) as exit_info:
            lightning_cli([*args, "--print_config"])
        assert exit_info.value.code in (0, None), capsys.readouterr().err[-2000:]
        return
    assert name in COMMANDS, f"{page}: unknown command {name!r}"
    parser = argparse.ArgumentParser(prog=f"fluid_lightning {name}")
    COMMANDS[name].add_arguments(parser)
    ns = parser.parse_args(argv[1:])
    assert callable(ns.run)


def test_the_readme_layout_matches_the_package():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = code_blocks(text.split("## Layout", 1)[1])[0][1]
    listed, top = set(), []
    for line in block.strip().splitlines():
        entry = line.split()[0] if line.split() else ""
        if line.startswith("  "):
            listed.add(entry.rstrip("/"))
            assert (ROOT / "fluid_lightning" / entry).exists(), f"README layout lists fluid_lightning/{entry}"
        else:
            top += [name.rstrip("/,") for name in line.split("  ")[0].split()]
    for name in top:
        assert (ROOT / name).exists() or name == "runs", f"README layout lists {name}/"
    package = {p.name.removesuffix(".py") for p in (ROOT / "fluid_lightning").iterdir()
               if not p.name.startswith("_") and (p.suffix == ".py" or p.is_dir())}
    assert {name.removesuffix(".py") for name in listed} == package


def test_the_readme_is_read_in_five_minutes():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_pages_resolve(page):
    for target in re.findall(r"\]\(([^)#]+)\)", page.read_text(encoding="utf-8")):
        if not target.startswith("http"):
            assert (page.parent / target).exists(), f"{page.name} links to {target}"


def test_every_test_a_page_names_exists():
    """docs/reliability.md (and any page) points at tests by ``tests/<file>.py::<name>`` or ``::<name>``
    after one: each must be a test function of that file."""
    for page in PAGES:
        file = None
        for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", page.read_text()):
            file = path or file
            if path and not (ROOT / path).is_file():
                raise AssertionError(f"{page.name} names {path}, which does not exist")
            if name:
                assert file and re.search(rf"^def {name}\(", (ROOT / file).read_text(), re.M), \
                    f"{page.name} names {file}::{name}, which is not a test there"
