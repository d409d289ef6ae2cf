//! `[[machine]]` (SPEC §6): which tags of a device carry a machine's production facts (work
//! order, product, good and scrap counters, state word), how state values map to states and
//! reason codes (`[[machine.state]]`), and where a dispatched work order is written
//! (`[machine.dispatch]`). A tag is one of the machine's device, or of any other device when
//! written `device/tag`, whatever the devices' protocols. Every tag is checked against its
//! device: it exists, its type suits its role, and dispatch targets are writable.

use std::collections::{HashMap, HashSet};

use edge_model::DataType;
use mes_bridge::MachineState;

use crate::device::{Device, Tag};
use crate::error::Diagnostics;
use crate::names::{check_name, Underscore, UniqueNames};
use crate::reader::{did_you_mean, quoted_list, Span, TableReader, Val};

/// `[[machine]]`: one machine whose production facts the MES receives on
/// `{root}/{machine}/_mes/...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// `name` (required): unique among the machines, letters, digits, `-` and `_`, not
    /// starting with `_`. The topic level of its events: `{root}/{name}/_mes/...`. It may
    /// equal its device's name.
    pub name: String,
    /// `device` (required): the `[[device]]` whose tags carry the machine's facts. A tag key
    /// below names a tag of this device (`"good_count"`), or of another device as
    /// `"device/tag"` (`"filler_ua/good_count"`), Modbus or OPC UA alike.
    pub device: String,
    /// `work_order_tag` (optional): a string or integer tag holding the current work order
    /// id; a change starts and completes work orders. Empty (or 0) means no order.
    pub work_order_tag: Option<TagRef>,
    /// `product_tag` (optional): a string or integer tag holding the current product id.
    pub product_tag: Option<TagRef>,
    /// `good_count_tag`, `scrap_count_tag` (optional): unscaled integer tags counting good
    /// and scrapped parts. They may wrap around at their width (u16 after 65535) and be reset
    /// by the PLC; counts stay right either way. An OPC UA counter needs its `type` (as
    /// `"u32"`): the width is what tells a wrap-around from a reset.
    pub good_count_tag: Option<TagRef>,
    /// See `good_count_tag`.
    pub scrap_count_tag: Option<TagRef>,
    /// `state_tag` (optional): an unscaled integer or bool tag holding the machine's state
    /// word, mapped by the `[[machine.state]]` entries (an OPC UA enumeration is an integer).
    pub state_tag: Option<TagRef>,
    /// `max_count_step` (1 to half the narrowest counter's range, default 10000): the most a
    /// counter can advance between two readings. A counter that drops by less than this
    /// across its largest value wrapped around; one that drops by more was reset by the PLC.
    pub max_count_step: u64,
    /// `[[machine.state]]`: what each value of the state word means (required with
    /// `state_tag`). Values not listed read as `unknown`.
    pub states: Vec<StateEntry>,
    /// `[machine.dispatch]` (optional): where a work order dispatched by the MES is written.
    pub dispatch: Option<Dispatch>,
}

/// `[[machine.state]]`: one value of the state word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// `value` (required): the state word's value (0 and 1 for a bool tag), each once.
    pub value: i64,
    /// `state` (required): `running`, `idle`, `down`, `changeover`, `material` or
    /// `unknown`, the groups of the UMH state model.
    pub state: MachineState,
    /// `reason_code` (optional): a UMH state code inside the state's range (running 10000 to
    /// 29999, unknown 30000 to 59999, material 60000 to 99999, changeover 100000 to 139999,
    /// idle 140000 to 179999, down 180000 to 229999). Default: the state's general code
    /// (10000, 30000, 90000, 100000, 170000, 220000).
    pub reason_code: u32,
    /// `reason` (optional): text for people, as in `"filler valve jammed"`.
    pub reason: Option<String>,
}

/// `[machine.dispatch]`: the PLC tags a dispatched work order is written to, in this order:
/// work order, product, quantity, parameters (in config order), handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// `work_order_tag` (required): a writable string or integer tag for the work order id.
    pub work_order_tag: TagRef,
    /// `product_tag` (optional): a writable string or integer tag for the product id.
    pub product_tag: Option<TagRef>,
    /// `quantity_tag` (optional): a writable numeric tag for the target quantity.
    pub quantity_tag: Option<TagRef>,
    /// `handshake_tag` (optional): a writable bool tag set `true` after everything else, to
    /// tell the PLC a new order is ready (the PLC clears it when it has taken the order).
    pub handshake_tag: Option<TagRef>,
    /// `[[machine.dispatch.parameter]]`: named parameters the dispatch may carry.
    pub parameters: Vec<DispatchParameter>,
}

