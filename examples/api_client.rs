//! A metadata API client that caches its upstream with blobcache.
//!
//! The example serves its own fake upstream (a tiny movie-metadata API) on
//! 127.0.0.1, then plays a day in the life of a client:
//!
//! 1. with the upstream up, it fetches movies (metadata, 72 h), a list page
//!    (24 h), a trending list whose `Cache-Control: max-age` it honours, and
//!    an account page the upstream marks `no-store`;
//! 2. two hours later the trending list has expired and is fetched again;
//! 3. the upstream goes down and a day passes: live entries are still hits,
//!    expired ones are served stale, and what was never cached fails with
//!    the client's own error type.
//!
//! Time is simulated with a [`ManualClock`] so the run takes a second, not
//! a day. Run it with `cargo run --example api_client [CACHE_DIR]`.

use std::error::Error;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use blobcache::{
    Category, FetchError, FetchStatus, Fetched, ManualClock, PutOptions, Stats, Store, StoreOptions,
};

/// The client's API key: sent with every request, never to be cached.
const API_KEY: &str = "demo-key-51c0ffee";

/// What a run did, for printing and for the test that runs this example.
#[derive(Debug, Default)]
pub struct Report {
    /// Answers served from live cache entries.
    pub hits: usize,
    /// Answers fetched from the upstream.
    pub fetched: usize,
    /// Expired entries served because the upstream was down.
    pub stale: usize,
    /// Requests that failed with nothing cached to fall back on.
    pub errors: usize,
    /// Requests the upstream actually received.
    pub upstream_requests: usize,
    /// The cache's own counters at the end.
    pub stats: Stats,
}

/// The client's error type; `get_or_fetch` hands it back unchanged.
#[derive(Debug)]
pub enum ApiError {
    /// The upstream could not be reached or its answer could not be read.
    Unreachable(io::Error),
    /// The upstream answered with an error status.
    Status(u16),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Unreachable(e) => write!(f, "upstream unreachable: {e}"),
            ApiError::Status(code) => write!(f, "upstream answered HTTP {code}"),
        }
    }
}

impl Error for ApiError {}

/// The fake upstream: a tiny movie API on an ephemeral local port.
struct Upstream {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    worker: JoinHandle<()>,
}

impl Upstream {
    fn start() -> Result<Upstream, Box<dyn Error>> {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").map_err(|e| e.to_string())?);
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or("the upstream is not on an IP address")?;
        let requests = Arc::new(AtomicUsize::new(0));
        let common = [
            header("Content-Type", "application/json")?,
            header("Set-Cookie", "session=s3cr3t; HttpOnly")?,
        ];
        let (srv, count) = (server.clone(), requests.clone());
        let worker = std::thread::spawn(move || {
            while let Ok(request) = srv.recv() {
                count.fetch_add(1, Ordering::SeqCst);
                let (status, cache_control, body) = route(request.url());
                let mut response = tiny_http::Response::from_string(body).with_status_code(status);
                for h in common.iter().cloned().chain(cache_control) {
                    response = response.with_header(h);
                }
                let _ = request.respond(response);
            }
        });
        Ok(Upstream {
            server,
            addr,
            requests,
            worker,
        })
    }

    /// Stops serving and closes the port; returns how many requests came in.
    fn stop(self) -> usize {
        self.server.unblock();
        let _ = self.worker.join();
        drop(self.server);
        self.requests.load(Ordering::SeqCst)
    }
}

fn header(name: &str, value: &str) -> Result<tiny_http::Header, String> {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .map_err(|()| format!("invalid header {name}: {value}"))
}

