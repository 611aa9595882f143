"""Every ``python`` block of docs/own-model.md runs, in order, in one namespace (the page is one
session: later blocks use what earlier ones built), so the page cannot rot."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

PAGE = Path(__file__).resolve().parent.parent / "docs" / "own-model.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_page_has_its_examples():
    blocks = _python_blocks(PAGE.read_text())
    assert len(blocks) >= 5
    joined = "\n".join(blocks)
    for used in ("Stream.from_tensors", "fastcl.run_stream", "begin_task", "end_task", "predict",
                 "parse_overrides", "SlowPathWarning", "HAL(", "ERRing(", "EMCL(", "load_state_dict"):
        assert used in joined or used.replace("fastcl.", "") in joined, used


def test_every_python_block_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    state = torch.get_rng_state()
    namespace: dict = {"__name__": "own_model_docs"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            for i, block in enumerate(_python_blocks(PAGE.read_text())):
                exec(compile(block, f"{PAGE.name}[block {i}]", "exec"), namespace)
    finally:
        torch.set_rng_state(state)
    out = capsys.readouterr().out
    assert "SlowPathWarning" in out and "module 2 is a Tanh" in out   # the slow path named
    assert "HAL needs the model split" in out                         # HAL's error
    assert "lr does nothing in EMCLConfig" in out
