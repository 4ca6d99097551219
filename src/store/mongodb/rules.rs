//! The domain's rules spelled in BSON. Statuses and orders are rendered from
//! the domain's values, never typed in; the two rules BSON must restate in
//! its own words (the tag match, retries exhausted) are tied to the domain's
//! definition by the tests below, which evaluate the documents as the server
//! would.

use bson::{doc, Bson, Document};

use crate::domain::{ClaimKey, RenderOrder, RenderSort, SortOrder, CLAIM_ORDER};
use crate::store::Stored;

/// Membership in a list of values: `{"$in": ["queued", "rendering"]}`.
pub(super) fn is_in<S: Stored>(values: &[S]) -> Bson {
    let list: Vec<Bson> = values.iter().map(|v| Bson::from(v.stored())).collect();
    Bson::Document(doc! { "$in": list })
}

/// The field of a task document each claim key reads (each task carries its
/// render's priority and submission sequence).
fn task_field(key: ClaimKey) -> &'static str {
    match key {
        ClaimKey::Priority => "priority",
        ClaimKey::Submitted => "render_seq",
        ClaimKey::Rank => "claim_rank",
        ClaimKey::FrameStart => "frame_start",
    }
}

/// The domain's claim order as a sort of task documents.
pub(super) fn claim_sort() -> Document {
    let mut sort = Document::new();
    for (key, order) in CLAIM_ORDER {
        let direction = match order {
            SortOrder::Ascending => 1,
            SortOrder::Descending => -1,
        };
        sort.insert(task_field(*key), direction);
    }
    sort
}

/// `domain::compare_renders` as a sort of render documents, when the
/// sort's key is a field: the key, then the submission sequence, both in
/// the listing's direction (an index on `(key, seq)` serves either).
/// `None` for the sorts whose key is computed from several fields (status
/// in life order, progress as a fraction): the store orders those by the
/// domain's comparator itself.
pub(super) fn render_sort(order: RenderOrder) -> Option<Document> {
    let direction = match order.order {
        SortOrder::Ascending => 1,
        SortOrder::Descending => -1,
    };
    let key = match order.sort {
        RenderSort::Created => None,
        RenderSort::Name => Some("name"),
        RenderSort::Priority => Some("priority"),
        RenderSort::Status | RenderSort::Progress => return None,
    };
    let mut sort = Document::new();
    if let Some(key) = key {
        sort.insert(key, direction);
    }
    sort.insert("seq", direction);
    Some(sort)
}

/// `domain::name_matches` as a condition on a render's `name`: a regular
/// expression of the search with each ASCII letter as a class of its two
/// cases (the `i` option would fold every alphabet's, the rule only
/// ASCII's) and everything else matched literally.
pub(super) fn name_search(q: &str) -> Bson {
    let mut pattern = String::with_capacity(q.len() * 4);
    for c in q.chars() {
        if c.is_ascii_alphabetic() {
            pattern.push('[');
            pattern.push(c.to_ascii_lowercase());
            pattern.push(c.to_ascii_uppercase());
            pattern.push(']');
        } else if c.is_ascii_punctuation() || c == ' ' {
            pattern.push('\\');
            pattern.push(c);
        } else {
            pattern.push(c);
        }
    }
    Bson::RegularExpression(bson::Regex {
        pattern,
        options: String::new(),
    })
}

/// `domain::carries_tags` as the condition on a document's `required_tags`:
/// none of them is missing from the worker's tags.
pub(super) fn carries_tags(worker_tags: &[String]) -> Document {
    doc! { "$not": { "$elemMatch": { "$nin": worker_tags } } }
}

