//! Closed-loop HTTP/1.1 load generator: N keep-alive connections, one request in flight on
//! each, for a fixed time, sending Stripe-signed `payment_intent.succeeded` events with a new
//! event id on every request.
//!
//! All request signatures are computed before the clock starts (one timestamp per run, well
//! inside the 300 s tolerance), so signing is not measured. A request is assembled from the
//! body template, its token and its signature with a few memcpys into a reused buffer, written
//! with one `write_all`, and its response is parsed (status line, Content-Length, body).
//!
//! ```text
//! loadgen --addr 127.0.0.1:18182 --path /webhooks/stripe --conns 64 --duration 10 \
//!         --warmup 1 --requests 400000 [--wrap] [--threads 2] [--secret whsec_test_bench]
//!         [--ids random|sequential]
//!         [--dump DIR --samples 8 [--dry-run]]
//! ```
//!
//! The last line of output is `RESULT key=value …` (see README.md). `ok_total` counts every
//! 2xx answer of the run, warm-up and drain included: it is what the inbox must hold.
//! Without `--wrap`, running out of pre-signed requests stops that connection and is reported
//! as `exhausted` (a wrapped request would be a dedup hit, not a new event).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ingest_bench::{die, run_seed, sign_v1, unix_now, Args, Template, DEFAULT_SECRET, TOKEN_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for one response before the request counts as an error.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

struct Plan {
    template: Template,
    seed: u64,
    /// `token` or `sequential_token`.
    token: fn(u64, u64) -> [u8; TOKEN_LEN],
    sigs: Vec<[u8; 64]>,
    /// Request line and fixed headers, up to and including `Stripe-Signature: t=<ts>,v1=`.
    head: Vec<u8>,
    /// `\r\nContent-Length: <n>\r\n\r\n`.
    tail: Vec<u8>,
    next: AtomicU64,
    wrap: bool,
    addr: String,
    warm_end: Instant,
    deadline: Instant,
}

#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    ok_window: u64,
    non2xx_window: u64,
    ok_total: u64,
    non2xx: u64,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    exhausted: u64,
    wrapped: u64,
    sent: u64,
    first_refusal: Option<String>,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        if let (Some(h), Some(oh)) = (self.hist.as_mut(), o.hist.as_ref()) {
            h.add(oh).expect("same bounds");
        }
        self.ok_window += o.ok_window;
        self.non2xx_window += o.non2xx_window;
        self.ok_total += o.ok_total;
        self.non2xx += o.non2xx;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.errors += o.errors;
        self.exhausted += o.exhausted;
        self.wrapped += o.wrapped;
        self.sent += o.sent;
        self.first_refusal = self.first_refusal.take().or(o.first_refusal);
        self.first_error = self.first_error.take().or(o.first_error);
    }
}

