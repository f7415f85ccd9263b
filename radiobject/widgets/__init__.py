"""Jupyter widgets for radiobject (installed as ``radiobject.widgets``).

``CollectionBrowser(radi)`` browses subjects and volumes, ``PatchPreview(loader)`` shows the
patches a loader draws, ``LoaderTuner(loader)`` tunes read and loader settings live.
Needs ``pip install 'radiobject[widgets]'`` (ipywidgets, matplotlib) and, for the last two,
``'radiobject[ml]'``.
"""

from ._browser import CollectionBrowser
from ._patch_preview import PatchPreview
from ._tuner import LoaderTuner

__all__ = ["CollectionBrowser", "LoaderTuner", "PatchPreview"]
