//! The `Host` check against DNS rebinding: a page on another site whose name was re-pointed at
//! 127.0.0.1 reaches this server with its own name in `Host`, and is refused.

use std::net::IpAddr;

/// The names every server answers to (with any port).
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// `host` without its port, lower-case; IPv6 literals keep their brackets.
fn name_of(host: &str) -> String {
    let host = host.trim();
    let name = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.to_ascii_lowercase()
}

/// An address as it appears in a `Host` header: IPv6 literals in brackets.
pub fn host_form(address: &str) -> String {
    let address = address.trim();
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => address.to_ascii_lowercase(),
    }
}

/// Whether a request whose `Host` header is `host` is for this server: a loopback name, one of
/// `extra` (in [`host_form`]), or the IP address the connection arrived on (`local`: a page
/// opened by the address itself, as when `--host 0.0.0.0` is reached through the LAN address).
pub fn allowed(host: &str, extra: &[String], local: Option<IpAddr>) -> bool {
    let name = name_of(host);
    if LOOPBACK_NAMES.contains(&name.as_str()) || extra.contains(&name) {
        return true;
    }
    local.is_some_and(|ip| host_form(&ip.to_string()) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_pass_with_any_port_and_others_do_not() {
        for ok in [
            "localhost",
            "LOCALHOST:8000",
            "127.0.0.1",
            "127.0.0.1:43121",
            "[::1]",
            "[::1]:8000",
        ] {
            assert!(allowed(ok, &[], None), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8000",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "10.0.0.5:8000",
            "[::2]:8000",
            "localhost:80:80",
        ] {
            assert!(!allowed(bad, &[], None), "{bad}");
        }
    }

    #[test]
    fn the_bound_address_and_the_connection_address_pass() {
        let extra = vec![host_form("192.168.1.20"), host_form("fe80::1")];
        assert!(allowed("192.168.1.20:8000", &extra, None));
        assert!(allowed("[fe80::1]:8000", &extra, None));
        assert!(!allowed("192.168.1.21:8000", &extra, None));
        let local: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(allowed("10.1.2.3:8000", &[], Some(local)));
        assert!(!allowed("evil.example", &[], Some(local)));
        assert_eq!(host_form("::1"), "[::1]");
        assert_eq!(host_form("My-Box.lan"), "my-box.lan");
    }
}
