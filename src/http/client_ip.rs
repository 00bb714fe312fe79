//! The client's address, for rate limits. The socket peer is the client,
//! unless it is a trusted proxy (`TRUSTED_PROXIES`): then `X-Forwarded-For`
//! is read from the right, skipping trusted hops.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S> FromRequestParts<S> for ClientIp
where
    S: Send + Sync,
    Arc<Config>: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip_of(parts, &Arc::<Config>::from_ref(state).trusted_proxies)))
    }
}

pub fn client_ip_of(parts: &Parts, trusted: &[IpNet]) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| addr.ip());
    let forwarded = parts.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    resolve(peer, forwarded, trusted)
}

fn resolve<'a>(peer: IpAddr, forwarded: impl DoubleEndedIterator<Item = &'a str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded.flat_map(|value| value.split(',')).collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let xff = || ["1.1.1.1, 2.2.2.2", "10.0.0.7"].into_iter();
        assert_eq!(resolve(ip("9.9.9.9"), xff(), &trusted), ip("9.9.9.9"), "untrusted peer: header ignored");
        assert_eq!(resolve(ip("10.0.0.1"), xff(), &trusted), ip("2.2.2.2"), "rightmost untrusted hop");
        assert_eq!(resolve(ip("10.0.0.1"), std::iter::empty(), &trusted), ip("10.0.0.1"));
        assert_eq!(resolve(ip("10.0.0.1"), ["junk, 3.3.3.3"].into_iter(), &trusted), ip("3.3.3.3"));
        assert_eq!(resolve(ip("10.0.0.1"), ["3.3.3.3, junk"].into_iter(), &trusted), ip("10.0.0.1"));
        assert_eq!(resolve(ip("127.0.0.1"), xff(), &[]), ip("127.0.0.1"));
    }
}
