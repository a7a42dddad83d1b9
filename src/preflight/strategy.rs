//! The strategy per clause and the online recipes (docs/design.md §1.10). Pure code: it reads
//! what each clause did to the empty clone ([`Effect`], measured by
//! `checks::clauses`) and decides, clause by clause:
//!
//! - **shadow** for a clause that rewrites the table or an index, one PostgreSQL would refuse
//!   to run directly because of dependents (`ALTER COLUMN .. TYPE` on a column a view, rule,
//!   policy or trigger uses), and one that scans under its lock with no online recipe (an
//!   EXCLUDE constraint);
//! - **online** for a clause that adds what PostgreSQL can add without a long lock: a CHECK or
//!   FOREIGN KEY (`NOT VALID`, then `VALIDATE CONSTRAINT`), NOT NULL (a `CHECK (col IS NOT
//!   NULL) NOT VALID`, `VALIDATE`, then `SET NOT NULL`, which uses the validated check instead
//!   of a scan, then the check dropped), a UNIQUE or PRIMARY KEY constraint (`CREATE UNIQUE
//!   INDEX CONCURRENTLY`, then `ADD CONSTRAINT .. USING INDEX`), a `VALIDATE CONSTRAINT`;
//! - **direct** for everything else: catalog-only changes run as written.
//!
//! [`steps`] turns the direct and online clauses into [`Step`]s against a [`Target`] (the real
//! table, or the clone when preflight rehearses them). Grouped, the brief parts of every
//! clause run in one transaction before the scans and one after them: two short lock
//! acquisitions, however many clauses.

use crate::model::catalog::{Column, Constraint, Index, Table};
use crate::model::lexer::{self, Tok, identifier, word_is};
use crate::model::names::Names;
use crate::plan::{Action, Clause, DirectPlan, LockMode, Rewrite, Step, Strategy, Violation};
use crate::preflight::indexdef::rename_index_definition;
use crate::sql::ident;

/// What one clause did to the clone (measured by running it alone on the clone, after the
/// clauses before it).
#[derive(Debug, Clone)]
pub struct Effect {
    /// The clause as written.
    pub text: String,
    /// The cost class of the clause alone (`checks::cost::classify`).
    pub cost: Rewrite,
    /// The table's heap was rewritten.
    pub rewrite: bool,
    /// Existing indexes rebuilt (same name, new storage).
    pub rebuilt_indexes: Vec<String>,
    /// Columns the clause added, as the clone has them after it.
    pub added_columns: Vec<Column>,
    /// Existing columns (names after the clause) that became NOT NULL.
    pub new_not_null: Vec<String>,
    /// CHECK and FOREIGN KEY constraints the clause added (definitions naming the real
    /// tables they reference).
    pub new_constraints: Vec<Constraint>,
    /// Constraints that were NOT VALID before and are validated after.
    pub validated: Vec<Constraint>,
    /// Indexes the clause built (not ones it only renamed).
    pub new_indexes: Vec<Index>,
    /// Objects PostgreSQL would refuse the clause for when run directly: `(column, dependent)`
    /// for each column whose type it changes and that a view, rule, policy or trigger uses.
    pub retype_dependents: Vec<(String, String)>,
    /// `(column, dependent)` for each column the clause drops that another object uses.
    pub drop_dependents: Vec<(String, String)>,
}

impl Effect {
    /// True when the clause changes only the catalog.
    fn catalog_only(&self) -> bool {
        !self.rewrite
            && self.rebuilt_indexes.is_empty()
            && self.new_not_null.is_empty()
            && self.new_constraints.iter().all(|c| !c.validated)
            && self.validated.is_empty()
            && self.new_indexes.is_empty()
    }
}

