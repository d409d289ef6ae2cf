//! `edge-agent opcua browse`: walks a server's address space from a node (Objects by default)
//! and prints a tree of node ids, browse names, data types and access levels, or the variables
//! as `[[device.tag]]` blocks ready to paste into a board config.

use std::collections::HashSet;
use std::fmt::Write as _;

use opcua::client::Session;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, BrowseResultMask, ByteString, NodeClass,
    NodeId, ObjectId, ReferenceTypeId, TimestampsToReturn, Variant,
};
use tokio::time::timeout;

use crate::convert::data_type_name;
use crate::session::{connect, resolve, status_text, value_of, ConnectError};
use crate::spec::DeviceSpec;
use crate::NodeAddress;

/// What to browse.
#[derive(Debug, Clone)]
pub struct BrowseOptions {
    /// Where to start; `None` is the Objects folder.
    pub start: Option<NodeAddress>,
    /// How many levels below the start to descend.
    pub depth: usize,
    /// Stop after this many nodes (a server can hold millions).
    pub max_nodes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the start node cannot be used: {0}")]
    Start(String),
    #[error("browsing failed: {0}")]
    Service(String),
}

/// One node of the browsed tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowseNode {
    pub node_id: String,
    pub browse_name: String,
    pub node_class: String,
    /// Variables only.
    pub data_type: Option<String>,
    /// Variables only: `read`, `write`, `read/write` or `none`.
    pub access: Option<String>,
    pub children: Vec<BrowseNode>,
    /// True when children were left out (depth or node limit).
    pub truncated: bool,
}

/// Connects with the device's settings, browses, and closes the session.
pub async fn browse(spec: &DeviceSpec, opts: &BrowseOptions) -> Result<BrowseNode, BrowseError> {
    let conn = connect(spec).await?;
    let start = match &opts.start {
        None => NodeId::from(ObjectId::ObjectsFolder),
        Some(n) => resolve(n, &conn.namespaces).map_err(BrowseError::Start)?,
    };
    let result = walk(&conn.session, spec, start, opts).await;
    conn.close(spec.request_timeout).await;
    result
}

struct Walker<'a> {
    session: &'a Session,
    spec: &'a DeviceSpec,
    visited: HashSet<NodeId>,
    budget: usize,
}

async fn walk(
    session: &Session,
    spec: &DeviceSpec,
    start: NodeId,
    opts: &BrowseOptions,
) -> Result<BrowseNode, BrowseError> {
    let mut w = Walker {
        session,
        spec,
        visited: HashSet::new(),
        budget: opts.max_nodes.max(1),
    };
    // The start node's own name and class.
    let attrs = w
        .read_attrs(
            &start,
            &[
                AttributeId::BrowseName,
                AttributeId::NodeClass,
                AttributeId::DataType,
                AttributeId::AccessLevel,
            ],
        )
        .await?;
    if !attrs[0].status().is_good() {
        return Err(BrowseError::Start(format!(
            "{start}: {}",
            status_text(attrs[0].status())
        )));
    }
    let browse_name = match &attrs[0].value {
        Some(Variant::QualifiedName(q)) => q.name.as_ref().to_owned(),
        _ => start.to_string(),
    };
    let class = match &attrs[1].value {
        Some(Variant::Int32(c)) => NodeClass::try_from(*c).unwrap_or(NodeClass::Unspecified),
        _ => NodeClass::Unspecified,
    };
    let mut root = BrowseNode {
        node_id: start.to_string(),
        browse_name,
        node_class: format!("{class:?}"),
        data_type: None,
        access: None,
        children: Vec::new(),
        truncated: false,
    };
    if class == NodeClass::Variable {
        root.data_type = type_of(&attrs[2].value);
        root.access = access_of(&attrs[3].value);
    }
    w.visited.insert(start.clone());
    w.expand(&start, &mut root, opts.depth, true).await?;
    Ok(root)
}

