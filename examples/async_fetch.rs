//! An async API client (tokio) that caches its upstream with
//! `Store::get_or_fetch_async` (feature `async`).
//!
//! The example serves its own upstream: a tiny HTTP/1.1 server on a
//! `std::net::TcpListener` in a thread, which answers each request after a
//! short delay, as a real API would. Then, on a tokio runtime:
//!
//! 1. ten tasks ask for the same movie at once while another task asks for
//!    a second one: the upstream sees one request per movie, and every task
//!    gets the same bytes;
//! 2. asked again, both movies are hits;
//! 3. the upstream goes down and the entries expire: both are served stale,
//!    and a movie never fetched fails with the client's own error.
//!
//! Time is simulated with a [`ManualClock`]. Run it with
//! `cargo run --example async_fetch --features async [CACHE_DIR]`.

use std::error::Error;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use blobcache::{
    Category, FetchError, FetchStatus, Fetched, ManualClock, PutOptions, Stats, Store, StoreOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a run did, for printing and for the test that runs this example.
#[derive(Debug, Default)]
pub struct Report {
    /// Answers served from live cache entries.
    pub hits: usize,
    /// Answers fetched from the upstream (or shared with the task that did).
    pub fetched: usize,
    /// Expired entries served because the upstream was down.
    pub stale: usize,
    /// Requests that failed with nothing cached to fall back on.
    pub errors: usize,
    /// Distinct bodies the ten concurrent tasks got for the first movie.
    pub distinct_bodies: usize,
    /// Requests the upstream actually received.
    pub upstream_requests: usize,
    /// The cache's own counters at the end.
    pub stats: Stats,
}

/// The client's error type; `get_or_fetch_async` hands it back unchanged.
#[derive(Debug)]
pub struct Unreachable(io::Error);

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream unreachable: {}", self.0)
    }
}

impl Error for Unreachable {}

/// The upstream: one thread accepting, one thread per request.
struct Upstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
}

impl Upstream {
    fn start() -> io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let (count, stop) = (requests.clone(), stopping.clone());
        let acceptor = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = answer(conn);
                });
            }
        });
        Ok(Upstream {
            addr,
            requests,
            stopping,
            acceptor,
        })
    }

    /// Stops accepting and closes the port; returns how many requests came in.
    fn stop(self) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which sees the flag and drops the listener.
        let _ = TcpStream::connect(self.addr);
        let _ = self.acceptor.join();
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request and answers it, after the upstream's think time.
fn answer(conn: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let body = match path.strip_prefix("/movie/") {
        Some(id) => format!(r#"{{"id":{id},"title":"Movie {id}"}}"#),
        None => r#"{"error":"not found"}"#.to_string(),
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: max-age=3600\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// One HTTP/1.1 GET on a tokio socket (a real client would use its HTTP
/// crate here).
async fn http_get(addr: SocketAddr, path: &str) -> Result<Fetched, Unreachable> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(Unreachable)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(Unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(Unreachable)?;
    parse_response(&raw).ok_or_else(|| Unreachable(io::Error::other("malformed HTTP response")))
}

fn parse_response(raw: &[u8]) -> Option<Fetched> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim(), v.trim()));
    let body = raw.get(split + 4..)?.to_vec();
    Some(Fetched::new(body).headers(headers).honor_cache_control())
}

/// One cached GET, as a task runs it.
async fn get(
    store: Store,
    addr: SocketAddr,
    path: String,
) -> Result<(FetchStatus, Vec<u8>), FetchError<Unreachable>> {
    let opts = PutOptions::new().category(Category::Metadata);
    let answer = store
        .get_or_fetch_async("moviedb", &path, &opts, http_get(addr, &path))
        .await?;
    Ok((answer.status, answer.data))
}

/// Counts one answer in the report and logs it.
fn record(
    report: &mut Report,
    out: &mut dyn Write,
    path: &str,
    answer: Result<(FetchStatus, Vec<u8>), FetchError<Unreachable>>,
) -> Result<(), Box<dyn Error>> {
    let (status, body) = match answer {
        Ok(a) => a,
        Err(FetchError::Upstream(e)) => {
            report.errors += 1;
            writeln!(out, "  GET {path:<12} error   {e}")?;
            return Ok(());
        }
        Err(FetchError::Store(e)) => return Err(e.into()),
    };
    let (what, counter) = match status {
        FetchStatus::Hit => ("hit", &mut report.hits),
        FetchStatus::Fetched => ("fetched", &mut report.fetched),
        FetchStatus::Stale => ("STALE", &mut report.stale),
    };
    *counter += 1;
    writeln!(
        out,
        "  GET {path:<12} {what:<7} {}",
        String::from_utf8_lossy(&body)
    )?;
    Ok(())
}

/// Runs the whole scenario against a fresh upstream with the cache in
/// `cache_dir`, writing a log of every request to `out`.
pub fn run(cache_dir: &Path, out: &mut dyn Write) -> Result<Report, Box<dyn Error>> {
    let clock = Arc::new(ManualClock::new(blobcache::system_time_ms(
        std::time::SystemTime::now(),
    )));
    let store = Store::open(cache_dir, StoreOptions::default().clock(clock.clone()))?;
    let upstream = Upstream::start()?;
    let addr = upstream.addr;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = Report::default();

    writeln!(
        out,
        "upstream up at http://{addr}; 10 tasks ask for one movie"
    )?;
    let first = runtime.block_on(async {
        let mut tasks = Vec::new();
        for path in std::iter::repeat_n("/movie/603", 10).chain(["/movie/604"]) {
            let job = get(store.clone(), addr, path.to_string());
            tasks.push((path, tokio::spawn(job)));
        }
        let mut answers = Vec::new();
        for (path, task) in tasks {
            answers.push((path, task.await?));
        }
        Ok::<_, tokio::task::JoinError>(answers)
    })?;
    let mut bodies = std::collections::HashSet::new();
    for (path, answer) in first {
        if let (Ok((_, body)), "/movie/603") = (&answer, path) {
            bodies.insert(body.clone());
        }
        record(&mut report, out, path, answer)?;
    }
    report.distinct_bodies = bodies.len();

    writeln!(out, "asked again")?;
    for path in ["/movie/603", "/movie/604"] {
        let answer = runtime.block_on(get(store.clone(), addr, path.to_string()));
        record(&mut report, out, path, answer)?;
    }

    report.upstream_requests = upstream.stop();
    clock.advance(Duration::from_secs(2 * 3600));
    writeln!(out, "upstream down, two hours later (entries expired)")?;
    for path in ["/movie/603", "/movie/604", "/movie/605"] {
        let answer = runtime.block_on(get(store.clone(), addr, path.to_string()));
        record(&mut report, out, path, answer)?;
    }
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
    Ok(())
}
