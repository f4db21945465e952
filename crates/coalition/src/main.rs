//! The `coalition` command: see `coalition --help`.

fn main() -> std::process::ExitCode {
    coalition::cli::main()
}
