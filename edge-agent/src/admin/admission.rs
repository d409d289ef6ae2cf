//! Which connections the admin endpoint keeps open: a bounded table of connections, each
//! either waiting for its request head or being answered. Pure (no I/O, no clock), so the
//! admission rule is tested on its own; the server holds it behind a mutex.

use std::collections::{BTreeMap, BTreeSet};

/// One accepted connection; ids only grow, so a smaller id is an older connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u64);

/// Why a connection was closed without the answer it asked for (the `reason` label of
/// `edge_agent_admin_connections_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No complete request head within the head deadline: silent or trickling clients.
    Idle,
    /// Closed while still waiting for its head, to make room for a newer connection at the cap.
    Evicted,
    /// At the cap with every connection being answered: the new one was closed at once.
    Full,
    /// A head that is not an HTTP/1 request line, or longer than the limit (answered 400/431).
    BadRequest,
    /// A `/metrics` request that found no free slot in time (answered 503).
    Busy,
    /// The answer was not taken by the client within the write deadline.
    WriteTimeout,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::Idle,
        DropReason::Evicted,
        DropReason::Full,
        DropReason::BadRequest,
        DropReason::Busy,
        DropReason::WriteTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Idle => "idle",
            DropReason::Evicted => "evicted",
            DropReason::Full => "full",
            DropReason::BadRequest => "bad_request",
            DropReason::Busy => "busy",
            DropReason::WriteTimeout => "write_timeout",
        }
    }

    /// The position of this reason in [`DropReason::ALL`] (an index into a counter array).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What happens to a newly accepted connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<H> {
    /// There is room: serve it.
    Open(ConnId),
    /// At the cap: the oldest connection still waiting for its head gives up its place. Its
    /// handle is handed back; dropping it tells that connection to close.
    Evict { id: ConnId, evicted: H },
    /// At the cap and every open connection is being answered: close the new one.
    Full,
}

/// The open connections, at most `cap` of them. `H` is what closes a waiting connection when
/// it is dropped (the server uses a oneshot sender the connection's task listens on).
#[derive(Debug)]
pub struct Table<H> {
    cap: usize,
    next: u64,
    /// Connections whose request head has not arrived, oldest first.
    waiting: BTreeMap<ConnId, H>,
    /// Connections whose head arrived and that are being answered.
    answering: BTreeSet<ConnId>,
}

impl<H> Table<H> {
    /// A table for at most `cap` connections (at least one).
    pub fn new(cap: usize) -> Table<H> {
        Table {
            cap: cap.max(1),
            next: 0,
            waiting: BTreeMap::new(),
            answering: BTreeSet::new(),
        }
    }

    /// Admits a new connection, waiting for its head, whose closer is `handle`.
    ///
    /// Below the cap it simply opens. At the cap the oldest waiting connection makes room:
    /// a client that has sent nothing for longest is the least likely to be a real one (a
    /// real client sends its request right after connecting), so a flood of idle sockets
    /// can never lock a prober out. Connections being answered are never evicted: their
    /// work is bounded by the write deadline and they free their place soon.
    pub fn admit(&mut self, handle: H) -> Admission<H> {
        let evicted = if self.open() < self.cap {
            None
        } else {
            match self.waiting.pop_first() {
                Some(oldest) => Some(oldest),
                None => return Admission::Full,
            }
        };
        let id = ConnId(self.next);
        self.next += 1;
        self.waiting.insert(id, handle);
        match evicted {
            None => Admission::Open(id),
            Some((id_old, evicted)) => {
                debug_assert!(id_old < id);
                Admission::Evict { id, evicted }
            }
        }
    }

    /// `id` delivered its request head and is answered now. `false` when it is no longer
    /// waiting (evicted meanwhile): it must then close without an answer.
    pub fn head_received(&mut self, id: ConnId) -> bool {
        if self.waiting.remove(&id).is_some() {
            self.answering.insert(id);
            true
        } else {
            false
        }
    }

    /// `id` closed, in whatever phase; closing twice, or after an eviction, is harmless.
    pub fn closed(&mut self, id: ConnId) {
        if self.waiting.remove(&id).is_none() {
            self.answering.remove(&id);
        }
    }

    /// Connections open now (waiting and answering).
    pub fn open(&self) -> usize {
        self.waiting.len() + self.answering.len()
    }

