"""README's generated blocks agree with the code that produces them (``make docs`` changes nothing)."""

from __future__ import annotations

from search.app.readme_blocks import BLOCKS, README, main, marked, render


def test_make_docs_leaves_readme_unchanged():
    text = README.read_text(encoding="utf-8")
    assert marked(text), "README marks no generated block"
    assert render(text) == text, "README's generated blocks are stale: run 'make docs'"
    assert main(["--check", str(README)]) == 0


def test_every_marked_block_has_a_producer_and_a_stale_block_is_caught(tmp_path):
    text = README.read_text(encoding="utf-8")
    assert set(marked(text)) <= set(BLOCKS)
    stale = tmp_path / "README.md"
    stale.write_text(text.replace("| `train_tokens` |", "| `train_tokenz` |"), encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert main([str(stale)]) == 0 and stale.read_text(encoding="utf-8") == text
