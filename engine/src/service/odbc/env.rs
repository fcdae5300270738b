//! The process-wide ODBC 3 environment (spec §1.1 "Process-wide set-up"), created on first use
//! and never freed. Driver-manager connection pooling is switched on before it is allocated (one
//! pool per environment, relaxed matching), so even unpooled inline connections reuse physical
//! links inside unixODBC. Connecting applies the login and connection timeouts; every driver
//! error that passes through `log_error` is logged as `[SQL] <state> <native> <message>`.

use std::sync::LazyLock;

use odbc_api::sys::{
    AttrConnectionPooling, AttrCpMatch, ConnectionAttribute, Pointer, IS_UINTEGER,
};
use odbc_api::{
    Connection, ConnectionOptions, DriverSpecificConnectionOptions, Environment,
    SetConnectionAttributeArgs,
};

use super::config::ConnectionConfig;
use super::error::OdbcError;

/// The environment, or why it could not be made (kept as text: odbc-api errors are not Clone).
static ENV: LazyLock<Result<Environment, String>> = LazyLock::new(create);

fn create() -> Result<Environment, String> {
    // SAFETY: process-global pooling must be set before the first environment exists; this
    // LazyLock is the only place that creates one, so nothing races it.
    if let Err(e) =
        unsafe { Environment::set_connection_pooling(AttrConnectionPooling::OnePerHenv) }
    {
        // Pooling is an optimisation: a driver manager without it still serves connections.
        tracing::warn!("[SQL] driver-manager pooling unavailable: {e}");
    }
    let mut env = Environment::new().map_err(|e| e.to_string())?;
    if let Err(e) = env.set_connection_pooling_matching(AttrCpMatch::Relaxed) {
        log_driver_error(&e);
    }
    Ok(env)
}

/// The process-wide environment.
pub fn environment() -> Result<&'static Environment, OdbcError> {
    ENV.as_ref().map_err(|e| OdbcError::Environment(e.clone()))
}

/// Opens a physical connection (through the driver manager's pool) with the config's timeouts.
/// Failures are logged and returned.
pub fn connect(cfg: &ConnectionConfig) -> Result<Connection<'static>, OdbcError> {
    let env = environment()?;
    let options = ConnectionOptions {
        login_timeout_sec: Some(cfg.login_timeout),
        packet_size: None,
    };
    let timeout = ConnectionTimeout(cfg.connection_timeout);
    // SAFETY: the only attribute set is SQL_ATTR_CONNECTION_TIMEOUT, a standard ODBC 3 integer
    // attribute passed by value; no memory is referenced.
    let result = unsafe {
        env.connect_with_connection_string_and_driver_specific_options(
            &cfg.connection_string,
            options,
            timeout,
        )
    };
    result.map_err(|e| log_error(e.into()))
}

/// `SQL_ATTR_CONNECTION_TIMEOUT`, which odbc-api's `ConnectionOptions` does not cover.
struct ConnectionTimeout(u32);

impl<'c> DriverSpecificConnectionOptions<'c> for ConnectionTimeout {
    fn attributes(&self) -> impl Iterator<Item = SetConnectionAttributeArgs<'c>> {
        // Zero is the driver default ("no timeout"); not setting it spares drivers that reject
        // the attribute.
        let value = self.0 as usize as Pointer;
        let attr = (self.0 > 0).then(|| {
            // SAFETY: an integer attribute, so the pointer carries the value itself.
            unsafe {
                SetConnectionAttributeArgs::new(
                    ConnectionAttribute::CONNECTION_TIMEOUT,
                    value,
                    IS_UINTEGER,
                )
            }
        });
        attr.into_iter()
    }
}

/// Logs a driver error's diagnostic record in the spec's format and hands the error back, so
/// call sites can write `.map_err(log_error)`.
pub fn log_error(err: OdbcError) -> OdbcError {
    if let OdbcError::Driver(e) = &err {
        log_driver_error(e);
    }
    err
}

fn log_driver_error(err: &odbc_api::Error) {
    match err {
        odbc_api::Error::Diagnostics { record, .. } => {
            let message = String::from_utf8_lossy(&record.message);
            tracing::warn!(
                "[SQL] {} {} {}",
                record.state.as_str(),
                record.native_error,
                message.trim_end_matches('\0')
            );
        }
        other => tracing::warn!("[SQL] {other}"),
    }
}
