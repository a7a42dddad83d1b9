//! A small SQL lexer for the text doppel reads before the server sees it: `--alter` clauses
//! and `col = expression` assignments (`--backfill`, `doppel backfill --set`). It knows SQL
//! quoting (`'..'`, `E'..'`, `".."`, `$tag$..$tag$`, `--` and `/* */` comments) and
//! parentheses, so clause boundaries, keywords and identifiers are found without being fooled
//! by quoted text. It does not parse SQL: the server does that.

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// An unquoted word (keyword or identifier), as written.
    Word(String),
    /// A double-quoted identifier, unescaped.
    Quoted(String),
    /// Any other single character (`(`, `,`, `=`, `.`, ...).
    Other(char),
    /// A string literal (plain, `E''` or dollar-quoted).
    Literal,
}

/// One token and where it is.
#[derive(Debug, Clone)]
pub struct Token {
    /// What it is.
    pub tok: Tok,
    /// Byte offset of its first byte in the text.
    pub start: usize,
    /// Byte offset just past its last byte.
    pub end: usize,
    /// Parenthesis depth it sits at (0 outside any parentheses).
    pub depth: usize,
}

/// Why a text does not lex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LexError {
    /// A quote, dollar quote or comment that never ends.
    Unterminated,
    /// Parentheses that do not balance.
    Unbalanced,
}

/// Splits `text` into tokens (whitespace and comments dropped).
///
/// Errors: [`LexError`] for unterminated quotes or comments and unbalanced parentheses.
pub fn lex(text: &str) -> Result<Vec<Token>, LexError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let tok = if c.is_ascii_whitespace() {
            i += 1;
            None
        } else if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            None
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            let end = text[i + 2..].find("*/").ok_or(LexError::Unterminated)?;
            i += 2 + end + 2;
            None
        } else if c == b'\'' || ((c == b'E' || c == b'e') && bytes.get(i + 1) == Some(&b'\'')) {
            i = string_end(bytes, i, c != b'\'')?;
            Some(Tok::Literal)
        } else if c == b'"' {
            let (name, end) = quoted_identifier(text, i)?;
            i = end;
            Some(Tok::Quoted(name))
        } else if c == b'$' && dollar_tag(&text[i..]).is_some() {
            let tag = dollar_tag(&text[i..]).unwrap_or_default();
            let body = i + tag.len();
            let end = text[body..].find(&tag).ok_or(LexError::Unterminated)?;
            i = body + end + tag.len();
            Some(Tok::Literal)
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric()
                    || bytes[i] == b'_'
                    || bytes[i] == b'$'
                    || bytes[i] >= 0x80)
            {
                i += 1;
            }
            Some(Tok::Word(text[start..i].to_string()))
        } else {
            let ch = text[i..].chars().next().unwrap_or('\0');
            i += ch.len_utf8().max(1);
            if ch == ')' {
                depth = depth.checked_sub(1).ok_or(LexError::Unbalanced)?;
            }
            Some(Tok::Other(ch))
        };
        if let Some(tok) = tok {
            let opens = tok == Tok::Other('(');
            tokens.push(Token {
                tok,
                start,
                end: i,
                depth,
            });
            if opens {
                depth += 1;
            }
        }
    }
    if depth != 0 {
        return Err(LexError::Unbalanced);
    }
    Ok(tokens)
}

/// The end of the string literal starting at `i` (`'..'`, or `E'..'` with backslash escapes).
fn string_end(bytes: &[u8], mut i: usize, escapes: bool) -> Result<usize, LexError> {
    i += if escapes { 2 } else { 1 };
    loop {
        match bytes.get(i) {
            None => return Err(LexError::Unterminated),
            Some(b'\\') if escapes => i += 2,
            Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => i += 2,
            Some(b'\'') => return Ok(i + 1),
            Some(_) => i += 1,
        }
    }
}

/// The identifier quoted at `i` (`"a""b"` → `a"b`) and the offset just past it.
fn quoted_identifier(text: &str, mut i: usize) -> Result<(String, usize), LexError> {
    let bytes = text.as_bytes();
    i += 1;
    let mut name = String::new();
    loop {
        match bytes.get(i) {
            None => return Err(LexError::Unterminated),
            Some(b'"') if bytes.get(i + 1) == Some(&b'"') => {
                name.push('"');
                i += 2;
            }
            Some(b'"') => return Ok((name, i + 1)),
            Some(_) => {
                let ch = text[i..].chars().next().unwrap_or('\0');
                name.push(ch);
                i += ch.len_utf8().max(1);
            }
        }
    }
}

/// `$tag$` at the start of `s` (tag: letters, digits, underscores, not starting with a digit).
fn dollar_tag(s: &str) -> Option<String> {
    let rest = &s[1..];
    let end = rest.find('$')?;
    let tag = &rest[..end];
    let ok = tag
        .chars()
        .next()
        .is_none_or(|c| !c.is_ascii_digit() && (c.is_alphabetic() || c == '_'))
        && tag.chars().all(|c| c.is_alphanumeric() || c == '_');
    ok.then(|| format!("${tag}$"))
}

/// True when `tok` is the unquoted keyword `kw` (any case).
pub fn word_is(tok: &Token, kw: &str) -> bool {
    matches!(&tok.tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

/// The identifier `tok` names, as the catalog stores it: unquoted words folded to lower
/// case, quoted identifiers as written. `None` for anything else.
pub fn identifier(tok: &Token) -> Option<String> {
    match &tok.tok {
        Tok::Word(w) => Some(w.to_lowercase()),
        Tok::Quoted(q) => Some(q.clone()),
        _ => None,
    }
}

/// The tokens of `tokens` split at top-level commas (the actions of one `ALTER TABLE`).
pub fn split_top_level_commas(tokens: &[Token]) -> Vec<&[Token]> {
    tokens
        .split(|t| t.depth == 0 && t.tok == Tok::Other(','))
        .filter(|c| !c.is_empty())
        .collect()
}

/// The text a run of tokens covers, from its first token's start to its last token's end.
pub fn span<'t>(text: &'t str, tokens: &[Token]) -> &'t str {
    match (tokens.first(), tokens.last()) {
        (Some(first), Some(last)) => &text[first.start..last.end],
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_know_their_spans_and_depths() {
        let text = "ADD CONSTRAINT \"x y\" CHECK (a > 'it''s, (') -- c\n, b";
        let tokens = lex(text).unwrap();
        assert_eq!(tokens[2].tok, Tok::Quoted("x y".into()));
        assert_eq!(&text[tokens[2].start..tokens[2].end], "\"x y\"");
        let literal = tokens.iter().find(|t| t.tok == Tok::Literal).unwrap();
        assert_eq!(&text[literal.start..literal.end], "'it''s, ('");
        assert_eq!(literal.depth, 1);
        let parts = split_top_level_commas(&tokens);
        assert_eq!(parts.len(), 2);
        assert_eq!(
            span(text, parts[0]),
            "ADD CONSTRAINT \"x y\" CHECK (a > 'it''s, (')"
        );
        assert_eq!(span(text, parts[1]), "b");
    }

    #[test]
    fn errors() {
        assert_eq!(lex("a 'b").unwrap_err(), LexError::Unterminated);
        assert_eq!(lex("$x$ b").unwrap_err(), LexError::Unterminated);
        assert_eq!(lex("f(a").unwrap_err(), LexError::Unbalanced);
        assert_eq!(lex("a)").unwrap_err(), LexError::Unbalanced);
    }
}
