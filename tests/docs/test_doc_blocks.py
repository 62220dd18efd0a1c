"""Every Python block of the documents listed here runs as shown.

Each ```` ```python ```` block is written to a file and run as a script by a fresh Python, on a
database of its own under ``tmp_path`` (as a user who copied it would, with nothing set up
beforehand), and must exit 0. A block that cannot run as shown is preceded by an HTML comment
``<!-- not run: the reason -->``, and the reason is required.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ["docs/workflows.md"]
"""The documents whose Python blocks are executed (README and the rest follow, issue 19)."""
BLOCK = re.compile(r"(?:<!-- not run: (?P<reason>[^>]*?) -->\s*\n)?```python\n(?P<code>.*?)```",
                   re.DOTALL)
TIMEOUT = 60


def blocks() -> list[tuple[str, int, str, str | None]]:
    found = []
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            found.append((document, line, match["code"], match["reason"]))
    return found


@pytest.mark.parametrize(("document", "line", "code", "reason"), blocks(),
                         ids=[f"{doc}:{line}" for doc, line, _, _ in blocks()])
def test_python_block_runs_as_shown(document: str, line: int, code: str, reason: str | None,
                                    tmp_path: Path) -> None:
    """The block exits 0 as a script, on a fresh database."""
    if reason is not None:
        assert reason.strip(), f"{document}:{line}: a block marked not run needs a reason"
        pytest.skip(f"{document}:{line} is not run: {reason}")
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONESHOT_")}
    env["ONESHOT_DATABASE__URL"] = str(tmp_path / "oneshot.db")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, timeout=TIMEOUT)
    assert done.returncode == 0, (
        f"{document}:{line} exited {done.returncode}\n{done.stdout.decode()}"
        f"{done.stderr.decode()}")