/// `[[machine.dispatch.parameter]]`: one named parameter of a dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchParameter {
    /// `name` (required): the key in the dispatch's `parameters` object.
    pub name: String,
    /// `tag` (required): the writable tag it is written to.
    pub tag: TagRef,
    /// `required` (default false): a dispatch without it is rejected.
    pub required: bool,
}

impl Machine {
    pub const DEFAULT_MAX_COUNT_STEP: u64 = 10_000;
}

/// A tag of a named device, as a machine refers to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagRef {
    pub device: String,
    pub tag: String,
}

impl TagRef {
    pub fn new(device: &str, tag: &str) -> TagRef {
        TagRef {
            device: device.to_owned(),
            tag: tag.to_owned(),
        }
    }
}

impl std::fmt::Display for TagRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.device, self.tag)
    }
}

/// What a tag is used for, and so which types it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A work order or product id: a string or an unscaled integer.
    Id,
    /// A production counter: an unscaled integer.
    Counter,
    /// A state word: an unscaled integer or a bool.
    State,
    /// A target quantity: any number.
    Quantity,
    /// A handshake bit: a bool.
    Handshake,
    /// A dispatch parameter: anything writable.
    Any,
}

impl Role {
    /// Whether the tag's type suits the role. An OPC UA tag without `type` has the server's
    /// type, unknown here: it suits every role but a counter, whose width must be known.
    fn accepts(self, tag: &Tag) -> bool {
        let unscaled = tag.scale == 1.0 && tag.offset == 0.0;
        let Some(dt) = tag.data_type() else {
            return match self {
                Role::Counter => false,
                Role::Id | Role::State => unscaled,
                Role::Quantity | Role::Handshake | Role::Any => true,
            };
        };
        let integer = matches!(
            dt,
            DataType::I16
                | DataType::U16
                | DataType::I32
                | DataType::U32
                | DataType::I64
                | DataType::U64
        );
        match self {
            Role::Id => matches!(dt, DataType::String(_)) || (integer && unscaled),
            Role::Counter => integer && unscaled,
            Role::State => (integer && unscaled) || dt == DataType::Bool,
            Role::Quantity => dt.is_numeric(),
            Role::Handshake => dt == DataType::Bool,
            Role::Any => true,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Role::Id => "a string tag or an unscaled integer tag",
            Role::Counter => "an unscaled integer tag (u16, u32, u64, i16, i32 or i64)",
            Role::State => "an unscaled integer tag or a bool tag",
            Role::Quantity => "a numeric tag",
            Role::Handshake => "a bool tag",
            Role::Any => "a tag",
        }
    }
}

/// The devices a machine's tag keys may name: its own (`None` when its name is wrong or
/// the devices could not be read, both reported, and then the tag checks are left out) and
/// every configured one, for `device/tag`.
#[derive(Clone, Copy)]
struct Scope<'d> {
    home: Option<&'d Device>,
    devices: Option<&'d [Device]>,
}

pub(crate) fn read_machines(
    cx: &mut Diagnostics<'_>,
    root: &mut TableReader<'_, '_>,
    devices: Option<&[Device]>,
) -> Option<Vec<Machine>> {
    let tables = match root.tables(cx, "machine", "[[machine]]") {
        Val::Absent => return Some(Vec::new()),
        Val::Invalid => return None,
        Val::Present(tables, _) => tables,
    };
    let mut names = UniqueNames::new("machine name", "");
    let mut all = Some(Vec::with_capacity(tables.len()));
    for mut t in tables {
        let machine = read_machine(cx, &mut t, devices, &mut names);
        t.finish(cx);
        match (machine, all.as_mut()) {
            (Some(m), Some(all)) => all.push(m),
            _ => all = None,
        }
    }
    all
}

