//! A database URL naming a content-store table and its columns, parsed; shown without its
//! password.

use std::fmt;
use std::path::PathBuf;

use crate::{ErrorKind, StorageError};

/// The database that holds the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// PostgreSQL (`postgres://`, `postgresql://`).
    Postgres,
    /// MariaDB or MySQL (`mysql://`, `mariadb://`).
    MySql,
    /// A SQLite file (`sqlite://PATH`).
    Sqlite,
}

impl DbKind {
    fn scheme(self) -> &'static str {
        match self {
            DbKind::Postgres => "postgres",
            DbKind::MySql => "mysql",
            DbKind::Sqlite => "sqlite",
        }
    }

    /// The environment variable a password is read from when the URL holds none (the one the
    /// database's own client reads), so that a recorded URL, which never holds one, can be
    /// opened again.
    pub fn password_variable(self) -> Option<&'static str> {
        match self {
            DbKind::Postgres => Some("PGPASSWORD"),
            DbKind::MySql => Some("MYSQL_PWD"),
            DbKind::Sqlite => None,
        }
    }
}

/// Where a database server is, and who connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Host name or address.
    pub host: String,
    /// Port; `None` for the database's default.
    pub port: Option<u16>,
    /// The user; `None` for the name of the user running godwit (as the databases' clients do).
    pub user: Option<String>,
    /// The database (schema, on MySQL).
    pub database: String,
}

/// A password. `Debug` never shows it, and no `Display` exists.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The columns a content-store table keeps its objects in. Each is a column name as the
/// database knows it (quoted by godwit, so any name works).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// The object's key (unique; text, or anything with a text form).
    pub key: String,
    /// The object's bytes (`bytea`, `BLOB`).
    pub blob: String,
    /// The group the object belongs to (an all-or-nothing unit), if kept.
    pub group: Option<String>,
    /// The partition the object belongs to (a checkpoint unit), if kept.
    pub partition: Option<String>,
    /// The object's Content-Type, if kept.
    pub content_type: Option<String>,
    /// When the row last changed, if kept: then its text is the object's version.
    pub updated_at: Option<String>,
}

/// A table of objects in a database: `postgres://USER@HOST/DB?table=T&key=K&blob=B[&...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLocation {
    /// Which database.
    pub kind: DbKind,
    /// The server, for PostgreSQL and MySQL.
    pub server: Option<Server>,
    /// The file, for SQLite.
    pub path: Option<PathBuf>,
    /// The password the URL held; never shown, never recorded.
    pub password: Option<Password>,
    /// The table (`schema.table` on PostgreSQL).
    pub table: String,
    /// Its columns.
    pub columns: Columns,
}

/// The settings a URL may carry, in the order `Display` writes them.
const SETTINGS: [&str; 8] = [
    "table",
    "key",
    "blob",
    "group",
    "partition",
    "content_type",
    "updated_at",
    // Accepted so a URL copied from elsewhere is understood; refused with its own message.
    "sslmode",
];

fn invalid(message: String) -> StorageError {
    StorageError::new(ErrorKind::InvalidInput, message)
}

