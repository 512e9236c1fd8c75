"""The peer-side download engine: local store, then the swarm, then the origin.

Public API (used by the dfdaemon workers)::

    downloader = Downloader(store, ["supernode:8002"], PeerInfo(PeerId("host-a"), ip, port))
    task = await downloader.download(DownloadRequest(url, headers=..., digest=...),
                                     on_progress=print)
    task.export(output); task.close()
    await downloader.aclose()

Modules: ``request`` (the values), ``downloader`` (joining, local hits,
heartbeat, the choice of path), ``p2p`` (schedule rounds), ``fetch`` and
``response`` (one piece over HTTP/1.1), ``sinks`` (into the mmap, or
through a bounce buffer and pwrite), ``origin``
(back-to-source), ``supernodes`` (rendezvous + failover), ``local`` (store
calls on the disk thread), ``context`` (shared state).
"""

from engine.download.downloader import Downloader
from engine.download.request import DownloadRequest, DownloadStats, Progress
from engine.download.supernodes import rendezvous_order

__all__ = ["DownloadRequest", "DownloadStats", "Downloader", "Progress", "rendezvous_order"]