fn read_machine(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    devices: Option<&[Device]>,
    names: &mut UniqueNames,
) -> Option<Machine> {
    let name = t.string(cx, "name");
    let name = t
        .require(cx, "name", name, "name = \"filler\"")
        .filter(|(name, span)| {
            check_name(cx, span, "machine name", name, Underscore::Reserved)
                && names.insert(cx, span, name)
        });
    let device_name = t.text(cx, "device");
    let device_name = t.require(cx, "device", device_name, "device = \"filler\"");
    let mut ok = true;
    let home: Option<&Device> = match (&device_name, devices) {
        (Some((d, span)), Some(devices)) => {
            let found = devices.iter().find(|x| x.name == *d);
            if found.is_none() {
                let known: Vec<&str> = devices.iter().map(|x| x.name.as_str()).collect();
                let hint = match did_you_mean(d, known.iter().copied()) {
                    Some(best) => format!("did you mean `{best}`?"),
                    None => format!("the devices are {}", quoted_list(&known)),
                };
                cx.error(span, format!("unknown device `{d}`"), Some(hint));
                ok = false;
            }
            found
        }
        _ => None,
    };

    let scope = Scope { home, devices };
    let work_order = tag_key(cx, t, "work_order_tag", scope, Role::Id, false);
    let product = tag_key(cx, t, "product_tag", scope, Role::Id, false);
    let good = tag_key(cx, t, "good_count_tag", scope, Role::Counter, false);
    let scrap = tag_key(cx, t, "scrap_count_tag", scope, Role::Counter, false);
    let state = tag_key(cx, t, "state_tag", scope, Role::State, false);
    let max_step = t.integer::<u64>(cx, "max_count_step", 1..=i64::MAX);
    let max_count_step = check_max_step(cx, t, max_step, [&good, &scrap]);
    let states = read_states(cx, t, state.as_ref());
    let dispatch = read_dispatch(cx, t, scope);

    let (work_order, product, good, scrap, state) = (
        work_order?.map(|(n, _)| n.tag),
        product?.map(|(n, _)| n.tag),
        good?,
        scrap?,
        state?,
    );
    let (states, dispatch) = (states?, dispatch?);
    if work_order.is_none()
        && good.is_none()
        && scrap.is_none()
        && state.is_none()
        && dispatch.is_none()
    {
        cx.structural(
            &t.span(),
            "this machine names none of its production facts",
            Some("add work_order_tag, good_count_tag, scrap_count_tag, state_tag or [machine.dispatch], naming tags of its device (`tag`) or of another one (`device/tag`)".to_owned()),
        );
        return None;
    }
    if !ok {
        return None;
    }
    Some(Machine {
        name: name?.0.to_owned(),
        device: device_name?.0.to_owned(),
        work_order_tag: work_order,
        product_tag: product,
        good_count_tag: good.map(|(n, _)| n.tag),
        scrap_count_tag: scrap.map(|(n, _)| n.tag),
        state_tag: state.map(|(n, _)| n.tag),
        max_count_step: max_count_step?,
        states,
        dispatch,
    })
}

/// A tag named by a machine, with the facts about it the checks need.
#[derive(Debug, Clone)]
struct NamedTag {
    tag: TagRef,
    data_type: Option<DataType>,
}

/// Reads a key naming a tag (`tag` of the machine's device, or `device/tag`) and checks
/// that the tag suits `role` (and is writable, if `writable`). `Some(None)`: the key is
/// absent; `None`: invalid (reported).
fn tag_key(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    key: &'static str,
    scope: Scope<'_>,
    role: Role,
    writable: bool,
) -> Option<Option<(NamedTag, Span)>> {
    let (text, span) = match t.text(cx, key) {
        Val::Absent => return Some(None),
        Val::Invalid => return None,
        Val::Present(text, span) => (text.trim().to_owned(), span),
    };
    let (device, name) = match text.split_once('/') {
        Some((device, name)) => {
            let devices = scope.devices?;
            if name.is_empty() {
                cx.error(
                    &span,
                    format!("`{key}` names no tag after `{device}/`"),
                    Some(format!(
                        "write `{device}/TAG`, TAG a tag of device `{device}`"
                    )),
                );
                return None;
            }
            let Some(found) = devices.iter().find(|d| d.name == device) else {
                let known: Vec<&str> = devices.iter().map(|x| x.name.as_str()).collect();
                let hint = match did_you_mean(device, known.iter().copied()) {
                    Some(best) => format!("did you mean `{best}/{name}`?"),
                    None => format!("the devices are {}", quoted_list(&known)),
                };
                cx.error(
                    &span,
                    format!("`{key}` names unknown device `{device}`"),
                    Some(hint),
                );
                return None;
            };
            (Some(found), name)
        }
        None => (scope.home, text.as_str()),
    };
    let Some(device) = device else {
        // The machine's own device is unknown (reported): nothing to check against.
        return None;
    };
    let tag = check_tag(cx, &span, key, device, name, role, writable)?;
    Some(Some((
        NamedTag {
            tag: TagRef::new(&device.name, &tag.name),
            data_type: tag.data_type(),
        },
        span,
    )))
}

