//! Checks, before any core starts, that this process can run glommio executors at all, so a
//! node in a container or unit that forbids io_uring or locks too little memory stops at once
//! with an error that says what to change, instead of a panic inside the executor (a core
//! thread that dies at start leaves a node serving nothing). docs/deploy.md shows the Docker
//! and systemd settings the messages point to.

use std::io;

/// glommio's own floor for `RLIMIT_MEMLOCK` (its reactor refuses to start below it: the
/// io_uring rings and registered buffers are locked memory).
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// Both checks; the first failure, with what to do about it.
pub fn check() -> anyhow::Result<()> {
    memlock(current_memlock()?)?;
    io_uring(probe_io_uring())
}

fn current_memlock() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        anyhow::bail!(
            "cannot read the memlock limit: {}",
            io::Error::last_os_error()
        );
    }
    Ok(limit.rlim_cur)
}

/// The verdict on a memlock limit of `bytes` (`RLIM_INFINITY` passes).
fn memlock(bytes: u64) -> anyhow::Result<()> {
    if bytes >= MIN_MEMLOCK {
        return Ok(());
    }
    anyhow::bail!(
        "the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB; the cores' io_uring needs at \
         least {} KiB: raise it (docker run --ulimit memlock=67108864, systemd \
         LimitMEMLOCK=infinity, or `ulimit -l` / limits.conf; docs/deploy.md)",
        bytes / 1024,
        MIN_MEMLOCK / 1024
    )
}

/// Sets up and closes a one-entry io_uring: what every core does first.
fn probe_io_uring() -> io::Result<()> {
    // struct io_uring_params is 120 bytes; zeroed means "no flags, kernel's defaults".
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and fills the params struct we own and returns a new fd
    // (closed below) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is the descriptor io_uring_setup just returned, closed once.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// The verdict on the io_uring probe.
fn io_uring(probe: io::Result<()>) -> anyhow::Result<()> {
    let Err(err) = probe else { return Ok(()) };
    let hint = match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "io_uring is forbidden here: under Docker (whose default seccomp profile blocks it) \
             run with --security-opt seccomp=deploy/seccomp-stage.json; on a host, check the \
             sysctl kernel.io_uring_disabled (0 allows it)"
        }
        Some(libc::ENOSYS) => "this kernel has no io_uring (Linux 5.8 or newer is needed)",
        Some(libc::ENOMEM) => "io_uring memory could not be locked: raise RLIMIT_MEMLOCK",
        _ => "io_uring is needed by every core",
    };
    anyhow::bail!("cannot set up io_uring ({err}): {hint} (docs/deploy.md)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_memlock_limit_is_refused_with_the_fix() {
        let err = memlock(64 * 1024).unwrap_err().to_string();
        assert!(
            err.contains("64 KiB") && err.contains("--ulimit memlock"),
            "{err}"
        );
        assert!(memlock(MIN_MEMLOCK).is_ok());
        assert!(memlock(libc::RLIM_INFINITY).is_ok());
    }

    #[test]
    fn a_forbidden_io_uring_names_the_seccomp_profile() {
        let err = io_uring(Err(io::Error::from_raw_os_error(libc::EPERM)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("seccomp=deploy/seccomp-stage.json"), "{err}");
        let err = io_uring(Err(io::Error::from_raw_os_error(libc::ENOSYS)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("5.8"), "{err}");
    }

    #[test]
    fn this_machine_passes() {
        // The test machine runs every core test on io_uring: the probe must agree.
        check().unwrap();
    }
}
