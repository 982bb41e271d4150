"""BINDSLib: the pure-Python core of BINDS (no ``slicer`` import).

Data flow: files or scene volumes -> :class:`BINDSLib.study.Study` -> study folder
(``study.json`` + NRRD images) -> pipeline -> output folder. See docs/ARCHITECTURE.md.

Heavy packages (torch, monai) are imported only by the modules that need them, so
``import BINDSLib`` and ``binds --help`` stay fast.
"""

__version__ = "0.1.0"
