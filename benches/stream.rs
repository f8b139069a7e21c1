//! 1 GiB streaming put and get against the physical limit measured in the
//! same run: plain zstd streaming compression and decompression of the same
//! bytes at the store's level, with reused 128 KiB buffers, no hashing and
//! output to a file in the page cache. Prints throughputs, the ratios and
//! the process's peak RSS after the store's part.
//!
//! `cargo bench --bench stream` (`BENCH_STREAM_BYTES` changes the size).

use std::io::{BufWriter, Read, Write};
use std::time::Instant;

use blobcache::testkit::GenReader;
use blobcache::{PutOptions, Store, StoreOptions};

const BUF: usize = 128 * 1024;

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// Peak resident set size of this process so far, in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Reads `r` to the end through one reused buffer; returns the byte count.
fn drain(mut r: impl Read) -> u64 {
    let mut buf = vec![0u8; BUF];
    let mut n = 0;
    loop {
        match r.read(&mut buf).unwrap() {
            0 => return n,
            k => n += k as u64,
        }
    }
}

fn main() {
    let len: u64 = std::env::var("BENCH_STREAM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let level = StoreOptions::default().get_compression_level();
    let dir = tempfile::tempdir().unwrap();

    // The store first, so the peak RSS is its own.
    let store = Store::open(dir.path().join("cache"), StoreOptions::default()).unwrap();
    let start = Instant::now();
    store
        .put_reader("dumps", "d", GenReader::new(1, len), &PutOptions::new())
        .unwrap();
    let put = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let reader = store.get_reader("dumps", "d").unwrap().unwrap();
    assert_eq!(drain(reader), len);
    let get = start.elapsed().as_secs_f64();
    let rss = peak_rss_mib();
    drop(store);

    // The physical limit: plain zstd streaming of the same bytes.
    let path = dir.path().join("plain.zst");
    let start = Instant::now();
    let file = BufWriter::with_capacity(BUF, std::fs::File::create(&path).unwrap());
    let mut enc = zstd::stream::write::Encoder::new(file, level).unwrap();
    let mut src = GenReader::new(1, len);
    let mut buf = vec![0u8; BUF];
    loop {
        let k = src.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        enc.write_all(&buf[..k]).unwrap();
    }
    enc.finish().unwrap().flush().unwrap();
    let zc = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let dec = zstd::stream::read::Decoder::new(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(drain(dec), len);
    let zd = start.elapsed().as_secs_f64();

    let (p, g) = (mb_per_s(len, put), mb_per_s(len, get));
    let (c, d) = (mb_per_s(len, zc), mb_per_s(len, zd));
    println!("{} MiB at zstd level {level}:", len >> 20);
    println!(
        "  put_reader {p:.0} MB/s vs zstd compress {c:.0} MB/s: {:.0} %",
        100.0 * p / c
    );
    println!(
        "  get_reader {g:.0} MB/s vs zstd decompress {d:.0} MB/s: {:.0} %",
        100.0 * g / d
    );
    println!("  peak RSS after the store's put and get: {rss:.1} MiB");
}