/// The upstream's answer to `url`: status, Cache-Control, JSON body.
fn route(url: &str) -> (u16, Option<tiny_http::Header>, String) {
    let cache_control = |v| header("Cache-Control", v).ok();
    let path = url.split('?').next().unwrap_or(url);
    if let Some(id) = path
        .strip_prefix("/movie/")
        .and_then(|s| s.parse::<u32>().ok())
    {
        let body = format!(
            r#"{{"id":{id},"title":"Movie {id}","runtime":{}}}"#,
            90 + id % 60
        );
        return (200, None, body);
    }
    match path {
        "/movie/popular" => (200, None, r#"{"page":1,"results":[603,604]}"#.into()),
        "/trending" => (
            200,
            cache_control("public, max-age=3600"),
            r#"{"results":[{"id":603,"score":0.98}]}"#.into(),
        ),
        "/account" => (
            200,
            cache_control("private, no-store"),
            r#"{"user":"demo","quota_left":998}"#.into(),
        ),
        _ => (404, None, r#"{"error":"not found"}"#.into()),
    }
}

/// One HTTP/1.1 GET (a real client would use its HTTP crate here).
fn http_get(addr: SocketAddr, path: &str) -> Result<Fetched, ApiError> {
    let unreachable = ApiError::Unreachable;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(unreachable)?;
    let sep = if path.contains('?') { '&' } else { '?' };
    write!(
        stream,
        "GET {path}{sep}api_key={API_KEY} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(unreachable)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Fetched, ApiError> {
    let malformed = || ApiError::Unreachable(io::Error::other("malformed HTTP response"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(malformed)?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(malformed)?;
    if status != 200 {
        return Err(ApiError::Status(status));
    }
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim(), v.trim()));
    Ok(Fetched::new(raw[split + 4..].to_vec())
        .headers(headers)
        .honor_cache_control())
}

/// The client: one cached GET per call.
struct Client<'a> {
    store: Store,
    upstream: SocketAddr,
    report: Report,
    out: &'a mut dyn Write,
}

impl Client<'_> {
    fn get(&mut self, path: &str, category: Category) -> io::Result<()> {
        let opts = PutOptions::new().category(category);
        let addr = self.upstream;
        let answer = self
            .store
            .get_or_fetch("moviedb", path, &opts, || http_get(addr, path));
        match answer {
            Ok(f) => {
                let (what, counter) = match f.status {
                    FetchStatus::Hit => ("hit", &mut self.report.hits),
                    FetchStatus::Fetched => ("fetched", &mut self.report.fetched),
                    FetchStatus::Stale => ("STALE", &mut self.report.stale),
                };
                *counter += 1;
                let why = f.error.map(|e| format!(" ({e})")).unwrap_or_default();
                let body = String::from_utf8_lossy(&f.data);
                writeln!(self.out, "  GET {path:<16} {what:<7} {body}{why}")
            }
            Err(FetchError::Upstream(e)) => {
                self.report.errors += 1;
                writeln!(self.out, "  GET {path:<16} error   {e}")
            }
            Err(FetchError::Store(e)) => Err(io::Error::other(e)),
        }
    }
}

/// Runs the whole scenario against a fresh upstream with the cache in
/// `cache_dir`, writing a log of every request to `out`.
pub fn run(cache_dir: &Path, out: &mut dyn Write) -> Result<Report, Box<dyn Error>> {
    let clock = Arc::new(ManualClock::new(blobcache::system_time_ms(
        std::time::SystemTime::now(),
    )));
    let opts = StoreOptions::default()
        .clock(clock.clone())
        .deny_secrets([API_KEY])
        .stale_if_error(Duration::from_secs(7 * 24 * 3600));
    let store = Store::open(cache_dir, opts)?;
    let upstream = Upstream::start()?;
    let mut client = Client {
        store: store.clone(),
        upstream: upstream.addr,
        report: Report::default(),
        out,
    };

    writeln!(client.out, "upstream up at http://{}", upstream.addr)?;
    client.get("/movie/603", Category::Metadata)?;
    client.get("/movie/604", Category::Metadata)?;
    client.get("/movie/603", Category::Metadata)?;
    client.get("/movie/popular", Category::List)?;
    client.get("/trending", Category::Trending)?;
    client.get("/trending", Category::Trending)?;
    client.get("/account", Category::Metadata)?;
    client.get("/account", Category::Metadata)?;

    clock.advance(Duration::from_secs(2 * 3600));
    writeln!(client.out, "two hours later (trending expired)")?;
    client.get("/trending", Category::Trending)?;
    client.get("/movie/603", Category::Metadata)?;

    let upstream_requests = upstream.stop();
    clock.advance(Duration::from_secs(25 * 3600));
    writeln!(client.out, "upstream down, a day later (lists expired)")?;
    client.get("/movie/603", Category::Metadata)?;
    client.get("/movie/popular", Category::List)?;
    client.get("/trending", Category::Trending)?;
    client.get("/account", Category::Metadata)?;
    client.get("/movie/605", Category::Metadata)?;

    let mut report = client.report;
    report.upstream_requests = upstream_requests;
    report.stats = store.stats()?;
    Ok(report)
}

#[allow(dead_code)] // the test that includes this file calls `run` only
fn main() -> Result<(), Box<dyn Error>> {
    let temp = tempfile::tempdir()?;
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| temp.path().to_path_buf(), Into::into);
    let mut stdout = io::stdout();
    let r = run(&dir, &mut stdout)?;
    println!(
        "answers: {} hits, {} fetched, {} stale, {} errors; upstream saw {} requests",
        r.hits, r.fetched, r.stale, r.errors, r.upstream_requests
    );
    let s = &r.stats;
    println!(
        "cache: {} entries ({} live, {} expired), {} hits, {} misses, {} stale hits, {} bytes on disk",
        s.entries,
        s.live,
        s.expired,
        s.hits,
        s.misses,
        s.stale_hits,
        s.disk_bytes()
    );
    Ok(())
}
