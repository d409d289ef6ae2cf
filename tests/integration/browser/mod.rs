//! The console in a real browser: Debian's headless Chromium, driven through chromedriver,
//! against the real agent with a Modbus PLC, a second PLC of 10,000 tags, an OPC UA server and
//! Mosquitto. The page loads without a console error; a PLC's new value is on the page within
//! 2 s; a stopped PLC shows offline with its reason within 5 s; the search finds one tag of
//! 10,000; the trend plot draws; a config with an error shows it at its line, a valid one
//! applies and its new tag appears, and rollback takes it away again; an MES command is in
//! the command log with its answer. The overview and tag
//! pages are saved as screenshots (`target/tmp/console/`).

pub mod webdriver;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edge_modbus::{Area, ByteOrder};
use edge_model::{DataType, Value};
use edge_sim::opcua::{OpcUaSim, OpcUaSimOptions};
use serde_json::json;

use crate::common::*;
use crate::console::wait_listening;
use crate::mes::agent_taking_commands;
use crate::support::{free_port, Collector, Mosquitto, TestDir};
use webdriver::Driver;

/// Tags of the bulk PLC: the search must find one of them.
const BULK_TAGS: u16 = 10_000;

/// Where the test run leaves its screenshots.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("EDGE_AGENT_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console"))
}

fn save(driver: &Driver, name: &str) {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = driver.screenshot_png().expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(dir.join(name), png).expect("screenshot written");
}

fn text(d: &Driver, css: &str) -> Result<String, String> {
    d.find(css)?.text()
}

/// Sets the config editor's text as typing would (input event), without typing 600 KB.
fn set_editor(d: &Driver, value: &str) {
    d.execute(
        "const t = document.getElementById('config-text'); t.value = arguments[0]; t.dispatchEvent(new Event('input', {bubbles: true}));",
        vec![json!(value)],
    )
    .expect("editor set");
}

/// Types into the tag search and waits for the page to show `want` rows for it.
fn search(d: &Driver, q: &str) {
    let input = d.find("#tag-search").expect("search box");
    input.clear().expect("cleared");
    input.send_keys(q).expect("typed");
}

fn rows(d: &Driver) -> Result<Vec<String>, String> {
    d.find_all("#tag-table tbody tr[data-tag]")?
        .iter()
        .map(|r| r.attribute("data-tag").map(Option::unwrap_or_default))
        .collect()
}

/// Clicks `button`, confirms in the page, and waits for the status to say `done`.
fn confirmed(d: &Driver, button: &str, done: &str) {
    d.find(button)
        .expect("the button")
        .click()
        .expect("clicked");
    d.wait_for("the confirm button", Duration::from_secs(5), |d| {
        d.find("#config-confirm")?.is_displayed()
    })
    .expect("confirm shown");
    d.find("#config-confirm")
        .expect("confirm")
        .click()
        .expect("confirmed");
    d.wait_for(done, Duration::from_secs(30), |d| {
        Ok(text(d, "#config-status")?.contains(done))
    })
    .unwrap_or_else(|e| panic!("{button}: {e}"));
}

