//! What doppel needs to know from the `--alter` text before the server sees it.
//!
//! The server is the parser: preflight applies the clauses to an empty clone and reads the
//! resulting columns from the catalog. Two things are not in the catalog and must be taken
//! from the text itself: the `USING` expression of an `ALTER COLUMN .. TYPE` (the copy and the
//! apply must compute the new value the same way), and whether a clause is one doppel cannot
//! validate on a temporary clone (foreign keys). A small lexer that knows SQL quoting
//! (`'..'`, `E'..'`, `".."`, `$tag$..$tag$`, comments, parentheses) finds clause boundaries
//! and keywords without being fooled by quoted text.

use crate::failure::{Check, Refusal};

/// One `--alter` argument after analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterStatement {
    /// The clause text as given (one or more comma-separated `ALTER TABLE` actions).
    pub text: String,
    /// True for the `RENAME ..` forms, which PostgreSQL runs as a statement of their own.
    pub is_rename: bool,
}

/// `ALTER COLUMN <column> TYPE .. USING <expression>`: the expression computes the new value
/// from the old row, with columns named as in the original table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsingClause {
    /// Column name as stored in the catalog (unquoted identifiers folded to lower case).
    pub column: String,
    /// The expression text after `USING`, as written.
    pub expression: String,
}

/// The analysed `--alter` arguments, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlterSpec {
    /// Each `--alter` argument becomes one `ALTER TABLE <t> <text>` statement, run in order.
    pub statements: Vec<AlterStatement>,
    /// `USING` expressions by column.
    pub usings: Vec<UsingClause>,
}

impl AlterSpec {
    /// The `USING` expression for `column`, if the ALTER gives one.
    pub fn using_for(&self, column: &str) -> Option<&str> {
        self.usings
            .iter()
            .find(|u| u.column == column)
            .map(|u| u.expression.as_str())
    }
}

/// Why an `--alter` argument is refused before it reaches the server. Its Display is the
/// [`Refusal`] preflight reports ([`AlterError::refusal`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterError {
    /// No `--alter` given, or an empty one.
    Empty,
    /// A quote, dollar quote or comment that never ends.
    Unterminated(String),
    /// Parentheses that do not balance.
    Unbalanced(String),
    /// A `;` outside quotes: only clauses of one ALTER TABLE are accepted.
    MultipleStatements(String),
    /// `ALTER TABLE` / `ALTER TABLE name` repeated inside the clause.
    WholeStatement(String),
    /// Adding or dropping foreign keys.
    ForeignKey(String),
    /// A USING expression that doppel cannot carry exactly.
    Using {
        /// The `--alter` text.
        text: String,
        /// What is wrong with the `USING` clause.
        reason: String,
        /// How to write it instead.
        fix: String,
    },
}

impl AlterError {
    /// The refusal preflight reports for this error ([`Check::AlterText`]): what is wrong
    /// with the `--alter` text and how to write it.
    pub fn refusal(&self) -> Refusal {
        let check = Check::AlterText;
        match self {
            AlterError::Empty => Refusal::new(
                check,
                "no ALTER clause given",
                "pass one or more --alter \"ALTER COLUMN .. TYPE ..\" clauses",
            ),
            AlterError::Unterminated(text) => Refusal::without_fix(
                check,
                format!("--alter {text:?}: unterminated quoted text or comment"),
            ),
            AlterError::Unbalanced(text) => {
                Refusal::without_fix(check, format!("--alter {text:?}: unbalanced parentheses"))
            }
            AlterError::MultipleStatements(text) => Refusal::new(
                check,
                format!("--alter {text:?} contains ';'"),
                "give only the clauses of ALTER TABLE (e.g. \"ALTER COLUMN x TYPE bigint\"), one statement per --alter",
            ),
            AlterError::WholeStatement(text) => Refusal::new(
                check,
                format!("--alter {text:?} starts with ALTER TABLE"),
                "give only the clause (e.g. \"ADD COLUMN note text\"); the table comes from --table",
            ),
            AlterError::ForeignKey(text) => Refusal::new(
                check,
                format!(
                    "--alter {text:?} adds or changes a foreign key, which doppel cannot do yet"
                ),
                "PostgreSQL already does it online: ALTER TABLE .. ADD CONSTRAINT .. FOREIGN KEY .. NOT VALID, then ALTER TABLE .. VALIDATE CONSTRAINT ..",
            ),
            AlterError::Using { text, reason, fix } => {
                Refusal::new(check, format!("--alter {text:?}: {reason}"), fix)
            }
        }
    }
}

impl std::fmt::Display for AlterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.refusal().fmt(f)
    }
}

