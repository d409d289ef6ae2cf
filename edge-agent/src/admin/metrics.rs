//! What `/metrics` shows: every number gathered at one moment into [`MetricsInput`], then
//! rendered in the Prometheus text format by a pure function.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use edge_driver::{DeviceCounters, HistogramSnapshot};
use edge_store::{LossReason, StoreStats};

use super::admission::DropReason;
use crate::northbound::uns::PublisherStats;

/// One device's numbers at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceMetrics {
    pub name: String,
    pub connected: bool,
    pub scans: u64,
    pub reads_ok: u64,
    pub exceptions: u64,
    pub transport_errors: u64,
    pub samples: u64,
    pub latency: HistogramSnapshot,
}

impl DeviceMetrics {
    pub(super) fn read(name: &str, c: &DeviceCounters) -> DeviceMetrics {
        DeviceMetrics {
            name: name.to_owned(),
            connected: c.connected.load(Ordering::Relaxed),
            scans: c.scans.load(Ordering::Relaxed),
            reads_ok: c.reads_ok.load(Ordering::Relaxed),
            exceptions: c.exceptions.load(Ordering::Relaxed),
            transport_errors: c.transport_errors.load(Ordering::Relaxed),
            samples: c.samples.load(Ordering::Relaxed),
            latency: c.read_latency.snapshot(),
        }
    }
}

/// One northbound's numbers at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct NorthboundMetrics {
    pub name: String,
    pub connected: bool,
    pub connects: u64,
    pub inflight: u64,
    pub published: u64,
    pub acked: u64,
    pub resent: u64,
    pub records_acked: u64,
}

impl NorthboundMetrics {
    pub(super) fn read(name: &str, p: &PublisherStats) -> NorthboundMetrics {
        NorthboundMetrics {
            name: name.to_owned(),
            connected: p.connected.load(Ordering::Relaxed),
            connects: p.connects.load(Ordering::Relaxed),
            inflight: p.inflight.load(Ordering::Relaxed),
            published: p.published.load(Ordering::Relaxed),
            acked: p.acked.load(Ordering::Relaxed),
            resent: p.resent.load(Ordering::Relaxed),
            records_acked: p.records_acked.load(Ordering::Relaxed),
        }
    }
}

/// Resident and virtual memory of this process, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    pub resident: u64,
    pub virtual_: u64,
}

/// Everything `/metrics` shows, gathered first so that rendering is pure.
#[derive(Debug, Clone)]
pub struct MetricsInput {
    pub version: &'static str,
    pub devices: Vec<DeviceMetrics>,
    pub northbounds: Vec<NorthboundMetrics>,
    pub store: StoreStats,
    pub now_ms: u64,
    pub memory: Option<Memory>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub ready: bool,
    pub connections: ConnectionMetrics,
}

/// The admin endpoint's own connections at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionMetrics {
    pub accepted: u64,
    pub open: u64,
    /// Every reason, in the order of [`DropReason::ALL`].
    pub dropped: [(DropReason, u64); DropReason::ALL.len()],
}

/// `/proc/self/statm` in bytes (pages × the usual 4 KiB page; the page size of every
/// supported Linux target).
pub(super) fn read_memory() -> Option<Memory> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    parse_statm(&statm, 4096)
}

pub fn parse_statm(statm: &str, page: u64) -> Option<Memory> {
    let mut fields = statm.split_whitespace();
    let size: u64 = fields.next()?.parse().ok()?;
    let resident: u64 = fields.next()?.parse().ok()?;
    Some(Memory {
        resident: resident.saturating_mul(page),
        virtual_: size.saturating_mul(page),
    })
}

/// A label value in the exposition format: backslash, quote and newline escaped.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn seconds(us: u64) -> String {
    format!("{}", us as f64 / 1e6)
}

