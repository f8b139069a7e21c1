//! The owner side of the socket: an acceptor thread and one serving thread
//! per guest connection (guests keep a handful of connections each).
//!
//! Serving threads hold the store only weakly: once the owner's last
//! `Store` handle is dropped they answer [`Response::Retry`], so a guest
//! asks the next owner instead of seeing an error.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::Duration;

use super::wire::{self, FrameError, Hello, Request, Response, Welcome, WireError};
use crate::store::{Inner, Store};

/// Connections served at once; beyond this a guest is refused (it then
/// reports the refusal rather than piling up threads in the owner).
const MAX_CONNECTIONS: usize = 256;

/// A stuck guest must not pin a serving thread forever on a write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

type Connections = Arc<Mutex<HashMap<u64, UnixStream>>>;

/// A running owner socket.
#[derive(Debug)]
pub(crate) struct Server {
    sock: PathBuf,
    closing: Arc<AtomicBool>,
    connections: Connections,
    /// A second handle on the listening socket, to shut it down.
    listener: UnixListener,
    /// Closed by the acceptor thread when it ends.
    acceptor_done: Mutex<mpsc::Receiver<()>>,
}

impl Server {
    /// Removes a stale socket left by a dead owner, binds `sock` (0600)
    /// and starts accepting guests for the store behind `store`.
    pub fn start(sock: &Path, store: Weak<Inner>) -> io::Result<Server> {
        remove_stale(sock)?;
        let listener = UnixListener::bind(sock)?;
        std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))?;
        let closing = Arc::new(AtomicBool::new(false));
        let connections: Connections = Arc::default();
        let handle = listener.try_clone()?;
        let (done_tx, acceptor_done) = mpsc::channel::<()>();
        {
            let (closing, connections) = (closing.clone(), connections.clone());
            std::thread::Builder::new()
                .name("blobcache-owner".into())
                .spawn(move || {
                    accept_loop(listener, store, closing, connections);
                    drop(done_tx);
                })?;
        }
        Ok(Server {
            sock: sock.to_path_buf(),
            closing,
            connections,
            listener: handle,
            acceptor_done: Mutex::new(acceptor_done),
        })
    }

    /// Stops serving: later requests are answered `Retry`, open
    /// connections are shut down, and the socket file is removed.
    pub fn stop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        // Wake the acceptor out of `accept` so it sees the flag: shutting
        // the listening socket down does it on Linux; connecting works
        // elsewhere, unless the socket file is already gone. The acceptor
        // holds the store only weakly, so if it still does not end it is
        // left to finish on its own rather than hanging the close.
        let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Both);
        drop(UnixStream::connect(&self.sock));
        let ended = self.acceptor_done.lock().map(|rx| {
            rx.recv_timeout(Duration::from_secs(2)) == Err(mpsc::RecvTimeoutError::Disconnected)
        });
        if !matches!(ended, Ok(true)) {
            log::warn!("the owner socket's acceptor did not stop; leaving it");
        }
        if let Ok(mut conns) = self.connections.lock() {
            for (_, c) in conns.drain() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        if let Err(e) = std::fs::remove_file(&self.sock)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("could not remove {}: {e}", self.sock.display());
        }
    }
}

/// Deletes whatever sits at the socket path: only the lock holder binds
/// there, so anything present was left by a dead owner. A directory (or
/// anything else that is not a socket or a plain file) is refused.
fn remove_stale(sock: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(sock) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_socket() || m.is_file() || m.is_symlink() => {
            std::fs::remove_file(sock)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "something other than a socket is in the way; remove it",
        )),
    }
}

fn accept_loop(
    listener: UnixListener,
    store: Weak<Inner>,
    closing: Arc<AtomicBool>,
    connections: Connections,
) {
    let next_id = AtomicU64::new(0);
    for conn in listener.incoming() {
        if closing.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                log::warn!("owner socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Err(why) = peer_allowed(&stream) {
            log::warn!("owner socket: refused a connection: {why}");
            refuse(&mut stream, why);
            continue;
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let admitted = match (connections.lock(), stream.try_clone()) {
            (Ok(mut conns), Ok(clone)) if conns.len() < MAX_CONNECTIONS => {
                conns.insert(id, clone);
                true
            }
            _ => false,
        };
        if !admitted {
            refuse(
                &mut stream,
                "the owner is serving too many connections".into(),
            );
            continue;
        }
        let (store, closing, conns) = (store.clone(), closing.clone(), connections.clone());
        let spawned = std::thread::Builder::new()
            .name("blobcache-serve".into())
            .spawn(move || {
                serve_connection(stream, &store, &closing);
                if let Ok(mut c) = conns.lock() {
                    c.remove(&id);
                }
            });
        if let Err(e) = spawned {
            log::warn!("owner socket: cannot start a serving thread: {e}");
            if let Ok(mut c) = connections.lock() {
                c.remove(&id);
            }
        }
    }
}

fn refuse(stream: &mut UnixStream, why: String) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = wire::write_frame(stream, &Welcome::Refused { why });
}

