//! The resources the server serves, and how their names appear in paths and messages.

use serde_json::Value;

use crate::util::str_at;

/// A resource type the server keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Node,
    Namespace,
    Pod,
    Event,
    Job,
    /// Core `v1` Services: stored and listed, no endpoints or DNS (the tests check the
    /// objects a client makes, not the network).
    Service,
}

impl Kind {
    pub const ALL: [Kind; 6] = [Kind::Node, Kind::Namespace, Kind::Pod, Kind::Event, Kind::Job, Kind::Service];

    pub fn kind(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Event => "Event",
            Kind::Job => "Job",
            Kind::Service => "Service",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::Event => "events",
            Kind::Job => "jobs",
            Kind::Service => "services",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Job => "batch/v1",
            _ => "v1",
        }
    }

    /// The API group ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Job => "batch",
            _ => "",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Pod | Kind::Event | Kind::Job | Kind::Service)
    }

    /// The resource as the API server names it in messages: `pods`, `jobs.batch`.
    pub fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }

    /// The resource in a `Status` body's `details.kind` and in "Unable to find" messages.
    pub fn resource_triple(self) -> String {
        match self.group() {
            "" => format!("/v1, Resource={}", self.plural()),
            g => format!("{g}/v1, Resource={}", self.plural()),
        }
    }

    pub fn from_plural(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.group() == group && k.plural() == plural)
    }

    /// The kind an object says it is (`apiVersion` + `kind`).
    pub fn of(object: &Value) -> Option<Kind> {
        let kind = str_at(object, &["kind"])?;
        let api_version = str_at(object, &["apiVersion"]).unwrap_or("");
        Kind::ALL.into_iter().find(|k| k.kind() == kind && (api_version.is_empty() || k.api_version() == api_version))
    }

    /// The fields a `fieldSelector` may name for this kind, as the real server allows them
    /// (a subset for pods: the ones clients use).
    pub fn selectable_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Pod => {
                &["metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "status.phase"]
            }
            Kind::Node => &["metadata.name", "spec.unschedulable"],
            Kind::Namespace => &["metadata.name", "status.phase"],
            Kind::Job => &["metadata.name", "metadata.namespace", "status.successful"],
            Kind::Service => &["metadata.name", "metadata.namespace"],
            Kind::Event => &[
                "metadata.name",
                "metadata.namespace",
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
        }
    }
}

/// The value of a selectable field on `object` ("" when unset, as the server compares).
pub fn field_value(kind: Kind, object: &Value, field: &str) -> String {
    let s = |path: &[&str]| str_at(object, path).unwrap_or_default().to_string();
    match (kind, field) {
        (_, "metadata.name") => s(&["metadata", "name"]),
        (_, "metadata.namespace") => s(&["metadata", "namespace"]),
        (Kind::Pod, "status.phase") => s(&["status", "phase"]),
        (Kind::Namespace, "status.phase") => str_at(object, &["status", "phase"]).unwrap_or("Active").to_string(),
        (Kind::Node, "spec.unschedulable") => (object["spec"]["unschedulable"] == true).to_string(),
        (Kind::Job, "status.successful") => object["status"]["succeeded"].as_i64().unwrap_or(0).to_string(),
        (Kind::Event, "source") => s(&["source", "component"]),
        (_, f) => {
            let path: Vec<&str> = f.split('.').collect();
            s(&path)
        }
    }
}
