//! Address arithmetic shared by the profile's checks and the inventory that allocates from it.

use ipnet::Ipv4Net;

/// Local nodes get 198.18.0.(10+i): .1 is the host bridge, the first ten are left free.
pub const LOCAL_FIRST_HOST: u64 = 10;

/// How many per-node blocks of `prefix` fit in `range`.
pub fn pod_blocks(range: Ipv4Net, prefix: u8) -> u64 {
    if prefix < range.prefix_len() || prefix > 32 {
        return 0;
    }
    1u64 << (prefix - range.prefix_len())
}
