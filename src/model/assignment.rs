//! `column = expression` assignments: `doppel run --backfill` (the value a column of the new
//! table takes, computed from the old row) and `doppel backfill --set` (the value a batched
//! UPDATE writes). The expression is SQL over the old row: columns by their plain names (or
//! as `src.<column>`), function calls and subqueries allowed. The server checks it; here only
//! the column and the expression are told apart, with the lexer, so quoted text cannot fool
//! the split.

use super::lexer::{self, Tok};

/// One `column = expression`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The column, as the catalog stores it (unquoted names folded to lower case).
    pub column: String,
    /// The expression text after `=`, as written.
    pub expression: String,
    /// The whole text as given (for plans, the history and messages).
    pub text: String,
}

/// Why an assignment is refused before the server sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    /// Not of the form `column = expression`.
    #[error(
        "{0:?} is not of the form `column = expression` (e.g. \"state_id = (SELECT id FROM transaction_state s WHERE s.name = status)\")"
    )]
    Form(String),
    /// Unterminated quotes or comments, unbalanced parentheses.
    #[error("{0:?}: unterminated quoted text or comment, or unbalanced parentheses")]
    Lex(String),
    /// A `;` outside quotes.
    #[error("{0:?} contains ';': give one expression")]
    MultipleStatements(String),
    /// The same column assigned twice.
    #[error("column {0:?} is assigned more than once")]
    Twice(String),
}

/// Parses one `column = expression`.
///
/// Errors: see [`AssignmentError`].
pub fn parse(text: &str) -> Result<Assignment, AssignmentError> {
    let trimmed = text.trim().trim_end_matches(';').trim_end();
    let tokens = lexer::lex(trimmed).map_err(|_| AssignmentError::Lex(text.to_string()))?;
    if tokens.iter().any(|t| t.tok == Tok::Other(';')) {
        return Err(AssignmentError::MultipleStatements(text.to_string()));
    }
    let form = || AssignmentError::Form(text.to_string());
    let column = tokens
        .first()
        .and_then(lexer::identifier)
        .ok_or_else(form)?;
    let eq = tokens.get(1).ok_or_else(form)?;
    if eq.tok != Tok::Other('=') {
        return Err(form());
    }
    let rest = tokens.get(2).ok_or_else(form)?;
    Ok(Assignment {
        column,
        expression: trimmed[rest.start..].trim().to_string(),
        text: trimmed.to_string(),
    })
}

/// Parses every assignment; a column may be assigned once.
///
/// Errors: the first [`AssignmentError`].
pub fn parse_all(texts: &[String]) -> Result<Vec<Assignment>, AssignmentError> {
    let mut out: Vec<Assignment> = Vec::new();
    for text in texts {
        let a = parse(text)?;
        if out.iter().any(|b| b.column == a.column) {
            return Err(AssignmentError::Twice(a.column));
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_column_and_expression() {
        let a =
            parse("state_id = (SELECT id FROM transaction_state s WHERE s.name = status)").unwrap();
        assert_eq!(a.column, "state_id");
        assert_eq!(
            a.expression,
            "(SELECT id FROM transaction_state s WHERE s.name = status)"
        );
        let q = parse("\"State Id\"=lower('a = b');").unwrap();
        assert_eq!(q.column, "State Id");
        assert_eq!(q.expression, "lower('a = b')");
        assert_eq!(parse("  X = 1 ").unwrap().column, "x");
    }

    #[test]
    fn refuses_what_is_not_an_assignment() {
        assert!(matches!(parse("x"), Err(AssignmentError::Form(_))));
        assert!(matches!(parse("x ="), Err(AssignmentError::Form(_))));
        assert!(matches!(parse("= 1"), Err(AssignmentError::Form(_))));
        assert!(matches!(parse("x := 1"), Err(AssignmentError::Form(_))));
        assert!(matches!(
            parse("x = 1; DROP TABLE t"),
            Err(AssignmentError::MultipleStatements(_))
        ));
        assert!(matches!(parse("x = 'a"), Err(AssignmentError::Lex(_))));
        let twice = parse_all(&["x = 1".into(), "X = 2".into()]);
        assert_eq!(twice, Err(AssignmentError::Twice("x".into())));
    }
}
