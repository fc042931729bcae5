//! The HTTP endpoint: `GET /metrics` (and `HEAD`), on a thread and a tokio
//! runtime of its own, so that no scrape takes the event loop's time: the
//! ring buffer is drained whatever the scrapers do.
//!
//! What the endpoint holds and spends is bounded: a connection has
//! `HEADER_TIMEOUT` to send each request's head (also the idle time
//! between requests) and `CONNECTION_DEADLINE` in all; at most
//! `MAX_CONNECTIONS` are open at once (fewer when descriptors are short),
//! a newer one closing the oldest idle one; requests are answered
//! `REQUEST_GAP` apart at most (`Pace`); an `accept` that fails is tried
//! again, never the end of the endpoint. The exposition is rendered at most
//! once per interval (`snapshot`), in the format the client asks for
//! (`format`), over TLS and behind basic authentication if a web config
//! says so (`web_config`).

mod format;
mod snapshot;
mod web_config;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE, VARY, WWW_AUTHENTICATE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    time::timeout,
};
use tokio_rustls::TlsAcceptor;

use self::{
    format::Format,
    snapshot::{Publish, Snapshots},
    web_config::{credentials, BasicAuth, WebConfig},
};
use super::{Export, Metrics, Store};

/// How long a client has to send a request's head, from the moment the
/// connection is ready for one: after the TLS handshake, and after the
/// previous response (so it is the idle timeout of a kept-alive connection
/// too). A scraper sends its head at once.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may last at all, whatever it does: a client that
/// reads its response slowly, or not at all, holds it no longer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);
/// Connections served at once, at most.
const MAX_CONNECTIONS: usize = 64;
/// Descriptors left to the rest of probe (`/proc` files, pidfds) whatever the
/// connections: the endpoint takes at most what is free beyond them.
const SPARE_DESCRIPTORS: usize = 16;
/// The least time between two requests' answers, all connections together:
/// 20 a second at most (see [`Pace`]).
const REQUEST_GAP: Duration = Duration::from_millis(50);
/// Largest request head: a scraper's is a few hundred bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long the endpoint waits before it tries `accept` again after an error
/// that is not about one connection (descriptors or memory short).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The answer to a plain HTTP request on the TLS port (as Go's servers do).
const PLAIN_HTTP_ON_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nThis endpoint serves HTTPS: use https://\n";

/// A bound listener, not yet serving: binding (and reading the web config)
/// first lets a port in use or a bad file fail before any program is loaded.
pub struct Endpoint {
    listener: std::net::TcpListener,
    address: SocketAddr,
    web: WebConfig,
}

impl Endpoint {
    pub fn bind(address: SocketAddr, web_config: Option<&Path>) -> Result<Self> {
        let web = web_config.map(WebConfig::load).transpose()?.unwrap_or_default();
        let listener = std::net::TcpListener::bind(address).map_err(|err| bind_error(address, &err))?;
        listener.set_nonblocking(true).context("cannot set up the metrics socket")?;
        let address = listener.local_addr().context("cannot set up the metrics socket")?;
        Ok(Self { listener, address, web })
    }

    /// Starts serving `store` and says where; returns the sink that feeds it
    /// each interval.
    pub fn serve(self, store: Arc<Mutex<Store>>) -> Result<Publish> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Password checks (bcrypt) run there, one at a time.
            .max_blocking_threads(1)
            .thread_name("probe-metrics")
            .build()
            .context("cannot start the metrics endpoint")?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(self.listener).context("cannot set up the metrics socket")?
        };
        let generation = Arc::new(AtomicU64::new(0));
        let scheme = if self.web.tls.is_some() { "https" } else { "http" };
        let server = Arc::new(Server {
            snapshots: Snapshots::new(Metrics(store.clone()), generation.clone()),
            tls: self.web.tls,
            auth: self.web.auth,
            pace: Pace::new(),
        });
        let cap = connection_cap();
        log::info!("metrics: at most {cap} connections at once");
        // At the event loop's priority, not below: the thread holds the
        // store's lock while it renders, and a low-priority holder that the
        // scrapers preempt stalls the event loop behind it (at niceness 10,
        // 20 scrapers cost a storm 10% of its records; at 0, none).
        std::thread::Builder::new()
            .name("probe-metrics".into())
            .spawn(move || runtime.block_on(accept(listener, cap, server)))
            .context("cannot start the metrics endpoint")?;
        eprintln!("probe: serving metrics at {scheme}://{}/metrics", self.address);
        Ok(Publish::new(Export(store), generation))
    }
}

