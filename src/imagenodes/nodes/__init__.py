"""The built-in nodes: one module per node (seed schema + field codes + output shape).

Each module is a plugin pack of its own, found through the ``imagenodes`` entry-point
group exactly as a third-party pack is; nothing imports this package.  The modules
use only :mod:`imagenodes.sdk` (enforced by import-linter).
"""