impl Walker<'_> {
    async fn read_attrs(
        &self,
        node: &NodeId,
        attrs: &[AttributeId],
    ) -> Result<Vec<opcua::types::DataValue>, BrowseError> {
        let nodes: Vec<_> = attrs
            .iter()
            .map(|a| {
                let mut r = value_of(node.clone());
                r.attribute_id = *a as u32;
                r
            })
            .collect();
        let values = timeout(
            self.spec.request_timeout,
            self.session.read(&nodes, TimestampsToReturn::Neither, 0.0),
        )
        .await
        .map_err(|_| BrowseError::Service("a Read got no answer".into()))?
        .map_err(|e| BrowseError::Service(e.to_string()))?;
        if values.len() != nodes.len() {
            return Err(BrowseError::Service(
                "the server answered a Read with the wrong number of values".into(),
            ));
        }
        Ok(values)
    }

    /// The forward hierarchical references of `node`, following continuation points.
    async fn references(
        &self,
        node: &NodeId,
    ) -> Result<Vec<opcua::types::ReferenceDescription>, BrowseError> {
        let desc = BrowseDescription {
            node_id: node.clone(),
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: (NodeClass::Object as u32) | (NodeClass::Variable as u32),
            result_mask: BrowseResultMask::All as u32,
        };
        let limit = self.spec.request_timeout;
        let mut results = timeout(limit, self.session.browse(&[desc], 1000, None))
            .await
            .map_err(|_| BrowseError::Service("a Browse got no answer".into()))?
            .map_err(|e| BrowseError::Service(e.to_string()))?;
        let mut out = Vec::new();
        // Bounded: a server that keeps returning continuation points stops after this many.
        for _ in 0..1000 {
            let Some(result) = results.pop() else { break };
            if result.status_code.is_bad() {
                return Err(BrowseError::Service(format!(
                    "browsing {node}: {}",
                    status_text(result.status_code)
                )));
            }
            out.extend(result.references.unwrap_or_default());
            let cp: ByteString = result.continuation_point;
            if cp.is_null() || cp.is_empty() {
                break;
            }
            results = timeout(limit, self.session.browse_next(false, &[cp]))
                .await
                .map_err(|_| BrowseError::Service("a BrowseNext got no answer".into()))?
                .map_err(|e| BrowseError::Service(e.to_string()))?;
        }
        Ok(out)
    }

    async fn expand(
        &mut self,
        node: &NodeId,
        into: &mut BrowseNode,
        depth: usize,
        is_start: bool,
    ) -> Result<(), BrowseError> {
        // The standard Server object and the other namespace-0 nodes are left folded unless
        // browsing starts there: they bury the plant's own variables.
        if depth == 0 || (node.namespace == 0 && !is_start) {
            into.truncated = true;
            return Ok(());
        }
        let refs = self.references(node).await?;
        let mut variables: Vec<(usize, NodeId)> = Vec::new();
        let mut objects: Vec<(usize, NodeId)> = Vec::new();
        for r in refs {
            if self.budget == 0 {
                into.truncated = true;
                break;
            }
            let child_id = r.node_id.node_id.clone();
            if !r.node_id.namespace_uri.is_null() || !self.visited.insert(child_id.clone()) {
                continue;
            }
            self.budget -= 1;
            into.children.push(BrowseNode {
                node_id: child_id.to_string(),
                browse_name: r.browse_name.name.as_ref().to_owned(),
                node_class: format!("{:?}", r.node_class),
                data_type: None,
                access: None,
                children: Vec::new(),
                truncated: false,
            });
            let index = into.children.len() - 1;
            match r.node_class {
                NodeClass::Variable => variables.push((index, child_id)),
                _ => objects.push((index, child_id)),
            }
        }
        for (index, id) in &variables {
            let attrs = self
                .read_attrs(id, &[AttributeId::DataType, AttributeId::AccessLevel])
                .await?;
            let child = &mut into.children[*index];
            child.data_type = type_of(&attrs[0].value);
            child.access = access_of(&attrs[1].value);
        }
        // Variables can have children too (properties such as EURange).
        for (index, id) in variables.into_iter().chain(objects) {
            let child = &mut into.children[index];
            Box::pin(self.expand(&id, child, depth - 1, false)).await?;
        }
        Ok(())
    }
}

fn type_of(v: &Option<Variant>) -> Option<String> {
    match v {
        Some(Variant::NodeId(id)) => Some(data_type_name(id)),
        _ => None,
    }
}

fn access_of(v: &Option<Variant>) -> Option<String> {
    let bits = match v {
        Some(Variant::Byte(b)) => *b,
        _ => return None,
    };
    Some(
        match (bits & 1 != 0, bits & 2 != 0) {
            (true, true) => "read/write",
            (true, false) => "read",
            (false, true) => "write",
            (false, false) => "none",
        }
        .to_owned(),
    )
}

/// The tree as text: one node per line with its node id, then data type and access for
/// variables.
pub fn render_tree(root: &BrowseNode) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(root));
    render_children(root, "", &mut out);
    out
}

fn line(n: &BrowseNode) -> String {
    let mut s = format!("{}  {}", n.browse_name, n.node_id);
    match (&n.data_type, &n.access) {
        (Some(t), Some(a)) => {
            let _ = write!(s, "  {t}  {a}");
        }
        (Some(t), None) => {
            let _ = write!(s, "  {t}");
        }
        _ => {
            let _ = write!(s, "  ({})", n.node_class);
        }
    }
    if n.truncated && n.node_class != "Variable" {
        s.push_str("  …");
    }
    s
}

fn render_children(n: &BrowseNode, prefix: &str, out: &mut String) {
    let count = n.children.len();
    for (i, c) in n.children.iter().enumerate() {
        let last = i + 1 == count;
        let _ = writeln!(
            out,
            "{prefix}{}{}",
            if last { "└─ " } else { "├─ " },
            line(c)
        );
        let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
        render_children(c, &deeper, out);
    }
}