/// Why the address cannot be bound, in a line.
fn bind_error(address: SocketAddr, err: &io::Error) -> anyhow::Error {
    let why = match err.raw_os_error() {
        Some(libc::EADDRINUSE) => "the port is in use".to_owned(),
        Some(libc::EADDRNOTAVAIL) => "is that an address of this machine?".to_owned(),
        Some(libc::EACCES) if address.port() < 1024 => {
            "a port below 1024 needs root or CAP_NET_BIND_SERVICE".to_owned()
        }
        Some(libc::EAFNOSUPPORT) => "this machine has no IPv6".to_owned(),
        _ => err.to_string(),
    };
    anyhow!("cannot serve metrics on {address}: {why}")
}

/// How many connections the endpoint serves at once: [`MAX_CONNECTIONS`],
/// or fewer if the descriptors free beyond [`SPARE_DESCRIPTORS`] are fewer,
/// so that the endpoint never leaves the rest of probe without any.
fn connection_cap() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return MAX_CONNECTIONS;
    }
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count());
    let free = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX).saturating_sub(open + SPARE_DESCRIPTORS);
    free.clamp(1, MAX_CONNECTIONS)
}

/// What every connection shares.
struct Server {
    snapshots: Snapshots,
    tls: Option<TlsAcceptor>,
    auth: Option<Arc<BasicAuth>>,
    pace: Pace,
}

/// The turns of the requests, all connections together: one every
/// [`REQUEST_GAP`] at most, in the order they came.
///
/// One rendering per interval is not all a scrape costs: its bytes are
/// copied through the kernel and read, and the scraper's own syscalls may
/// be traced. Unpaced, twenty scrapers in a loop got 5,000 answers a second
/// and took enough of the two CPUs that a storm lost 2 to 4% of its records
/// (every syscall traced), or ran three times slower (3.5 MB of series);
/// paced, neither. A Prometheus, one scrape every 15 s or so, never waits.
struct Pace {
    last: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new() -> Self {
        let now = tokio::time::Instant::now();
        Self { last: tokio::sync::Mutex::new(now.checked_sub(REQUEST_GAP).unwrap_or(now)) }
    }

    /// Waits for a request's turn. A request whose connection goes while
    /// it waits gives its turn up: waiting requests cannot push the turns
    /// of later ones further than one gap each.
    async fn turn(&self) {
        let mut last = self.last.lock().await;
        tokio::time::sleep_until(*last + REQUEST_GAP).await;
        *last = tokio::time::Instant::now();
    }
}

/// Accepts connections for as long as probe runs.
async fn accept(listener: TcpListener, cap: usize, server: Arc<Server>) {
    let connections = Arc::new(Mutex::new(Connections::new(cap)));
    let mut errors = AcceptErrors::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                let (step, say) = errors.step(&err);
                if let Some(line) = say {
                    eprintln!("{line}");
                }
                match step {
                    Step::Again => {}
                    // An idle connection makes room for a waiting one (out
                    // of descriptors, accept(2) fails whether one waits or
                    // not).
                    Step::MakeRoom if waiting(&listener) && lock(&connections).close_idle() => {
                        tokio::task::yield_now().await;
                    }
                    Step::MakeRoom | Step::Wait => tokio::time::sleep(ACCEPT_BACKOFF).await,
                }
                continue;
            }
        };
        let (place, closed) = Connections::admit(&connections);
        match place {
            Some(place) => {
                tokio::spawn(connection(stream, place, server.clone()));
            }
            None => log::debug!("metrics: {cap} connections busy: one more refused"),
        }
        if closed {
            // The closed connection's task lets its descriptor go before
            // the next `accept` takes one.
            tokio::task::yield_now().await;
        }
    }
}

/// What the endpoint does after an `accept` error.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Accept the next connection at once: the error was about this one.
    Again,
    /// Out of descriptors: close an idle connection for a waiting one, or
    /// wait.
    MakeRoom,
    /// Wait [`ACCEPT_BACKOFF`] and try again.
    Wait,
}

/// The `accept` errors seen: the first that is not about one connection is
/// said on stderr, once for the run (each one with -vv).
#[derive(Default)]
struct AcceptErrors {
    said: bool,
}

impl AcceptErrors {
    /// The next step after `err`, and the line to say, if any.
    fn step(&mut self, err: &io::Error) -> (Step, Option<String>) {
        if about_one_connection(err) {
            log::debug!("metrics: a connection went before it was accepted: {err}");
            return (Step::Again, None);
        }
        log::debug!("metrics: cannot accept a connection: {err}");
        let say = (!std::mem::replace(&mut self.said, true)).then(|| {
            format!(
                "probe: the metrics endpoint cannot accept connections for now ({err}); it tries again every {} ms (said once)",
                ACCEPT_BACKOFF.as_millis()
            )
        });
        match err.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => (Step::MakeRoom, say),
            _ => (Step::Wait, say),
        }
    }
}

/// Whether a connection waits to be accepted.
fn waiting(listener: &TcpListener) -> bool {
    let mut poll = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; no waiting.
    unsafe { libc::poll(&mut poll, 1, 0) == 1 }
}

