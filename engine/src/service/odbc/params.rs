//! Parameter binding for `execute` (spec §1.2): the per-placeholder type spec grammar
//! `[=|+]<digits><letter>`, the inference rules for untyped values, and the conversion of a
//! `Value` into the ODBC buffer the chosen SQL type needs. Only INPUT parameters bind; an
//! OUTPUT (`=`) or INPUT_OUTPUT (`+`) spec is parsed and then refused with a clear error.

use std::num::NonZeroUsize;

use odbc_api::parameter::{InputParameter, VarBinaryBox, VarCharBox, VarWCharBox, WithDataType};
use odbc_api::sys::Timestamp;
use odbc_api::{DataType, Nullable};

use super::error::OdbcError;
use super::result::{epoch_to_local, Value};

/// Which way a parameter travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Input,
    Output,
    InputOutput,
}

/// The SQL type a spec letter asks for (spec §1.2 letters table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `W`, or digits alone.
    WVarchar,
    /// `w`
    WChar,
    /// `C`
    Varchar,
    /// `c`
    Char,
    /// `B`
    LongVarbinary,
    /// `b`, `t`
    TinyInt,
    /// `s`
    SmallInt,
    /// `i`
    Integer,
    /// `l`
    BigInt,
    /// `T`
    UTinyInt,
    /// `S`
    USmallInt,
    /// `I`
    UInteger,
    /// `L`
    UBigInt,
    /// `f`
    Float,
    /// `d`
    Double,
    /// `D`
    Timestamp,
}

impl Kind {
    fn from_letter(c: char) -> Option<Kind> {
        Some(match c {
            'W' => Kind::WVarchar,
            'w' => Kind::WChar,
            'C' => Kind::Varchar,
            'c' => Kind::Char,
            'B' => Kind::LongVarbinary,
            'b' | 't' => Kind::TinyInt,
            's' => Kind::SmallInt,
            'i' => Kind::Integer,
            'l' => Kind::BigInt,
            'T' => Kind::UTinyInt,
            'S' => Kind::USmallInt,
            'I' => Kind::UInteger,
            'L' => Kind::UBigInt,
            'f' => Kind::Float,
            'd' => Kind::Double,
            'D' => Kind::Timestamp,
            _ => return None,
        })
    }
}

/// One parsed placeholder spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub direction: Direction,
    /// Buffer length in characters (text kinds) or bytes (binary); `None` = the value's length.
    pub length: Option<usize>,
    pub kind: Kind,
}

impl ParamSpec {
    /// Parses `[=|+]<digits><letter>`; an empty spec means "infer from the value" (`None`).
    pub fn parse(spec: &str) -> Result<Option<ParamSpec>, &'static str> {
        if spec.is_empty() {
            return Ok(None);
        }
        let (direction, rest) = match spec.as_bytes()[0] {
            b'=' => (Direction::Output, &spec[1..]),
            b'+' => (Direction::InputOutput, &spec[1..]),
            _ => (Direction::Input, spec),
        };
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, letter) = rest.split_at(digits_end);
        let length = match digits {
            "" => None,
            d => Some(d.parse().map_err(|_| "length out of range")?),
        };
        let kind = match (letter.chars().next(), letter.chars().count()) {
            (None, _) if length.is_some() => Kind::WVarchar,
            (None, _) => return Err("missing type letter"),
            (Some(c), 1) => Kind::from_letter(c).ok_or("unknown type letter")?,
            _ => return Err("text after the type letter"),
        };
        Ok(Some(ParamSpec {
            direction,
            length,
            kind,
        }))
    }
}

/// A bound input parameter; boxed because the kinds differ per placeholder.
pub type Bound = Box<dyn InputParameter>;

/// Pairs specs with values (an OUTPUT spec takes no value; a missing value is NULL; values past
/// the last spec are inferred) and builds the ODBC input buffers in placeholder order.
pub fn bind_all(specs: &[&str], values: &[Value]) -> Result<Vec<Bound>, OdbcError> {
    let mut values = values.iter();
    let mut bound = Vec::with_capacity(specs.len().max(values.len()));
    for (i, spec) in specs.iter().enumerate() {
        let index = i + 1;
        let parsed = ParamSpec::parse(spec).map_err(|reason| OdbcError::BadSpec {
            index,
            spec: spec.to_string(),
            reason,
        })?;
        let value = match parsed.map(|p| p.direction) {
            Some(Direction::Output) => None,
            _ => values.next(),
        };
        bound.push(bind_one(index, parsed, value.unwrap_or(&Value::Null))?);
    }
    for value in values {
        bound.push(bind_one(bound.len() + 1, None, value)?);
    }
    Ok(bound)
}

