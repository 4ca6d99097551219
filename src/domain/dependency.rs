//! Dependencies between renders: a render submitted with `depends_on`
//! waits until every render it names has completed, then starts by itself.
//!
//! Dependencies are given at submit only and must name renders that exist
//! then, so no cycle can form. A dependency that fails or is canceled keeps
//! the render waiting (an operator requeues the dependency, releases the
//! render, or cancels it); the waiting render's reason says so.

use std::collections::BTreeSet;

use renderfarm_wire::RenderStatus;
use uuid::Uuid;

use super::ValidationError;

/// The most renders one render may depend on.
pub const MAX_DEPENDENCIES: usize = 32;

/// The dependencies a submit names, each once, in the order given; checks
/// the count. Whether they exist is the store's to answer
/// ([`check_dependencies_exist`]).
pub fn validate_dependencies(ids: &[Uuid]) -> Result<Vec<Uuid>, ValidationError> {
    let mut seen = BTreeSet::new();
    let unique: Vec<Uuid> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
    if unique.len() > MAX_DEPENDENCIES {
        return Err(ValidationError::new(
            "depends_on",
            format!(
                "names {} renders; a render may depend on at most {MAX_DEPENDENCIES}: chain renders instead (C depends on B, B on A)",
                unique.len()
            ),
        ));
    }
    Ok(unique)
}

/// A dependency as the store found it: its name and status, or `None`
/// when no render has its id (any more: deleted since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyState {
    pub id: Uuid,
    pub found: Option<(String, RenderStatus)>,
}

/// Refuses a submit naming a render that does not exist.
pub fn check_dependencies_exist(deps: &[DependencyState]) -> Result<(), ValidationError> {
    let missing: Vec<String> = deps
        .iter()
        .filter(|d| d.found.is_none())
        .map(|d| d.id.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ValidationError::new(
        "depends_on",
        format!(
            "names no render: {}; give the ids of existing renders (GET /renders lists them)",
            missing.join(", ")
        ),
    ))
}

/// Whether a render may run, given its dependencies: `None` when it may
/// (all completed), else why it waits, naming each dependency that is not
/// completed and how it stands.
pub fn waiting_reason(deps: &[DependencyState]) -> Option<String> {
    let mut to_run = Vec::new();
    let mut stuck = Vec::new();
    for dep in deps {
        match &dep.found {
            Some((_, RenderStatus::Completed)) => {}
            Some((name, status @ (RenderStatus::Failed | RenderStatus::Canceled))) => {
                stuck.push(format!("{name} ({}, {})", dep.id, status.as_str()));
            }
            Some((name, status)) => {
                to_run.push(format!("{name} ({}, {})", dep.id, status.as_str()))
            }
            None => stuck.push(format!("{} (deleted)", dep.id)),
        }
    }
    if to_run.is_empty() && stuck.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !to_run.is_empty() {
        parts.push(format!("waiting for {} to complete", to_run.join(", ")));
    }
    if !stuck.is_empty() {
        parts.push(format!(
            "blocked by {}: requeue {} to go on, or release this render to start it without {}",
            stuck.join(", "),
            if stuck.len() == 1 { "it" } else { "them" },
            if stuck.len() == 1 { "it" } else { "them" },
        ));
    }
    Some(parts.join("; "))
}

/// The status a render starts in: waiting while a dependency has not
/// completed, else queued.
pub fn initial_status(reason: &Option<String>) -> RenderStatus {
    if reason.is_some() {
        RenderStatus::Waiting
    } else {
        RenderStatus::Queued
    }
}

/// Whether a render that changed from `before` to `after` may change what
/// the renders that depend on it wait for: any change of status does (a
/// completion releases them, a failure or requeue changes their reason).
pub fn settles_dependents(before: RenderStatus, after: RenderStatus) -> bool {
    before != after
}

#[cfg(test)]
mod tests {
    use super::*;
    use RenderStatus as S;

    fn dep(n: u128, status: Option<S>) -> DependencyState {
        DependencyState {
            id: Uuid::from_u128(n),
            found: status.map(|s| (format!("shot{n}"), s)),
        }
    }

    #[test]
    fn a_render_waits_until_every_dependency_completed() {
        // (dependency statuses, waits)
        let table: &[(&[Option<S>], bool)] = &[
            (&[], false),
            (&[Some(S::Completed)], false),
            (&[Some(S::Completed), Some(S::Completed)], false),
            (&[Some(S::Waiting)], true),
            (&[Some(S::Queued)], true),
            (&[Some(S::Rendering)], true),
            (&[Some(S::Paused)], true),
            (&[Some(S::Failed)], true),
            (&[Some(S::Canceled)], true),
            (&[None], true),
            (&[Some(S::Completed), Some(S::Rendering)], true),
        ];
        for (statuses, waits) in table {
            let deps: Vec<_> = statuses
                .iter()
                .enumerate()
                .map(|(i, s)| dep(i as u128 + 1, *s))
                .collect();
            let reason = waiting_reason(&deps);
            assert_eq!(reason.is_some(), *waits, "{statuses:?}: {reason:?}");
            assert_eq!(
                initial_status(&reason),
                if *waits { S::Waiting } else { S::Queued }
            );
        }
    }

    #[test]
    fn the_reason_names_each_dependency_and_what_it_needs() {
        let reason = waiting_reason(&[
            dep(1, Some(S::Completed)),
            dep(2, Some(S::Rendering)),
            dep(3, Some(S::Failed)),
        ])
        .unwrap();
        assert!(!reason.contains("shot1"), "{reason}");
        assert!(
            reason.contains(
                "waiting for shot2 (00000000-0000-0000-0000-000000000002, rendering) to complete"
            ),
            "{reason}"
        );
        assert!(
            reason.contains("blocked by shot3 (00000000-0000-0000-0000-000000000003, failed): requeue it to go on, or release this render"),
            "{reason}"
        );
        let reason = waiting_reason(&[dep(4, Some(S::Canceled)), dep(5, None)]).unwrap();
        assert!(reason.contains("canceled"), "{reason}");
        assert!(reason.contains("deleted"), "{reason}");
        assert!(reason.contains("requeue them"), "{reason}");
        assert!(!reason.contains("waiting for"), "{reason}");
    }

    #[test]
    fn dependencies_are_counted_once_and_bounded() {
        let a = Uuid::from_u128(1);
        assert_eq!(validate_dependencies(&[a, a]).unwrap(), vec![a]);
        let many: Vec<Uuid> = (0..=MAX_DEPENDENCIES as u128)
            .map(Uuid::from_u128)
            .collect();
        let e = validate_dependencies(&many).unwrap_err();
        assert_eq!(e.field, "depends_on");
        assert!(e.message.contains("at most 32"), "{}", e.message);
        assert!(validate_dependencies(&many[..MAX_DEPENDENCIES]).is_ok());
    }

    #[test]
    fn unknown_dependencies_are_refused_by_id() {
        assert!(check_dependencies_exist(&[dep(1, Some(S::Failed))]).is_ok());
        let e = check_dependencies_exist(&[dep(1, Some(S::Queued)), dep(2, None)]).unwrap_err();
        assert!(
            e.message
                .contains("names no render: 00000000-0000-0000-0000-000000000002"),
            "{}",
            e.message
        );
    }

    #[test]
    fn any_status_change_settles_dependents() {
        assert!(settles_dependents(S::Rendering, S::Completed));
        assert!(settles_dependents(S::Completed, S::Queued));
        assert!(settles_dependents(S::Rendering, S::Failed));
        assert!(!settles_dependents(S::Rendering, S::Rendering));
    }
}
