fn main() {
    // Before any thread exists, so every thread inherits the mask and only
    // the signal thread ever receives SIGTERM/SIGINT.
    portcullis::signals::block_shutdown_signals();
    std::process::exit(portcullis::cli::main(std::env::args().skip(1).collect()));
}
