//! The MQTT gateway over real sockets: the embedded broker, the gateway's client (subscribe,
//! inbound packets, outbound publishes, reconnect after a broker restart), the port-in-use
//! error, and a MicroPython-style client with keep-alive 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse::bus::{Bus, PacketHandler, Qos};
use gatehouse::gateway::mqtt::{
    EmbeddedBroker, MqttBus, MqttSettings, client, connect, new_client_id,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Generous: a broken test fails instead of hanging; no test asserts a time.
const WAIT: Duration = Duration::from_secs(10);

/// Logs, shown for a failing test (`RUST_LOG` to choose).
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,mqtt5=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Connected,
    Packet(String, Vec<u8>),
}

struct Recorder(mpsc::UnboundedSender<Seen>);

impl PacketHandler for Recorder {
    fn packet(&self, topic: &str, payload: &[u8]) {
        let _ = self
            .0
            .send(Seen::Packet(topic.to_string(), payload.to_vec()));
    }
    fn connected(&self) {
        let _ = self.0.send(Seen::Connected);
    }
}

/// The gateway's client, running.
struct Gateway {
    bus: MqttBus,
    seen: mpsc::UnboundedReceiver<Seen>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Gateway {
    fn start(addr: SocketAddr) -> Gateway {
        let (bus, connection) = client(&addr.ip().to_string(), addr.port(), None, new_client_id());
        let (tx, seen) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(connection.run(Arc::new(Recorder(tx)), stop_rx));
        Gateway {
            bus,
            seen,
            stop,
            task,
        }
    }

    async fn next(&mut self) -> Seen {
        timeout(WAIT, self.seen.recv())
            .await
            .expect("timed out waiting for the handler")
            .expect("handler channel closed")
    }

    async fn expect_connected(&mut self) {
        assert_eq!(self.next().await, Seen::Connected);
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        timeout(WAIT, self.task)
            .await
            .expect("run() did not return after shutdown")
            .unwrap();
    }
}

/// A plain rumqttc client, as a device or a tool would be.
struct Plain {
    client: AsyncClient,
    publishes: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    subacks: mpsc::UnboundedReceiver<()>,
    task: JoinHandle<()>,
}

impl Plain {
    async fn connect(addr: SocketAddr, id: &str) -> Plain {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (ptx, publishes) = mpsc::unbounded_channel();
        let (stx, subacks) = mpsc::unbounded_channel();
        let (ctx, mut connacks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = ctx.send(());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = stx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = ptx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        timeout(WAIT, connacks.recv())
            .await
            .expect("plain client did not connect")
            .unwrap();
        Plain {
            client,
            publishes,
            subacks,
            task,
        }
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        timeout(WAIT, self.subacks.recv())
            .await
            .expect("no SUBACK")
            .unwrap();
    }

    async fn publish(&self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .unwrap();
    }

    async fn next(&mut self) -> (String, Vec<u8>) {
        timeout(WAIT, self.publishes.recv())
            .await
            .expect("timed out waiting for a publish")
            .unwrap()
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn inbound_packets_in_both_cases_and_outbound_publishes() {
    init_logs();
    let broker = EmbeddedBroker::start("127.0.0.1:0").await.unwrap();
    let addr = broker.local_addr();
    assert_ne!(addr.port(), 0);

    let mut gw = Gateway::start(addr);
    gw.expect_connected().await;

    let mut device = Plain::connect(addr, "device-b827eb0a1b2c").await;
    device.subscribe("lock/#").await;

    device
        .publish("ask/lock/b827eb0a1b2c/pong", br#"{"timestamp":1}"#)
        .await;
    assert_eq!(
        gw.next().await,
        Seen::Packet(
            "ask/lock/b827eb0a1b2c/pong".into(),
            br#"{"timestamp":1}"#.to_vec()
        )
    );
    device
        .publish("ASK/LOCK/B827EB0A1B2C/PONG", br#"{"timestamp":2}"#)
        .await;
    assert_eq!(
        gw.next().await,
        Seen::Packet(
            "ASK/LOCK/B827EB0A1B2C/PONG".into(),
            br#"{"timestamp":2}"#.to_vec()
        )
    );

    assert!(gw.bus.publish(
        "lock/all/ping".into(),
        br#"{"timestamp":3}"#.to_vec(),
        Qos::AtLeastOnce
    ));
    assert_eq!(
        device.next().await,
        ("lock/all/ping".to_string(), br#"{"timestamp":3}"#.to_vec())
    );
    assert!(gw.bus.publish(
        "lock/b827eb0a1b2c/ping".into(),
        b"q0".to_vec(),
        Qos::AtMostOnce
    ));
    assert_eq!(
        device.next().await,
        ("lock/b827eb0a1b2c/ping".to_string(), b"q0".to_vec())
    );

    // What is queued when shutdown comes is still sent.
    for i in 0..100u32 {
        assert!(gw.bus.publish(
            format!("lock/burst/{i}"),
            i.to_be_bytes().to_vec(),
            Qos::AtLeastOnce
        ));
    }
    let bus = gw.bus.clone();
    gw.stop().await;
    for i in 0..100u32 {
        assert_eq!(
            device.next().await,
            (format!("lock/burst/{i}"), i.to_be_bytes().to_vec())
        );
    }

    // A stopped client refuses, counts, and does not block.
    assert_eq!(bus.dropped(), 0);
    assert!(!bus.publish("lock/all/ping".into(), b"{}".to_vec(), Qos::AtMostOnce));
    assert_eq!(bus.dropped(), 1);

    drop(device);
    broker.shutdown().await;
    // Persistence is off: mqtt5's default would have created ./mqtt_storage here.
    assert!(!std::path::Path::new("mqtt_storage").exists());
}

#[tokio::test]
async fn oversized_and_invalid_publishes_are_refused_without_costing_the_connection() {
    init_logs();
    let broker = EmbeddedBroker::start("127.0.0.1:0").await.unwrap();
    let mut gw = Gateway::start(broker.local_addr());
    gw.expect_connected().await;
    let mut device = Plain::connect(broker.local_addr(), "device-big").await;
    device.subscribe("lock/#").await;

    assert!(!gw.bus.publish(
        "lock/all/cup".into(),
        vec![b'x'; 300 * 1024],
        Qos::AtLeastOnce
    ));
    assert!(
        !gw.bus
            .publish("lock/+/cup".into(), b"{}".to_vec(), Qos::AtLeastOnce)
    );
    assert_eq!(gw.bus.dropped(), 2);

    // Still connected: a 200 KiB config goes through, no reconnect in between.
    assert!(gw.bus.publish(
        "lock/all/cup".into(),
        vec![b'y'; 200 * 1024],
        Qos::AtLeastOnce
    ));
    let (topic, payload) = device.next().await;
    assert_eq!(topic, "lock/all/cup");
    assert_eq!(payload.len(), 200 * 1024);
    device.publish("ask/lock/x/pong", b"{}").await;
    assert_eq!(
        gw.next().await,
        Seen::Packet("ask/lock/x/pong".into(), b"{}".to_vec())
    );

    gw.stop().await;
    drop(device);
    broker.shutdown().await;
}

#[tokio::test]
async fn port_in_use_names_both_ways_out() {
    init_logs();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = EmbeddedBroker::start(&addr.to_string()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("--mqtt-listen"), "{text}");
    assert!(text.contains("--mqtt-url"), "{text}");
    assert!(text.contains("already in use"), "{text}");
    assert!(text.contains(&addr.to_string()), "{text}");

    // Through the convenience too.
    let settings = MqttSettings::Embedded {
        listen: addr.to_string(),
        auth: gatehouse::gateway::access::MqttAuth::Devices,
    };
    let text = connect(&settings, new_client_id())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("--mqtt-listen") && text.contains("--mqtt-url"),
        "{text}"
    );

    let text = EmbeddedBroker::start("not an address")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("--mqtt-listen") && text.contains("HOST:PORT"),
        "{text}"
    );
}

#[tokio::test]
async fn the_client_survives_a_broker_restart() {
    init_logs();
    let broker = EmbeddedBroker::start("127.0.0.1:0").await.unwrap();
    let addr = broker.local_addr();
    let mut gw = Gateway::start(addr);
    gw.expect_connected().await;

    broker.shutdown().await;
    let broker = EmbeddedBroker::start(&addr.to_string())
        .await
        .expect("restart on the same port");
    assert_eq!(broker.local_addr(), addr);

    // Reconnected and subscribed again.
    gw.expect_connected().await;
    let mut device = Plain::connect(addr, "device-after-restart").await;
    device.subscribe("lock/#").await;
    device.publish("ask/lock/b827eb0a1b2c/pong", b"after").await;
    assert_eq!(
        gw.next().await,
        Seen::Packet("ask/lock/b827eb0a1b2c/pong".into(), b"after".to_vec())
    );
    device.publish("ASK/LOCK/B827EB0A1B2C/PONG", b"AFTER").await;
    assert_eq!(
        gw.next().await,
        Seen::Packet("ASK/LOCK/B827EB0A1B2C/PONG".into(), b"AFTER".to_vec())
    );
    assert!(
        gw.bus
            .publish("lock/all/ping".into(), b"{}".to_vec(), Qos::AtLeastOnce)
    );
    assert_eq!(
        device.next().await,
        ("lock/all/ping".into(), b"{}".to_vec())
    );

    gw.stop().await;
    drop(device);
    broker.shutdown().await;
}

#[tokio::test]
async fn an_external_broker_that_is_down_at_start_is_waited_for() {
    init_logs();
    // A free port, nobody listening.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let settings = MqttSettings::External {
        url: format!("mqtt://{addr}"),
    };
    let gateway = connect(&settings, new_client_id()).await.unwrap();
    assert!(gateway.broker.is_none());
    assert_eq!(gateway.broker_address, addr.to_string());
    let (tx, mut seen) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(gateway.connection.run(Arc::new(Recorder(tx)), stop_rx));
    // A few failed attempts, then the broker comes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(seen.try_recv().is_err());
    let broker = EmbeddedBroker::start(&addr.to_string()).await.unwrap();
    assert_eq!(
        timeout(WAIT, seen.recv()).await.unwrap(),
        Some(Seen::Connected)
    );

    stop.send(true).unwrap();
    timeout(WAIT, task).await.unwrap().unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn the_embedded_convenience_connects_over_loopback() {
    init_logs();
    let settings = MqttSettings::Embedded {
        listen: "0.0.0.0:0".to_string(),
        auth: gatehouse::gateway::access::MqttAuth::Off,
    };
    let gateway = connect(&settings, new_client_id()).await.unwrap();
    let broker = gateway.broker.expect("embedded broker");
    let port = broker.local_addr().port();
    assert_eq!(gateway.broker_address, format!("127.0.0.1:{port}"));
    let (tx, mut seen) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(gateway.connection.run(Arc::new(Recorder(tx)), stop_rx));
    assert_eq!(
        timeout(WAIT, seen.recv()).await.unwrap(),
        Some(Seen::Connected)
    );
    stop.send(true).unwrap();
    timeout(WAIT, task).await.unwrap().unwrap();
    broker.shutdown().await;
}

/// MQTT 3.1.1 packets written by hand, as MicroPython's `umqtt.simple` sends them.
fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn mqtt_string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn connect_packet(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string("MQTT", &mut body);
    body.push(4); // protocol level: 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&keep_alive.to_be_bytes());
    mqtt_string(client_id, &mut body);
    let mut packet = vec![0x10];
    remaining_length(body.len(), &mut packet);
    packet.extend(body);
    packet
}

fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_string(topic, &mut body);
    body.extend_from_slice(payload);
    let mut packet = vec![0x30]; // QoS 0
    remaining_length(body.len(), &mut packet);
    packet.extend(body);
    packet
}

#[tokio::test]
async fn a_umqtt_style_client_with_keep_alive_zero_connects() {
    init_logs();
    let broker = EmbeddedBroker::start("127.0.0.1:0").await.unwrap();
    let mut gw = Gateway::start(broker.local_addr());
    gw.expect_connected().await;

    let mut sock = TcpStream::connect(broker.local_addr()).await.unwrap();
    sock.write_all(&connect_packet("umqtt_b827eb0a1b2c", 0))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    timeout(WAIT, sock.read_exact(&mut connack))
        .await
        .expect("no CONNACK")
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK, return code 0");

    sock.write_all(&publish_packet("ask/lock/b827eb0a1b2c/pong", b"{}"))
        .await
        .unwrap();
    assert_eq!(
        gw.next().await,
        Seen::Packet("ask/lock/b827eb0a1b2c/pong".into(), b"{}".to_vec())
    );

    sock.write_all(&[0xE0, 0x00]).await.unwrap(); // DISCONNECT
    gw.stop().await;
    broker.shutdown().await;
}