fn no_errors(d: &Driver, when: &str) {
    let errors = d.browser_errors().expect("the browser's log");
    assert!(errors.is_empty(), "console errors {when}: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technician_follows_the_line_finds_a_tag_plots_it_and_edits_the_config_in_a_real_browser()
{
    let mut broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let bulk = start_plc().await;
    let dir = TestDir::new();
    let mut ua_options = OpcUaSimOptions::new(dir.join("ua-pki"));
    ua_options.tick = Duration::from_millis(200);
    let ua = OpcUaSim::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), ua_options)
        .await
        .expect("OPC UA server starts");
    let _counting = counting(&bulk, Duration::from_millis(100));

    let line = device(
        "plc",
        plc.local_addr().port(),
        100,
        vec![
            TagToml {
                extra: vec!["unit = \"mm\"".into(), "deadband = 0".into()],
                ..tag("level", "hr:0", "u16")
            },
            TagToml {
                extra: vec!["writable = true".into()],
                ..tag("flow", "hr:1", "u16")
            },
        ],
    );
    let mut many = device("bulk", bulk.local_addr().port(), 1000, Vec::new());
    many.tags = (0..BULK_TAGS)
        .map(|i| tag(&format!("bulk_{i:05}"), &format!("hr:{i}"), "u16"))
        .collect();
    let port = free_port();
    let data = dir.join("data");
    let mut config = config_toml(&data, broker.port(), "per-device", "", &[line, many]);
    let _ = write!(
        config,
        "[[device]]\nname = \"ua\"\nprotocol = \"opcua\"\nendpoint = \"{}\"\npublishing_interval_ms = 100\ntimeout_ms = 2000\nbackoff_min_ms = 200\nbackoff_max_ms = 1000\n  [[device.tag]]\n  name = \"speed\"\n  address = \"ns=2;s=Filler.Speed\"\n\n[admin]\nlisten = \"127.0.0.1:{port}\"\nedit = true\n",
        ua.endpoint_url()
    );
    let path = dir.join("board.toml");
    std::fs::write(&path, &config).expect("config written");
    let mut mqtt = Collector::start(
        broker.port(),
        "console-mes",
        &[&format!("{ROOT}/plc/#"), &format!("{ROOT}/filler/#")],
    )
    .await
    .expect("MES client connects");
    let mut agent = agent_taking_commands(&mqtt, &path).await;
    wait_listening(port, "/live").await;
    // A command from the MES, for the command log.
    let answer = crate::mes::command(
        &mqtt,
        &format!("{ROOT}/plc/flow/_set"),
        json!({"request_id": "console-log-1", "value": 55}).to_string(),
    )
    .await;
    assert_eq!(answer["status"], json!("ok"), "{answer}");
    put(
        &plc,
        Area::HoldingRegister,
        0,
        DataType::U16,
        ByteOrder::Abcd,
        &Value::U16(17),
    );

    let url = format!("http://127.0.0.1:{port}/");
    let runtime = tokio::runtime::Handle::current();
    let original = config.clone();
    let session = tokio::task::spawn_blocking(move || {
        let d = Driver::start(1366, 900).unwrap_or_else(|e| {
            panic!("cannot start headless Chromium through chromedriver (install Debian's chromium and chromium-driver; scripts/test.sh does): {e}")
        });
        d.goto(&format!("{url}#overview")).expect("page loads");
        d.wait_for("the gateway's id", Duration::from_secs(10), |d| {
            Ok(text(d, "#gateway-id")? == "gw-test")
        })
        .expect("header");
        d.wait_for("three devices online", Duration::from_secs(30), |d| {
            let online = d.find_all("#devices tr[data-device] [data-field=status]")?;
            let texts: Result<Vec<String>, String> = online.iter().map(|e| e.text()).collect();
            Ok(texts?.iter().filter(|t| *t == "online").count() == 3)
        })
        .expect("devices online");
        d.wait_for("the northbound connected", Duration::from_secs(20), |d| {
            Ok(text(
                d,
                "#northbounds tr[data-northbound=mes] [data-field=status]",
            )? == "connected")
        })
        .expect("northbound");
        no_errors(&d, "on load");
        save(&d, "overview.png");

        // A new value in the PLC is on the page within 2 s.
        d.goto(&format!("{url}#tags")).expect("tags view");
        search(&d, "level");
        d.wait_for("the level row", Duration::from_secs(5), |d| {
            Ok(rows(d)? == ["plc/level"])
        })
        .expect("one row");
        d.wait_for("level 17", Duration::from_secs(10), |d| {
            Ok(text(d, "tr[data-tag='plc/level'] [data-field=value]")?.contains("17"))
        })
        .expect("first value");
        let changed = Instant::now();
        put(
            &plc,
            Area::HoldingRegister,
            0,
            DataType::U16,
            ByteOrder::Abcd,
            &Value::U16(4242),
        );
        d.wait_for("level 4242 within 2 s", Duration::from_secs(2), |d| {
            Ok(text(d, "tr[data-tag='plc/level'] [data-field=value]")?.contains("4242"))
        })
        .expect("the new value on the page within 2 s");
        eprintln!(
            "a PLC value change reached the page in {:?}",
            changed.elapsed()
        );

        // One tag among 10,000.
        search(&d, "");
        d.wait_for("every tag counted", Duration::from_secs(5), |d| {
            Ok(text(d, "#tag-count")?.contains(&(BULK_TAGS as u32 + 3).to_string()))
        })
        .expect("all tags");
        search(&d, "bulk_07777");
        d.wait_for("bulk_07777 alone", Duration::from_secs(5), |d| {
            Ok(rows(d)? == ["bulk/bulk_07777"])
        })
        .expect("found among 10,000");

        // The trend plot of a counting register (hr:2 of the bulk PLC counts every 100 ms).
        search(&d, "bulk_0000");
        d.wait_for("ten bulk rows", Duration::from_secs(5), |d| {
            Ok(rows(d)?.len() == 10)
        })
        .expect("rows");
        d.find("tr[data-tag='bulk/bulk_00002']")
            .expect("row")
            .click()
            .expect("selected");
        d.wait_for(
            "a plot of at least 3 points",
            Duration::from_secs(10),
            |d| {
                let n = d
                    .find("#trend")?
                    .attribute("data-points")?
                    .unwrap_or_default();
                Ok(n.parse::<u32>().unwrap_or(0) >= 3)
            },
        )
        .expect("the trend plot draws points");
        no_errors(&d, "on the tags page");
        save(&d, "tags.png");

        // The MES command in the log, with who sent it and the answer.
        d.goto(&format!("{url}#tools")).expect("tools view");
        d.wait_for("the command in the log", Duration::from_secs(10), |d| {
            let log = text(d, "#command-log")?;
            Ok(
                log.contains("console-log-1")
                    && log.contains("plc/flow/_set")
                    && log.contains("ok"),
            )
        })
        .expect("the command log shows the command");

        // A stopped PLC is offline, with the reason, within 5 s.
        d.goto(&format!("{url}#overview")).expect("overview");
        let stopped = Instant::now();
        runtime.block_on(plc.stop());
        d.wait_for(
            "plc offline with its reason within 5 s",
            Duration::from_secs(5),
            |d| {
                let status = text(d, "#devices tr[data-device=plc] [data-field=status]")?;
                let why = text(d, "#devices tr[data-device=plc] [data-field=last_error]")?;
                Ok(status == "offline" && !why.trim().is_empty())
            },
        )
        .expect("offline within 5 s");
        eprintln!(
            "the stopped PLC showed offline in {:?}: {}",
            stopped.elapsed(),
            text(&d, "#devices tr[data-device=plc] [data-field=last_error]").unwrap_or_default()
        );

        // The config: an error at its line, then a valid edit with a new tag, then rollback.
        d.goto(&format!("{url}#config")).expect("config view");
        d.wait_for("the config text", Duration::from_secs(10), |d| {
            Ok(d.find("#config-text")?
                .property("value")?
                .as_str()
                .is_some_and(|t| t.contains("[admin]")))
        })
        .expect("config shown");
        let broken = original.replacen("poll_interval_ms = 100", "poll_interval_ms = \"fast\"", 1);
        let bad_line = broken
            .lines()
            .position(|l| l.contains("\"fast\""))
            .expect("the broken line")
            + 1;
        set_editor(&d, &broken);
        d.find("#config-check")
            .expect("check")
            .click()
            .expect("clicked");
        d.wait_for("the error at its line", Duration::from_secs(10), |d| {
            let errors = d.find_all("#config-errors li[data-line]")?;
            Ok(errors
                .iter()
                .any(|e| e.attribute("data-line").ok().flatten() == Some(bad_line.to_string())))
        })
        .expect("error shown at its line");

        let added = original.replacen(
            "  name = \"speed\"\n  address = \"ns=2;s=Filler.Speed\"\n",
            "  name = \"speed\"\n  address = \"ns=2;s=Filler.Speed\"\n  [[device.tag]]\n  name = \"setpoint_added\"\n  address = \"ns=2;s=Filler.Setpoint\"\n",
            1,
        );
        assert_ne!(added, original);
        set_editor(&d, &added);
        confirmed(&d, "#config-apply", "applied");
        d.goto(&format!("{url}#tags")).expect("tags view");
        search(&d, "setpoint_added");
        d.wait_for("the new tag with a value", Duration::from_secs(15), |d| {
            Ok(rows(d)? == ["ua/setpoint_added"]
                && !text(d, "tr[data-tag='ua/setpoint_added'] [data-field=quality]")?
                    .trim()
                    .is_empty())
        })
        .expect("the new tag appears");

        d.goto(&format!("{url}#config")).expect("config view");
        d.wait_for("rollback offered", Duration::from_secs(10), |d| {
            Ok(d.find("#config-rollback")?.property("disabled")? == json!(false))
        })
        .expect("rollback enabled");
        confirmed(&d, "#config-rollback", "rolled back");
        d.goto(&format!("{url}#tags")).expect("tags view");
        search(&d, "setpoint_added");
        d.wait_for("the added tag gone", Duration::from_secs(10), |d| {
            Ok(rows(d)?.is_empty())
        })
        .expect("rollback removed the tag");
        no_errors(&d, "after editing the config");
    });
    let result = session.await;
    let on_disk = std::fs::read_to_string(&path).expect("config file");
    let log = agent.log();
    agent.terminate().expect("agent stops");
    ua.stop().await;
    bulk.stop().await;
    mqtt.stop().await;
    broker.stop().expect("broker stops");
    if let Err(e) = result {
        panic!(
            "the browser session failed: {e}\nagent log tail:\n{}",
            log.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(on_disk, config, "rollback restored the original file");
    assert!(
        log.contains("config changed from the console and reloaded"),
        "{log}"
    );
}
