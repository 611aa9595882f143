"""The README's code blocks marked ``<!-- tested: tests/test_readme.py -->`` run as they are."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = "<!-- tested: tests/test_readme.py -->"


def _tested_blocks() -> list[str]:
    text = README.read_text()
    return re.findall(re.escape(MARK) + r"\s*```python\n(.*?)```", text, flags=re.S)


def test_there_are_tested_blocks():
    assert len(_tested_blocks()) >= 1


@pytest.mark.parametrize("index", range(len(_tested_blocks())))
def test_readme_block_runs(index, capsys):
    code = _tested_blocks()[index]
    namespace: dict = {"__name__": f"readme_block_{index}"}
    exec(compile(code, f"README.md block {index}", "exec"), namespace)
    printed = capsys.readouterr().out
    if "AccuracyMatrix" in code:  # the own-loop example: it learned something
        acc = namespace["acc"]
        assert acc.summary()["accuracy"] > 0.5, printed
