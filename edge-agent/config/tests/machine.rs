//! `[[machine]]` blocks as technicians write them: a full machine with its state map and
//! dispatch targets read into typed values, and every mistake (unknown devices and tags, tags
//! unfit for their role, read-only dispatch targets, reason codes outside their state's range)
//! reported at its line and column with a hint.

use std::io;
use std::path::Path;

use edge_config::{
    parse, Config, ConfigError, ConfigErrors, Dispatch, DispatchParameter, Machine, MachineState,
    SecretSource, StateEntry, TagRef,
};

struct NoSecrets;

impl SecretSource for NoSecrets {
    fn env(&self, _: &str) -> Option<String> {
        None
    }

    fn file(&self, _: &Path) -> io::Result<String> {
        Err(io::Error::new(io::ErrorKind::NotFound, "no secrets here"))
    }
}

const FILE: &str = "/etc/edge-agent/board.toml";

/// A config with one device `filler` whose tags suit every role; `machines` is appended.
fn config(machines: &str) -> String {
    format!(
        r#"[gateway]
id = "gw-line1"
data_dir = "/var/lib/edge-agent"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[[northbound]]
name = "mes"
url = "mqtt://127.0.0.1"

[[device]]
name = "filler"
protocol = "modbus-tcp"
host = "10.0.0.5"
  [[device.tag]]
  name = "good"
  address = "hr:0"
  type = "u32"
  [[device.tag]]
  name = "scrap"
  address = "hr:2"
  type = "u16"
  [[device.tag]]
  name = "order"
  address = "hr:10"
  type = "string:16"
  [[device.tag]]
  name = "state"
  address = "hr:20"
  type = "u16"
  [[device.tag]]
  name = "temperature"
  address = "hr:21"
  type = "f32"
  [[device.tag]]
  name = "scaled"
  address = "hr:23"
  type = "u16"
  scale = 0.1
  [[device.tag]]
  name = "next_order"
  address = "hr:30"
  type = "string:16"
  writable = true
  [[device.tag]]
  name = "target"
  address = "hr:40"
  type = "u32"
  writable = true
  [[device.tag]]
  name = "speed_sp"
  address = "hr:42"
  type = "u16"
  writable = true
  [[device.tag]]
  name = "new_order"
  address = "coil:5"
  type = "bool"
  writable = true
  [[device.tag]]
  name = "running"
  address = "coil:0"
  type = "bool"

{machines}"#
    )
}

/// A tag of the device `filler`, as a machine names it.
fn filler(tag: &str) -> TagRef {
    TagRef::new("filler", tag)
}

