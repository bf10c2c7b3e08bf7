//! SQL for the payments table. Writes here run inside the write batcher's transaction, as
//! multi-row statements: one `INSERT … ON CONFLICT DO NOTHING` for all new payments of a batch, one
//! SELECT for the losers of the uniqueness race, one compare-and-set UPDATE per kind of transition.

use crate::db::BeginWrite;
use std::collections::HashMap;

use paymux_model::{MerchantId, PaymentId, PaymentStatus};
use sqlx::{PgConnection, QueryBuilder, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::model::{PAYMENT_COLUMNS, PaymentRow};
use crate::db::Db;

/// SQLite allows 32,766 bound parameters per statement; a payment row binds 26.
const SQLITE_ROWS_PER_INSERT: usize = 1000;

/// Inserts the rows that do not exist yet. Returns the ids that were inserted.
pub async fn insert_new_pg(
    conn: &mut PgConnection,
    rows: &[&PaymentRow],
) -> sqlx::Result<Vec<Uuid>> {
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query_scalar(
        "INSERT INTO payments (id, merchant_id, merchant_order_no, request_hash, amount_minor, currency, subject, \
         method, wallet, status, notify_url, store_id, terminal_id, metadata, refunded_amount_minor, \
         channel_account_id, channel_trade_no, late_success, failure_code, failure_message, closed_reason, \
         expires_at_us, created_at_us, updated_at_us, paid_at_us, qr_code) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], \
         $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::int8[], \
         $16::uuid[], $17::text[], $18::bool[], $19::text[], $20::text[], $21::text[], $22::int8[], $23::int8[], \
         $24::int8[], $25::int8[], $26::text[]) \
         ON CONFLICT (merchant_id, merchant_order_no) DO NOTHING RETURNING id",
    )
    .bind(col!(id))
    .bind(col!(merchant_id))
    .bind(col!(merchant_order_no))
    .bind(col!(request_hash))
    .bind(col!(amount_minor))
    .bind(col!(currency))
    .bind(col!(subject))
    .bind(col!(method))
    .bind(col!(wallet))
    .bind(col!(status))
    .bind(col!(notify_url))
    .bind(col!(store_id))
    .bind(col!(terminal_id))
    .bind(col!(metadata))
    .bind(col!(refunded_amount_minor))
    .bind(col!(channel_account_id))
    .bind(col!(channel_trade_no))
    .bind(col!(late_success))
    .bind(col!(failure_code))
    .bind(col!(failure_message))
    .bind(col!(closed_reason))
    .bind(col!(expires_at_us))
    .bind(col!(created_at_us))
    .bind(col!(updated_at_us))
    .bind(col!(paid_at_us))
    .bind(col!(qr_code))
    .fetch_all(conn)
    .await
}

pub async fn insert_new_sqlite(
    conn: &mut SqliteConnection,
    rows: &[&PaymentRow],
) -> sqlx::Result<Vec<Uuid>> {
    let mut inserted = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(SQLITE_ROWS_PER_INSERT) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("INSERT INTO payments ({PAYMENT_COLUMNS}) "));
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.id)
                .push_bind(r.merchant_id)
                .push_bind(&r.merchant_order_no)
                .push_bind(&r.request_hash)
                .push_bind(r.amount_minor)
                .push_bind(&r.currency)
                .push_bind(&r.subject)
                .push_bind(&r.method)
                .push_bind(&r.wallet)
                .push_bind(&r.status)
                .push_bind(&r.notify_url)
                .push_bind(&r.store_id)
                .push_bind(&r.terminal_id)
                .push_bind(&r.metadata)
                .push_bind(r.refunded_amount_minor)
                .push_bind(r.channel_account_id)
                .push_bind(&r.channel_trade_no)
                .push_bind(r.late_success)
                .push_bind(&r.failure_code)
                .push_bind(&r.failure_message)
                .push_bind(&r.closed_reason)
                .push_bind(r.expires_at_us)
                .push_bind(r.created_at_us)
                .push_bind(r.updated_at_us)
                .push_bind(r.paid_at_us)
                .push_bind(&r.qr_code);
        });
        qb.push(" ON CONFLICT (merchant_id, merchant_order_no) DO NOTHING RETURNING id");
        let ids: Vec<Uuid> = qb.build_query_scalar().fetch_all(&mut *conn).await?;
        inserted.extend(ids);
    }
    Ok(inserted)
}

