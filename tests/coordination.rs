//! Coordination primitives against the real etcd of the test environment: one leader at a time, and a deposed
//! leader's guarded write refused.

use std::time::Duration;

#[macro_use]
#[path = "support/dev_env.rs"]
mod dev_env;

use etcd_client::{Txn, TxnOp};
use ferry::config::EtcdConfig;
use ferry::coordination::election::campaign_and_observe;
use ferry::coordination::etcd::Etcd;
use ferry::coordination::membership::{live_members, Membership};
use ferry::coordination::{MemberInfo, LEADER_KEY};
use ferry::ops::metrics::Metrics;

async fn etcd(endpoint: &str, prefix: &str) -> Etcd {
    let config: EtcdConfig =
        serde_json::from_value(serde_json::json!({ "endpoints": [endpoint], "prefix": prefix })).unwrap();
    Etcd::connect(&config, &Metrics::new(false)).await.unwrap()
}

fn info(id: &str) -> MemberInfo {
    MemberInfo { id: id.to_owned(), http: "127.0.0.1:1".to_owned(), joined_at_ms: 0, version: "test".to_owned() }
}

fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("/ferry-test/{name}-{}-{nanos}", std::process::id())
}

#[tokio::test]
async fn a_deposed_leaders_guarded_write_is_refused() {
    let prefix = unique_prefix("deposed");
    let [endpoint] = dev_env_vars!("FERRY_TEST_ETCD_ENDPOINTS");
    let etcd = etcd(&endpoint, &prefix).await;
    let first = Membership::join(&etcd, &info("first"), Duration::from_secs(30)).await.unwrap();
    let second = Membership::join(&etcd, &info("second"), Duration::from_secs(30)).await.unwrap();
    assert_eq!(live_members(&etcd).await.unwrap().len(), 2);

    let seen_by_first = campaign_and_observe(&etcd, &first).await.unwrap();
    let old = seen_by_first.leadership.expect("the first campaigner leads");
    let seen_by_second = campaign_and_observe(&etcd, &second).await.unwrap();
    assert!(seen_by_second.leadership.is_none(), "one leader at a time");
    assert_eq!(seen_by_second.leader.as_deref(), Some("first"));

    // The first leader's lease ends (as when it is partitioned away long enough); the second takes over.
    first.leave(&etcd).await.unwrap();
    let new = campaign_and_observe(&etcd, &second).await.unwrap().leadership.expect("the second leads now");
    assert!(new.revision > old.revision);

    let write = |guard| {
        Txn::new().when([guard]).and_then([TxnOp::put(etcd.key("assignments/someone"), "from a controller", None)])
    };
    let mut client = etcd.client();
    let refused = client.txn(write(old.guard(&etcd))).await.unwrap();
    assert!(!refused.succeeded(), "the deposed leader's write must not land");
    let accepted = client.txn(write(new.guard(&etcd))).await.unwrap();
    assert!(accepted.succeeded(), "the current leader's write lands");
    let leader = client.get(etcd.key(LEADER_KEY), None).await.unwrap();
    assert_eq!(leader.kvs()[0].value(), b"second");

    second.leave(&etcd).await.unwrap();
    client.delete(prefix, Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
}

#[tokio::test]
async fn a_lost_lease_ends_the_membership() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let prefix = unique_prefix("lease");
    let [endpoint] = dev_env_vars!("FERRY_TEST_ETCD_ENDPOINTS");
    let etcd = etcd(&endpoint, &prefix).await;
    let member = Membership::join(&etcd, &info("short-lived"), Duration::from_secs(2)).await.unwrap();
    let lost = tokio_util::sync::CancellationToken::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let keeper = {
        let (member, etcd, lost, shutdown) = (member.clone(), etcd.clone(), lost.clone(), shutdown.clone());
        tokio::spawn(async move { member.keep_alive(&etcd, lost, shutdown).await })
    };
    // Kept alive well past its TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!lost.is_cancelled());
    assert_eq!(live_members(&etcd).await.unwrap().len(), 1);
    // Revoked behind its back (as after expiry): the keep-alive learns it and says so.
    etcd.client().lease_revoke(member.lease).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), lost.cancelled()).await.expect("the lost lease is noticed");
    keeper.await.unwrap();
    assert!(live_members(&etcd).await.unwrap().is_empty());
}
