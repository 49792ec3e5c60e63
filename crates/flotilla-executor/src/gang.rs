//! What a gang member is told about its gang, the same on every backend.
//!
//! Each member of a gang gets a stable DNS name the way JobSet gives one: the gang has a
//! headless Service (`flotilla-<installation>-g<gang id>`, see [`service_name`]) in its
//! queue's namespace, and each member's pod has `hostname: <role>-<rank in role>` and
//! `subdomain: <service>`, so it answers at `<role>-<k>.<service>.<namespace>.svc`. Every
//! name follows from the gang's roles, so the whole gang's addresses are known when one
//! member is leased, before any pod exists. A restarted gang keeps its names.
//!
//! The variables (docs/task-file.md, *What a task sees*): `FLOTILLA_GANG_ID`,
//! `FLOTILLA_GANG_SIZE`, `FLOTILLA_GANG_RANK` (in the whole gang, 0 is the leader),
//! `FLOTILLA_GANG_ROLE`, `FLOTILLA_GANG_ROLE_RANK`, `FLOTILLA_GANG_ROLE_SIZE`,
//! `FLOTILLA_GANG_ROLES` (`launcher:1,worker:8`, rank order), `FLOTILLA_GANG_ADDRESS` (its
//! own), `FLOTILLA_GANG_LEADER` (rank 0's), `FLOTILLA_GANG_SUBDOMAIN`
//! (`<service>.<namespace>.svc`: member `k` of role `r` is `r-k.` + it) and, for gangs of at
//! most [`MAX_GANG_PEERS_LISTED`] members, `FLOTILLA_GANG_PEERS`: every member's address in
//! rank order, comma-separated (its own included, at its rank).

use flotilla_api::v1::LeasedTask;
use flotilla_model::{gang_role_of, GangRole};

/// Gangs larger than this get no `FLOTILLA_GANG_PEERS` (it would be one long variable in
/// every member's pod spec); their members build the names from `FLOTILLA_GANG_ROLES` and
/// `FLOTILLA_GANG_SUBDOMAIN`.
pub const MAX_GANG_PEERS_LISTED: u32 = 64;

/// Longest DNS label: a pod's hostname and a Service's name.
const MAX_DNS_LABEL: usize = 63;

/// The headless Service that gives gang `gang_id`'s members their names:
/// `flotilla-<first 8 characters of the installation id>-g<gang id>`.
pub fn service_name(installation: &str, gang_id: u64) -> String {
    let short: String = installation.chars().filter(|c| c.is_ascii_alphanumeric()).take(8).collect::<String>().to_ascii_lowercase();
    format!("flotilla-{short}-g{gang_id}")
}

/// The gang's roles in rank order; a lease from a server older than roles has one, the
/// task's name, of `gang_size` members.
pub fn layout(task: &LeasedTask) -> Vec<GangRole> {
    if task.gang_roles.is_empty() {
        vec![GangRole { name: task.name.clone(), count: task.gang_size }]
    } else {
        task.gang_roles.iter().map(|r| GangRole { name: r.name.clone(), count: r.count }).collect()
    }
}

/// `<role>-<rank in role>`, a DNS label: the role is cut so the label stays within 63
/// characters (roles are at most 58 since they existed; a task name as the role may be 63).
pub fn hostname(role: &str, role_rank: u32) -> String {
    let suffix = format!("-{role_rank}");
    let keep = MAX_DNS_LABEL.saturating_sub(suffix.len());
    let cut: String = role.chars().take(keep).collect();
    format!("{}{suffix}", cut.trim_end_matches('-'))
}

/// A gang member's place in its gang and every name it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GangMember {
    pub service: String,
    pub hostname: String,
    pub env: Vec<(&'static str, String)>,
}

