//! A connection's peer or local address in 16 bytes instead of an `Option<SocketAddr>`'s 32.
//! Every connection holds two of them for as long as it lives, idle ones included (issue #15
//! item 5: at most 2 KiB per idle connection), and almost every address is IPv4: those are
//! kept inline, an IPv6 one in a box of its own.

use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

#[derive(Default)]
enum Packed {
    #[default]
    Unknown,
    V4([u8; 4], u16),
    V6(Box<SocketAddrV6>),
}

/// A cell holding an address or nothing, read by copy like a `Cell<Option<SocketAddr>>`.
#[derive(Default)]
pub struct AddrCell(Cell<Packed>);

impl AddrCell {
    pub fn get(&self) -> Option<SocketAddr> {
        let packed = self.0.take();
        let addr = match &packed {
            Packed::Unknown => None,
            Packed::V4(ip, port) => Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(*ip),
                *port,
            ))),
            Packed::V6(v6) => Some(SocketAddr::V6(**v6)),
        };
        self.0.set(packed);
        addr
    }

    pub fn set(&self, addr: Option<SocketAddr>) {
        self.0.set(match addr {
            None => Packed::Unknown,
            Some(SocketAddr::V4(v4)) => Packed::V4(v4.ip().octets(), v4.port()),
            Some(SocketAddr::V6(v6)) => Packed::V6(Box::new(v6)),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_and_nothing_read_back_as_set() {
        let cell = AddrCell::default();
        assert_eq!(cell.get(), None);
        let scoped = SocketAddrV6::new("fe80::1".parse().unwrap(), 7, 3, 2);
        let addrs = [
            "127.0.0.2:8081".parse().unwrap(),
            "[::1]:9000".parse().unwrap(),
            SocketAddr::V6(scoped),
            "0.0.0.0:0".parse().unwrap(),
        ];
        for addr in addrs {
            cell.set(Some(addr));
            assert_eq!(cell.get(), Some(addr));
            assert_eq!(cell.get(), Some(addr), "read twice");
        }
        cell.set(None);
        assert_eq!(cell.get(), None);
        assert_eq!(std::mem::size_of::<AddrCell>(), 16);
    }
}
