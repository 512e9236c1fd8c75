"""A small OCI image layout, written by hand, for the registry mirror tests.

``make_image(tmp_path, layers)`` writes what ``skopeo copy oci:<dir>:1`` reads:
one deterministic tar.gz layer per given ``bytes`` (fixed mtime, owner and
gzip header, so the same inputs always give the same digests), a config whose
diff_ids match the layers, the manifest, ``index.json`` tagging it "1", and
``oci-layout``. No docker is needed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Image:
    layout_dir: Path
    manifest_digest: str
    config_digest: str
    layer_digests: list[str]
    blob_sizes: dict[str, int]     # every blob, manifest included

    def blobs(self) -> list[str]:
        """The config and the layers (not the manifest), without duplicates."""
        return list(dict.fromkeys([self.config_digest, *self.layer_digests]))

    def blob_path(self, digest: str) -> Path:
        algo, hexdigest = digest.split(":", 1)
        return self.layout_dir / "blobs" / algo / hexdigest


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer_tar(name: str, content: bytes) -> bytes:
    """An uncompressed tar with one file, byte-for-byte reproducible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(content), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def make_image(tmp_path: str | os.PathLike, layers: list[bytes],
               name: str = "image") -> Image:
    """Write an OCI image layout at ``<tmp_path>/<name>``, tagged "1".

    Layer i is a tar.gz holding one file ``layer-<i>`` with ``layers[i]``;
    the same inputs always give the same digests.
    """
    layout = Path(tmp_path) / name
    blob_dir = layout / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}

    def put(data: bytes) -> str:
        digest = _digest(data)
        (blob_dir / digest.split(":", 1)[1]).write_bytes(data)
        sizes[digest] = len(data)
        return digest

    layer_descs, diff_ids = [], []
    for i, content in enumerate(layers):
        tar = _layer_tar(f"layer-{i}", content)
        blob = _gzip(tar)
        layer_descs.append({"mediaType": OCI_LAYER_GZIP, "digest": put(blob), "size": len(blob)})
        diff_ids.append(_digest(tar))
    config = _canonical({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"damselfly test layer {i}"} for i in range(len(layers))],
    })
    config_digest = put(config)
    manifest = _canonical({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": layer_descs,
    })
    manifest_digest = put(manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest,
                       "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": "1"}}],
    }
    (layout / "index.json").write_bytes(_canonical(index))
    (layout / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    return Image(layout, manifest_digest, config_digest,
                 [d["digest"] for d in layer_descs], sizes)


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
