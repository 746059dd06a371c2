//! `GET /metrics`: Prometheus text. Only for loopback clients or trusted
//! proxies themselves (a scraper on the proxy host): the route is
//! `Access::Local`, so `routes::dispatch` answers anyone else 404 and the
//! endpoint's existence is not advertised to the internet.

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};
use crate::metrics::Gauges;

pub fn get(app: &App, _ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let (pool_waits, pool_timeouts) = app.db.pool_wait_counts();
    let mut g = Gauges {
        pool_waits,
        pool_timeouts,
        writes_in_flight: app.db.writes_in_flight() as u64,
        active_streams: app.active_streams() as u64,
        uptime_s: app.started.elapsed().as_secs(),
        ..Default::default()
    };
    if let Some(s) = app.stats() {
        g.queue_depth = s.queue_depth() as u64;
        g.busy_workers = s.busy_workers() as u64;
        g.open_connections = s.open_connections() as u64;
    }
    let mut text = app.metrics.render(&g);
    app.upstreams.render_metrics(&mut text);
    app.usage.render_metrics(&mut text);
    Ok(Reply::bytes(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        text.into_bytes(),
    ))
}
