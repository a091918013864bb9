//! The requests s3s-fs does not answer as AWS S3 does, answered here before s3s-fs sees them:
//! HEAD with `partNumber` and ListMultipartUploads (see [`PartHeads`]).

use std::path::PathBuf;

use crate::Cuts;

/// What AWS S3 answers and s3s-fs does not:
/// - a HEAD with `partNumber=N`: the part's length and the object's part count
///   (`x-amz-mp-parts-count`), for an object whose cut [`Cuts`] noted; the whole object, with no
///   part count, for any other (one that was not uploaded in parts);
/// - ListMultipartUploads (`GET /BUCKET?uploads&prefix=P`): the uploads open in the bucket, each
///   with its key and when it was started, from the files s3s-fs keeps for an open upload (its
///   `.upload-ID.json`, dated when the upload started, and the key's
///   `.bucket-B.object-K.upload-ID.metadata.json`). One page, no markers.
pub(crate) struct PartHeads {
    pub(crate) root: PathBuf,
    pub(crate) cuts: Cuts,
}

#[async_trait::async_trait]
impl s3s::route::S3Route for PartHeads {
    fn is_match(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        _headers: &http::HeaderMap,
        _extensions: &mut http::Extensions,
    ) -> bool {
        (method == http::Method::HEAD && part_number(uri).is_some())
            || (method == http::Method::GET && lists_uploads(uri))
    }

    async fn call(
        &self,
        req: s3s::S3Request<s3s::Body>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::Body>> {
        if req.method == http::Method::GET {
            return self.list_uploads(&req.uri);
        }
        let number = part_number(&req.uri).unwrap_or(0);
        let path = percent_decode(req.uri.path().trim_start_matches('/'));
        let Some((bucket, key)) = path.split_once('/') else {
            return Err(s3s::s3_error!(InvalidRequest, "partNumber needs an object"));
        };
        let size = std::fs::metadata(self.root.join(bucket).join(key))
            .map_err(|_| s3s::s3_error!(NoSuchKey))?
            .len();
        let mut response = s3s::S3Response::new(s3s::Body::empty());
        let (length, count) = match self.cuts.of(bucket, key) {
            Some(cut) if cut.iter().sum::<u64>() == size => {
                let index = usize::try_from(number).unwrap_or(usize::MAX);
                let length = *index
                    .checked_sub(1)
                    .and_then(|i| cut.get(i))
                    .ok_or_else(|| {
                        s3s::s3_error!(InvalidRange, "The requested partnumber is not satisfiable")
                    })?;
                (length, Some(cut.len()))
            }
            _ if number == 1 => (size, None),
            _ => {
                return Err(s3s::s3_error!(
                    InvalidRange,
                    "The requested partnumber is not satisfiable"
                ));
            }
        };
        response.status = Some(http::StatusCode::PARTIAL_CONTENT);
        response
            .headers
            .insert(http::header::CONTENT_LENGTH, length.into());
        if let Some(count) = count {
            response
                .headers
                .insert("x-amz-mp-parts-count", count.into());
        }
        Ok(response)
    }
}

impl PartHeads {
    fn list_uploads(&self, uri: &http::Uri) -> s3s::S3Result<s3s::S3Response<s3s::Body>> {
        use base64::Engine as _;
        let bucket = percent_decode(uri.path().trim_matches('/'));
        let prefix = uri
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix("prefix="))
            .map(|p| percent_decode(&p.replace('+', "%20")))
            .unwrap_or_default();
        if !self.root.join(&bucket).is_dir() {
            return Err(s3s::s3_error!(NoSuchBucket));
        }
        let decode = |text: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
        };
        let mut uploads = Vec::new();
        let entries = std::fs::read_dir(&self.root).map_err(|_| s3s::s3_error!(InternalError))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name
                .strip_prefix(".bucket-")
                .and_then(|r| r.strip_suffix(".metadata.json"))
            else {
                continue;
            };
            let Some((encoded_bucket, rest)) = rest.split_once(".object-") else {
                continue;
            };
            let Some((encoded_key, upload_id)) = rest.split_once(".upload-") else {
                continue;
            };
            let (Some(in_bucket), Some(key)) = (decode(encoded_bucket), decode(encoded_key)) else {
                continue;
            };
            let info = self.root.join(format!(".upload-{upload_id}.json"));
            let Ok(started) = std::fs::metadata(&info).and_then(|m| m.modified()) else {
                continue;
            };
            if in_bucket == bucket && key.starts_with(&prefix) {
                uploads.push((key, upload_id.to_owned(), started));
            }
        }
        uploads.sort();
        let mut xml = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListMultipartUploadsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        xml.push_str(&format!(
            "<Bucket>{}</Bucket><IsTruncated>false</IsTruncated>",
            escape(&bucket)
        ));
        for (key, upload_id, started) in uploads {
            let initiated = s3s::dto::Timestamp::from(started);
            let mut when = Vec::new();
            initiated
                .format(s3s::dto::TimestampFormat::DateTime, &mut when)
                .map_err(|_| s3s::s3_error!(InternalError))?;
            xml.push_str(&format!(
                "<Upload><Key>{}</Key><UploadId>{upload_id}</UploadId><Initiated>{}</Initiated></Upload>",
                escape(&key),
                String::from_utf8_lossy(&when)
            ));
        }
        xml.push_str("</ListMultipartUploadsResult>");
        let mut response = s3s::S3Response::new(s3s::Body::from(xml));
        response.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/xml"),
        );
        Ok(response)
    }
}

/// Whether a request lists a bucket's multipart uploads (`GET /BUCKET?uploads`).
fn lists_uploads(uri: &http::Uri) -> bool {
    let bucket_only = !uri.path().trim_matches('/').contains('/');
    bucket_only
        && uri.query().is_some_and(|q| {
            q.split('&')
                .any(|pair| pair == "uploads" || pair.starts_with("uploads="))
        })
}

/// `text` with the characters XML reserves escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The `partNumber` of a request's query, if it has one.
fn part_number(uri: &http::Uri) -> Option<u32> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("partNumber="))?
        .parse()
        .ok()
}

/// Decodes `%XX` escapes in a request path (`+` stays a plus in paths).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
