"""Bad input gets a clear exception, never a crash, and loses nothing."""

from __future__ import annotations

import io
import math

import pytest

import blobcache


@pytest.mark.parametrize(
    "args, match",
    [
        ((1, "sig", b"x"), "backend"),
        (("b", 5, b"x"), "signature must be str or bytes, not int"),
        (("b", ["s"], b"x"), "signature must be str or bytes, not list"),
        (("b", "sig", 7), "payload must be bytes, bytearray, memoryview or str, not int"),
        (("b", "sig", None), "payload must be bytes"),
        (("b", "sig", {"a": 1}), "payload must be bytes"),
    ],
)
def test_wrong_types_are_type_errors(cache, args, match):
    with pytest.raises(TypeError, match=match):
        cache.set(*args)
    assert cache.stats()["entries"] == 0


@pytest.mark.parametrize("ttl", [-1, math.nan, math.inf])
def test_bad_ttls_are_value_errors(cache, ttl):
    with pytest.raises(ValueError, match="ttl_seconds must be a finite number of seconds"):
        cache.set("b", "k", b"v", ttl_seconds=ttl)
    with pytest.raises(ValueError):
        cache.touch("b", "k", ttl)


def test_bad_headers(cache):
    with pytest.raises(TypeError, match="response_headers must map str names to str values"):
        cache.set_with_meta("b", "k", b"v", response_headers={"X-A": 1})
    with pytest.raises(TypeError):
        cache.set_with_meta("b", "k", b"v", response_headers=42)
    assert cache.get("b", "k") is None


@pytest.mark.parametrize(
    "backend, signature, match",
    [
        ("", "k", "the backend name is empty"),
        ("a\0b", "k", "contains a NUL byte"),
        ("b" * 100_000, "k", "the backend is 100000 bytes long"),
        ("b", "s" * (2 << 20), "the signature is 2097152 bytes long"),
    ],
)
def test_invalid_keys(cache, backend, signature, match):
    for call in (
        lambda: cache.set(backend, signature, b"v"),
        lambda: cache.get(backend, signature),
        lambda: cache.delete(backend, signature),
        lambda: cache.get_stale(backend, signature),
        lambda: cache.open_reader(backend, signature),
    ):
        with pytest.raises(blobcache.InvalidKeyError, match=match) as e:
            call()
        assert isinstance(e.value, ValueError)
    assert cache.stats()["entries"] == 0


def test_contains_needs_a_pair(cache):
    with pytest.raises(TypeError, match=r"\(backend, signature\) pair"):
        "k" in cache
    with pytest.raises(TypeError):
        ("a", "b", "c") in cache


def test_closed_cache_raises_closed_error(cache_dir):
    c = blobcache.Cache(cache_dir)
    c.set("b", "k", b"v")
    c.close()
    for call in (
        lambda: c.get("b", "k"),
        lambda: c.set("b", "k", b"v"),
        lambda: c.stats(),
        lambda: c.list(),
        lambda: c.get_or_fetch("b", "k", lambda: b"x"),
        lambda: ("b", "k") in c,
    ):
        with pytest.raises(blobcache.ClosedError, match="is closed"):
            call()
    with blobcache.Cache(cache_dir) as again:
        assert again.get("b", "k") == b"v"


def test_reader_after_close(cache):
    cache.set("b", "k", b"v")
    r = cache.open_reader("b", "k")
    r.close()
    with pytest.raises(ValueError):
        r.read()


def test_unknown_and_bad_options(cache_dir):
    with pytest.raises(TypeError, match='unknown option "durabilty"'):
        blobcache.Cache(cache_dir, durabilty="synced")
    with pytest.raises(ValueError, match='unknown durability "fast"'):
        blobcache.Cache(cache_dir, durability="fast")
    with pytest.raises(TypeError, match="option max_size"):
        blobcache.Cache(cache_dir, max_size="big")
    with pytest.raises(TypeError, match="not a single string"):
        blobcache.Cache(cache_dir, deny_secrets="abc")
    with pytest.raises(ValueError, match="option stale_if_error"):
        blobcache.Cache(cache_dir, stale_if_error=-5)


def test_a_file_is_not_a_cache_directory(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"not a cache")
    with pytest.raises(blobcache.Error):
        blobcache.Cache(f)
    assert f.read_bytes() == b"not a cache"


def test_garbage_archive_is_refused_and_imports_nothing(cache):
    cache.set("b", "k", b"v")
    with pytest.raises(blobcache.BadArchiveError) as e:
        cache.import_(io.BytesIO(b"this is not an archive" * 100))
    assert isinstance(e.value, ValueError)
    with pytest.raises(TypeError, match="binary file object"):
        cache.import_(12)
    with pytest.raises(ValueError, match="unknown merge policy"):
        cache.import_(io.BytesIO(b""), merge="sometimes")
    assert [m["signature"] for m in cache.list()] == ["k"]


def test_file_object_errors_are_raised_as_they_were(cache, tmp_path):
    class Broken(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise RuntimeError("disk on fire")

    cache.set("b", "k", b"v")
    with pytest.raises(RuntimeError, match="disk on fire"):
        cache.export(Broken())
    with pytest.raises(TypeError, match="binary mode"):
        cache.put_file("b", "t", io.StringIO("text"))
    with pytest.raises(FileNotFoundError):
        cache.put_file("b", "t", tmp_path / "missing")
    with pytest.raises(OSError):
        cache.export(tmp_path / "no" / "such" / "dir" / "a.tar")
    assert cache.get("b", "t") is None


def test_fetch_returning_nonsense(cache):
    with pytest.raises(TypeError, match="the payload fetch returned must be bytes"):
        cache.get_or_fetch("b", "k", lambda: 42)
    with pytest.raises(TypeError, match="payload or a \\(payload, headers\\) pair"):
        cache.get_or_fetch("b", "k", lambda: (b"a", {}, 3))
    assert cache.get("b", "k") is None


def test_clear_prefix_needs_backend(cache):
    with pytest.raises(ValueError, match="needs its backend"):
        cache.clear(prefix="movie/")
