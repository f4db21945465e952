//! The `coalition` command: see `coalition --help`.

fn main() -> anyhow::Result<()> {
    coalition::cli::main()
}
