//! The `error` filter of job listings and redrives: text searched for in jobs' last errors.

use engine_shared::store::MIN_ERROR_FILTER_CHARS;

/// The filter to search for: `None` when absent or empty; `Err` with the field's message
/// when it is too short for the trigram index to narrow the search (the search would read
/// every error of the namespace).
pub(super) fn parse(raw: Option<String>) -> Result<Option<String>, String> {
    match raw.filter(|text| !text.is_empty()) {
        Some(text) if text.chars().count() < MIN_ERROR_FILTER_CHARS => Err(format!(
            "must be at least {MIN_ERROR_FILTER_CHARS} characters (or left out)"
        )),
        filter => Ok(filter),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn short_text_is_refused_and_empty_text_is_no_filter() {
        assert!(parse(Some("ab".into())).is_err());
        assert_eq!(parse(Some(String::new())), Ok(None));
        assert_eq!(parse(Some("äöü".into())), Ok(Some("äöü".into())));
    }
}
