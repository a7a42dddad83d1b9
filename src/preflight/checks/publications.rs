//! Publications that would publish doppel's shadow table to their subscribers: `FOR ALL
//! TABLES`, and `FOR TABLES IN SCHEMA` on the table's schema (docs/design.md §1.1).

use anyhow::Result;
use tokio_postgres::Client;

use crate::failure::{Check, Refusal};
use crate::model::catalog::Table;
use crate::sql::ident;

/// [`Check::Publication`]: every `FOR ALL TABLES` publication (`pg_publication.puballtables`),
/// then every publication of `t`'s schema (`pg_publication_namespace`). The second query
/// fails before PostgreSQL 15, which has no such publications: its error is ignored.
///
/// Errors: the first query fails.
pub async fn check(client: &Client, t: &Table) -> Result<Vec<Refusal>> {
    let mut refusals = Vec::new();
    let pubs = client
        .query(
            "SELECT pubname::text FROM pg_publication WHERE puballtables ORDER BY 1",
            &[],
        )
        .await?;
    for p in pubs {
        let name: String = p.get(0);
        refusals.push(Refusal::without_fix(
            Check::Publication,
            format!(
                "publication {name} is FOR ALL TABLES: it would ship doppel's shadow table to its subscribers; doppel cannot run while it exists"
            ),
        ));
    }
    let covering = client
        .query(
            "SELECT p.pubname::text FROM pg_publication p
             JOIN pg_catalog.pg_publication_namespace pn ON pn.pnpubid = p.oid
             WHERE pn.pnnspid = (SELECT relnamespace FROM pg_class WHERE oid = $1)",
            &[&t.oid],
        )
        .await;
    if let Ok(rows) = covering {
        for r in rows {
            let name: String = r.get(0);
            refusals.push(Refusal::without_fix(
                Check::Publication,
                format!(
                    "publication {name} is FOR TABLES IN SCHEMA {}: it would ship doppel's shadow table to its subscribers",
                    ident(&t.schema)
                ),
            ));
        }
    }
    Ok(refusals)
}
