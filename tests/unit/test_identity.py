"""Task identity: what merges into one swarm and what stays apart."""

from __future__ import annotations

import pytest

from engine.errors import BadInput
from engine.identity import TaskIdentity, canonical_url, registry_blob_digest, task_id_for
from engine.types import Digest, TaskId

HEX = "ab" * 32
OTHER = "cd" * 32


def test_signature_params_are_ignored():
    plain = task_id_for("https://bucket.s3.amazonaws.com/a/b.tar?versionId=3")
    signed = task_id_for(
        "https://bucket.s3.amazonaws.com/a/b.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIA%2F20240101&X-Amz-Date=20240101T000000Z&X-Amz-Expires=60"
        "&X-Amz-SignedHeaders=host&versionId=3&X-Amz-Signature=deadbeef"
        "&X-Amz-Security-Token=tok")
    assert plain == signed


@pytest.mark.parametrize("query", [
    "Signature=x&Expires=1&AWSAccessKeyId=k",
    "OSSAccessKeyId=k&Expires=1&Signature=s",
    "X-Goog-Algorithm=a&X-Goog-Credential=c&X-Goog-Date=d&X-Goog-Expires=1"
    "&X-Goog-SignedHeaders=host&X-Goog-Signature=s",
    "GoogleAccessId=g&Expires=1&Signature=s",
    "x-amz-signature=lowercase-too",
])
def test_each_provider_signature_is_filtered(query):
    assert task_id_for(f"https://h/o?{query}") == task_id_for("https://h/o")


def test_other_params_matter_and_keep_their_order():
    assert task_id_for("https://h/o?v=1") != task_id_for("https://h/o?v=2")
    assert task_id_for("https://h/o?a=1&b=2") != task_id_for("https://h/o?b=2&a=1")


def test_user_filter_params():
    assert task_id_for("https://h/o?token=1&v=2", filter_params=["Token"]) == \
        task_id_for("https://h/o?v=2")
    assert task_id_for("https://h/o?token=1") != task_id_for("https://h/o")


def test_defaults_can_be_switched_off():
    a = TaskIdentity.of("https://h/o?Signature=1", default_filters=False)
    b = TaskIdentity.of("https://h/o?Signature=2", default_filters=False)
    assert a.task_id != b.task_id


def test_url_normalisation():
    same = ["HTTPS://Example.COM:443/x", "https://example.com/x#frag",
            "https://user:pw@example.com/x"]
    ids = {task_id_for(u) for u in same}
    assert len(ids) == 1
    assert task_id_for("https://example.com:8443/x") not in ids
    assert task_id_for("http://example.com/x") not in ids
    assert canonical_url("http://h", set()) == "http://h/"
    assert canonical_url("http://[::1]:8080/p?q=1", set()) == "http://[::1]:8080/p?q=1"


def test_tag_and_digest_separate_tasks():
    base = task_id_for("https://h/o")
    assert task_id_for("https://h/o", tag="nightly") != base
    assert task_id_for("https://h/o", digest=Digest("sha256", HEX)) != base
    assert task_id_for("https://h/o", digest=Digest("sha256", HEX)) != \
        task_id_for("https://h/o", digest=Digest("sha256", OTHER))
    assert isinstance(base, TaskId)


def test_registry_blob_is_keyed_by_digest_alone():
    urls = [f"https://registry-1.docker.io/v2/library/nginx/blobs/sha256:{HEX}",
            f"http://mirror.local:5000/v2/someone/else/blobs/sha256:{HEX}?token=x",
            f"https://mirror.local/prefix/v2/nginx/blobs/sha256:{HEX}"]
    ids = {task_id_for(u, tag=t) for u in urls for t in ("", "x")}
    assert len(ids) == 1
    ident = TaskIdentity.of(urls[0], digest=Digest("sha256", HEX))
    assert ident.task_id in ids and ident.pinned
    assert task_id_for(f"https://r/v2/n/blobs/sha256:{OTHER}") not in ids


def test_blob_digest_must_agree():
    with pytest.raises(BadInput):
        TaskIdentity.of(f"https://r/v2/n/blobs/sha256:{HEX}", digest=Digest("sha256", OTHER))


def test_non_blob_paths():
    assert registry_blob_digest(f"https://r/v2/n/manifests/sha256:{HEX}") is None
    assert registry_blob_digest(f"https://r/v2/blobs/sha256:{HEX}") is None
    assert registry_blob_digest("https://r/v2/n/blobs/sha256:short") is None
    assert not TaskIdentity.of("https://h/o").pinned


@pytest.mark.parametrize("url", ["ftp://h/x", "https:///nohost", "http://h:99999/x"])
def test_bad_urls(url):
    with pytest.raises(BadInput):
        task_id_for(url)