/// The strategy and its reason for one clause, when no run-wide choice forces the shadow.
pub fn choose(effect: &Effect) -> (Strategy, String) {
    if effect.rewrite {
        return (Strategy::Shadow, "rewrites the table".into());
    }
    if !effect.rebuilt_indexes.is_empty() {
        return (
            Strategy::Shadow,
            format!(
                "rebuilds index(es) {} under its lock",
                effect.rebuilt_indexes.join(", ")
            ),
        );
    }
    if !effect.retype_dependents.is_empty() {
        let (column, dependent) = &effect.retype_dependents[0];
        return (
            Strategy::Shadow,
            format!(
                "PostgreSQL refuses to change the type of column {column:?} directly while {dependent} uses it; the shadow's cutover moves that dependent"
            ),
        );
    }
    if effect
        .new_indexes
        .iter()
        .any(|i| !matches!(i.constraint, Some(('u' | 'p', _))))
    {
        return (
            Strategy::Shadow,
            "builds an index under its lock with no online recipe (an EXCLUDE constraint)".into(),
        );
    }
    if effect.catalog_only() {
        return (Strategy::Direct, "metadata-only".into());
    }
    if !reconstructable(&effect.text) {
        return (
            Strategy::Shadow,
            "scans the table under its lock and has no online recipe".into(),
        );
    }
    let mut what = Vec::new();
    if effect.new_constraints.iter().any(|c| c.validated) || !effect.validated.is_empty() {
        what.push("NOT VALID + VALIDATE CONSTRAINT");
    }
    if !effect.new_not_null.is_empty() {
        what.push("CHECK (col IS NOT NULL) NOT VALID + VALIDATE + SET NOT NULL");
    }
    if !effect.new_indexes.is_empty() {
        what.push("CREATE UNIQUE INDEX CONCURRENTLY + ADD CONSTRAINT .. USING INDEX");
    }
    (Strategy::Online, what.join("; "))
}

/// True for the clause forms the online recipes can rebuild from the catalog: `ADD ..`
/// (column or constraint), `ALTER [COLUMN] c SET NOT NULL`, `VALIDATE CONSTRAINT`.
fn reconstructable(text: &str) -> bool {
    let Ok(tokens) = lexer::lex(text) else {
        return false;
    };
    let first = |kw: &str| tokens.first().is_some_and(|t| word_is(t, kw));
    if first("add") || first("validate") {
        return true;
    }
    let words: Vec<String> = tokens
        .iter()
        .filter_map(|t| match &t.tok {
            Tok::Word(w) => Some(w.to_lowercase()),
            _ => None,
        })
        .collect();
    first("alter") && words.ends_with(&["set".into(), "not".into(), "null".into()])
}

/// The strongest table lock `ALTER TABLE <t> <clause>` takes (PostgreSQL's documented lock
/// per form; ACCESS EXCLUSIVE unless it is one of the weaker ones).
pub fn lock_for(clause: &str) -> LockMode {
    let Ok(tokens) = lexer::lex(clause) else {
        return LockMode::AccessExclusive;
    };
    let words: Vec<String> = tokens
        .iter()
        .filter(|t| t.depth == 0)
        .filter_map(|t| match &t.tok {
            Tok::Word(w) => Some(w.to_lowercase()),
            _ => None,
        })
        .collect();
    let has = |w: &str| words.iter().any(|x| x == w);
    let starts = |w: &str| words.first().is_some_and(|x| x == w);
    if starts("validate")
        || (starts("cluster") && has("on"))
        || (starts("set") && (has("without") || tokens.iter().any(|t| t.tok == Tok::Other('('))))
        || starts("reset")
        || (starts("alter")
            && (has("statistics")
                || has("reset")
                || (has("set")
                    && tokens
                        .iter()
                        .any(|t| t.depth == 0 && t.tok == Tok::Other('(')))))
    {
        return LockMode::ShareUpdateExclusive;
    }
    if (starts("enable") || starts("disable")) && has("trigger") {
        return LockMode::ShareRowExclusive;
    }
    if starts("add")
        && (has("foreign") || has("references"))
        && has("not")
        && has("valid")
        && !has("column")
    {
        return LockMode::ShareRowExclusive;
    }
    LockMode::AccessExclusive
}