/// The stored rows for these `(merchant_id, merchant_order_no)` pairs.
pub async fn find_by_order_nos_pg(
    conn: &mut PgConnection,
    keys: &[(Uuid, String)],
) -> sqlx::Result<Vec<PaymentRow>> {
    let merchants: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let order_nos: Vec<String> = keys.iter().map(|k| k.1.clone()).collect();
    sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE (merchant_id, merchant_order_no) IN \
         (SELECT * FROM UNNEST($1::uuid[], $2::text[]))"
    ))
    .bind(merchants)
    .bind(order_nos)
    .fetch_all(conn)
    .await
}

pub async fn find_by_order_nos_sqlite(
    conn: &mut SqliteConnection,
    keys: &[(Uuid, String)],
) -> sqlx::Result<Vec<PaymentRow>> {
    let mut found = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(SQLITE_ROWS_PER_INSERT) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE (merchant_id, merchant_order_no) IN (VALUES "
        ));
        let mut sep = qb.separated(", ");
        for (m, o) in chunk {
            sep.push("(")
                .push_bind_unseparated(*m)
                .push_unseparated(", ")
                .push_bind_unseparated(o.clone());
            sep.push_unseparated(")");
        }
        qb.push(")");
        found.extend(
            qb.build_query_as::<PaymentRow>()
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(found)
}

/// A compare-and-set status change of many payments to one status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransitionKey {
    pub to: PaymentStatus,
    pub closed_reason: Option<String>,
}

/// Moves the payments whose status is one of `to`'s allowed sources; returns those that moved.
pub async fn transition_pg(
    conn: &mut PgConnection,
    key: &TransitionKey,
    ids: &[Uuid],
    now_us: i64,
) -> sqlx::Result<Vec<Uuid>> {
    let from: Vec<&str> = PaymentStatus::allowed_sources(key.to)
        .iter()
        .map(|s| s.as_str())
        .collect();
    sqlx::query_scalar(
        "UPDATE payments SET status = $1, updated_at_us = $2, closed_reason = COALESCE($3, closed_reason) \
         WHERE id = ANY($4) AND status = ANY($5) RETURNING id",
    )
    .bind(key.to.as_str())
    .bind(now_us)
    .bind(&key.closed_reason)
    .bind(ids)
    .bind(from)
    .fetch_all(conn)
    .await
}

pub async fn transition_sqlite(
    conn: &mut SqliteConnection,
    key: &TransitionKey,
    ids: &[Uuid],
    now_us: i64,
) -> sqlx::Result<Vec<Uuid>> {
    let mut moved = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(SQLITE_ROWS_PER_INSERT) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("UPDATE payments SET status = ");
        qb.push_bind(key.to.as_str())
            .push(", updated_at_us = ")
            .push_bind(now_us)
            .push(", closed_reason = COALESCE(")
            .push_bind(key.closed_reason.clone())
            .push(", closed_reason) WHERE id IN (");
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(*id);
        }
        qb.push(") AND status IN (");
        let mut sep = qb.separated(", ");
        for s in PaymentStatus::allowed_sources(key.to) {
            sep.push_bind(s.as_str());
        }
        qb.push(") RETURNING id");
        moved.extend(
            qb.build_query_scalar::<Uuid>()
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(moved)
}

/// One payment of one merchant (a merchant never sees another's).
pub async fn get(
    db: &Db,
    merchant_id: MerchantId,
    id: PaymentId,
) -> sqlx::Result<Option<PaymentRow>> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 AND merchant_id = $2");
    let (id, merchant): (Uuid, Uuid) = (id.into(), merchant_id.into());
    match db {
        Db::Sqlite(pool) => {
            sqlx::query_as(&sql)
                .bind(id)
                .bind(merchant)
                .fetch_optional(pool)
                .await
        }
        Db::Postgres(pool) => {
            sqlx::query_as(&sql)
                .bind(id)
                .bind(merchant)
                .fetch_optional(pool)
                .await
        }
    }
}