/// Every readable variable of a type a tag can hold, as a `[[device.tag]]` block.
pub fn render_tags(root: &BrowseNode) -> String {
    let mut out = String::new();
    let mut names = HashSet::new();
    collect_tags(root, &mut names, &mut out);
    out
}

/// The data types a tag can hold (structures such as a Range have no gateway type).
const TAG_TYPES: [&str; 16] = [
    "Boolean",
    "SByte",
    "Byte",
    "Int16",
    "UInt16",
    "Int32",
    "UInt32",
    "Int64",
    "UInt64",
    "Float",
    "Double",
    "String",
    "LocalizedText",
    "DateTime",
    "StatusCode",
    "Enumeration",
];

fn collect_tags(n: &BrowseNode, names: &mut HashSet<String>, out: &mut String) {
    let scalar = n
        .data_type
        .as_deref()
        .is_some_and(|t| TAG_TYPES.contains(&t));
    if n.node_class == "Variable"
        && scalar
        && n.access.as_deref().is_some_and(|a| a.contains("read"))
    {
        let base = tag_name(&n.browse_name);
        let mut name = base.clone();
        let mut k = 2;
        while !names.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        let _ = writeln!(out, "  [[device.tag]]");
        let _ = writeln!(out, "  name = \"{name}\"");
        let _ = writeln!(out, "  address = \"{}\"", toml_escape(&n.node_id));
        if let Some(t) = &n.data_type {
            let _ = writeln!(out, "  # {t}, {}", n.access.as_deref().unwrap_or("?"));
        }
        if n.access.as_deref() == Some("read/write") {
            let _ = writeln!(out, "  # writable = true");
        }
        out.push('\n');
    }
    for c in &n.children {
        collect_tags(c, names, out);
    }
}

/// A tag name from a browse name: `GoodCount` → `good_count`, other characters as `_`.
pub fn tag_name(browse_name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in browse_name.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else {
            if !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    let trimmed = out.trim_matches('_').to_owned();
    if trimmed.is_empty() {
        "tag".to_owned()
    } else {
        trimmed
    }
}

fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, id: &str, t: &str, access: &str) -> BrowseNode {
        BrowseNode {
            node_id: id.into(),
            browse_name: name.into(),
            node_class: "Variable".into(),
            data_type: Some(t.into()),
            access: Some(access.into()),
            children: vec![],
            truncated: false,
        }
    }

    fn tree() -> BrowseNode {
        BrowseNode {
            node_id: "i=85".into(),
            browse_name: "Objects".into(),
            node_class: "Object".into(),
            data_type: None,
            access: None,
            children: vec![
                BrowseNode {
                    node_id: "ns=2;s=Filler".into(),
                    browse_name: "Filler".into(),
                    node_class: "Object".into(),
                    data_type: None,
                    access: None,
                    children: vec![
                        var("GoodCount", "ns=2;s=Filler.GoodCount", "UInt32", "read"),
                        var("Setpoint", "ns=2;s=Filler.Setpoint", "Double", "read/write"),
                        var("EURange", "ns=2;s=Filler.EURange", "Range", "read"),
                    ],
                    truncated: false,
                },
                BrowseNode {
                    node_id: "i=2253".into(),
                    browse_name: "Server".into(),
                    node_class: "Object".into(),
                    data_type: None,
                    access: None,
                    children: vec![],
                    truncated: true,
                },
            ],
            truncated: false,
        }
    }

    #[test]
    fn the_tree_shows_ids_types_and_access_one_node_per_line() {
        let text = render_tree(&tree());
        let expected = "\
Objects  i=85  (Object)
├─ Filler  ns=2;s=Filler  (Object)
│  ├─ GoodCount  ns=2;s=Filler.GoodCount  UInt32  read
│  ├─ Setpoint  ns=2;s=Filler.Setpoint  Double  read/write
│  └─ EURange  ns=2;s=Filler.EURange  Range  read
└─ Server  i=2253  (Object)  …
";
        assert_eq!(text, expected);
    }

    #[test]
    fn variables_become_tag_blocks_ready_to_paste() {
        let text = render_tags(&tree());
        assert!(text.contains("name = \"good_count\"\n  address = \"ns=2;s=Filler.GoodCount\""));
        assert!(text.contains("name = \"setpoint\""));
        assert!(text.contains("# writable = true"));
        assert_eq!(
            text.matches("[[device.tag]]").count(),
            2,
            "a Range is no tag: {text}"
        );
    }

    #[test]
    fn tag_names_are_snake_case_and_unique() {
        assert_eq!(tag_name("GoodCount"), "good_count");
        assert_eq!(tag_name("Temperature"), "temperature");
        assert_eq!(tag_name("Motor 1/Speed"), "motor_1_speed");
        assert_eq!(tag_name("V0001"), "v0001");
        assert_eq!(tag_name("***"), "tag");
        let mut t = tree();
        t.children[0]
            .children
            .push(var("Good Count", "ns=2;i=9", "UInt32", "read"));
        let text = render_tags(&t);
        assert!(text.contains("name = \"good_count_2\""));
    }
}