fn parse_ok(src: &str) -> Config {
    match parse(src, Path::new(FILE), &NoSecrets) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn parse_err(src: &str) -> Vec<ConfigError> {
    match parse(src, Path::new(FILE), &NoSecrets) {
        Ok(c) => panic!("expected errors, got {:#?}", c.machines),
        Err(ConfigErrors(e)) => e,
    }
}

fn only_error(src: &str) -> ConfigError {
    let errors = parse_err(src);
    assert_eq!(
        errors.len(),
        1,
        "expected one error, got:\n{}",
        ConfigErrors(errors.clone())
    );
    errors.into_iter().next().expect("one error")
}

/// The 1-based line of the first line of `src` containing `needle`.
fn line_of(src: &str, needle: &str) -> usize {
    src.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` not in the config"))
}

const MACHINE: &str = r#"[[machine]]
name = "filler-1"
device = "filler"
work_order_tag = "order"
good_count_tag = "good"
scrap_count_tag = "scrap"
state_tag = "state"
"#;

const STATES: &str = r#"
  [[machine.state]]
  value = 1
  state = "running"
  [[machine.state]]
  value = 3
  state = "down"
  reason_code = 180100
  reason = "filler valve jammed"
"#;

#[test]
fn a_full_machine_reads_into_typed_values_with_defaults_filled_in() {
    let src = config(&format!(
        r#"{MACHINE}max_count_step = 500
{STATES}
  [machine.dispatch]
  work_order_tag = "next_order"
  quantity_tag = "target"
  handshake_tag = "new_order"
    [[machine.dispatch.parameter]]
    name = "speed"
    tag = "speed_sp"
    required = true
"#
    ));
    let cfg = parse_ok(&src);
    assert_eq!(
        cfg.machines,
        vec![Machine {
            name: "filler-1".into(),
            device: "filler".into(),
            work_order_tag: Some(filler("order")),
            product_tag: None,
            good_count_tag: Some(filler("good")),
            scrap_count_tag: Some(filler("scrap")),
            state_tag: Some(filler("state")),
            max_count_step: 500,
            states: vec![
                StateEntry {
                    value: 1,
                    state: MachineState::Running,
                    reason_code: 10_000,
                    reason: None,
                },
                StateEntry {
                    value: 3,
                    state: MachineState::Down,
                    reason_code: 180_100,
                    reason: Some("filler valve jammed".into()),
                },
            ],
            dispatch: Some(Dispatch {
                work_order_tag: filler("next_order"),
                product_tag: None,
                quantity_tag: Some(filler("target")),
                handshake_tag: Some(filler("new_order")),
                parameters: vec![DispatchParameter {
                    name: "speed".into(),
                    tag: filler("speed_sp"),
                    required: true,
                }],
            }),
        }]
    );
}

#[test]
fn a_config_without_machines_has_none_and_a_minimal_machine_takes_the_defaults() {
    assert!(parse_ok(&config("")).machines.is_empty());
    let cfg = parse_ok(&config(
        "[[machine]]\nname = \"m\"\ndevice = \"filler\"\ngood_count_tag = \"good\"\n",
    ));
    let m = &cfg.machines[0];
    assert_eq!(m.max_count_step, Machine::DEFAULT_MAX_COUNT_STEP);
    assert_eq!((m.states.len(), m.dispatch.is_none()), (0, true));
}

#[test]
fn every_state_takes_its_general_reason_code_by_default() {
    let mut entries = String::new();
    for (i, s) in MachineState::ALL.iter().enumerate() {
        entries.push_str(&format!(
            "  [[machine.state]]\n  value = {i}\n  state = \"{s}\"\n"
        ));
    }
    let cfg = parse_ok(&config(&format!(
        "[[machine]]\nname = \"m\"\ndevice = \"filler\"\nstate_tag = \"state\"\n{entries}"
    )));
    let codes: Vec<u32> = cfg.machines[0]
        .states
        .iter()
        .map(|s| s.reason_code)
        .collect();
    assert_eq!(
        codes,
        vec![10_000, 170_000, 220_000, 100_000, 90_000, 30_000]
    );
}

#[test]
fn an_unknown_device_is_an_error_at_its_name_with_a_suggestion() {
    let src = config("[[machine]]\nname = \"m\"\ndevice = \"filer\"\ngood_count_tag = \"good\"\n");
    let e = only_error(&src);
    assert_eq!(e.message, "unknown device `filer`");
    assert_eq!(
        (e.line, e.column),
        (line_of(&src, "device = \"filer\""), 10)
    );
    assert_eq!(e.hint.as_deref(), Some("did you mean `filler`?"));
}

#[test]
fn an_unknown_tag_is_an_error_at_its_name_with_a_suggestion_or_the_list() {
    let src = config("[[machine]]\nname = \"m\"\ndevice = \"filler\"\ngood_count_tag = \"god\"\n");
    let e = only_error(&src);
    assert_eq!(e.message, "unknown tag `god` on device `filler`");
    assert_eq!(e.line, line_of(&src, "\"god\""));
    assert_eq!(e.hint.as_deref(), Some("did you mean `good`?"));
    let e = only_error(&config(
        "[[machine]]\nname = \"m\"\ndevice = \"filler\"\nstate_tag = \"xyzzy\"\n",
    ));
    assert!(
        e.hint
            .as_deref()
            .is_some_and(|h| h.starts_with("the tags of device `filler` are `good`")),
        "{e}"
    );
}

#[test]
fn tags_unfit_for_their_role_are_refused_saying_what_is_needed() {
    let cases = [
        ("good_count_tag = \"temperature\"", "`good_count_tag` needs an unscaled integer tag (u16, u32, u64, i16, i32 or i64); tag `temperature` is f32"),
        ("scrap_count_tag = \"scaled\"", "`scrap_count_tag` needs an unscaled integer tag (u16, u32, u64, i16, i32 or i64); tag `scaled` is u16, scaled"),
        ("work_order_tag = \"running\"", "`work_order_tag` needs a string tag or an unscaled integer tag; tag `running` is bool"),
        ("product_tag = \"temperature\"", "`product_tag` needs a string tag or an unscaled integer tag; tag `temperature` is f32"),
        ("state_tag = \"order\"", "`state_tag` needs an unscaled integer tag or a bool tag; tag `order` is string:16"),
    ];
    for (line, message) in cases {
        let src = config(&format!(
            "[[machine]]\nname = \"m\"\ndevice = \"filler\"\n{line}\n"
        ));
        let errors = parse_err(&src);
        assert_eq!(errors[0].message, message, "{line}");
        assert_eq!(errors[0].line, line_of(&src, line), "{line}");
    }
}

#[test]
fn a_bool_state_word_is_fine_and_maps_zero_and_one_only() {
    let ok = config(
        "[[machine]]\nname = \"m\"\ndevice = \"filler\"\nstate_tag = \"running\"\n  [[machine.state]]\n  value = 0\n  state = \"idle\"\n  [[machine.state]]\n  value = 1\n  state = \"running\"\n",
    );
    assert_eq!(parse_ok(&ok).machines[0].states.len(), 2);
    let e = only_error(&ok.replace("value = 1", "value = 2"));
    assert_eq!(e.message, "the state word cannot hold 2: it holds 0 to 1");
}

#[test]
fn a_reason_code_outside_its_states_range_names_the_range_and_the_state_it_belongs_to() {
    let src = config(&format!("{MACHINE}{}", STATES.replace("180100", "10500")));
    let e = only_error(&src);
    assert_eq!(
        e.message,
        "reason code 10500 is outside the range of state `down`"
    );
    assert_eq!(
        e.hint.as_deref(),
        Some("reason codes of `down` lie from 180000 to 229999; 10500 is a code of `running`")
    );
    assert_eq!(e.line, line_of(&src, "reason_code = 10500"));
    let e = only_error(&config(&format!(
        "{MACHINE}{}",
        STATES.replace("180100", "5")
    )));
    assert_eq!(
        e.hint.as_deref(),
        Some("reason codes of `down` lie from 180000 to 229999 (UMH state model)")
    );
}

#[test]
fn an_unknown_state_name_suggests_the_closest() {
    let e = only_error(&config(&format!(
        "{MACHINE}{}",
        STATES.replace("\"down\"", "\"dwon\"")
    )));
    assert_eq!(e.message, "unknown state `dwon`");
    assert_eq!(e.hint.as_deref(), Some("did you mean `down`?"));
}

#[test]
fn a_state_value_mapped_twice_is_an_error_at_the_second_naming_the_first() {
    let src = config(&format!(
        "{MACHINE}{}",
        STATES.replace("value = 3", "value = 1")
    ));
    let e = only_error(&src);
    let first = line_of(&src, "value = 1");
    assert_eq!(
        e.message,
        format!("state value 1 is mapped twice: already on line {first}")
    );
    assert!(e.line > first);
}

#[test]
fn a_state_tag_needs_a_state_map_and_a_state_map_needs_a_state_tag() {
    let e = only_error(&config(MACHINE));
    assert_eq!(
        e.message,
        "state tag `state` has no [[machine.state]] entries"
    );
    let without = MACHINE.replace("state_tag = \"state\"\n", "");
    let e = only_error(&config(&format!("{without}{STATES}")));
    assert_eq!(e.message, "[[machine.state]] without a `state_tag`");
}

#[test]
fn a_dispatch_target_must_be_writable_and_of_a_fitting_type() {
    let dispatch = |body: &str| {
        config(&format!(
            "[[machine]]\nname = \"m\"\ndevice = \"filler\"\n  [machine.dispatch]\n{body}"
        ))
    };
    let src = dispatch("  work_order_tag = \"order\"\n");
    let e = only_error(&src);
    assert_eq!(e.message, "`work_order_tag`: tag `order` is not writable");
    assert_eq!(
        e.hint.as_deref(),
        Some("dispatches write to it: set `writable = true` on tag `order` of device `filler`")
    );
    assert_eq!(e.line, line_of(&src, "work_order_tag = \"order\""));
    let e = only_error(&dispatch(
        "  work_order_tag = \"next_order\"\n  handshake_tag = \"target\"\n",
    ));
    assert_eq!(
        e.message,
        "`handshake_tag` needs a bool tag; tag `target` is u32"
    );
    let e = only_error(&dispatch(
        "  work_order_tag = \"next_order\"\n  quantity_tag = \"next_order\"\n",
    ));
    assert_eq!(
        e.message,
        "`quantity_tag` needs a numeric tag; tag `next_order` is string:16"
    );
    let e = only_error(&dispatch("  quantity_tag = \"target\"\n"));
    assert_eq!(e.message, "missing `work_order_tag` in [machine.dispatch]");
    let e = only_error(&dispatch(
        "  work_order_tag = \"next_order\"\n    [[machine.dispatch.parameter]]\n    name = \"speed\"\n    tag = \"good\"\n",
    ));
    assert_eq!(e.message, "`tag`: tag `good` is not writable");
}

#[test]
fn a_dispatch_writes_each_tag_once_and_names_each_parameter_once() {
    let src = config(
        "[[machine]]\nname = \"m\"\ndevice = \"filler\"\n  [machine.dispatch]\n  work_order_tag = \"next_order\"\n  quantity_tag = \"target\"\n    [[machine.dispatch.parameter]]\n    name = \"speed\"\n    tag = \"target\"\n",
    );
    let e = only_error(&src);
    assert_eq!(
        e.message,
        "tag `filler/target` is written twice by this dispatch"
    );
    assert_eq!(e.line, line_of(&src, "    tag = \"target\""));
    let e = only_error(&config(
        "[[machine]]\nname = \"m\"\ndevice = \"filler\"\n  [machine.dispatch]\n  work_order_tag = \"next_order\"\n    [[machine.dispatch.parameter]]\n    name = \"speed\"\n    tag = \"speed_sp\"\n    [[machine.dispatch.parameter]]\n    name = \"speed\"\n    tag = \"target\"\n",
    ));
    assert!(
        e.message.starts_with("duplicate parameter name `speed`"),
        "{e}"
    );
}

#[test]
fn max_count_step_must_leave_wrap_arounds_distinguishable_from_resets() {
    let src = config(&format!("{MACHINE}max_count_step = 40000\n{STATES}"));
    let e = only_error(&src);
    assert_eq!(
        e.message,
        "`max_count_step` (40000) must be at most 32768 for a 16-bit counter"
    );
    assert_eq!(e.line, line_of(&src, "max_count_step"));
    // Only the 32-bit counter: 40000 is fine.
    let src = config(&format!(
        "{}max_count_step = 40000\n{STATES}",
        MACHINE.replace("scrap_count_tag = \"scrap\"\n", "")
    ));
    assert_eq!(parse_ok(&src).machines[0].max_count_step, 40_000);
    let e = only_error(&config(&format!("{MACHINE}max_count_step = 0\n{STATES}")));
    assert!(
        e.message.starts_with("`max_count_step` must be from 1"),
        "{e}"
    );
}

#[test]
fn a_machine_must_name_at_least_one_production_fact() {
    let src = config("[[machine]]\nname = \"m\"\ndevice = \"filler\"\n");
    let e = only_error(&src);
    assert_eq!(e.message, "this machine names none of its production facts");
    assert_eq!(e.line, line_of(&src, "[[machine]]"));
}

#[test]
fn machine_names_are_topic_levels_unique_and_not_reserved() {
    let two = format!("{MACHINE}{STATES}\n{MACHINE}{STATES}");
    let e = only_error(&config(&two));
    assert!(
        e.message.starts_with("duplicate machine name `filler-1`"),
        "{e}"
    );
    let e = only_error(&config(&format!(
        "{}{STATES}",
        MACHINE.replace("filler-1", "_mes")
    )));
    assert_eq!(e.message, "the machine name `_mes` must not start with `_`");
    let e = only_error(&config(&format!(
        "{}{STATES}",
        MACHINE.replace("filler-1", "filler 1")
    )));
    assert!(e.message.contains("contains ` `"), "{e}");
}

#[test]
fn unknown_keys_in_machines_states_and_dispatches_are_errors_with_suggestions() {
    let src = config(&format!(
        "{MACHINE}good_cuont_tag = \"good\"\n{}\n  [machine.dispatch]\n  work_order_tag = \"next_order\"\n  handshake_tg = \"new_order\"\n",
        STATES.replace("reason = ", "reasn = ")
    ));
    let errors = parse_err(&src);
    let found: Vec<(&str, Option<&str>)> = errors
        .iter()
        .map(|e| (e.message.as_str(), e.hint.as_deref()))
        .collect();
    assert_eq!(
        found,
        vec![
            (
                "unknown key `good_cuont_tag` in [[machine]]",
                Some("did you mean `good_count_tag`?")
            ),
            (
                "unknown key `reasn` in [[machine.state]]",
                Some("did you mean `reason`?")
            ),
            (
                "unknown key `handshake_tg` in [machine.dispatch]",
                Some("did you mean `handshake_tag`?")
            ),
        ]
    );
}

#[test]
fn every_mistake_in_the_machines_is_reported_at_once_in_file_order() {
    let src = config(
        r#"[[machine]]
name = "a"
device = "filler"
good_count_tag = "temperature"
state_tag = "state"
  [[machine.state]]
  value = 1
  state = "runing"
  [[machine.state]]
  value = 2
  state = "idle"
  reason_code = 1

[[machine]]
name = "b"
device = "press"
good_count_tag = "good"
"#,
    );
    let errors = parse_err(&src);
    let lines: Vec<(usize, &str)> = errors
        .iter()
        .map(|e| (e.line, e.message.as_str()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (line_of(&src, "good_count_tag = \"temperature\""), "`good_count_tag` needs an unscaled integer tag (u16, u32, u64, i16, i32 or i64); tag `temperature` is f32"),
            (line_of(&src, "\"runing\""), "unknown state `runing`"),
            (line_of(&src, "reason_code = 1"), "reason code 1 is outside the range of state `idle`"),
            (line_of(&src, "\"press\""), "unknown device `press`"),
        ]
    );
}

/// An OPC UA view of the filler, appended after the Modbus `filler` by [`with_ua`].
const UA_DEVICE: &str = r#"[[device]]
name = "filler_ua"
protocol = "opcua"
endpoint = "opc.tcp://10.0.0.6:4840"
  [[device.tag]]
  name = "order"
  address = "ns=2;s=Filler.WorkOrder"
  [[device.tag]]
  name = "product"
  address = "ns=2;s=Filler.Product"
  type = "string:32"
  [[device.tag]]
  name = "good"
  address = "ns=2;s=Filler.GoodCount"
  type = "u32"
  [[device.tag]]
  name = "scrap"
  address = "ns=2;s=Filler.ScrapCount"
  [[device.tag]]
  name = "state"
  address = "ns=2;s=Filler.State"
  [[device.tag]]
  name = "next_order"
  address = "ns=2;s=Filler.NextOrder"
  mode = "polling"
  writable = true
  [[device.tag]]
  name = "recipe"
  address = "ns=2;s=Filler.Recipe"
  mode = "polling"
"#;

/// The Modbus `filler`, the OPC UA `filler_ua`, then `machines`.
fn with_ua(machines: &str) -> String {
    config(&format!("{UA_DEVICE}\n{machines}"))
}

fn filler_ua(tag: &str) -> TagRef {
    TagRef::new("filler_ua", tag)
}

#[test]
fn a_machine_on_an_opcua_device_reads_with_tag_refs_naming_that_device() {
    let src = with_ua(
        r#"[[machine]]
name = "filler-ua"
device = "filler_ua"
work_order_tag = "order"
product_tag = "product"
good_count_tag = "good"
state_tag = "state"
  [[machine.state]]
  value = 1
  state = "running"
  [machine.dispatch]
  work_order_tag = "next_order"
"#,
    );
    let cfg = parse_ok(&src);
    assert_eq!(
        cfg.machines,
        vec![Machine {
            name: "filler-ua".into(),
            device: "filler_ua".into(),
            work_order_tag: Some(filler_ua("order")),
            product_tag: Some(filler_ua("product")),
            good_count_tag: Some(filler_ua("good")),
            scrap_count_tag: None,
            state_tag: Some(filler_ua("state")),
            max_count_step: Machine::DEFAULT_MAX_COUNT_STEP,
            states: vec![StateEntry {
                value: 1,
                state: MachineState::Running,
                reason_code: 10_000,
                reason: None,
            }],
            dispatch: Some(Dispatch {
                work_order_tag: filler_ua("next_order"),
                product_tag: None,
                quantity_tag: None,
                handshake_tag: None,
                parameters: vec![],
            }),
        }]
    );
    assert_eq!(
        cfg.machines[0]
            .work_order_tag
            .as_ref()
            .map(|t| t.to_string()),
        Some("filler_ua/order".to_owned())
    );
}

#[test]
fn a_machine_mixes_devices_with_device_slash_tag_whatever_their_protocol() {
    // The work order and the state from the OPC UA server, the counters from the Modbus PLC.
    let src = with_ua(
        r#"[[machine]]
name = "filler"
device = "filler_ua"
work_order_tag = "order"
good_count_tag = "filler/good"
scrap_count_tag = "filler/scrap"
state_tag = "state"
  [[machine.state]]
  value = 1
  state = "running"
  [machine.dispatch]
  work_order_tag = "next_order"
  quantity_tag = "filler/target"
  handshake_tag = "filler/new_order"
"#,
    );
    let m = &parse_ok(&src).machines[0];
    assert_eq!(m.device, "filler_ua");
    assert_eq!(
        (
            &m.work_order_tag,
            &m.good_count_tag,
            &m.scrap_count_tag,
            &m.state_tag
        ),
        (
            &Some(filler_ua("order")),
            &Some(filler("good")),
            &Some(filler("scrap")),
            &Some(filler_ua("state"))
        )
    );
    let d = m.dispatch.as_ref().expect("a dispatch");
    assert_eq!(
        (&d.work_order_tag, &d.quantity_tag, &d.handshake_tag),
        (
            &filler_ua("next_order"),
            &Some(filler("target")),
            &Some(filler("new_order"))
        )
    );
    // The other way round: a Modbus machine taking its work order from the OPC UA server.
    let src = config(&format!(
        "{UA_DEVICE}\n{}{STATES}",
        MACHINE.replace("\"order\"", "\"filler_ua/order\"")
    ));
    let m = &parse_ok(&src).machines[0];
    assert_eq!(m.work_order_tag, Some(filler_ua("order")));
    assert_eq!(m.good_count_tag, Some(filler("good")));
}

#[test]
fn a_counter_from_another_device_still_bounds_max_count_step() {
    let src = with_ua(
        "[[machine]]\nname = \"m\"\ndevice = \"filler_ua\"\ngood_count_tag = \"good\"\nscrap_count_tag = \"filler/scrap\"\nmax_count_step = 40000\n",
    );
    let e = only_error(&src);
    assert_eq!(
        e.message,
        "`max_count_step` (40000) must be at most 32768 for a 16-bit counter"
    );
    assert_eq!((e.line, e.column), (line_of(&src, "max_count_step"), 18));
}

#[test]
fn an_unknown_opcua_tag_is_an_error_at_its_key_with_the_tags_that_exist() {
    let src =
        with_ua("[[machine]]\nname = \"m\"\ndevice = \"filler_ua\"\ngood_count_tag = \"xyzzy\"\n");
    let e = only_error(&src);
    assert_eq!(e.message, "unknown tag `xyzzy` on device `filler_ua`");
    assert_eq!((e.line, e.column), (line_of(&src, "\"xyzzy\""), 18));
    assert_eq!(
        e.hint.as_deref(),
        Some("the tags of device `filler_ua` are `order`, `product`, `good`, `scrap`, `state`, `next_order` or `recipe`"),
        "the hint lists the OPC UA device's tags"
    );
    // Close to one: the suggestion, also through `device/tag` from a Modbus machine.
    let src = config(&format!(
        "{UA_DEVICE}\n[[machine]]\nname = \"m\"\ndevice = \"filler\"\nstate_tag = \"filler_ua/stat\"\n  [[machine.state]]\n  value = 1\n  state = \"running\"\n"
    ));
    let e = only_error(&src);
    assert_eq!(e.message, "unknown tag `stat` on device `filler_ua`");
    assert_eq!((e.line, e.column), (line_of(&src, "filler_ua/stat"), 13));
    assert_eq!(e.hint.as_deref(), Some("did you mean `state`?"));
}

#[test]
fn device_slash_tag_naming_an_unknown_device_lists_the_devices_or_suggests_one() {
    let src = with_ua(
        "[[machine]]\nname = \"m\"\ndevice = \"filler\"\ngood_count_tag = \"press/good\"\n",
    );
    let e = only_error(&src);
    assert_eq!(e.message, "`good_count_tag` names unknown device `press`");
    assert_eq!((e.line, e.column), (line_of(&src, "press/good"), 18));
    assert_eq!(
        e.hint.as_deref(),
        Some("the devices are `filler` or `filler_ua`")
    );
    let src = with_ua(
        "[[machine]]\nname = \"m\"\ndevice = \"filler\"\n  [machine.dispatch]\n  work_order_tag = \"filer_ua/next_order\"\n",
    );
    let e = only_error(&src);
    assert_eq!(
        e.message,
        "`work_order_tag` names unknown device `filer_ua`"
    );
    assert_eq!(
        (e.line, e.column),
        (line_of(&src, "filer_ua/next_order"), 20)
    );
    assert_eq!(
        e.hint.as_deref(),
        Some("did you mean `filler_ua/next_order`?")
    );
}

#[test]
fn an_opcua_counter_needs_its_type_to_tell_a_wrap_around_from_a_reset() {
    let src = with_ua(
        "[[machine]]\nname = \"m\"\ndevice = \"filler_ua\"\ngood_count_tag = \"good\"\nscrap_count_tag = \"scrap\"\n",
    );
    let e = only_error(&src);
    assert_eq!(
        e.message,
        "`scrap_count_tag` needs an unscaled integer tag (u16, u32, u64, i16, i32 or i64); tag `scrap` is an OPC UA tag without `type`"
    );
    assert_eq!((e.line, e.column), (line_of(&src, "scrap_count_tag"), 19));
    assert_eq!(
        e.hint.as_deref(),
        Some("a counter's width tells a wrap-around from a reset: add type = \"u32\" (or the variable's integer type) to tag `scrap` of device `filler_ua`")
    );
    let typed = src.replace(
        "address = \"ns=2;s=Filler.ScrapCount\"\n",
        "address = \"ns=2;s=Filler.ScrapCount\"\n  type = \"u32\"\n",
    );
    let m = &parse_ok(&typed).machines[0];
    assert_eq!(m.scrap_count_tag, Some(filler_ua("scrap")));
    // The same untyped tag is fine as a state word or a work order: no width is needed.
    let src =
        with_ua("[[machine]]\nname = \"m\"\ndevice = \"filler_ua\"\nwork_order_tag = \"scrap\"\n");
    assert_eq!(
        parse_ok(&src).machines[0].work_order_tag,
        Some(filler_ua("scrap"))
    );
}

#[test]
fn a_dispatch_may_target_a_writable_opcua_tag_but_not_a_read_only_one() {
    let dispatch = |body: &str| {
        with_ua(&format!(
            "[[machine]]\nname = \"m\"\ndevice = \"filler_ua\"\n  [machine.dispatch]\n{body}"
        ))
    };
    let cfg = parse_ok(&dispatch(
        "  work_order_tag = \"next_order\"\n    [[machine.dispatch.parameter]]\n    name = \"speed\"\n    tag = \"filler/speed_sp\"\n",
    ));
    let d = cfg.machines[0].dispatch.as_ref().expect("a dispatch");
    assert_eq!(d.work_order_tag, filler_ua("next_order"));
    assert_eq!(
        d.parameters,
        vec![DispatchParameter {
            name: "speed".into(),
            tag: filler("speed_sp"),
            required: false,
        }]
    );
    let src = dispatch("  work_order_tag = \"recipe\"\n");
    let e = only_error(&src);
    assert_eq!(e.message, "`work_order_tag`: tag `recipe` is not writable");
    assert_eq!(
        (e.line, e.column),
        (line_of(&src, "work_order_tag = \"recipe\""), 20)
    );
    assert_eq!(
        e.hint.as_deref(),
        Some("dispatches write to it: set `writable = true` on tag `recipe` of device `filler_ua`")
    );
    // Through `device/tag` from a Modbus machine, the same check and the same message.
    let src = config(&format!(
        "{UA_DEVICE}\n[[machine]]\nname = \"m\"\ndevice = \"filler\"\n  [machine.dispatch]\n  work_order_tag = \"next_order\"\n    [[machine.dispatch.parameter]]\n    name = \"recipe\"\n    tag = \"filler_ua/recipe\"\n"
    ));
    let e = only_error(&src);
    assert_eq!(e.message, "`tag`: tag `recipe` is not writable");
    assert_eq!((e.line, e.column), (line_of(&src, "filler_ua/recipe"), 11));
}

#[test]
fn a_tag_named_plainly_and_as_device_slash_tag_is_the_same_tag() {
    // `next_order` of the OPC UA device and of the Modbus one are two tags...
    let src = with_ua(
        "[[machine]]\nname = \"m\"\ndevice = \"filler_ua\"\n  [machine.dispatch]\n  work_order_tag = \"next_order\"\n  product_tag = \"filler/next_order\"\n",
    );
    let d = parse_ok(&src).machines[0]
        .dispatch
        .clone()
        .expect("a dispatch");
    assert_eq!(
        (d.work_order_tag, d.product_tag),
        (filler_ua("next_order"), Some(filler("next_order")))
    );
    // ...but `target` and `filler/target` of a `filler` machine are one.
    let src = config(
        "[[machine]]\nname = \"m\"\ndevice = \"filler\"\n  [machine.dispatch]\n  work_order_tag = \"next_order\"\n  quantity_tag = \"target\"\n    [[machine.dispatch.parameter]]\n    name = \"speed\"\n    tag = \"filler/target\"\n",
    );
    let e = only_error(&src);
    assert_eq!(
        e.message,
        "tag `filler/target` is written twice by this dispatch"
    );
    assert_eq!(e.line, line_of(&src, "tag = \"filler/target\""));
}
