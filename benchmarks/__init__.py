"""chatpipe benchmarks: ``python -m benchmarks`` (or ``make bench``).

Figures, not tests: nothing here fails on a timing.  See ``__main__.py``.
"""
