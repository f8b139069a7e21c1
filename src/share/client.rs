//! The guest side of the owner socket: a small pool of connections, each
//! carrying one request at a time.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::wire::{self, FrameError, Hello, Request, Response, Welcome};
use crate::error::Error;

/// Connections kept open for reuse; more threads than this still work,
/// they connect (and close) their own.
const POOL: usize = 8;

/// Why a request did not get an answer.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The owner is gone (closed, killed, socket removed): take over or
    /// find the next owner, then ask again.
    Gone,
    /// The owner did not answer within the timeout.
    Timeout,
    /// Anything else: reported to the caller as it is.
    Fatal(Error),
}

/// A guest's link to the owner.
#[derive(Debug)]
pub(crate) struct Client {
    root: PathBuf,
    sock: PathBuf,
    timeout: Duration,
    pid: u32,
    pool: Mutex<Vec<UnixStream>>,
}

impl Client {
    /// Connects to the owner serving `sock` (one connection, handshake
    /// included, so a mismatched owner is reported at once).
    pub fn connect(root: &Path, sock: &Path, timeout: Duration) -> Result<Client, CallError> {
        let mut client = Client {
            root: root.to_path_buf(),
            sock: sock.to_path_buf(),
            timeout,
            pid: 0,
            pool: Mutex::new(Vec::new()),
        };
        let (stream, pid) = client.open_stream()?;
        client.pid = pid;
        client.put_back(stream);
        Ok(client)
    }

    /// The owner's process id.
    pub fn owner_pid(&self) -> u32 {
        self.pid
    }

    /// Sends `req` and waits for its answer.
    pub fn call(&self, req: &Request) -> Result<Response, CallError> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        let mut stream = match pooled {
            Some(s) => s,
            None => self.open_stream()?.0,
        };
        wire::write_frame(&mut stream, req).map_err(|e| self.io_error(e))?;
        let resp: Response = wire::read_frame(&mut stream).map_err(|e| self.frame_error(e))?;
        self.put_back(stream);
        Ok(resp)
    }

    fn put_back(&self, stream: UnixStream) {
        if let Ok(mut p) = self.pool.lock()
            && p.len() < POOL
        {
            p.push(stream);
        }
    }

    /// Opens and greets one connection; returns it with the owner's pid.
    fn open_stream(&self) -> Result<(UnixStream, u32), CallError> {
        let mut stream =
            UnixStream::connect(&self.sock).map_err(|e| connect_error(&self.sock, e))?;
        let timeouts = stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)));
        timeouts.map_err(|e| CallError::Fatal(Error::io("configure", &self.sock, e)))?;
        wire::write_frame(&mut stream, &Hello::ours()).map_err(|e| self.io_error(e))?;
        match wire::read_frame(&mut stream).map_err(|e| self.frame_error(e))? {
            Welcome::Ok { pid } => Ok((stream, pid)),
            Welcome::Mismatch { version } => Err(self.protocol(format!(
                "the owner speaks protocol version {version}, this process speaks {}",
                wire::WIRE_VERSION
            ))),
            Welcome::Refused { why } => Err(self.protocol(format!("the owner refused: {why}"))),
        }
    }

    fn io_error(&self, e: io::Error) -> CallError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CallError::Timeout,
            _ => CallError::Gone,
        }
    }

    fn frame_error(&self, e: FrameError) -> CallError {
        match e {
            FrameError::Io(e) => self.io_error(e),
            FrameError::Invalid(why) => self.protocol(format!("unreadable answer: {why}")),
        }
    }

    fn protocol(&self, detail: String) -> CallError {
        CallError::Fatal(Error::Protocol {
            path: self.root.clone(),
            detail,
        })
    }

    /// The error a caller sees when the owner did not answer in time.
    pub fn timeout_error(&self) -> Error {
        Error::OwnerTimeout {
            path: self.root.clone(),
            pid: self.pid,
            after: self.timeout,
        }
    }
}

/// Connection failures: no owner listening is `Gone` (look again); a
/// socket that cannot exist here (path too long, no Unix sockets) is fatal
/// for sharing and reported as such.
fn connect_error(sock: &Path, e: io::Error) -> CallError {
    match e.kind() {
        io::ErrorKind::NotFound
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => CallError::Gone,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CallError::Timeout,
        _ => CallError::Fatal(Error::io("connect to", sock, e)),
    }
}
