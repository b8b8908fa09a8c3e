//! The HTTP ceiling for `bench/run.sh`: actix-web answering `GET /hello` with a
//! fixed body and nothing else, built from this workspace with the server's
//! worker count (one per core), so that each benchmarked path can be compared
//! with what the same machine serves in the same run when a route does no work.
//!
//!     cargo run --release -p keyledger-api --example http_ceiling -- 127.0.0.1:18090

use actix_web::{web, App, HttpResponse, HttpServer};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".to_owned());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    HttpServer::new(|| {
        App::new().route(
            "/hello",
            web::get().to(|| async { HttpResponse::Ok().body("hello") }),
        )
    })
    .workers(workers)
    .bind(bind)?
    .run()
    .await
}
