//! The northbounds: the UNS JSON publisher with the MES events ([`uns`]), the Sparkplug B edge
//! node ([`sparkplug`]), and the commands both take back ([`commands`]). This module holds what
//! every publisher shares, whatever its payload format: the transport (plain TCP, or TLS with
//! the configured CA and client certificate), when the reconnect backoff starts over, the stop
//! signal, and reading committed records in order from a northbound's cursor with a small
//! read-ahead.

pub mod commands;
pub mod safety;
pub mod sparkplug;
pub mod uns;

use std::collections::VecDeque;
use std::time::Duration;

use edge_config::{BrokerUrl, TlsFiles};
use edge_driver::Backoff;
use edge_model::Batch;
use edge_store::{RecordId, Store, StoreError};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::watch;

/// Records read from the store in one go when the reader runs dry.
pub const READ_CHUNK: usize = 64;
/// A connection that stayed up this long resets the reconnect backoff.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{0} uses TLS but no ca_file is configured")]
    NoCaFile(String),
}

fn read_file(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::File {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// The rumqttc transport for a broker URL: TCP for `mqtt://`, TLS for `mqtts://` with the CA
/// bundle and the optional client certificate read from disk now.
pub fn transport(url: &BrokerUrl, tls: Option<&TlsFiles>) -> Result<Transport, TransportError> {
    if !url.tls {
        return Ok(Transport::Tcp);
    }
    let Some(tls) = tls else {
        return Err(TransportError::NoCaFile(url.to_string()));
    };
    let ca = read_file("CA file", &tls.ca_file)?;
    let client_auth = match &tls.client_cert {
        Some((cert, key)) => Some((
            read_file("client certificate", cert)?,
            read_file("client key", key)?,
        )),
        None => None,
    };
    Ok(Transport::Tls(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}

/// Resolves once `shutdown` turns true (or its sender is gone), holding no borrow after.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// How long to wait before reconnecting to the broker after a connection that lasted
/// `lasted`: one that stayed up [`STABLE_CONNECTION`] starts the backoff over.
pub fn reconnect_wait(backoff: &mut Backoff, lasted: Duration) -> Duration {
    if lasted >= STABLE_CONNECTION {
        backoff.reset();
    }
    backoff.next_wait()
}

/// Reads one northbound's records in order from a position, a chunk at a time.
#[derive(Debug)]
pub struct StoreReader {
    /// The next record id to ask the store for.
    next_to_read: RecordId,
    /// Records read but not yet taken (at most one chunk).
    ahead: VecDeque<(RecordId, Batch)>,
}

impl StoreReader {
    pub fn new(from: RecordId) -> StoreReader {
        StoreReader {
            next_to_read: from,
            ahead: VecDeque::new(),
        }
    }

    /// The id of the next record [`StoreReader::next`] returns, or the first id not yet read.
    pub fn position(&self) -> RecordId {
        self.ahead.front().map_or(self.next_to_read, |(id, _)| *id)
    }

    /// The next committed record, or `None` when every record on disk was taken.
    pub fn next(
        &mut self,
        store: &Store,
        northbound: &str,
    ) -> Result<Option<(RecordId, Batch)>, StoreError> {
        if self.ahead.is_empty() {
            if self.next_to_read >= store.next_id() {
                return Ok(None);
            }
            let records = store.read(northbound, self.next_to_read, READ_CHUNK)?;
            let Some((last, _)) = records.last() else {
                return Ok(None);
            };
            self.next_to_read = last + 1;
            self.ahead.extend(records);
        }
        Ok(self.ahead.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_connections_keep_doubling_the_backoff() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..3 {
            reconnect_wait(&mut b, STABLE_CONNECTION / 2);
        }
        assert_eq!(b.step(), Duration::from_millis(800));
    }

    #[test]
    fn a_stable_connection_starts_the_backoff_over() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..5 {
            reconnect_wait(&mut b, Duration::ZERO);
        }
        let w = reconnect_wait(&mut b, STABLE_CONNECTION);
        assert!(w <= Duration::from_millis(100), "{w:?}");
    }
}