/// The member `task` is of its gang, its Service named `service` in `namespace`; `None` for a
/// task outside a gang or a rank outside its roles.
pub fn member(task: &LeasedTask, service: &str, namespace: &str) -> Option<GangMember> {
    if task.gang_size == 0 {
        return None;
    }
    let roles = layout(task);
    let (role, role_rank) = gang_role_of(&roles, task.gang_rank)?;
    let subdomain = format!("{service}.{namespace}.svc");
    let address = |rank: u32| gang_role_of(&roles, rank).map(|(r, k)| format!("{}.{subdomain}", hostname(&r.name, k)));
    let own = hostname(&role.name, role_rank);
    let mut env = vec![
        ("FLOTILLA_GANG_ID", task.gang_id.to_string()),
        ("FLOTILLA_GANG_SIZE", task.gang_size.to_string()),
        ("FLOTILLA_GANG_RANK", task.gang_rank.to_string()),
        ("FLOTILLA_GANG_ROLE", role.name.clone()),
        ("FLOTILLA_GANG_ROLE_RANK", role_rank.to_string()),
        ("FLOTILLA_GANG_ROLE_SIZE", role.count.to_string()),
        ("FLOTILLA_GANG_ROLES", roles.iter().map(|r| format!("{}:{}", r.name, r.count)).collect::<Vec<_>>().join(",")),
        ("FLOTILLA_GANG_ADDRESS", format!("{own}.{subdomain}")),
        ("FLOTILLA_GANG_LEADER", address(0).unwrap_or_default()),
        ("FLOTILLA_GANG_SUBDOMAIN", subdomain.clone()),
    ];
    if task.gang_size <= MAX_GANG_PEERS_LISTED {
        let peers: Vec<String> = (0..task.gang_size).filter_map(address).collect();
        env.push(("FLOTILLA_GANG_PEERS", peers.join(",")));
    }
    Some(GangMember { service: service.to_string(), hostname: own, env })
}

#[cfg(test)]
mod tests {
    use flotilla_api::v1;

    use super::*;

    fn worker(rank: u32, size_of_workers: u32) -> LeasedTask {
        LeasedTask {
            name: "worker".into(),
            gang_id: 7,
            gang_size: 1 + size_of_workers,
            gang_rank: rank,
            gang_roles: vec![
                v1::GangRole { name: "launcher".into(), count: 1 },
                v1::GangRole { name: "worker".into(), count: size_of_workers },
            ],
            ..Default::default()
        }
    }

    fn env_of(m: &GangMember, key: &str) -> String {
        m.env.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    #[test]
    fn a_worker_learns_its_role_ranks_the_leaders_address_and_every_peer_in_rank_order() {
        let m = member(&worker(3, 4), "flotilla-abc-g7", "flotilla-q").unwrap();
        assert_eq!(m.hostname, "worker-2");
        assert_eq!(env_of(&m, "FLOTILLA_GANG_RANK"), "3");
        assert_eq!(env_of(&m, "FLOTILLA_GANG_ROLE"), "worker");
        assert_eq!(env_of(&m, "FLOTILLA_GANG_ROLE_RANK"), "2");
        assert_eq!(env_of(&m, "FLOTILLA_GANG_ROLE_SIZE"), "4");
        assert_eq!(env_of(&m, "FLOTILLA_GANG_ROLES"), "launcher:1,worker:4");
        assert_eq!(env_of(&m, "FLOTILLA_GANG_LEADER"), "launcher-0.flotilla-abc-g7.flotilla-q.svc");
        assert_eq!(env_of(&m, "FLOTILLA_GANG_ADDRESS"), "worker-2.flotilla-abc-g7.flotilla-q.svc");
        let peers = env_of(&m, "FLOTILLA_GANG_PEERS");
        let peers: Vec<&str> = peers.split(',').collect();
        assert_eq!(peers.len(), 5);
        assert_eq!(peers[0], "launcher-0.flotilla-abc-g7.flotilla-q.svc");
        assert_eq!(peers[3], env_of(&m, "FLOTILLA_GANG_ADDRESS"));
    }

    #[test]
    fn a_gang_of_one_template_from_an_older_server_has_one_role_named_after_the_task() {
        let t = LeasedTask { name: "train".into(), gang_id: 3, gang_size: 4, gang_rank: 1, ..Default::default() };
        let m = member(&t, "s", "ns").unwrap();
        assert_eq!((m.hostname.as_str(), env_of(&m, "FLOTILLA_GANG_ROLES").as_str()), ("train-1", "train:4"));
        assert_eq!(env_of(&m, "FLOTILLA_GANG_LEADER"), "train-0.s.ns.svc");
        assert!(member(&LeasedTask { gang_size: 0, ..t }, "s", "ns").is_none());
    }

    #[test]
    fn large_gangs_list_no_peers_and_long_roles_still_make_dns_labels() {
        let m = member(&worker(100, 200), "s", "ns").unwrap();
        assert!(m.env.iter().all(|(k, _)| *k != "FLOTILLA_GANG_PEERS"), "a gang of 201 lists no peers");
        assert_eq!(env_of(&m, "FLOTILLA_GANG_SUBDOMAIN"), "s.ns.svc");
        let long = hostname(&"a".repeat(63), 511);
        assert!(long.len() <= 63 && long.ends_with("-511"), "{long}");
        assert_eq!(service_name("0123ABCD-ffff", 42), "flotilla-0123abcd-g42");
    }
}