fn bind_one(index: usize, spec: Option<ParamSpec>, value: &Value) -> Result<Bound, OdbcError> {
    match spec {
        None => Ok(infer(value)),
        Some(spec) => match spec.direction {
            Direction::Input => typed(index, spec, value),
            Direction::Output => Err(unsupported(index, "OUTPUT")),
            Direction::InputOutput => Err(unsupported(index, "INPUT_OUTPUT")),
        },
    }
}

fn unsupported(index: usize, direction: &'static str) -> OdbcError {
    OdbcError::Unsupported { index, direction }
}

/// The spec's inference table for untyped values.
fn infer(value: &Value) -> Bound {
    match value {
        Value::Null => Box::new(VarCharBox::null()),
        Value::Text(bytes) => text(bytes.clone(), |length| DataType::Char { length }, None),
        Value::Bool(b) => with_type(u8::from(*b), DataType::TinyInt),
        Value::Int(n) => with_type(*n, DataType::BigInt),
        Value::Float(f) => with_type(*f, DataType::Double),
        Value::Binary(bytes) => binary(bytes.clone(), None),
    }
}

fn with_type<T>(value: T, data_type: DataType) -> Bound
where
    T: odbc_api::Pod + Send + 'static,
{
    Box::new(WithDataType::new(Nullable::new(value), data_type))
}

fn null_of<T>(data_type: DataType) -> Bound
where
    T: odbc_api::Pod + Send + 'static,
{
    Box::new(WithDataType::new(Nullable::<T>::null(), data_type))
}

/// Column size for a value of `len` units: the spec's length if given, else the value's own
/// (at least 1, since ODBC rejects a zero column size for character types).
fn size(spec_len: Option<usize>, len: usize) -> Option<NonZeroUsize> {
    NonZeroUsize::new(spec_len.unwrap_or(len).max(1))
}

fn text(bytes: Vec<u8>, ty: fn(Option<NonZeroUsize>) -> DataType, len: Option<usize>) -> Bound {
    let data_type = ty(size(len, bytes.len()));
    Box::new(WithDataType::new(VarCharBox::from_vec(bytes), data_type))
}

fn wide(bytes: &[u8], ty: fn(Option<NonZeroUsize>) -> DataType, len: Option<usize>) -> Bound {
    let units: Vec<u16> = String::from_utf8_lossy(bytes).encode_utf16().collect();
    let data_type = ty(size(len, units.len()));
    Box::new(WithDataType::new(VarWCharBox::from_vec(units), data_type))
}

/// Bound as a plain buffer declared LONGVARBINARY: the whole value is in memory anyway, so
/// streaming it with SQLPutData would only add round trips.
fn binary(bytes: Vec<u8>, len: Option<usize>) -> Bound {
    let data_type = DataType::LongVarbinary {
        length: size(len, bytes.len()),
    };
    Box::new(WithDataType::new(VarBinaryBox::from_vec(bytes), data_type))
}

fn typed(index: usize, spec: ParamSpec, value: &Value) -> Result<Bound, OdbcError> {
    if matches!(value, Value::Null) {
        return Ok(typed_null(spec));
    }
    let bad = || OdbcError::Conversion { index };
    let len = spec.length;
    Ok(match spec.kind {
        Kind::WVarchar => wide(&text_of(value).ok_or_else(bad)?, wvarchar, len),
        Kind::WChar => wide(&text_of(value).ok_or_else(bad)?, wchar, len),
        Kind::Varchar => text(text_of(value).ok_or_else(bad)?, varchar, len),
        Kind::Char => text(text_of(value).ok_or_else(bad)?, char, len),
        Kind::LongVarbinary => binary(bytes_of(value).ok_or_else(bad)?, len),
        Kind::TinyInt => with_type(int::<i8>(value).ok_or_else(bad)?, DataType::TinyInt),
        Kind::SmallInt => with_type(int::<i16>(value).ok_or_else(bad)?, DataType::SmallInt),
        Kind::Integer => with_type(int::<i32>(value).ok_or_else(bad)?, DataType::Integer),
        Kind::BigInt => with_type(int::<i64>(value).ok_or_else(bad)?, DataType::BigInt),
        Kind::UTinyInt => with_type(int::<u8>(value).ok_or_else(bad)?, DataType::TinyInt),
        Kind::USmallInt => with_type(int::<u16>(value).ok_or_else(bad)?, DataType::SmallInt),
        Kind::UInteger => with_type(int::<u32>(value).ok_or_else(bad)?, DataType::Integer),
        Kind::UBigInt => with_type(int::<u64>(value).ok_or_else(bad)?, DataType::BigInt),
        Kind::Float => with_type(float(value).ok_or_else(bad)? as f32, FLOAT),
        Kind::Double => with_type(float(value).ok_or_else(bad)?, DataType::Double),
        Kind::Timestamp => with_type(timestamp(value).ok_or_else(bad)?, TIMESTAMP),
    })
}

