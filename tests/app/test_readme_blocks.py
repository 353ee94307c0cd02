"""README's and docs/'s generated blocks agree with their producers (``make docs`` changes nothing)."""

from __future__ import annotations

import difflib
import shutil

from search.app.readme_blocks import BLOCKS, README, ROOT, default_paths, main, marked


def test_make_docs_leaves_readme_and_docs_unchanged(tmp_path):
    paths = default_paths()
    assert README in paths and len(paths) > 1, "make docs renders README.md and docs/*.md"
    assert marked(README.read_text(encoding="utf-8")), "README marks no generated block"
    copies = []
    for path in paths:
        copy = tmp_path / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        copies.append(copy)
    assert main([str(copy) for copy in copies]) == 0
    diffs = []
    for path, copy in zip(paths, copies, strict=True):
        before, after = path.read_text(encoding="utf-8"), copy.read_text(encoding="utf-8")
        if before != after:
            name = str(path.relative_to(ROOT))
            diffs.extend(
                difflib.unified_diff(before.splitlines(), after.splitlines(), name, f"{name} (rendered)", lineterm="")
            )
    assert not diffs, "generated blocks are stale: run 'make docs'\n" + "\n".join(diffs)


def test_every_marked_block_has_a_producer_and_a_stale_block_is_caught(tmp_path):
    for path in default_paths():
        assert set(marked(path.read_text(encoding="utf-8"))) <= set(BLOCKS), path
    text = README.read_text(encoding="utf-8")
    stale = tmp_path / "README.md"
    stale.write_text(text.replace("| `train_tokens` |", "| `train_tokenz` |"), encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert main([str(stale)]) == 0 and stale.read_text(encoding="utf-8") == text


def test_a_marker_quoted_in_prose_is_no_block_and_an_unknown_block_is_refused(tmp_path):
    quoted = tmp_path / "quoted.md"
    quoted.write_text("Blocks look like `<!-- moeplan:NAME -->`.\n", encoding="utf-8")
    assert marked(quoted.read_text(encoding="utf-8")) == []
    assert main(["--check", str(quoted)]) == 0
    unknown = tmp_path / "unknown.md"
    unknown.write_text("<!-- moeplan:no-such-block -->\nx\n<!-- /moeplan:no-such-block -->\n", encoding="utf-8")
    assert main(["--check", str(unknown)]) == 2


def test_json_backed_blocks_quote_the_committed_benchmark_outputs():
    import json

    from search.app import doc_blocks

    results = json.loads(doc_blocks.DEVICE_LOOP.read_text(encoding="utf-8"))
    held_out = results[results["chosen"]]["held_out"]
    summary = doc_blocks.device_loop_summary()
    assert (
        f"{held_out['prefill_mape']:.1%} (prefill)" in summary and f"{held_out['decode_mape']:.1%} (decode)" in summary
    )
    shares = json.loads(doc_blocks.SAMPLERS.read_text(encoding="utf-8"))["hypervolume_share"]
    table = doc_blocks.sampler_hypervolume()
    assert len(table.splitlines()) == 2 + len(shares)
    assert f"{shares['random']['1000']['median']:.3f}" in table
