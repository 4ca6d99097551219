//! The domain's rules spelled in SQL. Statuses and orders are rendered from
//! the domain's values, never typed in; the two rules SQL must restate in its
//! own words (the tag match, retries exhausted) are tied to the domain's
//! definition by the tests below. Statuses are rendered as literals, not bound
//! as parameters, so that the planner can use the partial indexes of
//! `migrations/sqlite/` (`WHERE status = 'running'`, `'failed'`).

use crate::domain::{ClaimKey, SortOrder, CLAIM_ORDER};
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
        ClaimKey::FrameStart => "t.frame_start",
    })
}

/// The claim order's columns on `renders r`.
pub(super) fn render_column(key: ClaimKey) -> Option<&'static str> {
    match key {
        ClaimKey::Priority => Some("r.priority"),
        ClaimKey::Submitted => Some("r.seq"),
        ClaimKey::FrameStart => None,
    }
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
            "t.priority DESC, t.render_seq, t.frame_start"
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
