//! `info`: what msrsave sees on this node and which backend it would use, and why.

use anyhow::Result;
use msr_backend::allowlist::select_allowlist;
use msr_backend::device::select::open_backend;
use msr_backend::node::{format_cpu_list, hostname};
use serde_json::json;

use super::{line, shown, Context, Outcome};
use crate::{EXIT_OK, EXIT_USAGE};

pub fn info(ctx: &Context) -> Result<Outcome> {
    let node = &ctx.node;
    let mut h = String::new();
    let cpu = node.cpu_identity().map_err(|e| e.to_string());
    let online = node.online_cpus().map_err(|e| e.to_string());
    let selected = cpu.as_ref().ok().map(|id| {
        select_allowlist(id, &ctx.config.allowlist_dirs)
            .map(|p| shown(&p))
            .map_err(|e| e.to_string())
    });
    line(&mut h, format!("host            {}", hostname()));
    line(&mut h, format!("root            {}", shown(node.root())));
    match &cpu {
        Ok(id) => line(&mut h, format!("cpu             {id}")),
        Err(e) => line(&mut h, format!("cpu             unknown: {e}")),
    }
    match &online {
        Ok(c) => line(
            &mut h,
            format!("online cpus     {} ({})", format_cpu_list(c), c.len()),
        ),
        Err(e) => line(&mut h, format!("online cpus     unknown: {e}")),
    }
    line(
        &mut h,
        format!(
            "kernel          {}",
            node.kernel_release().unwrap_or_else(|| "?".into())
        ),
    );
    line(
        &mut h,
        format!(
            "msr-safe        {}",
            node.msr_safe_version()
                .unwrap_or_else(|| "not loaded".into())
        ),
    );
    line(
        &mut h,
        format!(
            "lockdown        {}",
            node.lockdown().unwrap_or_else(|| "none".into())
        ),
    );
    if let Some(sel) = &selected {
        match sel {
            Ok(p) => line(&mut h, format!("shipped list    {p}")),
            Err(e) => line(&mut h, format!("shipped list    none: {e}")),
        }
    }
    let opened = open_backend(node, &ctx.request());
    let (backend_json, code) = match &opened {
        Ok(b) => {
            line(
                &mut h,
                format!(
                    "backend         {} ({})",
                    b.device.kind(),
                    b.device.describe()
                ),
            );
            line(
                &mut h,
                format!(
                    "allowlist       {} ({} MSRs, {} writable, {})",
                    b.allowlist_origin,
                    b.allowlist.len(),
                    b.allowlist.writable_count(),
                    b.allowlist.digest()
                ),
            );
            for s in &b.skipped {
                line(
                    &mut h,
                    format!("skipped         {}: {}", s.backend, s.reason),
                );
            }
            for w in &b.warnings {
                line(&mut h, format!("warning         {w}"));
            }
            (
                json!({"backend": b.device.kind(), "device": b.device.describe(), "allowlist": b.allowlist_origin,
                       "msrs": b.allowlist.len(), "writable": b.allowlist.writable_count(),
                       "digest": b.allowlist.digest(), "skipped": b.skipped, "warnings": b.warnings}),
                EXIT_OK,
            )
        }
        Err(e) => {
            line(&mut h, format!("backend         none: {e}"));
            (json!({"backend": null, "error": e.to_string()}), EXIT_USAGE)
        }
    };
    let j = json!({
        "command": "info", "ok": code == EXIT_OK, "host": hostname(), "root": shown(node.root()),
        "cpu": cpu.as_ref().ok(), "online_cpus": online.as_ref().ok().map(|c| format_cpu_list(c)),
        "kernel": node.kernel_release(), "msr_safe": node.msr_safe_version(), "lockdown": node.lockdown(),
        "shipped_allowlist": selected.and_then(|s| s.ok()), "backend": backend_json,
    });
    Ok(Outcome::new(code, j, h))
}
