//! `zigtorrent add SOURCE...`: check each source, keep it in the state folder's `added/`
//! (see [`crate::library`]), and say whether the client running on those folders picks it up
//! now or the next start will.

use crate::library;
use crate::settings::AddArgs;

/// Entry point of `zigtorrent add`. Every source is tried; the exit status is non-zero if
/// any could not be added.
pub fn add(args: AddArgs) -> anyhow::Result<()> {
    let s = args.load()?;
    std::fs::create_dir_all(&s.state)
        .map_err(|e| anyhow::anyhow!("cannot create state folder {}: {e}", s.state.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let running = crate::instance::running_pid(&s.state);
    let state = std::path::absolute(&s.state).unwrap_or_else(|_| s.state.clone());
    let mut failed = 0;
    for source in &args.sources {
        let result = runtime
            .block_on(library::resolve(source))
            .and_then(|resolved| {
                let stored = library::store(&s.state, &resolved)?;
                Ok((resolved.name(), stored))
            });
        match result {
            Ok((name, None)) => println!("{name}: already added"),
            Ok((name, Some(_))) => match running {
                Some(pid) => println!("{name}: handed to the running client (PID {pid})"),
                None => println!(
                    "{name}: no client is running on {}; it starts with the next `zigtorrent run` there",
                    state.display()
                ),
            },
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} not added", args.sources.len());
    }
    Ok(())
}
