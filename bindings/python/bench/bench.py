#!/usr/bin/env python3
"""blobcache from Python against what Python API clients cache in today, in
one run on the same payloads, printed as one Markdown table.

Systems: ``sqlite-norowid`` (a ``WITHOUT ROWID`` table keyed by
``(backend, signature)``), ``sqlite-rowid`` (the same columns in a rowid
table with that primary key), both WAL, ``synchronous=NORMAL``, autocommit
(one commit per set); ``diskcache`` (python-diskcache, ``Cache``, tuple
keys); ``blobcache`` (``blobcache.Cache`` with default options) and
``blobcache-v2`` (the same on a format-2 cache, ``format=2``: the storage
core v2).

Payloads: deterministic JSON shaped like TMDB, AniList and Audnexus
responses (the distribution of the Rust generator ``src/testkit/responses.rs``:
about 90 % single records of 430 B to 1.3 KB, 9 % list pages of up to 20
items, 1 % large detail responses of 10 to 20 KiB), random keys in random
order. Sets: every set timed. Gets: random keys over the whole set after a
warm-up. Threads: 8 threads doing random gets at once (one SQLite
connection per thread; one shared diskcache and blobcache handle). Disk:
every file in the directory after close, over the raw payload bytes.

    python bench/bench.py                  # 100,000 entries
    python bench/bench.py --entries 20000
    python bench/bench.py --smoke          # 2,000 entries, a few seconds

Timings depend on the machine and its load: the script prints
``os.getloadavg()`` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

Key = Tuple[str, str]
TTL = 86400.0

# ---------------------------------------------------------------- payloads

WORDS = (
    "the of and a to in his her is with their for an on when as by from who "
    "that after world life young new man woman must family love story time "
    "years one friends war city home finds discovers becomes school secret "
    "journey father mother girl boy small town old team power dark into "
    "against save find only before while back death past future dream last "
    "first night island kingdom battle mystery detective killer ghost space "
    "planet ship crew empire magic dragon sword heart truth lies revenge"
).split()
GENRES = [
    (28, "Action"), (12, "Adventure"), (16, "Animation"), (35, "Comedy"),
    (80, "Crime"), (18, "Drama"), (14, "Fantasy"), (27, "Horror"),
    (9648, "Mystery"), (10749, "Romance"), (878, "Science Fiction"), (53, "Thriller"),
]  # fmt: skip
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class Doc:
    """Random field values for one response (seeded: the same bytes on
    every machine)."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def word(self) -> str:
        # Common words more often (the minimum of three uniform picks).
        n = len(WORDS)
        return WORDS[min(self.r.randrange(n), self.r.randrange(n), self.r.randrange(n))]

    def text(self, lo: int, hi: int) -> str:
        n = lo + min(self.r.randrange(hi - lo), self.r.randrange(hi - lo))
        return " ".join(self.word() for _ in range(n)) + "."

    def title(self) -> str:
        n = 1 + self.r.randrange(4)
        return " ".join(WORDS[20 + self.r.randrange(len(WORDS) - 20)].title() for _ in range(n))

    def token(self, n: int) -> str:
        return "".join(BASE62[self.r.randrange(62)] for _ in range(n))

    def date(self) -> str:
        r = self.r
        return f"{1950 + r.randrange(75)}-{1 + r.randrange(12):02}-{1 + r.randrange(28):02}"

    def genres(self) -> List[Dict[str, Any]]:
        return [dict(zip(("id", "name"), self.r.choice(GENRES))) for _ in range(1 + self.r.randrange(3))]

    def tmdb_movie(self, id_: int, full: bool) -> Dict[str, Any]:
        r = self.r
        m: Dict[str, Any] = {"adult": False, "backdrop_path": f"/{self.token(27)}.jpg"}
        if full:
            m.update(
                belongs_to_collection=None,
                budget=r.randrange(200) * 1_000_000,
                genres=self.genres(),
                homepage="",
                production_companies=[
                    {"id": r.randrange(100000), "logo_path": f"/{self.token(27)}.png",
                     "name": self.title(), "origin_country": "US"}
                    for _ in range(1 + r.randrange(3))
                ],
                imdb_id=f"tt{r.randrange(10_000_000):07}",
            )  # fmt: skip
        else:
            m["genre_ids"] = [g["id"] for g in self.genres()]
        m.update(
            id=id_,
            original_language="en",
            original_title=self.title(),
            overview=self.text(12, 60),
            popularity=round(r.random() * 500, 3),
            poster_path=f"/{self.token(27)}.jpg",
            release_date=self.date(),
            title=self.title(),
            video=False,
            vote_average=round(r.random() * 10, 1),
            vote_count=r.randrange(30000),
        )
        if full:
            m.update(revenue=r.randrange(2000) * 1_000_000, runtime=80 + r.randrange(100),
                     status="Released", tagline=self.text(3, 10))  # fmt: skip
        return m

    def anilist_media(self, id_: int) -> Dict[str, Any]:
        r = self.r
        return {"data": {"Media": {
            "id": id_, "idMal": r.randrange(60000), "type": "ANIME",
            "title": {"romaji": self.title(), "english": self.title(), "native": self.title()},
            "description": self.text(15, 70), "episodes": 1 + r.randrange(60),
            "status": "FINISHED", "season": r.choice(["WINTER", "SPRING", "SUMMER", "FALL"]),
            "seasonYear": 1980 + r.randrange(45), "averageScore": r.randrange(100),
            "genres": [g["name"] for g in self.genres()],
            "coverImage": {"large": f"https://s4.anilist.co/file/anilistcdn/media/anime/cover/large/bx{id_}-{self.token(12)}.jpg"},
            "studios": {"nodes": [{"id": r.randrange(5000), "name": self.title()}]},
        }}}  # fmt: skip

    def audnexus_book(self, id_: int) -> Dict[str, Any]:
        r = self.r
        return {
            "asin": f"B0{id_:08}", "title": self.title(), "subtitle": self.title(),
            "authors": [{"asin": f"B0{r.randrange(10**8):08}", "name": self.title()}],
            "narrators": [{"name": self.title()} for _ in range(1 + r.randrange(2))],
            "publisherName": self.title(), "releaseDate": self.date() + "T00:00:00.000Z",
            "runtimeLengthMin": 60 + r.randrange(1500), "language": "english",
            "summary": self.text(15, 65), "genres": [
                {"asin": str(r.randrange(10**10)), "name": g["name"], "type": "genre"}
                for g in self.genres()
            ],
            "image": f"https://m.media-amazon.com/images/I/{self.token(11)}.jpg",
            "rating": f"{r.random() * 5:.1f}", "formatType": "unabridged",
        }  # fmt: skip

    def page(self, backend: str, id_: int) -> Dict[str, Any]:
        # List pages: up to 20 items, short pages more often.
        n = 1 + min(self.r.randrange(20), self.r.randrange(20))
        items = [self.item(backend, id_ * 31 + k) for k in range(n)]
        return {"page": 1, "results": items, "total_pages": 1 + self.r.randrange(50),
                "total_results": n + self.r.randrange(1000)}  # fmt: skip

    def item(self, backend: str, id_: int) -> Dict[str, Any]:
        if backend == "tmdb":
            return self.tmdb_movie(id_, False)
        if backend == "anilist":
            return self.anilist_media(id_)["data"]["Media"]
        return self.audnexus_book(id_)

    def detail(self, backend: str, id_: int) -> Dict[str, Any]:
        # 10 to 20 KiB: TMDB credits or an Audnexus chapter list.
        r = self.r
        if backend == "tmdb":
            cast = [{"id": r.randrange(10**7), "name": self.title(), "character": self.title(),
                     "profile_path": f"/{self.token(27)}.jpg", "order": k}
                    for k in range(60 + r.randrange(60))]  # fmt: skip
            return {"id": id_, "credits": {"cast": cast}}
        chapters = [{"lengthMs": r.randrange(3_000_000), "startOffsetMs": k * 1000,
                     "title": f"Chapter {k + 1}: {self.title()}"}
                    for k in range(130 + r.randrange(120))]  # fmt: skip
        return {"asin": f"B0{id_:08}", "chapters": chapters}


