"""Real processes on one cache directory: Python and the CLI, and two
Python processes, one killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import blobcache

WRITER = r"""
import sys, blobcache
with blobcache.Cache(sys.argv[1]) as c:
    for i in range(50):
        c.set_with_meta("tmdb", f"movie/{i}", ('{"id":%d}' % i).encode(),
                        response_headers={"ETag": str(i)}, category="metadata")
print("written", flush=True)
"""


def test_python_writes_cli_reads(run_cli, cache_dir, python_child):
    p = python_child(WRITER, str(cache_dir), stdout=subprocess.PIPE)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0 and out.strip() == b"written"
    for i in (0, 17, 49):
        got = run_cli("get", "tmdb", f"movie/{i}")
        assert got.stdout == b'{"id":%d}' % i
    ls = json.loads(run_cli("--json", "ls", "tmdb").stdout)
    assert len(ls["entries"] if isinstance(ls, dict) else ls) == 50


def test_cli_writes_python_reads_while_python_holds_the_cache(run_cli, cache_dir):
    with blobcache.Cache(cache_dir) as c:
        c.set("tmdb", "from-python", b"py")
        # the CLI runs as a guest of this process (its owner) and back
        run_cli("put", "tmdb", "from-cli", "-", input=b'{"cli":true}')
        assert c.get("tmdb", "from-cli") == b'{"cli":true}'
        assert run_cli("get", "tmdb", "from-python").stdout == b"py"
        assert run_cli("rm", "tmdb", "from-python").returncode == 0
        assert c.get("tmdb", "from-python") is None


OWNER = r"""
import sys, time, blobcache
c = blobcache.Cache(sys.argv[1])
for i in range(200):
    c.set("jobs", f"a/{i}", b"from-a-%d" % i)
print("owner" if c.is_owner() else "guest", flush=True)
time.sleep(600)
"""

GUEST = r"""
import sys, blobcache
c = blobcache.Cache(sys.argv[1], owner_timeout=20)
print("ready", flush=True)
sys.stdin.readline()          # the other process is dead now
bad = [i for i in range(200) if c.get("jobs", f"a/{i}") != b"from-a-%d" % i]
for i in range(100):
    c.set("jobs", f"b/{i}", b"from-b-%d" % i)
report = c.verify(full=True)
print(len(bad), report["clean"], c.is_owner(), len(c.list("jobs")), flush=True)
c.close()
"""


def test_kill_9_of_the_owner_loses_nothing_acknowledged(cache_dir, python_child):
    a = python_child(OWNER, str(cache_dir), stdout=subprocess.PIPE)
    try:
        assert a.stdout.readline().strip() == b"owner"
        b = python_child(
            GUEST, str(cache_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert b.stdout.readline().strip() == b"ready"
        os.kill(a.pid, signal.SIGKILL)
        a.wait(30)
        out, _ = b.communicate(b"go\n", timeout=120)
        assert b.returncode == 0, out
        missing, clean, owner, listed = out.split()
        assert missing == b"0" and clean == b"True" and owner == b"True"
        assert listed == b"300"
    finally:
        if a.poll() is None:
            a.kill()
    with blobcache.Cache(cache_dir) as c:
        assert c.get("jobs", "a/199") == b"from-a-199"
        assert c.get("jobs", "b/99") == b"from-b-99"


def test_a_forked_child_cannot_use_its_parents_handle(cache_dir):
    c = blobcache.Cache(cache_dir)
    c.set("b", "k", b"v")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            c.get("b", "k")
            msg = b"no error"
        except blobcache.ClosedError as e:
            msg = b"closed: " + str(e).encode()
        try:
            with blobcache.Cache(cache_dir) as mine:
                msg += b" | own handle: " + (mine.get("b", "k") or b"None")
        except Exception as e:  # noqa: BLE001 - reported to the parent
            msg += b" | " + repr(e).encode()
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read()
    os.waitpid(pid, 0)
    assert msg.startswith(b"closed: ") and b"before a fork" in msg, msg
    assert msg.endswith(b"own handle: v"), msg
    assert c.get("b", "k") == b"v"
    c.close()
