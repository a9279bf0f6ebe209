//! `holdfast-delay-relay --to ADDR --delay-ms MS PORT...`: listen on 127.0.0.1 on each PORT
//! and pass connections on to ADDR:PORT, every byte held MS milliseconds each way (half the
//! round trip a link should have). Runs until killed. Used by `scripts/bench/targets.sh`
//! with `BENCH_LINK`.

use std::time::Duration;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut to, mut delay, mut ports) = (None, None, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--to" => to = args.next(),
            "--delay-ms" => delay = args.next().and_then(|d| d.parse::<f64>().ok()),
            p => match p.parse::<u16>() {
                Ok(p) => ports.push(p),
                Err(_) => {
                    eprintln!("usage: holdfast-delay-relay --to ADDR --delay-ms MS PORT...");
                    return std::process::ExitCode::from(2);
                }
            },
        }
    }
    let (Some(to), Some(delay)) = (to, delay) else {
        eprintln!("usage: holdfast-delay-relay --to ADDR --delay-ms MS PORT...");
        return std::process::ExitCode::from(2);
    };
    let one_way = Duration::from_secs_f64(delay.max(0.0) / 1000.0);
    match holdfast_testkit::link::DelayRelay::start(&to, &ports, one_way) {
        Ok(_relay) => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Err(e) => {
            eprintln!("holdfast-delay-relay: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
