"""One Cache shared by many threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor


def test_threads_write_and_read_their_own_and_shared_keys(cache):
    def work(t):
        for i in range(300):
            cache.set("own", f"{t}/{i}", b"%d-%d" % (t, i))
            cache.set("shared", f"{i % 10}", b"x%d" % (i % 10))
        return [cache.get("own", f"{t}/{i}") == b"%d-%d" % (t, i) for i in range(300)]

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(work, range(8)))
    assert all(all(r) for r in results)
    assert len(cache.list("own")) == 8 * 300
    assert [cache.get("shared", str(i)) for i in range(10)] == [b"x%d" % i for i in range(10)]
    assert cache.verify()["clean"]


def test_close_while_other_threads_use_the_cache(cache_dir):
    import blobcache

    c = blobcache.Cache(cache_dir)
    errors, stop = [], threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                c.set("b", "k", b"v")
                c.get("b", "k")
            except blobcache.ClosedError:
                return
            except Exception as e:  # noqa: BLE001 - collected for the assert
                errors.append(e)
                return

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    c.close()
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == []
    with blobcache.Cache(cache_dir) as again:
        assert again.get("b", "k") == b"v"
