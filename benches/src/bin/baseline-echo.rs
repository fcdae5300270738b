//! The baseline for end-to-end benchmarks: a plain glommio echo server with STAGE's
//! `packet=IN,OUT` framing and no Lua. Each core accepts on its own SO_REUSEPORT socket and
//! echoes every complete frame back, one write per read, exactly as `stage` batches replies;
//! the only thing it leaves out is the script. `stage`'s cost per round trip divided by this
//! one's is what "how much do we lose to Lua" means.
//!
//! Usage: baseline-echo ADDR [IN OUT]   (cores: one per CPU of the affinity mask)

use std::net::SocketAddr;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use stage_engine::codec::framing::{FrameSpec, Framing};
use stage_engine::node::affinity;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9200".into())
        .parse()?;
    let input = args.next().map_or(Ok(4096), |s| s.parse())?;
    let output = args.next().map_or(Ok(10240), |s| s.parse())?;
    let spec = FrameSpec {
        framing: Framing::Packet,
        input,
        output,
    };
    let cpus = affinity::allowed_cpus()?;
    let handles: Vec<_> = cpus
        .into_iter()
        .map(|cpu| {
            LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name("baseline-echo")
                .spawn(move || async move {
                    let listener = TcpListener::bind(addr).expect("bind");
                    loop {
                        match listener.accept().await {
                            Ok(stream) => {
                                glommio::spawn_local(echo(stream, spec)).detach();
                            }
                            Err(err) => eprintln!("accept: {err}"),
                        }
                    }
                })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("cannot start a core: {e}"))?;
    eprintln!("baseline-echo listening on {addr}");
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

async fn echo(mut stream: TcpStream, spec: FrameSpec) {
    let _ = stream.set_nodelay(true);
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    loop {
        let filled = input.len();
        let want = spec.input.saturating_sub(filled).clamp(1, 16 * 1024);
        input.resize(filled + want, 0);
        let n = match stream.read(&mut input[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        input.truncate(filled + n);
        loop {
            match spec.next_frame(&mut input) {
                Ok(Some(frame)) => out.extend_from_slice(&frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}
