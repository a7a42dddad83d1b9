//! The type matrix: columns of many types with their edge values, as SQL expressions, for
//! the oracle tests (tests/suite/type_matrix.rs, tests/suite/randomized_oracle.rs).
//!
//! The columns are data: a [`Spec`] per column in tables by type family, turned into
//! [`MatrixColumn`]s by [`Spec::column`].

use anyhow::{Context, Result};
use postgres_protocol::escape::{escape_identifier as ident, escape_literal as literal};
use rand::RngExt;
use rand::rngs::StdRng;
use tokio_postgres::Client;

/// The enum and domain types the matrix columns use (`mood`, `posint`).
pub const MATRIX_TYPES_SQL: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'very happy', 'it''s');
     CREATE DOMAIN posint AS integer CHECK (VALUE > 0);";

/// One column of the type matrix: its name, type and values as SQL expressions of that type.
#[derive(Debug, Clone)]
pub struct MatrixColumn {
    /// Column name.
    pub name: &'static str,
    /// SQL type, as `CREATE TABLE` writes it.
    pub sql_type: &'static str,
    /// Edge values (NULL, NaN, ±infinity, empty arrays, TOASTed values, ...) as SQL
    /// expressions; each is written with an explicit cast to the column's type unless the
    /// column is meant to take untyped literals.
    pub edges: Vec<String>,
    /// Out-of-line storage (`SET STORAGE EXTERNAL`): large values are TOASTed uncompressed.
    pub external: bool,
    ordinary: fn(u64) -> String,
}

impl MatrixColumn {
    /// An ordinary (non-edge) value derived from `n`, as a SQL expression; deterministic.
    pub fn ordinary(&self, n: u64) -> String {
        (self.ordinary)(n)
    }

    /// A random value: an edge value one time in four, an ordinary one otherwise.
    pub fn random_value(&self, rng: &mut StdRng) -> String {
        if !self.edges.is_empty() && rng.random_range(0..4) == 0 {
            self.edges[rng.random_range(0..self.edges.len())].clone()
        } else {
            self.ordinary(rng.random_range(0..u64::MAX))
        }
    }
}

/// `'<value>'::<type>`, quoted.
fn typed(value: &str, ty: &str) -> String {
    format!("{}::{ty}", literal(value))
}

/// Typed literals of `values`, with `"NULL"` meaning SQL NULL.
fn typed_all(values: &[&str], ty: &str) -> Vec<String> {
    values
        .iter()
        .map(|v| {
            if *v == "NULL" {
                format!("NULL::{ty}")
            } else {
                typed(v, ty)
            }
        })
        .collect()
}

/// A deterministic, incompressible text of about 4 kB with non-ASCII separators (stored out
/// of line), derived from `key`.
pub fn big_text_sql(key: u64) -> String {
    format!("(SELECT string_agg(md5('{key}:' || g), 'ß') FROM generate_series(1, 120) AS g)")
}

/// A deterministic, incompressible bytea of 2.4 kB (stored out of line), derived from `key`.
pub fn big_bytea_sql(key: u64) -> String {
    format!(
        "(SELECT decode(string_agg(md5('{key}/' || g), ''), 'hex') FROM generate_series(1, 150) AS g)"
    )
}

/// A deterministic, compressible jsonb array of 1,000 numbers (compressed; out of line or
/// not depending on the server's TOAST decisions), derived from `key`.
pub fn big_jsonb_sql(key: u64) -> String {
    format!(
        "(SELECT jsonb_agg(g + {}) FROM generate_series(1, 1000) AS g)",
        key % 1000
    )
}

/// `n` folded into `-modulus/2 .. modulus/2`.
fn signed(n: u64, modulus: u64) -> i64 {
    (n % modulus) as i64 - (modulus / 2) as i64
}

/// One column of the matrix as data. Its edge values are, in this order: `literals` cast to
/// `sql_type` (`"NULL"` meaning SQL NULL), the `sql` expressions as written, and the `large`
/// values.
struct Spec {
    name: &'static str,
    sql_type: &'static str,
    literals: &'static [&'static str],
    sql: &'static [&'static str],
    large: Option<Large>,
    external: bool,
    ordinary: fn(u64) -> String,
}

