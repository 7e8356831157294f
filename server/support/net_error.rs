//! A network error as an operator reads it: the cause at the bottom of a client library's chain
//! of wrapped errors ("connection refused"), in a few plain words.

/// What went wrong with a connection, in plain words, when `error` (a whole chain of causes as
/// text) says one of the usual things; `None` when it says something else.
pub fn plain(error: &str) -> Option<&'static str> {
    let lower = error.to_ascii_lowercase();
    if lower.contains("dns") || lower.contains("lookup") || lower.contains("resolve") {
        Some("no DNS answer")
    } else if lower.contains("refused") {
        Some("connection refused")
    } else if lower.contains("no route") || lower.contains("unreachable") {
        Some("no route to host")
    } else if lower.contains("timed out") || lower.contains("timeout") || lower.contains("deadline")
    {
        Some("timed out")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn the_usual_causes_are_named_and_anything_else_is_left_alone() {
        for (chain, said) in [
            ("node unreachable: connect to 10.0.0.5:50000: Connection refused (os error 111)", "connection refused"),
            ("error sending request: client error (Connect): dns error: failed to lookup address information", "no DNS answer"),
            ("tcp connect error: No route to host (os error 113)", "no route to host"),
            ("node not ready: deadline has elapsed", "timed out"),
        ] {
            assert_eq!(plain(chain), Some(said), "{chain}");
        }
        assert_eq!(
            plain("TLS to 10.0.0.5:50000: invalid peer certificate"),
            None
        );
    }
}
