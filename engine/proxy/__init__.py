"""dfdaemon's registry mirror and HTTP proxy: ``rules`` (sans-IO routing and
headers) and ``server`` (the aiohttp server that fetches blobs through the
swarm and passes everything else through)."""