def scrambled(i: int) -> int:
    """Entry numbers to distinct ids in a random-looking order (a bijection
    on 24 bits)."""
    mask = (1 << 24) - 1
    x = (i * 0x9E3779) & mask
    x ^= x >> 13
    x = (x * 0x5BD1E5) & mask
    x ^= x >> 11
    return x


def response(seed: int, i: int) -> Tuple[Key, bytes]:
    """Entry ``i``: its key and JSON body."""
    doc = Doc(seed * 1_000_003 + i)
    backend = ("tmdb", "anilist", "audnexus")[doc.r.randrange(3)]
    roll, id_ = doc.r.randrange(100), scrambled(i)
    if roll == 0:
        backend = "tmdb" if backend != "audnexus" else backend
        sig, body = f"detail/{id_}?append_to_response=credits", doc.detail(backend, id_)
    elif roll < 10:
        sig, body = f"list/{id_}?page=1", doc.page(backend, id_)
    else:
        sig, body = f"record/{id_}?language=en-US", doc.item(backend, id_)
        if backend == "tmdb":
            body = doc.tmdb_movie(id_, True)
    return (backend, sig), json.dumps(body, separators=(",", ":")).encode()


# ----------------------------------------------------------------- systems


class Sqlite:
    """A SQLite table keyed by ``(backend, signature)``."""

    def __init__(self, root: str, rowid: bool) -> None:
        self.path = os.path.join(root, "cache.sqlite")
        self.rowid = rowid
        self.local = threading.local()
        self.conns: List[sqlite3.Connection] = []
        tail = "" if rowid else " WITHOUT ROWID"
        self.conn().execute(
            "CREATE TABLE IF NOT EXISTS responses (backend TEXT NOT NULL, signature TEXT NOT NULL,"
            " payload BLOB NOT NULL, fetched_at REAL NOT NULL, expires_at REAL NOT NULL,"
            f" PRIMARY KEY (backend, signature)){tail}"
        )

    def conn(self) -> sqlite3.Connection:
        c: Optional[sqlite3.Connection] = getattr(self.local, "c", None)
        if c is None:
            c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            self.local.c = c
            self.conns.append(c)
        return c

    def set(self, key: Key, payload: bytes) -> None:
        now = time.time()
        self.conn().execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
            (key[0], key[1], payload, now, now + TTL),
        )

    def get(self, key: Key) -> Optional[bytes]:
        row = self.conn().execute(
            "SELECT payload FROM responses WHERE backend = ? AND signature = ? AND expires_at > ?",
            (key[0], key[1], time.time()),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.local.c = None
        sqlite3.connect(self.path).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()


class DiskCache:
    """python-diskcache's ``Cache`` (tuple keys, per-entry expiry)."""

    def __init__(self, root: str) -> None:
        import diskcache

        self.c = diskcache.Cache(root)

    def set(self, key: Key, payload: bytes) -> None:
        self.c.set(key, payload, expire=TTL)

    def get(self, key: Key) -> Optional[bytes]:
        v: Optional[bytes] = self.c.get(key)
        return v

    def close(self) -> None:
        self.c.close()


class Blobcache:
    """``blobcache.Cache`` with default options (``format`` 1 or 2)."""

    def __init__(self, root: str, format: int = 1) -> None:
        import blobcache

        self.c = blobcache.Cache(root, format=format)

    def set(self, key: Key, payload: bytes) -> None:
        self.c.set(key[0], key[1], payload, ttl_seconds=TTL)

    def get(self, key: Key) -> Optional[bytes]:
        return self.c.get(key[0], key[1])

    def close(self) -> None:
        self.c.close()


SYSTEMS: Dict[str, Callable[[str], Any]] = {
    "sqlite-norowid": lambda d: Sqlite(d, rowid=False),
    "sqlite-rowid": lambda d: Sqlite(d, rowid=True),
    "diskcache": DiskCache,
    "blobcache": Blobcache,
    "blobcache-v2": lambda d: Blobcache(d, format=2),
}

# ------------------------------------------------------------- measuring


def pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def disk_bytes(root: str) -> int:
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def threaded_gets(store: Any, keys: List[Key], threads: int, ops: int, seed: int) -> float:
    """Gets per second with ``threads`` threads doing ``ops`` gets in all."""
    per = ops // threads
    barrier = threading.Barrier(threads + 1)
    misses: List[int] = []

    def work(t: int) -> None:
        r = random.Random(seed + t)
        picks = [keys[r.randrange(len(keys))] for _ in range(per)]
        store.get(picks[0])  # opens this thread's connection
        barrier.wait()
        misses.append(sum(store.get(k) is None for k in picks))

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - start
    if sum(misses):
        raise SystemExit(f"{sum(misses)} threaded gets missed")
    return per * threads / elapsed


def run(name: str, data: List[Tuple[Key, bytes]], args: argparse.Namespace) -> Dict[str, float]:
    root = tempfile.mkdtemp(prefix=f"bench-{name}-", dir=args.dir)
    try:
        store = SYSTEMS[name](root)
        ns = time.perf_counter_ns
        sets = []
        for key, payload in data:
            t0 = ns()
            store.set(key, payload)
            sets.append((ns() - t0) / 1000)
        r = random.Random(args.seed)
        keys = [k for k, _ in data]
        expected = dict(data)
        for _ in range(args.gets // 10):  # warm-up
            store.get(keys[r.randrange(len(keys))])
        gets = []
        for _ in range(args.gets):
            k = keys[r.randrange(len(keys))]
            t0 = ns()
            got = store.get(k)
            gets.append((ns() - t0) / 1000)
            if got != expected[k]:
                raise SystemExit(f"{name}: wrong bytes for {k}")
        tput = threaded_gets(store, keys, args.threads, args.thread_ops, args.seed)
        store.close()
        raw = sum(len(p) for _, p in data)
        return {
            "set_med": statistics.median(sets), "set_p99": pct(sets, 0.99),
            "set_mean": statistics.fmean(sets),
            "get_med": statistics.median(gets), "get_p99": pct(gets, 0.99),
            "tput": tput, "disk": disk_bytes(root) / raw,
        }  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ratio(ours: float, theirs: float, higher_is_better: bool) -> str:
    x = ours / theirs if higher_is_better else theirs / ours
    return f"{x:.2f}x"


def table(results: Dict[str, Dict[str, float]], threads: int) -> str:
    lines = [
        f"| system | set µs median | set µs p99 | get µs median | get µs p99 "
        f"| {threads}-thread gets/s | disk B / raw B |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in results.items():
        lines.append(
            f"| {name} | {m['set_med']:.1f} | {m['set_p99']:.1f} | {m['get_med']:.1f} "
            f"| {m['get_p99']:.1f} | {m['tput']:,.0f} | {m['disk']:.2f} |"
        )
    sqlites = [n for n in ("sqlite-rowid", "sqlite-norowid") if n in results]
    for name in ("blobcache", "blobcache-v2"):
        if name not in results or not sqlites:
            continue
        b = results[name]
        best = {
            "set_med": min(results[n]["set_med"] for n in sqlites),
            "get_med": min(results[n]["get_med"] for n in sqlites),
            "tput": max(results[n]["tput"] for n in sqlites),
            "disk": min(results[n]["disk"] for n in sqlites),
        }
        lines.append(
            f"| {name} vs the faster SQLite (above 1: {name} wins) "
            f"| {ratio(b['set_med'], best['set_med'], False)} | "
            f"| {ratio(b['get_med'], best['get_med'], False)} | "
            f"| {ratio(b['tput'], best['tput'], True)} | {ratio(b['disk'], best['disk'], False)} |"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--gets", type=int, default=20_000, help="timed single-thread gets")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--thread-ops", type=int, default=80_000, help="gets in all threads")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    ap.add_argument("--dir", default=None, help="where the caches go (default: the temp dir)")
    ap.add_argument("--smoke", action="store_true", help="2,000 entries, few ops: a quick check")
    args = ap.parse_args(argv)
    if args.smoke:
        args.entries, args.gets, args.thread_ops = 2000, 1000, 4000
    names = [n for n in args.systems.split(",") if n]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        ap.error(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")

    load0 = os.getloadavg()
    data = [response(args.seed, i) for i in range(args.entries)]
    sizes = sorted(len(p) for _, p in data)
    print(
        f"{args.entries:,} entries: payload mean {statistics.fmean(sizes):,.0f} B, "
        f"median {statistics.median(sizes):,.0f} B, min {sizes[0]:,} B, "
        f"p99 {pct(sizes, 0.99):,} B, max {sizes[-1]:,} B; Python {sys.version.split()[0]}",
        flush=True,
    )
    results = {}
    for name in names:
        results[name] = run(name, data, args)
        print(f"{name}: done", file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    print(table(results, args.threads))
    print(
        f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
        f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}; {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
