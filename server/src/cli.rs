//! The command line of the `dreamos-bridge` binary (clap definitions only;
//! [`crate::commands`] runs them).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// dreamos-bridge: the Dream.OS bridge as a server, and tools around it.
#[derive(Debug, Parser)]
#[command(name = "dreamos-bridge", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bridge server (HTTP API, WebSocket for services, dashboard).
    ///
    /// Listens on bridge.host:bridge.port (TLS if bridge.tls is set). SIGTERM or
    /// SIGINT drain gracefully; SIGHUP reloads the config file (an invalid file is
    /// logged and the running config stays).
    ///
    /// Example:
    ///   DREAMOS_TOKEN_KEY=$(openssl rand -hex 32) dreamos-bridge serve --config examples/bridge.yaml
    #[command(verbatim_doc_comment)]
    Serve {
        /// The YAML config file (without it: the embedded default on localhost:8000, no security).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Serve an in-process echo handler on this pattern (for tests and benchmarks); repeatable.
        #[arg(long, value_name = "PATTERN")]
        echo: Vec<String>,
    },
    /// Validate a config file: exit 0 if valid, 1 with the key path of the error if not.
    ///
    /// Example:
    ///   dreamos-bridge check-config examples/bridge.yaml
    #[command(verbatim_doc_comment)]
    CheckConfig {
        /// The YAML config file.
        file: PathBuf,
    },
    /// Print the SHA-256 of an API key, as `security.api_keys[].sha256` wants it.
    ///
    /// Reads the key from stdin when not given (keeps it out of shell history).
    ///
    /// Example:
    ///   printf %s "$MY_KEY" | dreamos-bridge hash-key
    #[command(verbatim_doc_comment)]
    HashKey {
        /// The key (default: read from stdin).
        key: Option<String>,
    },
    /// Work with bridge tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Send one message to a running server and print the reply.
    ///
    /// Example:
    ///   dreamos-bridge route services.weather.current '{"city":"Paris"}' --url http://127.0.0.1:8000 --api-key "$KEY"
    #[command(verbatim_doc_comment)]
    Route {
        /// Destination subject.
        destination: String,
        /// Payload: JSON, or else sent as a JSON string.
        payload: String,
        /// Seconds to wait for the reply.
        #[arg(long)]
        timeout: Option<f64>,
        /// How to reach the server.
        #[command(flatten)]
        conn: Connection,
    },
    /// List or replay a running server's dead letters (admin role).
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Drive load against a server's /v1/route and print throughput and latency percentiles.
    ///
    /// Example:
    ///   dreamos-bridge bench --url http://127.0.0.1:8000 --destination bench.echo --concurrency 16 --requests 20000
    #[command(verbatim_doc_comment)]
    Bench {
        /// Requests in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Requests in total.
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        /// Destination subject.
        #[arg(long, default_value = "bench.echo")]
        destination: String,
        /// Payload (JSON).
        #[arg(long, default_value = r#"{"n":1}"#)]
        payload: String,
        /// POST this URL instead of {url}/v1/route, with the payload as body (measures a plain HTTP peer).
        #[arg(long)]
        raw_url: Option<String>,
        /// With --raw-url: send GET requests without a body (e.g. to /health).
        #[arg(long, requires = "raw_url")]
        get: bool,
        /// Print the result as one JSON line.
        #[arg(long)]
        json: bool,
        /// A label printed with the result.
        #[arg(long, default_value = "bridge")]
        label: String,
        /// How to reach the server.
        #[command(flatten)]
        conn: Connection,
    },
    /// Run a plain HTTP echo service: any POST answers 200 with the request body, any GET 200 "ok".
    ///
    /// An upstream for benchmarks and experiments: `make bench-server` routes the bridge and
    /// nginx to it, to compare the two hops. No auth, no limits: loopback use only.
    ///
    /// Example:
    ///   dreamos-bridge echo-service --listen 127.0.0.1:9000
    #[command(verbatim_doc_comment)]
    EchoService {
        /// Address to listen on (port 0: any free port; the line printed at start names it).
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: std::net::SocketAddr,
    },
    /// Run a reverse proxy with no bridge logic: hyper's server in front, one pooled reqwest client behind.
    ///
    /// The floor of `make bench-server`: the same libraries as the bridge's hop to an HTTP
    /// service, configured as `serve` configures them, doing nothing but forwarding. Beside
    /// the bridge and nginx it shows what the libraries cost and what the bridge adds.
    /// No auth, no limits: loopback use only.
    ///
    /// Example:
    ///   dreamos-bridge plain-proxy --listen 127.0.0.1:9001 --upstream http://127.0.0.1:9000
    #[command(verbatim_doc_comment)]
    PlainProxy {
        /// Address to listen on (port 0: any free port; the line printed at start names it).
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: std::net::SocketAddr,
        /// Where requests go: scheme, host, port and an optional path prefix.
        #[arg(long)]
        upstream: String,
    },
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Decode a bridge token's header and claims WITHOUT verifying it.
    ///
    /// Example:
    ///   dreamos-bridge token inspect eyJhbGciOiJIUzI1NiIs...
    #[command(verbatim_doc_comment)]
    Inspect {
        /// The token (a JWT).
        token: String,
    },
    /// Mint a bridge token for a principal, signed with the config's first security.signing_keys entry.
    ///
    /// For operators who hold the config file (batch jobs, services without an API key).
    /// Every --role must be defined under security.roles. Prints the token alone on
    /// stdout; what it grants goes to stderr. Any server with the same signing keys
    /// accepts it until it expires (or is revoked with POST /v1/admin/revoke).
    ///
    /// Example:
    ///   TOKEN=$(dreamos-bridge token issue --config examples/bridge.yaml --principal nightly-report --role agent --ttl 1h)
    #[command(verbatim_doc_comment)]
    Issue {
        /// The YAML config file with security.signing_keys and security.roles.
        #[arg(long, short)]
        config: PathBuf,
        /// Who the token speaks for (the `sub` claim).
        #[arg(long)]
        principal: String,
        /// A role to grant; repeatable.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Lifetime, e.g. 90s, 15m, 1h (default: security.token_expiry).
        #[arg(long)]
        ttl: Option<String>,
    },
}

/// `dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters as JSON.
    ///
    /// Example:
    ///   dreamos-bridge dead-letters list --url http://127.0.0.1:8000 --api-key "$ADMIN_KEY"
    #[command(verbatim_doc_comment)]
    List {
        /// How to reach the server.
        #[command(flatten)]
        conn: Connection,
    },
    /// Deliver one dead letter again.
    ///
    /// Example:
    ///   dreamos-bridge dead-letters replay 0193a... --url http://127.0.0.1:8000 --api-key "$ADMIN_KEY"
    #[command(verbatim_doc_comment)]
    Replay {
        /// The dead letter's id.
        id: String,
        /// How to reach the server.
        #[command(flatten)]
        conn: Connection,
    },
}

/// How to reach a running server.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000", env = "DREAMOS_BRIDGE_URL")]
    pub url: String,
    /// API key to exchange for a token (or set DREAMOS_API_KEY).
    #[arg(long, env = "DREAMOS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A bridge token to use as is.
    #[arg(long, env = "DREAMOS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Accept any TLS certificate (self-signed test servers only).
    #[arg(long)]
    pub insecure: bool,
    /// Also trust the CA certificates in this PEM file (a server with a
    /// private or self-signed certificate), e.g. `--ca-file ca.pem`.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<std::path::PathBuf>,
}