/// Where the steps run: the real table (`concurrently`: index builds are concurrent), or the
/// clone when preflight rehearses them.
#[derive(Debug, Clone)]
pub struct Target {
    /// The table as SQL names it.
    pub table: String,
    /// `CREATE UNIQUE INDEX CONCURRENTLY` (false on the clone, inside a transaction).
    pub concurrently: bool,
    /// How the clone's index definitions name the clone (`pg_temp.t`).
    pub clone_text: String,
}

/// The parts of one clause's recipe.
#[derive(Debug, Default)]
struct Parts {
    /// Brief statements before the scans, with the lock they need.
    before: Vec<(String, LockMode)>,
    /// Undo statements for what `before` creates.
    before_creates: Vec<String>,
    /// The scans (VALIDATE, concurrent index builds), with what each creates.
    scans: Vec<(Action, LockMode, String, Option<String>)>,
    /// Brief statements after the scans.
    after: Vec<(String, LockMode)>,
}

/// Builds the recipe of one direct or online clause. `helpers` numbers doppel's helper
/// constraints and indexes across the plan.
fn parts(
    effect: &Effect,
    strategy: Strategy,
    target: &Target,
    names: &Names,
    helpers: &mut usize,
) -> Parts {
    let t = &target.table;
    let mut p = Parts::default();
    if strategy == Strategy::Direct {
        p.before.push((
            format!("ALTER TABLE {t} {}", effect.text),
            lock_for(&effect.text),
        ));
        return p;
    }
    for column in &effect.added_columns {
        p.before.push((
            format!("ALTER TABLE {t} ADD COLUMN {}", column_definition(column)),
            LockMode::AccessExclusive,
        ));
        p.before.extend(column_settings(t, column));
    }
    for con in effect
        .new_constraints
        .iter()
        .filter(|c| c.kind == 'c' || c.kind == 'f')
    {
        let lock = if con.kind == 'f' {
            LockMode::ShareRowExclusive
        } else {
            LockMode::AccessExclusive
        };
        let name = ident(&con.name);
        if !con.validated {
            p.before.push((
                format!("ALTER TABLE {t} ADD CONSTRAINT {name} {}", con.definition),
                lock,
            ));
            continue;
        }
        p.before.push((
            format!(
                "ALTER TABLE {t} ADD CONSTRAINT {name} {} NOT VALID",
                con.definition
            ),
            lock,
        ));
        p.before_creates
            .push(format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {name}"));
        let violation = violation_of(con);
        p.scans.push((
            Action::Validate {
                constraint: con.name.clone(),
                violation,
            },
            LockMode::ShareUpdateExclusive,
            format!("VALIDATE CONSTRAINT {name}"),
            None,
        ));
    }
    for con in &effect.validated {
        p.scans.push((
            Action::Validate {
                constraint: con.name.clone(),
                violation: violation_of(con),
            },
            LockMode::ShareUpdateExclusive,
            format!("VALIDATE CONSTRAINT {}", ident(&con.name)),
            None,
        ));
    }
    for column in &effect.new_not_null {
        *helpers += 1;
        let helper = ident(&names.recipe_check(*helpers));
        let col = ident(column);
        p.before.push((
            format!("ALTER TABLE {t} ADD CONSTRAINT {helper} CHECK ({col} IS NOT NULL) NOT VALID"),
            LockMode::AccessExclusive,
        ));
        p.before_creates.push(format!(
            "ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {helper}"
        ));
        p.scans.push((
            Action::Validate {
                constraint: names.recipe_check(*helpers),
                violation: Violation::Check {
                    expression: format!("{col} IS NOT NULL"),
                },
            },
            LockMode::ShareUpdateExclusive,
            format!("VALIDATE CONSTRAINT {helper} (CHECK ({col} IS NOT NULL))"),
            None,
        ));
        p.after.push((
            format!("ALTER TABLE {t} ALTER COLUMN {col} SET NOT NULL"),
            LockMode::AccessExclusive,
        ));
        p.after.push((
            format!("ALTER TABLE {t} DROP CONSTRAINT {helper}"),
            LockMode::AccessExclusive,
        ));
    }
    for index in &effect.new_indexes {
        *helpers += 1;
        unique_recipe(&mut p, index, target, &names.recipe_index(*helpers));
    }
    p
}

/// `CREATE UNIQUE INDEX CONCURRENTLY <temp> ..` of the clone's index, then `ADD CONSTRAINT
/// <name> UNIQUE | PRIMARY KEY USING INDEX <temp>` (which gives the index the constraint's name).
fn unique_recipe(p: &mut Parts, index: &Index, target: &Target, temp: &str) {
    let t = &target.table;
    let Some((kind, def)) = &index.constraint else {
        return;
    };
    let create = rename_index_definition(&index.definition, &target.clone_text, temp, t)
        .unwrap_or_else(|| format!("-- cannot rebuild index {:?}", index.name));
    let create = if target.concurrently {
        create.replacen(" INDEX ", " INDEX CONCURRENTLY ", 1)
    } else {
        create
    };
    let columns = index_columns(&index.definition);
    let violation = Violation::Unique {
        columns,
        nulls_not_distinct: index.definition.contains("NULLS NOT DISTINCT"),
    };
    let undo = if target.concurrently {
        format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}",
            qualified_like(t, temp)
        )
    } else {
        format!("DROP INDEX IF EXISTS {}", qualified_like(t, temp))
    };
    p.scans.push((
        Action::BuildIndex {
            sql: create.clone(),
            index: temp.to_string(),
            violation,
        },
        LockMode::ShareUpdateExclusive,
        create,
        Some(undo),
    ));
    let what = if *kind == 'p' {
        "PRIMARY KEY"
    } else {
        "UNIQUE"
    };
    let mut deferrable = String::new();
    if def.contains("INITIALLY DEFERRED") {
        deferrable.push_str(" DEFERRABLE INITIALLY DEFERRED");
    } else if def.contains("DEFERRABLE") {
        deferrable.push_str(" DEFERRABLE");
    }
    p.after.push((
        format!(
            "ALTER TABLE {t} ADD CONSTRAINT {} {what} USING INDEX {}{deferrable}",
            ident(&index.name),
            ident(temp)
        ),
        LockMode::AccessExclusive,
    ));
}

