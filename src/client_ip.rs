//! Client IP resolution (`docs/reference.md` §4, "Client IP").
//!
//! The service usually runs behind a reverse proxy, so the TCP peer is often
//! the proxy rather than the buyer. Forwarding headers are only believed when
//! the peer is a configured trusted proxy; otherwise any client could spoof its
//! address simply by sending `X-Forwarded-For` itself.
//!
//! Everything here is pure (no I/O, no global state) so it can be unit-tested
//! exhaustively and must never panic, whatever bytes arrive in the headers.

use std::net::{IpAddr, Ipv4Addr};

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;

/// Single-address headers consulted after `Forwarded` and `X-Forwarded-For`,
/// in the order `docs/reference.md` §4 prescribes. The first one holding a valid address wins.
const SINGLE_ADDRESS_HEADERS: [&str; 4] = ["x-real-ip", "cf-connecting-ip", "true-client-ip", "x-client-ip"];

/// Ranges trusted when no `--trusted-proxy` is given: loopback, private
/// (RFC 1918 and IPv6 unique-local) and link-local. Link-local is included
/// because sidecar proxies and some container networks reach the service over
/// it, and such addresses cannot be routed to us from the internet anyway.
const DEFAULT_RANGES: [&str; 8] = [
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
    "169.254.0.0/16",
    "fe80::/10",
];

/// The set of peers whose forwarding headers are believed.
///
/// A request whose TCP peer is inside one of these networks may tell us who the
/// real client is via forwarding headers; anyone else is taken at face value.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    /// `--client-ip-header`: the one header the trusted proxy sets; every other forwarding
    /// header is then ignored.
    only_header: Option<HeaderName>,
}

impl TrustedProxies {
    /// Builds the set from explicit networks (typically the parsed
    /// `--trusted-proxy` options). An empty list trusts nobody, which makes
    /// every forwarding header ignored.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets, only_header: None }
    }

    /// Read the client from `header` alone (`--client-ip-header`): the trusted proxy sets exactly
    /// that one, so a client's own copies of the others can never be believed, whatever the
    /// proxy forgets to clear. A list (`X-Forwarded-For`, or `Forwarded`'s `for=`) yields its
    /// rightmost address that is not a trusted proxy.
    pub fn with_only_header(mut self, header: HeaderName) -> Self {
        self.only_header = Some(header);
        self
    }

    /// The default trusted ranges: loopback (`127.0.0.0/8`, `::1/128`),
    /// private (`10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, `fc00::/7`)
    /// and link-local (`169.254.0.0/16`, `fe80::/10`).
    ///
    /// Link-local is included on top of "loopback and private" because local
    /// sidecars and container bridges may use it and it is not internet-routable.
    pub fn default_ranges() -> Vec<IpNet> {
        DEFAULT_RANGES
            .iter()
            // The literals are fixed and covered by a unit test, so this cannot fail at runtime.
            .map(|s| s.parse().expect("built-in CIDR literal is valid"))
            .collect()
    }

    /// Whether `ip` belongs to a trusted network.
    ///
    /// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) are checked as their IPv4
    /// address, because a dual-stack listener reports IPv4 peers in that form
    /// and they must match the IPv4 ranges. The address is also checked as
    /// given, so an operator who configured a mapped IPv6 range still matches.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let canonical = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&canonical) || net.contains(&ip))
    }

    /// Picks the client out of a hop list ordered from the original client to
    /// the proxy closest to us: the rightmost address that is not a trusted
    /// proxy (everything right of it was appended by infrastructure we trust;
    /// anything left of it could have been forged by the client). If every hop
    /// is trusted the request came from inside, so the leftmost one is the
    /// origin.
    fn pick_from_hops(&self, hops: &[IpAddr]) -> Option<IpAddr> {
        hops.iter().rev().find(|ip| !self.contains(**ip)).or_else(|| hops.first()).copied()
    }
}