impl std::error::Error for AlterError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Other(char),
    Literal,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
    depth: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, AlterError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let unterminated = || AlterError::Unterminated(text.to_string());
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            let end = text[i + 2..].find("*/").ok_or_else(unterminated)?;
            i += 2 + end + 2;
        } else if c == b'\'' || ((c == b'E' || c == b'e') && bytes.get(i + 1) == Some(&b'\'')) {
            let escapes = c != b'\'';
            i += if escapes { 2 } else { 1 };
            loop {
                match bytes.get(i) {
                    None => return Err(unterminated()),
                    Some(b'\\') if escapes => i += 2,
                    Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => i += 2,
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            tokens.push(Token {
                tok: Tok::Literal,
                start,
                depth,
            });
        } else if c == b'"' {
            i += 1;
            let mut name = String::new();
            loop {
                match bytes.get(i) {
                    None => return Err(unterminated()),
                    Some(b'"') if bytes.get(i + 1) == Some(&b'"') => {
                        name.push('"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        let ch = text[i..].chars().next().unwrap_or('\0');
                        name.push(ch);
                        i += ch.len_utf8().max(1);
                    }
                }
            }
            tokens.push(Token {
                tok: Tok::Quoted(name),
                start,
                depth,
            });
        } else if c == b'$' && dollar_tag(&text[i..]).is_some() {
            let tag = dollar_tag(&text[i..]).unwrap_or_default();
            let body = i + tag.len();
            let end = text[body..].find(&tag).ok_or_else(unterminated)?;
            i = body + end + tag.len();
            tokens.push(Token {
                tok: Tok::Literal,
                start,
                depth,
            });
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric()
                    || bytes[i] == b'_'
                    || bytes[i] == b'$'
                    || bytes[i] >= 0x80)
            {
                i += 1;
            }
            tokens.push(Token {
                tok: Tok::Word(text[start..i].to_string()),
                start,
                depth,
            });
        } else {
            let ch = text[i..].chars().next().unwrap_or('\0');
            i += ch.len_utf8().max(1);
            if ch == ')' {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| AlterError::Unbalanced(text.to_string()))?;
            }
            tokens.push(Token {
                tok: Tok::Other(ch),
                start,
                depth,
            });
            if ch == '(' {
                depth += 1;
            }
        }
    }
    if depth != 0 {
        return Err(AlterError::Unbalanced(text.to_string()));
    }
    Ok(tokens)
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

