//! Transport addresses as URLs: `udp://127.0.0.1:7000`, `udp://[::1]:7000`,
//! `tcp://host:port`, `unix:///path` (stream), `unixgram:///path`, `shm://name`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;

/// Where a node listens or what it connects to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// UDP over IPv4 or IPv6.
    Udp(SocketAddr),
    /// TCP over IPv4 or IPv6.
    Tcp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// A Unix datagram socket at this path.
    UnixDatagram(PathBuf),
    /// A shared-memory channel (not supported by the adapters yet).
    Shm(String),
}

/// Why an address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No `scheme://`.
    #[error("{0:?} is not an address URL: expected scheme://..., e.g. udp://127.0.0.1:7000")]
    MissingScheme(String),
    /// A scheme this version does not know.
    #[error("unknown scheme {scheme:?} in {address:?}: expected udp, tcp, unix, unixgram or shm")]
    UnknownScheme {
        /// The scheme given.
        scheme: String,
        /// The whole address.
        address: String,
    },
    /// `host:port` that neither parses nor resolves.
    #[error("invalid host:port {0:?}: {1}")]
    InvalidHostPort(String, String),
    /// A Unix path that is empty.
    #[error("{0:?} has an empty path")]
    EmptyPath(String),
}

impl Address {
    /// The URL scheme.
    pub fn scheme(&self) -> &'static str {
        match self {
            Address::Udp(_) => "udp",
            Address::Tcp(_) => "tcp",
            Address::Unix(_) => "unix",
            Address::UnixDatagram(_) => "unixgram",
            Address::Shm(_) => "shm",
        }
    }

    /// Whether the transport carries datagrams (UDP, Unix datagram).
    pub fn is_datagram(&self) -> bool {
        matches!(self, Address::Udp(_) | Address::UnixDatagram(_))
    }
}

fn resolve(host_port: &str, whole: &str) -> Result<SocketAddr, AddressError> {
    if let Ok(addr) = host_port.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let invalid = |why: String| AddressError::InvalidHostPort(whole.to_owned(), why);
    let mut addrs = host_port
        .to_socket_addrs()
        .map_err(|err| invalid(err.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| invalid("the name resolves to no address".into()))
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| AddressError::MissingScheme(s.to_owned()))?;
        let path = |rest: &str| {
            if rest.is_empty() {
                Err(AddressError::EmptyPath(s.to_owned()))
            } else {
                Ok(PathBuf::from(rest))
            }
        };
        match scheme.to_ascii_lowercase().as_str() {
            "udp" => Ok(Address::Udp(resolve(rest, s)?)),
            "tcp" => Ok(Address::Tcp(resolve(rest, s)?)),
            "unix" => Ok(Address::Unix(path(rest)?)),
            "unixgram" => Ok(Address::UnixDatagram(path(rest)?)),
            "shm" => {
                if rest.is_empty() {
                    Err(AddressError::EmptyPath(s.to_owned()))
                } else {
                    Ok(Address::Shm(rest.to_owned()))
                }
            }
            _ => Err(AddressError::UnknownScheme {
                scheme: scheme.to_owned(),
                address: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Udp(a) => write!(f, "udp://{a}"),
            Address::Tcp(a) => write!(f, "tcp://{a}"),
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::UnixDatagram(p) => write!(f, "unixgram://{}", p.display()),
            Address::Shm(name) => write!(f, "shm://{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scheme_parses_and_prints_back() {
        for url in [
            "udp://127.0.0.1:7000",
            "udp://[::1]:7000",
            "tcp://127.0.0.1:80",
            "unix:///tmp/a.sock",
            "unixgram:///tmp/b.sock",
            "shm://ring",
        ] {
            let address: Address = url.parse().unwrap();
            assert_eq!(address.to_string(), url);
        }
        assert_eq!(
            "tcp://localhost:9".parse::<Address>().unwrap().scheme(),
            "tcp"
        );
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        assert!(matches!(
            "127.0.0.1:7000".parse::<Address>(),
            Err(AddressError::MissingScheme(_))
        ));
        assert!(matches!(
            "http://x:1".parse::<Address>(),
            Err(AddressError::UnknownScheme { .. })
        ));
        assert!(matches!(
            "udp://127.0.0.1".parse::<Address>(),
            Err(AddressError::InvalidHostPort(..))
        ));
        assert!(matches!(
            "unix://".parse::<Address>(),
            Err(AddressError::EmptyPath(_))
        ));
    }
}
