//! With the `vendored` feature the ODBC driver manager is linked into the binary, and it
//! `dlopen`s drivers by the names /etc/odbcinst.ini gives. Debian's driver packages register
//! bare names (`Driver=libsqlite3odbc.so`) that the system's unixODBC finds in its module
//! directory, `/usr/lib/<multiarch>/odbc`, which is not on the loader's default path. A
//! run path on the binary makes `dlopen` look there too (it searches the calling object's
//! DT_RUNPATH, and the caller is the binary itself). This script does it for the `stage` binary and
//! its tests; engine/build.rs does the same for the engine's unit tests.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_VENDORED").is_some() {
        if let Some(dirs) = odbc_module_dirs() {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dirs}");
        }
    }
}

/// Where Linux distributions keep ODBC drivers registered by bare file name.
fn odbc_module_dirs() -> Option<String> {
    let os = std::env::var("CARGO_CFG_TARGET_OS").ok()?;
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    (os == "linux").then(|| format!("/usr/lib/{arch}-linux-{env}/odbc:/usr/lib/odbc:/usr/lib64"))
}
