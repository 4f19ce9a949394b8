//! Errors printed with their causes. Every error in this library leaves its cause out of its own
//! message and gives it as `source()`; [`chain`] prints each once, on one line.

/// An error and its causes on one line (`a: b: c`), each cause once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // A transparent wrapper repeats its inner message: print it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
