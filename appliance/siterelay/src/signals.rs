//! Clean shutdown on SIGINT/SIGTERM: the signals are blocked in every thread (the mask is
//! inherited, so this runs before the role starts its threads) and one thread waits for them
//! with `sigwait`, then sets the stop flag the role polls. No handler runs in signal context.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

pub(crate) fn stop_on_signal() -> Result<Arc<AtomicBool>, String> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .map_err(|error| format!("cannot block SIGINT/SIGTERM: {error}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                log::info!("{signal}: shutting down cleanly (again to force)");
                flag.store(true, Ordering::Release);
            }
            // A second signal ends the process at once, as operators expect from Ctrl-C twice.
            if signals.wait().is_ok() {
                std::process::exit(130);
            }
        })
        .map_err(|error| format!("cannot start the signal thread: {error}"))?;
    Ok(stop)
}
