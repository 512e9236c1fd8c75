"""A real pull through the mirror: skopeo, configured with a registries.conf
mirror, pulls an image from a real registry (distribution, Debian's
docker-registry) through two dfdaemons' mirrors, and every layer leaves the
registry once."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.integration.ociimage import make_image
from tests.integration.realregistry import ensure_tools, pull_via_mirror, push, run_registry
from tests.integration.swarm import Daemon, Services, scratch_dir

pytestmark = pytest.mark.integration
MIB = 1 << 20


@pytest.fixture
def root():
    with scratch_dir("dfk-") as path:
        yield Path(path)


def test_skopeo_pulls_an_image_through_two_mirrors_and_each_layer_leaves_the_registry_once(root):
    ensure_tools()  # installs docker-registry and skopeo when missing; never skips
    image = make_image(root, [os.urandom(3 * MIB), os.urandom(MIB + 4321)])
    daemons: list[Daemon] = []
    with Services(str(root)) as services, run_registry(root) as registry:
        manifest = push(image, registry)
        assert manifest == image.manifest_digest
        try:
            for name in ("a", "b"):
                daemons.append(Daemon(str(root / name), [services.supernode_url],
                                      "--workers", "1", "--proxy", "127.0.0.1:0",
                                      "--registry", registry.url))
            for daemon in daemons:
                dest = root / f"pulled-{daemon.ready['peer_id'][:8]}"
                result = pull_via_mirror(registry, daemon.ready["proxy"], "demo/app", "1",
                                         dest, root)
                assert result.returncode == 0, result.stderr[-2000:]
                for digest in image.blobs():
                    path = dest / digest.split(":", 1)[1]
                    assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest
                # skopeo falls back to the registry silently when a mirror fails the
                # manifest: the mirror's own counters say that it served the pull.
                stats = daemon.stats()["proxy"]
                assert stats["blobs"] == len(image.blobs()), (stats, daemon.log())
                assert stats["fallbacks"] == 0 and stats["errors"] == 0, stats
        finally:
            for d in daemons:
                d.close()
        for digest in image.blobs():
            assert registry.blob_gets(digest) == 1, (digest, registry.requests())
