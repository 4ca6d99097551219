//! How a render listing is searched and ordered: what each `sort` means, its
//! default direction, how ties are broken, and what a search matches. Stores
//! translate these values into SQL or BSON; the conformance suite checks
//! that each backend's order is [`compare_renders`]'s.

use std::cmp::Ordering;

use renderfarm_wire::{ListOrder, Priority, Render, RenderSort, RenderStatus};

use super::{SortOrder, ValidationError};

/// The direction a sort runs in when the caller gives none: names and
/// statuses read in their natural order; the newest, the most urgent and
/// the furthest along come first. A name is compared as written (byte order
/// of its UTF-8 text, so `Z` sorts before `a`: both stores compare strings
/// that way without a collation).
pub fn default_order(sort: RenderSort) -> SortOrder {
    match sort {
        RenderSort::Name | RenderSort::Status => SortOrder::Ascending,
        RenderSort::Created | RenderSort::Priority | RenderSort::Progress => SortOrder::Descending,
    }
}

impl From<ListOrder> for SortOrder {
    fn from(order: ListOrder) -> Self {
        match order {
            ListOrder::Asc => SortOrder::Ascending,
            ListOrder::Desc => SortOrder::Descending,
        }
    }
}

/// A listing's order: what it compares and which way. Ties are broken by
/// submission in the same direction, so that each order is total and one
/// index on `(key, submission)` serves both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOrder {
    pub sort: RenderSort,
    pub order: SortOrder,
}

impl Default for RenderOrder {
    fn default() -> Self {
        Self::new(RenderSort::default(), None)
    }
}

impl RenderOrder {
    /// `sort` in `order`, or in its default direction when `None`.
    pub fn new(sort: RenderSort, order: Option<SortOrder>) -> Self {
        Self {
            sort,
            order: order.unwrap_or_else(|| default_order(sort)),
        }
    }
}

/// The place of a status in life order, which `sort=status` follows.
pub fn status_rank(status: RenderStatus) -> i64 {
    RenderStatus::ALL
        .iter()
        .position(|s| *s == status)
        .map_or(i64::MAX, |p| p as i64)
}

/// The longest search a listing takes, in characters.
pub const MAX_SEARCH_LEN: usize = 200;

/// A search as the stores take it: a non-empty substring to look for,
/// short and without control characters. Surrounding blanks are kept: a
/// search for `"shot 0"` means the blank.
pub fn validate_search(raw: &str) -> Result<String, ValidationError> {
    if raw.is_empty() {
        return Err(ValidationError::new(
            "q",
            "must not be empty; leave it out to list every render",
        ));
    }
    let length = raw.chars().count();
    if length > MAX_SEARCH_LEN {
        return Err(ValidationError::new(
            "q",
            format!("is {length} characters long; search with at most {MAX_SEARCH_LEN}"),
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "q",
            "must not contain control characters",
        ));
    }
    Ok(raw.to_string())
}

/// Whether a render named `name` matches the search `q`: `q` occurs in the
/// name, ASCII letters compared without regard to case (other characters as
/// written; SQLite's `LIKE` folds no more, and the MongoDB side spells the
/// same rule).
pub fn name_matches(name: &str, q: &str) -> bool {
    name.to_ascii_lowercase().contains(&q.to_ascii_lowercase())
}

/// What [`compare_renders`] reads of a render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderSortKey<'a> {
    pub name: &'a str,
    pub priority: Priority,
    pub status: RenderStatus,
    pub frames_done: i64,
    pub frames_total: i64,
    /// Its submission sequence, or anything that orders renders as they
    /// were submitted: it breaks ties.
    pub submitted: i64,
}

impl<'a> RenderSortKey<'a> {
    /// The key of `render`, submitted `submitted`-th.
    pub fn of(render: &'a Render, submitted: i64) -> Self {
        Self {
            name: &render.name,
            priority: render.priority,
            status: render.status,
            frames_done: render.progress.frames_done,
            frames_total: render.progress.frames_total,
            submitted,
        }
    }
}

