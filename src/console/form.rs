//! A submitted console form: the `application/x-www-form-urlencoded` pairs, in order.
//!
//! Parsed once, by the session check, which needs the CSRF field before any handler
//! runs. Repeated names are kept (an endpoint's `events` come as one field each).

#[derive(Clone, Debug, Default)]
pub struct FormData(Vec<(String, String)>);

impl FormData {
    pub fn parse(body: &[u8]) -> FormData {
        FormData(
            url::form_urlencoded::parse(body)
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
        )
    }

    /// The first value of the field.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the field, in the order sent.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether a checkbox with this name was checked.
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_fields_are_all_kept_in_order() {
        let form = FormData::parse(b"events=a.b&name=x+y&events=c.d&csrf=%2Ft");
        assert_eq!(form.all("events"), ["a.b", "c.d"]);
        assert_eq!(form.get("name"), Some("x y"));
        assert_eq!(form.get("csrf"), Some("/t"));
        assert!(!form.checked("enabled"));
    }
}
