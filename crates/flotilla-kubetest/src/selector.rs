//! Label and field selectors, parsed and matched the way the API server does.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::kinds::{field_value, Kind};
use crate::util::prefix;

/// One label requirement.
#[derive(Clone, Debug, PartialEq)]
enum LabelReq {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed `labelSelector`: every requirement must hold (comma means AND).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelReq>);

impl LabelSelector {
    /// Parses `s`; the error is the API server's wording.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_requirement(part)?);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Equals(k, v) => get(k) == Some(v.as_str()),
            // Like the server: `!=` and `notin` also select objects without the label.
            LabelReq::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|l| vs.contains(l)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|l| !vs.contains(l)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas that are not inside `( )`.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_requirement(part: &str) -> Result<LabelReq, String> {
    let bad = |why: &str| format!("unable to parse requirement: {why}: {:?}", prefix(part));
    let key_ok = |k: &str| !k.is_empty() && k.len() <= 317 && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    let value_ok = |v: &str| v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        return if key_ok(key) { Ok(LabelReq::DoesNotExist(key.into())) } else { Err(bad("invalid label key")) };
    }
    for (op, ctor) in [("!=", 0), ("==", 1), ("=", 1)] {
        if let Some((k, v)) = part.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            if !key_ok(k) {
                return Err(bad("invalid label key"));
            }
            if !value_ok(v) {
                return Err(bad("invalid label value"));
            }
            return Ok(if ctor == 0 { LabelReq::NotEquals(k.into(), v.into()) } else { LabelReq::Equals(k.into(), v.into()) });
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let (key, rest) = (words[0].trim(), words[1].trim());
        let (notin, set) = if let Some(set) = rest.strip_prefix("notin") {
            (true, set)
        } else if let Some(set) = rest.strip_prefix("in") {
            (false, set)
        } else {
            return Err(bad("found unknown operator"));
        };
        let set = set.trim();
        let inner = set.strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or_else(|| bad("expected a set in ( )"))?;
        let values: BTreeSet<String> = inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
        if !key_ok(key) || values.iter().any(|v| !value_ok(v)) {
            return Err(bad("invalid label key or value"));
        }
        if values.is_empty() {
            return Err(bad("for 'in', 'notin' operators, values set can't be empty"));
        }
        return Ok(if notin { LabelReq::NotIn(key.into(), values) } else { LabelReq::In(key.into(), values) });
    }
    if key_ok(part) {
        Ok(LabelReq::Exists(part.into()))
    } else {
        Err(bad("invalid label key"))
    }
}

/// A parsed `fieldSelector`: `field=value`, `field==value`, `field!=value`, comma = AND.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `s` for `kind`. A field the server does not index for `kind` is an error, with
    /// the server's message.
    pub fn parse(kind: Kind, s: &str) -> Result<FieldSelector, String> {
        let mut reqs = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{}'; can't understand '{}'", prefix(s), prefix(part)));
            };
            let field = field.trim();
            if !kind.selectable_fields().contains(&field) {
                return Err(format!(
                    "Unable to find {:?} that match label selector \"\", field selector {:?}: field label not supported: {}",
                    kind.resource_triple(),
                    prefix(s),
                    prefix(field)
                ));
            }
            reqs.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, kind: Kind, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| (field_value(kind, object, field) == *value) == *equal)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"labels": labels}})
    }

    #[test]
    fn label_selectors_support_every_operator_and_and_them() {
        let o = labelled(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(m("app=web") && m("app==web") && m("app!=db") && m("tier in (front, back)") && m("tier notin (back)"));
        assert!(m("app") && m("!missing") && m("app=web,tier=front") && m(""));
        assert!(!m("app=db") && !m("app!=web") && !m("tier in (back)") && !m("!app") && !m("missing") && !m("app=web,tier=back"));
        assert!(m("missing!=x") && m("missing notin (x)"), "absent labels satisfy != and notin");
        assert!(LabelSelector::parse("a in ()").is_err());
        assert!(LabelSelector::parse("a ~ b").is_err());
    }

    #[test]
    fn field_selectors_reject_fields_the_server_does_not_index() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {"nodeName": "a"}, "status": {"phase": "Running"}});
        let f = FieldSelector::parse(Kind::Pod, "spec.nodeName=a,status.phase!=Failed").unwrap();
        assert!(f.matches(Kind::Pod, &pod));
        assert!(!FieldSelector::parse(Kind::Pod, "status.phase==Pending").unwrap().matches(Kind::Pod, &pod));
        let err = FieldSelector::parse(Kind::Pod, "spec.foo=1").unwrap_err();
        assert!(err.ends_with("field label not supported: spec.foo"), "{err}");
        let event = json!({"involvedObject": {"kind": "Job", "name": "j"}, "reason": "FailedCreate"});
        assert!(FieldSelector::parse(Kind::Event, "involvedObject.kind=Job,reason=FailedCreate").unwrap().matches(Kind::Event, &event));
    }
}
