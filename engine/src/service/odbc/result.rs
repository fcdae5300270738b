//! What a statement gives back: column descriptors and all rows of each result set, with every
//! cell already converted by the spec's "Conversions from column values" table (BIT → Bool,
//! integer kinds → Int, floating kinds → Float, dates/times → Int epoch seconds in local time,
//! binary → Binary, everything else → Text; NULL and zero-length values → Null). Reading is cell
//! by cell with `SQLGetData`, which keeps LOBs whole and needs no buffer sizing guesswork.

use odbc_api::handles::Statement;
use odbc_api::sys::{Date, Desc, Len, SqlReturn, Time, Timestamp};
use odbc_api::{Bit, ColumnDescription, Cursor, CursorRow, DataType, Nullability, Nullable};

use super::error::OdbcError;

/// A parameter or cell value, as the Lua layer sees it. `Text` holds bytes because Lua strings
/// are bytes; drivers normally hand back UTF-8.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

impl Value {
    /// A `Text` value from a `&str`.
    pub fn text(s: &str) -> Value {
        Value::Text(s.as_bytes().to_vec())
    }
}

/// One column descriptor (`rs.columns()`'s fields).
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub label: String,
    /// odbc-api's view of the SQL type.
    pub data_type: DataType,
    /// The ODBC SQL type code (`SQL_INTEGER` = 4, ...), what Lua's `sqltype` shows.
    pub sql_type: i16,
    /// Column size (characters or bytes); 0 when the driver does not know (LOBs).
    pub length: usize,
    pub nullable: bool,
    pub unsigned: bool,
    pub scale: isize,
    pub precision: isize,
    pub autoincrement: bool,
}

/// One result set: its columns and every row. A statement without columns (UPDATE, INSERT)
/// gives no columns and `affected` = the driver's row count when it reports one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResultSet {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
    pub affected: Option<usize>,
}

