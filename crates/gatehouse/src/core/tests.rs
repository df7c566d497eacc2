//! Tests of the change path against a real SQLite store: dry runs, the engage leak, duplicate
//! frames, and events delivered to subscribers only after their unit is committed.

use std::sync::Mutex as StdMutex;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{broadcast, watch};

use super::*;
use crate::bus::Qos;
use crate::store::sqlite::SqliteStore;
use crate::store::{EventFilter, LoadedDevice, StoredEvent, StoredMessage, TypeRecord, Write};

/// A bus that records what is published.
#[derive(Default)]
struct Recorder(StdMutex<Vec<Publish>>);

impl Bus for Recorder {
    fn publish(&self, topic: String, payload: Vec<u8>, qos: Qos) -> bool {
        self.0.lock().unwrap().push(Publish {
            topic,
            payload: String::from_utf8(payload).unwrap(),
            qos,
        });
        true
    }
}

impl Recorder {
    fn sent(&self) -> Vec<Publish> {
        self.0.lock().unwrap().clone()
    }
}

fn cfg() -> CoreConfig {
    CoreConfig {
        unknown_devices: UnknownPolicy::Register,
        presence_timeout_ms: 300_000,
        code_length: 4,
        ping_interval_ms: 10_000,
        skaben_keepalive_ms: 60_000,
        acon_pin_peers: false,
        // Some tests register thousands of boards at once.
        acon_max_new_boards_per_min: 0,
        acon_max_messages_per_sec: 0.0,
        skaben_max_packets_per_sec: 0.0,
        skaben_max_payload_bytes: 0,
        timezone: None,
    }
}

/// A connection of its own for board `id`, from 10.0.0.5.
fn conn(id: u64) -> AconConn {
    AconConn {
        id,
        ip: std::net::IpAddr::from([10, 0, 0, 5]),
        peer: format!("10.0.0.5:{}", 4000 + id),
        holds: None,
    }
}

const T0: i64 = 1_716_400_000_000;

struct Fixture {
    hub: Hub,
    store: Arc<dyn Store>,
    bus: Arc<Recorder>,
    /// One connection per board, kept as the gateway keeps it.
    conns: StdMutex<std::collections::HashMap<String, AconConn>>,
    _dir: tempfile::TempDir,
}

async fn fixture_with(wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("gatehouse.db")).unwrap());
    let store = wrap(inner);
    let bus = Arc::new(Recorder::default());
    let hub = Hub::load(store.clone(), cfg(), bus.clone(), T0)
        .await
        .unwrap();
    Fixture {
        hub,
        store,
        bus,
        conns: StdMutex::default(),
        _dir: dir,
    }
}

async fn fixture() -> Fixture {
    fixture_with(|s| s).await
}

impl Fixture {
    async fn events(&self, device: &str) -> Vec<StoredEvent> {
        let mut e = self
            .store
            .events(EventFilter {
                device: Some(device.into()),
                kind: None,
                limit: 10_000,
            })
            .await
            .unwrap();
        e.reverse();
        e
    }

    async fn kinds(&self, device: &str) -> Vec<String> {
        self.events(device)
            .await
            .into_iter()
            .map(|e| e.record.kind)
            .collect()
    }

    async fn messages(&self, device: &str) -> Vec<StoredMessage> {
        self.store.messages(device.into(), 10_000).await.unwrap()
    }

    fn devices(&self) -> std::collections::HashMap<String, Device> {
        self.hub.lock().devices.clone()
    }

    fn types(&self) -> Vec<skaben::DeviceType> {
        let mut t: Vec<_> = self
            .hub
            .lock()
            .types
            .values()
            .map(|t| t.def.clone())
            .collect();
        t.sort_by(|a, b| a.name.cmp(&b.name));
        t
    }

    async fn board_message(&self, text: &str, now: i64) {
        let raw = text.replace('\n', "\r\n");
        let msg = Message::parse(raw.as_bytes()).unwrap();
        let c = {
            let mut conns = self.conns.lock().unwrap();
            let n = conns.len() as u64 + 1;
            conns
                .entry(msg.id.clone())
                .or_insert_with(|| conn(n))
                .clone()
        };
        match self.hub.acon_message(raw.as_bytes(), &msg, &c, now) {
            AconOutcome::Answer { commit, .. } => {
                if let Some(c) = self.conns.lock().unwrap().get_mut(&msg.id) {
                    c.holds = Some(msg.id.clone());
                }
                commit.wait().await.unwrap()
            }
            AconOutcome::Refused { why, .. } => panic!("refused: {why:?}"),
        }
    }