/// Whether an `accept` error is about the connection it would have returned
/// (gone, refused by a firewall, a network error it had), as accept(2) says:
/// the next one can be accepted at once.
fn about_one_connection(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EINTR
                | libc::EPERM
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
        )
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The open connections, oldest first.
///
/// At the cap, a new connection closes the oldest one that is not in the
/// middle of a request (idle, in its TLS handshake or sending its head,
/// waiting for its turn, or having its response written), rather than wait
/// for one to end or be refused: a client that holds connections open
/// cannot then keep a scraper out, since the scraper's own connection is the
/// newest and is answered within milliseconds; waiting would queue the
/// scraper behind every held connection's timeout, and refusing would
/// refuse it. Only when every connection is in the middle of a request is
/// the new one closed at once.
struct Connections {
    cap: usize,
    next: u64,
    open: BTreeMap<u64, Open>,
}

struct Open {
    /// In the middle of a request.
    busy: Arc<AtomicBool>,
    /// Dropped to close the connection.
    _close: oneshot::Sender<()>,
}

/// A connection's place among the open ones, given back when it ends.
struct Place {
    id: u64,
    busy: Arc<AtomicBool>,
    /// Ready when the connection is to close.
    closed: oneshot::Receiver<()>,
    connections: Arc<Mutex<Connections>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        lock(&self.connections).open.remove(&self.id);
    }
}

impl Connections {
    fn new(cap: usize) -> Self {
        Self { cap, next: 0, open: BTreeMap::new() }
    }

    /// A place for a new connection, if one is or can be made; whether an
    /// idle connection was closed to make it.
    fn admit(this: &Arc<Mutex<Self>>) -> (Option<Place>, bool) {
        let mut connections = lock(this);
        let full = connections.open.len() >= connections.cap;
        if full && !connections.close_idle() {
            return (None, false);
        }
        let id = connections.next;
        connections.next += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let (close, closed) = oneshot::channel();
        connections.open.insert(id, Open { busy: busy.clone(), _close: close });
        (Some(Place { id, busy, closed, connections: this.clone() }), full)
    }

    /// Closes the oldest connection that is not in the middle of a request;
    /// whether there was one.
    fn close_idle(&mut self) -> bool {
        let oldest = self.open.iter().find(|(_, open)| !open.busy.load(Ordering::Relaxed)).map(|(&id, _)| id);
        oldest.is_some_and(|id| self.open.remove(&id).is_some())
    }
}

/// Marks a connection busy while it lives.
struct Busy(Arc<AtomicBool>);

impl Busy {
    fn mark(flag: Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Relaxed);
        Self(flag)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Serves one connection until it ends, is closed for a newer one, or
/// reaches its deadline.
async fn connection(stream: TcpStream, mut place: Place, server: Arc<Server>) {
    let _ = stream.set_nodelay(true);
    let busy = place.busy.clone();
    let served = async move {
        match server.tls.clone() {
            None => http(TokioIo::new(stream), server, busy).await,
            Some(acceptor) => {
                if let Ok(Some(stream)) = timeout(HANDSHAKE_TIMEOUT, handshake(stream, &acceptor)).await {
                    http(TokioIo::new(stream), server, busy).await;
                }
            }
        }
    };
    tokio::select! {
        _ = &mut place.closed => log::debug!("metrics: closed an idle connection for a newer one"),
        result = timeout(CONNECTION_DEADLINE, served) => {
            if result.is_err() {
                log::debug!("metrics: closed a connection at its deadline");
            }
        }
    }
}

/// The TLS handshake, unless the client speaks plain HTTP: that one is
/// told so and closed.
async fn handshake(
    mut stream: TcpStream,
    acceptor: &TlsAcceptor,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0; 1];
    if stream.peek(&mut first).await.ok()? == 0 {
        return None;
    }
    // A TLS connection begins with a handshake record.
    if first[0] != 0x16 {
        if first[0].is_ascii_uppercase() {
            let _ = stream.write_all(PLAIN_HTTP_ON_TLS).await;
            let _ = stream.shutdown().await;
            // Its request read before the close, lest the close reset the
            // connection and lose the answer.
            let mut rest = [0; 4096];
            let _ = timeout(Duration::from_secs(1), async {
                while matches!(stream.read(&mut rest).await, Ok(1..)) {}
            })
            .await;
        }
        return None;
    }
    acceptor.accept(stream).await.inspect_err(|err| log::debug!("metrics: TLS handshake: {err}")).ok()
}