/// `domain::retries_exhausted` as an aggregation expression on a task
/// document (which carries its render's `max_retries`).
pub(super) fn retries_exhausted() -> Document {
    doc! { "$gte": ["$retries", "$max_retries"] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain;

    /// A test double of the server's query matching, for the operators the
    /// tag match uses only: whether `value` satisfies `condition`.
    fn matches(value: &Bson, condition: &Document) -> bool {
        condition.iter().all(|(op, arg)| match (op.as_str(), arg) {
            ("$not", Bson::Document(inner)) => !matches(value, inner),
            ("$elemMatch", Bson::Document(inner)) => match value {
                Bson::Array(items) => items.iter().any(|item| matches(item, inner)),
                _ => false,
            },
            ("$nin", Bson::Array(list)) => !list.contains(value),
            ("$in", Bson::Array(list)) => list.contains(value),
            _ => panic!("no evaluator for {op}"),
        })
    }

    /// A test double of the server's comparison expressions, on integers.
    fn evaluate(expression: &Document, task: &Document) -> bool {
        let (op, args) = expression.iter().next().expect("one operator");
        let Bson::Array(args) = args else {
            panic!("{op} takes a list")
        };
        let value = |arg: &Bson| match arg {
            Bson::String(field) if field.starts_with('$') => task.get_i64(&field[1..]).unwrap(),
            other => other.as_i64().unwrap(),
        };
        let (a, b) = (value(&args[0]), value(&args[1]));
        match op.as_str() {
            "$gte" => a >= b,
            "$gt" => a > b,
            "$lte" => a <= b,
            "$lt" => a < b,
            _ => panic!("no evaluator for {op}"),
        }
    }

    #[test]
    fn statuses_and_orders_are_spelled_from_the_domain() {
        assert_eq!(
            is_in(domain::CLAIMABLE_RENDER_STATUSES),
            Bson::Document(doc! { "$in": ["queued", "rendering"] })
        );
        assert_eq!(
            claim_sort(),
            doc! { "priority": -1, "render_seq": 1, "claim_rank": 1, "frame_start": 1 }
        );
    }

    #[test]
    fn the_bson_tag_match_is_the_domain_s() {
        for (worker, required) in domain::dispatch::TAG_MATCH_CASES {
            let owned = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let (worker, required) = (owned(worker), owned(required));
            let stored = Bson::from(required.clone());
            assert_eq!(
                matches(&stored, &carries_tags(&worker)),
                domain::carries_tags(&worker, &required),
                "{worker:?} for {required:?}"
            );
        }
    }

    #[test]
    fn the_bson_name_search_is_the_domain_s() {
        let names = [
            "Shot010", "shot_010", "50%_done", "Été", "a\\b", "a.b", "x[y]",
        ];
        let searches = [
            "shot", "SHOT0", "t_0", "%_d", "%", "_", "été", "Ét", "\\", "a\\", "x", ".", "[", "]",
            "a.b", "(", " ",
        ];
        for q in searches {
            let Bson::RegularExpression(re) = name_search(q) else {
                panic!("a regular expression")
            };
            // The server's PCRE, stood in for by the regex crate (the same
            // syntax for classes and escapes).
            let re = regex::Regex::new(&re.pattern).unwrap();
            for name in names {
                assert_eq!(
                    re.is_match(name),
                    domain::name_matches(name, q),
                    "{name:?} ~ {q:?}"
                );
            }
        }
    }

    #[test]
    fn render_sorts_are_the_domain_s_keys_then_submission() {
        use domain::RenderOrder as O;
        let asc = Some(SortOrder::Ascending);
        let desc = Some(SortOrder::Descending);
        assert_eq!(
            render_sort(O::default()),
            Some(doc! { "seq": -1 }),
            "newest first"
        );
        assert_eq!(
            render_sort(O::new(RenderSort::Name, None)),
            Some(doc! { "name": 1, "seq": 1 })
        );
        assert_eq!(
            render_sort(O::new(RenderSort::Name, desc)),
            Some(doc! { "name": -1, "seq": -1 })
        );
        assert_eq!(
            render_sort(O::new(RenderSort::Priority, asc)),
            Some(doc! { "priority": 1, "seq": 1 })
        );
        assert_eq!(render_sort(O::new(RenderSort::Status, None)), None);
        assert_eq!(render_sort(O::new(RenderSort::Progress, None)), None);
    }

    #[test]
    fn the_bson_retry_limit_is_the_domain_s() {
        for retries in 0..4_i64 {
            for max_retries in 0..4_i64 {
                let task = doc! { "retries": retries, "max_retries": max_retries };
                assert_eq!(
                    evaluate(&retries_exhausted(), &task),
                    domain::retries_exhausted(retries, max_retries),
                    "{retries} of {max_retries}"
                );
            }
        }
    }
}
