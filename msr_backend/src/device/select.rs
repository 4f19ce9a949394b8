//! Choosing a backend: `auto` tries batch, then msr_safe, then the stock msr driver, and keeps
//! the reason each one was skipped.
