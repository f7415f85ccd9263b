# ruff: noqa: I001 - imports kept as the seed page writes them
"""The "Context Handling: Threads vs Processes" snippet of the seed's ML Training page.

It lives in a module of its own so that ``multiprocessing``'s spawn start method can
import ``process_worker`` by name in the pool's processes. Only the first import is not on
the page: the page's examples assume ``Volume`` is already imported.
"""

from radiobject import Volume  # assumed by the page

# --- seed page, verbatim -----------------------------------------------------------------
from radiobject import get_tiledb_ctx
from radiobject.parallel import ctx_for_threads, ctx_for_process

# Threads: share context for caching
shared_ctx = get_tiledb_ctx()


def thread_worker(uri):
    vol = Volume(uri, ctx=ctx_for_threads(shared_ctx))
    return vol.to_numpy()


# Processes: isolated contexts (required)
def process_worker(uri):
    vol = Volume(uri, ctx=ctx_for_process())
    return vol.to_numpy()