/// `temp` in the schema of the table `t` names (`"s"."t"` → `"s"."temp"`; an unqualified or
/// `pg_temp.` name keeps its qualifier).
fn qualified_like(t: &str, temp: &str) -> String {
    match t.rsplit_once('.') {
        Some((schema, _)) => format!("{schema}.{}", ident(temp)),
        None => ident(temp),
    }
}

/// `name type [COLLATE ..] [DEFAULT ..] [NOT NULL]` of an added column.
fn column_definition(c: &Column) -> String {
    let mut def = format!("{} {}", ident(&c.name), c.type_sql);
    if !c.collate_sql.is_empty() {
        def.push(' ');
        def.push_str(&c.collate_sql);
    }
    if let Some(default) = &c.default_sql {
        def.push_str(&format!(" DEFAULT {default}"));
    }
    if c.not_null {
        def.push_str(" NOT NULL");
    }
    def
}

/// Storage, compression and statistics target of an added column, when it sets them.
fn column_settings(t: &str, c: &Column) -> Vec<(String, LockMode)> {
    let col = ident(&c.name);
    let mut out = Vec::new();
    if let Some(storage) = c.storage {
        let kind = match storage {
            'p' => "PLAIN",
            'e' => "EXTERNAL",
            'm' => "MAIN",
            _ => "EXTENDED",
        };
        out.push((
            format!("ALTER TABLE {t} ALTER COLUMN {col} SET STORAGE {kind}"),
            LockMode::AccessExclusive,
        ));
    }
    if let Some(method) = c.compression {
        let method = if method == 'l' { "lz4" } else { "pglz" };
        out.push((
            format!("ALTER TABLE {t} ALTER COLUMN {col} SET COMPRESSION {method}"),
            LockMode::AccessExclusive,
        ));
    }
    if let Some(target) = c.stattarget {
        out.push((
            format!("ALTER TABLE {t} ALTER COLUMN {col} SET STATISTICS {target}"),
            LockMode::ShareUpdateExclusive,
        ));
    }
    out
}

