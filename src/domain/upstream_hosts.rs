//! The upstream host allow-list (`security.upstream_hosts`): where a deployment's
//! `base_url`, and so its provider key, may point. Patterns are a host (`api.openai.com`,
//! exact) or `*.` and a domain (`*.example.com`, any host below it, not the domain
//! itself); case-insensitive; ports are not part of a pattern. No patterns: any host.

/// A parsed allow-list; `Default` allows every host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamHosts {
    patterns: Vec<HostPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` kept as `.example.com`.
    Below(String),
}

impl UpstreamHosts {
    /// Parses the configured patterns; on error answers the index of the bad one and why.
    pub fn parse(patterns: &[String]) -> Result<Self, (usize, String)> {
        let mut parsed = Vec::with_capacity(patterns.len());
        for (i, raw) in patterns.iter().enumerate() {
            let pattern = raw.trim().to_ascii_lowercase();
            let (domain, below) = match pattern.strip_prefix("*.") {
                Some(domain) => (domain, true),
                None => (pattern.as_str(), false),
            };
            let ipv6 = domain
                .strip_prefix('[')
                .and_then(|d| d.strip_suffix(']'))
                .filter(|_| !below);
            let valid = if let Some(address) = ipv6 {
                address.contains(':')
                    && address
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'))
            } else {
                !domain.is_empty()
                    && domain
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            };
            if !valid {
                return Err((
                    i,
                    format!(
                        "`{raw}` is not a host or `*.domain` pattern (no scheme, port or path)"
                    ),
                ));
            }
            parsed.push(if below {
                HostPattern::Below(format!(".{domain}"))
            } else {
                HostPattern::Exact(domain.to_string())
            });
        }
        Ok(Self { patterns: parsed })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `host` (as `reqwest::Url::host_str` gives it) may be called.
    pub fn allows(&self, host: &str) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let host = host.to_ascii_lowercase();
        self.patterns.iter().any(|p| match p {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Below(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        })
    }

    /// Checks a deployment's `base_url`: an http(s) URL with a host this list allows.
    /// The error is the message for a 400 naming `base_url`.
    pub fn check_base_url(&self, base_url: &str) -> Result<(), String> {
        self.check_url("base_url", base_url)
    }

    /// Checks a URL the gateway will call (a `base_url`, a job's `webhook_url`): http(s),
    /// with a host this list allows. The error is the message for a 400 naming `param`.
    pub fn check_url(&self, param: &str, url: &str) -> Result<(), String> {
        let parsed =
            reqwest::Url::parse(url).map_err(|_| format!("`{param}` must be an http(s) URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("`{param}` must be an http(s) URL"));
        }
        let host = parsed.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err(format!("`{param}` must name a host"));
        }
        if !self.allows(host) {
            return Err(format!(
                "`{param}` host `{host}` is not in `security.upstream_hosts`"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> UpstreamHosts {
        let owned: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        UpstreamHosts::parse(&owned).unwrap_or_default()
    }

    #[test]
    fn exact_and_suffix_patterns() {
        let hosts = list(&["api.openai.com", "*.Example.com", "127.0.0.1", "[::1]"]);
        assert!(hosts.allows("API.openai.com"));
        assert!(!hosts.allows("evil-api.openai.com"));
        assert!(hosts.allows("a.b.example.com"));
        assert!(!hosts.allows("example.com"));
        assert!(!hosts.allows("badexample.com"));
        assert!(hosts.allows("127.0.0.1"));
        assert!(hosts.check_base_url("http://127.0.0.1:9/v1").is_ok());
        assert!(hosts.check_base_url("https://attacker.test/v1").is_err());
        assert!(
            hosts
                .check_base_url("https://api.openai.com@attacker.test/v1")
                .is_err()
        );
        assert!(hosts.check_base_url("http://[::1]:8080/v1").is_ok());
        assert!(list(&[]).allows("anything.test"));
    }

    #[test]
    fn bad_patterns_are_named_by_index() {
        let bad = |p: &str| UpstreamHosts::parse(&["ok.test".to_string(), p.to_string()]).err();
        for pattern in [
            "",
            "https://a.test",
            "a.test/v1",
            "a.test:8080",
            "*.",
            "a.*.test",
            "*",
            "[]",
        ] {
            assert_eq!(bad(pattern).map(|(i, _)| i), Some(1), "{pattern}");
        }
    }
}
