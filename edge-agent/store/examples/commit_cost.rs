//! What one durable commit costs: single-record commits in a loop, timed.
//! `cargo run --release -p edge-store --example commit_cost -- [commits]`

use std::time::Instant;

use edge_model::{Batch, DeviceId, Sample, TagName, Value};
use edge_store::{Store, StoreOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let commits: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = std::env::temp_dir().join(format!("edge-store-commit-cost-{}", std::process::id()));
    let (store, _) =
        Store::open(&dir, StoreOptions::default(), &["mes".to_owned()]).expect("open the store");
    let started = Instant::now();
    for i in 0..commits {
        let batch = Batch {
            device: DeviceId::from("plc"),
            samples: vec![Sample::good(TagName::from("t"), Value::U16(i as u16), 1000)],
        };
        store.commit(vec![batch]).await.expect("commit");
    }
    let elapsed = started.elapsed();
    println!(
        "{commits} single-record commits in {:.2} s: {:.1} µs per commit",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / commits as f64
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