    async fn packet(&self, topic: &str, payload: serde_json::Value, now: i64) {
        let p = payload.to_string();
        self.hub.skaben_packet(topic, p.as_bytes(), now);
        // Background units: wait until the store has caught up.
        self.store.submit(Vec::new()).wait().await.unwrap();
    }
}

const BOARD: &str = "ACon_V1.0\nID=1953\nSEND=1\nCOLS=2\nROWS=2\nBOX_ACC=0\nCLOSE\n";
const LOCK: &str = "b827eb0a1b2c";

/// A dry run returns exactly the effects the real run then has, and changes nothing: not the
/// state, not the store, not the bus.
#[tokio::test]
async fn a_dry_run_returns_the_effects_of_the_real_run_and_changes_nothing() {
    let f = fixture().await;
    f.board_message(BOARD, T0).await;
    f.packet(
        &format!("ask/lock/{LOCK}/cup"),
        json!({"timestamp": 0, "datahold": {"request": "all"}, "task_id": "1"}),
        T0,
    )
    .await;
    // An expired assignment makes the engage end it in the same unit.
    f.hub
        .execute(
            Command::Engage {
                id: "1953".into(),
                cell: 1,
                req: EngageRequest {
                    minutes: Some(1),
                    code: Some("1111".into()),
                    ..Default::default()
                },
            },
            "admin",
            T0,
        )
        .await
        .unwrap();
    let now = T0 + 120_000;
    let commands = [
        Command::Engage {
            id: "1953".into(),
            cell: 2,
            req: EngageRequest {
                minutes: Some(30),
                code: Some("1111".into()),
                single_use: Some(true),
                ..Default::default()
            },
        },
        Command::SetConfig {
            ty: "lock".into(),
            id: LOCK.into(),
            edit: ConfigEdit {
                body: json!({"closed": true, "timer": 10}),
                merge: true,
                if_match: None,
            },
        },
        Command::PutType {
            name: "rgb".into(),
            update: TypeUpdate {
                config: Some(json!({"RGB": "00FF00/1000/0/C"})),
                ..Default::default()
            },
        },
    ];
    for cmd in commands {
        let (devices, types, sent) = (f.devices(), f.types(), f.bus.sent());
        let (board_events, lock_events) = (
            f.events("acon/1953").await,
            f.events(&format!("lock/{LOCK}")).await,
        );
        let (dry_out, dry) = f.hub.dry_run(cmd.clone(), "admin", now).unwrap();
        assert!(
            !dry.events.is_empty() && !dry.writes.is_empty(),
            "{cmd:?}: a dry run shows the effects: {dry:?}"
        );
        // Nothing changed.
        f.store.submit(Vec::new()).wait().await.unwrap();
        assert_eq!(f.devices(), devices, "{cmd:?}: state");
        assert_eq!(f.types(), types, "{cmd:?}: types");
        assert_eq!(f.bus.sent(), sent, "{cmd:?}: bus");
        assert_eq!(f.events("acon/1953").await.len(), board_events.len());
        assert_eq!(
            f.events(&format!("lock/{LOCK}")).await.len(),
            lock_events.len()
        );
        // The real run: the same result and effects, and those effects happened.
        let mut real = None;
        let (out, commit) = f
            .hub
            .change(now, |st, fx| {
                let r = st.execute(cmd.clone(), "admin", fx);
                real = Some(fx.clone());
                r
            })
            .unwrap();
        commit.unwrap().wait().await.unwrap();
        let real = real.unwrap();
        assert_eq!(out, dry_out, "{cmd:?}: outcome");
        assert_eq!(real, dry, "{cmd:?}: effects");
        let new_sent = f.bus.sent()[sent.len()..].to_vec();
        assert_eq!(new_sent, real.publishes, "{cmd:?}: published");
        assert!(
            f.devices() != devices || f.types() != types,
            "{cmd:?}: the real run changed the state"
        );
    }
    let kinds = f.kinds("acon/1953").await;
    assert!(
        kinds.ends_with(&["assignment_expired".into(), "cell_engaged".into()]),
        "{kinds:?}"
    );
}