fn check_tag<'d>(
    cx: &mut Diagnostics<'_>,
    span: &Span,
    key: &str,
    device: &'d Device,
    name: &str,
    role: Role,
    writable: bool,
) -> Option<&'d Tag> {
    let Some(tag) = device.tags.iter().find(|t| t.name == name) else {
        let known: Vec<&str> = device.tags.iter().map(|t| t.name.as_str()).collect();
        let hint = match did_you_mean(name, known.iter().copied()) {
            Some(best) => format!("did you mean `{best}`?"),
            None => format!(
                "the tags of device `{}` are {}",
                device.name,
                quoted_list(&known)
            ),
        };
        cx.error(
            span,
            format!("unknown tag `{name}` on device `{}`", device.name),
            Some(hint),
        );
        return None;
    };
    if !role.accepts(tag) {
        let scaled = if tag.scale != 1.0 || tag.offset != 0.0 {
            ", scaled"
        } else {
            ""
        };
        let (is, hint) = match tag.data_type() {
            Some(dt) => (dt.to_string(), None),
            // Only an OPC UA tag may leave its type to the server.
            None => (
                "an OPC UA tag without `type`".to_owned(),
                (role == Role::Counter).then(|| format!(
                    "a counter's width tells a wrap-around from a reset: add type = \"u32\" (or the variable's integer type) to tag `{name}` of device `{}`",
                    device.name
                )),
            ),
        };
        cx.error(
            span,
            format!(
                "`{key}` needs {}; tag `{name}` is {is}{scaled}",
                role.expected()
            ),
            hint,
        );
        return None;
    }
    if writable && !tag.accepts_writes() {
        cx.error(
            span,
            format!("`{key}`: tag `{name}` is not writable"),
            Some(format!(
                "dispatches write to it: set `writable = true` on tag `{name}` of device `{}`",
                device.name
            )),
        );
        return None;
    }
    Some(tag)
}

/// `max_count_step`, which must leave a wrap-around distinguishable from a reset: at most
/// half the range of the narrowest counter.
fn check_max_step(
    cx: &mut Diagnostics<'_>,
    t: &TableReader<'_, '_>,
    val: Val<u64>,
    counters: [&Option<Option<(NamedTag, Span)>>; 2],
) -> Option<u64> {
    let narrowest = counters
        .iter()
        .filter_map(|c| c.as_ref().and_then(|c| c.as_ref()))
        .filter_map(|(tag, _)| tag.data_type)
        .filter_map(mes_bridge::CounterWidth::of)
        .min_by_key(|w| w.bits());
    let (step, span) = match val {
        Val::Invalid => return None,
        Val::Absent => (Machine::DEFAULT_MAX_COUNT_STEP, None),
        Val::Present(step, span) => (step, Some(span)),
    };
    if let Some(width) = narrowest {
        let half = width.max() / 2 + 1;
        if step > half {
            let at = span.unwrap_or_else(|| t.span());
            cx.error(
                &at,
                format!(
                    "`max_count_step` ({step}) must be at most {half} for a {}-bit counter",
                    width.bits()
                ),
                Some(
                    "a larger step could not tell a counter wrapping around from one the PLC reset; give the most parts the machine makes between two readings"
                        .to_owned(),
                ),
            );
            return None;
        }
    }
    Some(step)
}

