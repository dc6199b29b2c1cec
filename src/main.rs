use clap::Parser;

fn main() -> std::process::ExitCode {
    iris::cli::Cli::parse().run()
}

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`. A background thread hands freed pages back to the
/// kernel one second after they were last used (jemalloc's default: ten seconds, and only when
/// some thread allocates): after a burst of connections, or when idle ones are parked, their
/// buffers leave the resident set instead of staying reserved.
#[used]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer that may live in a static.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points at a string literal, immutable for the life of the program.
unsafe impl Sync for MallocConf {}
