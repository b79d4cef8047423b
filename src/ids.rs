//! Identifiers: a short prefix naming the kind of object, then a ULID.
//!
//! ULIDs sort by creation time, so a list ordered by id is ordered by age, and ids made
//! by several processes never collide. Within one process they also sort in the order
//! they were made, even many within one millisecond.

use std::sync::{LazyLock, Mutex};

use ulid::{Generator, Ulid};

static GENERATOR: LazyLock<Mutex<Generator>> = LazyLock::new(|| Mutex::new(Generator::new()));

pub fn new_id(prefix: &str) -> String {
    let next = GENERATOR.lock().expect("id generator lock").generate();
    // Past 2^80 ids in one millisecond the order within it is given up, not the id.
    let ulid = next.unwrap_or_else(|_| Ulid::new());
    format!("{prefix}_{}", ulid.to_string().to_lowercase())
}

/// Whether `text` has the shape of an id of this kind that `new_id` made.
pub fn is_id(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|ulid| {
            ulid.len() == ulid::ULID_LEN
                && ulid
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
                && Ulid::from_string(ulid).is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_in_a_row_sort_in_that_order() {
        let ids: Vec<String> = (0..1000).map(|_| new_id("alr")).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn only_an_id_of_the_kind_asked_for_is_one() {
        let id = new_id("ep");
        assert!(is_id(&id, "ep"));
        assert!(!is_id(&id, "alr"));
        assert!(!is_id(&id.to_uppercase(), "ep"));
        assert!(!is_id("ep_", "ep"));
        assert!(!is_id("ep_ZZZZ", "ep"));
        assert!(!is_id(&format!("{id}0"), "ep"));
        assert!(!is_id("ep_0000000000000000000000000_", "ep"));
    }
}
