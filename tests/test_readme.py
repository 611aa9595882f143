"""Every code block of README.md is run or checked here, so the README's examples cannot rot; and
every relative link of README.md and of the docs pages points to a file (and heading) that exists.

How each block is checked:

* a ``python`` block runs as it is, in a temporary directory;
* a ``bash`` block is read command line by command line (``#`` comments dropped, ``\\``
  continuations joined), and each line is checked by the rule of its first word:

  - ``make T ...``: every T is a target of the Makefile;
  - ``pip install ...``: each option is one the Makefile passes to pip too, and each argument is
    either a directory that holds a ``pyproject.toml`` or a requirement that the project declares;
  - ``fastcl ...``: the lines of the quick start run for real, in a temporary directory, with the
    scale-down of :data:`QUICK` appended (later options win in argparse, so ``--tasks 2`` after the
    README's ``--tasks 5`` runs 2 tasks); every other line is parsed by the real parser
    (:func:`fastcl.cli.build_parser`), and a ``fastcl run`` line is checked by
    :func:`fastcl.cli._check_run_args`, which checks every option before a run starts, and its
    ``--set`` keys against the learner's config; ``--help`` lines run.

A block in another language, or a command line no rule knows, fails the test: give it a rule here.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: The quick start's ``fastcl`` lines (the README's arguments) -> what the test appends to run it
#: here within seconds: one thread (the README's times are of an idle 2-core machine), no progress
#: bars or plots, and fewer tasks / examples / iterations where the README's run takes longer.
QUICK: dict[str, list[str]] = {
    "info": [],
    "run er-ring,hal --tasks 5": ["--tasks", "2", "--per-task", "200"],
    "run emcl,lamaml-fo --tasks 5 --per-task 500": ["--tasks", "2", "--per-task", "100"],
    "run maml --iterations 1000": ["--iterations", "50", "--maml-eval-curves", "10"],
    "run cts --family synthetic2d": [],
}
RUN_QUIETLY = ["--threads", "1", "--no-progress", "--no-plots"]
QUICK_SECTION = "Quick start"


# ---- reading the README -----------------------------------------------------------------------

def _blocks(text: str) -> list[tuple[str, str, str]]:
    """The fenced code blocks of a markdown text: (language, code, the ``##`` section they are in)."""
    out, section, lang, code = [], "", None, []
    for line in text.split("\n"):
        if lang is None:
            if line.startswith("## "):
                section = line[3:].strip()
            elif line.startswith("```"):
                lang, code = line[3:].strip(), []
        elif line.startswith("```"):
            out.append((lang, "\n".join(code) + "\n", section))
            lang = None
        else:
            code.append(line)
    assert lang is None, "README.md: a code block is not closed"
    return out


def _command_lines(code: str) -> list[list[str]]:
    """The command lines of a shell block, split as the shell would (comments dropped)."""
    joined = code.replace("\\\n", " ")
    return [words for line in joined.split("\n") if (words := shlex.split(line, comments=True))]


BLOCKS = _blocks(README.read_text())
PYTHON = [code for lang, code, _ in BLOCKS if lang == "python"]
COMMANDS = [(words, section) for lang, code, section in BLOCKS if lang == "bash"
            for words in _command_lines(code)]


def test_every_block_has_a_rule():
    """Only ``python`` and ``bash`` blocks, so every block is run or checked below."""
    assert PYTHON, "the README's own-loop example is gone"
    other = [(lang, code.split("\n")[0]) for lang, code, _ in BLOCKS if lang not in ("python", "bash")]
    assert not other, f"README.md blocks that tests/test_readme.py neither runs nor checks: {other}"
    unknown = [" ".join(w) for w, _ in COMMANDS if w[0] not in ("make", "pip", "fastcl")]
    assert not unknown, f"README.md command lines that tests/test_readme.py does not check: {unknown}"


# ---- python blocks ----------------------------------------------------------------------------

@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_block_runs(index, tmp_path, monkeypatch, capsys):
    code = PYTHON[index]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"readme_block_{index}"}
    with torch.random.fork_rng():
        exec(compile(code, f"README.md python block {index}", "exec"), namespace)
    printed = capsys.readouterr().out
    if "AccuracyMatrix" in code:  # the own-loop example: it learned something
        acc = namespace["acc"]
        assert acc.summary()["accuracy"] > 0.5, printed


