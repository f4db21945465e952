//! The `coalition` command: see `coalition --help`.

/// mimalloc rather than the system allocator: the writer allocates and frees many small
/// values per batch (ids, lots, rows), where glibc's malloc spent a fifth of the samples and
/// kept freed memory resident (docs/dependencies.md, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    coalition::cli::main()
}
