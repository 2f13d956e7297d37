//! Throughput and memory of the emulator, so it never bounds the
//! operator's own performance figures. Run:
//! `cargo run --release -p kube-emulator --example bench`
//! It prints numbers; it asserts nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    clippy::cast_precision_loss
)]

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, Config,
    api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use kube_emulator::Emulator;
use serde_json::json;

const OBJECTS: usize = 10_000;
const CONCURRENCY: usize = 8;

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

fn cm(i: usize) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": format!("cm-{i:05}"), "labels": {"app": "bench", "shard": format!("s{}", i % 10)}},
        "data": {"key": "x".repeat(256), "index": i.to_string()},
    }))
    .unwrap()
}

/// Runs `n` requests made by `f` with `CONCURRENCY` tasks; returns requests/s.
async fn rate<F, Fut>(n: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while i < n {
                f(i).await;
                i += CONCURRENCY;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let emulator = Emulator::start().await.unwrap();
    let client = Client::try_from(Config::new(emulator.url.parse().unwrap())).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let before = rss_mib();

    let a = api.clone();
    let create = rate(OBJECTS, move |i| {
        let a = a.clone();
        async move {
            a.create(&PostParams::default(), &cm(i)).await.unwrap();
        }
    })
    .await;
    let stored = rss_mib();

    let a = api.clone();
    let get = rate(5_000, move |i| {
        let a = a.clone();
        async move {
            a.get(&format!("cm-{:05}", i % OBJECTS)).await.unwrap();
        }
    })
    .await;

    let a = api.clone();
    let apply = rate(3_000, move |i| {
        let a = a.clone();
        async move {
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{:05}", i % OBJECTS)}, "data": {"applied": i.to_string()}});
            a.patch(&format!("cm-{:05}", i % OBJECTS), &PatchParams::apply("bench"), &Patch::Apply(body)).await.unwrap();
        }
    })
    .await;

    let a = api.clone();
    let list = rate(500, move |_| {
        let a = a.clone();
        async move {
            assert_eq!(
                a.list(&ListParams::default().limit(100))
                    .await
                    .unwrap()
                    .items
                    .len(),
                100
            );
        }
    })
    .await;
    let full = Instant::now();
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        OBJECTS
    );
    let full_list = full.elapsed();

    // Watch fan-out: 20 watchers, 100 updates; latency from sending the
    // write to each watcher's event (the write's own round trip included).
    let watchers = 20;
    let updates = 100;
    let rv = api
        .list(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for _ in 0..watchers {
        let (a, tx, rv) = (api.clone(), tx.clone(), rv.clone());
        tokio::spawn(async move {
            let mut stream = a
                .watch(&WatchParams::default().labels("app=bench").timeout(60), &rv)
                .await
                .unwrap()
                .boxed();
            while let Ok(Some(event)) = stream.try_next().await {
                if let WatchEvent::Modified(c) = event
                    && let Some(i) = c
                        .data
                        .as_ref()
                        .and_then(|d| d.get("seq"))
                        .and_then(|s| s.parse().ok())
                {
                    let _ = tx.send((i, Instant::now()));
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent = Vec::new();
    for i in 0..updates {
        sent.push(Instant::now());
        api.patch(
            "cm-00000",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"seq": i.to_string()}})),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies = Vec::new();
    while latencies.len() < watchers * updates {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some((i, at))) => {
                latencies.push(at.saturating_duration_since(sent[i]).as_secs_f64() * 1000.0);
            }
            _ => break,
        }
    }
    latencies.sort_by(f64::total_cmp);
    // Nearest-rank percentile, in integer arithmetic.
    let pct = |percent: usize| {
        latencies
            .get(latencies.len().saturating_sub(1) * percent / 100)
            .copied()
            .unwrap_or(f64::NAN)
    };

    println!(
        "kube-emulator benchmark (client and server in one process, {CONCURRENCY} concurrent requests, 2 worker threads)"
    );
    println!("  create          {create:>8.0} requests/s ({OBJECTS} ConfigMaps)");
    println!("  get             {get:>8.0} requests/s");
    println!("  apply (SSA)     {apply:>8.0} requests/s");
    println!(
        "  list (limit 100){list:>8.0} requests/s; full list of {OBJECTS}: {:.0} ms",
        full_list.as_secs_f64() * 1000.0
    );
    println!(
        "  watch fan-out   {watchers} watchers x {updates} updates: {} events, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        pct(50),
        pct(99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  memory          {:.1} MiB resident for {OBJECTS} objects (process {:.1} MiB before, {:.1} MiB after)",
        stored - before,
        before,
        stored
    );
    println!("  stored objects  {}", emulator.store.len());
}
