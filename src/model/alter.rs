//! What doppel needs to know from the `--alter` text before the server sees it.
//!
//! The server is the parser: preflight applies the clauses to an empty clone and reads the
//! resulting columns from the catalog. Two things are not in the catalog and must be taken
//! from the text itself: the `USING` expression of an `ALTER COLUMN .. TYPE` (the copy and the
//! apply must compute the new value the same way), and the tables a clause references
//! (`REFERENCES parent`, which preflight points at a temporary copy of the parent: a foreign
//! key on a temporary clone may reference only temporary tables). The lexer
//! ([`super::lexer`]) finds clause boundaries, keywords and names without being fooled by
//! quoted text.

use std::ops::Range;

use super::assignment::Assignment;
use super::lexer::{self, LexError, Tok, Token, identifier, word_is};
use crate::failure::{Check, Refusal};

/// One `--alter` argument after analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterStatement {
    /// The clause text as given (one or more comma-separated `ALTER TABLE` actions).
    pub text: String,
    /// True for the `RENAME ..` forms, which PostgreSQL runs as a statement of their own.
    pub is_rename: bool,
    /// The actions of the statement (its text split at top-level commas), in order: each is
    /// a clause of its own for the strategy (docs/design.md §1.10).
    pub actions: Vec<String>,
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
    /// `--backfill` assignments: the value a column of the new table takes, computed from the
    /// old row (by the copy and by the applier alike).
    pub backfills: Vec<Assignment>,
}

impl AlterSpec {
    /// The `USING` expression for `column`, if the ALTER gives one.
    pub fn using_for(&self, column: &str) -> Option<&str> {
        self.usings
            .iter()
            .find(|u| u.column == column)
            .map(|u| u.expression.as_str())
    }

    /// The `--backfill` expression for the new table's `column`, if one is given.
    pub fn backfill_for(&self, column: &str) -> Option<&str> {
        self.backfills
            .iter()
            .find(|b| b.column == column)
            .map(|b| b.expression.as_str())
    }

    /// Every action of every statement, in order.
    pub fn actions(&self) -> Vec<&str> {
        self.statements
            .iter()
            .flat_map(|s| s.actions.iter().map(String::as_str))
            .collect()
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
        let tokens = lexer::lex(&text).map_err(|e| match e {
            LexError::Unterminated => AlterError::Unterminated(text.clone()),
            LexError::Unbalanced => AlterError::Unbalanced(text.clone()),
        })?;
        if tokens.iter().any(|t| t.tok == Tok::Other(';')) {
            return Err(AlterError::MultipleStatements(text));
        }
        if tokens.len() >= 2 && word_is(&tokens[0], "alter") && word_is(&tokens[1], "table") {
            return Err(AlterError::WholeStatement(text));
        }
        let is_rename = tokens.first().is_some_and(|t| word_is(t, "rename"));
        let mut actions = Vec::new();
        for clause in lexer::split_top_level_commas(&tokens) {
            actions.push(lexer::span(&text, clause).to_string());
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
        if is_rename {
            // RENAME forms take no commas: the whole text is one action.
            actions = vec![text.clone()];
        }
        renamed |= is_rename;
        spec.statements.push(AlterStatement {
            text,
            is_rename,
            actions,
        });
    }
    Ok(spec)
}

/// The tables `text` (one clause, or several) references with `REFERENCES <table>`: each
/// name's byte range in `text` and the name as written (quotes and schema included), in
/// order. A text that does not lex references nothing.
pub fn referenced_tables(text: &str) -> Vec<(Range<usize>, String)> {
    let Ok(tokens) = lexer::lex(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !word_is(t, "references") {
            continue;
        }
        let Some(first) = tokens.get(i + 1).filter(|t| identifier(t).is_some()) else {
            continue;
        };
        let mut last = first;
        if tokens.get(i + 2).is_some_and(|t| t.tok == Tok::Other('.'))
            && let Some(second) = tokens.get(i + 3).filter(|t| identifier(t).is_some())
        {
            last = second;
        }
        out.push((
            first.start..last.end,
            text[first.start..last.end].to_string(),
        ));
    }
    out
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
    clause.last().map(|t| t.end).unwrap_or(text.len())
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
    fn foreign_keys_are_accepted_and_their_tables_found() {
        let text = "ADD COLUMN p int REFERENCES \"Sales\".parent(id), ADD CONSTRAINT f FOREIGN KEY (q) REFERENCES other";
        let spec = one(text).unwrap();
        assert_eq!(
            spec.statements[0].actions,
            vec![
                "ADD COLUMN p int REFERENCES \"Sales\".parent(id)",
                "ADD CONSTRAINT f FOREIGN KEY (q) REFERENCES other"
            ]
        );
        let refs = referenced_tables(text);
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[0].1, "\"Sales\".parent");
        assert_eq!(&text[refs[0].0.clone()], "\"Sales\".parent");
        assert_eq!(refs[1].1, "other");
        assert!(referenced_tables("ADD CHECK (x <> 'references t')").is_empty());
    }

    #[test]
    fn trailing_semicolon_is_tolerated_and_rename_is_flagged() {
        let spec = one("RENAME COLUMN a TO b;").unwrap();
        assert!(spec.statements[0].is_rename);
        assert_eq!(spec.statements[0].text, "RENAME COLUMN a TO b");
    }
}
