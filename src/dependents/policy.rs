//! Row-level security policies on the table and its RLS flags, and policies of other tables
//! whose expressions use the table or a dependent view.
//!
//! A policy is bound to its table's OID and to every relation its expressions use. The
//! table's own policies move: dropped from the kept old table, created on the new one
//! (PostgreSQL has no `pg_get_policydef`; the `CREATE POLICY` is built like `pg_dump`'s
//! `dumpPolicy`, with `pg_get_expr` texts), then `ENABLE` / `FORCE ROW LEVEL SECURITY` on the
//! new table. The old table keeps its flags: without policies it denies every role but its
//! owner. Policies of other tables are dropped before the moves and created again after them;
//! their tables are locked with the foreign-key children.

use super::read::{Batch, EVERY_VERSION, Params, Query, ReadContext, Rows};
use super::{Dependents, Kind, Lock, Move, Refusal, first_char};
use crate::sql::{ident, qualified};

/// A row-level security policy on the table, or on another table whose policy expressions
/// use the table or a dependent view (e.g. `USING (EXISTS (SELECT 1 FROM t ..))`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Policy name.
    pub name: String,
    /// OID of the table the policy is on.
    pub relation_oid: u32,
    /// `"schema"."table"` the policy is on.
    pub relation: String,
    /// `polpermissive`: `AS PERMISSIVE` when true, `AS RESTRICTIVE` otherwise.
    pub permissive: bool,
    /// `ALL`, `SELECT`, `INSERT`, `UPDATE` or `DELETE` (from `polcmd`).
    pub command: String,
    /// `PUBLIC` or quoted role names (from `polroles`).
    pub roles: Vec<String>,
    /// `pg_get_expr(polqual, polrelid)`: the `USING` expression.
    pub using: Option<String>,
    /// `pg_get_expr(polwithcheck, polrelid)`: the `WITH CHECK` expression.
    pub with_check: Option<String>,
    /// Columns of the table the policy's expressions use, from `pg_depend`.
    pub columns: Vec<String>,
}

impl Policy {
    /// `CREATE POLICY` reproducing this policy on its relation (the equivalent of the
    /// `pg_get_policydef` PostgreSQL does not have; `pg_dump`'s `dumpPolicy` builds the same).
    pub fn create_sql(&self) -> String {
        let mut sql = format!(
            "CREATE POLICY {} ON {} AS {} FOR {} TO {}",
            ident(&self.name),
            self.relation,
            if self.permissive {
                "PERMISSIVE"
            } else {
                "RESTRICTIVE"
            },
            self.command,
            self.roles.join(", ")
        );
        if let Some(using) = &self.using {
            sql.push_str(&format!(" USING ({using})"));
        }
        if let Some(check) = &self.with_check {
            sql.push_str(&format!(" WITH CHECK ({check})"));
        }
        sql
    }
}

/// Policies on the table, and policies whose expressions use the table, a view or their row
/// types.
const POLICIES: Query = Query {
    what: "reading row-level security policies",
    sql: concat!(
        "SELECT p.oid, p.polrelid, n.nspname::text, c.relname::text, p.polname::text,
            p.polcmd::text, p.polpermissive,
            ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END
                  FROM unnest(p.polroles) AS r),
            pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid),
            pg_has_role(c.relowner, 'USAGE'), pg_get_userbyid(c.relowner)::text
     FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
     JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE p.polrelid = $3
        OR p.oid IN (SELECT d.objid FROM pg_depend d
                     WHERE d.classid = 'pg_policy'::regclass AND ",
        references_1_2!(),
        ")
     ORDER BY p.polrelid, p.polname"
    ),
    batch: Batch::Second,
    params: Params::RelationsTypesAndOid,
    versions: EVERY_VERSION,
};

/// Policies and RLS flags of the table, policies of other tables that use it.
pub(super) struct Policies;