/// How to find the rows that violate `con` (a CHECK or FOREIGN KEY).
pub fn violation_of(con: &Constraint) -> Violation {
    if con.kind == 'f' {
        let (parent, parent_columns) = foreign_key_target(&con.definition);
        return Violation::ForeignKey {
            columns: con.columns.clone(),
            parent,
            parent_columns,
        };
    }
    Violation::Check {
        expression: check_expression(&con.definition).unwrap_or_else(|| "false".into()),
    }
}

/// The expression of `CHECK (<expression>) ..` as `pg_get_constraintdef` prints it.
pub fn check_expression(def: &str) -> Option<String> {
    let tokens = lexer::lex(def).ok()?;
    if !tokens.first().is_some_and(|t| word_is(t, "check")) {
        return None;
    }
    let open = tokens.get(1).filter(|t| t.tok == Tok::Other('('))?;
    let close = tokens[2..]
        .iter()
        .find(|t| t.depth == 0 && t.tok == Tok::Other(')'))?;
    Some(def[open.end..close.start].trim().to_string())
}

/// The referenced table and columns of `FOREIGN KEY (..) REFERENCES <table>(<columns>) ..`.
pub fn foreign_key_target(def: &str) -> (String, Vec<String>) {
    let Ok(tokens) = lexer::lex(def) else {
        return (String::new(), Vec::new());
    };
    let Some(at) = tokens.iter().position(|t| word_is(t, "references")) else {
        return (String::new(), Vec::new());
    };
    let Some(open) = tokens[at..].iter().position(|t| t.tok == Tok::Other('(')) else {
        return (String::new(), Vec::new());
    };
    let open = at + open;
    let parent = lexer::span(def, &tokens[at + 1..open]).to_string();
    let columns = tokens[open + 1..]
        .iter()
        .take_while(|t| t.depth > 0)
        .filter_map(identifier)
        .collect();
    (parent, columns)
}

/// The key columns of `CREATE UNIQUE INDEX .. USING <method> (<columns>) ..` (the first
/// identifier of each element of the first parenthesised list).
pub fn index_columns(def: &str) -> Vec<String> {
    let Ok(tokens) = lexer::lex(def) else {
        return Vec::new();
    };
    let Some(open) = tokens
        .iter()
        .position(|t| t.depth == 0 && t.tok == Tok::Other('('))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut expect = true;
    for t in &tokens[open + 1..] {
        if t.depth == 0 {
            break;
        }
        if t.depth == 1 && t.tok == Tok::Other(',') {
            expect = true;
        } else if expect && t.depth == 1 {
            if let Some(name) = identifier(t) {
                out.push(name);
            }
            expect = false;
        }
    }
    out
}

/// The steps that run `clauses[i]` for every direct or online clause, against `target`:
/// grouped (every clause's brief parts in one transaction before the scans and one after
/// them) or in clause order (each clause's steps before the next clause's).
pub fn steps(
    effects: &[Effect],
    clauses: &[Clause],
    target: &Target,
    names: &Names,
    grouped: bool,
) -> DirectPlan {
    let mut helpers = 0;
    let mut recipes = Vec::new();
    for (i, (effect, clause)) in effects.iter().zip(clauses).enumerate() {
        if clause.strategy != Strategy::Shadow {
            recipes.push((
                i,
                parts(effect, clause.strategy, target, names, &mut helpers),
            ));
        }
    }
    let mut plan = DirectPlan {
        steps: Vec::new(),
        grouped,
    };
    if grouped {
        let all: Vec<(usize, &Parts)> = recipes.iter().map(|(i, p)| (*i, p)).collect();
        push_recipes(&mut plan.steps, &all);
    } else {
        for (i, p) in &recipes {
            push_recipes(&mut plan.steps, &[(*i, p)]);
        }
    }
    plan
}