fn word_is(tok: &Token, kw: &str) -> bool {
    matches!(&tok.tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
}

fn identifier(tok: &Token) -> Option<String> {
    match &tok.tok {
        Tok::Word(w) => Some(w.to_lowercase()),
        Tok::Quoted(q) => Some(q.clone()),
        _ => None,
    }
}

/// Analyses the `--alter` arguments: splits clauses, finds `USING` expressions, refuses
/// what doppel cannot carry (see [`AlterError`]).
pub fn analyze(alters: &[String]) -> Result<AlterSpec, AlterError> {
    if alters.is_empty() || alters.iter().any(|a| a.trim().is_empty()) {
        return Err(AlterError::Empty);
    }
    let mut spec = AlterSpec::default();
    let mut renamed = false;
    for text in alters {
        let text = text.trim().trim_end_matches(';').trim_end().to_string();
        let tokens = lex(&text)?;
        if tokens.iter().any(|t| t.tok == Tok::Other(';')) {
            return Err(AlterError::MultipleStatements(text));
        }
        if tokens.len() >= 2 && word_is(&tokens[0], "alter") && word_is(&tokens[1], "table") {
            return Err(AlterError::WholeStatement(text));
        }
        let is_rename = tokens.first().is_some_and(|t| word_is(t, "rename"));
        for clause in tokens.split(|t| t.depth == 0 && t.tok == Tok::Other(',')) {
            if clause
                .iter()
                .any(|t| word_is(t, "references") || word_is(t, "foreign"))
            {
                return Err(AlterError::ForeignKey(text.clone()));
            }
            if let Some(using) = using_clause(&text, clause) {
                if renamed {
                    return Err(AlterError::Using {
                        text: text.clone(),
                        reason: "a USING clause after a RENAME is not supported".into(),
                        fix: "put the type change before the rename".into(),
                    });
                }
                if spec.using_for(&using.column).is_some() {
                    return Err(AlterError::Using {
                        text: text.clone(),
                        reason: format!("column {:?} has more than one USING clause", using.column),
                        fix: "combine them into one expression".into(),
                    });
                }
                spec.usings.push(using);
            }
        }
        renamed |= is_rename;
        spec.statements.push(AlterStatement { text, is_rename });
    }
    Ok(spec)
}

/// `ALTER [COLUMN] name [SET DATA] TYPE .. USING expr` → the column and expression.
fn using_clause(text: &str, clause: &[Token]) -> Option<UsingClause> {
    let mut i = 0;
    if !word_is(clause.first()?, "alter") {
        return None;
    }
    i += 1;
    if clause.get(i).is_some_and(|t| word_is(t, "column")) {
        i += 1;
    }
    let column = identifier(clause.get(i)?)?;
    let rest = &clause[i + 1..];
    let is_type_change = rest.iter().take(3).any(|t| word_is(t, "type"));
    if !is_type_change {
        return None;
    }
    let using = rest
        .iter()
        .position(|t| t.depth == 0 && word_is(t, "using"))?;
    let expr_start = rest.get(using + 1)?.start;
    let expr_end = clause_end(text, clause);
    Some(UsingClause {
        column,
        expression: text[expr_start..expr_end].trim().to_string(),
    })
}

/// Byte offset just past the last token of `clause` (its trailing comma excluded).
fn clause_end(text: &str, clause: &[Token]) -> usize {
    let last = clause.last().map(|t| t.start).unwrap_or(0);
    // The end of the last token: the start of the next token in the text, or the text end.
    let after = &text[last..];
    let tokens = lex(after).unwrap_or_default();
    match tokens.get(1) {
        Some(next) => last + next.start,
        None => text.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Result<AlterSpec, AlterError> {
        analyze(&[s.to_string()])
    }

    #[test]
    fn finds_using_expression_and_column() {
        let spec =
            one("ALTER COLUMN \"Amount\" TYPE int USING round(\"Amount\" * 100)::int").unwrap();
        assert_eq!(spec.usings.len(), 1);
        assert_eq!(spec.usings[0].column, "Amount");
        assert_eq!(spec.usings[0].expression, "round(\"Amount\" * 100)::int");
    }

    #[test]
    fn using_stops_at_the_next_clause() {
        let spec = one(
            "alter price set data type numeric(10,2) using price::numeric / 100, add column x text",
        )
        .unwrap();
        assert_eq!(spec.using_for("price"), Some("price::numeric / 100"));
    }

    #[test]
    fn quoted_text_does_not_fool_the_lexer() {
        let spec = one("ALTER COLUMN s TYPE text USING s || ', using; references'").unwrap();
        assert_eq!(spec.using_for("s"), Some("s || ', using; references'"));
        let spec = one("ADD COLUMN note text DEFAULT $$a;b$$").unwrap();
        assert!(spec.usings.is_empty());
    }

    #[test]
    fn index_using_is_not_a_type_using() {
        let spec = one("ADD CONSTRAINT ex EXCLUDE USING gist (r WITH &&)").unwrap();
        assert!(spec.usings.is_empty());
    }

    #[test]
    fn refusals_carry_reasons() {
        assert_eq!(analyze(&[]), Err(AlterError::Empty));
        assert!(matches!(
            one("ADD COLUMN a int; DROP TABLE x"),
            Err(AlterError::MultipleStatements(_))
        ));
        assert!(matches!(
            one("ALTER TABLE t ADD COLUMN a int"),
            Err(AlterError::WholeStatement(_))
        ));
        assert!(matches!(
            one("ADD COLUMN p int REFERENCES parent(id)"),
            Err(AlterError::ForeignKey(_))
        ));
        assert!(matches!(
            one("ADD COLUMN a text DEFAULT 'x"),
            Err(AlterError::Unterminated(_))
        ));
        assert!(matches!(
            one("ADD COLUMN a numeric(10,2"),
            Err(AlterError::Unbalanced(_))
        ));
        let twice = analyze(&[
            "ALTER a TYPE int USING a::int".into(),
            "ALTER a TYPE bigint USING a * 2".into(),
        ]);
        assert!(matches!(twice, Err(AlterError::Using { .. })));
    }

    #[test]
    fn errors_are_alter_text_refusals_with_their_fix() {
        let e = one("ADD COLUMN a int; DROP TABLE x").unwrap_err();
        let refusal = e.refusal();
        assert_eq!(refusal.check, Check::AlterText);
        assert!(refusal.reason.contains("contains ';'"), "{refusal}");
        assert!(
            refusal
                .fix
                .as_deref()
                .is_some_and(|f| f.contains("one statement per --alter")),
            "{refusal}"
        );
        assert_eq!(e.to_string(), refusal.to_string());
        let unbalanced = one("ADD COLUMN a numeric(10,2").unwrap_err().refusal();
        assert_eq!(unbalanced.fix, None);
    }

    #[test]
    fn trailing_semicolon_is_tolerated_and_rename_is_flagged() {
        let spec = one("RENAME COLUMN a TO b;").unwrap();
        assert!(spec.statements[0].is_rename);
        assert_eq!(spec.statements[0].text, "RENAME COLUMN a TO b");
    }
}
