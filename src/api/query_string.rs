//! The query string, decoded and re-encoded by hand.
//!
//! FHIR search URLs are RFC 3986 URLs, not HTML forms: a `+` is a plus (the
//! offset in `ge2024-03-01T10:00:00+01:00`), not a space, so the usual
//! form decoder would silently change a filter. FHIR's own escapes (`\,`,
//! `\|`, `\$`, `\\`) inside values are handled by [`split_escaped`].

/// Decodes `a=b&c=d` into pairs, in order. A pair without `=` has an empty
/// value; empty segments (`&&`) are skipped. The error names no value.
pub fn decode(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for seg in raw.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = seg.split_once('=').unwrap_or((seg, ""));
        out.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => {
                    return Err(
                        "the query string has a '%' that is not followed by two hex digits; percent-encode it as %25"
                            .into(),
                    );
                }
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        "the query string does not decode to UTF-8 text; percent-encode UTF-8 bytes".into()
    })
}

/// Encodes pairs as a query string (no leading `?`).
pub fn encode(pairs: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        percent_encode_into(k, &mut out);
        out.push('=');
        percent_encode_into(v, &mut out);
    }
    out
}

fn percent_encode_into(s: &str, out: &mut String) {
    for &c in s.as_bytes() {
        // Unreserved characters plus the delimiters FHIR uses in names and
        // values that are safe in a query (`:` `,` `/`); `|` and `+` are
        // escaped so no decoder can misread them.
        if c.is_ascii_alphanumeric() || b"-._~:,/".contains(&c) {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(c >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(c & 15)]));
        }
    }
}

/// Splits a FHIR search value on `sep` where it is not escaped with `\`.
/// The escapes stay in the parts: call [`unescape`] on the final pieces.
pub fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == sep {
            parts.push(String::new());
            continue;
        }
        let Some(part) = parts.last_mut() else {
            continue;
        };
        part.push(c);
        // An escaped character never separates; the escape stays for
        // `unescape` once the value has been split completely.
        if c == '\\'
            && let Some(e) = chars.next()
        {
            part.push(e);
        }
    }
    parts
}

/// Removes FHIR's escapes from a value that has been split completely.
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ (',' | '|' | '$' | '\\')) => out.push(e),
                Some(e) => {
                    out.push('\\');
                    out.push(e);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn decode_keeps_plus_and_order() {
        let got = decode("_lastUpdated=ge2024-03-01T10:00:00+01:00&code=a%7Cb&&flag&x=%2B");
        assert_eq!(
            got,
            Ok(pairs(&[
                ("_lastUpdated", "ge2024-03-01T10:00:00+01:00"),
                ("code", "a|b"),
                ("flag", ""),
                ("x", "+"),
            ]))
        );
    }

    #[test]
    fn decode_rejects_bad_escapes() {
        assert!(decode("a=%zz").is_err());
        assert!(decode("a=%4").is_err());
        assert!(decode("a=%ff").is_err());
        assert_eq!(decode("a=%C3%B8"), Ok(pairs(&[("a", "ø")])));
    }

    #[test]
    fn encode_round_trips() {
        let p = pairs(&[
            (
                "subject:identifier",
                "urn:oid:2.16.578.1.12.4.1.4.1|01234567890",
            ),
            ("_lastUpdated", "gt2024-03-01T10:00:00+01:00"),
            ("code", "http://loinc.org|8867-4,x y&z=ø"),
        ]);
        let s = encode(&p);
        assert!(s.contains("%7C") && s.contains("%2B") && !s.contains(' '));
        assert_eq!(decode(&s), Ok(p));
    }

    #[test]
    fn split_and_unescape() {
        assert_eq!(split_escaped("a,b\\,c,d", ','), vec!["a", "b\\,c", "d"]);
        assert_eq!(split_escaped("s|c\\|d", '|'), vec!["s", "c\\|d"]);
        assert_eq!(split_escaped("", ','), vec![""]);
        assert_eq!(unescape("b\\,c\\|d\\\\e\\$f\\x"), "b,c|d\\e$f\\x");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_decode_round_trip(pairs in proptest::collection::vec(("\\PC{1,12}", "\\PC{0,24}"), 0..6)) {
            prop_assert_eq!(decode(&encode(&pairs)), Ok(pairs));
        }

        #[test]
        fn escaped_separators_survive_a_split(parts in proptest::collection::vec("\\PC{0,8}", 1..5)) {
            let escape = |s: &str| s.replace('\\', "\\\\").replace(',', "\\,").replace('|', "\\|").replace('$', "\\$");
            let joined = parts.iter().map(|p| escape(p)).collect::<Vec<_>>().join(",");
            let got: Vec<String> = split_escaped(&joined, ',').iter().map(|p| unescape(p)).collect();
            prop_assert_eq!(got, parts);
        }
    }
}
