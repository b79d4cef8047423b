//! Identifiers: a short prefix naming the kind of object, then a ULID.
//!
//! ULIDs sort by creation time, so a list ordered by id is ordered by age, and ids made
//! by several processes never collide.

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}
