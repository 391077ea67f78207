//! Connections to Redis, one Redis or a Redis Cluster alike: the writer's and heartbeat's
//! connection (reconnecting by itself), the tail's own connection (an `XREAD BLOCK` must not
//! hold up writes), and direct connections to every master for a resync's `SCAN`. Every
//! call has a response timeout: nothing here can wait forever on a silent Redis.
//! `rediss://` URLs connect over TLS (OpenSSL, through native-tls), verified against
//! `[cluster.redis_tls] ca_file` or else the system's CA store.

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, Cmd, ErrorKind, Pipeline, RedisError,
    RedisFuture, RedisResult, TlsCertificates, Value,
};
use siprox::config::ClusterConfig;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a command may take (a tail's `XREAD BLOCK` gets its block time on top).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to one Redis or to a Redis Cluster.
pub enum Conn {
    Manager(ConnectionManager),
    Direct(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The CA (and client certificate) of `[cluster.redis_tls]` for `rediss://`; `None`: plain
/// Redis, or TLS verified against the system's CA store. Read at each connection (rare), so
/// that a renewed file is picked up; an unreadable one is an error naming its key.
fn certificates(cfg: &ClusterConfig) -> RedisResult<Option<TlsCertificates>> {
    let Some(t) = cfg.redis_tls.as_ref().filter(|_| cfg.redis_is_tls()) else {
        return Ok(None);
    };
    let read = |key: &'static str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "cannot read a TLS file",
                format!("cluster.redis_tls.{key}: {}: {e}", p.display()),
            ))
        })
    };
    let root_cert = match &t.ca_file {
        Some(p) => Some(read("ca_file", p)?),
        None => None,
    };
    let client_tls = match (&t.certificate, &t.private_key) {
        (Some(c), Some(k)) => Some(ClientTlsConfig {
            client_cert: read("certificate", c)?,
            client_key: read("private_key", k)?,
        }),
        _ => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// A client for `url`, with the TLS material of `[cluster.redis_tls]` when it has some.
fn client(cfg: &ClusterConfig, url: &str) -> RedisResult<Client> {
    match certificates(cfg)? {
        Some(certs) => Client::build_with_tls(url, certs),
        None => Client::open(url),
    }
}

fn cluster_client(
    cfg: &ClusterConfig,
    response: Duration,
) -> RedisResult<redis::cluster::ClusterClient> {
    // `rediss://` seeds verify against the system's CA store: redis-rs takes a CA of its
    // own for a Redis Cluster only with its rustls backend (`siprox check` refuses
    // `[cluster.redis_tls]` with a Redis Cluster).
    redis::cluster::ClusterClient::builder(cfg.redis.clone())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response)
        .retries(1)
        .build()
}

/// The connection writes and heartbeats share.
pub async fn connect(cfg: &ClusterConfig) -> RedisResult<Conn> {
    if cfg.is_redis_cluster() {
        let c = cluster_client(cfg, RESPONSE_TIMEOUT)?;
        return Ok(Conn::Cluster(c.get_async_connection().await?));
    }
    let client = client(cfg, &cfg.redis[0])?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    Ok(Conn::Manager(
        client.get_connection_manager_with_config(config).await?,
    ))
}

/// The tail's own connection: its `XREAD BLOCK block` may take `block` plus the usual time.
pub async fn connect_tail(cfg: &ClusterConfig, block: Duration) -> RedisResult<Conn> {
    if cfg.is_redis_cluster() {
        let c = cluster_client(cfg, block + RESPONSE_TIMEOUT)?;
        return Ok(Conn::Cluster(c.get_async_connection().await?));
    }
    direct(cfg, &cfg.redis[0], block + RESPONSE_TIMEOUT).await
}

async fn direct(cfg: &ClusterConfig, url: &str, response: Duration) -> RedisResult<Conn> {
    let client = client(cfg, url)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response));
    Ok(Conn::Direct(
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await?,
    ))
}

/// Connections that together see every key: the one Redis, or each master of a Redis
/// Cluster (from `CLUSTER NODES`), for `SCAN`, which walks one server's keys only.
pub async fn masters(cfg: &ClusterConfig, conn: &mut Conn) -> RedisResult<Vec<Conn>> {
    if !cfg.is_redis_cluster() {
        return Ok(vec![direct(cfg, &cfg.redis[0], RESPONSE_TIMEOUT).await?]);
    }
    let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
    let scheme = if cfg.redis[0].starts_with("rediss://") {
        "rediss"
    } else {
        "redis"
    };
    let mut out = Vec::new();
    for addr in master_addrs(&text) {
        out.push(direct(cfg, &format!("{scheme}://{addr}"), RESPONSE_TIMEOUT).await?);
    }
    Ok(out)
}

/// `host:port` of every master that is not failed, from `CLUSTER NODES` text
/// (`<id> <host:port@cport[,hostname]> <flags> ...`).
pub fn master_addrs(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let _id = parts.next()?;
            let addr = parts.next()?;
            let flags = parts.next()?;
            let is_master = flags.split(',').any(|f| f == "master");
            let failed = flags.split(',').any(|f| f == "fail" || f == "noaddr");
            if !is_master || failed {
                return None;
            }
            let hp = addr.split(['@', ',']).next()?;
            (!hp.is_empty() && !hp.starts_with(':')).then(|| hp.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let text = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                    b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922\n\
                    c3 127.0.0.1:7002@17002 slave b2 0 0 2 connected\n\
                    d4 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected\n";
        assert_eq!(
            super::master_addrs(text),
            vec!["127.0.0.1:7000".to_owned(), "127.0.0.1:7001".to_owned()]
        );
    }
}