/// Appends the steps of `recipes` run together: their brief parts before, their scans, their
/// brief parts after.
fn push_recipes(steps: &mut Vec<Step>, recipes: &[(usize, &Parts)]) {
    let clauses: Vec<usize> = recipes.iter().map(|(i, _)| *i).collect();
    let before: Vec<&(String, LockMode)> = recipes.iter().flat_map(|(_, p)| &p.before).collect();
    if !before.is_empty() {
        let mut creates = Vec::new();
        for (i, p) in recipes {
            creates.extend(p.before_creates.iter().map(|u| (*i, u.clone())));
        }
        let finishes: Vec<usize> = recipes
            .iter()
            .filter(|(_, p)| p.scans.is_empty() && p.after.is_empty())
            .map(|(i, _)| *i)
            .collect();
        steps.push(brief(before, clauses.clone(), creates, finishes));
    }
    for (i, p) in recipes {
        for (n, (action, lock, what, undo)) in p.scans.iter().enumerate() {
            let last = n + 1 == p.scans.len() && p.after.is_empty();
            steps.push(Step {
                action: action.clone(),
                lock: *lock,
                what: what.clone(),
                clauses: vec![*i],
                creates: undo.iter().map(|u| (*i, u.clone())).collect(),
                finishes: if last { vec![*i] } else { Vec::new() },
            });
        }
    }
    let after: Vec<&(String, LockMode)> = recipes.iter().flat_map(|(_, p)| &p.after).collect();
    if !after.is_empty() {
        let finishes: Vec<usize> = recipes
            .iter()
            .filter(|(_, p)| !p.after.is_empty())
            .map(|(i, _)| *i)
            .collect();
        steps.push(brief(after, clauses, Vec::new(), finishes));
    }
}

/// One brief step of `statements`, locking the table in the strongest mode they need.
fn brief(
    statements: Vec<&(String, LockMode)>,
    clauses: Vec<usize>,
    creates: Vec<(usize, String)>,
    finishes: Vec<usize>,
) -> Step {
    let lock = statements
        .iter()
        .map(|(_, l)| *l)
        .max()
        .unwrap_or(LockMode::AccessExclusive);
    let sql: Vec<String> = statements.iter().map(|(s, _)| s.clone()).collect();
    Step {
        what: format!("{} statement(s) in one transaction", sql.len()),
        action: Action::Brief(sql),
        lock,
        clauses,
        creates,
        finishes,
    }
}

