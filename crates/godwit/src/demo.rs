//! `godwit demo`: the whole job on one machine with nothing to install. It makes sample data,
//! serves a local S3 endpoint, runs `godwit migrate` (this same binary) twice — the second run
//! resumes and copies nothing — and compares every object byte for byte with its source.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use godwit_s3_server::LocalS3;

use crate::cli::DemoArgs;
use crate::exit;

const BUCKET: &str = "demo";

/// Odd names users' trees really hold.
const ODD_NAMES: [&str; 8] = [
    "odd/with space.txt",
    "odd/ünïcødé-日本語.txt",
    "odd/a+b=c&d.txt",
    "odd/100%.txt",
    "odd/hash#tag.txt",
    "odd/question?.txt",
    "odd/empty.bin",
    "odd/semi;colon,comma.txt",
];

fn random_hex(n_bytes: usize) -> anyhow::Result<String> {
    let mut bytes = vec![0u8; n_bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Deterministic filler bytes (a xorshift stream), so reruns make the same data.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn make_sample(source: &Path) -> anyhow::Result<(u64, u64)> {
    let mut n = 0u64;
    let mut total = 0u64;
    let mut write = |relative: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let path = source.join(relative);
        std::fs::create_dir_all(path.parent().unwrap_or(source))?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        n += 1;
        total += bytes.len() as u64;
        Ok(())
    };
    for i in 0..500u64 {
        let relative = format!(
            "courses/course-{:02}/lesson-{:03}/notes-{i}.txt",
            i % 10,
            i % 37
        );
        write(&relative, &filler(i, 1024 + (i as usize * 97) % 60_000))?;
    }
    for (i, name) in ODD_NAMES.iter().enumerate() {
        let len = if name.ends_with("empty.bin") {
            0
        } else {
            100 + i
        };
        write(name, &filler(1000 + i as u64, len))?;
    }
    // Larger than the default multipart threshold: uploaded in parallel parts.
    write("videos/lecture-01.mp4", &filler(7, 80 << 20))?;
    Ok((n, total))
}

/// Compares every source file with the object the server stored (s3s-fs keeps objects as files).
fn compare_stored(source: &Path, stored: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    let mut stack = vec![source.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(source)?;
            let copy = stored.join(relative);
            let same = std::fs::read(&path)?
                == std::fs::read(&copy).with_context(|| format!("reading {}", copy.display()))?;
            anyhow::ensure!(same, "{} differs from its copy", relative.display());
            n += 1;
        }
    }
    Ok(n)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<u8> {
    let (work, temporary) = match args.dir {
        Some(dir) => (dir, false),
        None => (
            std::env::temp_dir().join(format!("godwit-demo-{}", random_hex(4)?)),
            true,
        ),
    };
    let source = work.join("source");
    let served = work.join("s3");
    let ledger = work.join("ledger.db");
    std::fs::create_dir_all(served.join(BUCKET))?;

    println!("1. making sample data in {}", source.display());
    let (n_files, n_bytes) = make_sample(&source)?;
    println!("   {n_files} files, {}", crate::render::bytes(n_bytes));

    let access_key = format!("demo{}", random_hex(4)?);
    let secret_key = random_hex(16)?;
    let server = LocalS3::start(
        &served,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &access_key,
        &secret_key,
    )
    .await?;
    println!(
        "2. serving a local S3 endpoint at {} (bucket '{BUCKET}')",
        server.endpoint()
    );

    let godwit = std::env::current_exe().context("finding the godwit binary")?;
    let migrate = |json: bool| {
        let mut command = Command::new(&godwit);
        command
            .arg("migrate")
            .arg(&source)
            .arg(format!("s3://{BUCKET}/files"))
            .arg("--state")
            .arg(&ledger)
            .arg("--dest-endpoint")
            .arg(server.endpoint())
            .env("AWS_ACCESS_KEY_ID", &access_key)
            .env("AWS_SECRET_ACCESS_KEY", &secret_key)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        if json {
            command.arg("--json");
        }
        command
    };
    let shown = format!(
        "godwit migrate {} s3://{BUCKET}/files --state {} --dest-endpoint {}",
        source.display(),
        ledger.display(),
        server.endpoint()
    );

    println!("3. {shown} --json");
    let first = tokio::task::spawn_blocking({
        let mut command = migrate(true);
        move || command.status()
    })
    .await??;
    if !first.success() {
        eprintln!("godwit demo: the migration did not succeed ({first})");
        return Ok(first
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(exit::PROBLEMS));
    }

    println!("4. the same command again: it resumes from the ledger and copies nothing");
    let second = tokio::task::spawn_blocking({
        let mut command = migrate(false);
        move || command.output()
    })
    .await??;
    print!("{}", String::from_utf8_lossy(&second.stdout));
    eprint!("{}", String::from_utf8_lossy(&second.stderr));
    if !second.status.success() {
        return Ok(exit::PROBLEMS);
    }

    println!("5. comparing every object the server stored with its source file");
    let n_same = tokio::task::spawn_blocking({
        let (source, stored) = (source.clone(), served.join(BUCKET).join("files"));
        move || compare_stored(&source, &stored)
    })
    .await??;
    println!("   {n_same} of {n_files} objects identical, byte for byte");

    drop(server);
    if temporary {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!("work directory kept: {}", work.display());
    }
    Ok(if n_same == n_files {
        exit::OK
    } else {
        exit::PROBLEMS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_is_deterministic() {
        assert_eq!(filler(3, 100), filler(3, 100));
        assert_ne!(filler(3, 100), filler(4, 100));
        assert_eq!(filler(3, 13).len(), 13);
    }
}
