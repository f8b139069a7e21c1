"""requests-cache 1.3.3's own backend test suites, run against
blobcache.requests_cache. run-tests.sh copies this file into
tests/integration/ of requests-cache's source distribution and runs it
there, with pytest-httpbin serving httpbin on 127.0.0.1."""

from blobcache.requests_cache import BlobcacheCache, BlobcacheStorage
from tests.integration.base_cache_test import BaseCacheTest
from tests.integration.base_storage_test import BaseStorageTest


class TestBlobcacheStorage(BaseStorageTest):
    storage_class = BlobcacheStorage
    init_kwargs = {"use_temp": True}


class TestBlobcacheCache(BaseCacheTest):
    backend_class = BlobcacheCache
    init_kwargs = {"use_temp": True}
