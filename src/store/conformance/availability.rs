//! Workers' hours: no claim outside them, a strict worker's heartbeat
//! handing its task back, an operator's hours winning over the agent's until
//! cleared and surviving the agent's reports (`domain::takes_new_work`,
//! `domain::hands_back`).

use chrono::Duration;
use renderfarm_wire::{Heartbeat, HeartbeatAction, HistoryEvent, HoursSetBy, Priority, TaskStatus};

use super::*;
use crate::domain::{validate_worker_hours, HANDED_BACK};
use crate::store::StoreError;

pub async fn a_worker_takes_work_only_in_its_hours_and_a_strict_one_hands_it_back(
    store: &dyn Store,
) {
    // t0 is Friday 2027-01-15 08:00 UTC: 17:00 in Tokyo.
    let friday_17_tokyo = t0();
    let friday_19_tokyo = t0() + Duration::hours(2);
    let r = store
        .create_render(plan("r", 1, 3, 1, Priority::Normal, t0()))
        .await
        .unwrap();
    let night = worker(store, "night", &[]).await;
    let agent_hours =
        validate_worker_hours(Some("Asia/Tokyo"), Some("mon-fri 19:00-07:00"), false).unwrap();
    let shown = store
        .set_worker_hours(night, agent_hours.clone(), friday_17_tokyo)
        .await
        .unwrap();
    assert_eq!(shown.time_zone.as_deref(), Some("Asia/Tokyo"));
    let hours = shown.availability.expect("hours shown");
    assert_eq!(
        (hours.schedule.as_str(), hours.set_by, hours.available_now),
        ("mon-fri 19:00-07:00", HoursSetBy::Agent, false)
    );
    assert_eq!(hours.next_change, Some(friday_19_tokyo));

    // Outside its hours: nothing, though work waits.
    let claimed = store.claim_next_task(night, friday_17_tokyo).await.unwrap();
    assert_eq!(claimed, None, "no claim outside the worker's hours");
    let listed = store.list_workers(friday_17_tokyo).await.unwrap();
    let listed = listed.iter().find(|w| w.id == night).unwrap();
    assert!(!listed.availability.as_ref().unwrap().available_now);

    // At 19:00 on its clock it takes work.
    let first = store
        .claim_next_task(night, friday_19_tokyo)
        .await
        .unwrap()
        .expect("a claim in the worker's hours");
    assert_eq!(first.render_id, r.id);

    // An operator's hours win, and survive the agent reporting again.
    store
        .set_operator_hours(night, Some("sat-sun".into()), friday_19_tokyo)
        .await
        .unwrap();
    let shown = store
        .set_worker_hours(night, agent_hours, friday_19_tokyo)
        .await
        .unwrap();
    let hours = shown.availability.unwrap();
    assert_eq!(
        (hours.schedule.as_str(), hours.set_by),
        ("sat-sun", HoursSetBy::Operator)
    );
    assert_eq!(hours.agent_schedule.as_deref(), Some("mon-fri 19:00-07:00"));
    assert!(!hours.available_now);

    // The task it holds stays its own, and it finishes it: not strict.
    let again = store.claim_next_task(night, friday_19_tokyo).await.unwrap();
    assert_eq!(again.map(|a| a.task_id), Some(first.task_id));
    let beat = Heartbeat {
        task_id: Some(first.task_id),
        lease_id: Some(first.lease_id),
        frames_done: Some(0),
    };
    assert_eq!(
        store
            .heartbeat(night, &beat, friday_19_tokyo)
            .await
            .unwrap(),
        HeartbeatAction::Continue
    );

    // Strict: its next heartbeat hands the task back, without a failure.
    let strict =
        validate_worker_hours(Some("Asia/Tokyo"), Some("mon-fri 19:00-07:00"), true).unwrap();
    store
        .set_worker_hours(night, strict, friday_19_tokyo)
        .await
        .unwrap();
    assert_eq!(
        store
            .heartbeat(night, &beat, friday_19_tokyo)
            .await
            .unwrap(),
        HeartbeatAction::Abort
    );
    let task = store.get_task(first.task_id).await.unwrap();
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!(task.retries, 0, "a hand-back is not a failure");
    let history = store.task_history(first.task_id).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.event, HistoryEvent::Released);
    assert_eq!(last.detail.as_deref(), Some(HANDED_BACK));
    let day = worker(store, "day", &[]).await;
    let taken = store
        .claim_next_task(day, friday_19_tokyo)
        .await
        .unwrap()
        .expect("a worker without hours takes it");
    assert_eq!(taken.task_id, first.task_id);

    // Cleared, the agent's hours apply again: Friday 19:00 is in them.
    let shown = store
        .set_operator_hours(night, None, friday_19_tokyo)
        .await
        .unwrap();
    let hours = shown.availability.unwrap();
    assert_eq!(
        (hours.set_by, hours.available_now),
        (HoursSetBy::Agent, true)
    );
    assert!(store
        .claim_next_task(night, friday_19_tokyo)
        .await
        .unwrap()
        .is_some());

    // "always" from an operator lifts every limit.
    let shown = store
        .set_operator_hours(night, Some("always".into()), friday_17_tokyo)
        .await
        .unwrap();
    assert!(shown.availability.unwrap().available_now);

    let unknown = Uuid::new_v4();
    assert!(matches!(
        store.set_operator_hours(unknown, None, t0()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .set_worker_hours(unknown, Default::default(), t0())
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn a_worker_resumes_from_its_own_drain_never_from_an_operator_s(store: &dyn Store) {
    use renderfarm_wire::{WorkerAction as A, WorkerStatus as S};
    let w = worker(store, "w", &[]).await;
    // Its agent stops, then starts again: it takes work again.
    let drained = store.change_worker_itself(w, A::Drain, t0()).await.unwrap();
    assert_eq!(drained.status, S::Draining);
    let back = store
        .change_worker_itself(w, A::Enable, t0())
        .await
        .unwrap();
    assert_eq!(back.status, S::Idle);
    // An operator's drain, even with the agent stopping on top of it, stands.
    store
        .change_worker(w, A::Drain, Some("ops"), t0())
        .await
        .unwrap();
    store.change_worker_itself(w, A::Drain, t0()).await.unwrap();
    let refused = store.change_worker_itself(w, A::Enable, t0()).await;
    assert!(
        matches!(refused, Err(StoreError::IllegalTransition(ref e)) if e.to_string().contains("operator")),
        "{refused:?}"
    );
    // As does a disable that came after the agent's own drain.
    store
        .change_worker(w, A::Enable, Some("ops"), t0())
        .await
        .unwrap();
    store.change_worker_itself(w, A::Drain, t0()).await.unwrap();
    store
        .change_worker(w, A::Disable, Some("ops"), t0())
        .await
        .unwrap();
    assert!(store
        .change_worker_itself(w, A::Enable, t0())
        .await
        .is_err());
    assert_eq!(store.get_worker(w, t0()).await.unwrap().status, S::Disabled);
    assert!(matches!(
        store
            .change_worker_itself(Uuid::new_v4(), A::Drain, t0())
            .await,
        Err(StoreError::NotFound { .. })
    ));
}