/// The Prometheus text exposition (version 0.0.4) of `m`.
pub fn render(m: &MetricsInput) -> String {
    let mut out = String::with_capacity(4096);
    let mut f = Family { out: &mut out };

    f.head("edge_agent_build_info", "gauge", "The running version.");
    f.sample("edge_agent_build_info", &[("version", m.version)], 1);
    f.head("edge_agent_ready", "gauge", "1 when /ready answers 200.");
    f.sample("edge_agent_ready", &[], u8::from(m.ready));
    f.head(
        "edge_agent_config_reloads_total",
        "counter",
        "Config reloads (SIGHUP) by result.",
    );
    f.sample(
        "edge_agent_config_reloads_total",
        &[("result", "applied")],
        m.reloads_ok,
    );
    f.sample(
        "edge_agent_config_reloads_total",
        &[("result", "refused")],
        m.reloads_failed,
    );

    type DevField = fn(&DeviceMetrics) -> u64;
    let device_counters: [(&str, &str, &str, DevField); 4] = [
        (
            "edge_agent_device_polls_total",
            "counter",
            "Scans (poll-group executions) completed.",
            |d| d.scans,
        ),
        (
            "edge_agent_device_reads_total",
            "counter",
            "Read requests answered with data.",
            |d| d.reads_ok,
        ),
        (
            "edge_agent_device_samples_total",
            "counter",
            "Samples handed to the store.",
            |d| d.samples,
        ),
        (
            "edge_agent_device_connected",
            "gauge",
            "1 while the device's connection is up.",
            |d| u64::from(d.connected),
        ),
    ];
    for (name, kind, help, get) in device_counters {
        f.head(name, kind, help);
        for d in &m.devices {
            f.sample(name, &[("device", &d.name)], get(d));
        }
    }
    f.head(
        "edge_agent_device_errors_total",
        "counter",
        "Failed read requests: Modbus exceptions and transport errors (timeouts, lost connections).",
    );
    for d in &m.devices {
        f.sample(
            "edge_agent_device_errors_total",
            &[("device", &d.name), ("kind", "exception")],
            d.exceptions,
        );
        f.sample(
            "edge_agent_device_errors_total",
            &[("device", &d.name), ("kind", "transport")],
            d.transport_errors,
        );
    }
    let h = "edge_agent_device_read_latency_seconds";
    f.head(
        h,
        "histogram",
        "Time from sending a read request to its answer or failure.",
    );
    for d in &m.devices {
        for (bound, n) in &d.latency.cumulative {
            let le = seconds(*bound);
            f.sample(
                &format!("{h}_bucket"),
                &[("device", &d.name), ("le", &le)],
                n,
            );
        }
        f.sample(
            &format!("{h}_bucket"),
            &[("device", &d.name), ("le", "+Inf")],
            d.latency.count,
        );
        f.sample(
            &format!("{h}_sum"),
            &[("device", &d.name)],
            seconds(d.latency.sum_us),
        );
        f.sample(
            &format!("{h}_count"),
            &[("device", &d.name)],
            d.latency.count,
        );
    }

    type NbField = fn(&NorthboundMetrics) -> u64;
    let nb_fields: [(&str, &str, &str, NbField); 7] = [
        (
            "edge_agent_northbound_connected",
            "gauge",
            "1 while the broker connection is up.",
            |n| u64::from(n.connected),
        ),
        (
            "edge_agent_northbound_connects_total",
            "counter",
            "Broker connections established.",
            |n| n.connects,
        ),
        (
            "edge_agent_northbound_inflight",
            "gauge",
            "Messages awaiting the broker's PUBACK.",
            |n| n.inflight,
        ),
        (
            "edge_agent_northbound_published_total",
            "counter",
            "Messages handed to the broker connection; rate() gives the publish rate.",
            |n| n.published,
        ),
        (
            "edge_agent_northbound_acked_total",
            "counter",
            "Messages acknowledged by the broker.",
            |n| n.acked,
        ),
        (
            "edge_agent_northbound_resent_total",
            "counter",
            "Messages sent again after a connection loss.",
            |n| n.resent,
        ),
        (
            "edge_agent_northbound_records_acked_total",
            "counter",
            "Store records fully acknowledged (the cursor moved over them).",
            |n| n.records_acked,
        ),
    ];
    for (name, kind, help, get) in nb_fields {
        f.head(name, kind, help);
        for n in &m.northbounds {
            f.sample(name, &[("northbound", &n.name)], get(n));
        }
    }
    f.head(
        "edge_agent_northbound_pending_records",
        "gauge",
        "Stored records this northbound has not had acknowledged.",
    );
    for nb in &m.store.northbounds {
        f.sample(
            "edge_agent_northbound_pending_records",
            &[("northbound", &nb.name)],
            nb.pending_records,
        );
    }

    let s = &m.store;
    f.head(
        "edge_agent_store_records",
        "gauge",
        "Records in the store (its depth).",
    );
    f.sample("edge_agent_store_records", &[], s.records);
    f.head("edge_agent_store_samples", "gauge", "Samples in the store.");
    f.sample("edge_agent_store_samples", &[], s.samples);
    f.head(
        "edge_agent_store_oldest_record_age_seconds",
        "gauge",
        "Age of the oldest stored reading; 0 when the store is empty.",
    );
    let age_ms = s
        .oldest_read_ts_ms
        .map_or(0, |t| m.now_ms.saturating_sub(t));
    f.sample(
        "edge_agent_store_oldest_record_age_seconds",
        &[],
        age_ms as f64 / 1e3,
    );
    f.head(
        "edge_agent_store_disk_bytes",
        "gauge",
        "The store's files on disk.",
    );
    f.sample("edge_agent_store_disk_bytes", &[], s.disk_bytes);
    f.head(
        "edge_agent_store_dropped_records_total",
        "counter",
        "Records dropped by the disk quota (data loss).",
    );
    f.sample(
        "edge_agent_store_dropped_records_total",
        &[],
        s.dropped_records,
    );
    f.head(
        "edge_agent_store_dropped_samples_total",
        "counter",
        "Samples dropped by the disk quota (data loss).",
    );
    f.sample(
        "edge_agent_store_dropped_samples_total",
        &[],
        s.dropped_samples,
    );
    f.head(
        "edge_agent_store_lost_samples_total",
        "counter",
        "Committed samples the store lost, by reason: evicted (disk quota), corrupted (unreadable on disk), rolled-back (gone from the store's log after a restart), purged (a northbound's backlog removed by `edge-agent buffer purge`).",
    );
    for reason in LossReason::ALL {
        f.sample(
            "edge_agent_store_lost_samples_total",
            &[("reason", reason.as_str())],
            s.lost.of(reason),
        );
    }
    f.head(
        "edge_agent_store_corrupt_records_total",
        "counter",
        "Undecodable records removed from the store (their samples are in the lost samples).",
    );
    f.sample(
        "edge_agent_store_corrupt_records_total",
        &[],
        s.corrupt_records,
    );
    f.head(
        "edge_agent_store_quarantines_total",
        "counter",
        "Unreadable store directories moved aside at start.",
    );
    f.sample("edge_agent_store_quarantines_total", &[], s.quarantines);
    f.head(
        "edge_agent_store_salvages_total",
        "counter",
        "Moved-aside store directories whose readable content was copied into the fresh store.",
    );
    f.sample("edge_agent_store_salvages_total", &[], s.salvages);
    f.head(
        "edge_agent_store_salvaged_records_total",
        "counter",
        "Records recovered by salvage.",
    );
    f.sample(
        "edge_agent_store_salvaged_records_total",
        &[],
        s.salvaged_records,
    );
    f.head(
        "edge_agent_store_committed_samples_total",
        "counter",
        "Samples committed durably since start.",
    );
    f.sample(
        "edge_agent_store_committed_samples_total",
        &[],
        s.committed_samples,
    );
    f.head(
        "edge_agent_store_commits_total",
        "counter",
        "Durable store writes since start.",
    );
    f.sample("edge_agent_store_commits_total", &[], s.commits);

    let c = &m.connections;
    f.head(
        "edge_agent_admin_connections_accepted_total",
        "counter",
        "Connections accepted by the admin endpoint.",
    );
    f.sample(
        "edge_agent_admin_connections_accepted_total",
        &[],
        c.accepted,
    );
    f.head(
        "edge_agent_admin_connections_open",
        "gauge",
        "Admin connections open now, waiting for their request or being answered (at most 512).",
    );
    f.sample("edge_agent_admin_connections_open", &[], c.open);
    f.head(
        "edge_agent_admin_connections_dropped_total",
        "counter",
        "Admin connections closed without the answer they asked for, by reason: idle (no complete request within 2 s), evicted (closed while idle to make room at the cap), full (at the cap with every connection being answered), bad_request (malformed or over 8 KiB), busy (/metrics: no slot within 1 s, or its numbers not gathered within 2 s), write_timeout (the answer not taken within 3 s).",
    );
    for (reason, n) in c.dropped {
        f.sample(
            "edge_agent_admin_connections_dropped_total",
            &[("reason", reason.as_str())],
            n,
        );
    }

    if let Some(mem) = m.memory {
        f.head(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        f.sample("process_resident_memory_bytes", &[], mem.resident);
        f.head(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
        );
        f.sample("process_virtual_memory_bytes", &[], mem.virtual_);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> MetricsInput {
        MetricsInput {
            version: "0.1.0",
            devices: vec![DeviceMetrics {
                name: "press \"A\"".into(),
                connected: true,
                scans: 3,
                reads_ok: 4,
                exceptions: 1,
                transport_errors: 2,
                samples: 9,
                latency: HistogramSnapshot {
                    cumulative: vec![(1_000, 1), (2_500, 3)],
                    count: 4,
                    sum_us: 5_500,
                },
            }],
            northbounds: vec![NorthboundMetrics {
                name: "mes".into(),
                connected: false,
                connects: 2,
                inflight: 7,
                published: 10,
                acked: 8,
                resent: 1,
                records_acked: 5,
            }],
            store: StoreStats {
                records: 12,
                samples: 30,
                oldest_read_ts_ms: Some(10_000),
                next_id: 13,
                disk_bytes: 4096,
                logical_bytes: 100,
                eviction_budget_bytes: None,
                dropped_records: 0,
                dropped_samples: 0,
                corrupt_records: 0,
                quarantines: 1,
                salvages: 1,
                salvaged_records: 10,
                lost: edge_store::LostCounts {
                    evicted: 0,
                    corrupted: 4,
                    rolled_back: 2,
                    purged: 0,
                    folded_ranges: 0,
                },
                committed_samples: 30,
                committed_bytes: 100,
                commits: 3,
                commit_retries: 0,
                northbounds: Vec::new(),
            },
            now_ms: 12_500,
            memory: Some(Memory {
                resident: 8192,
                virtual_: 16384,
            }),
            reloads_ok: 1,
            reloads_failed: 0,
            ready: false,
            connections: ConnectionMetrics {
                accepted: 40,
                open: 3,
                dropped: DropReason::ALL.map(|r| (r, r.index() as u64)),
            },
        }
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = render(&input());
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(declared.insert(name.to_owned()), "{name} declared twice");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{name} sampled before its TYPE");
            }
        }
    }

    #[test]
    fn the_histogram_ends_with_inf_equal_to_its_count_in_seconds() {
        let text = render(&input());
        assert!(text.contains(
            "edge_agent_device_read_latency_seconds_bucket{device=\"press \\\"A\\\"\",le=\"0.001\"} 1"
        ));
        assert!(text.contains("le=\"+Inf\"} 4"));
        assert!(text.contains(
            "edge_agent_device_read_latency_seconds_sum{device=\"press \\\"A\\\"\"} 0.0055"
        ));
    }

    #[test]
    fn lost_samples_are_shown_per_reason_with_salvage_and_quarantine_counts() {
        let text = render(&input());
        assert!(text.contains("edge_agent_store_lost_samples_total{reason=\"evicted\"} 0\n"));
        assert!(text.contains("edge_agent_store_lost_samples_total{reason=\"corrupted\"} 4\n"));
        assert!(text.contains("edge_agent_store_lost_samples_total{reason=\"rolled-back\"} 2\n"));
        assert!(text.contains("edge_agent_store_lost_samples_total{reason=\"purged\"} 0\n"));
        assert!(text.contains("edge_agent_store_quarantines_total 1\n"));
        assert!(text.contains("edge_agent_store_salvages_total 1\n"));
        assert!(text.contains("edge_agent_store_salvaged_records_total 10\n"));
    }

    #[test]
    fn admin_connections_are_shown_with_every_drop_reason() {
        let text = render(&input());
        assert!(text.contains("edge_agent_admin_connections_accepted_total 40\n"));
        assert!(text.contains("edge_agent_admin_connections_open 3\n"));
        for (want, n) in [
            ("idle", 0),
            ("evicted", 1),
            ("full", 2),
            ("bad_request", 3),
            ("busy", 4),
            ("write_timeout", 5),
        ] {
            let line =
                format!("edge_agent_admin_connections_dropped_total{{reason=\"{want}\"}} {n}\n");
            assert!(text.contains(&line), "{line}");
        }
        assert!(text.contains("# TYPE edge_agent_admin_connections_dropped_total counter\n"));
    }

    #[test]
    fn store_age_is_measured_from_the_oldest_reading() {
        let text = render(&input());
        assert!(text.contains("edge_agent_store_oldest_record_age_seconds 2.5\n"));
        let mut empty = input();
        empty.store.oldest_read_ts_ms = None;
        assert!(render(&empty).contains("edge_agent_store_oldest_record_age_seconds 0\n"));
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn statm_pages_become_bytes() {
        assert_eq!(
            parse_statm("100 25 3 1 0 40 0\n", 4096),
            Some(Memory {
                resident: 25 * 4096,
                virtual_: 100 * 4096
            })
        );
        assert_eq!(parse_statm("garbage", 4096), None);
    }
}