# ---- make and pip -----------------------------------------------------------------------------

def _makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().split("\n"):
        m = re.match(r"^([A-Za-z0-9_.$()/ -]+?)\s*:(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(m.group(1).split())
    return targets


MAKE = [w for w, _ in COMMANDS if w[0] == "make"]
PIP = [w for w, _ in COMMANDS if w[0] == "pip"]


def test_the_quick_start_begins_with_make_run_and_make_test():
    """The two commands of the Makefile's header come first in the README."""
    assert MAKE[:2] == [["make", "run"], ["make", "test"]], MAKE[:2]


@pytest.mark.parametrize("words", MAKE, ids=" ".join)
def test_make_target_exists(words):
    targets = _makefile_targets()
    named = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    assert named, words
    assert all(t in targets for t in named), f"{' '.join(words)}: not a Makefile target ({sorted(targets)})"


def _declared_requirements() -> dict[str, list[str]]:
    """name -> specifiers, from requirements*.txt and the [project] dependencies of pyproject.toml."""
    lines = []
    for path in ROOT.glob("requirements*.txt"):
        lines += [line.split("#")[0].strip() for line in path.read_text().split("\n")]
    lines += re.findall(r'^\s*"([^"]+)",?\s*$', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    out: dict[str, list[str]] = {}
    for line in filter(None, lines):
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", line)
        out.setdefault(m.group(1).lower(), []).append(m.group(2).strip())
    return out


def _makefile_pip_options() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"(?<=\s)(--?[a-z][a-z-]*)", " ".join(
        line for line in text.split("\n") if "$(PIP)" in line or "pip" in line)))


@pytest.mark.parametrize("words", PIP, ids=" ".join)
def test_pip_command_installs_what_the_project_declares(words):
    assert words[1] == "install", words
    options = [w for w in words[2:] if w.startswith("-")]
    assert set(options) <= _makefile_pip_options(), f"{' '.join(words)}: options the Makefile never uses"
    declared = _declared_requirements()
    for arg in (w for w in words[2:] if not w.startswith("-")):
        if arg == "." or arg.startswith(("./", "/")):
            assert (ROOT / arg / "pyproject.toml").exists(), arg
        else:
            name, spec = re.match(r"^([A-Za-z0-9_.-]+)(.*)$", arg).groups()
            assert name.lower() in declared, f"{arg}: not a requirement of the project"
            assert not spec or spec in declared[name.lower()], f"{arg}: the project says {declared[name.lower()]}"


def test_the_torch_pin_the_readme_names_is_the_one_make_installs():
    pins = set(re.findall(r"torch==([0-9][0-9.]*[0-9])", README.read_text()))
    assert pins and pins == {s[2:] for s in _declared_requirements()["torch"] if s.startswith("==")}, pins


# ---- fastcl command lines ---------------------------------------------------------------------

FASTCL = [(w[1:], section) for w, section in COMMANDS if w[0] == "fastcl"]


def test_every_quick_start_command_runs_here():
    """Each ``fastcl`` line of the quick start has its scale-down, and QUICK holds no stale line."""
    quick = {" ".join(argv) for argv, section in FASTCL if section.startswith(QUICK_SECTION)}
    assert quick, "no fastcl command in the quick start"
    assert quick == set(QUICK), (f"quick start lines without a scale-down in QUICK: {quick - set(QUICK)}; "
                                 f"QUICK lines not in the README: {set(QUICK) - quick}")


