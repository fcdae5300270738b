//! The one error type of the odbc service. Driver failures keep odbc-api's error (its display
//! carries the SQLSTATE, native code and message); value and spec problems carry the exact texts
//! the spec gives Lua ("There was a problem with the data type conversion.") so the binding can
//! pass `to_string()` straight through as the Lua error message.

use thiserror::Error;

/// Everything that can go wrong in config parsing, connecting, binding or fetching.
#[derive(Debug, Error)]
pub enum OdbcError {
    /// The `%odbc` block or an inline connection table has a bad shape; the message names the key.
    #[error("odbc config: {0}")]
    Config(String),
    /// The process-wide ODBC environment could not be created (no driver manager?).
    #[error("odbc environment: {0}")]
    Environment(String),
    /// The driver manager or the driver reported a failure.
    #[error("odbc: {0}")]
    Driver(#[from] odbc_api::Error),
    /// A typed parameter got a value its kind cannot take (spec §1.2 "Value rules").
    #[error("There was a problem with the data type conversion.")]
    Conversion { index: usize },
    /// A parameter type spec does not follow `[=|+]<digits><letter>`.
    #[error("odbc: parameter {index}: bad type spec {spec:?}: {reason}")]
    BadSpec {
        index: usize,
        spec: String,
        reason: &'static str,
    },
    /// OUTPUT and INPUT_OUTPUT parameters are not implemented yet.
    #[error("odbc: parameter {index}: {direction} parameters are not supported")]
    Unsupported {
        index: usize,
        direction: &'static str,
    },
    /// A value read from a column could not be represented (e.g. a date mktime rejects).
    #[error("odbc: column {column}: {reason}")]
    Column { column: usize, reason: String },
}

impl OdbcError {
    /// Shorthand for config errors, which are built from formatted messages everywhere.
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        OdbcError::Config(msg.into())
    }
}
