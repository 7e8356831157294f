//! `bootplane images list|add|remove|verify`: Talos boot assets on the same database and
//! images directory as `serve`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use super::{CliError, DataDir};
use crate::assets::{
    self, AddOutcome, AddRequest, Asset, AssetState, Images, ImagesError, ProgressFn,
    DEFAULT_FACTORY_URL, DEFAULT_RELEASE_URL,
};
use crate::config::DEFAULT_IMAGES_DIR;
use crate::db::Db;
use crate::ops::images::{
    parse_image_input, parse_schematic_input, Bases, ImageInput, LocalFiles, SchematicInput,
};
use crate::ops::OpsError;

#[derive(Debug, Args)]
pub struct ImagesDir {
    /// Directory holding <version>/vmlinuz-<arch> and initramfs-<arch>.xz
    #[arg(long, env = "BOOTPLANE_IMAGES_DIR", default_value = DEFAULT_IMAGES_DIR)]
    pub images_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// List boot assets with their source, state and SHA-256
    List {
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        images: ImagesDir,
    },
    /// Fetch (or copy) the kernel and initramfs of a Talos version, verify and record them
    Add(ImagesAdd),
    /// Forget a version's assets and delete their files
    Remove {
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        images: ImagesDir,
        /// Talos version, e.g. v1.11.6
        #[arg(long)]
        version: String,
        /// amd64 or arm64
        #[arg(long, default_value = "amd64")]
        arch: String,
    },
    /// Hash every asset again; a mismatch takes it out of service (and a match brings it back)
    Verify {
        #[command(flatten)]
        data: DataDir,
        #[command(flatten)]
        images: ImagesDir,
    },
    /// Create an Image Factory schematic from system extensions and kernel arguments; prints
    /// its ID (add its assets with `images add --schematic ID`)
    Schematic {
        /// Official system extension, e.g. siderolabs/iscsi-tools (repeat for more)
        #[arg(long = "extension")]
        extensions: Vec<String>,
        /// Extra kernel argument baked into the schematic (repeat for more)
        #[arg(long = "kernel-arg", allow_hyphen_values = true)]
        kernel_args: Vec<String>,
        /// Image Factory base URL (an air-gapped mirror)
        #[arg(long, env = "BOOTPLANE_FACTORY_URL", default_value = DEFAULT_FACTORY_URL)]
        factory_url: String,
    },
}

#[derive(Debug, Args)]
pub struct ImagesAdd {
    #[command(flatten)]
    pub data: DataDir,
    #[command(flatten)]
    pub images: ImagesDir,
    /// Talos version, e.g. v1.11.6
    #[arg(long)]
    pub version: String,
    /// amd64 or arm64
    #[arg(long, default_value = "amd64")]
    pub arch: String,
    /// Image Factory schematic ID (64 hex digits)
    #[arg(long)]
    pub schematic: Option<String>,
    /// The release's vmlinuz-<arch> and initramfs-<arch>.xz (from --release-url)
    #[arg(long)]
    pub release: bool,
    /// Local kernel file to copy in (with --initramfs)
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Local initramfs file to copy in (with --kernel)
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// Image Factory base URL (an air-gapped mirror)
    #[arg(long, env = "BOOTPLANE_FACTORY_URL", default_value = DEFAULT_FACTORY_URL)]
    pub factory_url: String,
    /// Base URL of release assets: <url>/<version>/vmlinuz-<arch>
    #[arg(long, env = "BOOTPLANE_RELEASE_URL", default_value = DEFAULT_RELEASE_URL)]
    pub release_url: String,
    /// SHA-256 the kernel must have
    #[arg(long)]
    pub sha256_kernel: Option<String>,
    /// SHA-256 the initramfs must have
    #[arg(long)]
    pub sha256_initramfs: Option<String>,
}

fn failed(e: ImagesError) -> CliError {
    CliError::Invalid(e.to_string())
}

fn write(out: &mut dyn Write, text: String) -> Result<(), CliError> {
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::Output(e.to_string()))
}

impl ImagesAdd {
    /// The same parse as the API and the UI (`ops::images`); field errors named by flag.
    fn request(&self) -> Result<AddRequest, CliError> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let input = ImageInput {
            version: Some(self.version.clone()),
            arch: Some(self.arch.clone()),
            schematic: self.schematic.clone(),
            release: Some(self.release),
            kernel_path: path(&self.kernel),
            initramfs_path: path(&self.initramfs),
            sha256_kernel: self.sha256_kernel.clone(),
            sha256_initramfs: self.sha256_initramfs.clone(),
        };
        let bases = Bases {
            factory_url: &self.factory_url,
            release_url: &self.release_url,
        };
        parse_image_input(&input, &bases, LocalFiles::Allowed).map_err(flag_error)
    }
}