/// `text` percent-decoded as one form value (`+` is a space); a `&` in it is kept, not taken
/// for the end of the value.
fn decode(text: &str) -> String {
    let text = text.replace('&', "%26");
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

impl TableLocation {
    /// Whether `text` names a database (by its scheme).
    pub fn is_database_url(text: &str) -> bool {
        [
            "postgres://",
            "postgresql://",
            "mysql://",
            "mariadb://",
            "sqlite://",
        ]
        .iter()
        .any(|scheme| text.starts_with(scheme))
    }

    /// Parses a database URL naming a table and its columns.
    pub fn parse(text: &str) -> Result<Self, StorageError> {
        let (scheme, rest) = text.split_once("://").unwrap_or((text, ""));
        let kind = match scheme {
            "postgres" | "postgresql" => DbKind::Postgres,
            "mysql" | "mariadb" => DbKind::MySql,
            "sqlite" => DbKind::Sqlite,
            _ => return Err(invalid(format!("'{scheme}://' is not a database URL"))),
        };
        let (place, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut settings = std::collections::BTreeMap::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if !SETTINGS.contains(&name.as_ref()) {
                return Err(invalid(format!(
                    "{scheme}:// source: unknown setting '{name}'; a table source takes table=, key=, blob= and optionally group=, partition=, content_type=, updated_at="
                )));
            }
            settings.insert(name.into_owned(), value.into_owned());
        }
        if settings.contains_key("sslmode") {
            return Err(invalid(format!(
                "{scheme}:// source: sslmode: godwit connects to a database source without TLS for now; reach it on a private network or through a tunnel"
            )));
        }
        let required = |name: &str, what: &str| {
            settings
                .get(name)
                .filter(|value| !value.is_empty())
                .cloned()
                .ok_or_else(|| {
                    invalid(format!(
                        "{scheme}:// source: missing {name}= ({what}); write {scheme}://.../DB?table=TABLE&key=KEY_COLUMN&blob=BLOB_COLUMN"
                    ))
                })
        };
        let table = required("table", "the table that holds the objects")?;
        let columns = Columns {
            key: required("key", "the column of each object's key")?,
            blob: required("blob", "the column of each object's bytes")?,
            group: settings.get("group").cloned().filter(|v| !v.is_empty()),
            partition: settings.get("partition").cloned().filter(|v| !v.is_empty()),
            content_type: settings
                .get("content_type")
                .cloned()
                .filter(|v| !v.is_empty()),
            updated_at: settings
                .get("updated_at")
                .cloned()
                .filter(|v| !v.is_empty()),
        };
        let mut location = TableLocation {
            kind,
            server: None,
            path: None,
            password: None,
            table,
            columns,
        };
        if kind == DbKind::Sqlite {
            if place.is_empty() {
                return Err(invalid(
                    "sqlite:// source names no file: write sqlite:///absolute/path.db?table=... or sqlite://relative/path.db?table=...".to_owned(),
                ));
            }
            location.path = Some(PathBuf::from(decode(place)));
            return Ok(location);
        }
        let (credentials, address) = match place.rsplit_once('@') {
            Some((credentials, address)) => (Some(credentials), address),
            None => (None, place),
        };
        let (host_port, database) = address.split_once('/').unwrap_or((address, ""));
        if database.is_empty() || database.contains('/') {
            return Err(invalid(format!(
                "{scheme}://{}: name the database after the host: {scheme}://USER@HOST[:PORT]/DATABASE?table=...",
                host_port
            )));
        }
        // `[::1]:5432` for an IPv6 address.
        let (host, port) = match host_port.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((host, "")) => (host, None),
            Some((host, rest)) => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => {
                    return Err(invalid(format!(
                        "{scheme}://{host_port}: '{rest}' after the address in brackets; write [ADDRESS] or [ADDRESS]:PORT"
                    )));
                }
            },
            None => match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            },
        };
        // Brackets only enclose a whole address: one inside a host would be shown in a URL that
        // reads back as another host.
        if host.contains(['[', ']']) {
            return Err(invalid(format!(
                "{scheme}://{host_port}: a host name has no '[' or ']'; write an IPv6 address as [ADDRESS]"
            )));
        }
        let port = port
            .map(|port| {
                port.parse::<u16>().map_err(|_| {
                    invalid(format!(
                        "{scheme}://{host_port}: '{port}' is not a port number"
                    ))
                })
            })
            .transpose()?;
        if host.is_empty() {
            return Err(invalid(format!(
                "{scheme}:// source names no host: write {scheme}://USER@HOST[:PORT]/DATABASE?table=..."
            )));
        }
        if let Some(credentials) = credentials {
            let (user, password) = match credentials.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (credentials, None),
            };
            location.password = password.map(|p| Password(decode(p)));
            location.server = Some(Server {
                host: host.to_owned(),
                port,
                user: Some(decode(user)).filter(|u| !u.is_empty()),
                database: decode(database),
            });
        } else {
            location.server = Some(Server {
                host: host.to_owned(),
                port,
                user: None,
                database: decode(database),
            });
        }
        Ok(location)
    }

    /// What to call the table in messages: `TABLE in HOST/DB` or `TABLE in PATH`.
    pub fn describe(&self) -> String {
        match (&self.server, &self.path) {
            (Some(server), _) => format!(
                "table '{}' in {}{}/{}",
                self.table,
                server.host,
                server.port.map(|p| format!(":{p}")).unwrap_or_default(),
                server.database
            ),
            (None, Some(path)) => format!("table '{}' in {}", self.table, path.display()),
            (None, None) => format!("table '{}'", self.table),
        }
    }
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