/// Compares what a table's catalog says about its shape (columns, constraints, indexes),
/// ignoring OIDs and storage: two clones that took different routes to the same ALTER compare
/// equal.
pub fn same_shape(a: &Table, b: &Table) -> bool {
    let columns = |t: &Table| {
        t.columns
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.type_sql.clone(),
                    c.not_null,
                    c.default_sql.clone(),
                    c.collate_sql.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let constraints = |t: &Table| {
        let mut v: Vec<_> = t
            .constraints
            .iter()
            .map(|c| (c.name.clone(), c.kind, c.definition.clone(), c.validated))
            .collect();
        v.sort();
        v
    };
    let indexes = |t: &Table| {
        let mut v: Vec<_> = t
            .indexes
            .iter()
            .map(|i| (i.name.clone(), i.definition.clone(), i.constraint.clone()))
            .collect();
        v.sort();
        v
    };
    columns(a) == columns(b) && constraints(a) == constraints(b) && indexes(a) == indexes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_follow_the_documented_forms() {
        assert_eq!(lock_for("ADD COLUMN x int"), LockMode::AccessExclusive);
        assert_eq!(
            lock_for("ALTER COLUMN x SET STATISTICS 100"),
            LockMode::ShareUpdateExclusive
        );
        assert_eq!(
            lock_for("ALTER COLUMN x SET (n_distinct = 5)"),
            LockMode::ShareUpdateExclusive
        );
        assert_eq!(
            lock_for("ALTER COLUMN x SET DEFAULT 5"),
            LockMode::AccessExclusive
        );
        assert_eq!(
            lock_for("VALIDATE CONSTRAINT c"),
            LockMode::ShareUpdateExclusive
        );
        assert_eq!(
            lock_for("SET (fillfactor = 70)"),
            LockMode::ShareUpdateExclusive
        );
        assert_eq!(lock_for("DISABLE TRIGGER t"), LockMode::ShareRowExclusive);
        assert_eq!(
            lock_for("ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES p(id) NOT VALID"),
            LockMode::ShareRowExclusive
        );
        assert_eq!(lock_for("RENAME COLUMN a TO b"), LockMode::AccessExclusive);
    }

    #[test]
    fn reads_constraint_and_index_definitions() {
        assert_eq!(
            check_expression("CHECK ((amount > (0)::numeric)) NOT VALID").as_deref(),
            Some("(amount > (0)::numeric)")
        );
        assert_eq!(check_expression("FOREIGN KEY (a) REFERENCES p(id)"), None);
        assert_eq!(
            foreign_key_target(
                "FOREIGN KEY (state_id) REFERENCES \"Sales\".transaction_state(id, \"Code\") ON DELETE CASCADE"
            ),
            (
                "\"Sales\".transaction_state".to_string(),
                vec!["id".to_string(), "Code".to_string()]
            )
        );
        assert_eq!(
            index_columns(
                "CREATE UNIQUE INDEX u ON pg_temp.t USING btree (a, \"B\" DESC) INCLUDE (c)"
            ),
            vec!["a".to_string(), "B".to_string()]
        );
    }

    fn column(name: &str) -> Column {
        Column {
            attnum: 9,
            name: name.into(),
            type_oid: 23,
            type_sql: "integer".into(),
            type_modifier: -1,
            collate_sql: String::new(),
            not_null: false,
            default_sql: None,
            identity: None,
            generated_sql: None,
            generated_kind: None,
            storage: None,
            compression: None,
            stattarget: None,
            comment: None,
        }
    }

    fn effect(text: &str) -> Effect {
        Effect {
            text: text.into(),
            cost: Rewrite::MetadataOnly,
            rewrite: false,
            rebuilt_indexes: Vec::new(),
            added_columns: Vec::new(),
            new_not_null: Vec::new(),
            new_constraints: Vec::new(),
            validated: Vec::new(),
            new_indexes: Vec::new(),
            retype_dependents: Vec::new(),
            drop_dependents: Vec::new(),
        }
    }

    fn check(name: &str, def: &str) -> Constraint {
        Constraint {
            name: name.into(),
            kind: 'c',
            definition: def.into(),
            validated: true,
            columns: vec!["x".into()],
            references: None,
        }
    }

    fn clauses_of(effects: &[Effect]) -> Vec<Clause> {
        effects
            .iter()
            .map(|e| {
                let (strategy, reason) = choose(e);
                Clause {
                    text: e.text.clone(),
                    strategy,
                    cost: e.cost,
                    reason,
                }
            })
            .collect()
    }

    fn target() -> Target {
        Target {
            table: "\"public\".\"t\"".into(),
            concurrently: true,
            clone_text: "pg_temp.t".into(),
        }
    }

    #[test]
    fn the_strategy_follows_what_the_clause_did_to_the_clone() {
        assert_eq!(choose(&effect("ADD COLUMN x int")).0, Strategy::Direct);
        let rewrite = Effect {
            rewrite: true,
            ..effect("ALTER COLUMN x TYPE bigint")
        };
        assert_eq!(
            choose(&rewrite),
            (Strategy::Shadow, "rewrites the table".into())
        );
        let viewed = Effect {
            retype_dependents: vec![("x".into(), "view public.v".into())],
            ..effect("ALTER COLUMN x TYPE varchar(20)")
        };
        let (strategy, reason) = choose(&viewed);
        assert_eq!(strategy, Strategy::Shadow);
        assert!(reason.contains("view public.v"), "{reason}");
        let checked = Effect {
            new_constraints: vec![check("c", "CHECK ((x > 0))")],
            ..effect("ADD CONSTRAINT c CHECK (x > 0)")
        };
        assert_eq!(choose(&checked).0, Strategy::Online);
        let not_valid = Effect {
            new_constraints: vec![Constraint {
                validated: false,
                ..check("c", "CHECK ((x > 0)) NOT VALID")
            }],
            ..effect("ADD CONSTRAINT c CHECK (x > 0) NOT VALID")
        };
        assert_eq!(choose(&not_valid).0, Strategy::Direct);
        let scans_without_recipe = Effect {
            new_not_null: vec!["x".into()],
            ..effect("ALTER COLUMN x TYPE int")
        };
        assert_eq!(choose(&scans_without_recipe).0, Strategy::Shadow);
    }

    #[test]
    fn grouped_steps_take_two_brief_locks_around_the_scans() {
        let names = Names::new("public", "t", 42);
        let effects = vec![
            Effect {
                added_columns: vec![column("y")],
                ..effect("ADD COLUMN y int")
            },
            Effect {
                new_constraints: vec![check("c", "CHECK ((x > 0))")],
                ..effect("ADD CONSTRAINT c CHECK (x > 0)")
            },
            Effect {
                new_not_null: vec!["x".into()],
                ..effect("ALTER COLUMN x SET NOT NULL")
            },
        ];
        let clauses = clauses_of(&effects);
        assert_eq!(
            clauses.iter().map(|c| c.strategy).collect::<Vec<_>>(),
            [Strategy::Direct, Strategy::Online, Strategy::Online]
        );
        let grouped = steps(&effects, &clauses, &target(), &names, true);
        let kinds: Vec<(&str, LockMode)> = grouped
            .steps
            .iter()
            .map(|s| match &s.action {
                Action::Brief(_) => ("brief", s.lock),
                Action::Validate { .. } => ("validate", s.lock),
                Action::BuildIndex { .. } => ("index", s.lock),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("brief", LockMode::AccessExclusive),
                ("validate", LockMode::ShareUpdateExclusive),
                ("validate", LockMode::ShareUpdateExclusive),
                ("brief", LockMode::AccessExclusive)
            ]
        );
        let Action::Brief(first) = &grouped.steps[0].action else {
            panic!()
        };
        assert_eq!(
            first,
            &[
                "ALTER TABLE \"public\".\"t\" ADD COLUMN y int",
                "ALTER TABLE \"public\".\"t\" ADD CONSTRAINT \"c\" CHECK ((x > 0)) NOT VALID",
                "ALTER TABLE \"public\".\"t\" ADD CONSTRAINT \"_doppel_42_nn1\" CHECK (\"x\" IS NOT NULL) NOT VALID",
            ]
        );
        // What the first step creates is undone if a later step fails; the direct clause is
        // finished at once, the CHECK after its VALIDATE, the NOT NULL after the last step.
        assert_eq!(grouped.steps[0].finishes, [0]);
        assert_eq!(grouped.steps[0].creates.len(), 2);
        assert_eq!(grouped.steps[1].finishes, [1]);
        assert_eq!(grouped.steps[3].finishes, [2]);
        let Action::Brief(last) = &grouped.steps[3].action else {
            panic!()
        };
        assert_eq!(
            last,
            &[
                "ALTER TABLE \"public\".\"t\" ALTER COLUMN \"x\" SET NOT NULL",
                "ALTER TABLE \"public\".\"t\" DROP CONSTRAINT \"_doppel_42_nn1\"",
            ]
        );
        // Clause by clause: each clause's steps before the next clause's (1 + 2 + 3).
        let sequential = steps(&effects, &clauses, &target(), &names, false);
        assert_eq!(sequential.steps.len(), 6);
        assert!(!sequential.grouped);
    }

    #[test]
    fn recipes_are_rebuilt_only_for_known_forms() {
        assert!(reconstructable("ADD CONSTRAINT c CHECK (x > 0)"));
        assert!(reconstructable("alter column x set not null"));
        assert!(reconstructable("VALIDATE CONSTRAINT c"));
        assert!(!reconstructable("ALTER COLUMN x TYPE int"));
    }
}
