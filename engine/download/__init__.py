"""The peer-side download engine: local store, then the swarm, then the origin.

Public API (used by the dfdaemon workers)::

    downloader = Downloader(store, ["supernode:8002"], PeerInfo(PeerId("host-a"), ip, port))
    output = OutputFile("/data/big.iso")         # written while the pieces arrive
    task = await downloader.download(DownloadRequest(url, headers=..., digest=...),
                                     on_progress=print, pacer=LocalBucket(10 << 20),
                                     output=output)
    output.finish(task); task.close()            # (or task.export(path) afterwards)
    await downloader.aclose()

Modules: ``request`` (the values), ``downloader`` (joining, local hits,
heartbeat, the choice of path), ``p2p`` (schedule rounds, endgame races),
``piece`` (one piece from one source), ``fetch`` and ``response`` (one piece
over HTTP/1.1), ``sinks`` (into the mmap, or through bounce buffers that
threads write, hash and export), ``output`` (the user's file, streamed),
``origin`` (back-to-source), ``supernodes`` (rendezvous + failover),
``local`` (store calls on the disk thread), ``context`` (shared state).
"""

from engine.download.downloader import Downloader
from engine.download.output import OutputFile
from engine.download.request import DownloadRequest, DownloadStats, Progress
from engine.download.supernodes import rendezvous_order

__all__ = ["DownloadRequest", "DownloadStats", "Downloader", "OutputFile", "Progress",
           "rendezvous_order"]