impl Default for TrustedProxies {
    /// Trusts [`TrustedProxies::default_ranges`], matching the CLI default.
    fn default() -> Self {
        Self::new(Self::default_ranges())
    }
}

/// Parse one CIDR or bare IP (a bare IP means /32 or /128).
///
/// Surrounding whitespace is ignored. The `Err` carries a short human message
/// naming the bad value. Used by the CLI for `--trusted-proxy`.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err("empty trusted proxy value; expected a CIDR like 10.0.0.0/8 or an IP".into());
    }
    let parsed = if trimmed.contains('/') {
        // Host bits are dropped (10.1.2.3/8 -> 10.0.0.0/8) so the value shown in
        // logs and startup output is the network that is actually trusted.
        trimmed.parse::<IpNet>().ok().map(|net| net.trunc())
    } else {
        trimmed.parse::<IpAddr>().ok().map(IpNet::from)
    };
    parsed.ok_or_else(|| format!("invalid trusted proxy {s:?}: expected a CIDR like 10.0.0.0/8 or an IP address"))
}

/// Parse one address token as found in forwarding headers.
///
/// Strips surrounding whitespace and double quotes, and accepts `[v6]:port`,
/// `[v6]`, `v4:port` as well as bare addresses. Returns `None` for anything
/// that is not an IP (`unknown`, `_hidden`, garbage), so callers can skip such
/// entries. IPv4-mapped IPv6 is returned canonicalised to IPv4, so the same
/// client is always reported the same way.
pub fn parse_ip_token(s: &str) -> Option<IpAddr> {
    let mut token = s.trim();
    // Only a matching pair counts as quoting; a lone quote means a mangled value.
    if token.len() >= 2 && token.starts_with('"') && token.ends_with('"') {
        token = token[1..token.len() - 1].trim();
    }

    if let Some(rest) = token.strip_prefix('[') {
        // Bracketed form: "[addr]" optionally followed by ":port".
        let (inside, after) = rest.split_once(']')?;
        let port_ok = match after.strip_prefix(':') {
            Some(port) => is_port(port),
            None => after.is_empty(),
        };
        if !port_ok {
            return None;
        }
        return inside.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }

    // A bare address, including unbracketed IPv6 (whose colons make any port
    // suffix ambiguous, so that form is simply read as an address).
    if let Ok(ip) = token.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }

    // "v4:port": exactly one colon, so it cannot be an IPv6 address.
    let (host, port) = token.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Whether `s` is a port as it may appear after an address: a decimal port
/// number, or an RFC 7239 obfuscated port (`_` followed by ALPHA / DIGIT /
/// `.` / `_` / `-`). Validating it keeps values like `1.2.3.4:evil` from being
/// accepted as an address.
fn is_port(s: &str) -> bool {
    if let Some(obfuscated) = s.strip_prefix('_') {
        return !obfuscated.is_empty()
            && obfuscated.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    }
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok()
}

/// Apply `docs/reference.md` §4. `peer` is the TCP peer address.
///
/// If the peer is not trusted, it is the client and every forwarding header is
/// disregarded. Otherwise the client is taken from `Forwarded`, then
/// `X-Forwarded-For`, then `X-Real-IP`, `CF-Connecting-IP`, `True-Client-IP`,
/// `X-Client-IP`; the first source yielding a valid address wins, and the peer
/// is the fallback. The result is always canonical (IPv4-mapped IPv6 is
/// reported as IPv4), so one client is never logged under two spellings.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    if let Some(header) = &trusted.only_header {
        return from_only_header(headers, header, trusted).unwrap_or(peer);
    }
    from_forwarded(headers, trusted)
        .or_else(|| from_x_forwarded_for(headers, trusted))
        .or_else(|| from_single_address_headers(headers))
        .unwrap_or(peer)
}

