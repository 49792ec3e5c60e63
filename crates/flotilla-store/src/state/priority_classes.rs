//! Priority classes: operator-defined, replicated, and never deleted while a task or a
//! queue's per-class limit uses one.
//!
//! A state that never recorded a class (a new federation, or a snapshot written before
//! classes were replicated) has the built-in ones ([`PriorityClass::builtin`]): `classes`
//! is `None` until the first priority-class command copies them in and changes them.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use flotilla_model::{quote, PriorityClass, TaskId, TaskSpec, MAX_PRIORITY_CLASSES};

use super::State;
use crate::command::{CommandResult, RejectKind};

static BUILTIN: LazyLock<BTreeMap<String, PriorityClass>> =
    LazyLock::new(|| PriorityClass::builtin().into_iter().map(|c| (c.name.clone(), c)).collect());

impl State {
    /// Every priority class, by name.
    pub fn priority_classes(&self) -> &BTreeMap<String, PriorityClass> {
        self.priority_classes.as_ref().unwrap_or(&BUILTIN)
    }

    pub fn priority_class(&self, name: &str) -> Option<&PriorityClass> {
        self.priority_classes().get(name)
    }

    /// Unfinished tasks (queued or holding resources) of class `name`, at most `max` of them.
    pub fn tasks_of_class(&self, name: &str, max: usize) -> Vec<TaskId> {
        self.queued().chain(self.active()).filter(|t| t.spec.priority_class == name).map(|t| t.id).take(max).collect()
    }

    pub(super) fn put_priority_class(&mut self, class: &PriorityClass, create: bool) -> CommandResult {
        if let Some(e) = class.validate().first() {
            return CommandResult::rejected(RejectKind::Invalid, e.to_string());
        }
        let exists = self.priority_class(&class.name).is_some();
        if create && exists {
            return CommandResult::rejected(RejectKind::AlreadyExists, format!("priority class {} already exists", quote(&class.name)));
        }
        if !create && !exists {
            return CommandResult::rejected(RejectKind::NotFound, format!("priority class {} does not exist", quote(&class.name)));
        }
        if create && self.priority_classes().len() >= MAX_PRIORITY_CLASSES {
            return CommandResult::rejected(
                RejectKind::Conflict,
                format!("there are already {MAX_PRIORITY_CLASSES} priority classes, the most a federation holds"),
            );
        }
        let classes = self.priority_classes.get_or_insert_with(|| BUILTIN.clone());
        classes.insert(class.name.clone(), class.clone());
        // Queued tasks of this class may now sort (and so be scheduled) differently.
        self.sched_feed.reset();
        CommandResult::Ok
    }

    pub(super) fn delete_priority_class(&mut self, name: &str) -> CommandResult {
        if self.priority_class(name).is_none() {
            return CommandResult::rejected(RejectKind::NotFound, format!("priority class {} does not exist", quote(name)));
        }
        let users = self.tasks_of_class(name, 3);
        if !users.is_empty() {
            let ids: Vec<String> = users.iter().map(|id| id.to_string()).collect();
            return CommandResult::rejected(
                RejectKind::Conflict,
                format!(
                    "priority class {} is used by unfinished tasks ({}...); wait for them to finish or cancel them",
                    quote(name),
                    ids.join(", ")
                ),
            );
        }
        // A limit on a class that is gone would limit nothing, silently; the operator removes
        // it (`flotilla queue update`) first.
        if let Some(q) = self.queues.values().find(|q| q.priority_class_limits.iter().any(|l| l.priority_class == name)) {
            return CommandResult::rejected(
                RejectKind::Conflict,
                format!("priority class {} is named in a limit of queue {}; remove that limit first", quote(name), quote(&q.name)),
            );
        }
        self.priority_classes.get_or_insert_with(|| BUILTIN.clone()).remove(name);
        CommandResult::Ok
    }

    /// Class `name` (at `path` of a request) exists; else the rejection lists known ones.
    pub(super) fn check_class_exists(&self, path: &str, name: &str) -> Result<(), CommandResult> {
        if self.priority_class(name).is_some() {
            return Ok(());
        }
        let known: Vec<&str> = self.priority_classes().keys().map(String::as_str).take(16).collect();
        Err(CommandResult::rejected(
            RejectKind::Invalid,
            format!("{path}: unknown priority class {} (known: {})", quote(name), known.join(", ")),
        ))
    }

    /// A submission's classes exist, and every member of a gang has its gang's class.
    pub(super) fn check_submitted_classes(&self, specs: &[TaskSpec]) -> Result<(), CommandResult> {
        let mut gang_class: Option<(usize, &str)> = None;
        for (i, spec) in specs.iter().enumerate() {
            self.check_class_exists(&format!("tasks[{i}].priorityClass"), &spec.priority_class)?;
            match &spec.gang {
                Some(g) if g.rank == 0 => gang_class = Some((i, &spec.priority_class)),
                Some(_) => {
                    if let Some((leader, class)) = gang_class.filter(|(_, class)| *class != spec.priority_class) {
                        return Err(CommandResult::rejected(
                            RejectKind::Invalid,
                            format!(
                                "tasks[{i}].priorityClass: {} differs from tasks[{leader}].priorityClass {} of the same gang; every member of a gang has one priority class",
                                quote(&spec.priority_class),
                                quote(class)
                            ),
                        ));
                    }
                }
                None => gang_class = None,
            }
        }
        Ok(())
    }
}
