fn main() -> std::process::ExitCode {
    msrsave::run(std::env::args_os().collect())
}
