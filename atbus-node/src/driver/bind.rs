//! Binding listen addresses before the I/O task starts.

use std::io;
use std::path::{Path, PathBuf};

use crate::address::Address;
use crate::node::NodeError;

/// A listen address, bound.
pub(crate) struct Bound {
    pub local: Address,
    pub(super) socket: BoundSocket,
}

pub(super) enum BoundSocket {
    Udp(std::net::UdpSocket),
    UnixDatagram(std::os::unix::net::UnixDatagram, PathBuf),
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener, PathBuf),
    /// A shm listener ring and its name.
    Shm(atbus_shm::Reader, String),
}

/// Binds every listen address with the standard library (so that errors such as
/// "address in use" come back from `Node::start`, before any task runs).
pub(crate) fn bind_all(listen: &[Address]) -> Result<Vec<Bound>, NodeError> {
    let mut bound = Vec::new();
    for address in listen {
        let fail = |source: io::Error| NodeError::Listen {
            address: address.clone(),
            source,
        };
        let b = match address {
            Address::Udp(addr) => {
                let s = std::net::UdpSocket::bind(addr).map_err(fail)?;
                s.set_nonblocking(true).map_err(fail)?;
                Bound {
                    local: Address::Udp(s.local_addr().map_err(fail)?),
                    socket: BoundSocket::Udp(s),
                }
            }
            Address::Tcp(addr) => {
                let s = std::net::TcpListener::bind(addr).map_err(fail)?;
                s.set_nonblocking(true).map_err(fail)?;
                Bound {
                    local: Address::Tcp(s.local_addr().map_err(fail)?),
                    socket: BoundSocket::Tcp(s),
                }
            }
            Address::Unix(path) => {
                let s = bind_unix(
                    path,
                    |p| std::os::unix::net::UnixListener::bind(p),
                    |p| std::os::unix::net::UnixStream::connect(p).map(drop),
                )
                .map_err(fail)?;
                s.set_nonblocking(true).map_err(fail)?;
                Bound {
                    local: address.clone(),
                    socket: BoundSocket::Unix(s, path.clone()),
                }
            }
            Address::UnixDatagram(path) => {
                let s = bind_unix(
                    path,
                    |p| std::os::unix::net::UnixDatagram::bind(p),
                    |p| std::os::unix::net::UnixDatagram::unbound()?.connect(p),
                )
                .map_err(fail)?;
                s.set_nonblocking(true).map_err(fail)?;
                crate::udp::grow_buffers(&s, crate::udp::SOCKET_BUFFER);
                Bound {
                    local: address.clone(),
                    socket: BoundSocket::UnixDatagram(s, path.clone()),
                }
            }
            Address::Shm(name) => Bound {
                local: address.clone(),
                socket: BoundSocket::Shm(crate::shm::bind(name).map_err(fail)?, name.clone()),
            },
        };
        bound.push(b);
    }
    Ok(bound)
}

/// Binds a Unix socket path; a socket file left behind by a process that is gone
/// (nothing accepts a connection on it) is removed and the bind retried. A live
/// socket answers "address in use".
fn bind_unix<S>(
    path: &Path,
    bind: impl Fn(&Path) -> io::Result<S>,
    probe: impl Fn(&Path) -> io::Result<()>,
) -> io::Result<S> {
    match bind(path) {
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => match probe(path) {
            Err(probe_err) if probe_err.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)?;
                bind(path)
            }
            _ => Err(err),
        },
        result => result,
    }
}