/// A merchant's payments, newest first, optionally for one order number; keyset-paged by id.
pub async fn list(
    db: &Db,
    merchant_id: MerchantId,
    merchant_order_no: Option<&str>,
    starting_after: Option<PaymentId>,
    limit: u32,
) -> sqlx::Result<Vec<PaymentRow>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE merchant_id = $1 \
         AND ($2 IS NULL OR merchant_order_no = $2) AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
    );
    let merchant: Uuid = merchant_id.into();
    let after: Option<Uuid> = starting_after.map(Into::into);
    let limit = i64::from(limit);
    match db {
        Db::Sqlite(pool) => {
            sqlx::query_as(&sql)
                .bind(merchant)
                .bind(merchant_order_no)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
        Db::Postgres(pool) => {
            let sql = sql
                .replace("$2 IS NULL", "$2::text IS NULL")
                .replace("$3 IS NULL", "$3::uuid IS NULL");
            sqlx::query_as(&sql)
                .bind(merchant)
                .bind(merchant_order_no)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
    }
}

/// Closes up to `limit` `created` payments past their expiry in one statement; returns their ids.
/// Closes expired `created` payments that have no channel order (those are closed at their channel
/// first, see [`expired_channel_orders`]).
/// Their `payment.closed` webhook events are written in the same transaction.
pub async fn close_expired(db: &Db, now_us: i64, limit: u32) -> sqlx::Result<Vec<Uuid>> {
    const SQL: &str = "UPDATE payments SET status = 'closed', updated_at_us = $1, closed_reason = 'expired' \
         WHERE id IN (SELECT id FROM payments WHERE status = 'created' AND expires_at_us <= $1 \
         AND channel_account_id IS NULL LIMIT $2) \
         AND status = 'created' RETURNING id";
    let limit = i64::from(limit);
    let events = |ids: &[Uuid]| -> Vec<crate::webhooks::Pending> {
        ids.iter()
            .map(|id| crate::webhooks::Pending::Payment(*id, "payment.closed"))
            .collect()
    };
    match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_write().await?;
            let ids: Vec<Uuid> = sqlx::query_scalar(SQL)
                .bind(now_us)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            crate::webhooks::enqueue_sqlite(&mut tx, &events(&ids), now_us).await?;
            tx.commit().await?;
            Ok(ids)
        }
        Db::Postgres(pool) => {
            let sql = SQL.replace("LIMIT $2)", "LIMIT $2 FOR UPDATE SKIP LOCKED)");
            let mut tx = pool.begin_write().await?;
            let ids: Vec<Uuid> = sqlx::query_scalar(&sql)
                .bind(now_us)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            crate::webhooks::enqueue_pg(&mut tx, &events(&ids), now_us).await?;
            tx.commit().await?;
            Ok(ids)
        }
    }
}

