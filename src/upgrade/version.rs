//! Kubernetes versions as the skew policy compares them (kubernetes.io/releases/version-skew-policy):
//! apiservers of one cluster within one minor of each other, controller-manager and scheduler not
//! newer than the apiservers, kubelet and kube-proxy not newer and at most three minors older
//! (two before 1.28).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// `v1.28.7`, also with a suffix (`v1.28.7-eks-1`, `v1.28.7+k3s1`): the suffix is ignored.
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim().strip_prefix('v').unwrap_or(s.trim());
        let core = s.split(['-', '+']).next()?;
        let mut it = core.split('.');
        let v = Version {
            major: it.next()?.parse().ok()?,
            minor: it.next()?.parse().ok()?,
            patch: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(v)
    }

    pub fn minor_string(self) -> String {
        format!("v{}.{}", self.major, self.minor)
    }

    /// How many minors older than the apiserver a kubelet may be.
    pub fn kubelet_skew(self) -> u32 {
        if self.major == 1 && self.minor < 28 {
            2
        } else {
            3
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        let a = Version::parse("v1.28.7").unwrap();
        let b = Version::parse("v1.28.10").unwrap();
        assert!(a < b);
        assert_eq!(Version::parse("v1.29.0-eks-1").unwrap().minor, 29);
        assert!(Version::parse("1.28").is_none());
        assert!(Version::parse("v1.x.0").is_none());
        assert_eq!(a.kubelet_skew(), 3);
        assert_eq!(Version::parse("v1.27.1").unwrap().kubelet_skew(), 2);
    }
}
