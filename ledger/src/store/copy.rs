//! PostgreSQL's binary `COPY` format, for the bulk inserts of a batch: rows are encoded once into
//! one buffer and streamed with `COPY … FROM STDIN (FORMAT binary)` — no array binding, no
//! `UNNEST`, no per-value parsing on the server.
//! Format: <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::types::LedgerError;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A binary `COPY` payload under construction. Each row starts with [`CopyRows::row`] followed
/// by exactly that many fields, in the column order of the `COPY` statement.
pub struct CopyRows {
    buf: Vec<u8>,
    rows: usize,
}

impl CopyRows {
    /// `bytes_per_row` sizes the buffer up front (an estimate; the buffer grows if needed).
    pub fn with_capacity(rows: usize, bytes_per_row: usize) -> CopyRows {
        let mut buf = Vec::with_capacity(SIGNATURE.len() + 8 + rows * bytes_per_row + 2);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        CopyRows { buf, rows: 0 }
    }

    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.rows += 1;
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self
    }

    fn len(&mut self, len: usize) {
        let len = i32::try_from(len).expect("a COPY field is far below 2 GiB");
        self.buf.extend_from_slice(&len.to_be_bytes());
    }

    pub fn null(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub fn uuid(&mut self, v: Uuid) -> &mut Self {
        self.len(16);
        self.buf.extend_from_slice(v.as_bytes());
        self
    }

    pub fn opt_uuid(&mut self, v: Option<Uuid>) -> &mut Self {
        match v {
            Some(v) => self.uuid(v),
            None => self.null(),
        }
    }

    pub fn i16(&mut self, v: i16) -> &mut Self {
        self.len(2);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.len(8);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn opt_i64(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            Some(v) => self.i64(v),
            None => self.null(),
        }
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.len(1);
        self.buf.push(u8::from(v));
        self
    }

    pub fn text(&mut self, v: &str) -> &mut Self {
        self.len(v.len());
        self.buf.extend_from_slice(v.as_bytes());
        self
    }

    /// A `jsonb` value from its JSON text (binary jsonb is a version byte, 1, then the text).
    pub fn jsonb(&mut self, json_text: &str) -> &mut Self {
        self.len(json_text.len() + 1);
        self.buf.push(1);
        self.buf.extend_from_slice(json_text.as_bytes());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Streams the rows with `statement` (a `COPY … FROM STDIN (FORMAT binary)`); returns the
    /// number of rows the server stored.
    pub async fn send(
        mut self,
        conn: &mut PgConnection,
        statement: &str,
    ) -> Result<u64, LedgerError> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes()); // trailer
        let mut copy = conn.copy_in_raw(statement).await?;
        if let Err(err) = copy.send(self.buf).await {
            let _ = copy.abort("sending COPY data failed").await;
            return Err(err.into());
        }
        let stored = copy.finish().await?;
        if stored != self.rows as u64 {
            return Err(LedgerError::Corrupt(format!(
                "COPY stored {stored} of {} rows",
                self.rows
            )));
        }
        Ok(stored)
    }
}
