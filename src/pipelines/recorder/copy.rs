//! The recorder's rows in PostgreSQL's binary COPY format, with no I/O: the bytes
//! [`MarketCopy`](super::timescale::MarketCopy) sends for `tick_data` and `orderbook`.
//!
//! The stream is a header, one row per record (a field count, then each field as its length
//! and its binary value), and a trailer, exactly as `tokio_postgres::binary_copy` writes it;
//! the writer takes the bytes in chunks while rows are appended, so a batch is never held twice.

use std::error::Error;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{IsNull, Json, ToSql, Type};

use super::model::{OrderBook, Tick};

const MAGIC: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The columns of `tick_data` a tick fills, in COPY order.
pub const TICK_COLUMNS: &str = "time, symbol, price, volume, change, change_rate";
/// Their types.
pub const TICK_TYPES: [Type; 6] = [
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::FLOAT8,
    Type::INT8,
    Type::FLOAT8,
    Type::FLOAT8,
];

/// The columns of `orderbook` an order book fills, in COPY order.
pub const ORDER_BOOK_COLUMNS: &str = "time, symbol, bids, asks";
/// Their types.
pub const ORDER_BOOK_TYPES: [Type; 4] = [Type::TIMESTAMPTZ, Type::TEXT, Type::JSONB, Type::JSONB];

/// A value that has no binary form for its column; nothing of its row is kept.
#[derive(Debug, thiserror::Error)]
#[error("error serializing parameter {column}: {cause}")]
pub struct EncodeError {
    /// The column's index in the row.
    pub column: usize,
    pub cause: Box<dyn Error + Sync + Send>,
}

/// One binary COPY stream under construction: [`CopyRows::new`] writes the header,
/// [`tick`](CopyRows::tick) and [`order_book`](CopyRows::order_book) append rows,
/// [`take`](CopyRows::take) hands out what was written so far and [`finish`](CopyRows::finish)
/// the rest with the trailer.
pub struct CopyRows {
    buf: BytesMut,
}

impl Default for CopyRows {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyRows {
    pub fn new() -> Self {
        let mut buf = BytesMut::new();
        buf.put_slice(MAGIC);
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension
        CopyRows { buf }
    }

    /// Appends a `tick_data` row.
    pub fn tick(&mut self, t: &Tick) -> Result<(), EncodeError> {
        self.row(
            &TICK_TYPES,
            &[
                &t.time,
                &t.symbol,
                &t.price,
                &t.volume,
                &t.change,
                &t.change_rate,
            ],
        )
    }

    /// Appends an `orderbook` row; each side is JSONB.
    pub fn order_book(&mut self, o: &OrderBook) -> Result<(), EncodeError> {
        self.row(
            &ORDER_BOOK_TYPES,
            &[&o.time, &o.symbol, &Json(&o.bids), &Json(&o.asks)],
        )
    }

    fn row(&mut self, types: &[Type], values: &[&(dyn ToSql + Sync)]) -> Result<(), EncodeError> {
        let start = self.buf.len();
        self.buf.put_i16(values.len() as i16);
        for (column, (value, ty)) in values.iter().zip(types).enumerate() {
            let at = self.buf.len();
            self.buf.put_i32(0);
            let len = match value.to_sql_checked(ty, &mut self.buf) {
                Ok(IsNull::Yes) => Ok(-1),
                Ok(IsNull::No) => i32::try_from(self.buf.len() - at - 4).map_err(|e| e.into()),
                Err(cause) => Err(cause),
            };
            match len {
                Ok(len) => self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes()),
                Err(cause) => {
                    self.buf.truncate(start);
                    return Err(EncodeError { column, cause });
                }
            }
        }
        Ok(())
    }

    /// Bytes written and not yet taken.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What was written since the last take; the buffer keeps its capacity.
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    /// The trailer, after whatever was not taken yet.
    pub fn finish(mut self) -> Bytes {
        self.buf.put_i16(-1);
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::Level;
    use super::*;
    use chrono::{DateTime, Utc};

    fn time(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// Field `i` of the single row in `stream`.
    fn fields(stream: &[u8]) -> Vec<Option<&[u8]>> {
        let header = MAGIC.len() + 8;
        assert_eq!(&stream[..MAGIC.len()], MAGIC);
        let mut at = header;
        let count = i16::from_be_bytes([stream[at], stream[at + 1]]);
        at += 2;
        let mut out = Vec::new();
        for _ in 0..count {
            let len = i32::from_be_bytes(stream[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                out.push(Some(&stream[at..at + len as usize]));
                at += len as usize;
            }
        }
        assert_eq!(&stream[at..], &(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn a_tick_row_is_six_binary_fields() {
        let mut rows = CopyRows::new();
        rows.tick(&Tick {
            time: time("2000-01-01T00:00:01Z"),
            symbol: "005930".into(),
            price: 71000.5,
            volume: 10,
            change: -500.0,
            change_rate: 0.71,
        })
        .unwrap();
        let stream = rows.finish();
        let f = fields(&stream);
        assert_eq!(f.len(), 6);
        // Microseconds since 2000-01-01 UTC.
        assert_eq!(f[0], Some(&1_000_000i64.to_be_bytes()[..]));
        assert_eq!(f[1], Some(&b"005930"[..]));
        assert_eq!(f[2], Some(&71000.5f64.to_be_bytes()[..]));
        assert_eq!(f[3], Some(&10i64.to_be_bytes()[..]));
        assert_eq!(f[4], Some(&(-500.0f64).to_be_bytes()[..]));
        assert_eq!(f[5], Some(&0.71f64.to_be_bytes()[..]));
    }

    #[test]
    fn an_order_book_row_carries_its_sides_as_jsonb() {
        let mut rows = CopyRows::new();
        rows.order_book(&OrderBook {
            time: time("2025-11-19T16:12:34Z"),
            symbol: "000660".into(),
            bids: vec![Level {
                price: 70900.0,
                quantity: 3.0,
            }],
            asks: vec![],
        })
        .unwrap();
        let stream = rows.finish();
        let f = fields(&stream);
        assert_eq!(f.len(), 4);
        // JSONB's binary form: version 1, then the JSON text.
        assert_eq!(
            f[2],
            Some(&b"\x01[{\"price\":70900.0,\"quantity\":3.0}]"[..])
        );
        assert_eq!(f[3], Some(&b"\x01[]"[..]));
    }

    #[test]
    fn taken_chunks_and_the_rest_make_one_stream() {
        let tick = Tick {
            time: time("2025-11-19T16:12:34Z"),
            symbol: "005930".into(),
            price: 1.0,
            volume: 1,
            change: 0.0,
            change_rate: 0.0,
        };
        let mut whole = CopyRows::new();
        let mut chunked = CopyRows::new();
        let mut out = Vec::new();
        for _ in 0..3 {
            whole.tick(&tick).unwrap();
            chunked.tick(&tick).unwrap();
            out.extend_from_slice(&chunked.take());
            assert!(chunked.is_empty());
        }
        out.extend_from_slice(&chunked.finish());
        assert_eq!(out, whole.finish());
    }
}