impl fmt::Display for TableLocation {
    /// The URL without its password: what the ledger records and messages show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.kind.scheme())?;
        if let Some(server) = &self.server {
            if let Some(user) = &server.user {
                write!(f, "{}@", encode(user))?;
            }
            if server.host.contains(':') {
                write!(f, "[{}]", server.host)?;
            } else {
                f.write_str(&server.host)?;
            }
            if let Some(port) = server.port {
                write!(f, ":{port}")?;
            }
            write!(f, "/{}", encode(&server.database))?;
        }
        if let Some(path) = &self.path {
            // Escaped where `decode` would read it otherwise, or a `?` would end it.
            let path = path.to_string_lossy();
            let path = path
                .replace('%', "%25")
                .replace('+', "%2B")
                .replace('?', "%3F");
            f.write_str(&path)?;
        }
        let columns = &self.columns;
        let settings = [
            ("table", Some(&self.table)),
            ("key", Some(&columns.key)),
            ("blob", Some(&columns.blob)),
            ("group", columns.group.as_ref()),
            ("partition", columns.partition.as_ref()),
            ("content_type", columns.content_type.as_ref()),
            ("updated_at", columns.updated_at.as_ref()),
        ];
        let mut separator = '?';
        for (name, value) in settings {
            if let Some(value) = value {
                write!(f, "{separator}{name}={}", encode(value))?;
                separator = '&';
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, shown: &str) {
        let location = TableLocation::parse(text).unwrap();
        assert_eq!(location.to_string(), shown, "{text}");
        // What is shown parses back to the same table (without the password).
        let again = TableLocation::parse(shown).unwrap();
        assert_eq!(again.to_string(), shown);
        assert_eq!(again.password, None);
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        check(
            "postgres://app:s3cr%40t@db.example:5433/shop?table=files&key=path&blob=data",
            "postgres://app@db.example:5433/shop?table=files&key=path&blob=data",
        );
        check(
            "postgresql://db/shop?blob=b&key=k&table=public.files&updated_at=u&group=g&partition=p&content_type=c",
            "postgres://db/shop?table=public.files&key=k&blob=b&group=g&partition=p&content_type=c&updated_at=u",
        );
        check(
            "mariadb://root:pw@127.0.0.1/test?table=t&key=k&blob=b",
            "mysql://root@127.0.0.1/test?table=t&key=k&blob=b",
        );
        check(
            "sqlite:///var/app/files.db?table=t&key=k&blob=b",
            "sqlite:///var/app/files.db?table=t&key=k&blob=b",
        );
        check(
            "sqlite://files.db?table=t&key=k&blob=my%20blob",
            "sqlite://files.db?table=t&key=k&blob=my+blob",
        );
        let parsed = TableLocation::parse("mysql://u:p%3Aw@h/d?table=t&key=k&blob=b").unwrap();
        assert_eq!(parsed.password, Some(Password("p:w".into())));
        assert!(!format!("{parsed:?}").contains("p:w"));
    }

    #[test]
    fn bad_urls_say_what_is_missing() {
        for (text, said) in [
            ("postgres://h/d?key=k&blob=b", "missing table="),
            ("postgres://h/d?table=t&blob=b", "missing key="),
            ("mysql://h/d?table=t&key=k", "missing blob="),
            (
                "mysql://h/d?table=t&key=k&blob=b&colour=red",
                "unknown setting 'colour'",
            ),
            ("postgres://h?table=t&key=k&blob=b", "name the database"),
            ("postgres://:pw@/d?table=t&key=k&blob=b", "names no host"),
            ("postgres://h:x/d?table=t&key=k&blob=b", "'x' is not a port"),
            ("sqlite://?table=t&key=k&blob=b", "names no file"),
            (
                "postgres://h/d?table=t&key=k&blob=b&sslmode=require",
                "without TLS",
            ),
        ] {
            let error = TableLocation::parse(text).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{text}");
            assert!(error.message().contains(said), "{text}: {error}");
        }
        let error = TableLocation::parse("postgres://u:hunter2@h:x/d?table=t").unwrap_err();
        assert!(!error.message().contains("hunter2"), "{error}");
    }

    /// Found by `fuzz/run.sh` (target `location`): a database name holding `&` was cut there
    /// (to nothing here), so the URL shown named no database and did not parse.
    #[test]
    fn fuzz_an_ampersand_is_part_of_a_name() {
        let found = "postgresql://pp/&blob=mfil\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0es.db?table=t&key=k&blob=my%+\rlob";
        let parsed = TableLocation::parse(found).unwrap();
        assert_eq!(
            parsed.server.unwrap().database,
            format!("&blob=mfil{}es.db", "\0".repeat(18))
        );
        check(
            found,
            "postgres://pp/%26blob%3Dmfil%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00%00es.db?table=t&key=k&blob=my%25+%0Dlob",
        );
        check(
            "mysql://a%26b@h/x&y?table=t&key=k&blob=b",
            "mysql://a%26b@h/x%26y?table=t&key=k&blob=b",
        );
        // A file name that `decode` would change, or a `?` would cut, is shown escaped.
        let path = TableLocation::parse("sqlite:///d/a%3Fb%25c%2Bd&e.db?table=t&key=k&blob=b")
            .unwrap()
            .path;
        assert_eq!(path.unwrap(), PathBuf::from("/d/a?b%c+d&e.db"));
        check(
            "sqlite:///d/a%3Fb%25c%2Bd&e.db?table=t&key=k&blob=b",
            "sqlite:///d/a%3Fb%25c%2Bd&e.db?table=t&key=k&blob=b",
        );
    }

    /// Found by `fuzz/run.sh` (target `location`): a host holding brackets was taken, then shown
    /// as `[u\x18[::1]]:3306`, which reads back as host `u\x18[::1` with no port.
    #[test]
    fn fuzz_hosts_with_brackets_are_refused() {
        let found =
            "mysql://u\u{18}[::1]:3306/d?table=tu@[::1]:33\u{10}6/d&key=k&blob=b&updated_at=u";
        for text in [
            found,
            "mysql://u[::1]:3306/d?table=t&key=k&blob=b",
            "postgres://h]:5432/d?table=t&key=k&blob=b",
            "postgres://[::1]x/d?table=t&key=k&blob=b",
            "postgres://[[::1]]:5432/d?table=t&key=k&blob=b",
        ] {
            let error = TableLocation::parse(text).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidInput, "{text}");
        }
        check(
            "postgres://u@[::1]:5432/d?table=t&key=k&blob=b",
            "postgres://u@[::1]:5432/d?table=t&key=k&blob=b",
        );
        check(
            "postgres://[fe80::1]/d?table=t&key=k&blob=b",
            "postgres://[fe80::1]/d?table=t&key=k&blob=b",
        );
    }
}
