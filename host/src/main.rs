//! `medguard`: see `medguard --help`. The shell around [`medguard::cli::main`].

fn main() -> std::process::ExitCode {
    medguard::cli::main()
}
