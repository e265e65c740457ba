//! A libpq connection string into where to connect and as whom.
//!
//! Parsing is tokio-postgres's (`Config::from_str`, both the `key=value` and the URL form), so a string that
//! works for Strata's other connections works here. What this client cannot honour is refused rather than
//! ignored: `sslmode=require` (it has no TLS), `channel_binding=require` (which needs TLS). `prefer` is
//! treated as `disable`, as libpq does when the server has no TLS. There is no `PGPASSWORD` or `.pgpass`
//! lookup: the password, if any, is in the string.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, Host, SslMode};

use crate::error::ReplicationError;

/// How long opening the socket, the startup exchange and authentication may take together, unless the
/// connection string's `connect_timeout` says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a socket can be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SocketTarget {
    /// The socket file `{dir}/.s.PGSQL.{port}`.
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
    },
}

impl std::fmt::Display for SocketTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketTarget::Unix(path) => write!(f, "{}", path.display()),
            SocketTarget::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            SocketTarget::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A parsed connection string. Not `Debug`: it holds the password.
pub(crate) struct ConnectTarget {
    /// Tried in order; the first socket that opens is used.
    pub sockets: Vec<SocketTarget>,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub dbname: Option<String>,
    pub application_name: Option<String>,
    pub options: Option<String>,
    pub connect_timeout: Duration,
}

impl ConnectTarget {
    pub fn parse(conninfo: &str) -> Result<ConnectTarget, ReplicationError> {
        // tokio-postgres's messages name the option, not its value, so no password ends up in the error.
        let config = tokio_postgres::Config::from_str(conninfo)
            .map_err(|e| ReplicationError::Config(e.to_string()))?;
        match config.get_ssl_mode() {
            SslMode::Disable | SslMode::Prefer => {}
            _ => {
                return Err(ReplicationError::Config(
                    "sslmode=require: the replication client has no TLS (HINT: connect over a unix socket or \
                     a trusted network with sslmode=disable or prefer)"
                        .into(),
                ))
            }
        }
        if config.get_channel_binding() == ChannelBinding::Require {
            return Err(ReplicationError::Config(
                "channel_binding=require needs TLS, which the replication client does not have"
                    .into(),
            ));
        }
        let user = config
            .get_user()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ReplicationError::Config("no user= given".into()))?
            .to_string();
        let ports = config.get_ports();
        let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let sockets: Vec<SocketTarget> = if !config.get_hostaddrs().is_empty() {
            config
                .get_hostaddrs()
                .iter()
                .enumerate()
                .map(|(i, addr)| SocketTarget::Tcp {
                    host: addr.to_string(),
                    port: port(i),
                })
                .collect()
        } else {
            config
                .get_hosts()
                .iter()
                .enumerate()
                .map(|(i, host)| match host {
                    Host::Tcp(name) => SocketTarget::Tcp {
                        host: name.clone(),
                        port: port(i),
                    },
                    Host::Unix(dir) => {
                        SocketTarget::Unix(dir.join(format!(".s.PGSQL.{}", port(i))))
                    }
                })
                .collect()
        };
        if sockets.is_empty() {
            return Err(ReplicationError::Config(
                "no host= or hostaddr= given (a unix socket directory or a host name)".into(),
            ));
        }
        Ok(ConnectTarget {
            sockets,
            user,
            password: config.get_password().map(<[u8]>::to_vec),
            dbname: config.get_dbname().map(str::to_string),
            application_name: config.get_application_name().map(str::to_string),
            options: config.get_options().map(str::to_string),
            connect_timeout: config
                .get_connect_timeout()
                .copied()
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_sockets_and_tcp() {
        let t = ConnectTarget::parse("host=/tmp/x port=5433 user=postgres").unwrap();
        assert_eq!(
            t.sockets,
            vec![SocketTarget::Unix("/tmp/x/.s.PGSQL.5433".into())]
        );
        assert_eq!(t.user, "postgres");
        assert_eq!(t.password, None);
        assert_eq!(t.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        let t = ConnectTarget::parse("host=127.0.0.1 port=5433 user=strata password=secret dbname=postgres connect_timeout=3")
            .unwrap();
        assert_eq!(
            t.sockets,
            vec![SocketTarget::Tcp {
                host: "127.0.0.1".into(),
                port: 5433
            }]
        );
        assert_eq!(t.password.as_deref(), Some(&b"secret"[..]));
        assert_eq!(t.dbname.as_deref(), Some("postgres"));
        assert_eq!(t.connect_timeout, Duration::from_secs(3));
        let t = ConnectTarget::parse("host=localhost user=u").unwrap();
        assert_eq!(
            t.sockets,
            vec![SocketTarget::Tcp {
                host: "localhost".into(),
                port: 5432
            }]
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        for bad in [
            "host=127.0.0.1 user=u sslmode=require",
            "host=127.0.0.1 user=u channel_binding=require",
            "host=127.0.0.1",
            "user=u",
            "host=127.0.0.1 user=u bogus=1",
        ] {
            let e = ConnectTarget::parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted"));
            assert!(
                matches!(e, ReplicationError::Config(_)) && e.is_permanent(),
                "{bad}: {e}"
            );
        }
        let e = ConnectTarget::parse("host=127.0.0.1 user=u sslmode=require")
            .err()
            .unwrap();
        assert!(e.to_string().contains("sslmode=require"), "{e}");
        assert!(ConnectTarget::parse("host=127.0.0.1 user=u sslmode=prefer").is_ok());
        assert!(ConnectTarget::parse("host=127.0.0.1 user=u sslmode=disable").is_ok());
    }
}