/// Large edge values: `sql(key)` for each of `keys`.
struct Large {
    sql: fn(u64) -> String,
    keys: &'static [u64],
}

impl Spec {
    /// The fields most columns leave alone: no untyped or large edge values, inline storage.
    const BASE: Spec = Spec {
        name: "",
        sql_type: "",
        literals: &[],
        sql: &[],
        large: None,
        external: false,
        ordinary: |_| unreachable!("every column spec has its own ordinary values"),
    };

    /// The column this spec describes.
    fn column(&self) -> MatrixColumn {
        let mut edges = typed_all(self.literals, self.sql_type);
        edges.extend(self.sql.iter().map(|s| s.to_string()));
        if let Some(large) = &self.large {
            edges.extend(large.keys.iter().map(|&key| (large.sql)(key)));
        }
        MatrixColumn {
            name: self.name,
            sql_type: self.sql_type,
            edges,
            external: self.external,
            ordinary: self.ordinary,
        }
    }
}

/// The type matrix (36 columns, 37 with `xml`): integers, numeric (NaN, ±Infinity, huge
/// precision), floats (NaN, ±Infinity, -0, subnormals, extremes), text with non-ASCII
/// characters and `''` vs NULL, a TOASTed text, char(n), varchar(n), bytea (empty, NUL bytes,
/// TOASTed), uuid, date/time/timetz/timestamp/timestamptz (±infinity, BC, extremes),
/// interval, jsonb (`null` vs NULL, large), json (duplicate keys and whitespace kept), arrays
/// (empty, NULL elements, non-default lower bound, two dimensions), an enum, a domain, inet,
/// cidr, macaddr, bit, varbit, tsvector, point, int4range, tstzrange, money; and xml when
/// `with_xml` (servers built without libxml lack it, see [`server_has_xml`]).
pub fn matrix_columns(with_xml: bool) -> Vec<MatrixColumn> {
    let families = [NUMBERS, TEXTS, TIMES, DOCUMENTS, OTHERS];
    let xml = with_xml.then_some(&XML);
    families
        .into_iter()
        .flatten()
        .chain(xml)
        .map(Spec::column)
        .collect()
}