/// SQL FLOAT with single precision, matching the C `float` buffer `f` binds.
const FLOAT: DataType = DataType::Float { precision: 24 };
/// Whole seconds: the spec discards fractions.
const TIMESTAMP: DataType = DataType::Timestamp { precision: 0 };

fn wvarchar(length: Option<NonZeroUsize>) -> DataType {
    DataType::WVarchar { length }
}
fn wchar(length: Option<NonZeroUsize>) -> DataType {
    DataType::WChar { length }
}
fn varchar(length: Option<NonZeroUsize>) -> DataType {
    DataType::Varchar { length }
}
fn char(length: Option<NonZeroUsize>) -> DataType {
    DataType::Char { length }
}

/// SQL NULL, still declared with the spec's SQL type so the driver sees the intended column.
fn typed_null(spec: ParamSpec) -> Bound {
    let len = size(spec.length, 1);
    match spec.kind {
        Kind::WVarchar => Box::new(WithDataType::new(VarWCharBox::null(), wvarchar(len))),
        Kind::WChar => Box::new(WithDataType::new(VarWCharBox::null(), wchar(len))),
        Kind::Varchar => Box::new(WithDataType::new(VarCharBox::null(), varchar(len))),
        Kind::Char => Box::new(WithDataType::new(VarCharBox::null(), char(len))),
        Kind::LongVarbinary => Box::new(WithDataType::new(
            VarBinaryBox::null(),
            DataType::LongVarbinary { length: len },
        )),
        Kind::TinyInt => null_of::<i8>(DataType::TinyInt),
        Kind::SmallInt => null_of::<i16>(DataType::SmallInt),
        Kind::Integer => null_of::<i32>(DataType::Integer),
        Kind::BigInt => null_of::<i64>(DataType::BigInt),
        Kind::UTinyInt => null_of::<u8>(DataType::TinyInt),
        Kind::USmallInt => null_of::<u16>(DataType::SmallInt),
        Kind::UInteger => null_of::<u32>(DataType::Integer),
        Kind::UBigInt => null_of::<u64>(DataType::BigInt),
        Kind::Float => null_of::<f32>(FLOAT),
        Kind::Double => null_of::<f64>(DataType::Double),
        Kind::Timestamp => null_of::<Timestamp>(TIMESTAMP),
    }
}

/// Text kinds take strings and bytes as they are, and numbers in their decimal form (Lua's
/// `tostring`); booleans are not text.
fn text_of(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Text(b) | Value::Binary(b) => Some(b.clone()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        Value::Float(f) => Some(f.to_string().into_bytes()),
        Value::Null | Value::Bool(_) => None,
    }
}

/// `B` sends strings raw and binary (BSON from a Lua table) as is.
fn bytes_of(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Text(b) | Value::Binary(b) => Some(b.clone()),
        _ => None,
    }
}

/// Numeric kinds take numbers, booleans (0/1) and numeric strings; floats truncate toward zero
/// like Lua's integer conversion; out-of-range values are conversion errors.
fn int<T: TryFrom<i128>>(value: &Value) -> Option<T> {
    let wide: i128 = match value {
        Value::Bool(b) => i128::from(*b),
        Value::Int(n) => i128::from(*n),
        Value::Float(f) => float_to_int(*f)?,
        Value::Text(b) => {
            let s = std::str::from_utf8(b).ok()?.trim();
            match s.parse::<i128>() {
                Ok(n) => n,
                Err(_) => float_to_int(s.parse().ok()?)?,
            }
        }
        Value::Null | Value::Binary(_) => return None,
    };
    T::try_from(wide).ok()
}

fn float_to_int(f: f64) -> Option<i128> {
    (f.is_finite() && f.abs() < 1e38).then(|| f.trunc() as i128)
}

