//! `[gateway]` (who this gateway is and where it keeps its data) and `[store]` (how much of
//! the disk the store may use and how often it commits).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Diagnostics;
use crate::names::{check_name, check_topic_level, Underscore};
use crate::reader::{TableReader, Val};

/// `[gateway]`: this gateway's identity and data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// `id` (required): the gateway's name, letters, digits, `-` and `_`. It appears in the
    /// status topic `{root}/_gateway/{id}/status` and in default MQTT client ids, so it must
    /// be unique among the gateways on a broker.
    pub id: String,
    /// `data_dir` (required): where the store keeps every sample until each northbound's
    /// broker has acknowledged it. A relative path is relative to the config file's directory.
    /// Put it on the persistent disk (for example `/var/lib/edge-agent`), not on a tmpfs.
    pub data_dir: PathBuf,
    /// `enterprise`, `site`, `area`, `line` (all required): where this gateway sits in the
    /// Unified Namespace.
    pub uns: UnsPath,
}

/// The ISA-95 levels of the Unified Namespace. Each is one MQTT topic level: not empty and
/// without `+`, `#` or `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsPath {
    /// `enterprise`: the company, as in `acme`.
    pub enterprise: String,
    /// `site`: the plant, as in `plant1`.
    pub site: String,
    /// `area`: the department or hall, as in `packaging`.
    pub area: String,
    /// `line`: the production line this gateway serves, as in `line1`.
    pub line: String,
}

impl UnsPath {
    /// `enterprise/site/area/line`, the default topic root of every northbound.
    pub fn root(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.enterprise, self.site, self.area, self.line
        )
    }
}

/// `[store]` (optional as a whole): the on-disk buffer between the PLCs and the brokers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// `max_disk_mb` (1 to 1,000,000, default 512): the store's quota, measured as its size on
    /// disk. When it is reached the oldest samples are dropped (`when_full = "drop-oldest"`,
    /// the only policy); every drop is counted, logged and reported in gateway health.
    pub max_disk_bytes: u64,
    /// `commit_interval_ms` (0 to 1000, default 0): how long the store waits to group more
    /// batches into one commit. 0 commits as soon as a batch is queued; a few milliseconds
    /// save SD-card writes on busy gateways at the cost of that much latency.
    pub commit_interval: Duration,
    /// `cache_mb` (1 to 1024, default 8): memory the store may use as a page cache.
    pub cache_capacity_bytes: u64,
}

impl StoreSettings {
    pub const DEFAULT_MAX_DISK_MB: u64 = 512;
    pub const DEFAULT_CACHE_MB: u64 = 8;
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            max_disk_bytes: Self::DEFAULT_MAX_DISK_MB * MIB,
            commit_interval: Duration::ZERO,
            cache_capacity_bytes: Self::DEFAULT_CACHE_MB * MIB,
        }
    }
}

const MIB: u64 = 1024 * 1024;

/// Joins a relative path from the config onto the config file's directory.
pub(crate) fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

pub(crate) fn read_gateway(
    cx: &mut Diagnostics<'_>,
    root: &mut TableReader<'_, '_>,
    base_dir: &Path,
) -> Option<Gateway> {
    let table = root.table(cx, "gateway");
    let mut t = match table {
        Val::Present(t, _) => t,
        Val::Invalid => return None,
        Val::Absent => {
            cx.structural(
                &root.span(),
                "missing the [gateway] table",
                Some("add [gateway] with id, data_dir, enterprise, site, area and line".to_owned()),
            );
            return None;
        }
    };
    let id = t.string(cx, "id");
    let id = t.require(cx, "id", id, "id = \"gw-line1\"");
    let id = id.filter(|(id, span)| check_name(cx, span, "gateway id", id, Underscore::Allowed));

    let data_dir = t.text(cx, "data_dir");
    let data_dir = t.require(
        cx,
        "data_dir",
        data_dir,
        "data_dir = \"/var/lib/edge-agent\"",
    );

    let mut levels = Vec::with_capacity(4);
    for (key, example) in [
        ("enterprise", "enterprise = \"acme\""),
        ("site", "site = \"plant1\""),
        ("area", "area = \"packaging\""),
        ("line", "line = \"line1\""),
    ] {
        let level = t.string(cx, key);
        let level = t
            .require(cx, key, level, example)
            .filter(|(level, span)| check_topic_level(cx, span, key, level));
        levels.push(level.map(|(level, _)| level.to_owned()));
    }
    t.finish(cx);

    let [enterprise, site, area, line]: [Option<String>; 4] = levels.try_into().ok()?;
    Some(Gateway {
        id: id?.0.to_owned(),
        data_dir: resolve(base_dir, data_dir?.0),
        uns: UnsPath {
            enterprise: enterprise?,
            site: site?,
            area: area?,
            line: line?,
        },
    })
}

pub(crate) fn read_store(
    cx: &mut Diagnostics<'_>,
    root: &mut TableReader<'_, '_>,
) -> Option<StoreSettings> {
    let mut t = match root.table(cx, "store") {
        Val::Present(t, _) => t,
        Val::Absent => return Some(StoreSettings::default()),
        Val::Invalid => return None,
    };
    let max_disk_mb: Option<u64> = t
        .integer(cx, "max_disk_mb", 1..=1_000_000)
        .or(StoreSettings::DEFAULT_MAX_DISK_MB);
    let when_full = t.choice(cx, "when_full", &[("drop-oldest", ())], &[]);
    let commit_interval_ms: Option<u64> = t.integer(cx, "commit_interval_ms", 0..=1000).or(0);
    let cache_mb: Option<u64> = t
        .integer(cx, "cache_mb", 1..=1024)
        .or(StoreSettings::DEFAULT_CACHE_MB);
    t.finish(cx);

    when_full.or(())?;
    Some(StoreSettings {
        max_disk_bytes: max_disk_mb? * MIB,
        commit_interval: Duration::from_millis(commit_interval_ms?),
        cache_capacity_bytes: cache_mb? * MIB,
    })
}
