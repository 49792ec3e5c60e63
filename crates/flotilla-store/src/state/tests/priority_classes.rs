//! Priority classes in the replicated state.

use flotilla_model::{GangTemplate, PriorityClass};

use super::*;

fn class(name: &str, priority: i32, preemptible: bool) -> PriorityClass {
    PriorityClass { name: name.into(), priority, preemptible, description: String::new() }
}

fn put(s: &mut State, c: PriorityClass, create: bool) -> CommandResult {
    apply(s, 1, Command::PutPriorityClass { class: c, create })
}

fn rejected_kind(r: &CommandResult) -> Option<RejectKind> {
    match r {
        CommandResult::Rejected { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[test]
fn a_new_state_and_an_old_snapshot_have_the_builtin_classes() {
    let s = setup();
    let names: Vec<&String> = s.priority_classes().keys().collect();
    assert_eq!(names, ["best-effort", "critical", "default"]);
    // A snapshot written before classes were replicated has no `priority_classes` key.
    let json = serde_json::to_value(&s).unwrap();
    assert!(json.get("priority_classes").is_none(), "not written while never changed: {json}");
    let back: State = serde_json::from_value(json).unwrap();
    assert_eq!(back.priority_class("critical").map(|c| (c.priority, c.preemptible)), Some((1000, false)));
}

#[test]
fn created_updated_and_deleted_classes_survive_a_snapshot() {
    let mut s = setup();
    assert_eq!(put(&mut s, class("urgent", 500, true), true), CommandResult::Ok);
    assert_eq!(rejected_kind(&put(&mut s, class("urgent", 1, true), true)), Some(RejectKind::AlreadyExists));
    assert_eq!(rejected_kind(&put(&mut s, class("nope", 1, true), false)), Some(RejectKind::NotFound));
    assert_eq!(put(&mut s, class("urgent", 600, false), false), CommandResult::Ok);
    assert_eq!(apply(&mut s, 2, Command::DeletePriorityClass { name: "best-effort".into() }), CommandResult::Ok);
    let back: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    let names: Vec<&String> = back.priority_classes().keys().collect();
    assert_eq!(names, ["critical", "default", "urgent"]);
    assert_eq!(back.priority_class("urgent"), Some(&class("urgent", 600, false)));
}

#[test]
fn an_invalid_class_or_one_too_many_is_refused_and_changes_nothing() {
    let mut s = setup();
    let bad = put(&mut s, class("Urgent", 1, true), true);
    assert_eq!(rejected_kind(&bad), Some(RejectKind::Invalid), "{bad:?}");
    assert!(s.priority_classes.is_none(), "a refused command records nothing");
    for i in 0..flotilla_model::MAX_PRIORITY_CLASSES - 3 {
        assert_eq!(put(&mut s, class(&format!("c{i}"), 1, true), true), CommandResult::Ok);
    }
    assert_eq!(rejected_kind(&put(&mut s, class("over", 1, true), true)), Some(RejectKind::Conflict));
    assert_eq!(s.priority_classes().len(), flotilla_model::MAX_PRIORITY_CLASSES);
}

#[test]
fn a_class_in_use_by_an_unfinished_task_cannot_be_deleted_until_it_finishes() {
    let mut s = setup();
    put(&mut s, class("urgent", 500, true), true);
    let mut t = template("a");
    t.priority_class = Some("urgent".into());
    let ids = submit(&mut s, "r", &[t]);
    let refused = apply(&mut s, 2, Command::DeletePriorityClass { name: "urgent".into() });
    match &refused {
        CommandResult::Rejected { kind: RejectKind::Conflict, message } => assert!(message.contains(&ids[0].to_string()), "{message}"),
        other => panic!("expected a conflict: {other:?}"),
    }
    apply(&mut s, 3, Command::Cancel { target: CancelTarget::Tasks(ids), reason: String::new() });
    assert_eq!(apply(&mut s, 4, Command::DeletePriorityClass { name: "urgent".into() }), CommandResult::Ok);
    assert!(s.priority_class("urgent").is_none());
}

#[test]
fn a_submission_naming_an_unknown_class_is_refused_naming_the_field() {
    let mut s = setup();
    let mut t = template("a");
    t.priority_class = Some("urgent".into());
    let r = apply(
        &mut s,
        1,
        Command::Submit { client_request_id: "r".into(), queue: "q".into(), task_set: "s".into(), specs: specs(&[t]), body_digest: 0 },
    );
    match r {
        CommandResult::Rejected { kind: RejectKind::Invalid, message } => {
            assert!(message.starts_with("tasks[0].priorityClass: unknown priority class \"urgent\""), "{message}")
        }
        other => panic!("expected a refusal: {other:?}"),
    }
    assert_eq!(s.task_count(), 0);
}

#[test]
fn a_gang_whose_members_have_different_classes_is_refused_naming_both_fields() {
    let mut s = setup();
    let mut g = template("g");
    g.gang = Some(GangTemplate { size: 3, ..Default::default() });
    let mut mixed = specs(&[g]);
    mixed[2].priority_class = "critical".into();
    let r = apply(
        &mut s,
        1,
        Command::Submit { client_request_id: "r".into(), queue: "q".into(), task_set: "s".into(), specs: mixed, body_digest: 0 },
    );
    match r {
        CommandResult::Rejected { kind: RejectKind::Invalid, message } => assert!(
            message.starts_with("tasks[2].priorityClass: \"critical\" differs from tasks[0].priorityClass \"default\" of the same gang"),
            "{message}"
        ),
        other => panic!("expected a refusal: {other:?}"),
    }
    assert_eq!(s.task_count(), 0);
}

fn limited_queue(limits: &[&str]) -> Queue {
    let mut q = Queue::new("limited", 1.0);
    q.priority_class_limits = limits.iter().map(|l| flotilla_model::ClassLimit::parse(l).unwrap()).collect();
    q
}

#[test]
fn a_queue_limit_may_name_only_an_existing_class_and_a_refused_one_changes_nothing() {
    let mut s = setup();
    let refused = apply(&mut s, 1, Command::PutQueue { queue: limited_queue(&["urgent:gpu=10%"]), create: true });
    match &refused {
        CommandResult::Rejected { kind: RejectKind::Invalid, message } => {
            assert!(message.starts_with("priorityClassLimits[0].priorityClass: unknown priority class \"urgent\""), "{message}")
        }
        other => panic!("expected an invalid request: {other:?}"),
    }
    assert!(!s.queues.contains_key("limited"), "nothing stored");
    put(&mut s, class("urgent", 500, true), true);
    assert_eq!(
        apply(&mut s, 2, Command::PutQueue { queue: limited_queue(&["urgent:gpu=10%", "default:cpu=64"]), create: true }),
        CommandResult::Ok
    );
    let back: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    assert_eq!(back.queues["limited"].priority_class_limits, limited_queue(&["urgent:gpu=10%", "default:cpu=64"]).priority_class_limits);
    // Two limits on one class and resource are refused by the state machine too.
    let twice = apply(&mut s, 3, Command::PutQueue { queue: limited_queue(&["urgent:gpu=10%", "urgent:gpu=2"]), create: false });
    assert_eq!(rejected_kind(&twice), Some(RejectKind::Invalid), "{twice:?}");
    assert_eq!(s.queues["limited"].priority_class_limits.len(), 2, "the refused update changed nothing");
}

#[test]
fn a_class_named_in_a_queue_limit_cannot_be_deleted_until_the_limit_is_removed() {
    let mut s = setup();
    put(&mut s, class("urgent", 500, true), true);
    apply(&mut s, 1, Command::PutQueue { queue: limited_queue(&["urgent:gpu=1"]), create: true });
    let refused = apply(&mut s, 2, Command::DeletePriorityClass { name: "urgent".into() });
    match &refused {
        CommandResult::Rejected { kind: RejectKind::Conflict, message } => assert!(message.contains("queue \"limited\""), "{message}"),
        other => panic!("expected a conflict: {other:?}"),
    }
    assert!(s.priority_class("urgent").is_some());
    apply(&mut s, 3, Command::PutQueue { queue: limited_queue(&[]), create: false });
    assert_eq!(apply(&mut s, 4, Command::DeletePriorityClass { name: "urgent".into() }), CommandResult::Ok);
}

#[test]
fn a_queue_without_class_limits_is_stored_as_before() {
    let json = serde_json::to_value(Queue::new("q", 1.0)).unwrap();
    assert!(json.get("priority_class_limits").is_none(), "{json}");
    let old: Queue = serde_json::from_value(json).unwrap();
    assert!(old.priority_class_limits.is_empty());
}
