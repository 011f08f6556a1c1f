"""The package is one tree: ``ligo_fast.kernels`` comes from the same checkout as ``ligo_fast``."""

from pathlib import Path

import ligo_fast
import ligo_fast.kernels


def test_kernels_come_from_the_same_tree_as_ligo_fast():
    # ligo_fast/kernels is a link to the top-level kernels/ (the project's layout); an editable install of another
    # clone must not hand this tree's ligo_fast that clone's kernels.
    root = Path(ligo_fast.__file__).resolve().parent.parent
    kernels = Path(ligo_fast.kernels.__file__).resolve()
    assert kernels == root / "kernels" / "__init__.py", (kernels, root)
