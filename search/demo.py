"""``moeplan demo``: the main job on the embedded defaults."""

from __future__ import annotations

import argparse

from scaling.presets import get_preset, preset_names
from search.report import print_arch_table


def run_demo(args: argparse.Namespace) -> None:
    """Print the architecture table of the built-in presets."""
    print_arch_table([get_preset(name) for name in preset_names()], "int4")