/// An `ops` field error by the flag it came from.
fn flag_error(e: OpsError) -> CliError {
    match e {
        OpsError::Invalid(errors) => CliError::Invalid(
            errors
                .iter()
                .map(|fe| match fe.field.as_str() {
                    "source" => fe.message.replace(
                        "a schematic ID, the release, or a kernel and initramfs file",
                        "--schematic ID, --release, or --kernel FILE --initramfs FILE",
                    ),
                    "kernel_path" => format!("--kernel: {}", fe.message),
                    "initramfs_path" => format!("--initramfs: {}", fe.message),
                    "kernel_args" => format!("--kernel-arg: {}", fe.message),
                    "extensions" => format!("--extension: {}", fe.message),
                    field => format!("--{}: {}", field.replace('_', "-"), fe.message),
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        other => CliError::Invalid(other.to_string()),
    }
}

/// A progress line on stderr, rewritten in place at most a few times a second.
fn progress_line() -> ProgressFn {
    let last = Mutex::new(None::<Instant>);
    Arc::new(move |file: &str, done: u64, total: Option<u64>| {
        let finished = total == Some(done);
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if !finished && last.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) {
            return;
        }
        *last = Some(Instant::now());
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let line = match total {
            Some(t) if t > 0 => format!(
                "\r{file}: {:.1} / {:.1} MiB ({}%)",
                mib(done),
                mib(t),
                done * 100 / t
            ),
            _ => format!("\r{file}: {:.1} MiB", mib(done)),
        };
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        if finished {
            let _ = err.write_all(b"\n");
        }
        let _ = err.flush();
    })
}

fn describe(a: &Asset) -> String {
    let digest = |f: &assets::AssetFile| match &f.digest {
        Some(d) => format!("{} bytes sha256:{}", d.size, d.sha256),
        None => "-".into(),
    };
    let mut text = format!(
        "{} {} {} ({})\n  kernel     {}\n             {}\n  initramfs  {}\n             {}\n",
        a.version,
        a.arch.as_str(),
        a.state,
        a.source,
        a.kernel.origin,
        digest(&a.kernel),
        a.initramfs.origin,
        digest(&a.initramfs),
    );
    if !a.kernel_args.is_empty() {
        text.push_str(&format!("  kernel args {}\n", a.kernel_args.join(" ")));
    }
    if let AssetState::Broken(reason) = &a.state {
        text.push_str(&format!("  reason     {reason}\n"));
    }
    text
}

pub async fn images(cmd: ImagesCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        ImagesCommand::List { data, images } => {
            let store = Images::new(images.images_dir, Db::open(&data.data_dir).await?);
            let assets = store.list().await.map_err(failed)?;
            if assets.is_empty() {
                write(out, "no boot assets recorded\n".into())?;
            }
            for a in assets {
                write(out, describe(&a))?;
            }
        }
        ImagesCommand::Add(add) => {
            let req = add.request()?;
            let store = Images::new(add.images.images_dir, Db::open(&add.data.data_dir).await?);
            match store
                .add(&req, Some(progress_line()))
                .await
                .map_err(failed)?
            {
                AddOutcome::Added(a) => write(out, format!("added {}", describe(&a)))?,
                AddOutcome::AlreadyPresent(a) => {
                    write(out, format!("already present: {}", describe(&a)))?
                }
            }
        }
        ImagesCommand::Remove {
            data,
            images,
            version,
            arch,
        } => {
            let arch = assets::parse_arch(&arch).map_err(failed)?;
            let store = Images::new(images.images_dir, Db::open(&data.data_dir).await?);
            store.remove(&version, arch).await.map_err(failed)?;
            write(out, format!("removed {version} {}\n", arch.as_str()))?;
        }
        ImagesCommand::Schematic {
            extensions,
            kernel_args,
            factory_url,
        } => {
            // `serve`'s own additions are not known here: the offline ones are counted.
            let c = parse_schematic_input(
                &SchematicInput {
                    extensions,
                    kernel_args,
                },
                &crate::talos::kernel::Additions::offline(),
            )
            .map_err(flag_error)?;
            let id = assets::create_schematic(&factory_url, &c)
                .await
                .map_err(failed)?;
            write(out, format!("{id}\n"))?;
        }
        ImagesCommand::Verify { data, images } => {
            let store = Images::new(images.images_dir, Db::open(&data.data_dir).await?);
            let started = Instant::now();
            let report = store.verify_all().await.map_err(failed)?;
            for name in &report.ready {
                write(out, format!("ok      {name}\n"))?;
            }
            for (name, reason) in &report.broken {
                write(out, format!("broken  {name}: {reason}\n"))?;
            }
            write(
                out,
                format!(
                    "verified {:.1} MiB in {:.1} s\n",
                    report.bytes as f64 / (1024.0 * 1024.0),
                    started.elapsed().as_secs_f64()
                ),
            )?;
            if !report.broken.is_empty() {
                return Err(CliError::Invalid(format!(
                    "{} boot asset(s) out of service",
                    report.broken.len()
                )));
            }
        }
    }
    Ok(())
}