fn new_hist() -> Histogram<u64> {
    // Microseconds, 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Reads one response into `buf`; returns its status and whether the server will close.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, bool)> {
    use std::io::{Error, ErrorKind};
    let bad = |m: &str| Error::new(ErrorKind::InvalidData, m.to_owned());
    buf.clear();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 * 1024 {
            return Err(bad("response headers too long"));
        }
    };
    let head = std::str::from_utf8(&buf[..header_end]).map_err(|_| bad("non-UTF-8 headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut length = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| bad("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked responses are not supported"));
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let need = header_end + length.ok_or_else(|| bad("no Content-Length"))?;
    while buf.len() < need {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed mid-body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.len() > need {
        return Err(bad("bytes after the response (nothing was pipelined)"));
    }
    Ok((status, close))
}

async fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn connection(plan: Arc<Plan>) -> Tally {
    let mut t = Tally { hist: Some(new_hist()), ..Tally::default() };
    let n = plan.sigs.len() as u64;
    let mut out = Vec::with_capacity(plan.head.len() + 64 + plan.tail.len() + plan.template.len());
    let mut inbuf = Vec::with_capacity(16 * 1024);
    let mut stream: Option<TcpStream> = None;
    while Instant::now() < plan.deadline {
        if stream.is_none() {
            match connect(&plan.addr).await {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    t.errors += 1;
                    t.first_error.get_or_insert_with(|| format!("connect {}: {e}", plan.addr));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let mut i = plan.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            if !plan.wrap {
                t.exhausted += 1;
                break;
            }
            t.wrapped += 1;
            i %= n;
        }
        out.clear();
        out.extend_from_slice(&plan.head);
        out.extend_from_slice(&plan.sigs[i as usize]);
        out.extend_from_slice(&plan.tail);
        plan.template.write(&(plan.token)(plan.seed, i), &mut out);

        let s = stream.as_mut().expect("connected above");
        let start = Instant::now();
        t.sent += 1;
        let answer = tokio::time::timeout(RESPONSE_TIMEOUT, async {
            s.write_all(&out).await?;
            read_response(s, &mut inbuf).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in 15 s"))
        });
        let end = Instant::now();
        let in_window = start >= plan.warm_end && end <= plan.deadline;
        match answer {
            Ok((status, close)) => {
                let ok = (200..300).contains(&status);
                if ok {
                    t.ok_total += 1;
                } else {
                    t.non2xx += 1;
                    *t.statuses.entry(status).or_default() += 1;
                    t.first_refusal.get_or_insert_with(|| {
                        String::from_utf8_lossy(&inbuf[..inbuf.len().min(600)]).into_owned()
                    });
                }
                if in_window {
                    let us = (end - start).as_micros().clamp(1, 60_000_000) as u64;
                    t.hist.as_mut().expect("set").record(us).expect("within bounds");
                    if ok {
                        t.ok_window += 1;
                    } else {
                        t.non2xx_window += 1;
                    }
                }
                if close {
                    stream = None;
                }
            }
            Err(e) => {
                t.errors += 1;
                t.first_error.get_or_insert_with(|| format!("request: {e}"));
                stream = None;
            }
        }
    }
    t
}

/// utime + stime of this process, in seconds (clock ticks of 1/100 s).
fn own_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat; 12 and 13 after the ")" (which ends field 2).
    (ticks(11) + ticks(12)) / 100.0
}

fn dump_samples(
    dir: &str,
    count: u64,
    plan_sigs: &[[u8; 64]],
    template: &Template,
    token: fn(u64, u64) -> [u8; TOKEN_LEN],
    seed: u64,
    ts: i64,
) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| die(&format!("{dir}: {e}")));
    let n = plan_sigs.len() as u64;
    let count = count.min(n);
    for k in 0..count {
        // Spread over the set: first, last and evenly in between.
        let i = if count == 1 { 0 } else { k * (n - 1) / (count - 1) };
        let body = template.body(&token(seed, i));
        std::fs::write(format!("{dir}/{k}.body"), &body).expect("write sample body");
        let header = ingest_bench::signature_header(ts, &plan_sigs[i as usize]);
        std::fs::write(format!("{dir}/{k}.sig"), format!("{header}\n")).expect("write sample sig");
    }
    std::fs::write(format!("{dir}/timestamp"), format!("{ts}\n")).expect("write timestamp");
}

