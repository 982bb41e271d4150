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


def _number(text: str, convert, ok, what: str):
    try:
        v = convert(text)
    except ValueError:
        v = None
    if v is None or not ok(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return v


def probability(text: str) -> float:
    """argparse type of an absolute probability in [0, 1] (0.017, not 1.7 %)."""
    return _number(text, float, lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1] (e.g. 0.017 for 1.7 %)")


def positive_int(text: str) -> int:
    """argparse type of a whole number >= 1."""
    return _number(text, int, lambda v: v >= 1, "a whole number of at least 1")


def non_negative_int(text: str) -> int:
    """argparse type of a whole number >= 0."""
    return _number(text, int, lambda v: v >= 0, "a whole number of at least 0")


def non_negative_number(text: str) -> float:
    """argparse type of a finite number >= 0."""
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a number of at least 0")
