//! A bus that a fleet can trust: a nats-server with TLS (client certificates verified) and the shipped
//! per-role permissions (`deploy/nats/accounts.conf`), each Strata role on its own nkey user.
//!
//! - Nobody gets in without the fleet's certificate and a user of its own.
//! - Only an uploader may create the streams; a service of another role waits for one.
//! - A sealer may publish sealed chunks but not a commit request, and cannot read a collector's fetch
//!   replies; a replicator may share and take its own work.
//! - A backup and a restore work with the collector, sealer, uploader and the `strata` command each on its
//!   own user, and none of them hits a permission it lacks; the chunks go over sealed direct connections
//!   (shared/bus/src/direct.rs), whose key only travelled over TLS.

mod common;

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use std::time::Duration;
use strata_bus::nats::{NatsAuth, NatsOptions, NatsTls};
use strata_bus::{Bus, BusError, NatsBus, Queue};
use strata_integration::*;

/// The bus options of `role`'s processes: the fleet's CA and client certificate, the role's nkey and inbox
/// prefix; JetStream calls time out after 3 s, so that a refused one fails the test quickly.
fn role_options(nats: &SecureNats, role: &str) -> NatsOptions {
    NatsOptions {
        request_timeout: Duration::from_secs(3),
        tls: NatsTls {
            ca_file: Some(nats.pki.ca.clone()),
            client_cert: Some((nats.pki.client_cert.clone(), nats.pki.client_key.clone())),
        },
        auth: NatsAuth::NkeyFile(nats.key(role).seed_file.clone()),
        inbox_prefix: format!("_INBOX_{role}"),
        ..Default::default()
    }
}

