"""The tutorials in docs/tutorials/ run as written.

Per page, in a fresh temporary working directory with ``PANOPTIC_CACHE`` pointed into it:

* every ```` ```python ```` block is executed in order, in one namespace for the page;
* every ```` ```bash ```` block whose first command starts with ``panoptic `` is run with bash, unless the
  line right before its fence is ``<!-- skip-test -->`` (for real data or a GPU only);
* a ```` ```text ```` block that directly follows an executed block is that block's expected output. It must
  match what the block printed (trailing spaces and surrounding blank lines aside); ``...`` stands for any
  text, as with doctest's ELLIPSIS, and is meant for timings only;
* a text block preceded by ``<!-- output-varies-by-cpu -->`` (between the two fences) shows numbers that come
  from a few SGD steps: they differ between CPUs (oneDNN and MKL take other code paths on other CPU models and
  round differently, and training amplifies the last bits), so there every number may differ and runs of
  spaces may change width, while the words, the lines and the count of numbers must match.
  The page says so in its prose.

A page can say what it needs with ``<!-- test-requires-command: panoptic NAME -->``: it is skipped while the
``panoptic`` command has no such subcommand (a command still being written).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
PAGES = sorted(TUTORIALS.glob("*.md"))
SKIP_MARK = "<!-- skip-test -->"
VARIES_MARK = "<!-- output-varies-by-cpu -->"
PAGE_THREADS = 1  # see test_tutorial_runs
# Per page; keep images small and models tiny. Pages run on one thread, so this is about their wall time on an
# idle machine; it is checked as CPU time (this process and its subprocesses) so that other work on a shared
# machine does not fail the test.
PAGE_CPU_LIMIT_S = 120.0  # a guard against tutorials that grow, not a speed target

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
_REQUIRES = re.compile(r"<!--\s*test-requires-command:\s*panoptic\s+([\w-]+)\s*-->")


@dataclass
class Block:
    """One fenced block of a page."""

    number: int  # 1-based among the page's fenced blocks
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: bool  # preceded by SKIP_MARK
    output: str | None = None  # expected output: the text block right after it, if any
    output_varies: bool = False  # the output's numbers depend on the CPU (VARIES_MARK)

    @property
    def executed(self) -> bool:
        if self.lang == "python":
            return True
        return self.lang == "bash" and not self.skip and _first_command(self.code).startswith("panoptic ")


def _first_command(code: str) -> str:
    lines = [ln.strip() for ln in code.splitlines()]
    return next((ln for ln in lines if ln and not ln.startswith("#")), "")


def parse_blocks(text: str) -> list[Block]:
    """Fenced blocks of a Markdown page, with each executed block's expected output attached."""
    blocks: list[Block] = []
    ends: list[int] = []
    for k, m in enumerate(_FENCE.finditer(text), start=1):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        lang = m["info"].strip().split(" ")[0].lower()
        code = textwrap.dedent(m["code"])  # fences may be indented (in lists, admonitions)
        blocks.append(Block(k, lang, code, text.count("\n", 0, m.start()) + 1, before == SKIP_MARK))
        ends.append(m.end())
        prev = blocks[-2] if len(blocks) > 1 else None
        gap = text[ends[-2]:m.start()].strip() if prev is not None else None
        if lang == "text" and prev is not None and prev.executed and gap in ("", VARIES_MARK):
            prev.output, prev.output_varies = code, gap == VARIES_MARK
    return blocks


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_SPACES = re.compile(r" +")


def _mask_numbers(text: str) -> str:
    return _SPACES.sub(" ", _NUMBER.sub("#", text))


def output_matches(expected: str, actual: str, numbers_vary: bool = False) -> bool:
    """Whether ``actual`` matches ``expected`` where ``...`` in ``expected`` stands for any text.

    With ``numbers_vary``, every number stands for any number and runs of spaces for any run of spaces.
    """
    expected, actual = _normalize(expected), _normalize(actual)
    if numbers_vary:
        expected, actual = _mask_numbers(expected), _mask_numbers(actual)
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual, flags=re.S) is not None


