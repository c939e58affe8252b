//! The I/O parts against the real kernel, in a network namespace of the test's own (root
//! only, as in CI): a bridge over rtnetlink, the rules through nft, and their removal.

use skiff_api::network::NetworkSpec;
use skiff_net::{link, nft, rules, Network, Subnet};

/// Runs `f` on a thread in a new network namespace (unshare affects the calling thread
/// only, and the processes it starts).
fn in_new_netns(f: impl FnOnce() + Send + 'static) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for a network namespace");
        return false;
    }
    std::thread::spawn(move || {
        // SAFETY: unshare with a flag; it affects this thread only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        f();
    })
    .join()
    .expect("the test thread");
    true
}

#[test]
fn bridge_and_rules_come_and_go() {
    in_new_netns(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut net = Network {
            spec: NetworkSpec {
                name: "a".into(),
                subnet: "10.99.0.0/24".into(),
                nat: true,
                isolated: true,
            },
            id: 7,
            leases: Vec::new(),
        };
        net.lease("web", 0, &["8080:80".parse().expect("valid")])
            .expect("room");
        let subnet = Subnet::parse(&net.spec.subnet).expect("valid");
        rt.block_on(async {
            link::ensure_bridge("skbr7", &subnet).await.expect("bridge");
            // Twice is fine: a daemon restart does it again.
            link::ensure_bridge("skbr7", &subnet)
                .await
                .expect("bridge again");
            assert!(link::exists("skbr7").await.expect("lookup"));
        });
        let addrs = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show", "skbr7"])
            .output()
            .expect("ip");
        assert!(String::from_utf8_lossy(&addrs.stdout).contains("10.99.0.1/24"));
        nft::load(&rules::ruleset(&[&net])).expect("rules load");
        nft::load(&rules::ruleset(&[&net])).expect("and reload");
        assert_eq!(nft::counter_packets("spoof_7").expect("counter"), 0);
        nft::load(&rules::ruleset(&[])).expect("rules removed");
        assert!(nft::counter_packets("spoof_7").is_err());
        rt.block_on(async {
            link::remove_link("skbr7").await.expect("remove");
            link::remove_link("skbr7")
                .await
                .expect("remove a missing one");
            assert!(!link::exists("skbr7").await.expect("lookup"));
        });
    });
}