/// Only processes of the owner's own user may use its cache (the 0700
/// directory already keeps others out; this holds even if its mode is
/// loosened).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = rustix::net::sockopt::socket_peercred(stream)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let me = rustix::process::geteuid();
    if cred.uid == me {
        return Ok(());
    }
    Err(format!(
        "process {} runs as uid {}, the cache belongs to uid {}; \
         connections from other users are refused",
        cred.pid.as_raw_nonzero(),
        cred.uid.as_raw(),
        me.as_raw()
    ))
}

/// Elsewhere the socket's 0600 mode inside the 0700 cache directory is the
/// guard.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_allowed(_stream: &UnixStream) -> Result<(), String> {
    Ok(())
}

fn serve_connection(mut stream: UnixStream, store: &Weak<Inner>, closing: &AtomicBool) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(hello) = wire::read_frame::<Hello>(&mut stream) else {
        return;
    };
    let welcome = if hello.magic != wire::MAGIC {
        Welcome::Refused {
            why: "not a blobcache peer".into(),
        }
    } else if hello.version != wire::WIRE_VERSION {
        Welcome::Mismatch {
            version: wire::WIRE_VERSION,
        }
    } else {
        Welcome::Ok {
            pid: std::process::id(),
        }
    };
    let admitted = matches!(welcome, Welcome::Ok { .. });
    if wire::write_frame(&mut stream, &welcome).is_err() || !admitted {
        return;
    }
    loop {
        let req: Request = match wire::read_frame(&mut stream) {
            Ok(r) => r,
            Err(FrameError::Io(_)) => return,
            Err(FrameError::Invalid(why)) => {
                let err = WireError::Other(format!("the owner could not read a request: {why}"));
                let _ = wire::write_frame(&mut stream, &Response::Error(err));
                return;
            }
        };
        let resp = answer(store, closing, req);
        if wire::write_frame(&mut stream, &resp).is_err() {
            return;
        }
    }
}

fn answer(store: &Weak<Inner>, closing: &AtomicBool, req: Request) -> Response {
    if closing.load(Ordering::SeqCst) {
        return Response::Retry;
    }
    let Some(inner) = store.upgrade() else {
        return Response::Retry;
    };
    let store = Store::from_inner(inner);
    match catch_unwind(AssertUnwindSafe(|| super::serve(&store, req))) {
        Ok(resp) => resp,
        Err(_) => Response::Error(WireError::Other(
            "the owner hit an internal error (a bug: please report it)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greet(hello: &Hello) -> Welcome {
        let (mut guest, owner) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            serve_connection(owner, &Weak::new(), &AtomicBool::new(false));
        });
        wire::write_frame(&mut guest, hello).unwrap();
        let w = wire::read_frame(&mut guest).unwrap();
        drop(guest);
        t.join().unwrap();
        w
    }

    #[test]
    fn the_handshake_checks_magic_and_version() {
        assert!(matches!(greet(&Hello::ours()), Welcome::Ok { .. }));
        let newer = Hello {
            version: wire::WIRE_VERSION + 1,
            ..Hello::ours()
        };
        assert_eq!(
            greet(&newer),
            Welcome::Mismatch {
                version: wire::WIRE_VERSION
            }
        );
        let foreign = Hello {
            magic: "http".into(),
            ..Hello::ours()
        };
        assert!(matches!(greet(&foreign), Welcome::Refused { .. }));
    }

    #[test]
    fn a_store_that_is_gone_answers_retry() {
        let (mut guest, owner) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            serve_connection(owner, &Weak::new(), &AtomicBool::new(false));
        });
        wire::write_frame(&mut guest, &Hello::ours()).unwrap();
        let _: Welcome = wire::read_frame(&mut guest).unwrap();
        wire::write_frame(&mut guest, &Request::State).unwrap();
        let r: Response = wire::read_frame(&mut guest).unwrap();
        assert_eq!(r, Response::Retry);
        drop(guest);
        t.join().unwrap();
    }
}
