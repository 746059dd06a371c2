fn main() {
    portcullis::allocator::tune();
    // Before any thread exists, so every thread inherits the mask and only
    // the signal thread ever receives SIGTERM/SIGINT.
    portcullis::signals::block_shutdown_signals();
    // A file-size limit (RLIMIT_FSIZE) must fail the write (SQLite then
    // reports a full disk) instead of killing the process with SIGXFSZ.
    portcullis::signals::ignore_file_size_signal();
    std::process::exit(portcullis::cli::main(std::env::args().skip(1).collect()));
}
