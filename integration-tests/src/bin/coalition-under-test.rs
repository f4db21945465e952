//! The real `coalition` command, built inside this package so the crash tests can start it as
//! a separate process and kill it.

fn main() -> std::process::ExitCode {
    coalition::cli::main()
}