/// All values of header `name` that are valid UTF-8, in the order received.
/// Non-UTF-8 values are dropped: they cannot hold an address and trying to
/// salvage parts of them would only invite misparsing.
fn utf8_values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers.get_all(name).iter().filter_map(|value| std::str::from_utf8(value.as_bytes()).ok())
}

/// The client from `header` alone: `Forwarded` is read as such; any other header as a
/// comma-separated list of addresses (a single address being a list of one).
fn from_only_header(headers: &HeaderMap, header: &HeaderName, trusted: &TrustedProxies) -> Option<IpAddr> {
    if header == "forwarded" {
        return from_forwarded(headers, trusted);
    }
    let hops: Vec<IpAddr> =
        utf8_values(headers, header.as_str()).flat_map(|line| line.split(',')).filter_map(parse_ip_token).collect();
    trusted.pick_from_hops(&hops)
}

/// RFC 7239 `Forwarded`: every element (across all header lines, in order) is
/// one hop; the `for=` parameters give the hop addresses.
fn from_forwarded(headers: &HeaderMap, trusted: &TrustedProxies) -> Option<IpAddr> {
    let hops: Vec<IpAddr> = utf8_values(headers, "forwarded")
        .flat_map(forwarded_for_values)
        .filter_map(|value| parse_ip_token(&value))
        .collect();
    trusted.pick_from_hops(&hops)
}

/// `X-Forwarded-For`: a comma-separated hop list; several header lines are the
/// same list split up, so they are concatenated in order.
fn from_x_forwarded_for(headers: &HeaderMap, trusted: &TrustedProxies) -> Option<IpAddr> {
    let hops: Vec<IpAddr> =
        utf8_values(headers, "x-forwarded-for").flat_map(|line| line.split(',')).filter_map(parse_ip_token).collect();
    trusted.pick_from_hops(&hops)
}

/// The single-address headers in priority order; an invalid value falls
/// through to the next header.
///
/// If a header appears on several lines, the last line is used: a client may
/// have sent its own copy, and a proxy that adds rather than replaces the
/// header puts its (trustworthy) line after it.
fn from_single_address_headers(headers: &HeaderMap) -> Option<IpAddr> {
    SINGLE_ADDRESS_HEADERS.iter().find_map(|name| utf8_values(headers, name).last().and_then(parse_ip_token))
}

/// Extracts the unquoted values of every `for` parameter in one `Forwarded`
/// header line, in order.
///
/// Splitting is done by hand instead of with `str::split` because a quoted
/// value may legally contain `,`, `;` or `=` (and backslash escapes), which
/// must not be treated as separators.
fn forwarded_for_values(line: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut pair = String::new();
    let mut in_quotes = false;
    let mut escaped = false;

    for c in line.chars() {
        if in_quotes {
            // Keep the quoted text verbatim; it is unquoted per pair below.
            pair.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
            continue;
        }
        match c {
            // ',' ends an element and ';' ends a pair; for our purpose (collect
            // every `for=` in order) both just end the current pair.
            ',' | ';' => {
                values.extend(for_pair_value(&pair));
                pair.clear();
            }
            '"' => {
                in_quotes = true;
                pair.push(c);
            }
            _ => pair.push(c),
        }
    }
    values.extend(for_pair_value(&pair));
    values
}

/// If `pair` is `for=<value>` (name case-insensitive), returns the value with
/// RFC 7230 quoted-string quoting removed.
fn for_pair_value(pair: &str) -> Option<String> {
    let (name, value) = pair.split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("for") {
        return None;
    }
    let value = value.trim();
    match value.strip_prefix('"') {
        Some(quoted) => unquote(quoted),
        None => Some(value.to_owned()),
    }
}

/// Decodes the body of a quoted-string (opening quote already removed):
/// resolves backslash escapes and requires the closing quote to be last, so a
/// truncated or malformed value is rejected rather than half-read.
fn unquote(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().trim().is_empty().then_some(out),
            _ => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests;
