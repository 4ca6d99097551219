//! The domain's rules spelled in SQL. Statuses and orders are rendered from
//! the domain's values, never typed in; the two rules SQL must restate in its
//! own words (the tag match, retries exhausted) are tied to the domain's
//! definition by the tests below. Statuses are rendered as literals, not bound
//! as parameters, so that the planner can use the partial indexes of
//! `migrations/sqlite/` (`WHERE status = 'running'`, `'failed'`).

use renderfarm_wire::RenderStatus;

use crate::domain::{status_rank, ClaimKey, RenderOrder, RenderSort, SortOrder, CLAIM_ORDER};
use crate::store::Stored;

/// The value as an SQL string literal: `'running'`.
pub(super) fn lit(value: impl Stored) -> String {
    format!("'{}'", value.stored())
}

/// Membership in a list of values: `IN ('queued', 'rendering')`.
pub(super) fn is_in<S: Stored>(values: &[S]) -> String {
    let list: Vec<String> = values.iter().map(|v| lit(*v)).collect();
    format!("IN ({})", list.join(", "))
}

/// The domain's claim order over the given columns (`r.priority DESC, r.seq`);
/// keys without a column in the query at hand are left out.
pub(super) fn claim_order(column: impl Fn(ClaimKey) -> Option<&'static str>) -> String {
    let keys: Vec<String> = CLAIM_ORDER
        .iter()
        .filter_map(|(key, order)| {
            column(*key).map(|c| match order {
                SortOrder::Ascending => c.to_string(),
                SortOrder::Descending => format!("{c} DESC"),
            })
        })
        .collect();
    keys.join(", ")
}

/// The claim order's columns on `tasks t` (each task carries its render's
/// priority and submission sequence).
pub(super) fn task_column(key: ClaimKey) -> Option<&'static str> {
    Some(match key {
        ClaimKey::Priority => "t.priority",
        ClaimKey::Submitted => "t.render_seq",
        ClaimKey::Rank => "t.claim_rank",
        ClaimKey::FrameStart => "t.frame_start",
    })
}

/// The claim order's columns on `renders r`.
pub(super) fn render_column(key: ClaimKey) -> Option<&'static str> {
    match key {
        ClaimKey::Priority => Some("r.priority"),
        ClaimKey::Submitted => Some("r.seq"),
        ClaimKey::Rank | ClaimKey::FrameStart => None,
    }
}

/// `domain::compare_renders` as an `ORDER BY` on `renders r`: the sort's
/// key, then the submission sequence, both in the listing's direction (so
/// that an index on `(key, seq)` serves either).
pub(super) fn render_order(order: RenderOrder) -> String {
    let key = match order.sort {
        RenderSort::Created => None,
        RenderSort::Name => Some("r.name".to_string()),
        RenderSort::Priority => Some("r.priority".to_string()),
        RenderSort::Status => {
            let ranks: Vec<String> = RenderStatus::ALL
                .into_iter()
                .map(|s| format!("WHEN {} THEN {}", lit(s), status_rank(s)))
                .collect();
            Some(format!("CASE r.status {} END", ranks.join(" ")))
        }
        // Doubles divided from the same integers compare as the fractions
        // do, at these sizes (frames fit in 20 bits).
        RenderSort::Progress => {
            Some("CAST(r.frames_done AS REAL) / MAX(r.frames_total, 1)".to_string())
        }
    };
    let direction = match order.order {
        SortOrder::Ascending => "",
        SortOrder::Descending => " DESC",
    };
    match key {
        Some(key) => format!("{key}{direction}, r.seq{direction}"),
        None => format!("r.seq{direction}"),
    }
}

