//! Loopback ports for test servers. The kernel picks an unused ephemeral port; it is released
//! before the caller binds it, so another process may take it in between: callers that start a
//! server on it must retry with a new port when the bind fails.

use std::net::{Ipv4Addr, TcpListener};

/// The port a system Mosquitto listens on; tests must never depend on it or collide with it.
pub const SYSTEM_MQTT_PORT: u16 = 1883;

/// A loopback TCP port that was free when this returned (see the module note on the race).
pub fn free_port() -> u16 {
    // The ephemeral range never contains 1883 on Linux, but a tuned `ip_local_port_range`
    // could; a few attempts keep the guarantee without looping forever.
    for _ in 0..16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the address of a bound socket: {e}"))
            .port();
        if port != SYSTEM_MQTT_PORT {
            return port;
        }
    }
    panic!("the kernel kept handing out port {SYSTEM_MQTT_PORT}, which tests must not use");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_returns_a_bindable_port_other_than_the_system_broker() {
        let port = free_port();
        assert_ne!(port, SYSTEM_MQTT_PORT);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        assert!(listener.is_ok(), "port {port} could not be bound again");
    }
}