async fn connect_as(nats: &SecureNats, role: &str) -> NatsBus {
    NatsBus::connect_with(&nats.url(), role_options(nats, role))
        .await
        .unwrap_or_else(|e| panic!("the {role}'s user cannot connect: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_fleets_certificate_or_a_user_cannot_connect() {
    let dir = TestDir::new("bus_security_refused");
    let bins = StrataBins::locate();
    let mut nats = SecureNats::start(&dir, &bins);
    // Every refusal below is logged by the server.
    nats.server
        .allow_log(r"authentication error")
        .allow_log(r"TLS handshake error: tls: (client didn't provide a certificate|failed to verify certificate)")
        .allow_log(r"TLS handshake error: (remote error: tls: |EOF|read tcp)");
    let url = nats.url();
    // The uploader's user creates the streams; this is the positive control.
    let _uploader = connect_as(&nats, "uploader").await;

    let no_user = NatsOptions { auth: NatsAuth::None, ..role_options(&nats, "sealer") };
    let err = NatsBus::connect_with(&url, no_user).await.expect_err("a client without a user connects");
    assert!(matches!(err, BusError::Setup(_)), "{err}");
    assert!(err.to_string().contains("refused this process's credentials"), "{err}");

    // A seed the server does not list.
    let unknown = strata_integration::nats_secure::keygen(&dir, &bins, "stranger");
    let stranger = NatsOptions { auth: NatsAuth::NkeyFile(unknown.seed_file.clone()), ..role_options(&nats, "sealer") };
    let err = NatsBus::connect_with(&url, stranger).await.expect_err("an unknown nkey connects");
    assert!(err.to_string().contains("refused this process's credentials"), "{err}");

    // A user's seed, but no client certificate, or one from another CA: the TLS handshake fails.
    let no_cert = NatsOptions { tls: NatsTls { ca_file: Some(nats.pki.ca.clone()), client_cert: None }, ..role_options(&nats, "sealer") };
    NatsBus::connect_with(&url, no_cert).await.expect_err("a client without a certificate connects");
    let other_ca = NatsOptions {
        tls: NatsTls {
            ca_file: Some(nats.pki.ca.clone()),
            client_cert: Some((nats.pki.stranger_cert.clone(), nats.pki.stranger_key.clone())),
        },
        ..role_options(&nats, "sealer")
    };
    NatsBus::connect_with(&url, other_ca).await.expect_err("a client with another CA's certificate connects");
    // Without the fleet's CA the server's certificate is not trusted.
    let no_ca = NatsOptions { tls: NatsTls::default(), ..role_options(&nats, "sealer") };
    NatsBus::connect_with(&url, no_ca).await.expect_err("a client that does not know the CA connects");

    // A service whose config names no user stops at once with one error line, instead of retrying.
    let config = dir.path().join("no-user.toml");
    let table = nats.nats_table("sealer");
    let table: String = table.lines().filter(|l| !l.starts_with("nkey_file")).map(|l| format!("{l}\n")).collect();
    std::fs::write(
        &config,
        format!(
            "bus = {}\n[[repo]]\nname = \"local\"\ntype = \"posix\"\npath = {}\n{table}",
            strata_integration::config::toml_string(&url),
            strata_integration::config::toml_string(&dir.subdir("repo").display().to_string()),
        ),
    )
    .unwrap();
    let mut sealer = Service::spawn(&bins, "strata-sealer", &config, dir.path());
    sealer.allow_log(r"authorization violation");
    let status = sealer.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{status}");
    let log = std::fs::read_to_string(sealer.log_file()).unwrap();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("refused this process's credentials"), "{log}");
}

/// A server with plain user/password authorization (no TLS), for `user` and `password_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_file_log_in_and_a_wrong_password_is_refused() {
    let dir = TestDir::new("bus_security_password");
    let mut server = NatsServer::start_with(&dir, "nats", "authorization { users = [ { user: strata, password: \"s3cret pass\" } ] }\n", &[]);
    // The wrong password and the missing user below.
    server.allow_log(r"authentication error");
    let secrets = dir.subdir("secrets");
    let right = secrets.join("right");
    std::fs::write(&right, "s3cret pass\n").unwrap();
    let wrong = secrets.join("wrong");
    std::fs::write(&wrong, "guess\n").unwrap();
    let login = |password_file: &std::path::Path| NatsOptions {
        auth: NatsAuth::UserPassword { user: "strata".into(), password_file: password_file.to_path_buf() },
        ..Default::default()
    };
    let bus = NatsBus::connect_with(&server.url(), login(&right)).await.expect("the right password logs in");
    bus.publish_work(Queue::Seal, Bytes::from_static(b"x")).await.unwrap();
    let err = NatsBus::connect_with(&server.url(), login(&wrong)).await.expect_err("a wrong password logs in");
    assert!(err.to_string().contains("refused this process's credentials"), "{err}");
    let err = NatsBus::connect_with(&server.url(), NatsOptions::default()).await.expect_err("no user logs in");
    assert!(matches!(err, BusError::Setup(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_may_not_create_the_streams_waits_for_an_uploader() {
    let dir = TestDir::new("bus_security_wait");
    let bins = StrataBins::locate();
    let mut nats = SecureNats::start(&dir, &bins);
    // The sealer's refused stream creates, checked below.
    nats.server.allow_log(r#"Publish Violation - Subject "\$JS\.API\.STREAM\.CREATE\."#);
    let config = dir.path().join("sealer.toml");
    std::fs::write(
        &config,
        format!(
            "bus = {}\n[[repo]]\nname = \"local\"\ntype = \"posix\"\npath = {}\n{}",
            strata_integration::config::toml_string(&nats.url()),
            strata_integration::config::toml_string(&dir.subdir("repo").display().to_string()),
            nats.nats_table("sealer"),
        ),
    )
    .unwrap();
    let mut sealer = Service::spawn(&bins, "strata-sealer", &config, dir.path());
    // No stream yet, and the sealer's user may not create one: it retries, saying why.
    sealer.wait_for_log("NATS is not reachable yet; retrying.*stream STRATA_SEAL: jetstream request timed out", Duration::from_secs(60));
    let _uploader = connect_as(&nats, "uploader").await;
    sealer.wait_for_log("sealer running", Duration::from_secs(60));
    // The refused creates are the only permission the sealer's user lacked.
    let server_log = std::fs::read_to_string(nats.server.log_file()).unwrap();
    for line in server_log.lines().filter(|l| l.contains("Violation")) {
        assert!(line.contains("Publish Violation - Subject \"$JS.API.STREAM.CREATE.STRATA_SEAL\""), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealer_can_neither_ask_for_a_commit_nor_read_a_collectors_fetch_replies() {
    let dir = TestDir::new("bus_security_sealer");
    let bins = StrataBins::locate();
    let mut nats = SecureNats::start(&dir, &bins);
    // What the sealer may not do, tried on purpose below.
    nats.server.allow_log(r"(Publish|Subscription) Violation");
    let uploader = connect_as(&nats, "uploader").await;
    let collector = connect_as(&nats, "collector").await;
    let sealer = connect_as(&nats, "sealer").await;

    // The collector may ask for commits, the sealer may not; both may send sealed chunks.
    collector.publish_commit(Bytes::from_static(b"commit")).await.expect("the collector's commit request");
    assert_eq!(uploader.queue_depth(Queue::Upload).await.unwrap(), 1);
    let err = sealer.publish_commit(Bytes::from_static(b"forged")).await.expect_err("a sealer published a commit");
    assert!(matches!(err, BusError::PublishFailed { .. }), "{err}");
    sealer.publish_work(Queue::Upload, Bytes::from_static(b"chunk")).await.expect("the sealer's sealed chunk");
    assert_eq!(uploader.queue_depth(Queue::Upload).await.unwrap(), 2, "the forged commit was stored");
    // The uploaders take both, and know which came on the commit subject.
    let mut work = uploader.work(Queue::Upload).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = work.next_within(Duration::from_secs(10)).await.unwrap().expect("a queued message");
        seen.push((d.payload().clone(), d.commit_allowed()));
        d.ack().await.unwrap();
    }
    seen.sort();
    assert_eq!(seen, vec![(Bytes::from_static(b"chunk"), false), (Bytes::from_static(b"commit"), true)]);

    // A sealer's subscription to fetch replies is refused by the server, and gets nothing.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<String>();
    let seed = std::fs::read_to_string(&nats.key("sealer").seed_file).unwrap();
    let seed = seed.lines().find(|l| !l.starts_with('#')).unwrap().to_string();
    let spy = async_nats::ConnectOptions::with_nkey(seed)
        .add_root_certificates(nats.pki.ca.clone())
        .add_client_certificate(nats.pki.client_cert.clone(), nats.pki.client_key.clone())
        .custom_inbox_prefix("_INBOX_sealer")
        .event_callback(move |e| {
            let tx = events_tx.clone();
            async move {
                let _ = tx.send(e.to_string());
            }
        })
        .connect(nats.url())
        .await
        .expect("the sealer's user connects");
    let mut spied = spy.subscribe("strata.fetch.reply.>").await.unwrap();
    spy.flush().await.unwrap();
    let refusal = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = events.recv().await.expect("event channel open");
            if e.contains("Permissions Violation") {
                return e;
            }
        }
    })
    .await
    .expect("the server did not refuse the sealer's subscription");
    assert!(refusal.contains("strata.fetch.reply.>"), "{refusal}");
    let reply = strata_messages::subjects::fetch_reply("job-1", 1);
    let mut answers = collector.subscribe(&reply, None).await.unwrap();
    uploader.publish_event(&reply, Bytes::from_static(b"sealed chunk")).await.unwrap();
    uploader.flush().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), answers.next()).await.expect("the collector's answer");
    assert_eq!(got, Some(Bytes::from_static(b"sealed chunk")));
    // The server refused the subscription before the answer was published: nothing can be on its way.
    assert!(futures::FutureExt::now_or_never(spied.next()).is_none(), "the sealer read a fetch reply");

    // A replicator shares and takes its own work.
    let replicator = connect_as(&nats, "replicator").await;
    replicator.publish_work_once(Queue::Replicate, "task-1", Bytes::from_static(b"task")).await.unwrap();
    let mut tasks = replicator.work(Queue::Replicate).await.unwrap();
    let task = tasks.next_within(Duration::from_secs(10)).await.unwrap().expect("the replication task");
    assert_eq!(task.payload(), &Bytes::from_static(b"task"));
    task.ack().await.unwrap();
    // A sealer only takes plain chunks; it cannot make some up.
    sealer.publish_work(Queue::Seal, Bytes::from_static(b"plain")).await.expect_err("a sealer fed its own queue");
}

#[test]
fn a_backup_and_a_restore_work_with_every_service_on_its_own_user() {
    let dir = TestDir::new("bus_security_backup");
    let bins = StrataBins::locate();
    let nats = SecureNats::start(&dir, &bins);
    // Declared before the cluster so they are dropped after it: a cluster shutting down may still push WAL.
    let (mut uploader, mut sealer, mut collector);
    let setup = Setup::new(&dir, &nats.url(), "", &[]);
    // The config is the database host's: the strata command (backup, archive-push) and the collector.
    setup.append_config(&nats.nats_table("collector"));
    let env = |role: &str| nats.role_env(role);
    let (sealer_metrics, uploader_metrics) = (reserve_port(), reserve_port());
    let spawn = |name: &str, role: &str| {
        let mut env = env(role);
        let metrics = match role {
            "sealer" => Some(("STRATA_METRICS__SEALER", &sealer_metrics)),
            "uploader" => Some(("STRATA_METRICS__UPLOADER", &uploader_metrics)),
            _ => None,
        };
        if let Some((key, port)) = metrics {
            env.push((key.to_string(), format!("127.0.0.1:{}", port.get())));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Service::spawn_with_env(&setup.bins, name, &setup.config, setup.dir.path(), &env)
    };
    // The uploader first: only its user may create the streams (the others would wait for it).
    uploader = spawn("strata-uploader", "uploader");
    uploader.wait_for_log("uploader running", Duration::from_secs(60));
    sealer = spawn("strata-sealer", "sealer");
    collector = spawn("strata-collector", "collector");
    sealer.wait_for_log("sealer running", Duration::from_secs(60));
    collector.wait_for_log("collector running", Duration::from_secs(60));

    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(2);
    let label = setup.backup("full");
    // The chunks took sealed direct connections, collector to sealer and sealer to uploader.
    for (port, series) in [
        (&sealer_metrics, "strata_bus_direct_messages_total{queue=\"seal\",side=\"received\"}"),
        (&uploader_metrics, "strata_bus_direct_messages_total{queue=\"upload\",side=\"received\"}"),
    ] {
        let text = scrape(port.get());
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        assert!(value > 0.0, "no chunk took a direct connection ({series} = {value})");
    }
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    assert_eq!(setup.backup_labels(), vec![label]);
    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");

    // Nothing was refused along the way (the server logs each refusal; clients log them as warnings).
    for s in [&uploader, &sealer, &collector] {
        let log = std::fs::read_to_string(s.log_file()).unwrap();
        assert!(!log.contains("Permissions Violation"), "{}:\n{log}", s.name());
        LogCheck::new().assert_clean(s.log_file());
    }
    let server_log = std::fs::read_to_string(nats.server.log_file()).unwrap();
    assert!(!server_log.contains("Permissions Violation"), "{server_log}");
    LogCheck::postgres().assert_clean(copy.log_file());
}
