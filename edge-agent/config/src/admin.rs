//! `[admin]`: the local HTTP endpoint for health checks and metrics (`/live`, `/ready`,
//! `/metrics`). Off unless configured; a loopback address is the default when it is on, so a
//! gateway never exposes it to the plant network by accident.

use std::net::SocketAddr;

use crate::error::Diagnostics;
use crate::reader::{TableReader, Val};

/// `[admin]` (optional as a whole; without it no admin endpoint listens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// `listen` (default `127.0.0.1:9900`): the address and port of the admin endpoint, as
    /// `ip:port`. Port 0 takes any free port (the chosen one is logged). An address other
    /// than loopback exposes health and metrics to the network: put it behind a firewall.
    pub listen: SocketAddr,
}

impl AdminSettings {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:9900";
}

pub(crate) fn read_admin(
    cx: &mut Diagnostics<'_>,
    root: &mut TableReader<'_, '_>,
) -> Option<Option<AdminSettings>> {
    let mut t = match root.table(cx, "admin") {
        Val::Present(t, _) => t,
        Val::Absent => return Some(None),
        Val::Invalid => return None,
    };
    let listen = t
        .text(cx, "listen")
        .and_then(|s, span| match s.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                cx.error(
                    span,
                    format!("`listen` must be ip:port, found `{s}`"),
                    Some(
                        "listen = \"127.0.0.1:9900\" (or \"0.0.0.0:9900\" for every interface)"
                            .to_owned(),
                    ),
                );
                None
            }
        });
    t.finish(cx);
    let default: SocketAddr = match AdminSettings::DEFAULT_LISTEN.parse() {
        Ok(a) => a,
        Err(_) => return None,
    };
    Some(Some(AdminSettings {
        listen: listen.or(default)?,
    }))
}
