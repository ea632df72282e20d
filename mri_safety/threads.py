"""ITK's process-wide thread count, set for a block of code.

Several ITK filters and the registration metric read ITK's *global* default
thread count (``ImageRegistrationMethod.SetNumberOfThreads`` alone does not
reach every internal filter), and their results differ in the last digits
with it. Stages that must be reproducible whatever the machine or worker run
their ITK calls inside :func:`itk_threads` with a thread count taken from
their parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def itk_threads(n: int) -> Iterator[None]:
    """Set ITK's global default thread count to ``n`` for the block (restored after)."""
    import SimpleITK as sitk

    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)
