"""dfdaemon's registry mirror and HTTP proxy: ``rules`` (sans-IO routing and
headers), ``server`` (the aiohttp server that fetches blobs through the swarm
and passes everything else through) and ``tunnel`` (CONNECT tunnels, and the
front door that hands every other connection to aiohttp)."""
