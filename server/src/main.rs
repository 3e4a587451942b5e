//! The `ministore-server` binary: flags, logging, signals. Everything else is in the library.

use std::io::Write;

use clap::Parser;
use ministore_server::{Config, LogFormat, Server, ServerError};
use tracing_subscriber::EnvFilter;

// Every RPC allocates and frees buffers of several KiB (tonic's codec, h2's frames); glibc's
// malloc spent a fifth of the CPU of a no-op Append on them, mimalloc a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // File reads of Replay and Stream, journal opens and large JSON run on the blocking
        // pool: bounded, so that thousands of readers woken at once queue for threads
        // instead of starting one each (tokio's default allows 512).
        .max_blocking_threads(ministore_server::MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ministore-server: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config));
    // Everything the server owns has finished by now (`run` waits for in-flight RPCs up to
    // the grace period, then for every journal writer). What may remain is a read stuck in
    // the kernel on a blocking thread (a hung disk): dropping the runtime would wait for it
    // for ever, so its work is abandoned after a moment and the process exits.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Logged once, on stderr like every log line (a second `eprintln!` printed it twice).
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), ServerError> {
    // Before binding, so the connection cap is computed from the raised limit.
    match ministore_server::connections::raise_open_files_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(
                before,
                after,
                "raised the open-files limit to its hard limit"
            );
        }
        Ok((_, limit)) => tracing::info!(limit, "open-files limit"),
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
    let server = Server::bind(config).await?;
    // Installed before the server says where it listens: a SIGTERM right after that line
    // is a clean shutdown, not the default action that kills the process.
    let shutdown = shutdown_signal().map_err(|e| ServerError::Startup {
        op: "installing the signal handlers of",
        path: "SIGTERM and SIGINT".into(),
        source: std::sync::Arc::new(e),
    })?;
    if let Ok(addr) = server.local_addr() {
        // On stdout, one line, once the server holds its data directory and port (or its
        // cluster connection), so scripts (and tests using port 0) know where it is.
        println!("listening on {addr}");
        if let Some(metrics) = server.metrics_addr() {
            println!("metrics on {metrics}");
        }
        let _ = std::io::stdout().flush();
    }
    server.run(shutdown).await
}

/// A future that resolves on SIGINT (Ctrl-C) or SIGTERM; both handlers are installed when
/// this returns, not when the future is first polled.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("received SIGINT"),
            _ = term.recv() => tracing::info!("received SIGTERM"),
        }
    })
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|e| {
        eprintln!(
            "ministore-server: invalid --log-level {:?} ({e}); using \"info\"",
            config.log_level
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
