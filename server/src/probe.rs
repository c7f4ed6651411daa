//! `parley-server probe`: a SIP client that checks a deployment end to end, for people and for
//! Kubernetes Jobs. Two users sign in (each over its own connection, TLS verified against the
//! given CA), the second watches the first's presence, the first publishes and sends the second a
//! message; then both sign out. One line per step; exit status 0 only if every step passed.

use crate::home::auth::{Algorithm, hash};
use crate::sip::Message;
use crate::sip::framing::{Frame, Framer};
use crate::sip::message::{Limits, parse_datagram};
use crate::sip::params::parse_auth_params;
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProbeTransport {
    Udp,
    Tcp,
    Tls,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// The server to probe, `host:port` (a Home Server, or the Front-End of a domain).
    #[arg(long)]
    server: String,
    #[arg(long, value_enum, default_value_t = ProbeTransport::Tls)]
    transport: ProbeTransport,
    /// PEM CA certificates the server's certificate must chain to (required for TLS).
    #[arg(long, env = "PARLEY_PROBE_CA")]
    ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --server).
    #[arg(long)]
    server_name: Option<String>,
    /// The first user, e.g. alice@example.test.
    #[arg(long)]
    user: String,
    /// File holding the first user's password.
    #[arg(long, env = "PARLEY_PROBE_PASSWORD_FILE")]
    password_file: PathBuf,
    /// The second user, who watches the first and receives the message.
    #[arg(long)]
    peer: String,
    /// File holding the second user's password.
    #[arg(long, env = "PARLEY_PROBE_PEER_PASSWORD_FILE")]
    peer_password_file: PathBuf,
    /// How long each step may take.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

/// Runs the probe; prints a line per step and fails on the first step that fails.
pub fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let tag = format!("{:08x}", rand::random::<u32>());
    let step = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<String>| -> anyhow::Result<()> {
        let started = Instant::now();
        match f() {
            Ok(detail) => {
                println!("ok   {name} ({} ms){}", started.elapsed().as_millis(), detail);
                Ok(())
            }
            Err(e) => {
                println!("FAIL {name}: {e:#}");
                Err(e.context(format!("step {name:?} failed")))
            }
        }
    };
    let mut a = None;
    let mut b = None;
    step("connect", &mut || {
        a = Some(Client::connect(&args, &args.user, &args.password_file, timeout)?);
        b = Some(Client::connect(&args, &args.peer, &args.peer_password_file, timeout)?);
        let verified = match args.transport {
            ProbeTransport::Tls => ": TLS, certificate verified against the CA",
            _ => "",
        };
        Ok(format!(" to {}{verified}", args.server))
    })?;
    let (mut a, mut b) = (a.expect("connected"), b.expect("connected"));
    for c in [&mut a, &mut b] {
        let user = c.aor.clone();
        step(&format!("register {user}"), &mut || c.register(120).map(|_| String::new()))?;
    }
    let mut dialog = None;
    step(&format!("{} watches {}", b.aor, a.aor), &mut || {
        let ok = b.subscribe(&a.aor)?;
        let notify = b.expect_request("NOTIFY")?;
        if !String::from_utf8_lossy(&notify.body).contains("<basic>open</basic>") {
            bail!("the first NOTIFY does not show {} online: {}", a.aor, String::from_utf8_lossy(&notify.body));
        }
        dialog = Some(ok);
        Ok(String::new())
    })?;
    let note = format!("parley probe {tag}");
    step(&format!("{} publishes, {} is notified", a.aor, b.aor), &mut || {
        a.publish(&note)?;
        let deadline = Instant::now() + timeout;
        loop {
            let notify = b.expect_request("NOTIFY")?;
            if String::from_utf8_lossy(&notify.body).contains(&note) {
                return Ok(String::new());
            }
            if Instant::now() > deadline {
                bail!("no NOTIFY carries the published note");
            }
        }
    })?;
    let text = format!("hello from the parley probe {tag}");
    step(&format!("{} messages {}", a.aor, b.aor), &mut || {
        let to = b.aor.clone();
        std::thread::scope(|s| {
            let receiver = s.spawn(|| b.expect_request("MESSAGE"));
            let answer = a.transact(
                "MESSAGE",
                &format!("sip:{to}"),
                &format!("<sip:{to}>"),
                "Content-Type: text/plain\r\n",
                &text,
            )?;
            let got = receiver.join().map_err(|_| anyhow::anyhow!("receiver panicked"))??;
            if answer.status() != Some(200) {
                bail!("MESSAGE answered {}", answer.status().unwrap_or(0));
            }
            if String::from_utf8_lossy(&got.body) != text {
                bail!("received a different text: {:?}", String::from_utf8_lossy(&got.body));
            }
            Ok(String::new())
        })
    })?;
    step("sign out", &mut || {
        if let Some(ok) = dialog.take() {
            b.unsubscribe(&ok)?;
        }
        a.register(0)?;
        b.register(0)?;
        Ok(String::new())
    })?;
    Ok(())
}

