//! How the process's two allocators give memory back to the system.
//!
//! The server has two: mimalloc for everything in Rust (the binaries' global allocator) and
//! glibc's `malloc` for SQLite, which is C and allocates its page caches, statements and
//! query scratch with the system allocator on each connection's own thread. Left at their
//! defaults both keep freed memory resident, and after three days of load that was a fifth
//! of the server's memory (docs/design/working-set.md, "Memory"):
//!
//! - glibc gives each thread that meets contention an arena of its own, up to eight per core,
//!   and keeps what was freed in each. The pool's connections each ran on a thread with its
//!   own arena. Two arenas are enough for the database's threads (the writer's connection and
//!   the loads beside it) and took 25–30 MiB off the server's resident memory after three
//!   driven mall days.
//! - mimalloc purges freed pages after a delay (10 ms, and ten times that for its arenas), so
//!   the memory of the batch just committed was still resident when the next one was built.
//!   Purging at once took another 20–25 MiB off. Together they cost ×0.96–0.98 in
//!   submissions per second in the runs that measured them (docs/benchmarks.md).
//!
//! [`limit_retention`] sets both; every binary calls it first thing in `main`, before the
//! runtime starts its threads ([`block_on_main`]).

/// mimalloc's `mi_option_purge_delay` (its `mimalloc.h`, version 3: the sixteenth option).
/// `libmimalloc-sys` binds `mi_option_set` but names only some of the options.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Limits glibc to two arenas and makes mimalloc purge freed pages at once, each unless the
/// environment sets it (`MALLOC_ARENA_MAX`, `MIMALLOC_PURGE_DELAY`, which both allocators read
/// themselves), so an operator can still choose otherwise.
pub fn limit_retention() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: `mallopt` only changes the allocator's parameters; it is called before
        // other threads exist, and an option glibc does not know is refused with 0.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; 15 is
        // `mi_option_purge_delay` in the bundled mimalloc 3 (checked by the test below).
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
}

/// What every binary's `main` does: limits the allocators' retention while the process has
/// one thread, then runs `main` to its end on a multi-threaded runtime.
pub fn block_on_main<T>(
    main: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    limit_retention();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // The option after it is named by libmimalloc-sys (mimalloc 3's `mimalloc.h`).
        assert_eq!(
            libmimalloc_sys::mi_option_use_numa_nodes - 1,
            MI_OPTION_PURGE_DELAY
        );
        limit_retention();
        // SAFETY: reads mimalloc's option table.
        let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 0);
    }
}
