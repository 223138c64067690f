//! The shared PostgreSQL sink used without Kafka offsets (as a Redis Streams path uses it):
//! idempotent upserts one transaction per batch, a pipeline's own error classes, and the
//! column-type check, against the local PostgreSQL.

use std::sync::Arc;

use actord::sinks::postgres::check::{col, INT8, TEXT};
use actord::sinks::postgres::{ident, Classifier, Database, DbSettings, Setup, Table, Tx, Writes};
use actord_actors::record::{Acker, Envelope, Origin, SourceRecord, Topic};
use actord_actors::sink::{Progress, Sink, SinkError};
use actord_actors::ErrorKind;
use futures::future::BoxFuture;
use tokio_postgres::Client;

use crate::support::{pg, unique};

/// An order naming its customer.
#[derive(Clone, Debug)]
struct Order {
    id: i64,
    customer: i64,
    note: String,
}

const ORDERS: Table = Table {
    name: "orders",
    columns: &[
        col("id", INT8, "bigint"),
        col("customer", INT8, "bigint"),
        col("note", TEXT, "text"),
    ],
    strict: true,
};

struct Shop;

impl Setup for Shop {
    fn tables(&self, schema: &str) -> Vec<String> {
        let s = ident(schema);
        vec![
            format!("CREATE TABLE IF NOT EXISTS {s}.customers (id BIGINT PRIMARY KEY)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.orders (id BIGINT PRIMARY KEY, \
                 customer BIGINT NOT NULL REFERENCES {s}.customers (id), note TEXT)"
            ),
        ]
    }

    fn columns(&self) -> Vec<Table> {
        vec![ORDERS]
    }

    fn finish<'a>(
        &'a self,
        _settings: &'a DbSettings,
        _client: Client,
    ) -> BoxFuture<'a, Result<Option<String>, SinkError>> {
        Box::pin(async { Ok(None) })
    }
}

/// Set-based upserts: a batch delivered again changes nothing.
struct Upsert;

impl Writes<Order> for Upsert {
    async fn write(
        &self,
        tx: &Tx<'_>,
        schema: &str,
        records: &[&Envelope<Order>],
        _progress: &Progress,
        errors: &Classifier,
    ) -> Result<u64, SinkError> {
        let ids: Vec<i64> = records.iter().map(|e| e.record.id).collect();
        let customers: Vec<i64> = records.iter().map(|e| e.record.customer).collect();
        let notes: Vec<&str> = records.iter().map(|e| e.record.note.as_str()).collect();
        tx.execute(
            &format!(
                "INSERT INTO {}.orders (id, customer, note) \
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[]) \
                 ON CONFLICT (id) DO UPDATE SET customer = EXCLUDED.customer, note = EXCLUDED.note",
                ident(schema)
            ),
            &[&ids, &customers, &notes],
        )
        .await
        .map_err(|e| errors.sink_error(&e))
    }
}

fn settings(schema: &str) -> DbSettings {
    DbSettings {
        host: "127.0.0.1".into(),
        schema: schema.to_owned(),
        ..DbSettings::default()
    }
}

fn orders(list: &[(i64, i64, &str)]) -> Vec<Envelope<Order>> {
    list.iter()
        .enumerate()
        .map(|(i, (id, customer, note))| Envelope {
            record: Order {
                id: *id,
                customer: *customer,
                note: (*note).to_owned(),
            },
            source: SourceRecord {
                origin: Origin {
                    topic: Topic::intern("orders-stream"),
                    partition: 0,
                    offset: i as i64,
                    epoch: 1,
                },
                key: None,
                payload: None,
                timestamp_ms: None,
                headers: Vec::new(),
            },
            acker: Acker::new(|_| {}),
            bytes: 64,
        })
        .collect()
}

async fn rows(schema: &str) -> Vec<(i64, String)> {
    pg().await
        .query(
            &format!("SELECT id, note FROM {}.orders ORDER BY id", ident(schema)),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn drop_schema(schema: &str) {
    let _ = pg()
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(schema)))
        .await;
}

#[tokio::test]
async fn upserts_without_kafka_offsets_are_idempotent_and_use_the_pipelines_error_classes() {
    let schema = unique("shop").replace('-', "_");
    // A foreign-key violation is transient here: the customer may arrive after the order.
    let classes =
        Classifier::with_override(|code| (code == "23503").then_some(ErrorKind::Transient));
    let db = Database::new(settings(&schema), "postgres", Arc::new(Shop), classes);
    let mut sink = (db.factory(Arc::new(Upsert)))().await.unwrap();
    pg().await
        .batch_execute(&format!(
            "INSERT INTO {}.customers VALUES (1), (2)",
            ident(&schema)
        ))
        .await
        .unwrap();

    sink.write(&orders(&[(1, 1, "a"), (2, 1, "b"), (3, 2, "c")]))
        .await
        .unwrap();
    // Delivered again, with one change and one more order: no duplicate, the change lands.
    sink.write(&orders(&[(2, 1, "b"), (3, 2, "c2"), (4, 2, "d")]))
        .await
        .unwrap();
    assert_eq!(
        rows(&schema).await,
        [(1, "a"), (2, "b"), (3, "c2"), (4, "d")].map(|(i, n)| (i, n.to_owned()))
    );

    let err = sink.write(&orders(&[(5, 99, "e")])).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Transient, "{err:?}");
    assert_eq!(err.class, "SqlState23503");
    assert!(
        err.message.contains("orders_customer_fkey"),
        "{}",
        err.message
    );
    assert_eq!(rows(&schema).await.len(), 4, "the batch rolled back");
    assert_eq!(
        Classifier::default().code("23503"),
        ErrorKind::Fatal,
        "the default for other pipelines"
    );

    // No offsets table without Kafka offsets.
    let offsets: Option<String> = pg()
        .await
        .query_one(
            &format!(
                "SELECT to_regclass('{}.actord_offsets')::text",
                ident(&schema)
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(offsets, None);
    drop_schema(&schema).await;
}

#[tokio::test]
async fn a_table_of_other_types_is_a_misconfiguration_before_any_write() {
    let schema = unique("shop").replace('-', "_");
    pg().await
        .batch_execute(&format!(
            "CREATE SCHEMA {s}; CREATE TABLE {s}.customers (id BIGINT PRIMARY KEY); \
             CREATE TABLE {s}.orders (id BIGINT PRIMARY KEY, customer INTEGER, note TEXT)",
            s = ident(&schema)
        ))
        .await
        .unwrap();
    let db = Database::new(
        settings(&schema),
        "postgres",
        Arc::new(Shop),
        Classifier::default(),
    );
    let problems = db.preflight().unwrap_err();
    assert_eq!(
        problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [format!(
            "column {schema}.orders.customer has type integer, expected bigint"
        )]
    );
    let err = match (db.factory(Arc::new(Upsert)))().await {
        Ok(_) => panic!("the sink opened on a table of other types"),
        Err(e) => e,
    };
    assert_eq!(err.kind, ErrorKind::Fatal);
    assert!(
        actord_actors::error::is_misconfigured(&err.message)
            && err.message.contains("orders.customer"),
        "{}",
        err.message
    );
    assert!(!db.healthy());
    assert!(
        db.notes()
            .iter()
            .any(|n| n.starts_with("postgres: misconfigured")),
        "{:?}",
        db.notes()
    );
    drop_schema(&schema).await;
}