@pytest.mark.parametrize("argv", [argv for argv, section in FASTCL if section.startswith(QUICK_SECTION)],
                         ids=" ".join)
def test_quick_start_command_runs(argv, tmp_path, monkeypatch, capsys):
    from fastcl.cli import main

    monkeypatch.chdir(tmp_path)
    extra = QUICK[" ".join(argv)] + (RUN_QUIETLY if argv[0] == "run" else [])
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng():
            rc = main(argv + extra)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    if argv[0] == "run":
        assert list(tmp_path.glob("results/*/results.json")), f"{argv}: no results.json under results/"


@pytest.mark.parametrize("argv", [argv for argv, section in FASTCL if not section.startswith(QUICK_SECTION)],
                         ids=" ".join)
def test_command_parses_and_passes_the_run_checks(argv, capsys):
    from fastcl.cli import _check_run_args, _join_negative_values, build_parser

    if "--help" in argv or "-h" in argv:
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 0
        assert "usage: fastcl" in capsys.readouterr().out
        return
    args = build_parser().parse_args(_join_negative_values(argv))
    if args.command == "run":
        learners, family = _check_run_args(args)
        if family is None:  # the continual learners: --set keys and values against each config
            from fastcl.experiments import LEARNERS, parse_overrides

            for name in learners:
                parse_overrides(args.overrides, LEARNERS[name][1])


# ---- links ------------------------------------------------------------------------------------

def _without_code(text: str) -> str:
    """The text outside fenced blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _headings(text: str) -> list[str]:
    return [line.lstrip("#").strip() for line in _without_fences(text).split("\n") if re.match(r"^#{1,6} ", line)]


def _without_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _heading_text(heading: str) -> str:
    """A heading as rendered text: link targets, code and emphasis marks dropped."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return heading.replace("`", "")


def _mkdocs_slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's ``toc`` slugify)."""
    value = unicodedata.normalize("NFKD", _heading_text(heading)).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, each space a dash."""
    return re.sub(r"[^\w\- ]", "", _heading_text(heading).strip().lower()).replace(" ", "-")


def _links(path: Path) -> list[str]:
    found = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _without_code(path.read_text()))
    return [t for t in found if not re.match(r"^[a-z]+:", t)]


PAGES = sorted(DOCS.glob("*.md"))
LINKS = [(README, t) for t in _links(README)] + [(p, t) for p in PAGES for t in _links(p)]


def test_there_are_links_to_check():
    assert any(src == README for src, _ in LINKS) and any(src != README for src, _ in LINKS)


@pytest.mark.parametrize("source, target", LINKS, ids=[f"{s.name}->{t}" for s, t in LINKS])
def test_relative_link_resolves(source, target):
    file, _, anchor = target.partition("#")
    dest = (source.parent / file).resolve() if file else source
    assert dest.exists(), f"{source.name}: link to {target}, which does not exist"
    if source.parent == DOCS:  # the site holds docs/ only: a link out of it breaks there
        assert DOCS in dest.parents or dest == DOCS, f"{source.name}: {target} is outside docs/"
    if anchor:
        assert dest.suffix == ".md", f"{source.name}: an anchor into a non-page: {target}"
        headings = _headings(dest.read_text())
        assert anchor in {_mkdocs_slug(h) for h in headings}, f"{source.name}: {target}: no such heading"
        if source == README:  # read on GitHub as well as on the site
            assert anchor in {_github_slug(h) for h in headings}, f"README: {target}: GitHub's anchor differs"


def test_every_page_is_in_the_site_nav():
    nav = set(re.findall(r"\b([\w-]+\.md)\b", (ROOT / "mkdocs.yml").read_text()))
    assert nav == {p.name for p in PAGES}, (f"pages missing from mkdocs.yml's nav: {sorted({p.name for p in PAGES} - nav)}; "
                                            f"in the nav but not in docs/: {sorted(nav - {p.name for p in PAGES})}")
