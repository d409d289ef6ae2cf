//! `edge-agent check` and `edge-agent buffer stats`: what a technician runs at the line. Both
//! print plain text meant to be read, and exit 64 on a config the agent cannot use.

use std::fmt::Write as _;
use std::path::Path;

use edge_config::{Config, ConfigErrors, Device, ModbusLink, OpcUa, Protocol};
use edge_modbus::learn::{read_limits, BlockKind};
use edge_opcua::{Deadband, Identity, TagMode};
use edge_store::{Store, StoreError};

use crate::daemon::devices::{device_plan, limits_path};
use crate::daemon::permissions;
use crate::daemon::runtime;
use crate::daemon::status::{snapshot, StatusSnapshot};
use crate::EXIT_CONFIG;

fn load(path: &Path) -> Result<Config, i32> {
    edge_config::load(path).map_err(|errors: ConfigErrors| {
        eprintln!("{errors}");
        EXIT_CONFIG
    })
}

/// Validates the config and prints devices, tags and the read plan. Returns the exit code.
pub fn run(path: &Path) -> i32 {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match describe(&cfg) {
        Ok(text) => {
            print!("{text}");
            for warning in file_warnings(&cfg)
                .into_iter()
                .chain(permissions::warnings(&cfg, path))
            {
                eprintln!("warning: {warning}");
            }
            0
        }
        Err(e) => {
            eprintln!("{}: {e:#}", path.display());
            EXIT_CONFIG
        }
    }
}

/// Files the config names but this machine cannot read (a config is often written before the
/// certificates are deployed, so these are warnings: the northbound stays offline until fixed).
pub fn file_warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for nb in &cfg.northbounds {
        let Some(tls) = &nb.tls else { continue };
        let mut files = vec![("ca_file", &tls.ca_file)];
        if let Some((cert, key)) = &tls.client_cert {
            files.push(("client_cert_file", cert));
            files.push(("client_key_file", key));
        }
        for (key, path) in files {
            if let Err(e) = std::fs::File::open(path) {
                out.push(format!(
                    "northbound {}: {key} {} cannot be read ({e}); this northbound stays offline until it can",
                    nb.name,
                    path.display()
                ));
            }
        }
    }
    for dev in &cfg.devices {
        let Protocol::OpcUa(ua) = &dev.protocol else {
            continue;
        };
        if let Identity::X509 { cert, key } = &ua.identity {
            for (name, path) in [("user_cert_file", cert), ("user_key_file", key)] {
                if let Err(e) = std::fs::File::open(path) {
                    out.push(format!(
                        "device {}: {name} {} cannot be read ({e}); the device stays offline until it can",
                        dev.name,
                        path.display()
                    ));
                }
            }
        }
        if ua.trust_on_first_use {
            out.push(format!(
                "device {}: trust_on_first_use is on: the first certificate the server shows is trusted without checking; turn it off once the server is in the trusted list",
                dev.name
            ));
        }
    }
    out
}

