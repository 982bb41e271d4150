"""Sub-commands of ``binds``: one module each, with ``register(subparsers)`` and ``run(args)``.

Keep file-scope imports light (argparse, pathlib): ``binds --help`` imports every module here.
"""

import argparse
import math
import re


def device_name(text: str) -> str:
    """argparse type of ``--device``: auto, cpu, cuda or cuda:N (whether the GPU exists is
    checked when the command runs)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (auto, cpu, cuda, cuda:N)")
    return text


def probability(text: str) -> float:
    """argparse type of an absolute probability in [0, 1] (0.017, not 1.7 %)."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in [0, 1] (e.g. 0.017 for 1.7 %)")
    return v


def positive_number(text: str) -> float:
    """argparse type of a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
    return v


def positive_int(text: str) -> int:
    """argparse type of a whole number >= 1."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return v