impl Kind for Policies {
    fn queries(&self) -> &'static [&'static Query] {
        &[&POLICIES]
    }

    /// Policies on the table into `deps.policies`, on other tables into
    /// `deps.other_policies` (refused when that table's owner is a role the current user is
    /// not a member of). The RLS flags come with the table's row.
    fn read(&self, rows: &mut Rows, cx: &ReadContext, deps: &mut Dependents) {
        for r in rows.take(&POLICIES) {
            let relid: u32 = r.get(1);
            let command = match first_char(r.get(5)) {
                'r' => "SELECT",
                'a' => "INSERT",
                'w' => "UPDATE",
                'd' => "DELETE",
                _ => "ALL",
            };
            let policy = Policy {
                name: r.get(4),
                relation_oid: relid,
                relation: qualified(&r.get::<_, String>(2), &r.get::<_, String>(3)),
                command: command.to_string(),
                permissive: r.get(6),
                roles: r.get(7),
                using: r.get(8),
                with_check: r.get(9),
                columns: cx.columns("pg_policy", r.get(0)),
            };
            if relid == cx.oid {
                deps.policies.push(policy);
            } else {
                if !r.get::<_, bool>(10) {
                    deps.unsupported.push(Refusal::new(
                        format!("policy {} on {}", policy.name, policy.relation),
                        format!(
                            "uses {}; the table is owned by {}, a role the current user is not a member of, so the cutover cannot recreate the policy",
                            cx.table,
                            r.get::<_, String>(11)
                        ),
                    ));
                }
                deps.other_policies.push(policy);
            }
        }
    }

    fn column_users<'d>(&self, deps: &'d Dependents) -> Vec<(String, &'d [String])> {
        deps.policies
            .iter()
            .chain(&deps.other_policies)
            .map(|p| {
                (
                    format!("policy {} on {}", p.name, p.relation),
                    &p.columns[..],
                )
            })
            .collect()
    }

    /// The tables other policies are on.
    fn locks(&self, deps: &Dependents) -> Vec<Lock> {
        deps.other_policies
            .iter()
            .map(|p| Lock::Table {
                oid: p.relation_oid,
                name: p.relation.clone(),
            })
            .collect()
    }

    /// Other tables' policies dropped.
    fn unbind(&self, deps: &Dependents) -> Vec<String> {
        deps.other_policies
            .iter()
            .map(|p| format!("DROP POLICY {} ON {}", ident(&p.name), p.relation))
            .collect()
    }

    /// Per policy of the table: dropped from `m.from`, created on `m.table`; then the RLS
    /// flags set on `m.table`.
    fn forward(&self, deps: &Dependents, m: &Move) -> Vec<String> {
        let mut out = Vec::new();
        for p in &deps.policies {
            out.push(format!("DROP POLICY {} ON {}", ident(&p.name), m.from));
            out.push(
                Policy {
                    relation: m.table.clone(),
                    ..p.clone()
                }
                .create_sql(),
            );
        }
        if deps.row_security {
            out.push(format!("ALTER TABLE {} ENABLE ROW LEVEL SECURITY", m.table));
        }
        if deps.force_row_security {
            out.push(format!("ALTER TABLE {} FORCE ROW LEVEL SECURITY", m.table));
        }
        out
    }

    /// Other tables' policies created again.
    fn rebind(&self, deps: &Dependents) -> Vec<String> {
        deps.other_policies.iter().map(Policy::create_sql).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_sql() {
        let p = Policy {
            name: "p".into(),
            relation_oid: 1,
            relation: "\"public\".\"t\"".into(),
            permissive: false,
            command: "INSERT".into(),
            roles: vec!["tenant".into()],
            using: None,
            with_check: Some("(amount >= 0)".into()),
            columns: vec![],
        };
        assert_eq!(
            p.create_sql(),
            "CREATE POLICY \"p\" ON \"public\".\"t\" AS RESTRICTIVE FOR INSERT TO tenant WITH CHECK ((amount >= 0))"
        );
    }
}