fn describe_opcua(out: &mut String, dev: &Device, ua: &OpcUa) -> std::fmt::Result {
    let (subscribed, polled) = OpcUa::split(&dev.tags);
    writeln!(
        out,
        "device {}  opcua {}  security {}/{}  {}  session {} s  timeout {} ms  {} tags ({subscribed} subscribed, {polled} polled)",
        dev.name,
        ua.endpoint,
        ua.security_policy,
        ua.security_mode,
        ua.identity.describe(),
        ua.session_timeout.as_secs(),
        dev.timeout.as_millis(),
        dev.tags.len(),
    )?;
    let ua_tags = || dev.tags.iter().filter_map(|t| Some((t, t.opcua()?)));
    let width = ua_tags()
        .map(|(_, o)| o.node.to_string().len())
        .max()
        .unwrap_or(0);
    for (t, o) in ua_tags() {
        let mut extra = String::new();
        if let Some(dt) = o.data_type {
            write!(extra, "  as {dt}")?;
        }
        if t.scale != 1.0 || t.offset != 0.0 {
            write!(extra, "  ×{}+{}", t.scale, t.offset)?;
        }
        if let Some(u) = &t.unit {
            write!(extra, "  [{u}]")?;
        }
        if t.writable {
            extra.push_str("  writable");
        }
        let mode = match &o.mode {
            TagMode::Subscription {
                publishing_interval,
                sampling_interval,
                queue_size,
                deadband,
            } => {
                let deadband = match deadband {
                    Deadband::None => String::new(),
                    Deadband::Absolute(d) => format!(", deadband {d}"),
                    Deadband::Percent(p) => format!(", deadband {p} %"),
                };
                format!(
                    "subscription, publishing {} ms, sampling {} ms, queue {queue_size}{deadband}",
                    publishing_interval.as_millis(),
                    sampling_interval.as_millis()
                )
            }
            TagMode::Polling {
                interval,
                deadband,
                heartbeat,
            } => {
                let mut m = format!("polling every {} ms", interval.as_millis());
                if let Some(d) = deadband {
                    write!(m, ", deadband {d}")?;
                }
                if let Some(h) = heartbeat {
                    write!(m, ", heartbeat {} s", h.as_secs())?;
                }
                m
            }
        };
        writeln!(
            out,
            "  tag {:<24} {:<width$}  {mode}{extra}",
            t.name,
            o.node.to_string(),
        )?;
    }
    let mut subscriptions: Vec<(u128, usize)> = Vec::new();
    let mut polls: Vec<(u128, usize)> = Vec::new();
    for (_, o) in ua_tags() {
        let (list, ms) = match &o.mode {
            TagMode::Subscription {
                publishing_interval,
                ..
            } => (&mut subscriptions, publishing_interval.as_millis()),
            TagMode::Polling { interval, .. } => (&mut polls, interval.as_millis()),
        };
        match list.iter_mut().find(|(m, _)| *m == ms) {
            Some((_, n)) => *n += 1,
            None => list.push((ms, 1)),
        }
    }
    subscriptions.sort_unstable();
    polls.sort_unstable();
    let list = |groups: &[(u128, usize)], what: &str| -> String {
        groups
            .iter()
            .map(|(ms, n)| format!("{what} {ms} ms: {n} tag(s)"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(
        out,
        "  subscriptions: {}{}",
        subscriptions.len(),
        if subscriptions.is_empty() {
            String::new()
        } else {
            format!(" ({})", list(&subscriptions, "publishing"))
        }
    )?;
    let cap = match ua.max_nodes_per_read {
        0 => "the server's MaxNodesPerRead".to_owned(),
        n => format!("min({n}, the server's MaxNodesPerRead)"),
    };
    writeln!(
        out,
        "  polling: {} group(s){}",
        polls.len(),
        if polls.is_empty() {
            String::new()
        } else {
            format!(
                " ({}), each in Reads of at most {cap} nodes",
                list(&polls, "every")
            )
        }
    )
}

/// The human-readable summary `check` prints.
pub fn describe(cfg: &Config) -> anyhow::Result<String> {
    let mut out = String::new();
    let g = &cfg.gateway;
    writeln!(out, "config {} is valid", cfg.source.display())?;
    writeln!(
        out,
        "gateway {}  data {}  uns {}",
        g.id,
        g.data_dir.display(),
        g.uns.root()
    )?;
    writeln!(
        out,
        "store   quota {} MiB, drop oldest when full, commit window {} ms",
        cfg.store.max_disk_bytes / (1024 * 1024),
        cfg.store.commit_interval.as_millis()
    )?;
    for nb in &cfg.northbounds {
        match &nb.format {
            edge_config::Format::UnsJson => writeln!(
                out,
                "northbound {}  {}  client id {}  topics {}/…  {}, up to {} in flight",
                nb.name, nb.url, nb.client_id, nb.topic_root, nb.batching.as_str(), nb.max_inflight
            )?,
            edge_config::Format::SparkplugB(sp) => writeln!(
                out,
                "northbound {}  {}  client id {}  Sparkplug B edge node spBv1.0/{}/…/{}{}, up to {} unproven",
                nb.name,
                nb.url,
                nb.client_id,
                sp.group_id,
                sp.edge_node_id,
                sp.primary_host_id
                    .as_deref()
                    .map(|h| format!(", primary host {h}"))
                    .unwrap_or_default(),
                nb.max_inflight
            )?,
        }
    }
    describe_board(&mut out, cfg)?;
    let learned: Vec<(String, BlockKind, u16)> = read_limits(&limits_path(cfg))
        .into_iter()
        .map(|((d, k), v)| (d, k, v))
        .collect();
    let mut total_requests = 0usize;
    let mut total_tags = 0usize;
    let mut total_rate = 0.0f64;
    let mut opcua_subscribed = 0usize;
    let mut opcua_polled = 0usize;
    for dev in &cfg.devices {
        total_tags += dev.tags.len();
        let modbus = match &dev.protocol {
            Protocol::OpcUa(ua) => {
                writeln!(out)?;
                describe_opcua(&mut out, dev, ua)?;
                let (s, p) = OpcUa::split(&dev.tags);
                opcua_subscribed += s;
                opcua_polled += p;
                continue;
            }
            Protocol::Modbus(m) => m,
        };
        writeln!(out)?;
        writeln!(
            out,
            "device {}  {} {} unit {}  poll {} ms  timeout {} ms  {} tags",
            dev.name,
            dev.protocol.as_str(),
            dev.protocol.endpoint(),
            dev.protocol.unit_id(),
            dev.poll_interval.as_millis(),
            dev.timeout.as_millis(),
            dev.tags.len()
        )?;
        for (t, m) in dev.tags.iter().filter_map(|t| Some((t, t.modbus()?))) {
            let mut extra = String::new();
            if t.scale != 1.0 || t.offset != 0.0 {
                write!(extra, "  ×{}+{}", t.scale, t.offset)?;
            }
            if let Some(u) = &t.unit {
                write!(extra, "  [{u}]")?;
            }
            if let Some(d) = m.deadband {
                write!(extra, "  deadband {d}")?;
            }
            if let Some(h) = m.heartbeat {
                write!(extra, "  heartbeat {} s", h.as_secs())?;
            }
            if t.writable {
                extra.push_str("  writable");
            }
            writeln!(
                out,
                "  tag {:<24} {:<10} {:<10} {}  every {} ms{}",
                t.name,
                m.address.to_string(),
                m.data_type.to_string(),
                m.byte_order,
                m.poll_interval.as_millis(),
                extra
            )?;
        }
        let Some(plan) = device_plan(dev)? else {
            continue;
        };
        writeln!(
            out,
            "  read plan: {} request(s) per scan for {} tags, {:.1} requests/s (max block {} registers / {} bits, max gap {} / {})",
            plan.request_count(),
            dev.tags.len(),
            plan.requests_per_second(),
            modbus.max_registers,
            modbus.max_bits,
            modbus.max_gap_registers,
            modbus.max_gap_bits
        )?;
        for group in &plan.groups {
            writeln!(out, "    every {} ms:", group.interval.as_millis())?;
            for req in &group.requests {
                writeln!(
                    out,
                    "      {}  → {} tag(s)",
                    req.describe(),
                    req.items.len()
                )?;
            }
        }
        for (device, kind, limit) in &learned {
            if device == &dev.name {
                writeln!(
                    out,
                    "  learned: the device accepts at most {limit} {} per read (from {})",
                    match kind {
                        BlockKind::Registers => "registers",
                        BlockKind::Bits => "bits",
                    },
                    limits_path(cfg).display()
                )?;
            }
        }
        total_requests += plan.request_count();
        total_rate += plan.requests_per_second();
    }
    for m in &cfg.machines {
        describe_machine(&mut out, cfg, m)?;
    }
    writeln!(out)?;
    write!(
        out,
        "{} device(s), {} tag(s), {} Modbus request(s) per scan, {:.1} requests/s",
        cfg.devices.len(),
        total_tags,
        total_requests,
        total_rate
    )?;
    if opcua_subscribed + opcua_polled > 0 {
        write!(
            out,
            "; OPC UA: {opcua_subscribed} tag(s) subscribed, {opcua_polled} polled"
        )?;
    }
    writeln!(out)?;
    if !cfg.machines.is_empty() {
        writeln!(
            out,
            "{} machine(s): MES events on {{root}}/{{machine}}/_mes/..., commands on {{root}}/{{machine}}/_mes/cmd/workorder/dispatch and {{root}}/{{device}}/{{tag}}/_set",
            cfg.machines.len()
        )?;
    }
    Ok(out)
}

/// `[board]`: the serial buses and the board I/O.
fn describe_board(out: &mut String, cfg: &Config) -> std::fmt::Result {
    let b = &cfg.board;
    if let Some(m) = &b.model {
        writeln!(out, "board {m}")?;
    }
    for p in &b.serial {
        let devices: Vec<&str> = cfg
            .devices
            .iter()
            .filter(
                |d| matches!(d.protocol.modbus().map(|m| &m.link), Some(ModbusLink::Rtu { serial }) if serial == &p.name),
            )
            .map(|d| d.name.as_str())
            .collect();
        writeln!(
            out,
            "serial {}  {}  {} baud, {} data bits, parity {:?}, {} stop bit(s)  slaves: {}",
            p.name,
            p.path,
            p.baud,
            p.data_bits,
            p.parity,
            p.stop_bits,
            if devices.is_empty() {
                "none".to_owned()
            } else {
                devices.join(", ")
            }
        )?;
    }
    if let Some(l) = &b.status_led {
        writeln!(
            out,
            "status LED  {} line {}{}  (steady: connected, slow blink: buffering, fast blink: fault)",
            l.chip,
            l.line,
            if l.active_low { " active-low" } else { "" }
        )?;
    }
    for i in &b.inputs {
        writeln!(
            out,
            "input {}/{}  {} line {}{}  every {} ms",
            b.input_device,
            i.name,
            i.line.chip,
            i.line.line,
            if i.line.active_low { " active-low" } else { "" },
            i.poll_interval.as_millis()
        )?;
    }
    Ok(())
}

/// One `[[machine]]`: where its facts come from, what its state values mean, where a
/// dispatch is written.
fn describe_machine(out: &mut String, cfg: &Config, m: &edge_config::Machine) -> std::fmt::Result {
    // A tag of the machine's own device by its name, another device's as `device/tag`.
    let name = |t: &edge_config::TagRef| {
        if t.device == m.device {
            t.tag.clone()
        } else {
            t.to_string()
        }
    };
    let or_dash = |t: &Option<edge_config::TagRef>| t.as_ref().map_or_else(|| "-".to_owned(), name);
    let root = cfg
        .northbounds
        .first()
        .map(|n| n.topic_root.clone())
        .unwrap_or_else(|| cfg.gateway.uns.root());
    writeln!(out)?;
    writeln!(
        out,
        "machine {}  device {}  events {root}/{}/_mes/...",
        m.name, m.device, m.name
    )?;
    writeln!(
        out,
        "  work order {}  product {}  good {}  scrap {}  max count step {}",
        or_dash(&m.work_order_tag),
        or_dash(&m.product_tag),
        or_dash(&m.good_count_tag),
        or_dash(&m.scrap_count_tag),
        m.max_count_step
    )?;
    if let Some(tag) = &m.state_tag {
        writeln!(out, "  state word {}:", name(tag))?;
        for s in &m.states {
            writeln!(
                out,
                "    {:>6} → {} ({}){}",
                s.value,
                s.state,
                s.reason_code,
                s.reason
                    .as_ref()
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default()
            )?;
        }
        writeln!(out, "    other  → unknown (30000)")?;
    }
    if let Some(d) = &m.dispatch {
        let mut order = vec![name(&d.work_order_tag)];
        order.extend(d.product_tag.as_ref().map(name));
        order.extend(d.quantity_tag.as_ref().map(name));
        order.extend(d.parameters.iter().map(|p| {
            format!(
                "{} ({}{})",
                name(&p.tag),
                p.name,
                if p.required { ", required" } else { "" }
            )
        }));
        order.extend(
            d.handshake_tag
                .as_ref()
                .map(|h| format!("{} = true", name(h))),
        );
        writeln!(out, "  dispatch writes {}", order.join(", then "))?;
    }
    Ok(())
}

/// `buffer stats`: from the store itself when no agent holds it, else from the running agent's
/// status snapshot. Returns the exit code.
pub fn buffer_stats(path: &Path, json: bool) -> i32 {
    // The store only: no broker is contacted, so the broker's password is not needed.
    let cfg = match edge_config::load_for_store(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return EXIT_CONFIG;
        }
    };
    let dir = runtime::store_dir(&cfg);
    if !dir.exists() {
        println!(
            "no store yet at {} (the agent has not run with this config)",
            dir.display()
        );
        return 0;
    }
    let (snap, source) = match Store::open(
        &dir,
        runtime::store_options(&cfg),
        &runtime::northbound_names(&cfg),
    ) {
        Ok((store, _)) => (
            snapshot(&store, &[], &[]),
            format!("store {}", dir.display()),
        ),
        Err(StoreError::Locked { .. }) => match read_snapshot(&runtime::status_path(&cfg)) {
            Ok(s) => {
                let age = edge_model::now_ms().saturating_sub(s.written_ms) / 1000;
                let src = format!("running agent (pid {}), snapshot {} s old", s.pid, age);
                (s, src)
            }
            Err(e) => {
                eprintln!(
                    "the store {} is in use by a running agent and its status snapshot cannot be read: {e}",
                    dir.display()
                );
                return 1;
            }
        },
        Err(e) => {
            eprintln!("cannot open the store: {e}");
            return 1;
        }
    };
    if json {
        match serde_json::to_string_pretty(&snap) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("cannot encode the stats: {e}");
                return 1;
            }
        }
    } else {
        print!("{}", render_stats(&snap, &source));
    }
    0
}

