//! Listings, filters, pages, and unknown ids.

use chrono::Duration;
use renderfarm_wire::{Priority, RenderStatus, TaskStatus, WorkerAction};
use uuid::Uuid;

use super::{claim, complete, plan, plan_by, t0, worker};
use crate::domain::TaskReport;
use crate::domain::{RenderCommand, RenderOrder};
use crate::store::{PageRequest, RenderFilter, Store, StoreError};

pub async fn renders_keep_who_submitted_them_and_list_by_owner(store: &dyn Store) {
    let at = |s| t0() + Duration::seconds(s);
    let mut ids = Vec::new();
    for (i, owner) in [Some("alice"), Some("bob"), Some("alice"), None]
        .into_iter()
        .enumerate()
    {
        let new = match owner {
            Some(owner) => plan_by(
                owner,
                &format!("r{i}"),
                1,
                2,
                1,
                Priority::Normal,
                at(i as i64),
            ),
            None => plan(&format!("r{i}"), 1, 2, 1, Priority::Normal, at(i as i64)),
        };
        let created = store.create_render(new).await.unwrap();
        assert_eq!(created.owner.as_deref(), owner, "as created");
        assert_eq!(
            store.get_render(created.id).await.unwrap().owner.as_deref(),
            owner,
            "as read back"
        );
        ids.push(created.id);
    }
    let listed = |owner: &str, status: Option<RenderStatus>, page: PageRequest| {
        let filter = RenderFilter {
            status,
            owner: Some(owner.to_string()),
            ..RenderFilter::default()
        };
        async move {
            store
                .list_renders(&filter, RenderOrder::default(), page)
                .await
                .unwrap()
        }
    };
    let alice = listed("alice", None, PageRequest::default()).await;
    assert_eq!(
        alice.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[2], ids[0]],
        "newest first"
    );
    assert_eq!(alice.total, 2);
    assert!(alice
        .items
        .iter()
        .all(|r| r.owner.as_deref() == Some("alice")));
    let second = listed(
        "alice",
        None,
        PageRequest {
            limit: 1,
            offset: 1,
        },
    )
    .await;
    assert_eq!(
        (
            second.items.iter().map(|r| r.id).collect::<Vec<_>>(),
            second.total
        ),
        (vec![ids[0]], 2)
    );
    store
        .change_render(ids[0], RenderCommand::Pause, Some("alice"), t0())
        .await
        .unwrap();
    let paused = listed("alice", Some(RenderStatus::Paused), PageRequest::default()).await;
    assert_eq!(
        paused.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    assert_eq!(
        listed("bob", Some(RenderStatus::Paused), PageRequest::default())
            .await
            .total,
        0
    );
    let nobody = listed("carol", None, PageRequest::default()).await;
    assert_eq!((nobody.items.len(), nobody.total), (0, 0));
    let all = store
        .list_renders(
            &RenderFilter::default(),
            RenderOrder::default(),
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(all.total, 4, "no owner filter: everyone's and no one's");
}

pub async fn listings_filter_and_paginate(store: &dyn Store) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let priority = if i % 2 == 0 {
            Priority::High
        } else {
            Priority::Low
        };
        let r = store
            .create_render(plan(
                &format!("r{i}"),
                1,
                1,
                1,
                priority,
                t0() + Duration::seconds(i),
            ))
            .await
            .unwrap();
        ids.push(r.id);
    }
    store
        .change_render(ids[0], RenderCommand::Pause, None, t0())
        .await
        .unwrap();
    let all = store
        .list_renders(
            &RenderFilter::default(),
            RenderOrder::default(),
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(all.total, 5);
    assert_eq!(
        all.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>(),
        "newest first"
    );
    let page = store
        .list_renders(
            &RenderFilter::default(),
            RenderOrder::default(),
            PageRequest {
                limit: 2,
                offset: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    assert_eq!((page.total, page.limit, page.offset), (5, 2, 2));
    let high = store
        .list_renders(
            &RenderFilter {
                priority: Some(Priority::High),
                ..RenderFilter::default()
            },
            RenderOrder::default(),
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(high.total, 3);
    let paused_high = store
        .list_renders(
            &RenderFilter {
                priority: Some(Priority::High),
                status: Some(RenderStatus::Paused),
                owner: None,
                search: None,
            },
            RenderOrder::default(),
            PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        paused_high.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let r = store
        // Urgent: the claims below take its tasks before the others'.
        .create_render(plan("many", 1, 10, 1, Priority::Urgent, t0()))
        .await
        .unwrap();
    let tasks = store
        .list_tasks(
            r.id,
            None,
            PageRequest {
                limit: 3,
                offset: 8,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        tasks
            .items
            .iter()
            .map(|t| t.frame_start)
            .collect::<Vec<_>>(),
        vec![9, 10]
    );
    assert_eq!(tasks.total, 10);
    // Two of its tasks claimed, one of those completed: filter by status.
    let w0 = worker(store, "w0", &[]).await;
    let first = claim(store, w0).await.unwrap();
    complete(store, &first).await;
    let second = claim(store, w0).await.unwrap();
    let frames_in = |status: TaskStatus, page: PageRequest| async move {
        let page = store.list_tasks(r.id, Some(status), page).await.unwrap();
        assert!(page.items.iter().all(|t| t.status == status), "{page:?}");
        (
            page.items.iter().map(|t| t.frame_start).collect::<Vec<_>>(),
            page.total,
        )
    };
    assert_eq!(
        frames_in(TaskStatus::Completed, PageRequest::default()).await,
        (vec![1], 1)
    );
    assert_eq!(
        frames_in(TaskStatus::Running, PageRequest::default()).await,
        (vec![2], 1)
    );
    assert_eq!(
        frames_in(
            TaskStatus::Pending,
            PageRequest {
                limit: 2,
                offset: 1
            }
        )
        .await,
        (vec![4, 5], 8),
        "pages count within the status"
    );
    assert_eq!(
        frames_in(TaskStatus::Failed, PageRequest::default()).await,
        (vec![], 0)
    );
    store
        .report_task(
            second.task_id,
            second.lease_id,
            TaskReport::Release,
            None,
            t0(),
        )
        .await
        .unwrap();
    let w1 = worker(store, "w1", &[]).await;
    let w2 = worker(store, "w2", &[]).await;
    let workers = store.list_workers(chrono::Utc::now()).await.unwrap();
    assert_eq!(
        workers.iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![w0, w1, w2],
        "workers in the order they registered"
    );
}

pub async fn unknown_ids_are_not_found(store: &dyn Store) {
    let id = Uuid::new_v4();
    let not_found =
        |r: Result<(), StoreError>| assert!(matches!(r, Err(StoreError::NotFound { .. })), "{r:?}");
    not_found(store.get_render(id).await.map(drop));
    not_found(
        store
            .list_tasks(id, None, PageRequest::default())
            .await
            .map(drop),
    );
    not_found(
        store
            .change_render(id, RenderCommand::Pause, None, t0())
            .await
            .map(drop),
    );
    not_found(store.get_task(id).await.map(drop));
    not_found(store.task_log(id).await.map(drop));
    not_found(store.get_worker(id, chrono::Utc::now()).await.map(drop));
    not_found(
        store
            .change_worker(id, WorkerAction::Drain, None, t0())
            .await
            .map(drop),
    );
    not_found(store.claim_next_task(id, t0()).await.map(drop));
    not_found(
        store
            .report_task(id, id, TaskReport::Complete, None, t0())
            .await
            .map(drop),
    );
}

/// Every sort in both directions gives the order `domain::compare_renders`
/// gives, on every page, with the filters and the name search applied.
pub async fn listings_search_and_sort_as_the_domain_says(store: &dyn Store) {
    use crate::domain::{compare_renders, name_matches, RenderSortKey, SortOrder};
    use renderfarm_wire::{ListOrder, RenderSort};
    // Names that tie, differ in case and sort differently as bytes and as
    // words; priorities, statuses and progress that tie and differ.
    let specs: &[(&str, Priority, i64)] = &[
        ("Shot010", Priority::High, 4),
        ("shot_020", Priority::Low, 2),
        ("b-roll", Priority::Urgent, 3),
        ("SHOT030", Priority::High, 1),
        ("a%_b", Priority::Normal, 4),
        ("shot010", Priority::Normal, 2),
        ("Été", Priority::Low, 2),
        ("b-roll", Priority::High, 3),
    ];
    let mut ids = Vec::new();
    for (i, (name, priority, frames)) in specs.iter().enumerate() {
        let r = store
            .create_render(plan(
                name,
                1,
                *frames,
                1,
                *priority,
                t0() + Duration::seconds(i as i64),
            ))
            .await
            .unwrap();
        ids.push(r.id);
    }
    // Progress and statuses: some frames done here and there, one paused,
    // one canceled.
    let w = worker(store, "w", &[]).await;
    for _ in 0..4 {
        let a = claim(store, w).await.expect("work to claim");
        complete(store, &a).await;
    }
    store
        .change_render(ids[3], RenderCommand::Pause, None, t0())
        .await
        .unwrap();
    store
        .change_render(ids[5], RenderCommand::Cancel, None, t0())
        .await
        .unwrap();
    let all = store
        .list_renders(
            &RenderFilter::default(),
            RenderOrder::default(),
            PageRequest::default(),
        )
        .await
        .unwrap();
    let submitted = |id| ids.iter().position(|i| *i == id).unwrap() as i64;
    let filters = [
        RenderFilter::default(),
        RenderFilter {
            search: Some("SHOT".into()),
            ..RenderFilter::default()
        },
        RenderFilter {
            search: Some("%_".into()),
            ..RenderFilter::default()
        },
        RenderFilter {
            search: Some("b-roll".into()),
            priority: Some(Priority::High),
            ..RenderFilter::default()
        },
        RenderFilter {
            search: Some("été".into()),
            ..RenderFilter::default()
        },
    ];
    for filter in &filters {
        for sort in RenderSort::ALL {
            for order in [None, Some(ListOrder::Asc), Some(ListOrder::Desc)] {
                let order = RenderOrder::new(sort, order.map(SortOrder::from));
                let mut want: Vec<_> = all
                    .items
                    .iter()
                    .filter(|r| {
                        filter
                            .search
                            .as_deref()
                            .is_none_or(|q| name_matches(&r.name, q))
                            && filter.priority.is_none_or(|p| p == r.priority)
                    })
                    .collect();
                want.sort_by(|a, b| {
                    compare_renders(
                        order,
                        &RenderSortKey::of(a, submitted(a.id)),
                        &RenderSortKey::of(b, submitted(b.id)),
                    )
                });
                let want: Vec<Uuid> = want.iter().map(|r| r.id).collect();
                let mut got = Vec::new();
                for offset in (0..=want.len() as i64).step_by(3) {
                    let page = store
                        .list_renders(filter, order, PageRequest { limit: 3, offset })
                        .await
                        .unwrap();
                    assert_eq!(page.total, want.len() as i64, "{filter:?} {order:?}");
                    got.extend(page.items.iter().map(|r| r.id));
                }
                assert_eq!(got, want, "{filter:?} {order:?}");
            }
        }
    }
    let shots = store
        .list_renders(&filters[1], RenderOrder::default(), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(shots.total, 4, "Shot010, shot_020, SHOT030 and shot010");
    assert!(
        store
            .list_renders(&filters[4], RenderOrder::default(), PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "only ASCII letters match in either case"
    );
}
