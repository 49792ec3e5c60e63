//! Who may do what on a queue: permits set on the queue and replicated with it.
//!
//! A [`Permit`] grants [`Verb`]s on one queue to a [`Subject`], a user or a group, in the
//! spirit of Armada's queue permissions. Written as `group:research=submit,cancel,watch`.
//! Checking a caller against permits is the server's job; this module only holds the words.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::text::quote;

/// Most permits one queue carries.
pub const MAX_PERMITS_PER_QUEUE: usize = 64;
/// Longest user or group name in a permit, in bytes.
pub const MAX_SUBJECT_NAME_BYTES: usize = 256;

/// A user (the name authentication gives the caller) or a group the caller belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    User(String),
    Group(String),
}

impl Subject {
    /// Parses `user:alice` or `group:research`.
    pub fn parse(s: &str) -> Result<Subject, String> {
        let (kind, name) = s.split_once(':').ok_or_else(|| format!("{} is not user:NAME or group:NAME", quote(s)))?;
        if name.is_empty() || name.len() > MAX_SUBJECT_NAME_BYTES || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!(
                "{} is not a valid name (1 to {MAX_SUBJECT_NAME_BYTES} bytes, no spaces or control characters)",
                quote(name)
            ));
        }
        match kind {
            "user" => Ok(Subject::User(name.to_string())),
            "group" => Ok(Subject::Group(name.to_string())),
            _ => Err(format!("{} is not user or group", quote(kind))),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::User(n) => write!(f, "user:{n}"),
            Subject::Group(n) => write!(f, "group:{n}"),
        }
    }
}

/// What a permit allows on its queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    /// Submit tasks, and resume task sets the retry breaker paused.
    Submit,
    /// Cancel tasks.
    Cancel,
    /// See the queue, its tasks and their events.
    Watch,
    /// All of the above, and update or delete the queue and its permits.
    Admin,
}

impl Verb {
    pub const ALL: [Verb; 4] = [Verb::Submit, Verb::Cancel, Verb::Watch, Verb::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Submit => "submit",
            Verb::Cancel => "cancel",
            Verb::Watch => "watch",
            Verb::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Verb, String> {
        Verb::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| format!("{} is not one of submit, cancel, watch, admin", quote(s)))
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Verbs granted to a subject on one queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permit {
    pub subject: Subject,
    pub verbs: BTreeSet<Verb>,
}

impl Permit {
    /// Parses `group:research=submit,cancel,watch`.
    pub fn parse(s: &str) -> Result<Permit, String> {
        let (subject, verbs) =
            s.split_once('=').ok_or_else(|| format!("{} is not SUBJECT=VERB,VERB (e.g. group:research=submit,watch)", quote(s)))?;
        let subject = Subject::parse(subject.trim())?;
        let verbs = verbs.split(',').map(str::trim).filter(|v| !v.is_empty()).map(Verb::parse).collect::<Result<BTreeSet<_>, _>>()?;
        if verbs.is_empty() {
            return Err(format!("{}: no verbs (use submit, cancel, watch, admin)", quote(s)));
        }
        Ok(Permit { subject, verbs })
    }

    /// Whether this permit lets `verb` through: `admin` implies every verb.
    pub fn allows(&self, verb: Verb) -> bool {
        self.verbs.contains(&verb) || self.verbs.contains(&Verb::Admin)
    }
}

impl fmt::Display for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verbs: Vec<&str> = self.verbs.iter().map(|v| v.as_str()).collect();
        write!(f, "{}={}", self.subject, verbs.join(","))
    }
}

/// Checks a queue's permits: at most [`MAX_PERMITS_PER_QUEUE`], each subject once.
pub fn check_permits(path: &str, permits: &[Permit], errors: &mut Vec<crate::FieldError>) {
    if permits.len() > MAX_PERMITS_PER_QUEUE {
        errors.push(crate::FieldError::new(path, format!("{} permits exceed the limit of {MAX_PERMITS_PER_QUEUE}", permits.len())));
        return;
    }
    let mut seen = BTreeSet::new();
    for (i, p) in permits.iter().enumerate() {
        if !seen.insert(&p.subject) {
            errors.push(crate::FieldError::new(
                format!("{path}[{i}]"),
                format!("{} is listed twice; merge its verbs", quote(&p.subject.to_string())),
            ));
        }
        if p.verbs.is_empty() {
            errors.push(crate::FieldError::new(format!("{path}[{i}].verbs"), "is empty"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_parse_round_trip_and_bad_ones_name_the_problem() {
        let p = Permit::parse("group:research=submit, cancel,watch").unwrap();
        assert_eq!(p.subject, Subject::Group("research".into()));
        assert_eq!(p.verbs, [Verb::Submit, Verb::Cancel, Verb::Watch].into());
        assert_eq!(p.to_string(), "group:research=submit,cancel,watch");
        assert_eq!(Permit::parse(&p.to_string()).unwrap(), p);
        assert!(Permit::parse("alice=submit").unwrap_err().contains("user:NAME or group:NAME"));
        assert!(Permit::parse("user:alice=launch").unwrap_err().contains("not one of submit"));
        assert!(Permit::parse("team:x=submit").unwrap_err().contains("not user or group"));
        assert!(Permit::parse("user:alice=").unwrap_err().contains("no verbs"));
        assert!(Permit::parse("user:alice").unwrap_err().contains("SUBJECT=VERB"));
        let long = format!("user:{}=submit", "a".repeat(10_000));
        assert!(Permit::parse(&long).unwrap_err().len() < 300, "a long bad value is not echoed whole");
    }

    #[test]
    fn admin_implies_every_verb() {
        let p = Permit::parse("user:ops=admin").unwrap();
        assert!(Verb::ALL.iter().all(|v| p.allows(*v)));
        let w = Permit::parse("user:bob=watch").unwrap();
        assert!(w.allows(Verb::Watch) && !w.allows(Verb::Submit) && !w.allows(Verb::Cancel));
    }

    #[test]
    fn a_subject_listed_twice_or_too_many_permits_are_refused() {
        let p = Permit::parse("user:a=watch").unwrap();
        let mut errors = Vec::new();
        check_permits("permits", &[p.clone(), p.clone()], &mut errors);
        assert!(errors[0].to_string().contains("listed twice"), "{errors:?}");
        let mut errors = Vec::new();
        check_permits("permits", &vec![p; MAX_PERMITS_PER_QUEUE + 1], &mut errors);
        assert!(errors[0].to_string().contains("exceed the limit"));
    }
}