fn read_snapshot(path: &Path) -> anyhow::Result<StatusSnapshot> {
    let bytes = std::fs::read(path)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn age(ts: Option<u64>) -> String {
    match ts {
        None => "-".to_owned(),
        Some(ts) => {
            let s = edge_model::now_ms().saturating_sub(ts) / 1000;
            format!("{s} s")
        }
    }
}

pub fn render_stats(s: &StatusSnapshot, source: &str) -> String {
    let mut out = String::new();
    let st = &s.store;
    let _ = writeln!(out, "source: {source}");
    let _ = writeln!(
        out,
        "store: {} records, {} samples, oldest {} ago, {:.1} MiB on disk ({:.1} MiB of records)",
        st.records,
        st.samples,
        age(st.oldest_read_ts_ms),
        st.disk_bytes as f64 / 1048576.0,
        st.logical_bytes as f64 / 1048576.0
    );
    let _ = writeln!(
        out,
        "dropped by quota: {} records, {} samples",
        st.dropped_records, st.dropped_samples
    );
    let _ = writeln!(
        out,
        "lost samples: {} evicted, {} corrupted, {} rolled back, {} purged ({} loss ranges recorded, {} older ones folded)",
        st.lost_evicted_samples,
        st.lost_corrupted_samples,
        st.lost_rolled_back_samples,
        st.lost_purged_samples,
        s.losses.len(),
        st.folded_loss_ranges
    );
    if st.quarantines > 0 || st.corrupt_records > 0 {
        let _ = writeln!(
            out,
            "damage: {} unreadable store directories moved aside ({} salvaged, {} records recovered), {} corrupted records removed",
            st.quarantines, st.salvages, st.salvaged_records, st.corrupt_records
        );
    }
    for l in &s.losses {
        let _ = writeln!(
            out,
            "  lost {} seq {}..={} ({} samples, {}, {} ago)",
            l.device,
            l.first_seq,
            l.last_seq,
            l.samples,
            l.reason,
            age(Some(l.at_ms))
        );
    }
    for nb in &s.northbounds {
        let _ = writeln!(
            out,
            "northbound {}: {} records pending, oldest {} ago, cursor {}{}",
            nb.name,
            nb.pending_records,
            age(nb.oldest_pending_read_ts_ms),
            nb.cursor,
            if nb.connected { ", connected" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_store::StoreOptions;

    /// A store that evicted: `buffer stats` shows the totals and each range, and the JSON
    /// carries the ranges under `losses`.
    #[tokio::test]
    async fn buffer_stats_show_the_loss_ranges_in_text_and_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = StoreOptions {
            max_disk_bytes: 1 << 20,
            cache_capacity_bytes: 4 << 20,
        };
        let (store, _) = Store::open(dir.path(), opts, &["mes".to_owned()]).expect("open");
        for i in 0..2000u32 {
            let mut b = edge_model::Batch::new(edge_model::DeviceId::from("plc1"));
            b.samples.push(edge_model::Sample::good(
                edge_model::TagName::from("blob"),
                edge_model::Value::String(format!("{i:06}").repeat(170)),
                u64::from(i),
            ));
            store.commit(vec![b]).await.expect("commit");
        }
        let snap = snapshot(&store, &[], &[]);
        assert!(snap.store.lost_evicted_samples > 0, "{:?}", snap.store);
        assert_eq!(snap.losses.len(), 1, "{:?}", snap.losses);
        let loss = &snap.losses[0];
        assert_eq!(
            (loss.device.as_str(), loss.first_seq, loss.reason.as_str()),
            ("plc1", edge_store::FIRST_SEQ, "evicted")
        );
        assert_eq!(loss.samples, snap.store.lost_evicted_samples);

        let text = render_stats(&snap, "test");
        assert!(text.contains(&format!(
            "lost samples: {} evicted, 0 corrupted, 0 rolled back, 0 purged",
            loss.samples
        )));
        assert!(text.contains(&format!(
            "  lost plc1 seq 1..={} ({} samples, evicted",
            loss.last_seq, loss.samples
        )));

        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&snap).expect("encode")).expect("json");
        assert_eq!(json["losses"][0]["reason"], "evicted");
        assert_eq!(json["losses"][0]["last_seq"], loss.last_seq);
        assert_eq!(json["store"]["lost_evicted_samples"], loss.samples);
    }
}
