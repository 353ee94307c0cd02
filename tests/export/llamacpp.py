"""llama.cpp for the export tests: skip cleanly where the binding is not built."""

from __future__ import annotations

import pytest

try:
    import llama_cpp  # noqa: F401

    HAVE_LLAMA_CPP, WHY = True, ""
except Exception as error:  # not installed, or its shared library does not load on this machine
    HAVE_LLAMA_CPP, WHY = False, f"llama-cpp-python is not importable ({type(error).__name__}: {error})"

needs_llama_cpp = pytest.mark.skipif(not HAVE_LLAMA_CPP, reason=WHY or "llama-cpp-python is importable")
