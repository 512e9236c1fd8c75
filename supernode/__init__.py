"""The supernode: scheduler, CDN (back-to-source) and the API peers talk to.

Modules, from the outside in::

    cli        the ``supernode`` command: config -> SupernodeServer, signals, readiness
    config     the declared options (engine.config)
    server     the process: store, CDN upload server, service, API, clock
    apiserver  the API's HTTP/1.1 server (engine.http1 over asyncio streams)
    api        the routes, speaking engine.messages in orjson; no I/O
    service    glue: registrations -> versions -> scheduler events, CDN progress
    versions   identity -> version rules (revalidation, negative cache), pure
    ledger     grants per peer, to check reported results
    reports    a batch of reported results checked before any is applied, pure
    restore    the cache again after a restart
    cdn        one streaming back-to-source fetch per version, with resume
    sinks      origin bytes -> pieces in the store (or a spool), hashed off-loop
    origin     the aiohttp client side, errors mapped into engine.errors
    scheduler  the sans-IO scheduler core (its own package)
"""