fn read_states(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    state_tag: Option<&Option<(NamedTag, Span)>>,
) -> Option<Vec<StateEntry>> {
    let tables = match t.tables(cx, "state", "[[machine.state]]") {
        Val::Absent => Vec::new(),
        Val::Invalid => return None,
        Val::Present(tables, _) => tables,
    };
    match state_tag {
        Some(None) if !tables.is_empty() => {
            cx.error(
                &tables[0].span(),
                "[[machine.state]] without a `state_tag`",
                Some(
                    "add `state_tag = \"...\"` to the [[machine]], naming the state word's tag"
                        .to_owned(),
                ),
            );
            return None;
        }
        Some(Some((tag, span))) if tables.is_empty() => {
            cx.error(
                span,
                format!("state tag `{}` has no [[machine.state]] entries", tag.tag.tag),
                Some("add a [[machine.state]] with value and state for each value of the state word, as in value = 1 and state = \"running\"".to_owned()),
            );
            return None;
        }
        _ => {}
    }
    let range = match state_tag
        .and_then(|s| s.as_ref())
        .and_then(|(t, _)| t.data_type)
    {
        Some(dt) => value_range(dt),
        None => i64::MIN..=i64::MAX,
    };
    let mut lines: HashMap<i64, usize> = HashMap::new();
    let mut all = Some(Vec::with_capacity(tables.len()));
    let names: Vec<(&str, MachineState)> =
        MachineState::ALL.iter().map(|s| (s.as_str(), *s)).collect();
    for mut e in tables {
        let value = e.integer::<i64>(cx, "value", i64::MIN..=i64::MAX);
        let value = e
            .require(cx, "value", value, "value = 1")
            .filter(|(v, span)| {
                if !range.contains(v) {
                    cx.error(
                        span,
                        format!(
                            "the state word cannot hold {v}: it holds {} to {}",
                            range.start(),
                            range.end()
                        ),
                        None,
                    );
                    return false;
                }
                let line = cx.line_of(span);
                match lines.get(v) {
                    Some(first) => {
                        cx.error(
                            span,
                            format!("state value {v} is mapped twice: already on line {first}"),
                            Some("each value of the state word means one state".to_owned()),
                        );
                        false
                    }
                    None => {
                        lines.insert(*v, line);
                        true
                    }
                }
            });
        let state = e.choice(cx, "state", &names, &[]);
        let state = e.require(cx, "state", state, "state = \"running\"");
        let code = e.integer::<u32>(cx, "reason_code", 0..=i64::from(u32::MAX));
        let reason = e.text(cx, "reason");
        let reason_code = match (&state, code) {
            (_, Val::Invalid) | (None, _) => None,
            (Some((s, _)), Val::Absent) => Some(s.default_code()),
            (Some((s, _)), Val::Present(c, span)) => {
                let codes = s.codes();
                if codes.contains(&c) {
                    Some(c)
                } else {
                    let owner = MachineState::ALL
                        .into_iter()
                        .find(|o| o.codes().contains(&c));
                    let hint = match owner {
                        Some(o) => format!(
                            "reason codes of `{s}` lie from {} to {}; {c} is a code of `{o}`",
                            codes.start(),
                            codes.end()
                        ),
                        None => format!(
                            "reason codes of `{s}` lie from {} to {} (UMH state model)",
                            codes.start(),
                            codes.end()
                        ),
                    };
                    cx.error(
                        &span,
                        format!("reason code {c} is outside the range of state `{s}`"),
                        Some(hint),
                    );
                    None
                }
            }
        };
        let reason = reason.optional();
        e.finish(cx);
        match (value, state, reason_code, reason, all.as_mut()) {
            (Some((value, _)), Some((state, _)), Some(reason_code), Some(reason), Some(all)) => all
                .push(StateEntry {
                    value,
                    state,
                    reason_code,
                    reason: reason.map(|(r, _)| r.to_owned()),
                }),
            _ => all = None,
        }
    }
    all
}

/// The values a state word of type `dt` can hold.
fn value_range(dt: DataType) -> std::ops::RangeInclusive<i64> {
    match dt {
        DataType::Bool => 0..=1,
        DataType::I16 => i64::from(i16::MIN)..=i64::from(i16::MAX),
        DataType::U16 => 0..=i64::from(u16::MAX),
        DataType::I32 => i64::from(i32::MIN)..=i64::from(i32::MAX),
        DataType::U32 => 0..=i64::from(u32::MAX),
        DataType::U64 => 0..=i64::MAX,
        _ => i64::MIN..=i64::MAX,
    }
}

