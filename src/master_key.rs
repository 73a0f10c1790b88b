//! The master key's life cycle: where it comes from (`security.master_key` /
//! `LOWART_MASTER_KEY`, else the key file), the startup check that it opens every value the
//! database holds, and `lowart rotate-master-key`. A key file is created only for a
//! database that holds no sealed value.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use sea_orm::DatabaseConnection;

use crate::actors::store::{ResealSecrets, StoreActor, StoreError, sealed_key_ids};
use crate::config::{Secret, Settings};
use crate::crypto::{CryptoError, MasterKey, write_key_file};

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(
        "the database holds provider keys sealed under master key {sealed}, but no master key is configured and the key file {path} does not exist. Restore the key file from its backup (or set LOWART_MASTER_KEY to that key) and start again; no new key was created"
    )]
    Missing { sealed: String, path: String },
    #[error(
        "the database holds provider keys sealed under master key {sealed}, but the master key from {source_name} is {current}. Start with the key they were sealed under (restore it from its backup); change keys only with `lowart rotate-master-key`{hint}"
    )]
    Mismatch {
        sealed: String,
        current: String,
        source_name: String,
        /// Points at a key file staged by an interrupted rotation, if there is one.
        hint: String,
    },
    #[error(
        "no master key is configured and the key file {0} does not exist: there is no key to rotate"
    )]
    NoKey(String),
    #[error("the new master key is the current one ({0}); nothing to rotate")]
    SameKey(String),
    #[error(
        "{0} exists, left by an interrupted rotation: keep it until you know which key the database uses (the error of `lowart serve` names it), then remove it"
    )]
    StagedFileExists(String),
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the store did not answer: {0}")]
    Mailbox(#[from] MailboxError),
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Where the master key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `security.master_key` or `LOWART_MASTER_KEY`.
    Configured,
    /// `security.master_key_file`.
    File(PathBuf),
}

impl KeySource {
    fn name(&self) -> String {
        match self {
            KeySource::Configured => "security.master_key (LOWART_MASTER_KEY)".into(),
            KeySource::File(path) => format!("the key file {}", path.display()),
        }
    }
}

/// The master key for `serve`: the configured one, else the key file, which is created
/// only when the database holds no sealed value. Fails when a stored value was sealed
/// under another key.
pub async fn open_for_serve(
    settings: &Settings,
    db: &DatabaseConnection,
) -> Result<MasterKey, MasterKeyError> {
    let sealed = sealed_key_ids(db).await?;
    let (key, source) = match current(settings)? {
        Some(found) => found,
        None if sealed.is_empty() => {
            let path = &settings.security.master_key_file;
            let key = MasterKey::create_file(path)?;
            tracing::warn!(path = %path.display(), key_id = key.id(),
                "no master key configured: created a new one (mode 0600). Back it up, or set LOWART_MASTER_KEY; without it stored provider keys cannot be decrypted");
            (key, KeySource::File(path.clone()))
        }
        None => {
            return Err(MasterKeyError::Missing {
                sealed: sealed.join(", "),
                path: settings.security.master_key_file.display().to_string(),
            });
        }
    };
    check(&key, &source, &sealed)?;
    Ok(key)
}

/// The configured key, else the key file's; `None` when neither exists.
fn current(settings: &Settings) -> Result<Option<(MasterKey, KeySource)>, MasterKeyError> {
    if let Some(hex) = &settings.security.master_key {
        return Ok(Some((
            MasterKey::from_hex(hex.expose())?,
            KeySource::Configured,
        )));
    }
    let path = &settings.security.master_key_file;
    Ok(MasterKey::load_file(path)?.map(|key| (key, KeySource::File(path.clone()))))
}

fn check(key: &MasterKey, source: &KeySource, sealed: &[String]) -> Result<(), MasterKeyError> {
    let foreign: Vec<&str> = sealed
        .iter()
        .map(String::as_str)
        .filter(|id| *id != key.id())
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    // A rotation interrupted between its commit and the rename leaves the key in `.new`.
    let staged = match source {
        KeySource::File(path) => {
            let staged = sibling(path, "new");
            MasterKey::load_file(&staged)
                .ok()
                .flatten()
                .filter(|k| foreign.contains(&k.id()))
                .map(|_| (staged, path))
        }
        KeySource::Configured => None,
    };
    let hint = staged.map_or_else(String::new, |(staged, path)| {
        format!(
            ". {} holds that key (an interrupted rotation): move it over {}",
            staged.display(),
            path.display()
        )
    });
    Err(MasterKeyError::Mismatch {
        sealed: foreign.join(", "),
        current: key.id().to_string(),
        source_name: source.name(),
        hint,
    })
}

