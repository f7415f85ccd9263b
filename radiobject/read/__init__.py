"""The read path: array handles, the RAM block cache, region reads and read statistics.

The public names (``TileDBStats``, ``CacheStats``, ``S3Stats``) are exported from
:mod:`radiobject`; the modules here are private.
"""
