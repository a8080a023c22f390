//! A published JSON body goes to subscribers as the publisher wrote it:
//! kept as serde_json's `RawValue` (its text, not a parsed value), so key
//! order, big integers (a comment id), float spellings and `\u` escapes are
//! untouched. Only whitespace between tokens is removed.

/// `json` (valid JSON text) without the whitespace between its tokens;
/// strings are copied byte for byte.
pub fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::compact;

    #[test]
    fn only_whitespace_between_tokens_goes() {
        assert_eq!(
            compact(r#" { "a b" : [ 1 , 2.50 ] } "#),
            r#"{"a b":[1,2.50]}"#
        );
        assert_eq!(compact(r#""x \" y \\" "#), r#""x \" y \\""#);
        assert_eq!(compact(r#"{"k":"\\"}"#), r#"{"k":"\\"}"#);
        assert_eq!(compact("[\n\t1,\r\n 2 ]"), "[1,2]");
    }
}