    /// Connections open now that have not delivered their request head.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn opened<H>(a: Admission<H>) -> ConnId {
        match a {
            Admission::Open(id) | Admission::Evict { id, .. } => id,
            Admission::Full => panic!("refused"),
        }
    }

    #[test]
    fn connections_below_the_cap_are_simply_opened() {
        let mut t = Table::new(3);
        for name in ["a", "b", "c"] {
            assert!(matches!(t.admit(name), Admission::Open(_)));
        }
        assert_eq!((t.open(), t.waiting()), (3, 3));
    }

    #[test]
    fn at_the_cap_the_oldest_waiting_connection_makes_room_for_the_new_one() {
        let mut t = Table::new(2);
        let a = opened(t.admit("a"));
        let _b = opened(t.admit("b"));
        match t.admit("c") {
            Admission::Evict { evicted, .. } => assert_eq!(evicted, "a"),
            other => panic!("expected an eviction, got {other:?}"),
        }
        assert_eq!(t.open(), 2);
        assert!(!t.head_received(a), "an evicted connection is not answered");
        match t.admit("d") {
            Admission::Evict { evicted, .. } => assert_eq!(evicted, "b"),
            other => panic!("expected an eviction, got {other:?}"),
        }
    }

    #[test]
    fn connections_being_answered_are_never_evicted() {
        let mut t = Table::new(2);
        let a = opened(t.admit("a"));
        let _b = opened(t.admit("b"));
        assert!(t.head_received(a));
        match t.admit("c") {
            Admission::Evict { evicted, .. } => assert_eq!(evicted, "b", "a is answered"),
            other => panic!("expected an eviction, got {other:?}"),
        }
    }

    #[test]
    fn at_the_cap_with_every_connection_answered_the_new_one_is_refused() {
        let mut t = Table::new(2);
        for name in ["a", "b"] {
            let id = opened(t.admit(name));
            assert!(t.head_received(id));
        }
        assert_eq!(t.admit("c"), Admission::Full);
        assert_eq!(t.open(), 2);
    }

    #[test]
    fn a_closed_connection_frees_its_place_once_whatever_its_phase() {
        let mut t = Table::new(2);
        let a = opened(t.admit("a"));
        let b = opened(t.admit("b"));
        assert!(t.head_received(b));
        t.closed(a);
        t.closed(a);
        assert_eq!((t.open(), t.waiting()), (1, 0));
        t.closed(b);
        t.closed(b);
        assert_eq!(t.open(), 0);
        assert!(matches!(t.admit("c"), Admission::Open(_)));
    }

    #[test]
    fn closing_an_evicted_connection_does_not_free_the_place_of_another() {
        let mut t = Table::new(1);
        let a = opened(t.admit("a"));
        let b = opened(t.admit("b"));
        assert!(t.head_received(b));
        t.closed(a);
        assert_eq!(t.open(), 1, "b still holds its place");
    }

    #[test]
    fn a_cap_of_zero_still_admits_one_connection() {
        let mut t = Table::new(0);
        assert!(matches!(t.admit(()), Admission::Open(_)));
        assert!(matches!(t.admit(()), Admission::Evict { .. }));
    }

    #[test]
    fn every_reason_has_its_own_label_and_index() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let labels: BTreeSet<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), DropReason::ALL.len());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit,
        Head(usize),
        Close(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Admit),
            1 => (0usize..64).prop_map(Op::Head),
            2 => (0usize..64).prop_map(Op::Close),
        ]
    }

    proptest! {
        /// Against a plain model: never more than the cap open; a new connection is refused
        /// only when every open one is being answered; the evicted one is always the oldest
        /// waiting one; an answered connection is never evicted.
        #[test]
        fn the_table_keeps_its_bound_and_evicts_only_the_oldest_waiting_connection(
            cap in 1usize..8,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let mut t: Table<ConnId> = Table::new(cap);
            let mut waiting: Vec<ConnId> = Vec::new();
            let mut answering: Vec<ConnId> = Vec::new();
            let mut seen: Vec<ConnId> = Vec::new();
            // The handle is the connection's own id, so an eviction names its victim.
            let mut next_id = 0u64;
            for op in ops {
                match op {
                    Op::Admit => {
                        let handle = ConnId(next_id);
                        let at_cap = waiting.len() + answering.len() == cap;
                        match t.admit(handle) {
                            Admission::Open(id) => {
                                prop_assert!(!at_cap);
                                prop_assert_eq!(id, handle);
                                waiting.push(id);
                                seen.push(id);
                                next_id += 1;
                            }
                            Admission::Evict { id, evicted } => {
                                prop_assert!(at_cap);
                                prop_assert_eq!(Some(&evicted), waiting.iter().min());
                                prop_assert!(!answering.contains(&evicted));
                                waiting.retain(|w| *w != evicted);
                                prop_assert_eq!(id, handle);
                                waiting.push(id);
                                seen.push(id);
                                next_id += 1;
                            }
                            Admission::Full => {
                                prop_assert!(at_cap && waiting.is_empty());
                            }
                        }
                    }
                    Op::Head(i) => {
                        if let Some(&id) = seen.get(i % seen.len().max(1)) {
                            let was_waiting = waiting.contains(&id);
                            prop_assert_eq!(t.head_received(id), was_waiting);
                            if was_waiting {
                                waiting.retain(|w| *w != id);
                                answering.push(id);
                            }
                        }
                    }
                    Op::Close(i) => {
                        if let Some(&id) = seen.get(i % seen.len().max(1)) {
                            t.closed(id);
                            waiting.retain(|w| *w != id);
                            answering.retain(|w| *w != id);
                        }
                    }
                }
                prop_assert!(t.open() <= cap);
                prop_assert_eq!(t.open(), waiting.len() + answering.len());
                prop_assert_eq!(t.waiting(), waiting.len());
            }
        }
    }
}