def _subcommands() -> set[str]:
    from panoptic.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # argparse keeps subcommands on its _SubParsersAction
        if action.choices and isinstance(action.choices, dict):
            return set(action.choices)
    return set()


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished subprocesses."""
    try:
        import resource
    except ImportError:  # not on Unix: fall back to wall time
        return time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _describe(page: Path, block: Block) -> str:
    return f"{page.relative_to(ROOT)} block {block.number} ({block.lang}, line {block.line}):\n{block.code}"


def _run_python(block: Block, namespace: dict, page: Path) -> str:
    out = io.StringIO()
    code = compile(block.code, f"{page.name}[block {block.number}]", "exec")
    try:
        with contextlib.redirect_stdout(out):
            exec(code, namespace)
    except Exception as e:
        raise AssertionError(f"{_describe(page, block)}\nraised {type(e).__name__}: {e}\n"
                             f"output so far:\n{out.getvalue()}") from e
    return out.getvalue()


def _run_bash(block: Block, env: dict[str, str], page: Path) -> str:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], capture_output=True, text=True, env=env,
                          timeout=PAGE_CPU_LIMIT_S * 5, check=False)
    assert proc.returncode == 0, (f"{_describe(page, block)}\nexited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr}")
    return proc.stdout


def test_tutorials_exist():
    names = {p.name for p in PAGES}
    for name in ("quickstart.md", "own-model.md", "compare.md", "own-data.md", "custom-fusion.md",
                 "other-frameworks.md", "fusion-families.md"):
        assert name in names


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_tutorial_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    text = page.read_text()
    required = _REQUIRES.findall(text)
    missing = [name for name in required if name not in _subcommands()] if required else []
    if missing:
        pytest.skip(f"`panoptic {' / '.join(missing)}` does not exist yet")
    blocks = parse_blocks(text)
    for b in blocks:
        assert b.lang in ("python", "bash", "text", "json", "console", ""), f"{page.name} block {b.number}: " \
            f"unexpected language {b.lang!r}"
        if b.skip:
            assert b.lang == "bash", f"{page.name} block {b.number}: only bash blocks can be skipped"
    assert any(b.executed for b in blocks), f"{page.name} has no executed block"

    cache = tmp_path / "panoptic-cache"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PANOPTIC_CACHE", str(cache))
    # One thread: the outputs on the pages (losses after a few SGD steps, PQ of the model they give) depend on
    # the order of float reductions, which depends on the thread count.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, str(PAGE_THREADS))
    threads = torch.get_num_threads()
    # Pages seed the global generators (torch.manual_seed, the engine's train); later tests get theirs back.
    rng_states = torch.random.get_rng_state(), np.random.get_state(), random.getstate()  # noqa: NPY002 (global state)
    torch.set_num_threads(PAGE_THREADS)
    try:
        _run_page(page, blocks)
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng_states[0])
        np.random.set_state(rng_states[1])  # noqa: NPY002
        random.setstate(rng_states[2])


def _run_page(page: Path, blocks: list[Block]) -> None:
    executed = [b for b in blocks if b.executed]
    env = dict(os.environ)
    # The `panoptic` script of this interpreter's environment comes first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    namespace: dict = {"__name__": f"tutorial_{page.stem.replace('-', '_')}"}
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    for block in executed:
        actual = _run_python(block, namespace, page) if block.lang == "python" else _run_bash(block, env, page)
        if block.output is not None:
            assert output_matches(block.output, actual, block.output_varies), (
                f"{_describe(page, block)}\nprinted:\n{actual}\nbut the page shows:\n{block.output}"
                + ("\n(numbers aside: this output is marked as varying by CPU)" if block.output_varies else ""))
    cpu = _cpu_seconds() - cpu_start
    assert cpu < PAGE_CPU_LIMIT_S, (
        f"{page.name} took {cpu:.0f} CPU s ({time.perf_counter() - start:.0f} s wall); keep a tutorial under "
        f"{PAGE_CPU_LIMIT_S:.0f} s (smaller images, fewer iterations)")


def test_block_parser():
    text = ("x\n```python\nprint(1)\n```\n\n```text\n1\n```\n<!-- skip-test -->\n```bash\npanoptic train\n```\n"
            "```bash\n# comment\npanoptic demo --out d\n```\n```bash\npip install x\n```\n")
    blocks = parse_blocks(text)
    assert [(b.lang, b.executed, b.skip) for b in blocks] == [
        ("python", True, False), ("text", False, False), ("bash", False, True), ("bash", True, False),
        ("bash", False, False)]
    assert blocks[0].output == "1\n" and blocks[0].line == 2
    assert output_matches("wrote 3 in ... s\nok", "wrote 3 in 0.2 s\nok  \n")
    assert not output_matches("wrote 3", "wrote 4")


def test_outputs_that_vary_by_cpu():
    text = "```python\nprint(1)\n```\n<!-- output-varies-by-cpu -->\n```text\nloss 6.04\n```\n"
    (block, _) = parse_blocks(text)
    assert block.output == "loss 6.04\n" and block.output_varies
    assert not parse_blocks("```python\nprint(1)\n```\n```text\n1\n```\n")[0].output_varies
    # Numbers may differ, and so may the width of the columns around them ...
    assert output_matches("| All |   8.2 | 7 |\nloss 6.0457  lr 2.00e-02",
                          "| All |  15.4 | 7 |\nloss 6.0199  lr 2.00e-02", numbers_vary=True)
    assert output_matches("PQ -1.5, ... s", "PQ 12.0, 3 s", numbers_vary=True)
    # ... but not the words, the lines or how many numbers there are.
    assert not output_matches("4 segments: ['sky']", "4 segments: ['road']", numbers_vary=True)
    assert not output_matches("PQ 8.2 SQ 8.2", "PQ 8.2", numbers_vary=True)
    assert not output_matches("a 1\nb 2", "a 1", numbers_vary=True)
    assert not output_matches("loss 6.0457", "loss 6.0199")
