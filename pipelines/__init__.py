"""Pipelines: compose the library's pure stages, with all I/O, caching,
resume and scheduling (Dask)."""
