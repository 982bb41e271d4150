"""Sub-commands of ``binds``: one module each, with ``register(subparsers)`` and ``run(args)``.

Keep file-scope imports light (argparse, pathlib): ``binds --help`` imports every module here.
"""
