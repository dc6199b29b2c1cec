use clap::Parser;

fn main() -> std::process::ExitCode {
    iris::cli::Cli::parse().run()
}