/// A failed engage used to end expired assignments in memory and return the error, leaving a
/// change the store never saw. Now checks come first: a refused engage changes nothing.
#[tokio::test]
async fn a_refused_engage_leaves_expired_assignments_for_a_unit_that_records_them() {
    let f = fixture().await;
    f.board_message(BOARD, T0).await;
    let engage = |cell: u32, code: &str, minutes: i64| Command::Engage {
        id: "1953".into(),
        cell,
        req: EngageRequest {
            minutes: Some(minutes),
            code: Some(code.into()),
            ..Default::default()
        },
    };
    f.hub
        .execute(engage(1, "1111", 1), "admin", T0)
        .await
        .unwrap();
    let later = T0 + 120_000;
    let before = f.devices();
    for (cmd, why) in [
        (engage(9, "2222", 5), "outside the matrix"),
        (engage(2, "3333", 0), "zero minutes"),
    ] {
        let err = f.hub.execute(cmd, "admin", later).await.unwrap_err();
        assert!(matches!(err, CoreError::Invalid { .. }), "{why}: {err:?}");
        assert_eq!(f.devices(), before, "{why}: nothing changed in memory");
    }
    assert!(
        !f.kinds("acon/1953")
            .await
            .contains(&"assignment_expired".to_string()),
        "nothing recorded"
    );
    // The expired code is free again; the engage that succeeds records the expiry with it.
    f.hub
        .execute(engage(2, "1111", 5), "admin", later)
        .await
        .unwrap();
    let kinds = f.kinds("acon/1953").await;
    assert!(
        kinds.ends_with(&["assignment_expired".into(), "cell_engaged".into()]),
        "{kinds:?}"
    );
    let dev = f.devices().remove("acon/1953").unwrap();
    let cells: Vec<u32> = dev.board().unwrap().desired.cells.keys().copied().collect();
    assert_eq!(cells, [2]);
}

/// The same frame ten times (a test client opening ten connections): ten message rows, one
/// reboot.
#[tokio::test]
async fn ten_identical_frames_are_ten_records_and_one_reboot() {
    let f = fixture().await;
    let frame = "ACon_V1.0\nID=77\nSEND=5\nRESET=1\nCOLS=2\nROWS=2\nBOX_ACC=0\nCLOSE\n";
    for i in 0..10 {
        f.board_message(frame, T0 + i).await;
    }
    assert_eq!(f.messages("acon/77").await.len(), 10);
    assert_eq!(
        f.kinds("acon/77").await,
        ["registered", "online", "rebooted"]
    );
    let dev = f.devices().remove("acon/77").unwrap();
    assert_eq!(dev.board().unwrap().reported.reboots, 1);
    assert_eq!(f.hub.stats.acon_messages.load(Ordering::Relaxed), 10);
}

/// A store whose commits wait for a gate: units are applied, in order, only once it opens.
struct Gated {
    inner: Arc<dyn Store>,
    queue: tokio::sync::mpsc::UnboundedSender<(Vec<Write>, oneshot::Sender<StoreResult<Seqs>>)>,
}

impl Gated {
    fn new(inner: Arc<dyn Store>, open: watch::Receiver<bool>) -> Gated {
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
            Vec<Write>,
            oneshot::Sender<StoreResult<Seqs>>,
        )>();
        let store = inner.clone();
        tokio::spawn(async move {
            let mut open = open;
            while let Some((writes, done)) = rx.recv().await {
                let _ = open.wait_for(|&o| o).await;
                let _ = done.send(store.submit(writes).seqs().await);
            }
        });
        Gated { inner, queue }
    }
}

