//! S3 endpoints written one way, so that two spellings of one server compare equal, and a check
//! of whether two endpoints could be one server.

/// How godwit names AWS S3 itself (no custom endpoint): bucket names are global there.
pub const AWS: &str = "AWS S3";

/// `url` written one way: scheme and host in lower case, the port written out, no path or
/// trailing slash. A URL that does not parse is returned as it was given.
pub fn normalize(url: &str) -> String {
    match parse(url) {
        Some((scheme, host, port)) => format!("{scheme}://{host}:{port}"),
        None => url.to_owned(),
    }
}

/// The scheme, host (lower case, IPv6 in brackets) and port of an `http(s)://` URL.
fn parse(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (format!("[{host}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default_port,
    };
    (!host.is_empty()).then(|| (scheme, host.to_ascii_lowercase(), port))
}

/// Whether two endpoints are one server, as far as can be told from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sameness {
    /// Written alike once normalized, or their hosts resolve to a shared address on one port.
    Same,
    /// Could be one server under names that do not resolve alike (a proxy, a DNS alias), or two.
    Unknown,
}

/// Whether endpoints `a` and `b` (as [`normalize`] writes them, or [`AWS`]) are one server.
pub async fn same_server(a: &str, b: &str) -> Sameness {
    if normalize(a) == normalize(b) {
        return Sameness::Same;
    }
    let (Some((_, host_a, port_a)), Some((_, host_b, port_b))) = (parse(a), parse(b)) else {
        return Sameness::Unknown;
    };
    if port_a != port_b {
        return Sameness::Unknown;
    }
    let resolve = async |host: &str| -> Vec<std::net::IpAddr> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match tokio::net::lookup_host((host, port_a)).await {
            Ok(found) => found.map(|addr| addr.ip()).collect(),
            Err(_) => Vec::new(),
        }
    };
    let (found_a, found_b) = tokio::join!(resolve(&host_a), resolve(&host_b));
    if found_a.iter().any(|ip| found_b.contains(ip)) {
        Sameness::Same
    } else {
        Sameness::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_written_one_way() {
        assert_eq!(normalize("http://127.0.0.1:9000/"), "http://127.0.0.1:9000");
        assert_eq!(normalize("HTTP://Example.COM"), "http://example.com:80");
        assert_eq!(
            normalize("https://s3.example.com/path?x"),
            "https://s3.example.com:443"
        );
        assert_eq!(normalize("http://[::1]:9000"), "http://[::1]:9000");
        assert_eq!(normalize("http://user@host:1"), "http://host:1");
        assert_eq!(normalize(AWS), AWS);
    }

    #[tokio::test]
    async fn names_that_resolve_alike_are_one_server() {
        assert_eq!(
            same_server("http://localhost:9000", "http://127.0.0.1:9000/").await,
            Sameness::Same
        );
        assert_eq!(same_server(AWS, AWS).await, Sameness::Same);
        assert_eq!(
            same_server("http://127.0.0.1:9000", "http://127.0.0.1:9001").await,
            Sameness::Unknown
        );
        assert_eq!(
            same_server("http://127.0.0.1:9000", "http://127.0.0.2:9000").await,
            Sameness::Unknown
        );
        assert_eq!(
            same_server(AWS, "http://127.0.0.1:9000").await,
            Sameness::Unknown
        );
    }
}