/// What `rotate` did, for the command to report.
#[derive(Debug)]
pub struct Rotation {
    pub old_id: String,
    pub new_id: String,
    pub resealed: usize,
    pub installed: Installed,
}

#[derive(Debug)]
pub enum Installed {
    /// The key file now holds the new key; the old one is kept in `backup`.
    File { path: PathBuf, backup: PathBuf },
    /// The key is configured: the operator must install `new_key` (shown once).
    Configured { new_key: Secret },
}

/// Re-seals every sealed value under a new key (`new_key`, or a fresh one) in one
/// transaction, then installs it. With a key file: the new key is staged next to it before
/// the transaction, the old file is copied to `<file>.<old id>.bak` (0600), and the
/// staged file is renamed over it. The gateway should be stopped meanwhile.
pub async fn rotate(
    settings: &Settings,
    db: DatabaseConnection,
    new_key: Option<&Secret>,
) -> Result<Rotation, MasterKeyError> {
    let sealed = sealed_key_ids(&db).await?;
    let Some((old, source)) = current(settings)? else {
        return Err(MasterKeyError::NoKey(
            settings.security.master_key_file.display().to_string(),
        ));
    };
    check(&old, &source, &sealed)?;
    let new_hex = match new_key {
        Some(hex) => hex.expose().trim().to_string(),
        None => MasterKey::generate_hex()?,
    };
    let new = MasterKey::from_hex(&new_hex)?;
    if new.id() == old.id() {
        return Err(MasterKeyError::SameKey(old.id().to_string()));
    }
    let old_id = old.id().to_string();
    let new_id = new.id().to_string();

    let staged = match &source {
        KeySource::File(path) => Some(stage(path, &old_id, &new_hex)?),
        KeySource::Configured => None,
    };
    let store = StoreActor::new(
        db,
        Arc::new(old),
        crate::actors::store::UsageOptions::from_settings(&settings.database),
        Arc::new(crate::telemetry::metrics::Metrics::new()),
    )
    .start();
    let resealed = store
        .send(ResealSecrets {
            new_key: Arc::new(new),
        })
        .await
        .map_err(MasterKeyError::from)
        .and_then(|r| r.map_err(MasterKeyError::from));
    let resealed = match resealed {
        Ok(n) => n,
        Err(e) => {
            if let Some((staged, _)) = &staged {
                let _ = std::fs::remove_file(staged);
            }
            return Err(e);
        }
    };
    let installed = match (source, staged) {
        (KeySource::File(path), Some((staged, backup))) => {
            std::fs::rename(&staged, &path).map_err(io_at(&path))?;
            sync_dir(&path);
            Installed::File { path, backup }
        }
        _ => Installed::Configured {
            new_key: Secret::new(new_hex),
        },
    };
    tracing::info!(from = %old_id, to = %new_id, resealed, "master key rotated");
    Ok(Rotation {
        old_id,
        new_id,
        resealed,
        installed,
    })
}

/// Writes the new key to `<file>.new` and copies the old file to `<file>.<old id>.bak`
/// (both 0600); answers both paths.
fn stage(path: &Path, old_id: &str, new_hex: &str) -> Result<(PathBuf, PathBuf), MasterKeyError> {
    let staged = sibling(path, "new");
    if staged.exists() {
        return Err(MasterKeyError::StagedFileExists(
            staged.display().to_string(),
        ));
    }
    let backup = sibling(path, &format!("{old_id}.bak"));
    let old_text = std::fs::read_to_string(path).map_err(io_at(path))?;
    if !backup.exists() {
        write_key_file(&backup, old_text.trim())?;
    }
    write_key_file(&staged, new_hex)?;
    Ok((staged, backup))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> MasterKeyError + '_ {
    move |source| MasterKeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Flushes the directory entry of a rename (best effort).
fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
