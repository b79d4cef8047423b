//! The event-type catalog: the default ISP-shaped list Herald ships with, the rule for
//! names a host may register, and the close matches offered for an unknown name.

use crate::model::EventType;

const TRIGGERS: &[(&str, &str)] = &[
    ("account", "a customer account"),
    ("contact", "a contact person of an account"),
    ("address", "a postal or service address"),
    ("service", "a service an account subscribes to"),
    ("invoice", "an invoice"),
    ("payment", "a payment"),
    ("ticket", "a support ticket"),
    ("job", "a field or scheduled job"),
];

const COMMON_ACTIONS: &[&str] = &["created", "updated", "deleted"];

const DOMAIN_ACTIONS: &[(&str, &str)] = &[
    ("account.status", "an account's status changed"),
    ("account.service.add", "a service was added to an account"),
    (
        "account.service.remove",
        "a service was removed from an account",
    ),
    ("service.status", "a service's status changed"),
    ("invoice.paid", "an invoice was paid in full"),
    ("invoice.overdue", "an invoice passed its due date"),
    ("payment.refunded", "a payment was refunded"),
    ("ticket.assigned", "a ticket was assigned"),
    ("ticket.closed", "a ticket was closed"),
    ("job.completed", "a job was completed"),
];

/// The catalog a new database starts with.
pub fn default_catalog() -> Vec<EventType> {
    let mut types = Vec::new();
    for (trigger, what) in TRIGGERS {
        for action in COMMON_ACTIONS {
            types.push(EventType {
                name: format!("{trigger}.{action}"),
                trigger: trigger.to_string(),
                action: action.to_string(),
                description: format!("{what} was {action}"),
                builtin: true,
            });
        }
    }
    for (name, description) in DOMAIN_ACTIONS {
        let (trigger, action) = split_name(name).expect("built-in names are valid");
        types.push(EventType {
            name: name.to_string(),
            trigger: trigger.to_string(),
            action: action.to_string(),
            description: description.to_string(),
            builtin: true,
        });
    }
    types
}

/// The type of the event `herald endpoint test` sends; it is not in the catalog and
/// reaches only the endpoint under test.
pub const TEST_EVENT: &str = "test";

/// Splits `trigger.action` into its parts, or says why the name is not valid.
pub fn split_name(name: &str) -> Result<(&str, &str), String> {
    let Some((trigger, action)) = name.split_once('.') else {
        return Err(format!(
            "event type '{name}' must be written trigger.action"
        ));
    };
    let valid_part = |part: &str| {
        part.starts_with(|c: char| c.is_ascii_lowercase())
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if name.len() > 100 || !valid_part(trigger) || !action.split('.').all(valid_part) {
        return Err(format!(
            "event type '{name}' may use only lower-case letters, digits and '_', in \
             dot-separated parts that start with a letter, up to 100 characters"
        ));
    }
    Ok((trigger, action))
}

/// Up to three known names closest to `wanted`, best first.
pub fn close_matches<'a>(wanted: &str, known: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(f64, &str)> = known
        .map(|name| (strsim::jaro_winkler(wanted, name), name))
        .filter(|(score, _)| *score >= 0.75)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored
        .into_iter()
        .take(3)
        .map(|(_, name)| name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalog_names_are_valid_and_unique() {
        let catalog = default_catalog();
        let mut names: Vec<_> = catalog.iter().map(|t| t.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), catalog.len());
        assert!(catalog.iter().all(|t| split_name(&t.name).is_ok()));
        assert!(names.contains(&"account.service.add".to_string()));
    }

    #[test]
    fn names_must_be_trigger_dot_action() {
        assert!(split_name("account").is_err());
        assert!(split_name("Account.created").is_err());
        assert!(split_name("account.").is_err());
        assert!(split_name("account..x").is_err());
        assert_eq!(
            split_name("account.service.add"),
            Ok(("account", "service.add"))
        );
    }

    #[test]
    fn a_misspelt_name_gets_close_matches() {
        let catalog = default_catalog();
        let matches = close_matches("acount.status", catalog.iter().map(|t| t.name.as_str()));
        assert_eq!(matches.first().map(String::as_str), Some("account.status"));
    }
}
