//! Reading one member of a resource this module wrote, without parsing the
//! rest of it.
//!
//! Why by hand: delivery needs two small members of every stored resource
//! (`identifier` for the conditional create, `subject` for the audit
//! record). A serde parse of the whole resource (about 1.5 KB) per item
//! was a tenth of the hub's CPU while a push destination drains a backlog.
//! serde_json can read one value from the middle of a document and stop
//! there, but it cannot find where that value starts; this does.

use serde::Deserialize;

/// The value of the first member `key` of `json` whose value starts with
/// `opens` (`'['` or `'{'`), read from there and no further; `None` when
/// there is none or it does not parse as `T` (read the whole resource then).
///
/// Sound for valid JSON: the pattern is `"key":` preceded by `{` or `,`
/// and followed by `opens`. A `"` right after `{` or `,` is not escaped, so
/// it opens a string (were it closing one, `key` would follow a string
/// outside any string, which is not JSON), and a string followed by `:` is
/// a member name. The first such member may sit at any depth: callers ask
/// for members that the resources [`super::normalize`] writes hold only at
/// the top level, or for which the first one is the one they want (the
/// tests hold every resource kind to that).
pub fn first_member<'a, T: Deserialize<'a>>(json: &'a str, key: &str, opens: char) -> Option<T> {
    let pattern = format!("\"{key}\":{opens}");
    let mut from = 0;
    while let Some(i) = json[from..].find(&pattern) {
        let at = from + i;
        if at > 0 && matches!(json.as_bytes()[at - 1], b'{' | b',') {
            let value = &json[at + pattern.len() - opens.len_utf8()..];
            let mut de = serde_json::Deserializer::from_str(value);
            // Reads the one value; what follows it is left unread.
            return T::deserialize(&mut de).ok();
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::first_member;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Ident {
        system: String,
        value: String,
    }

    #[test]
    fn reads_the_member_and_ignores_what_follows() {
        let json = r#"{"resourceType":"Observation","identifier":[{"system":"s","value":"v"}],"rest":"not json at all {"#;
        let ids: Option<Vec<Ident>> = first_member(json, "identifier", '[');
        assert_eq!(
            ids,
            Some(vec![Ident {
                system: "s".into(),
                value: "v".into()
            }])
        );
    }

    #[test]
    fn a_name_inside_a_string_or_another_shape_is_not_the_member() {
        // In a string value (quotes escaped), after an escaped quote in a
        // name, and as an object where an array is asked for.
        let json = r#"{"note":"{\"identifier\":[1]}","a\"identifier":[2],"subject":{"identifier":{"system":"p","value":"q"}},"identifier":[{"system":"s","value":"v"}]}"#;
        let ids: Option<Vec<Ident>> = first_member(json, "identifier", '[');
        assert_eq!(ids.map(|v| v[0].value.clone()), Some("v".to_string()));
        let subject: Option<Ident> = first_member(json, "identifier", '{');
        assert_eq!(subject.map(|i| i.value), Some("q".to_string()));
    }

    #[test]
    fn absent_or_unreadable_is_none() {
        let none: Option<Vec<Ident>> = first_member(r#"{"a":1}"#, "identifier", '[');
        assert!(none.is_none());
        // Pretty-printed JSON has a space after the colon: not found here,
        // so the caller parses the whole resource.
        let spaced: Option<Vec<Ident>> = first_member(
            r#"{"identifier": [{"system":"s","value":"v"}]}"#,
            "identifier",
            '[',
        );
        assert!(spaced.is_none());
        let bad: Option<Vec<Ident>> =
            first_member(r#"{"identifier":[{"x":1}]}"#, "identifier", '[');
        assert!(bad.is_none());
    }
}
