"""The mount follows the change log: what the index gains or loses shows up without a remount.

Writes of this process (the DICOM node, fetches, derived/ files) wake the watcher at once
through ``ChangeLog.subscribe`` (gathered for ``GATHER`` seconds); writes of other
processes (``dicomfs import``, ``tag``, ``delete`` while mounted) are noticed by polling
``PRAGMA data_version`` every ``interval``.
"""

from __future__ import annotations

import trio

from dicomfs.index.changes import ChangeLog
from dicomfs.mount.kernel import Kernel
from dicomfs.mount.tree import Tree

# After a refresh, changes gather this long before the next: a stream of C-STOREs costs at
# most 20 refreshes a second, not one per instance, on the loop that also indexes them.
GATHER = 0.05


async def follow_changes(changes: ChangeLog, tree: Tree, interval: float, kernel: Kernel) -> None:
    """Forever: read what changed, drop it from the tree's caches and the kernel's."""
    wake = trio.Event()

    def on_change() -> None:
        wake.set()

    changes.subscribe(on_change)
    seen = changes.newest()
    version = changes.db.data_version()
    while True:
        with trio.move_on_after(interval):
            await wake.wait()
        if wake.is_set():
            wake = trio.Event()
        else:
            current = changes.db.data_version()  # changes when another connection commits
            if current == version:
                continue
            version = current
        found = changes.read_since(seen)
        if found.empty:
            continue
        seen = found.seq
        refresh = tree.refresh(found)
        await trio.to_thread.run_sync(kernel.forget_attributes, refresh.attributes)
        await trio.to_thread.run_sync(kernel.forget_contents, refresh.contents)
        kernel.forget_names(refresh.gone)  # names the kernel may hold for the entry timeout
        await trio.sleep(GATHER)