/// Reads the cursor's current result set completely.
pub(crate) fn read_result_set(cursor: &mut impl Cursor) -> Result<ResultSet, OdbcError> {
    let count = u16::try_from(cursor.num_result_cols()?).unwrap_or(0);
    let columns = (1..=count)
        .map(|i| describe(cursor, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::new();
    let mut buf = Vec::new();
    while let Some(mut row) = cursor.next_row()? {
        let values = columns
            .iter()
            .enumerate()
            .map(|(i, c)| read_cell(&mut row, i as u16 + 1, c, &mut buf))
            .collect::<Result<Vec<_>, _>>()?;
        rows.push(values);
    }
    Ok(ResultSet {
        columns,
        rows,
        affected: None,
    })
}

fn describe(cursor: &mut impl Cursor, i: u16) -> Result<Column, OdbcError> {
    // SQLDescribeCol rather than SQLColAttribute: SQLite's driver answers the latter with
    // internal codes (CHAR for BLOB, the C type code for BIGINT).
    let mut desc = ColumnDescription::default();
    cursor.describe_col(i, &mut desc)?;
    let data_type = desc.data_type;
    Ok(Column {
        label: desc.name_to_string().unwrap_or_default(),
        data_type,
        sql_type: data_type.data_type().0,
        length: data_type.column_size().map_or(0, |n| n.get()),
        nullable: !matches!(desc.nullability, Nullability::NoNulls),
        unsigned: cursor.column_is_unsigned(i).unwrap_or(false),
        scale: cursor.col_scale(i).unwrap_or(0),
        precision: cursor.col_precision(i).unwrap_or(0),
        autoincrement: auto_unique(cursor, i),
    })
}

/// `SQL_DESC_AUTO_UNIQUE_VALUE`, which odbc-api does not wrap; false when the driver cannot say.
fn auto_unique(cursor: &mut impl Cursor, i: u16) -> bool {
    let stmt = cursor.as_stmt_ref();
    let mut numeric: Len = 0;
    // SAFETY: a numeric descriptor field: no character buffer is passed (null, length 0) and
    // the driver writes one `Len` into `numeric`, which outlives the call.
    let rc = unsafe {
        odbc_api::sys::SQLColAttribute(
            stmt.as_sys(),
            i,
            Desc::AutoUniqueValue,
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            &mut numeric,
        )
    };
    let ok = rc == SqlReturn::SUCCESS || rc == SqlReturn::SUCCESS_WITH_INFO;
    ok && numeric != 0
}

fn read_cell(
    row: &mut CursorRow<'_>,
    col: u16,
    column: &Column,
    buf: &mut Vec<u8>,
) -> Result<Value, OdbcError> {
    let value = match column.data_type {
        DataType::Bit => get::<Bit>(row, col)?.map(|b| Value::Bool(b.as_bool())),
        DataType::TinyInt | DataType::SmallInt | DataType::Integer | DataType::BigInt => {
            get::<i64>(row, col)?.map(Value::Int)
        }
        DataType::Real | DataType::Float { .. } | DataType::Double => {
            get::<f64>(row, col)?.map(Value::Float)
        }
        DataType::Date => get::<Date>(row, col)?
            .map(|d| epoch(col, date_fields(d)))
            .transpose()?,
        DataType::Time { .. } => get::<Time>(row, col)?
            .map(|t| epoch(col, time_fields(t)))
            .transpose()?,
        DataType::Timestamp { .. } => get::<Timestamp>(row, col)?
            .map(|t| epoch(col, timestamp_fields(t)))
            .transpose()?,
        DataType::WChar { .. } | DataType::WVarchar { .. } | DataType::WLongVarchar { .. } => {
            wide_text(row, col)?
        }
        DataType::Binary { .. } | DataType::Varbinary { .. } | DataType::LongVarbinary { .. } => {
            buf.clear();
            row.get_binary(col, buf)?;
            non_empty(buf).map(Value::Binary)
        }
        _ => {
            buf.clear();
            row.get_text(col, buf)?;
            non_empty(buf).map(Value::Text)
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

/// One fixed-size cell; `None` for SQL NULL.
fn get<T>(row: &mut CursorRow<'_>, col: u16) -> Result<Option<T>, OdbcError>
where
    T: odbc_api::Pod,
{
    let mut cell = Nullable::<T>::null();
    row.get_data(col, &mut cell)?;
    Ok(cell.into_opt())
}

fn wide_text(row: &mut CursorRow<'_>, col: u16) -> Result<Option<Value>, OdbcError> {
    let mut wide = Vec::new();
    row.get_wide_text(col, &mut wide)?;
    let text = String::from_utf16_lossy(&wide);
    Ok(non_empty(text.as_bytes()).map(Value::Text))
}

/// Zero-length values read as nil in Lua (spec), so they become `None` like NULL.
fn non_empty(bytes: &[u8]) -> Option<Vec<u8>> {
    (!bytes.is_empty()).then(|| bytes.to_vec())
}

/// Calendar fields (year, month 1-12, day, hour, minute, second) of a database value.
type Fields = (i32, i32, i32, i32, i32, i32);

fn date_fields(d: Date) -> Fields {
    (d.year.into(), d.month.into(), d.day.into(), 0, 0, 0)
}

/// A time of day counts from 1970-01-01 local midnight, as a struct tm with only the clock set.
fn time_fields(t: Time) -> Fields {
    (1970, 1, 1, t.hour.into(), t.minute.into(), t.second.into())
}

fn timestamp_fields(t: Timestamp) -> Fields {
    let (h, mi, s) = (t.hour.into(), t.minute.into(), t.second.into());
    (t.year.into(), t.month.into(), t.day.into(), h, mi, s)
}

fn epoch(col: u16, fields: Fields) -> Result<Value, OdbcError> {
    local_to_epoch(fields)
        .map(Value::Int)
        .ok_or_else(|| OdbcError::Column {
            column: col.into(),
            reason: format!("date {fields:?} is not representable in local time"),
        })
}

/// Local calendar fields → Unix seconds (libc `mktime`, DST decided by the zone rules).
pub(crate) fn local_to_epoch((y, mo, d, h, mi, s): Fields) -> Option<i64> {
    // SAFETY: an all-zero `tm` is a valid value for mktime to read and normalise.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = s;
    tm.tm_isdst = -1;
    // SAFETY: `tm` is a valid, exclusively borrowed struct tm.
    let t = unsafe { libc::mktime(&mut tm) };
    // -1 is also a real instant (1969-12-31 23:59:59 UTC); only trust it for that instant.
    (t != -1 || (y, mo, d) == (1969, 12, 31) || (y, mo, d) == (1970, 1, 1)).then_some(t)
}

/// Unix seconds → local calendar fields (libc `localtime_r`).
pub(crate) fn epoch_to_local(epoch: i64) -> Option<Fields> {
    let t: libc::time_t = epoch;
    // SAFETY: zeroed `tm` is valid output storage; localtime_r is the thread-safe variant.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    ok.then_some((
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
    ))
}
