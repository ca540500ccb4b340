//! The one character PostgreSQL cannot store in `text` or `jsonb`: NUL (`\u0000`), which
//! JSON allows anywhere. Finding the first one in a job's args, with its path.

use std::fmt::Write;

use serde_json::Value;

use crate::problem::FieldError;

const REFUSED: &str = "PostgreSQL cannot store the NUL character (\\u0000)";

/// The first NUL in a string or an object key of `value`, named by its path below `root`
/// (`args.list[1].deep`; for a key, the path of the object holding it).
pub fn first_nul(value: &Value, root: &str) -> Option<FieldError> {
    let mut path = root.to_owned();
    find(value, &mut path)
}

/// Depth-first; `path` is where `value` is, restored before returning. The JSON parser's
/// recursion limit (128) bounds the depth.
fn find(value: &Value, path: &mut String) -> Option<FieldError> {
    match value {
        Value::String(text) if text.contains('\0') => Some(FieldError {
            field: path.clone(),
            message: format!("contains a NUL character: {REFUSED}"),
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
            let end = path.len();
            write!(path, "[{index}]").expect("writing to a String cannot fail");
            let found = find(item, path);
            path.truncate(end);
            found
        }),
        Value::Object(members) => members.iter().find_map(|(key, item)| {
            if key.contains('\0') {
                return Some(FieldError {
                    field: path.clone(),
                    message: format!(
                        "the key {} contains a NUL character: {REFUSED}",
                        Value::from(key.as_str())
                    ),
                });
            }
            let end = path.len();
            write!(path, ".{key}").expect("writing to a String cannot fail");
            let found = find(item, path);
            path.truncate(end);
            found
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field(value: Value) -> Option<String> {
        first_nul(&value, "args").map(|error| error.field)
    }

    #[test]
    fn names_the_first_nul_at_any_depth_in_strings_and_keys() {
        assert_eq!(field(json!({ "a": "x\u{0}" })).as_deref(), Some("args.a"));
        assert_eq!(
            field(json!({ "a": [1, { "b": ["ok", "\u{0}"] }] })).as_deref(),
            Some("args.a[1].b[1]")
        );
        assert_eq!(
            field(json!({ "a": { "k\u{0}": 1 } })).as_deref(),
            Some("args.a")
        );
        assert_eq!(field(json!("\u{0}")).as_deref(), Some("args"));
    }

    #[test]
    fn quotes_a_bad_key_escaped_and_passes_clean_values() {
        let error = first_nul(&json!({ "k\u{0}": 1 }), "args").unwrap();
        assert!(error.message.contains(r#"the key "k\u0000""#), "{error:?}");
        assert_eq!(
            field(json!({ "a": ["\\u0000 spelled out", 1.5, null] })),
            None
        );
    }
}