impl Store for Gated {
    fn submit(&self, writes: Vec<Write>) -> Commit {
        let (done, rx) = oneshot::channel();
        let _ = self.queue.send((writes, done));
        Commit::new(rx)
    }
    fn load_devices(&self) -> crate::store::StoreFuture<'_, Vec<LoadedDevice>> {
        self.inner.load_devices()
    }
    fn load_types(&self) -> crate::store::StoreFuture<'_, Vec<TypeRecord>> {
        self.inner.load_types()
    }
    fn load_credentials(
        &self,
    ) -> crate::store::StoreFuture<'_, Vec<crate::store::CredentialRecord>> {
        self.inner.load_credentials()
    }
    fn messages(
        &self,
        device: String,
        limit: u32,
    ) -> crate::store::StoreFuture<'_, Vec<StoredMessage>> {
        self.inner.messages(device, limit)
    }
    fn events(&self, filter: EventFilter) -> crate::store::StoreFuture<'_, Vec<StoredEvent>> {
        self.inner.events(filter)
    }
    fn search_events(
        &self,
        search: crate::store::EventSearch,
    ) -> crate::store::StoreFuture<'_, Vec<StoredEvent>> {
        self.inner.search_events(search)
    }
    fn events_after(
        &self,
        filter: EventFilter,
        after: i64,
    ) -> crate::store::StoreFuture<'_, crate::store::EventsAfter> {
        self.inner.events_after(filter, after)
    }
    fn load_game(&self) -> crate::store::StoreFuture<'_, Vec<(String, String)>> {
        self.inner.load_game()
    }
    fn load_accounts(&self) -> crate::store::StoreFuture<'_, Vec<(String, String)>> {
        self.inner.load_accounts()
    }
    fn events_between(
        &self,
        from: i64,
        to: i64,
        after: i64,
        limit: u32,
    ) -> crate::store::StoreFuture<'_, Vec<StoredEvent>> {
        self.inner.events_between(from, to, after, limit)
    }
    fn rule_traces(
        &self,
        rule: String,
        limit: u32,
    ) -> crate::store::StoreFuture<'_, Vec<StoredEvent>> {
        self.inner.rule_traces(rule, limit)
    }
    fn close(&self) -> crate::store::StoreFuture<'_, ()> {
        self.inner.close()
    }
}

/// Events reach a subscriber only once their unit is committed, and then they are in the
/// store.
#[tokio::test]
async fn events_reach_subscribers_only_after_their_unit_is_committed() {
    let (open, gate) = watch::channel(true);
    let f = fixture_with(|inner| Arc::new(Gated::new(inner, gate))).await;
    let mut rx = f.hub.subscribe();
    open.send(false).unwrap();
    let raw = BOARD.replace('\n', "\r\n");
    let msg = Message::parse(raw.as_bytes()).unwrap();
    let AconOutcome::Answer { commit, .. } = f.hub.acon_message(raw.as_bytes(), &msg, &conn(1), T0)
    else {
        panic!("refused")
    };
    let mut commit = Box::pin(commit.wait());
    // The store holds the unit: no commit, and no event for the subscriber.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut commit)
            .await
            .is_err(),
        "committed while the store was holding it"
    );
    assert!(matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
    assert!(f.kinds("acon/1953").await.is_empty());
    open.send(true).unwrap();
    commit.await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.device.as_deref(), Some("acon/1953"));
    assert_eq!(first.event.kind(), "registered");
    let second = rx.recv().await.unwrap();
    assert_eq!(second.event.kind(), "online");
    assert_eq!(f.kinds("acon/1953").await, ["registered", "online"]);
    // Each carries the seq the store gave it.
    let stored = f
        .hub
        .store()
        .events(EventFilter {
            device: Some("acon/1953".into()),
            kind: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!([second.seq, first.seq], [stored[0].seq, stored[1].seq]);
    assert_eq!(first.stored(), &stored[1].record);
}

/// A subscriber that does not read is told it lagged; the packets go on being answered.
#[tokio::test]
async fn a_lagging_subscriber_is_told_and_slows_nothing() {
    let f = fixture().await;
    let mut rx = f.hub.subscribe();
    let mut last = None;
    // Two events per new board (registered, online): past the subscriber's buffer.
    for i in 0..(SUBSCRIBER_BUFFER / 2 + 100) {
        let text = format!("ACon_V1.0\r\nID={i}\r\nSEND=1\r\nCLOSE\r\n");
        let msg = Message::parse(text.as_bytes()).unwrap();
        match f
            .hub
            .acon_message(text.as_bytes(), &msg, &conn(i as u64 + 1), T0)
        {
            AconOutcome::Answer { commit, .. } => last = Some(commit),
            AconOutcome::Refused { why, .. } => panic!("refused: {why:?}"),
        }
    }
    last.unwrap().wait().await.unwrap();
    match rx.recv().await {
        Err(broadcast::error::RecvError::Lagged(n)) => assert!(n >= 200, "lagged {n}"),
        other => panic!("expected a lag notice, got {other:?}"),
    }
    // It carries on from the oldest event kept.
    assert!(rx.recv().await.is_ok());
}