/// Expired `created` payments with an order at a channel (`channel_account_id` set), oldest
/// expiry first, at most `limit`.
pub async fn expired_channel_orders(
    db: &Db,
    now_us: i64,
    limit: u32,
) -> sqlx::Result<Vec<PaymentRow>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE status = 'created' AND expires_at_us <= $1 \
         AND channel_account_id IS NOT NULL ORDER BY expires_at_us LIMIT $2"
    );
    let limit = i64::from(limit);
    match db {
        Db::Sqlite(pool) => {
            sqlx::query_as(&sql)
                .bind(now_us)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
        Db::Postgres(pool) => {
            sqlx::query_as(&sql)
                .bind(now_us)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
    }
}

/// `processing` payments unchanged since `before_us`, oldest first, at most `limit`: code payments
/// whose follow-up was lost (see the sweeper's recovery).
pub async fn stale_processing(
    db: &Db,
    before_us: i64,
    limit: u32,
) -> sqlx::Result<Vec<PaymentRow>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE status = 'processing' AND updated_at_us <= $1 \
         ORDER BY updated_at_us LIMIT $2"
    );
    let limit = i64::from(limit);
    match db {
        Db::Sqlite(pool) => {
            sqlx::query_as(&sql)
                .bind(before_us)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
        Db::Postgres(pool) => {
            sqlx::query_as(&sql)
                .bind(before_us)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
    }
}

/// Indexes rows by `(merchant_id, merchant_order_no)`.
pub fn index_by_order_no(rows: Vec<PaymentRow>) -> HashMap<(Uuid, String), PaymentRow> {
    rows.into_iter()
        .map(|r| ((r.merchant_id, r.merchant_order_no.clone()), r))
        .collect()
}

/// Compare-and-set payments to their channels' final answers, one statement for all of them: `to`
/// is the same for every element and no payment appears twice (the batcher groups them so). A
/// success after `closed` is a late success: money that moved, flagged for operations. Returns the
/// payments that moved.
pub async fn settle_pg(
    conn: &mut PgConnection,
    to: PaymentStatus,
    settles: &[&crate::batcher::Settle],
    now_us: i64,
) -> sqlx::Result<Vec<Uuid>> {
    let from: Vec<&str> = PaymentStatus::allowed_sources(to)
        .iter()
        .map(|x| x.as_str())
        .collect();
    let ids: Vec<Uuid> = settles.iter().map(|s| s.payment_id.into()).collect();
    let accounts: Vec<Uuid> = settles.iter().map(|s| s.channel_account_id).collect();
    let trade_nos: Vec<Option<&str>> = settles
        .iter()
        .map(|s| s.channel_trade_no.as_deref())
        .collect();
    let codes: Vec<Option<&str>> = settles.iter().map(|s| s.failure_code.as_deref()).collect();
    let messages: Vec<Option<&str>> = settles
        .iter()
        .map(|s| s.failure_message.as_deref())
        .collect();
    let paid: Vec<Option<i64>> = settles.iter().map(|s| s.paid_at_us).collect();
    sqlx::query_scalar(
        "UPDATE payments p SET status = $1, channel_account_id = v.account, \
         channel_trade_no = COALESCE(v.trade_no, p.channel_trade_no), failure_code = v.code, \
         failure_message = v.message, paid_at_us = v.paid, late_success = (p.status = 'closed'), \
         updated_at_us = $2 \
         FROM UNNEST($3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::int8[]) \
           AS v(id, account, trade_no, code, message, paid) \
         WHERE p.id = v.id AND p.status = ANY($9) RETURNING p.id",
    )
    .bind(to.as_str())
    .bind(now_us)
    .bind(ids)
    .bind(accounts)
    .bind(trade_nos)
    .bind(codes)
    .bind(messages)
    .bind(paid)
    .bind(from)
    .fetch_all(conn)
    .await
}

pub async fn settle_sqlite(
    conn: &mut SqliteConnection,
    to: PaymentStatus,
    settles: &[&crate::batcher::Settle],
    now_us: i64,
) -> sqlx::Result<Vec<Uuid>> {
    let mut moved = Vec::with_capacity(settles.len());
    // Six parameters a row: stay well below SQLite's limit on bound parameters.
    for chunk in settles.chunks(SQLITE_ROWS_PER_INSERT / 4) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("WITH v(id, account, trade_no, code, message, paid) AS (");
        qb.push_values(chunk, |mut b, s| {
            b.push_bind(Uuid::from(s.payment_id))
                .push_bind(s.channel_account_id)
                .push_bind(s.channel_trade_no.clone())
                .push_bind(s.failure_code.clone())
                .push_bind(s.failure_message.clone())
                .push_bind(s.paid_at_us);
        });
        qb.push(") UPDATE payments SET status = ")
            .push_bind(to.as_str())
            .push(
                ", channel_account_id = v.account, \
                 channel_trade_no = COALESCE(v.trade_no, payments.channel_trade_no), \
                 failure_code = v.code, failure_message = v.message, paid_at_us = v.paid, \
                 late_success = (payments.status = 'closed'), updated_at_us = ",
            )
            .push_bind(now_us)
            .push(" FROM v WHERE payments.id = v.id AND payments.status IN (");
        let mut sep = qb.separated(", ");
        for st in PaymentStatus::allowed_sources(to) {
            sep.push_bind(st.as_str());
        }
        qb.push(") RETURNING payments.id");
        moved.extend(
            qb.build_query_scalar::<Uuid>()
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    Ok(moved)
}

/// Records a C2B payment's channel order while it is still `created` — never over another
/// account's: a payment is attached to one channel account only.
pub async fn attach_qr_pg(
    conn: &mut PgConnection,
    payment_id: PaymentId,
    account: Uuid,
    qr: &str,
    now_us: i64,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE payments SET qr_code = $1, channel_account_id = $2, updated_at_us = $3 \
         WHERE id = $4 AND status = 'created' AND (channel_account_id IS NULL OR channel_account_id = $2)",
    )
    .bind(qr)
    .bind(account)
    .bind(now_us)
    .bind(Uuid::from(payment_id))
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn attach_qr_sqlite(
    conn: &mut SqliteConnection,
    payment_id: PaymentId,
    account: Uuid,
    qr: &str,
    now_us: i64,
) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE payments SET qr_code = ?1, channel_account_id = ?2, updated_at_us = ?3 \
         WHERE id = ?4 AND status = 'created' AND (channel_account_id IS NULL OR channel_account_id = ?2)",
    )
    .bind(qr)
    .bind(account)
    .bind(now_us)
    .bind(Uuid::from(payment_id))
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A payment by id, whoever its merchant (for channel notifications, which name no merchant).
pub async fn get_any(db: &Db, id: Uuid) -> sqlx::Result<Option<PaymentRow>> {
    match db {
        Db::Sqlite(pool) => {
            sqlx::query_as(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ?1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await
        }
        Db::Postgres(pool) => {
            sqlx::query_as(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await
        }
    }
}
