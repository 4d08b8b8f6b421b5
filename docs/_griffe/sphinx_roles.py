"""A griffe extension for this site: render the Sphinx roles that some docstrings in
``src/symode`` use (``:func:`x```, ``:class:`x```, ``:meth:`x```, ``:data:`x```,
``:mod:`x```, ``:attr:`x```) as inline code, instead of as literal ``:func:x`` text.

It changes only what the documentation shows; the docstrings are not edited.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|mod|attr|obj|exc):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = _ROLE.sub(r"`\1`", obj.docstring.value)