/// `domain::name_matches` as the pattern of `name LIKE ?1 ESCAPE '\'`:
/// SQLite's `LIKE` folds the case of ASCII letters only, as the rule does.
pub(super) fn name_search_pattern(q: &str) -> String {
    let mut pattern = String::with_capacity(q.len() + 2);
    pattern.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The condition of [`name_search_pattern`] on the column `name`, its
/// pattern bound as `param`.
pub(super) fn name_search(name: &str, param: &str) -> String {
    format!("{name} LIKE {param} ESCAPE '\\'")
}

/// `domain::carries_tags` in SQL: the worker's tags (a JSON array) include
/// every tag the JSON array `required` lists.
pub(super) fn carries_tags(worker: &str, required: &str) -> String {
    format!(
        "({required} = '[]' OR NOT EXISTS ( \
         SELECT 1 FROM json_each({required}) need \
         WHERE need.value NOT IN (SELECT have.value FROM json_each({worker}) have)))"
    )
}

/// `domain::retries_exhausted` in SQL.
pub(super) fn retries_exhausted(retries: &str, max_retries: &str) -> String {
    format!("{retries} >= {max_retries}")
}

#[cfg(test)]
mod tests {
    use renderfarm_wire::Render;
    use rusqlite::Connection;

    use super::*;
    use crate::domain;

    #[test]
    fn statuses_and_orders_are_spelled_from_the_domain() {
        assert_eq!(
            is_in(domain::CLAIMABLE_RENDER_STATUSES),
            "IN ('queued', 'rendering')"
        );
        assert_eq!(lit(domain::LEASED_TASK_STATUS), "'running'");
        assert_eq!(claim_order(render_column), "r.priority DESC, r.seq");
        assert_eq!(
            claim_order(task_column),
            "t.priority DESC, t.render_seq, t.claim_rank, t.frame_start"
        );
    }

    #[test]
    fn the_sql_tag_match_is_the_domain_s() {
        let conn = Connection::open_in_memory().unwrap();
        let sql = format!("SELECT {}", carries_tags("?1", "?2"));
        for (worker, required) in domain::dispatch::TAG_MATCH_CASES {
            let owned = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let (worker, required) = (owned(worker), owned(required));
            let json = |t: &Vec<String>| serde_json::to_string(t).unwrap();
            let in_sql: bool = conn
                .query_row(&sql, [json(&worker), json(&required)], |row| row.get(0))
                .unwrap();
            assert_eq!(
                in_sql,
                domain::carries_tags(&worker, &required),
                "{worker:?} for {required:?}"
            );
        }
    }

    #[test]
    fn the_sql_name_search_is_the_domain_s() {
        let conn = Connection::open_in_memory().unwrap();
        let sql = format!("SELECT {}", name_search("?1", "?2"));
        let names = ["Shot010", "shot_010", "50%_done", "Été", "a\\b", "plain"];
        let searches = [
            "shot", "SHOT0", "t_0", "%_d", "%", "_", "été", "Ét", "\\", "a\\", "x",
        ];
        for name in names {
            for q in searches {
                let in_sql: bool = conn
                    .query_row(&sql, [name, &name_search_pattern(q)], |row| row.get(0))
                    .unwrap();
                assert_eq!(in_sql, domain::name_matches(name, q), "{name:?} ~ {q:?}");
            }
        }
    }

    #[test]
    fn the_sql_render_orders_are_the_domain_s() {
        use std::cmp::Ordering;
        // Keys of renders as a table, ordered by SQL and by the domain.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE renders (seq INTEGER PRIMARY KEY, name TEXT, priority INTEGER, \
             status TEXT, frames_done INTEGER, frames_total INTEGER)",
        )
        .unwrap();
        let rows: Vec<(i64, &str, i64, RenderStatus, i64, i64)> = vec![
            (1, "b", 1, RenderStatus::Failed, 1, 3),
            (2, "B", 3, RenderStatus::Queued, 2, 6),
            (3, "a", 1, RenderStatus::Rendering, 0, 1),
            (4, "é", 0, RenderStatus::Canceled, 5, 5),
            (5, "a", 2, RenderStatus::Paused, 999_999, 1_000_000),
            (6, "z", 1, RenderStatus::Completed, 1, 2),
        ];
        for (seq, name, priority, status, done, total) in &rows {
            conn.execute(
                "INSERT INTO renders VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![seq, name, priority, status.as_str(), done, total],
            )
            .unwrap();
        }
        let render = |(_, name, priority, status, done, total): &(
            i64,
            &str,
            i64,
            RenderStatus,
            i64,
            i64,
        )| {
            let mut r = crate::store::conformance::plan(
                "x",
                1,
                1,
                1,
                renderfarm_wire::Priority::Normal,
                chrono::Utc::now(),
            )
            .render;
            r.name = name.to_string();
            r.priority = renderfarm_wire::Priority::from_rank(*priority).unwrap();
            r.status = *status;
            r.progress.frames_done = *done;
            r.progress.frames_total = *total;
            r
        };
        for sort in RenderSort::ALL {
            for order in [SortOrder::Ascending, SortOrder::Descending] {
                let order = RenderOrder::new(sort, Some(order));
                let in_sql: Vec<i64> = conn
                    .prepare(&format!(
                        "SELECT r.seq FROM renders r ORDER BY {}",
                        render_order(order)
                    ))
                    .unwrap()
                    .query_map([], |row| row.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let mut in_domain: Vec<(i64, Render)> =
                    rows.iter().map(|row| (row.0, render(row))).collect();
                in_domain.sort_by(|a, b| -> Ordering {
                    domain::compare_renders(
                        order,
                        &domain::RenderSortKey::of(&a.1, a.0),
                        &domain::RenderSortKey::of(&b.1, b.0),
                    )
                });
                let in_domain: Vec<i64> = in_domain.iter().map(|(seq, _)| *seq).collect();
                assert_eq!(in_sql, in_domain, "{order:?}");
            }
        }
    }

    #[test]
    fn the_sql_retry_limit_is_the_domain_s() {
        let conn = Connection::open_in_memory().unwrap();
        let sql = format!("SELECT {}", retries_exhausted("?1", "?2"));
        for retries in 0..4_i64 {
            for max_retries in 0..4_i64 {
                let in_sql: bool = conn
                    .query_row(&sql, [retries, max_retries], |row| row.get(0))
                    .unwrap();
                assert_eq!(
                    in_sql,
                    domain::retries_exhausted(retries, max_retries),
                    "{retries} of {max_retries}"
                );
            }
        }
    }
}
