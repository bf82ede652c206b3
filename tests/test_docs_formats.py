"""docs/formats.md's examples run as written: every ``python`` block, in order, in one namespace, inside a temporary
folder; a ``print(...)  # text`` line must print ``text``."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "formats.md"


def _blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)


def test_the_page_has_examples():
    assert len(_blocks()) >= 4


def test_examples_run_and_print_what_they_say(tmp_path, monkeypatch):
    pytest.importorskip("rasterio")
    pytest.importorskip("spectral")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_formats"}
    for n, code in enumerate(_blocks()):
        expected = [m.group(1).strip() for m in re.finditer(r"^\s*print\(.*\)\s+#\s*(.+)$", code, re.MULTILINE)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"{DOC.name} block {n}", "exec"), namespace)  # noqa: S102 - our own documentation
        printed = [line.strip() for line in out.getvalue().splitlines() if line.strip()]
        assert printed == expected, f"block {n}"
