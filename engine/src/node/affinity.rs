//! Which CPUs the cores may run on: the process's affinity mask (taskset, cgroup cpusets), so
//! a core is never pinned to a CPU the operator did not give us.

/// The CPUs in this process's affinity mask, ascending.
pub fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread,
    // which at startup has the process's mask.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// Restricts the calling thread to `cpus` (a helper thread that trades messages with the
/// cores: on the cores' CPUs, handing a message over wakes a thread on the same CPU instead
/// of another CPU, which on a virtual machine costs an interrupt between CPUs each way).
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0, ..) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Chooses the CPUs to pin cores to: `#threads[0]` of them when given (never more than the
/// mask holds, since two cores on one CPU only fight), else one per allowed CPU.
pub fn choose_cpus(allowed: &[usize], requested: Option<usize>) -> Vec<usize> {
    let count = requested
        .unwrap_or(allowed.len())
        .clamp(1, allowed.len().clamp(1, crate::net::id::MAX_CORES));
    allowed.iter().copied().take(count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_cpus_inside_the_mask() {
        assert_eq!(choose_cpus(&[1], None), vec![1]);
        assert_eq!(choose_cpus(&[0, 1], Some(10)), vec![0, 1]);
        assert_eq!(choose_cpus(&[2, 5, 7], Some(2)), vec![2, 5]);
        assert!(!allowed_cpus().unwrap().is_empty());
    }

    #[test]
    fn a_pinned_thread_runs_only_on_its_cpus() {
        let allowed = allowed_cpus().unwrap();
        let first = allowed[0];
        let seen = std::thread::spawn(move || {
            pin_current_thread(&[first]).unwrap();
            allowed_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![first]);
        assert_eq!(
            allowed_cpus().unwrap(),
            allowed,
            "other threads keep their mask"
        );
    }
}
