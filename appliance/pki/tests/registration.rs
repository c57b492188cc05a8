//! Registration and mutual TLS over real loopback sockets: a server thread that does what the
//! target and relay do (handshake, name the peer from the registry, answer a registration).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pki::{Authority, CaKind, CertRole, Peer, PkiDir, Transport};
use wire::{Frame, FrameReader, Role};

struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("pki-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves one connection: returns who the peer is, or the reason it was refused.
fn serve_one(
    authority: Arc<Authority>,
    listener: TcpListener,
) -> std::thread::JoinHandle<Result<Peer, String>> {
    std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut transport = Transport::server(tcp, Some(authority.server_config()))
            .map_err(|error| error.to_string())?;
        let peer = authority.identify(transport.peer_certificates())?;
        if peer != Peer::Anonymous {
            return Ok(peer);
        }
        let mut reader = FrameReader::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = transport.read(&mut buf).map_err(|error| error.to_string())?;
            if n == 0 {
                return Err("closed".into());
            }
            reader.feed(&buf[..n]);
            while let Some((raw, used)) = reader.peek().unwrap() {
                if let Frame::Register(request) = raw.decode().unwrap() {
                    let exporter = transport.exporter(pki::register::EXPORTER_LABEL).unwrap();
                    let mut out = Vec::new();
                    let result = authority.register(&request, &exporter);
                    match &result {
                        Ok(issued) => Frame::Registered {
                            ca: &issued.ca,
                            cert: &issued.cert,
                            proof: &issued.proof,
                        }
                        .encode(&mut out)
                        .unwrap(),
                        Err(reason) => {
                            Frame::Error { code: 9, message: reason }.encode(&mut out).unwrap()
                        }
                    }
                    transport.write_all(&out).unwrap();
                    return result.map(|_| Peer::Anonymous);
                }
                reader.consume(used);
            }
        }
    })
}

fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn register(
    authority: &Arc<Authority>,
    name: &str,
    passphrase: &str,
    node: &PkiDir,
) -> Result<(), String> {
    let (listener, addr) = listener();
    let server = serve_one(authority.clone(), listener);
    let client = pki::register::register_with(
        addr,
        name,
        Role::Agent,
        passphrase,
        node,
        Duration::from_secs(10),
    );
    let served = server.join().unwrap();
    client.map_err(|error| error.to_string())?;
    served.map(|_| ())
}

/// Connects with the node's registered credential and returns what the server made of it.
fn connect(
    authority: &Arc<Authority>,
    node: &PkiDir,
) -> (Result<Peer, String>, Result<(), String>) {
    let (listener, addr) = listener();
    let server = serve_one(authority.clone(), listener);
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let client = Transport::client(tcp, Some(node.upstream_config().unwrap()))
        .map(|_| ())
        .map_err(|error| error.to_string());
    (server.join().unwrap(), client)
}

#[test]
fn a_registered_agent_is_named_and_a_revoked_one_refused() {
    let scratch = Scratch::new("registered");
    let relay_dir = scratch.0.join("relay");
    let relay = Arc::new(Authority::open(&relay_dir, CaKind::Relay, "site-a").unwrap());
    let node = PkiDir::new(&scratch.0.join("agent"));
    let passphrase = relay.pki().new_passphrase(600).unwrap();
    assert_eq!(passphrase.len(), 39, "{passphrase}");
    // Case and dashes do not matter.
    let typed = passphrase.replace('-', "").to_lowercase();
    register(&relay, "web01", &typed, &node).unwrap();
    let (peer, client) = connect(&relay, &node);
    client.unwrap();
    let Peer::Node { name, role, serial } = peer.unwrap() else { panic!("anonymous") };
    assert_eq!((name.as_str(), role), ("web01", CertRole::Agent));

    // The passphrase registered one node.
    let other = PkiDir::new(&scratch.0.join("agent2"));
    let error = register(&relay, "web02", &passphrase, &other).unwrap_err();
    assert!(error.contains("the passphrase was already used"), "{error}");
    assert!(!other.is_registered());

    relay.pki().revoke("web01").unwrap();
    let (peer, _) = connect(&relay, &node);
    assert_eq!(
        peer.unwrap_err(),
        format!(
            "the certificate of agent \"web01\" (serial {serial}) was revoked at {} (Unix time)",
            relay
                .pki()
                .registry()
                .unwrap()
                .certs
                .iter()
                .find(|c| c.name == "web01")
                .unwrap()
                .revoked_unix
                .unwrap()
        )
    );
}

#[test]
fn wrong_and_expired_passphrases_are_refused() {
    let scratch = Scratch::new("passphrases");
    let relay = Arc::new(Authority::open(&scratch.0.join("relay"), CaKind::Relay, "").unwrap());
    let node = PkiDir::new(&scratch.0.join("agent"));
    relay.pki().new_passphrase(600).unwrap();
    let error = register(&relay, "web01", "AAAA-BBBB", &node).unwrap_err();
    assert!(error.contains("wrong passphrase"), "{error}");
    let expired = relay.pki().new_passphrase(1).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let error = register(&relay, "web01", &expired, &node).unwrap_err();
    assert!(error.contains("the passphrase has expired"), "{error}");
    // A bad name is refused before anything is sent.
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let error = pki::register::register_with(
        nowhere,
        "bad/name",
        Role::Agent,
        &expired,
        &node,
        Duration::from_secs(1),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("node name \"bad/name\" is not"), "{error}");
    assert!(!node.is_registered());
}

#[test]
fn another_sites_certificate_fails_the_handshake() {
    let scratch = Scratch::new("foreign");
    let ours = Arc::new(Authority::open(&scratch.0.join("ours"), CaKind::Relay, "a").unwrap());
    let theirs = Arc::new(Authority::open(&scratch.0.join("theirs"), CaKind::Relay, "b").unwrap());
    let node = PkiDir::new(&scratch.0.join("agent"));
    let passphrase = theirs.pki().new_passphrase(600).unwrap();
    register(&theirs, "web01", &passphrase, &node).unwrap();
    let (peer, client) = connect(&ours, &node);
    // Their node does not know our CA, so it refuses our server first; our server hears why.
    let client = client.unwrap_err();
    assert!(client.contains("invalid peer certificate: UnknownIssuer"), "{client}");
    let error = peer.unwrap_err();
    assert!(error.contains("received fatal alert: UnknownCA"), "{error}");
}

#[test]
fn an_answer_not_proven_by_the_passphrase_saves_nothing() {
    let exporter = [7u8; 32];
    let request = pki::register::Request::new("ABCD-EFGH", &exporter).unwrap();
    let forged = [0u8; 32];
    let error = request.finish(&exporter, b"ca", b"cert", &forged).unwrap_err().to_string();
    assert!(error.contains("is not proven by the passphrase"), "{error}");
}

#[test]
fn a_ca_of_the_other_kind_is_refused() {
    let scratch = Scratch::new("kind");
    let dir = scratch.0.join("pki");
    PkiDir::new(&dir).init_ca(CaKind::Relay, "").unwrap();
    let error = PkiDir::new(&dir).init_ca(CaKind::Target, "").unwrap_err().to_string();
    assert!(error.contains("belongs to a relay CA, not a target"), "{error}");
}
