//! Quoting for PostgreSQL DDL, which cannot take `$1` parameters.

/// Longest PostgreSQL identifier in bytes; longer ones are silently
/// truncated by the server, which could make two tenants collide.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// `"ident"` with inner `"` doubled.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `'literal'` with inner `'` doubled (the session sets
/// `standard_conforming_strings`, so backslashes are literal).
pub fn quote_literal(literal: &str) -> String {
    format!("'{}'", literal.replace('\'', "''"))
}

/// An identifier the server will keep as written: non-empty, at most 63
/// bytes, no NUL.
pub fn check_identifier(ident: &str) -> Result<(), String> {
    if ident.is_empty() || ident.len() > MAX_IDENTIFIER_BYTES || ident.contains('\0') {
        Err(format!(
            "identifiers must be 1 to {MAX_IDENTIFIER_BYTES} bytes without NUL"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert!(check_identifier(&"x".repeat(64)).is_err());
        assert!(check_identifier("a\0b").is_err());
    }
}
