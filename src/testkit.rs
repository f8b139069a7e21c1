//! Deterministic payload generators shared by the tests, benchmarks,
//! examples and fuzz targets: the same seed gives the same bytes on every
//! machine, so results are reproducible and comparable across runs.

use std::io::Read;
use std::path::Path;

/// Deterministic pseudo-random generator (xorshift64*).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `buf` with random bytes (incompressible).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "the",
    "matrix",
    "reloaded",
    "anime",
    "season",
    "episode",
    "studio",
    "director",
    "drama",
    "action",
    "science",
    "fiction",
    "hero",
    "journey",
    "audiobook",
    "narrator",
    "chapter",
];

/// A realistic API-response JSON document of exactly `size` bytes (at
/// least 2): a TMDB-style result page with shared field names and varying
/// values, so it compresses like real responses do (not like repeated
/// text). Truncated documents are not valid JSON, which a cache does not
/// care about.
pub fn json_payload(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut s = format!(
        "{{\"id\":{},\"imdb_id\":\"tt{:07}\",\"popularity\":{}.{},\"results\":[",
        rng.below(1_000_000),
        rng.below(10_000_000),
        rng.below(1000),
        rng.below(1000)
    );
    let mut i = 0;
    while s.len() < size.saturating_sub(2) {
        if i > 0 {
            s.push(',');
        }
        let title: Vec<&str> = (0..3)
            .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
            .collect();
        s.push_str(&format!(
            "{{\"id\":{},\"title\":\"{}\",\"vote_average\":{}.{},\"release_date\":\"{}-{:02}-{:02}\",\"adult\":false}}",
            rng.below(100_000),
            title.join(" "),
            rng.below(10),
            rng.below(10),
            1950 + rng.below(75),
            1 + rng.below(12),
            1 + rng.below(28)
        ));
        i += 1;
    }
    s.push_str("]}");
    let mut b = s.into_bytes();
    b.truncate(size.max(2));
    b
}

/// Size of the `seed`-th payload of a realistic API-response mix:
/// 92 % single records of 300 B–1.3 KiB, 6 % list pages of 2–6 KiB, 2 %
/// search pages of 6–20 KiB (mean about 1.2 KiB, never one fixed size).
pub fn api_payload_size(seed: u64) -> usize {
    let mut rng = Rng::new(seed ^ 0x5151_0000);
    let (lo, hi) = match rng.below(100) {
        0..92 => (300, 1_300),
        92..98 => (2_048, 6_144),
        _ => (6_144, 20_480),
    };
    (lo + rng.below(hi - lo)) as usize
}

/// The `seed`-th payload of that mix: JSON of [`api_payload_size`] bytes.
pub fn api_payload(seed: u64) -> Vec<u8> {
    json_payload(seed, api_payload_size(seed))
}

/// A reader producing `len` deterministic, moderately compressible bytes
/// (64 KiB blocks, half random, half a repeated phrase) without holding
/// them in memory: a stand-in for a multi-GB dataset dump.
#[derive(Debug)]
pub struct GenReader {
    rng: Rng,
    left: u64,
    block: Vec<u8>,
    pos: usize,
}

impl GenReader {
    /// `len` bytes from seed `seed`.
    pub fn new(seed: u64, len: u64) -> GenReader {
        GenReader {
            rng: Rng::new(seed),
            left: len,
            block: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for GenReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        if self.pos == self.block.len() {
            // 64 KiB blocks: half random, half a repeated phrase.
            let mut b = vec![0u8; 32 * 1024];
            self.rng.fill(&mut b);
            let phrase = format!("record {} of the offline dump; ", self.rng.below(1000));
            while b.len() < 64 * 1024 {
                b.extend_from_slice(phrase.as_bytes());
            }
            b.truncate(64 * 1024);
            self.block = b;
            self.pos = 0;
        }
        let n = buf
            .len()
            .min(self.block.len() - self.pos)
            .min(self.left as usize);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Bytes `dir` and everything under it occupy on disk (allocated blocks,
/// so a small file counts a whole block), without following links.
pub fn disk_usage(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.path().symlink_metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.blocks() * 512;
        }
    }
    Ok(total)
}

mod responses;
pub use responses::{ApiResponse, ResponseKind, api_key, api_response};

/// A throwaway `redis-server` for tests and benchmarks: it listens only on
/// a Unix socket in the directory given (no TCP port), keeps nothing on
/// disk (`save ""`, no append-only file), and is killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
    password: Option<String>,
}

impl RedisServer {
    /// Starts a server in `dir` (which must exist), optionally requiring
    /// `password` for the default user. Fails with a clear message when
    /// `redis-server` is not installed.
    pub fn start(dir: &Path, password: Option<&str>) -> std::io::Result<RedisServer> {
        let mut s = RedisServer {
            child: None,
            dir: dir.to_path_buf(),
            password: password.map(str::to_string),
        };
        s.restart()?;
        Ok(s)
    }

    /// The socket the server listens on.
    pub fn socket(&self) -> std::path::PathBuf {
        self.dir.join("redis.sock")
    }

    /// A `unix://` URL of the server, with the password when one is set.
    pub fn url(&self) -> String {
        let base = format!("unix://{}", self.socket().display());
        match &self.password {
            Some(p) => format!("{base}?pass={p}"),
            None => base,
        }
    }

    /// Kills the server (`SIGKILL`) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the server if it runs, then starts it again, empty, on the
    /// same socket; returns once it answers.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot start redis-server ({e}): install it (Debian: apt-get install \
                     redis-server; .ci/run does this)"
                ),
            )
        })?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> std::io::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(std::io::Error::other(format!(
                    "redis-server exited at start ({status}); see {}",
                    self.dir.join("redis.log").display()
                )));
            }
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(std::io::Error::other(
            "redis-server did not start within 10 s",
        ))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