/// A byte stream: TCP or TLS.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

enum Conn {
    Udp(UdpSocket),
    Stream(Box<dyn Stream>, Framer),
}

struct Client {
    conn: Conn,
    /// `user@domain`.
    aor: String,
    password: String,
    local: SocketAddr,
    transport: ProbeTransport,
    timeout: Duration,
    cseq: u32,
    call_id: String,
    tag: String,
    /// Requests that arrived while waiting for a response (already answered 200).
    inbound: VecDeque<Message>,
}

fn limits() -> Limits {
    Limits { max_headers: 128, max_message_bytes: 65_535 }
}

impl Client {
    fn connect(args: &ProbeArgs, aor: &str, password_file: &PathBuf, timeout: Duration) -> anyhow::Result<Client> {
        let aor = aor.trim_start_matches("sip:").to_ascii_lowercase();
        if !aor.contains('@') {
            bail!("{aor:?} is not user@domain");
        }
        let password = std::fs::read_to_string(password_file)
            .with_context(|| format!("reading {}", password_file.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_string();
        let remote = args
            .server
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", args.server))?
            .next()
            .with_context(|| format!("{} has no address", args.server))?;
        let (conn, local) = match args.transport {
            ProbeTransport::Udp => {
                let socket = UdpSocket::bind(if remote.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
                socket.connect(remote)?;
                let local = socket.local_addr()?;
                (Conn::Udp(socket), local)
            }
            ProbeTransport::Tcp | ProbeTransport::Tls => {
                let tcp =
                    TcpStream::connect_timeout(&remote, timeout).with_context(|| format!("connecting to {remote}"))?;
                tcp.set_nodelay(true)?;
                // A read waits at most a step's time; `recv` then reports the timeout.
                tcp.set_read_timeout(Some(timeout))?;
                tcp.set_write_timeout(Some(timeout))?;
                let local = tcp.local_addr()?;
                let stream: Box<dyn Stream> =
                    if args.transport == ProbeTransport::Tls { Box::new(tls(args, tcp)?) } else { Box::new(tcp) };
                (Conn::Stream(stream, Framer::new(limits())), local)
            }
        };
        Ok(Client {
            conn,
            aor,
            password,
            local,
            transport: args.transport,
            timeout,
            cseq: 0,
            call_id: format!("probe-{:016x}", rand::random::<u64>()),
            tag: format!("{:08x}", rand::random::<u32>()),
            inbound: VecDeque::new(),
        })
    }

    fn domain(&self) -> &str {
        self.aor.split_once('@').map_or("", |(_, d)| d)
    }

    fn user(&self) -> &str {
        self.aor.split_once('@').map_or("", |(u, _)| u)
    }

    fn via_transport(&self) -> &'static str {
        match self.transport {
            ProbeTransport::Udp => "UDP",
            ProbeTransport::Tcp => "TCP",
            ProbeTransport::Tls => "TLS",
        }
    }

    fn contact(&self) -> String {
        let t = match self.transport {
            ProbeTransport::Udp => "",
            ProbeTransport::Tcp => ";transport=tcp",
            ProbeTransport::Tls => ";transport=tls",
        };
        format!("<sip:{}@{}{t}>", self.user(), self.local)
    }

    fn send(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match &mut self.conn {
            Conn::Udp(s) => {
                s.send(data)?;
            }
            Conn::Stream(s, _) => {
                s.write_all(data)?;
                s.flush()?;
            }
        }
        Ok(())
    }

    /// The next message, or an error at the deadline.
    fn recv(&mut self, deadline: Instant) -> anyhow::Result<Message> {
        loop {
            let left = deadline.checked_duration_since(Instant::now()).context("timed out")?;
            match &mut self.conn {
                Conn::Udp(s) => {
                    s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                    let mut buf = vec![0u8; 65_535];
                    let n = s.recv(&mut buf).context("timed out waiting")?;
                    if buf[..n].iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return parse_datagram(&buf[..n], &limits())
                        .map_err(|e| anyhow::anyhow!("unparsable message: {}", e.reason));
                }
                Conn::Stream(s, framer) => {
                    match framer.next_frame().map_err(|e| anyhow::anyhow!("bad stream: {e:?}"))? {
                        Some(Frame::Message(m)) => {
                            return parse_datagram(&m, &limits())
                                .map_err(|e| anyhow::anyhow!("unparsable message: {}", e.reason));
                        }
                        Some(Frame::Ping) => continue,
                        None => {}
                    }
                    let mut buf = [0u8; 16 * 1024];
                    let n = s.read(&mut buf).context("timed out waiting")?;
                    if n == 0 {
                        bail!("the server closed the connection");
                    }
                    framer.push(&buf[..n]);
                }
            }
        }
    }

    /// Answers a request with 200, echoing its transaction headers.
    fn answer(&mut self, req: &Message) -> anyhow::Result<()> {
        let mut r = crate::sip::response::respond(req, 200, &self.tag);
        r.headers.push("Contact", self.contact());
        let bytes = r.to_bytes();
        self.send(&bytes)
    }

    /// The next request of `method` (answered 200), from what arrived before or what comes.
    fn expect_request(&mut self, method: &str) -> anyhow::Result<Message> {
        if let Some(i) = self.inbound.iter().position(|m| m.method() == Some(method)) {
            return Ok(self.inbound.remove(i).expect("found"));
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let m = self.recv(deadline).with_context(|| format!("no {method} arrived"))?;
            if m.is_request() {
                self.answer(&m)?;
                if m.method() == Some(method) {
                    return Ok(m);
                }
                self.inbound.push_back(m);
            }
        }
    }

    fn request(&mut self, method: &str, uri: &str, to: &str, extra: &str, body: &str) -> String {
        self.cseq += 1;
        let branch = crate::sip::routing::new_branch();
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{}>;tag={}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\nContact: {}\r\n\
             {extra}Content-Length: {}\r\n\r\n{body}",
            self.via_transport(),
            self.local,
            self.aor,
            self.tag,
            self.call_id,
            self.cseq,
            self.contact(),
            body.len()
        )
    }

    /// Sends a request, answers one digest challenge, returns the final response.
    fn transact(&mut self, method: &str, uri: &str, to: &str, extra: &str, body: &str) -> anyhow::Result<Message> {
        let mut creds = String::new();
        for _ in 0..2 {
            let req = self.request(method, uri, to, &format!("{extra}{creds}"), body);
            self.send(req.as_bytes())?;
            let cseq = self.cseq;
            let deadline = Instant::now() + self.timeout;
            let response = loop {
                let m = self.recv(deadline).with_context(|| format!("no final response to {method}"))?;
                if m.is_request() {
                    self.answer(&m)?;
                    self.inbound.push_back(m);
                    continue;
                }
                let ours = m.call_id() == self.call_id && m.cseq().is_some_and(|(n, _)| n == cseq);
                if ours && m.status().is_some_and(|s| s >= 200) {
                    break m;
                }
            };
            let (challenge, header) = match response.status() {
                Some(401) => ("WWW-Authenticate", "Authorization"),
                Some(407) => ("Proxy-Authenticate", "Proxy-Authorization"),
                _ => return Ok(response),
            };
            if !creds.is_empty() {
                bail!("{method}: credentials refused ({})", response.status().unwrap_or(0));
            }
            creds = self.credentials(&response, challenge, header, method, uri)?;
        }
        unreachable!("the loop returns")
    }

    /// Digest credentials (RFC 7616) for the first challenge whose algorithm this client knows.
    fn credentials(
        &self,
        resp: &Message,
        challenge: &str,
        header: &str,
        method: &str,
        uri: &str,
    ) -> anyhow::Result<String> {
        for value in resp.headers.get_all(challenge) {
            let Some(rest) = value.trim().strip_prefix("Digest") else { continue };
            let params: std::collections::HashMap<_, _> = parse_auth_params(rest).into_iter().collect();
            let alg = match params.get("algorithm") {
                None => Algorithm::Md5,
                Some(a) => match Algorithm::from_token(a) {
                    Some(a) => a,
                    None => continue,
                },
            };
            let (Some(realm), Some(nonce)) = (params.get("realm"), params.get("nonce")) else { continue };
            let cnonce = format!("{:08x}", rand::random::<u32>());
            let ha1 = hash(alg, &format!("{}:{realm}:{}", self.user(), self.password));
            let ha2 = hash(alg, &format!("{method}:{uri}"));
            let response = hash(alg, &format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
            return Ok(format!(
                "{header}: Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
                 response=\"{response}\", algorithm={}, qop=auth, nc=00000001, cnonce=\"{cnonce}\"\r\n",
                self.user(),
                alg.token()
            ));
        }
        bail!("no digest challenge this client can answer")
    }

    fn register(&mut self, expires: u32) -> anyhow::Result<Message> {
        let (uri, to) = (format!("sip:{}", self.domain()), format!("<sip:{}>", self.aor));
        let r = self.transact("REGISTER", &uri, &to, &format!("Expires: {expires}\r\n"), "")?;
        match r.status() {
            Some(200) => Ok(r),
            other => bail!("REGISTER answered {}", other.unwrap_or(0)),
        }
    }

    fn subscribe(&mut self, target: &str) -> anyhow::Result<Message> {
        self.call_id = format!("probe-{:016x}", rand::random::<u64>());
        let uri = format!("sip:{target}");
        let r = self.transact("SUBSCRIBE", &uri, &format!("<{uri}>"), "Event: presence\r\nExpires: 60\r\n", "")?;
        match r.status() {
            Some(200) => Ok(r),
            other => bail!("SUBSCRIBE answered {}", other.unwrap_or(0)),
        }
    }

    /// Ends the subscription the 200 `ok` started, inside its dialog (route set, remote target).
    fn unsubscribe(&mut self, ok: &Message) -> anyhow::Result<()> {
        let to = ok.headers.get("To").context("no To")?.to_string();
        let target = ok
            .headers
            .get("Contact")
            .and_then(|c| crate::sip::uri::NameAddr::parse(c).ok())
            .map(|n| n.raw_uri().to_string())
            .context("no Contact in the SUBSCRIBE's 200")?;
        let routes: String = ok
            .headers
            .get_all("Record-Route")
            .flat_map(crate::sip::params::split_list)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .map(|r| format!("Route: {r}\r\n"))
            .collect();
        let r = self.transact("SUBSCRIBE", &target, &to, &format!("{routes}Event: presence\r\nExpires: 0\r\n"), "")?;
        match r.status() {
            Some(200) => Ok(()),
            other => bail!("unsubscribe answered {}", other.unwrap_or(0)),
        }
    }

    fn publish(&mut self, note: &str) -> anyhow::Result<()> {
        let uri = format!("sip:{}", self.aor);
        let pidf = format!(
            "<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{uri}\">\
             <tuple id=\"probe\"><status><basic>open</basic></status><note>{note}</note></tuple></presence>"
        );
        let extra = "Event: presence\r\nExpires: 60\r\nContent-Type: application/pidf+xml\r\n";
        let r = self.transact("PUBLISH", &uri, &format!("<{uri}>"), extra, &pidf)?;
        match r.status() {
            Some(200) => Ok(()),
            other => bail!("PUBLISH answered {}", other.unwrap_or(0)),
        }
    }
}

/// A TLS client stream that trusts only `--ca` and checks the server's name.
fn tls(args: &ProbeArgs, tcp: TcpStream) -> anyhow::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    use rustls::pki_types::ServerName;
    let ca = args.ca.as_ref().context("--ca is needed for TLS: the CA the server's certificate chains to")?;
    let roots = crate::transport::tls::roots(ca)?;
    let config = rustls::ClientConfig::builder_with_provider(crate::transport::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = args.server.rsplit_once(':').map_or(args.server.as_str(), |(h, _)| h).trim_matches(['[', ']']);
    let name = args.server_name.clone().unwrap_or_else(|| host.to_string());
    let server_name = ServerName::try_from(name.clone()).with_context(|| format!("{name:?} is not a server name"))?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name)?;
    let mut tcp = tcp;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).with_context(|| format!("TLS handshake with {} (as {name})", args.server))?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}