/// Integers, numeric, floats, boolean.
const NUMBERS: &[Spec] = &[
    Spec {
        name: "c_int2",
        sql_type: "smallint",
        literals: &["-32768", "32767", "0", "NULL"],
        ordinary: |n| format!("{}::smallint", signed(n, 60_000)),
        ..Spec::BASE
    },
    Spec {
        name: "c_int4",
        sql_type: "integer",
        literals: &["-2147483648", "2147483647", "0", "NULL"],
        ordinary: |n| format!("{}::integer", signed(n, 4_000_000_000)),
        ..Spec::BASE
    },
    Spec {
        name: "c_int8",
        sql_type: "bigint",
        literals: &["-9223372036854775808", "9223372036854775807", "NULL"],
        ordinary: |n| format!("'{}'::bigint", n.wrapping_mul(0x9E37_79B9_7F4A_7C15) as i64),
        ..Spec::BASE
    },
    Spec {
        name: "c_numeric",
        sql_type: "numeric",
        literals: &[
            "NaN",
            "Infinity",
            "-Infinity",
            "0",
            "-0.0",
            "1.50",
            "123456789012345678901234567890.123456789012345678901234567890",
            "0.000000000000000000000000000001",
            "-99999999999999999999.9999",
            "NULL",
        ],
        ordinary: |n| format!("'{}.{:03}'::numeric", signed(n, 2_000_000), n % 1000),
        ..Spec::BASE
    },
    Spec {
        name: "c_numeric_p",
        sql_type: "numeric(12,2)",
        literals: &[
            "0.005",
            "-0.005",
            "9999999999.99",
            "-9999999999.99",
            "0",
            "NULL",
        ],
        ordinary: |n| {
            let cents = signed(n, 200_000_000);
            let sign = if cents < 0 { "-" } else { "" };
            let cents = cents.abs();
            format!("'{sign}{}.{:02}'::numeric(12,2)", cents / 100, cents % 100)
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_float4",
        sql_type: "real",
        literals: &[
            "NaN",
            "Infinity",
            "-Infinity",
            "-0",
            "1.17549435e-38",
            "3.4028235e38",
            "1e-45",
            "0.1",
            "NULL",
        ],
        ordinary: |n| format!("'{:?}'::real", signed(n, 2_000_000) as f32 / 7.0),
        ..Spec::BASE
    },
    Spec {
        name: "c_float8",
        sql_type: "double precision",
        literals: &[
            "NaN",
            "Infinity",
            "-Infinity",
            "-0",
            "5e-324",
            "1.7976931348623157e308",
            "2.2250738585072014e-308",
            "0.30000000000000004",
            "NULL",
        ],
        ordinary: |n| {
            format!(
                "'{:?}'::double precision",
                signed(n, 2_000_000_000) as f64 / 3.0
            )
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_bool",
        sql_type: "boolean",
        literals: &["true", "false", "NULL"],
        ordinary: |n| format!("{}", n % 2 == 0),
        ..Spec::BASE
    },
];

/// Text (a TOASTed one among them), char(n), varchar(n), bytea, uuid.
const TEXTS: &[Spec] = &[
    Spec {
        name: "c_text",
        sql_type: "text",
        literals: &[
            "",
            "NULL",
            "ü",
            "δοκιμή ✓ 日本語 😀",
            "a'b\"c\\d",
            " padded ",
            "tab\there\nnew line",
            "null",
        ],
        ordinary: |n| format!("'t{} ü'::text", n % 1_000_000),
        ..Spec::BASE
    },
    Spec {
        name: "c_doc",
        sql_type: "text",
        literals: &["NULL", ""],
        large: Some(Large {
            sql: big_text_sql,
            keys: &[1, 2],
        }),
        external: true,
        ordinary: |n| {
            if n % 5 == 0 {
                big_text_sql(n % 100_000)
            } else {
                format!("'doc {} ✓'::text", n % 1_000_000)
            }
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_char",
        sql_type: "character(5)",
        literals: &["ab", "", "üöäß", "NULL"],
        ordinary: |n| format!("'c{}'::character(5)", n % 1000),
        ..Spec::BASE
    },
    Spec {
        name: "c_varchar",
        sql_type: "character varying(12)",
        literals: &["x", "", "ünïcödé", "123456789012", "NULL"],
        ordinary: |n| format!("'v{}'::character varying(12)", n % 1_000_000),
        ..Spec::BASE
    },
    Spec {
        name: "c_bytea",
        sql_type: "bytea",
        literals: &["\\x", "\\x00", "\\x00ff7f80", "NULL"],
        large: Some(Large {
            sql: big_bytea_sql,
            keys: &[1],
        }),
        ordinary: |n| {
            if n % 7 == 0 {
                big_bytea_sql(n % 100_000)
            } else {
                format!("'\\x{:08x}'::bytea", n as u32)
            }
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_uuid",
        sql_type: "uuid",
        literals: &[
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "NULL",
        ],
        ordinary: |n| format!("md5('{n}')::uuid"),
        ..Spec::BASE
    },
];

/// Dates, times, timestamps, intervals.
const TIMES: &[Spec] = &[
    Spec {
        name: "c_date",
        sql_type: "date",
        literals: &[
            "infinity",
            "-infinity",
            "4713-01-01 BC",
            "5874897-12-31",
            "2000-02-29",
            "NULL",
        ],
        ordinary: |n| format!("('2000-01-01'::date + {})", n % 40_000),
        ..Spec::BASE
    },
    Spec {
        name: "c_time",
        sql_type: "time without time zone",
        literals: &["24:00:00", "00:00:00", "23:59:59.999999", "NULL"],
        ordinary: |n| {
            format!(
                "'{:02}:{:02}:{:02}.{:06}'::time without time zone",
                n % 24,
                n / 24 % 60,
                n / 1440 % 60,
                n % 1_000_000
            )
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_timetz",
        sql_type: "time with time zone",
        literals: &[
            "12:00:00+14",
            "00:00:00-12",
            "23:59:59.999999+05:45",
            "NULL",
        ],
        ordinary: |n| {
            format!(
                "'{:02}:{:02}:00{:+03}'::time with time zone",
                n % 24,
                n / 24 % 60,
                signed(n / 7, 25)
            )
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_ts",
        sql_type: "timestamp without time zone",
        literals: &[
            "infinity",
            "-infinity",
            "4713-01-01 00:00:00 BC",
            "294276-12-31 23:59:59.999999",
            "2000-01-01 00:00:00.000001",
            "NULL",
        ],
        ordinary: |n| {
            format!(
                "('2020-01-01 00:00:00'::timestamp without time zone + {} * interval '1 microsecond')",
                signed(n, 1 << 50)
            )
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_tstz",
        sql_type: "timestamp with time zone",
        literals: &[
            "infinity",
            "-infinity",
            "4713-01-01 00:00:00+00 BC",
            "294276-12-31 23:59:59.999999+00",
            "2026-03-29 01:30:00+00",
            "NULL",
        ],
        ordinary: |n| {
            format!(
                "('2020-01-01 00:00:00+00'::timestamp with time zone + {} * interval '1 microsecond')",
                signed(n, 1 << 50)
            )
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_interval",
        sql_type: "interval",
        literals: &[
            "-178000000 years",
            "178000000 years",
            "1 day -24 hours",
            "1 mon -30 days",
            "00:00:00.000001",
            "-1 days +02:03:04.5",
            "0",
            "NULL",
        ],
        ordinary: |n| {
            format!(
                "'{} mons {} days {} seconds'::interval",
                signed(n, 100),
                signed(n / 100, 100),
                signed(n / 10_000, 1_000_000)
            )
        },
        ..Spec::BASE
    },
];

/// jsonb, json, arrays.
const DOCUMENTS: &[Spec] = &[
    Spec {
        name: "c_jsonb",
        sql_type: "jsonb",
        literals: &[
            "{}",
            "[]",
            "null",
            "\"\"",
            "{\"a\": \"ü\", \"n\": 1.50, \"big\": 1e400, \"nested\": [null, {}]}",
            "NULL",
        ],
        large: Some(Large {
            sql: big_jsonb_sql,
            keys: &[1],
        }),
        ordinary: |n| {
            if n % 11 == 0 {
                big_jsonb_sql(n)
            } else {
                format!(
                    "jsonb_build_object('n', {}, 's', 'ü{}')",
                    n % 1_000_000,
                    n % 97
                )
            }
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_json",
        sql_type: "json",
        literals: &["{\"a\":1,  \"a\":2}", "  [1, 2 ]  ", "null", "NULL"],
        ordinary: |n| format!("'{{\"n\": {}}}'::json", n % 1_000_000),
        ..Spec::BASE
    },
    Spec {
        name: "c_int_arr",
        sql_type: "integer[]",
        literals: &[
            "{}",
            "{NULL}",
            "{1,NULL,3}",
            "[0:2]={7,8,9}",
            "{{1,2},{3,4}}",
            "NULL",
        ],
        ordinary: |n| format!("ARRAY[{}, {}]::integer[]", n % 1000, n % 7),
        ..Spec::BASE
    },
    Spec {
        name: "c_text_arr",
        sql_type: "text[]",
        sql: &[
            "'{}'::text[]",
            "ARRAY['', NULL, 'a b', 'ü', '\"q\"', 'NULL', 'a,b{}']::text[]",
            "ARRAY[NULL]::text[]",
            "NULL::text[]",
        ],
        ordinary: |n| format!("ARRAY['x{}', 'ü']::text[]", n % 1000),
        ..Spec::BASE
    },
];

/// An enum, a domain, network addresses, bit strings, tsvector, point, ranges, money.
const OTHERS: &[Spec] = &[
    Spec {
        name: "c_enum",
        sql_type: "mood",
        literals: &["sad", "very happy", "it's", "NULL"],
        ordinary: |n| typed(["sad", "ok", "very happy"][(n % 3) as usize], "mood"),
        ..Spec::BASE
    },
    Spec {
        name: "c_domain",
        sql_type: "posint",
        literals: &["1", "2147483647", "NULL"],
        ordinary: |n| format!("{}::posint", 1 + n % 1_000_000),
        ..Spec::BASE
    },
    Spec {
        name: "c_inet",
        sql_type: "inet",
        literals: &["::1", "10.1.2.3/8", "2001:db8::1/64", "0.0.0.0/0", "NULL"],
        ordinary: |n| {
            format!(
                "'10.{}.{}.{}'::inet",
                n % 256,
                n / 256 % 256,
                n / 65536 % 256
            )
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_cidr",
        sql_type: "cidr",
        literals: &["10.0.0.0/8", "::/0", "192.168.1.0/24", "NULL"],
        ordinary: |n| format!("'10.{}.0.0/16'::cidr", n % 256),
        ..Spec::BASE
    },
    Spec {
        name: "c_macaddr",
        sql_type: "macaddr",
        literals: &["08:00:2b:01:02:03", "ff:ff:ff:ff:ff:ff", "NULL"],
        ordinary: |n| {
            let b = n.to_be_bytes();
            format!(
                "'{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}'::macaddr",
                b[2], b[3], b[4], b[5], b[6], b[7]
            )
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_bit",
        sql_type: "bit(8)",
        literals: &["00000000", "10101010", "NULL"],
        ordinary: |n| format!("'{:08b}'::bit(8)", n as u8),
        ..Spec::BASE
    },
    Spec {
        name: "c_varbit",
        sql_type: "bit varying",
        literals: &["", "1", "1010101010101", "NULL"],
        ordinary: |n| format!("'{:b}'::bit varying", n % 100_000),
        ..Spec::BASE
    },
    Spec {
        name: "c_tsvector",
        sql_type: "tsvector",
        literals: &["", "a fat cat", "'ü':1A 'x y':2B", "NULL"],
        ordinary: |n| format!("'w{} ü{}'::tsvector", n % 1000, n % 7),
        ..Spec::BASE
    },
    Spec {
        name: "c_point",
        sql_type: "point",
        literals: &["(0,0)", "(-0,1.5)", "(NaN,Infinity)", "NULL"],
        ordinary: |n| format!("'({:?},{})'::point", (n % 10_000) as f64 / 3.0, n % 7),
        ..Spec::BASE
    },
    Spec {
        name: "c_range",
        sql_type: "int4range",
        literals: &["empty", "[1,10)", "(,5]", "(,)", "NULL"],
        ordinary: |n| format!("int4range({}, {})", n % 1000, 1000 + n % 1000),
        ..Spec::BASE
    },
    Spec {
        name: "c_tstzrange",
        sql_type: "tstzrange",
        literals: &["empty", "[2020-01-01 00:00:00+00,infinity)", "(,)", "NULL"],
        ordinary: |n| {
            format!(
                "tstzrange('2020-01-01 00:00:00+00'::timestamptz + {} * interval '1 second', NULL)",
                n % 1_000_000
            )
        },
        ..Spec::BASE
    },
    Spec {
        name: "c_money",
        sql_type: "money",
        literals: &["-92233720368547758.08", "92233720368547758.07", "0", "NULL"],
        ordinary: |n| format!("'{}.{:02}'::numeric::money", signed(n, 2_000_000), n % 100),
        ..Spec::BASE
    },
];

/// `xml`: only on servers built with libxml (see [`server_has_xml`]).
const XML: Spec = Spec {
    name: "c_xml",
    sql_type: "xml",
    literals: &["<a b=\"1\">ü</a>", "text only", "<!-- c --><x/>", "NULL"],
    ordinary: |n| format!("'<r n=\"{}\"/>'::xml", n % 1_000_000),
    ..Spec::BASE
};

/// Columns whose type changes round (numeric, float8 → integer; timestamptz → date; text →
/// integer through `USING`), with the values where rounding rules differ: halves both ways,
/// midnight in the session's time zone, digits with spaces and signs. `r_digits` takes
/// untyped literals (it is meant to be changed with `USING trim(r_digits)::integer`, after
/// which a typed text could not be assigned).
pub fn rounding_columns() -> Vec<MatrixColumn> {
    ROUNDING.iter().map(Spec::column).collect()
}

/// The columns of [`rounding_columns`].
const ROUNDING: &[Spec] = &[
    Spec {
        name: "r_numeric",
        sql_type: "numeric",
        literals: &[
            "2.5",
            "-2.5",
            "0.5",
            "1.5",
            "-0.5",
            "-1.5",
            "2.4999999999",
            "1000000000.5",
            "2147483647.49",
            "NULL",
        ],
        ordinary: |n| format!("'{}.{}'::numeric", signed(n, 20_000), n % 10),
        ..Spec::BASE
    },
    Spec {
        name: "r_float",
        sql_type: "double precision",
        literals: &[
            "2.5",
            "-2.5",
            "0.5",
            "1.5",
            "3.5",
            "-0.5",
            "-0",
            "1e-300",
            "0.49999999999999994",
            "NULL",
        ],
        ordinary: |n| format!("'{:?}'::double precision", signed(n, 20_000) as f64 / 4.0),
        ..Spec::BASE
    },
    Spec {
        name: "r_tstz",
        sql_type: "timestamp with time zone",
        literals: &[
            "2026-01-01 18:14:59.999999+00",
            "2026-01-01 18:15:00+00",
            "2026-01-01 23:59:59.999999+00",
            "2026-01-02 00:00:00+00",
            "2026-03-29 01:30:00+01",
            "infinity",
            "-infinity",
            "NULL",
        ],
        ordinary: |n| {
            format!(
                "('2026-01-01 00:00:00+00'::timestamp with time zone + {} * interval '1 minute')",
                n % 2_000_000
            )
        },
        ..Spec::BASE
    },
    Spec {
        name: "r_digits",
        sql_type: "text",
        sql: &[
            "'12'",
            "' 7 '",
            "'-3'",
            "'+4'",
            "'007'",
            "'2147483647'",
            "NULL",
        ],
        ordinary: |n| format!("'{}'", signed(n, 2_000_000)),
        ..Spec::BASE
    },
];

/// Whether the server has the `xml` type (built with libxml).
pub async fn server_has_xml(client: &Client) -> bool {
    client.simple_query("SELECT '<a/>'::xml").await.is_ok()
}

/// Creates `table` (`id integer PRIMARY KEY` and `columns`, large values of the `external`
/// ones stored out of line uncompressed) and its twin `twin` (same columns, primary key, no
/// TOAST storage settings). The matrix types ([`MATRIX_TYPES_SQL`]) must exist.
///
/// Errors: a statement fails (e.g. the tables exist).
pub async fn create_matrix_tables(
    client: &Client,
    table: &str,
    twin: &str,
    columns: &[MatrixColumn],
) -> Result<()> {
    let (t, w) = (ident(table), ident(twin));
    let defs: Vec<String> = columns
        .iter()
        .map(|c| format!("{} {}", ident(c.name), c.sql_type))
        .collect();
    let mut sql = format!(
        "CREATE TABLE {t} (id integer PRIMARY KEY, {});",
        defs.join(", ")
    );
    for c in columns.iter().filter(|c| c.external) {
        sql.push_str(&format!(
            "ALTER TABLE {t} ALTER COLUMN {} SET STORAGE EXTERNAL;",
            ident(c.name)
        ));
    }
    sql.push_str(&format!(
        "CREATE TABLE {w} (LIKE {t}); ALTER TABLE {w} ADD PRIMARY KEY (id);"
    ));
    client
        .batch_execute(&sql)
        .await
        .with_context(|| format!("creating {table} and {twin}"))
}

/// `INSERT INTO {t} (id, <columns>) VALUES ..` for `rows` (key and one SQL expression per
/// column); `{t}` is left for [`Mirror`] to fill in.
pub fn insert_template(columns: &[MatrixColumn], rows: &[(i64, Vec<String>)]) -> String {
    let names: Vec<String> = columns.iter().map(|c| ident(c.name)).collect();
    let values: Vec<String> = rows
        .iter()
        .map(|(id, values)| format!("({id}, {})", values.join(", ")))
        .collect();
    format!(
        "INSERT INTO {{t}} (id, {}) VALUES {}",
        names.join(", "),
        values.join(", ")
    )
}

/// The edge rows of `columns`: row `k` (key `first_id + k`) holds edge value `k` (modulo
/// the column's count) of every column, so every edge value of every column appears in the
/// first `max edges` rows.
pub fn edge_rows(columns: &[MatrixColumn], first_id: i64) -> Vec<(i64, Vec<String>)> {
    let n = columns.iter().map(|c| c.edges.len()).max().unwrap_or(0);
    (0..n)
        .map(|k| {
            (
                first_id + k as i64,
                columns
                    .iter()
                    .map(|c| c.edges[k % c.edges.len()].clone())
                    .collect(),
            )
        })
        .collect()
}
