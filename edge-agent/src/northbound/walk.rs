//! The brokers of a northbound (`url`, then the rest of `urls`) and the one in use, walked in
//! order on each lost session: the next broker is tried at once, and the reconnect backoff
//! waits only once every broker of the list failed in a row. Pure; both publishers use it.

use edge_config::{BrokerUrl, Northbound};

#[derive(Debug, Clone)]
pub struct BrokerWalk {
    brokers: Vec<BrokerUrl>,
    at: usize,
    /// Sessions lost in a row without one coming up.
    failed: usize,
}

impl BrokerWalk {
    pub fn new(nb: &Northbound) -> BrokerWalk {
        BrokerWalk {
            brokers: nb.brokers().cloned().collect(),
            at: 0,
            failed: 0,
        }
    }

    /// Every broker, the preferred one first.
    pub fn all(&self) -> &[BrokerUrl] {
        &self.brokers
    }

    /// The position of the broker in use (0: the preferred one).
    pub fn index(&self) -> usize {
        self.at
    }

    pub fn current(&self) -> &BrokerUrl {
        &self.brokers[self.at]
    }

    /// More than one broker to walk.
    pub fn several(&self) -> bool {
        self.brokers.len() > 1
    }

    /// Back to the preferred broker (it answered again).
    pub fn to_preferred(&mut self) {
        self.at = 0;
        self.failed = 0;
    }

    /// A session ended (`came_up`: it had connected): moves on to the next broker. Returns
    /// whether to wait the backoff (one broker, or the whole list failed in a row) rather
    /// than try the next at once.
    pub fn lost(&mut self, came_up: bool) -> bool {
        if came_up {
            self.failed = 0;
        }
        self.failed += 1;
        self.at = (self.at + 1) % self.brokers.len();
        if self.failed >= self.brokers.len() {
            self.failed = 0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use edge_config::BrokerUrl;

    use super::*;

    fn walk(n: u16) -> BrokerWalk {
        BrokerWalk {
            brokers: (0..n)
                .map(|i| BrokerUrl {
                    tls: false,
                    host: format!("b{i}"),
                    port: 1883,
                })
                .collect(),
            at: 0,
            failed: 0,
        }
    }

    #[test]
    fn the_list_is_walked_in_order_and_the_backoff_waits_after_a_whole_failed_walk() {
        let mut w = walk(3);
        assert!(
            !w.lost(true),
            "after a session that came up, the next broker at once"
        );
        assert_eq!(w.current().host, "b1");
        assert!(!w.lost(false));
        assert_eq!(w.current().host, "b2");
        assert!(w.lost(false), "all three failed in a row: back off");
        assert_eq!(w.current().host, "b0");
        assert!(!w.lost(false), "a new walk");
        w.to_preferred();
        assert_eq!(w.index(), 0);
    }

    #[test]
    fn one_broker_always_backs_off() {
        let mut w = walk(1);
        assert!(!w.several());
        assert!(w.lost(true));
        assert!(w.lost(false));
        assert_eq!(w.index(), 0);
    }
}
