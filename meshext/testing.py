"""Test Proxy-Wasm filters in pytest: ``from meshext.testing import Host, Action``.

A thin re-export of ``meshext.runtime.harness``; see that module for a tour.
"""

from meshext.runtime.harness import *  # noqa: F401,F403
from meshext.runtime.harness import __all__  # noqa: F401
