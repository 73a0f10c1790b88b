//! A deployment's settings move into one JSON column, `config` (the application's
//! `DeploymentConfig` minus `model_id`, `vendor_type` and `enabled`), beside the columns
//! that are queried: id, model_id, vendor_type, enabled, the sealed key and the times.
//! Existing rows keep their values (copied here, row by row); the never-used
//! `request_script`, `response_script`, `workflow` and `mcp_servers` are dropped.

use sea_orm_migration::sea_orm::{ConnectionTrait, QueryResult};
use sea_orm_migration::{prelude::*, schema::*};
use serde_json::{Map, Value};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// How a moved column is read and written.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Integer,
    BigInteger,
    Double,
    /// Text holding a JSON object (the breaker).
    Json,
}

/// The columns whose values move into `config`, under the same names.
const MOVED: [(Deployments, Kind); 11] = [
    (Deployments::BaseUrl, Kind::Text),
    (Deployments::UpstreamModel, Kind::Text),
    (Deployments::Weight, Kind::Integer),
    (Deployments::Priority, Kind::Integer),
    (Deployments::PriceInputPerMtok, Kind::Double),
    (Deployments::PriceOutputPerMtok, Kind::Double),
    (Deployments::ConnectTimeoutMs, Kind::BigInteger),
    (Deployments::RequestTimeoutMs, Kind::BigInteger),
    (Deployments::MaxConcurrency, Kind::Integer),
    (Deployments::IdleTimeoutMs, Kind::BigInteger),
    (Deployments::Breaker, Kind::Json),
];

/// Columns that were never read; dropped with their (empty) values.
const UNUSED: [Deployments; 4] = [
    Deployments::RequestScript,
    Deployments::ResponseScript,
    Deployments::Workflow,
    Deployments::McpServers,
];

/// One column's value as JSON (`None` for SQL NULL, which the application reads as unset).
fn read(row: &QueryResult, column: &str, kind: Kind) -> Result<Option<Value>, DbErr> {
    Ok(match kind {
        Kind::Text => row.try_get::<Option<String>>("", column)?.map(Value::from),
        Kind::Integer => row.try_get::<Option<i32>>("", column)?.map(Value::from),
        Kind::BigInteger => row.try_get::<Option<i64>>("", column)?.map(Value::from),
        Kind::Double => row.try_get::<Option<f64>>("", column)?.map(Value::from),
        Kind::Json => row
            .try_get::<Option<String>>("", column)?
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .filter(Value::is_object),
    })
}

/// A JSON value as the SQL value of a column of `kind`.
fn write(value: Option<&Value>, kind: Kind) -> Expr {
    let value = value.filter(|v| !v.is_null());
    match kind {
        Kind::Text => Expr::val(value.and_then(Value::as_str).map(str::to_string)),
        Kind::Integer => Expr::val(
            value
                .and_then(Value::as_i64)
                .and_then(|v| <i32 as TryFrom<i64>>::try_from(v).ok()),
        ),
        Kind::BigInteger => Expr::val(value.and_then(Value::as_i64)),
        Kind::Double => Expr::val(value.and_then(Value::as_f64)),
        Kind::Json => Expr::val(value.map(Value::to_string)),
    }
}

async fn alter(manager: &SchemaManager<'_>, alter: &mut TableAlterStatement) -> Result<(), DbErr> {
    manager
        .alter_table(alter.table(Deployments::Table).to_owned())
        .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// One transaction on every backend (on SQLite also one connection for every step).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        alter(
            manager,
            Table::alter().add_column(text(Deployments::Config).default("{}")),
        )
        .await?;
        let db = manager.get_connection();
        let rows = db
            .query_all(
                Query::select()
                    .column(Deployments::Id)
                    .columns(MOVED.map(|(c, _)| c))
                    .from(Deployments::Table),
            )
            .await?;
        for row in rows {
            let id: String = row.try_get("", &Deployments::Id.to_string())?;
            let mut config = Map::new();
            for (column, kind) in MOVED {
                let name = column.to_string();
                if let Some(value) = read(&row, &name, kind)? {
                    config.insert(name, value);
                }
            }
            db.execute(
                Query::update()
                    .table(Deployments::Table)
                    .value(Deployments::Config, Value::Object(config).to_string())
                    .and_where(Expr::col(Deployments::Id).eq(id)),
            )
            .await?;
        }
        // One column per statement: SQLite drops one at a time (and supports it since
        // 3.35; none of these is indexed or constrained).
        for column in MOVED.map(|(c, _)| c).into_iter().chain(UNUSED) {
            alter(manager, Table::alter().drop_column(column)).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (column, kind) in MOVED {
            let def = match (column, kind) {
                (Deployments::Weight, _) => integer(column).default(1).to_owned(),
                (Deployments::Priority, _) => integer(column).default(0).to_owned(),
                (_, Kind::Text) => string_null(column),
                (_, Kind::Integer) => integer_null(column),
                (_, Kind::BigInteger) => big_integer_null(column),
                (_, Kind::Double) => double_null(column),
                (_, Kind::Json) => text_null(column),
            };
            alter(manager, Table::alter().add_column(def.to_owned())).await?;
        }
        for column in UNUSED {
            let def = match column {
                Deployments::RequestScript | Deployments::ResponseScript => string_null(column),
                _ => text_null(column),
            };
            alter(manager, Table::alter().add_column(def.to_owned())).await?;
        }
        let db = manager.get_connection();
        let rows = db
            .query_all(
                Query::select()
                    .columns([Deployments::Id, Deployments::Config])
                    .from(Deployments::Table),
            )
            .await?;
        for row in rows {
            let id: String = row.try_get("", &Deployments::Id.to_string())?;
            let text: String = row.try_get("", &Deployments::Config.to_string())?;
            let config: Map<String, Value> = serde_json::from_str(&text).unwrap_or_default();
            let mut update = Query::update();
            update.table(Deployments::Table);
            for (column, kind) in MOVED {
                let value = config.get(&column.to_string());
                match column {
                    // Not null: the column default when unset.
                    Deployments::Weight | Deployments::Priority if value.is_none() => {}
                    _ => {
                        update.value(column, write(value, kind));
                    }
                }
            }
            db.execute(update.and_where(Expr::col(Deployments::Id).eq(id)))
                .await?;
        }
        alter(manager, Table::alter().drop_column(Deployments::Config)).await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Deployments {
    Table,
    Id,
    Config,
    BaseUrl,
    UpstreamModel,
    Weight,
    Priority,
    PriceInputPerMtok,
    PriceOutputPerMtok,
    ConnectTimeoutMs,
    RequestTimeoutMs,
    MaxConcurrency,
    IdleTimeoutMs,
    Breaker,
    RequestScript,
    ResponseScript,
    Workflow,
    McpServers,
}
