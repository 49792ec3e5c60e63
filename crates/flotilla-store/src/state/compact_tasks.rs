//! Snapshot encoding of the task table. The tasks of one array task or gang share a spec but
//! for `index`, `gang.rank` and `gang.id`; a snapshot stores each such spec once and every task
//! as (spec number, index, rank, gang id, the rest of its record). Without this a snapshot
//! repeats a full spec per task (measured: about 1.15 KB per task, half of it specs).

use std::collections::BTreeMap;

use flotilla_model::{TaskId, TaskSpec};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::records::TaskRecord;

/// The spec with what differs between tasks of one submission zeroed.
fn shape(spec: &TaskSpec) -> TaskSpec {
    let mut s = spec.clone();
    s.index = 0;
    if let Some(g) = &mut s.gang {
        g.rank = 0;
        g.id = TaskId(0);
    }
    s
}

#[derive(Serialize)]
struct Out<'a> {
    specs: Vec<TaskSpec>,
    tasks: Vec<(u32, u32, u32, u64, &'a TaskRecord)>,
}

#[derive(Deserialize)]
struct In {
    specs: Vec<TaskSpec>,
    tasks: Vec<(u32, u32, u32, u64, TaskRecord)>,
}

pub fn serialize<S: Serializer>(tasks: &BTreeMap<TaskId, TaskRecord>, ser: S) -> Result<S::Ok, S::Error> {
    let mut specs: Vec<TaskSpec> = Vec::new();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks.values() {
        // Tasks of one submission have consecutive ids: comparing with the last spec
        // finds every run without hashing specs.
        let s = shape(&t.spec);
        if specs.last() != Some(&s) {
            specs.push(s);
        }
        let gang = t.spec.gang.as_ref();
        out.push(((specs.len() - 1) as u32, t.spec.index, gang.map_or(0, |g| g.rank), gang.map_or(0, |g| g.id.0), t));
    }
    Out { specs, tasks: out }.serialize(ser)
}

pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<BTreeMap<TaskId, TaskRecord>, D::Error> {
    let input = In::deserialize(de)?;
    let mut tasks = BTreeMap::new();
    for (spec, index, rank, gang_id, mut t) in input.tasks {
        let shape = input
            .specs
            .get(spec as usize)
            .ok_or_else(|| serde::de::Error::custom(format!("task {} refers to spec {spec} of {}", t.id, input.specs.len())))?;
        t.spec = shape.clone();
        t.spec.index = index;
        if let Some(g) = &mut t.spec.gang {
            g.rank = rank;
            g.id = TaskId(gang_id);
        }
        tasks.insert(t.id, t);
    }
    Ok(tasks)
}