/// How two renders compare in `order`.
pub fn compare_renders(order: RenderOrder, a: &RenderSortKey, b: &RenderSortKey) -> Ordering {
    let key = match order.sort {
        RenderSort::Created => Ordering::Equal,
        RenderSort::Name => a.name.as_bytes().cmp(b.name.as_bytes()),
        RenderSort::Priority => a.priority.rank().cmp(&b.priority.rank()),
        RenderSort::Status => status_rank(a.status).cmp(&status_rank(b.status)),
        RenderSort::Progress => compare_progress(
            (a.frames_done, a.frames_total),
            (b.frames_done, b.frames_total),
        ),
    };
    let ascending = key.then(a.submitted.cmp(&b.submitted));
    match order.order {
        SortOrder::Ascending => ascending,
        SortOrder::Descending => ascending.reverse(),
    }
}

/// `done / total` of two renders compared exactly (a render has at least
/// one frame; one with none counts as not started).
pub fn compare_progress(a: (i64, i64), b: (i64, i64)) -> Ordering {
    let ratio = |(done, total): (i64, i64)| (i128::from(done), i128::from(total.max(1)));
    let ((a_done, a_total), (b_done, b_total)) = (ratio(a), ratio(b));
    (a_done * b_total).cmp(&(b_done * a_total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sort_is_named_once() {
        for sort in RenderSort::ALL {
            assert_eq!(RenderSort::parse(sort.as_str()), Some(sort));
            let json = serde_json::to_value(sort).unwrap();
            assert_eq!(json, sort.as_str());
        }
        assert_eq!(SortOrder::from(ListOrder::Asc), SortOrder::Ascending);
        assert_eq!(SortOrder::from(ListOrder::Desc), SortOrder::Descending);
    }

    #[test]
    fn each_sort_has_its_default_direction() {
        use SortOrder::*;
        let table = [
            (RenderSort::Created, Descending),
            (RenderSort::Name, Ascending),
            (RenderSort::Priority, Descending),
            (RenderSort::Status, Ascending),
            (RenderSort::Progress, Descending),
        ];
        for (sort, order) in table {
            assert_eq!(RenderOrder::new(sort, None).order, order, "{sort:?}");
            assert_eq!(
                RenderOrder::new(sort, Some(Ascending)).order,
                Ascending,
                "{sort:?}"
            );
        }
        assert_eq!(
            RenderOrder::default(),
            RenderOrder::new(RenderSort::Created, None)
        );
    }

    #[test]
    fn statuses_rank_in_life_order() {
        let ranks: Vec<i64> = RenderStatus::ALL.into_iter().map(status_rank).collect();
        assert_eq!(ranks, vec![0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_search_matches_a_substring_with_ascii_case_folded() {
        let table = [
            ("Shot010", "shot", true),
            ("shot010", "SHOT0", true),
            ("shot010", "t01", true),
            ("shot010", "shot 0", false),
            ("Été", "été", false),
            ("Été", "Ét", true),
            ("50%_done", "%_d", true),
            ("a", "ab", false),
        ];
        for (name, q, want) in table {
            assert_eq!(name_matches(name, q), want, "{name:?} ~ {q:?}");
        }
    }

    #[test]
    fn searches_are_short_visible_text() {
        assert!(validate_search("shot").is_ok());
        assert_eq!(validate_search(" a ").unwrap(), " a ");
        for bad in [String::new(), "a\nb".into(), "x".repeat(201)] {
            assert_eq!(validate_search(&bad).unwrap_err().field, "q", "{bad:?}");
        }
    }

    #[test]
    fn progress_compares_exact_fractions() {
        assert_eq!(compare_progress((1, 2), (2, 4)), Ordering::Equal);
        assert_eq!(compare_progress((1, 3), (1, 2)), Ordering::Less);
        assert_eq!(
            compare_progress((10, 10), (999_999, 1_000_000)),
            Ordering::Greater
        );
        assert_eq!(compare_progress((0, 0), (0, 5)), Ordering::Equal);
    }
}
