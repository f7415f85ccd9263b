"""Jupyter widgets for radiobject (installed as ``radiobject.widgets``)."""

__all__: list[str] = []