fn float(value: &Value) -> Option<f64> {
    match value {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Int(n) => Some(*n as f64),
        Value::Float(f) => Some(*f),
        Value::Text(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        Value::Null | Value::Binary(_) => None,
    }
}

/// `D`: epoch seconds (read in local time), "YYYY-MM-DD HH:MM:SS" or
/// "YYYY-MM-DDTHH:MM:SS[.fff]Z" (fields taken as local time, fraction dropped).
fn timestamp(value: &Value) -> Option<Timestamp> {
    match value {
        Value::Int(n) => from_epoch(*n),
        Value::Float(f) => from_epoch(float_to_int(*f)?.try_into().ok()?),
        Value::Text(b) => {
            let s = std::str::from_utf8(b).ok()?.trim();
            parse_datetime(s).or_else(|| from_epoch(s.parse().ok()?))
        }
        _ => None,
    }
}

fn from_epoch(epoch: i64) -> Option<Timestamp> {
    let (y, mo, d, h, mi, s) = epoch_to_local(epoch)?;
    Some(Timestamp {
        year: y.try_into().ok()?,
        month: mo.try_into().ok()?,
        day: d.try_into().ok()?,
        hour: h.try_into().ok()?,
        minute: mi.try_into().ok()?,
        second: s.try_into().ok()?,
        fraction: 0,
    })
}

fn parse_datetime(s: &str) -> Option<Timestamp> {
    let (date, time) = s.split_once([' ', 'T'])?;
    let time = match time.strip_suffix('Z') {
        Some(t) => t.split('.').next()?,
        // The `T` form requires its `Z`; the space form has neither zone nor fraction.
        None if s.as_bytes().get(10) == Some(&b' ') => time,
        None => return None,
    };
    let mut d = date.split('-').map(|p| p.parse::<u16>().ok());
    let mut t = time.split(':').map(|p| p.parse::<u16>().ok());
    let ts = Timestamp {
        year: i16::try_from(d.next()??).ok()?,
        month: d.next()??,
        day: d.next()??,
        hour: t.next()??,
        minute: t.next()??,
        second: t.next()??,
        fraction: 0,
    };
    let valid = d.next().is_none() && t.next().is_none();
    let in_range = (1..=12).contains(&ts.month) && (1..=31).contains(&ts.day);
    (valid && in_range && ts.hour < 24 && ts.minute < 60 && ts.second < 61).then_some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> ParamSpec {
        ParamSpec::parse(text).unwrap().unwrap()
    }

    #[test]
    fn odbc_spec_grammar() {
        assert_eq!(ParamSpec::parse(""), Ok(None));
        let w = spec("10W");
        assert_eq!(
            (w.direction, w.length, w.kind),
            (Direction::Input, Some(10), Kind::WVarchar)
        );
        assert_eq!(spec("32").kind, Kind::WVarchar);
        assert_eq!(spec("=i").direction, Direction::Output);
        assert_eq!(spec("+8C").direction, Direction::InputOutput);
        assert_eq!(spec("L").kind, Kind::UBigInt);
        assert_eq!(spec("b").kind, Kind::TinyInt);
        assert!(ParamSpec::parse("x").is_err());
        assert!(ParamSpec::parse("=").is_err());
        assert!(ParamSpec::parse("10Wz").is_err());
    }

    #[test]
    fn odbc_numeric_conversions() {
        assert_eq!(int::<i8>(&Value::Bool(true)), Some(1));
        assert_eq!(int::<i32>(&Value::text(" 42 ")), Some(42));
        assert_eq!(int::<i64>(&Value::text("2.9")), Some(2));
        assert_eq!(int::<u8>(&Value::Int(-1)), None);
        assert_eq!(int::<i8>(&Value::Int(300)), None);
        assert_eq!(int::<i64>(&Value::text("abc")), None);
        assert_eq!(float(&Value::text("1.5")), Some(1.5));
        assert_eq!(float(&Value::Binary(vec![1])), None);
    }

    #[test]
    fn odbc_conversion_error_text() {
        let err = bind_all(&["i"], &[Value::text("nope")]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "There was a problem with the data type conversion."
        );
        let err = bind_all(&["=i"], &[]).err().unwrap();
        assert!(err
            .to_string()
            .contains("OUTPUT parameters are not supported"));
    }

    #[test]
    fn odbc_datetime_forms() {
        let a = parse_datetime("2024-02-03 04:05:06").unwrap();
        let b = parse_datetime("2024-02-03T04:05:06.789Z").unwrap();
        assert_eq!(a, b);
        assert_eq!((a.year, a.month, a.day, a.second), (2024, 2, 3, 6));
        assert!(parse_datetime("2024-02-03T04:05:06").is_none());
        assert!(parse_datetime("2024-13-03 04:05:06").is_none());
    }
}