/// HTTP/1.1 on a connection, with the timeouts of the endpoint.
async fn http<I>(io: I, server: Arc<Server>, busy: Arc<AtomicBool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let (server, busy) = (server.clone(), busy.clone());
        async move {
            // Waiting for its turn is not being busy: such a connection can
            // still make room for a newer one.
            server.pace.turn().await;
            let busy = Busy::mark(busy);
            let response = respond(request, &server).await;
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, service)
        .await;
    if let Err(err) = served {
        log::debug!("metrics: a connection ended: {err}");
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

async fn respond(request: Request<Incoming>, server: &Server) -> Response<Full<Bytes>> {
    if let Some(auth) = &server.auth {
        if !authorized(auth, &request).await {
            let mut response = plain(StatusCode::UNAUTHORIZED, "probe's metrics need a user and password\n");
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"probe\""));
            return response;
        }
    }
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "probe serves /metrics\n");
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "/metrics is read with GET or HEAD\n");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let format = Format::negotiate(request.headers().get(ACCEPT).and_then(|accept| accept.to_str().ok()));
    let Ok(body) = server.snapshots.body(format) else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n");
    };
    // HEAD: hyper sends the headers, with the length, and no body.
    let mut response = Response::new(Full::new(body));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    response.headers_mut().insert(VARY, HeaderValue::from_static("Accept"));
    response
}

/// Whether the request names a user with its password. The check runs on
/// the runtime's one blocking thread (bcrypt takes milliseconds of CPU on
/// purpose), and is dropped unstarted if the connection goes first.
async fn authorized(auth: &Arc<BasicAuth>, request: &Request<Incoming>) -> bool {
    let Some((user, password)) = request.headers().get(AUTHORIZATION).and_then(|h| credentials(h.as_bytes()))
    else {
        return false;
    };
    let auth = auth.clone();
    let check = tokio::task::spawn_blocking(move || auth.check(&user, &password));
    struct AbortUnstarted(tokio::task::AbortHandle);
    impl Drop for AbortUnstarted {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _abort = AbortUnstarted(check.abort_handle());
    check.await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let connections = Arc::new(Mutex::new(Connections::new(2)));
        let mut first = Connections::admit(&connections).0.unwrap();
        let mut second = Connections::admit(&connections).0.unwrap();
        let _busy = Busy::mark(second.busy.clone());
        let (third, closed) = Connections::admit(&connections);
        let mut third = third.unwrap();
        assert!(closed);
        assert!(first.closed.try_recv().is_err_and(|err| err == oneshot::error::TryRecvError::Closed));
        assert_eq!(second.closed.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        drop(first);
        assert_eq!(lock(&connections).open.len(), 2);
        // The busy one stays; the third, idle, goes for a fourth.
        let _fourth = Connections::admit(&connections).0.unwrap();
        assert_eq!(third.closed.try_recv(), Err(oneshot::error::TryRecvError::Closed));
        assert_eq!(second.closed.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        drop(third);
        // All busy: a fifth is refused.
        let _also_busy = Busy::mark(lock(&connections).open.values().last().unwrap().busy.clone());
        assert!(matches!(Connections::admit(&connections), (None, false)));
        drop(second);
        assert_eq!(lock(&connections).open.len(), 1);
    }

    #[test]
    fn bind_errors_say_why() {
        let error = |errno| bind_error("127.0.0.1:80".parse().unwrap(), &io::Error::from_raw_os_error(errno));
        assert!(error(libc::EADDRINUSE).to_string().ends_with("the port is in use"));
        assert!(error(libc::EADDRNOTAVAIL).to_string().contains("an address of this machine"));
        assert!(error(libc::EACCES).to_string().contains("CAP_NET_BIND_SERVICE"));
        assert!(error(libc::ENOMEM).to_string().starts_with("cannot serve metrics on 127.0.0.1:80: "));
    }

    #[test]
    fn accept_errors_are_survived_and_said_once() {
        let error = io::Error::from_raw_os_error;
        let mut errors = AcceptErrors::default();
        assert_eq!(errors.step(&error(libc::ECONNABORTED)), (Step::Again, None));
        let (step, said) = errors.step(&error(libc::EMFILE));
        assert_eq!(step, Step::MakeRoom);
        assert!(said.is_some_and(|line| line.starts_with("probe: ")
            && line.contains("Too many open files")
            && !line.contains('\n')));
        assert_eq!(errors.step(&error(libc::EMFILE)), (Step::MakeRoom, None));
        assert_eq!(errors.step(&error(libc::ENFILE)), (Step::MakeRoom, None));
        assert_eq!(errors.step(&error(libc::ENOBUFS)), (Step::Wait, None));
        assert_eq!(errors.step(&error(libc::ECONNRESET)), (Step::Again, None));
        let mut errors = AcceptErrors::default();
        assert!(matches!(errors.step(&error(libc::ENOMEM)), (Step::Wait, Some(_))));
    }

    #[test]
    fn the_cap_leaves_descriptors_to_the_rest_of_probe() {
        let cap = connection_cap();
        assert!((1..=MAX_CONNECTIONS).contains(&cap), "{cap}");
    }
}
