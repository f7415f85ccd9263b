"""Storage: volumes, tables, collections and RadiObjects as TileDB arrays and groups.

The public classes are exported from :mod:`radiobject`; the modules here are private.
"""
