use clap::Parser;

fn main() -> std::process::ExitCode {
    iris::cli::Cli::parse().run()
}

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