fn main() {
    let args = Args::parse(&["wrap", "dry-run"]);
    let addr = args.get("addr").unwrap_or("127.0.0.1:18182").to_owned();
    let path = args.get("path").unwrap_or("/webhooks/stripe").to_owned();
    let conns: usize = args.num("conns", 64);
    let duration: f64 = args.num("duration", 10.0);
    let warmup: f64 = args.num("warmup", 1.0);
    let requests: u64 = args.num("requests", 400_000);
    let threads: usize = args.num("threads", 2);
    let secret = args.get("secret").unwrap_or(DEFAULT_SECRET).to_owned();
    let token: fn(u64, u64) -> [u8; TOKEN_LEN] = match args.get("ids").unwrap_or("random") {
        "random" => ingest_bench::token,
        "sequential" => ingest_bench::sequential_token,
        other => die(&format!("--ids {other}: expected random or sequential")),
    };
    if conns == 0 || requests == 0 || duration <= 0.0 || threads == 0 {
        die("--conns, --requests, --duration and --threads must be positive");
    }

    // Pre-sign everything, on every core, before the clock starts.
    let ts = unix_now();
    let seed = run_seed();
    let template = Template::new("payment_intent.succeeded", ts);
    let signing = Instant::now();
    let mut sigs = vec![[0u8; 64]; requests as usize];
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = sigs.len().div_ceil(workers);
    std::thread::scope(|s| {
        for (w, part) in sigs.chunks_mut(per).enumerate() {
            let template = &template;
            let secret = secret.as_bytes();
            s.spawn(move || {
                let mut body = Vec::with_capacity(template.len());
                for (j, sig) in part.iter_mut().enumerate() {
                    let i = (w * per + j) as u64;
                    body.clear();
                    template.write(&token(seed, i), &mut body);
                    *sig = sign_v1(secret, ts, &body);
                }
            });
        }
    });
    eprintln!(
        "loadgen: signed {requests} requests ({} B bodies) in {:.1} s, t={ts}",
        template.len(),
        signing.elapsed().as_secs_f64()
    );
    if let Some(dir) = args.get("dump") {
        dump_samples(dir, args.num("samples", 8), &sigs, &template, token, seed, ts);
    }
    if args.flag("dry-run") {
        return;
    }

    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\n\
         Accept: */*; q=0.5, application/xml\r\nCache-Control: no-cache\r\n\
         Content-Type: application/json; charset=utf-8\r\nStripe-Signature: t={ts},v1="
    )
    .into_bytes();
    let tail = format!("\r\nContent-Length: {}\r\n\r\n", template.len()).into_bytes();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(warmup);
    let deadline = warm_end + Duration::from_secs_f64(duration);
    let plan = Arc::new(Plan {
        template,
        seed,
        token,
        sigs,
        head,
        tail,
        next: AtomicU64::new(0),
        wrap: args.flag("wrap"),
        addr: addr.clone(),
        warm_end,
        deadline,
    });

    let (total, cpu, stuck) = runtime.block_on(async {
        let tasks: Vec<_> = (0..conns).map(|_| tokio::spawn(connection(plan.clone()))).collect();
        tokio::time::sleep_until(warm_end.into()).await;
        let cpu0 = own_cpu_secs();
        tokio::time::sleep_until(deadline.into()).await;
        let cpu = own_cpu_secs() - cpu0;
        // In-flight requests finish (bounded by RESPONSE_TIMEOUT); then give up on the rest.
        let mut total = Tally { hist: Some(new_hist()), ..Tally::default() };
        let mut stuck = 0u64;
        let drain_until = tokio::time::Instant::now() + RESPONSE_TIMEOUT + Duration::from_secs(5);
        for task in tasks {
            match tokio::time::timeout_at(drain_until, task).await {
                Ok(Ok(t)) => total.merge(t),
                Ok(Err(e)) => die(&format!("connection task failed: {e}")),
                Err(_) => stuck += 1,
            }
        }
        (total, cpu, stuck)
    });
    runtime.shutdown_timeout(Duration::from_secs(1));

    let hist = total.hist.as_ref().expect("set");
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let rps = total.ok_window as f64 / duration;
    if let Some(r) = &total.first_refusal {
        eprintln!("loadgen: first non-2xx answer:\n{r}");
    }
    if let Some(e) = &total.first_error {
        eprintln!("loadgen: first error: {e}");
    }
    let statuses: Vec<String> = total.statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let line = format!(
        "RESULT rps={rps:.0} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.1} ok_window={} \
         non2xx_window={} ok_total={} non2xx={} statuses={} errors={} stuck={stuck} exhausted={} \
         wrapped={} sent={} conns={conns} window_s={duration} client_cpu_pct={:.0} body_bytes={}",
        ms(0.50),
        ms(0.90),
        ms(0.99),
        hist.max() as f64 / 1000.0,
        total.ok_window,
        total.non2xx_window,
        total.ok_total,
        total.non2xx,
        if statuses.is_empty() { "-".to_owned() } else { statuses.join(",") },
        total.errors,
        total.exhausted,
        total.wrapped,
        total.sent,
        100.0 * cpu / duration,
        plan.template.len(),
    );
    println!("{line}");
    let _ = std::io::stdout().flush();
}
