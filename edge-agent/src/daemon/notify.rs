//! The systemd notification protocol (sd_notify): one datagram per state change to the unix
//! socket named in `NOTIFY_SOCKET`, and the watchdog interval from `WATCHDOG_USEC`. Outside
//! systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go: a path, or a Linux abstract socket (`@name` in `NOTIFY_SOCKET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

/// The service manager's notification socket, when the agent runs under one.
#[derive(Debug)]
pub struct Notifier {
    addr: Option<NotifyAddr>,
    socket: Option<UnixDatagram>,
}

/// Reads a `NOTIFY_SOCKET` value; `None` for an empty or unusable one.
pub fn parse_notify_socket(value: &str) -> Option<NotifyAddr> {
    if let Some(name) = value.strip_prefix('@') {
        (!name.is_empty()).then(|| NotifyAddr::Abstract(name.as_bytes().to_vec()))
    } else if value.starts_with('/') {
        Some(NotifyAddr::Path(PathBuf::from(value)))
    } else {
        None
    }
}

/// The watchdog interval systemd asks for, from `WATCHDOG_USEC` and `WATCHDOG_PID` (when the
/// latter is set it must name this process).
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

impl Notifier {
    /// From the process environment.
    pub fn from_env() -> Notifier {
        let addr = std::env::var("NOTIFY_SOCKET")
            .ok()
            .and_then(|v| parse_notify_socket(&v));
        let socket = addr.as_ref().and_then(|_| UnixDatagram::unbound().ok());
        Notifier { addr, socket }
    }

    /// Whether a service manager listens.
    pub fn is_active(&self) -> bool {
        self.addr.is_some()
    }

    /// The watchdog interval of this process, if systemd set one.
    pub fn watchdog_interval() -> Option<Duration> {
        parse_watchdog(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// Sends `state` (newline-separated `KEY=value` assignments); a no-op outside systemd.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let (Some(addr), Some(socket)) = (&self.addr, &self.socket) else {
            return Ok(());
        };
        let sent = match addr {
            NotifyAddr::Path(p) => socket.send_to(state.as_bytes(), p)?,
            NotifyAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &a)?
            }
        };
        if sent == state.len() {
            Ok(())
        } else {
            Err(io::Error::other("the notification was cut short"))
        }
    }

    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("READY=1\nSTATUS={status}"))
    }

    pub fn reloading(&self) -> io::Result<()> {
        self.notify("RELOADING=1")
    }

    pub fn reloaded(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("READY=1\nSTATUS={status}"))
    }

    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1\nSTATUS=stopping")
    }

    pub fn watchdog(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }

    pub fn status(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("STATUS={status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_and_an_abstract_name_are_told_apart() {
        assert_eq!(
            parse_notify_socket("/run/systemd/notify"),
            Some(NotifyAddr::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_notify_socket("@sd-notify"),
            Some(NotifyAddr::Abstract(b"sd-notify".to_vec()))
        );
        assert_eq!(parse_notify_socket(""), None);
        assert_eq!(parse_notify_socket("@"), None);
        assert_eq!(parse_notify_socket("relative/path"), None);
    }

    #[test]
    fn the_watchdog_interval_is_taken_only_for_this_process() {
        assert_eq!(
            parse_watchdog(Some("20000000"), None, 7),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            parse_watchdog(Some("20000000"), Some("7"), 7),
            Some(Duration::from_secs(20))
        );
        assert_eq!(parse_watchdog(Some("20000000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 7), None);
        assert_eq!(parse_watchdog(None, None, 7), None);
    }

    #[test]
    fn notifications_arrive_as_one_datagram_each() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier {
            addr: Some(NotifyAddr::Path(path)),
            socket: UnixDatagram::unbound().ok(),
        };
        n.ready("running").expect("sent");
        n.watchdog().expect("sent");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).expect("received");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=running");
        let len = server.recv(&mut buf).expect("received");
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn without_a_service_manager_nothing_is_sent_and_nothing_fails() {
        let n = Notifier {
            addr: None,
            socket: None,
        };
        assert!(!n.is_active());
        n.ready("running").expect("no-op");
    }
}
