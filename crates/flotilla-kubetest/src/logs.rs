//! Container logs, as the kubelet would serve them through `pods/{name}/log`.

use std::collections::{HashMap, VecDeque};

use crate::util::rfc3339_nanos;

/// (namespace, pod, container).
pub type LogKey = (String, String, String);

#[derive(Default)]
pub struct ContainerLog {
    /// (unix ms, line without its newline), oldest first.
    lines: VecDeque<(u64, String)>,
    bytes: usize,
    /// The sequence number of `lines[0]`: followers resume by number.
    first_seq: u64,
    /// The log of the container's previous instance (`previous=true`).
    previous: Option<Vec<(u64, String)>>,
}

pub struct Logs {
    max_bytes: usize,
    containers: HashMap<LogKey, ContainerLog>,
}

/// What a `log` request asks for.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    pub since_ms: Option<u64>,
    pub timestamps: bool,
    pub previous: bool,
}

impl Logs {
    pub fn new(max_bytes: usize) -> Logs {
        Logs { max_bytes: max_bytes.max(1), containers: HashMap::new() }
    }

    pub fn append(&mut self, key: LogKey, at_ms: u64, line: &str) {
        let max = self.max_bytes;
        let log = self.containers.entry(key).or_default();
        for l in line.lines() {
            log.bytes += l.len() + 1;
            log.lines.push_back((at_ms, l.to_string()));
        }
        while log.bytes > max {
            let Some((_, dropped)) = log.lines.pop_front() else { break };
            log.bytes -= dropped.len() + 1;
            log.first_seq += 1;
        }
    }

    /// A restart: the current log becomes the previous instance's.
    pub fn restart(&mut self, key: &LogKey) {
        if let Some(log) = self.containers.get_mut(key) {
            let old: Vec<_> = log.lines.drain(..).collect();
            log.first_seq += old.len() as u64;
            log.bytes = 0;
            log.previous = Some(old);
        }
    }

    pub fn has_previous(&self, key: &LogKey) -> bool {
        self.containers.get(key).is_some_and(|l| l.previous.is_some())
    }

    /// The text of the lines `q` selects, and the sequence number after the last line (where
    /// a follower continues).
    pub fn read(&self, key: &LogKey, q: &LogQuery) -> (String, u64) {
        let Some(log) = self.containers.get(key) else { return (String::new(), 0) };
        let end_seq = log.first_seq + log.lines.len() as u64;
        let lines: Vec<&(u64, String)> = match (&log.previous, q.previous) {
            (Some(prev), true) => prev.iter().collect(),
            _ => log.lines.iter().collect(),
        };
        let lines: Vec<_> = lines.into_iter().filter(|(t, _)| q.since_ms.is_none_or(|s| *t >= s)).collect();
        let skip = q.tail_lines.map_or(0, |n| lines.len().saturating_sub(n));
        (render(lines[skip..].iter().copied(), q.timestamps), end_seq)
    }

    /// The lines from sequence number `from_seq` on, and the next sequence number.
    pub fn read_from(&self, key: &LogKey, from_seq: u64, timestamps: bool) -> (String, u64) {
        let Some(log) = self.containers.get(key) else { return (String::new(), from_seq) };
        let start = from_seq.saturating_sub(log.first_seq) as usize;
        let end_seq = log.first_seq + log.lines.len() as u64;
        (render(log.lines.iter().skip(start), timestamps), end_seq)
    }
}

fn render<'a>(lines: impl Iterator<Item = &'a (u64, String)>, timestamps: bool) -> String {
    let mut out = String::new();
    for (t, l) in lines {
        if timestamps {
            out.push_str(&rfc3339_nanos(*t));
            out.push(' ');
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}
