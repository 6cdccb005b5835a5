"""The README's loop around a plain PyTorch model runs as printed and shows what it says."""
import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_loop_runs_and_mqnet_learns_purity():
    text = README.read_text()
    block = re.search(r"<!-- tests/test_readme.py runs the next python block -->\n```python\n(.*?)```", text, re.S)
    assert block, "the README lost its tested block"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.group(1), "README.md", "exec"), {})
    shares = [int(m) for m in re.findall(r"round \d: (\d+)% of the query is IN", out.getvalue())]
    assert len(shares) == 4
    assert shares[0] <= 10 and min(shares[1:]) >= 90, shares  # what the README says it prints


def test_the_readme_is_one_screen_of_use():
    """Usage first and short (at most 150 lines); the detail lives in docs/ and benchmarks/."""
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    first_heading = next(i for i, line in enumerate(lines) if line.startswith("## "))
    assert lines[first_heading] == "## Install" and first_heading < 30
    for link in ("docs/ops.md", "docs/layout.md", "docs/kernels.md", "docs/engine.md", "docs/strategies.md",
                 "docs/distributed.md", "docs/gpu.md", "benchmarks/README.md"):
        assert link in README.read_text() and (README.parent / link).exists(), link


def test_the_run_directory_guarantees_name_tests_that_exist():
    """Each clause of the README's run-directory guarantees names a test, and that test exists."""
    text = README.read_text()
    clause = text[text.index("A run directory guarantees"):]
    clause = clause[:clause.index("\n\n")]
    names = re.findall(r"`(test_\w+)`", clause)
    assert len(names) >= 5, names
    sources = "".join(p.read_text() for p in (README.parent / "tests").glob("test_*.py"))
    for name in names:
        assert f"def {name}(" in sources, name
    for words in ("one writer", "verified files", "resumable", "no code from data"):
        assert f"**{words}**" in clause, words