/// `Some(None)`: no dispatch; `None`: invalid (reported).
fn read_dispatch(
    cx: &mut Diagnostics<'_>,
    t: &mut TableReader<'_, '_>,
    scope: Scope<'_>,
) -> Option<Option<Dispatch>> {
    let mut d = match t.table_named(cx, "dispatch", "[machine.dispatch]") {
        Val::Absent => return Some(None),
        Val::Invalid => return None,
        Val::Present(d, _) => d,
    };
    let work_order = tag_key(cx, &mut d, "work_order_tag", scope, Role::Id, true);
    let product = tag_key(cx, &mut d, "product_tag", scope, Role::Id, true);
    let quantity = tag_key(cx, &mut d, "quantity_tag", scope, Role::Quantity, true);
    let handshake = tag_key(cx, &mut d, "handshake_tag", scope, Role::Handshake, true);
    let parameters = read_parameters(cx, &mut d, scope);
    let work_order = match work_order {
        Some(None) => {
            cx.structural(
                &d.span(),
                "missing `work_order_tag` in [machine.dispatch]",
                Some("add a line like `work_order_tag = \"next_order\"`, naming a writable tag for the work order id".to_owned()),
            );
            None
        }
        other => other,
    };
    // One tag written twice in a dispatch means two fields fight over it.
    let mut used: HashSet<TagRef> = HashSet::new();
    let mut distinct = true;
    let singles = [&work_order, &product, &quantity, &handshake];
    let named = singles
        .iter()
        .filter_map(|v| v.as_ref().and_then(|o| o.as_ref()))
        .map(|(tag, span)| (tag.tag.clone(), span.clone()));
    let params = parameters
        .iter()
        .flatten()
        .map(|(p, span)| (p.tag.clone(), span.clone()));
    for (tag, span) in named.chain(params).collect::<Vec<_>>() {
        if !used.insert(tag.clone()) {
            cx.error(
                &span,
                format!("tag `{tag}` is written twice by this dispatch"),
                Some("give each dispatch field and parameter its own tag".to_owned()),
            );
            distinct = false;
        }
    }
    d.finish(cx);
    let (work_order, product, quantity, handshake, parameters) =
        (work_order??, product?, quantity?, handshake?, parameters?);
    if !distinct {
        return None;
    }
    Some(Some(Dispatch {
        work_order_tag: work_order.0.tag,
        product_tag: product.map(|(t, _)| t.tag),
        quantity_tag: quantity.map(|(t, _)| t.tag),
        handshake_tag: handshake.map(|(t, _)| t.tag),
        parameters: parameters.into_iter().map(|(p, _)| p).collect(),
    }))
}

fn read_parameters(
    cx: &mut Diagnostics<'_>,
    d: &mut TableReader<'_, '_>,
    scope: Scope<'_>,
) -> Option<Vec<(DispatchParameter, Span)>> {
    let tables = match d.tables(cx, "parameter", "[[machine.dispatch.parameter]]") {
        Val::Absent => return Some(Vec::new()),
        Val::Invalid => return None,
        Val::Present(tables, _) => tables,
    };
    let mut names = UniqueNames::new("parameter name", " in this dispatch");
    let mut all = Some(Vec::with_capacity(tables.len()));
    for mut p in tables {
        let name = p.string(cx, "name");
        let name = p
            .require(cx, "name", name, "name = \"speed\"")
            .filter(|(name, span)| {
                check_name(cx, span, "parameter name", name, Underscore::Allowed)
                    && names.insert(cx, span, name)
            });
        let tag = tag_key(cx, &mut p, "tag", scope, Role::Any, true);
        let tag = match tag {
            Some(None) => {
                cx.structural(
                    &p.span(),
                    "missing `tag` in [[machine.dispatch.parameter]]",
                    Some(
                        "add a line like `tag = \"speed_setpoint\"`, naming a writable tag"
                            .to_owned(),
                    ),
                );
                None
            }
            other => other.flatten(),
        };
        let required = p.boolean(cx, "required").or(false);
        p.finish(cx);
        match (name, tag, required, all.as_mut()) {
            (Some((name, _)), Some((tag, span)), Some(required), Some(all)) => all.push((
                DispatchParameter {
                    name: name.to_owned(),
                    tag: tag.tag,
                    required,
                },
                span,
            )),
            _ => all = None,
        }
    }
    all
}
