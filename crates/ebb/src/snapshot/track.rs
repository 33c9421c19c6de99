//! `ebb track` / `ebb untrack`: one owner of change tracking per file, and
//! the base snapshot ebb keeps for it in `.ebb/bases/`.
//!
//! The base is the file as it was when tracked, and after each archive the
//! file as archived: `ebb changed-ranges BASE FILE` then says what changed
//! since, and `ebb archive` reads only that (see `hsm::archive`).
//!
//! A base is cloned 4 MiB at a time without the daemon, and kept
//! only if the file's size, mtime and ctime did not move meanwhile: it is
//! exactly the content it claims to be, or there is none.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::plan::Plan;
use crate::catalog::{Catalog, StatSnap, Tracking};
use crate::sys::extents::{cannot_reflink, clone_range};
use crate::sys::handle::FileHandle;
use crate::tree::Tree;

/// Units a base is cloned by per call (4 MiB: at most 1024 extents).
const BASE_CALL_UNITS: usize = 16;

/// Longest owner name.
const MAX_OWNER: usize = 128;

/// Make `owner` the one owner of change tracking for `path`, with a base
/// snapshot of it now. Refused, naming the owner and since when, if another
/// holds it; tracking again as the same owner keeps the base as it is.
pub fn track(tree: &Tree, catalog: &mut Catalog, path: &Path, owner: &str) -> Result<Tracking> {
    check_owner(owner)?;
    let path = crate::hsm::managed_path(tree, path)?;
    let file = crate::hsm::open_checked(tree, &path)?;
    let identity = crate::hsm::identity_of(&file)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let tracking = match catalog.claim_tracking(&identity.handle, &path, owner, now)? {
        Ok(t) => t,
        Err(holder) => bail!(
            "{} is tracked by {} (since {}); only that owner can untrack it (ebb untrack {} --owner {})",
            path.display(),
            holder.owner,
            format_utc(holder.since),
            path.display(),
            holder.owner
        ),
    };
    if tracking.base.is_some() {
        return Ok(tracking);
    }
    let stat = StatSnap::of(&file.metadata()?);
    let version = catalog
        .file_by_handle(&identity.handle)?
        .filter(|rec| !rec.is_modified(&stat) && rec.resident.is_complete())
        .map(|rec| rec.version.id);
    match refresh_base(tree, catalog, &identity.handle, &path, &stat, version) {
        Ok(_) => Ok(catalog.tracking(&identity.handle)?.unwrap_or(tracking)),
        Err(e) => {
            // No base, no tracking: give the claim back.
            let _ = catalog.release_tracking(&identity.handle, owner);
            Err(e)
        }
    }
}

/// Stop `owner`'s tracking of `path` and remove its base.
pub fn untrack(tree: &Tree, catalog: &mut Catalog, path: &Path, owner: &str) -> Result<Tracking> {
    let path = crate::hsm::managed_path(tree, path)?;
    let file = crate::hsm::open_checked(tree, &path)?;
    let identity = crate::hsm::identity_of(&file)?;
    match catalog.release_tracking(&identity.handle, owner)? {
        Ok(t) => {
            if let Some(base) = &t.base {
                let _ = std::fs::remove_file(base);
            }
            Ok(t)
        }
        Err(Some(holder)) => bail!(
            "{} is tracked by {} (since {}), not by {owner}",
            path.display(),
            holder.owner,
            format_utc(holder.since)
        ),
        Err(None) => bail!("{} is not tracked", path.display()),
    }
}

/// Take a new base of `path` (which must still match `stat`) for the
/// tracked file `handle`, replacing the old one, and record it as holding
/// archived version `version`. Returns whether a base was kept.
pub fn refresh_base(
    tree: &Tree,
    catalog: &mut Catalog,
    handle: &FileHandle,
    path: &Path,
    stat: &StatSnap,
    version: Option<i64>,
) -> Result<bool> {
    let dir = tree.state_dir().join("bases");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let base = dir.join(&blake3::hash(handle.to_string().as_bytes()).to_hex()[..16]);
    let file = crate::hsm::open_managed(tree, path)?;
    let kept = clone_unchanged(&file, path, &base, stat)?;
    catalog.set_tracking_base(
        handle,
        kept.then_some(base.as_path()),
        version.filter(|_| kept),
    )?;
    Ok(kept)
}

/// Clone `file` (at `src`) to `dst` a few extents per call; keep it only
/// if `file` still matches `stat` before and after.
fn clone_unchanged(file: &File, src: &Path, dst: &Path, stat: &StatSnap) -> Result<bool> {
    if StatSnap::of(&file.metadata()?) != *stat {
        return Ok(false);
    }
    let mut tmp = dst.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let out = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let cloned = (|| -> Result<()> {
        let block = nix::sys::statvfs::fstatvfs(file)?.block_size();
        let plan = Plan::new(stat.size, block);
        for unit in (0..plan.units()).step_by(BASE_CALL_UNITS) {
            let bytes = plan.bytes(unit..(unit + BASE_CALL_UNITS).min(plan.units()));
            clone_range(file.as_fd(), bytes.start, bytes.end - bytes.start, out.as_fd(), bytes.start)
                .map_err(|e| {
                    if cannot_reflink(&e) {
                        anyhow::anyhow!(
                            "{} is on {}, which cannot share blocks (reflink): tracking keeps a base snapshot, which needs XFS made with reflink=1 or btrfs",
                            src.display(),
                            super::start::filesystem_name(file)
                        )
                    } else {
                        anyhow::Error::new(e).context(format!("cloning {}", src.display()))
                    }
                })?;
        }
        out.sync_all()?;
        Ok(())
    })();
    let unchanged = StatSnap::of(&file.metadata()?) == *stat;
    match cloned {
        Ok(()) if unchanged => {
            std::fs::rename(&tmp, dst)
                .with_context(|| format!("putting the base in place at {}", dst.display()))?;
            Ok(true)
        }
        other => {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(dst);
            other.map(|()| false)
        }
    }
}

fn check_owner(owner: &str) -> Result<()> {
    if owner.is_empty()
        || owner.len() > MAX_OWNER
        || !owner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c))
    {
        bail!(
            "owner {owner:?} is not a valid name: use 1 to {MAX_OWNER} letters, digits and - _ . @ :"
        );
    }
    Ok(())
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC), from the
/// days-to-civil algorithm (H. Hinnant).
pub fn format_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_600_000), "2026-11-25T09:46:40Z");
    }

    #[test]
    fn owner_names_are_checked() {
        assert!(check_owner("nightly-backup").is_ok());
        assert!(check_owner("").is_err());
        assert!(check_owner("a b").is_err());
        assert!(check_owner(&"x".repeat(MAX_OWNER + 1)).is_err());
    }
}
