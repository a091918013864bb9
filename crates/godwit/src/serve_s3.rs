//! `godwit serve-s3`: a local S3 endpoint on a directory, to try godwit with nothing else installed.

use godwit_s3_server::{LocalS3, ServerOptions};

use crate::cli::ServeS3Args;
use crate::exit;

pub async fn run(args: ServeS3Args) -> anyhow::Result<u8> {
    let (Ok(access_key), Ok(secret_key)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) else {
        return Ok(crate::render::fail(
            "serve-s3 accepts requests signed with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: set both (any values) in its environment and in godwit's",
        ));
    };
    for bucket in &args.bucket {
        let path = args.dir.join(bucket);
        if let Err(error) = std::fs::create_dir_all(&path) {
            return Ok(crate::render::fail(format!(
                "cannot create bucket directory {}: {error}",
                path.display()
            )));
        }
    }
    let options = ServerOptions {
        put_rate: args.put_rate.map(|rate| rate.0),
        // As AWS S3 lists objects: with their ETags.
        listing_etags: true,
        ..ServerOptions::default()
    };
    let server = match LocalS3::start_with(
        &args.dir,
        args.listen,
        &access_key,
        &secret_key,
        options,
    )
    .await
    {
        Ok(server) => server,
        Err(error) => {
            return Ok(crate::render::fail(error));
        }
    };
    eprintln!(
        "serving {} as S3 at {} (Ctrl-C to stop); e.g. godwit migrate ./files s3://BUCKET/ --dest-endpoint {}",
        args.dir.display(),
        server.endpoint(),
        server.endpoint()
    );
    tokio::select! {
        () = server.wait() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(exit::OK)
}
