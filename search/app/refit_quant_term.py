"""Refit only the quantisation term of a law card, on the published PTQ rows with a store's
proxy measurements as its check (a maintenance command: ``laws fit`` rebuilds the whole card)."""

from __future__ import annotations

import argparse

from scaling.laws.ptq_data import ptq_rows
from scaling.laws.quant_term import BOOTSTRAP, published_term, replace_card_term
from scaling.runs.frames import quantization_frame


def main(argv: list[str] | None = None) -> None:
    """``python -m search.app.refit_quant_term CARD [--store STORE]``: refit only the card's quantisation term."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("card")
    parser.add_argument("--store", default="scaling/runs/reference/reference.sqlite")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP)
    args = parser.parse_args(argv)

    store = f"sqlite:///{args.store}"
    term = published_term(ptq_rows(), "published PTQ rows", quantization_frame(store), args.bootstrap)
    term.source = (
        "published PTQ rows (ptq_published: GPTQ paper tables, IST-DASLab/gptq, LLaMA3-Quantization, llama.cpp "
        f"perplexity READMEs, Catalan-Tatjer et al. 2025, MoEQuant); proxies in {args.store} as a check"
    )
    replace_card_term(args.card, term)


if __name__ == "__main__":
    main()
