//! `enclave run`: the HTTP endpoints, the backends, leader election, and
//! the two controllers, instrumented (metrics, one span per reconcile).

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{apps::v1::StatefulSet, batch::v1::Job, core::v1::Namespace},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Resource as _, ResourceExt,
    runtime::{
        Controller, Predicate, WatchStreamExt,
        controller::{self, Action},
        predicates,
        reflector::{self, ObjectRef, reflector},
        watcher::{self, watcher},
    },
};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tracing::Instrument;

use super::{
    Backends, Context, Error,
    audit::Audit,
    aws_config,
    cache::Passed,
    company, connect_vault, databases, developer, error_policy, http,
    lean::Lean,
    reset_failures, triggers,
    unmanaged::{Unmanaged, unwrapped},
};
use crate::{
    backends::{
        aws_calls::{CallStats, deferring},
        storage::FsxFileSystems,
        vault::VaultClientBackend,
    },
    config::OperatorConfig,
    crd::{Company, Developer},
    names::{CompanyNames, LABEL_COMPANY},
};

/// How often setting up leader election is retried (after 2, 4, 8, 16 s)
/// before `enclave run` gives up.
const LEASE_SETUP_RETRIES: u32 = 4;

/// How `enclave run` runs (flags; the tenant defaults are in the config).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_address: SocketAddr,
    /// Take a Lease before acting, so two replicas never both act.
    pub leader_election: bool,
    /// Name of the Lease (in the operator namespace).
    pub lease_name: String,
    /// Seconds a leader's Lease stays valid without renewal.
    pub lease_seconds: u64,
    /// This replica's name in the Lease and in Events.
    pub identity: String,
}

/// One Company reconcile, timed and counted by outcome in the metrics.
pub(super) async fn reconcile_company<B: Backends>(
    company: Arc<Company>,
    ctx: Arc<Context<B>>,
) -> Result<Action, Error> {
    let span = tracing::info_span!("reconcile", kind = "Company", name = %company.name_any());
    let started = Instant::now();
    // AWS calls answer "busy, come back at T" instead of holding a worker.
    let result = deferring(company::reconcile(company, Arc::clone(&ctx)))
        .instrument(span)
        .await;
    ctx.health
        .metrics
        .reconciled("Company", started.elapsed(), result.as_ref().err());
    result
}

/// One Developer reconcile, timed and counted by outcome in the metrics.
pub(super) async fn reconcile_developer<B: Backends>(
    developer: Arc<Developer>,
    ctx: Arc<Context<B>>,
) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "reconcile",
        kind = "Developer",
        namespace = %developer.namespace().unwrap_or_default(),
        name = %developer.name_any()
    );
    let started = Instant::now();
    let result = deferring(developer::reconcile(developer, Arc::clone(&ctx)))
        .instrument(span)
        .await;
    ctx.health
        .metrics
        .reconciled("Developer", started.elapsed(), result.as_ref().err());
    result
}

/// How long a Company's triggers are gathered into one reconcile: its
/// Developers tend to arrive together (one `kubectl apply`, one GitOps
/// sync), and each arrival changes its count.
const COMPANY_DEBOUNCE: Duration = Duration::from_secs(1);

/// Runs both controllers until SIGTERM/SIGINT; `companies` fills the
/// Company cache the context reads.
async fn controllers(
    client: Client,
    ctx: Arc<Context>,
    companies: reflector::store::Writer<Company>,
) {
    let config =
        controller::Config::default().concurrency(ctx.config.controller.max_concurrent_reconciles);
    // The watch cache lives as long as the controllers that read it, and
    // passes the workspaces it sees on to the Developer controller.
    let (workspaces, seen_workspaces) = futures::channel::mpsc::unbounded();
    let cache = super::cache::run(client.clone(), Arc::clone(&ctx.cache), workspaces);
    let controllers = futures::future::join(
        company_controller(
            client.clone(),
            config.clone().debounce(COMPANY_DEBOUNCE),
            Arc::clone(&ctx),
        ),
        developer_controller(client, config, ctx, companies, seen_workspaces),
    );
    tokio::select! {
        _ = controllers => {}
        () = cache => {}
    }
}

/// Forgets the failures of objects whose reconcile succeeded.
fn settle<K>(ctx: &Context, result: Result<(ObjectRef<K>, Action), impl std::fmt::Display>)
where
    K: kube::Resource<DynamicType = ()>,
{
    match result {
        Ok((object, _)) => reset_failures(ctx, &object.erase().to_string()),
        Err(error) => tracing::debug!(%error, "reconcile error"),
    }
}

/// The objects of `api` (cached through `writer`) when their spec, labels,
/// annotations or deletion changed: a controller's own status writes and
/// finalizer additions do not wake it again (it adds its finalizer and goes
/// on in the same reconcile; deletion bumps the generation).
fn own_changes<K>(
    api: Api<Unmanaged<K>>,
    writer: reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    changed(
        unwrapped(watcher(api, watcher::Config::default()))
            .default_backoff()
            .modify(unread_dropped)
            .reflect(writer)
            .applied_objects(),
        predicates::generation
            .combine(predicates::annotations)
            .combine(predicates::labels)
            .combine(|o: &K| Some(u64::from(o.meta().deletion_timestamp.is_some()))),
    )
}

/// How long [`changed`] remembers an object it has not seen since: an
/// object seen again after that passes (as with kube's predicate filter).
const CHANGED_TTL: Duration = Duration::from_hours(1);

/// The objects of `stream` whose `predicate` value changed since it last
/// passed one of them (the first sight of each passes; so does every object
/// the predicate has no value for). kube's `predicate_filter` does the
/// same, but keys its memory by copies of each object's name, namespace and
/// uid: about 200 bytes per object, here 32 (a hash of them).
fn changed<K, P>(
    stream: impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    predicate: P,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Send + 'static,
    P: Predicate<K> + Send + 'static,
{
    let mut seen: HashMap<u64, (u64, Instant)> = HashMap::new();
    let mut evicted = Instant::now();
    stream.filter(move |item| {
        let pass = match item {
            Ok(object) => predicate.hash_property(object).is_none_or(|value| {
                let now = Instant::now();
                if now.duration_since(evicted) >= CHANGED_TTL {
                    seen.retain(|_, (_, at)| now.duration_since(*at) < CHANGED_TTL);
                    evicted = now;
                }
                let meta = object.meta();
                let key = super::hash_of(&(&meta.namespace, &meta.name, &meta.uid));
                seen.insert(key, (value, now))
                    .is_none_or(|(last, at)| last != value || now.duration_since(at) >= CHANGED_TTL)
            }),
            Err(_) => true,
        };
        futures::future::ready(pass)
    })
}

/// Drops from an object kept in a store what no reconcile reads: a copy
/// of the whole object that `kubectl apply` leaves (its field managers are
/// not read at all: the watches read [`Unmanaged`] objects).
fn unread_dropped<K: kube::Resource>(o: &mut K) {
    o.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// Enclave's StatefulSets (as the watch cache saw them) when their spec,
/// deletion or ready replicas changed, or when they are gone (a relist
/// that no longer brings one says it went while the watch was down); not
/// at their creation (the Developer that created one learns nothing new:
/// its first ready replica will tell; a spec changed by someone else bumps
/// the generation past 1).
fn workspace_changes(
    seen: impl futures::Stream<Item = Passed<StatefulSet>> + Send + 'static,
) -> impl futures::Stream<Item = Result<StatefulSet, watcher::Error>> + Send + 'static {
    /// What was last passed on of one StatefulSet: its generation and
    /// ready replicas (the StatefulSet controller's other status counters
    /// are not news), and its namespace, name and owning Developer, to wake
    /// that Developer should a relist find it gone. One per Developer: kept
    /// small (a whole `ObjectMeta` is most of a kilobyte; three strings,
    /// about 150 bytes).
    struct Last {
        generation: Option<i64>,
        ready: i32,
        /// `namespace/name/developer` (none of them holds a `/`; a missing
        /// one is empty).
        who: Box<str>,
    }
    // The synthetic StatefulSet that stands for one gone: what `owns_stream`
    // reads (its name too: kube makes an object reference of it first).
    let gone_set = |l: Last| {
        let mut who = l.who.splitn(3, '/').map(str::to_owned);
        let (namespace, name, developer) = (who.next(), who.next(), who.next());
        let given = |s: Option<String>| s.filter(|s| !s.is_empty());
        StatefulSet {
            metadata: ObjectMeta {
                name: given(name),
                namespace: given(namespace),
                owner_references: given(developer).map(|name| {
                    vec![OwnerReference {
                        api_version: Developer::api_version(&()).into_owned(),
                        kind: Developer::kind(&()).into_owned(),
                        name,
                        ..OwnerReference::default()
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..StatefulSet::default()
        }
    };
    let mut last: HashMap<u64, Last> = HashMap::new();
    let mut relisted: Option<std::collections::HashSet<u64>> = None;
    let key = |set: &StatefulSet| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&set.metadata.namespace, &set.metadata.name).hash(&mut hasher);
        hasher.finish()
    };
    seen.flat_map(move |passed| {
        let news: Vec<StatefulSet> = match passed {
            // The pod it waited for is gone with it: the Developer's
            // deletion goes on now, not at its next retry.
            Passed::Deleted(set) => {
                last.remove(&key(&set));
                vec![set]
            }
            Passed::Relisting => {
                relisted = Some(std::collections::HashSet::new());
                Vec::new()
            }
            Passed::Relisted => {
                let listed = relisted.take().unwrap_or_default();
                let gone: Vec<u64> = last
                    .keys()
                    .filter(|k| !listed.contains(k))
                    .copied()
                    .collect();
                gone.into_iter()
                    .filter_map(|k| last.remove(&k))
                    .map(gone_set)
                    .collect()
            }
            Passed::Applied(set) => {
                let k = key(&set);
                if let Some(listed) = &mut relisted {
                    listed.insert(k);
                }
                let ready = set
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                let now = (set.metadata.generation, ready);
                let developer = set
                    .owner_references()
                    .iter()
                    .find(|o| {
                        o.kind == Developer::kind(&())
                            && o.api_version == Developer::api_version(&())
                    })
                    .map_or("", |o| o.name.as_str());
                let who = format!(
                    "{}/{}/{developer}",
                    set.metadata.namespace.as_deref().unwrap_or_default(),
                    set.metadata.name.as_deref().unwrap_or_default(),
                );
                let previous = last.insert(
                    k,
                    Last {
                        generation: now.0,
                        ready,
                        who: who.into_boxed_str(),
                    },
                );
                let previous = previous.map(|l| (l.generation, l.ready));
                let created = previous.is_none()
                    && now == (Some(1), 0)
                    && set.metadata.deletion_timestamp.is_none();
                if previous != Some(now) && !created {
                    vec![set]
                } else {
                    Vec::new()
                }
            }
        };
        futures::stream::iter(news.into_iter().map(Ok))
    })
}

/// The Company controller: woken by its Companies, their Developers
/// (count) and their namespaces.
async fn company_controller(client: Client, config: controller::Config, ctx: Arc<Context>) {
    let (reader, writer) = reflector::store();
    let controller = Controller::for_stream(
        own_changes(Api::<Unmanaged<Company>>::all(client.clone()), writer),
        reader,
    );
    // A Developer added, going or gone changes its Company (its count, its
    // cleanup); its spec and status patches do not, and are not passed on.
    let known_companies = controller.store();
    let resync = {
        let ctx = Arc::clone(&ctx);
        periodic_resync(
            controller.store(),
            ctx.resync_interval(),
            move |c: &Company| ctx.resync_due(c, &company::checked_key(c)),
        )
    };
    let settled = Arc::clone(&ctx);
    let developers = triggers::membership_changes(
        watcher::watcher(
            Api::<triggers::DeveloperMeta>::all(client.clone()),
            watcher::Config::default(),
        ),
        Arc::clone(&ctx.membership),
    );
    controller
        .with_config(config)
        .watches_stream(developers, move |developer| {
            let namespace = developer.namespace().unwrap_or_default();
            known_companies
                .state()
                .iter()
                .filter(|c| {
                    CompanyNames::new(&c.name_any(), c.spec.namespace.as_deref()).namespace()
                        == namespace
                })
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        })
        // Namespaces carry no owner reference (deleting a Company must never
        // cascade into a tenant's data), so they are mapped by label (read
        // without their spec and status: only labels are used).
        .watches(
            Api::<Lean<Namespace>>::all(client.clone()),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=enclave"),
            |ns| {
                ns.labels()
                    .get(LABEL_COMPANY)
                    .map(|company| ObjectRef::<Company>::new(company))
            },
        )
        .reconcile_all_on(resync_signal(Arc::clone(&settled)))
        .reconcile_on(resync)
        .shutdown_on_signal()
        .run(reconcile_company, error_policy, ctx)
        .for_each(|result| {
            let ctx = Arc::clone(&settled);
            async move { settle(&ctx, result) }
        })
        .await;
}

/// The Developer controller: woken by its Developers, their Company and
/// their workspace StatefulSets.
async fn developer_controller(
    client: Client,
    config: controller::Config,
    ctx: Arc<Context>,
    writer: reflector::store::Writer<Company>,
    workspaces: impl futures::Stream<Item = Passed<StatefulSet>> + Send + 'static,
) {
    let (reader, developers) = reflector::store();
    let controller = Controller::for_stream(
        own_changes(Api::<Unmanaged<Developer>>::all(client.clone()), developers),
        reader,
    );
    // A Company's change that its Developers build on (its namespace or
    // storage becoming ready, its spec) reaches them at once; its other
    // status patches do not.
    let known = controller.store();
    let resync = {
        let ctx = Arc::clone(&ctx);
        periodic_resync(
            controller.store(),
            ctx.resync_interval(),
            move |d: &Developer| ctx.resync_due(d, &developer::checked_key(d)),
        )
    };
    let settled = Arc::clone(&ctx);
    let companies = ctx.companies.clone();
    let company_events = changed(
        reflector(
            writer,
            unwrapped(watcher(
                Api::<Unmanaged<Company>>::all(client.clone()),
                watcher::Config::default(),
            ))
            .modify(unread_dropped),
        )
        .touched_objects(),
        |c: &Company| Some(triggers::company_view(c)),
    );
    let operator_namespace = ctx.config.operator_namespace.clone();
    controller
        .with_config(config)
        .watches_stream(company_events, move |company| {
            let namespace =
                CompanyNames::new(&company.name_any(), company.spec.namespace.as_deref())
                    .namespace()
                    .to_owned();
            // Every Developer is looked at: borrowed, not copied.
            known
                .state()
                .iter()
                .filter(|d| d.metadata.namespace.as_deref() == Some(namespace.as_str()))
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        // A workspace wakes its Developer when its spec or readiness
        // changes, not for each of the StatefulSet controller's counters.
        .owns_stream(workspace_changes(workspaces))
        // Storage Jobs run in the operator's namespace: no owner reference
        // can cross to a Developer, so they are mapped by their labels
        // (read without their spec and status).
        .watches(
            Api::<Lean<Job>>::namespaced(client, &operator_namespace),
            watcher::Config::default().labels("app.kubernetes.io/managed-by=enclave"),
            move |job| triggers::developer_of_job(job.labels(), &companies),
        )
        .reconcile_all_on(resync_signal(Arc::clone(&settled)))
        .reconcile_on(resync)
        .shutdown_on_signal()
        .run(reconcile_developer, error_policy, ctx)
        .for_each(|result| {
            let ctx = Arc::clone(&settled);
            async move { settle(&ctx, result) }
        })
        .await;
}

/// Renews (or re-obtains) the operator's Vault token at half its TTL, so
/// it never expires under the controllers; a token without a TTL (a root
/// or periodic token outside Kubernetes auth) is looked at hourly.
async fn keep_vault_token_fresh(vault: Arc<VaultClientBackend>) {
    loop {
        let wait = match vault.token_ttl().await {
            Ok(0) => {
                // Never expires: nothing to renew.
                tokio::time::sleep(Duration::from_hours(1)).await;
                continue;
            }
            Ok(ttl) => Duration::from_millis(ttl * 500),
            Err(e) => {
                tracing::warn!(error = %e, "cannot look up the operator's Vault token; logging in again");
                Duration::ZERO
            }
        };
        tokio::time::sleep(wait).await;
        match vault.refresh().await {
            Ok(()) => tracing::debug!("renewed the operator's Vault token"),
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the operator's Vault token; retrying in 10 s");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

/// Copies the backends' own request counters into the metrics every few
/// seconds (they count every HTTP request, retries included).
async fn sample_backend_counters(ctx: Arc<Context>) {
    let (mut rds, mut fsx, mut vault) = (CallStats::default(), CallStats::default(), 0);
    loop {
        let metrics = &ctx.health.metrics;
        let now = ctx.databases.rds.calls();
        metrics.aws("rds", &now.since(&rds));
        rds = now;
        let now = ctx.file_systems.calls();
        metrics.aws("fsx", &now.since(&fsx));
        fsx = now;
        let now = ctx.vault.writes();
        metrics.vault_writes(now.saturating_sub(vault));
        vault = now;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// In how many slices [`periodic_resync`] spreads one resync interval (at
/// most: a slice lasts at least [`RESYNC_SLICE_MIN`]).
const RESYNC_SLOTS: u32 = 60;

/// The shortest slice of [`periodic_resync`]: a short interval (a test's)
/// is cut in fewer slices rather than shorter ones.
const RESYNC_SLICE_MIN: Duration = Duration::from_millis(100);

/// Every object of `store` for which `due` says so, once per `every`,
/// spread evenly over it (each in the slice its uid hashes to): the
/// periodic resync of converged objects. The first pass starts one
/// interval after the start, which reconciles every object anyway. A
/// per-object requeue would do the same, at the price of an entry in the
/// controller's scheduler per object (about 770 bytes: two copies of its
/// reference, four strings each) for as long as it is converged.
fn periodic_resync<K>(
    store: reflector::Store<K>,
    every: Duration,
    due: impl Fn(&K) -> bool + Send + Sync + 'static,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let slots = u32::try_from(every.as_millis() / RESYNC_SLICE_MIN.as_millis())
        .unwrap_or(u32::MAX)
        .clamp(1, RESYNC_SLOTS);
    let tick = every / slots;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let due = Arc::new(due);
    futures::stream::unfold((ticks, 0), move |(mut ticks, slot)| {
        let (store, due) = (store.clone(), Arc::clone(&due));
        async move {
            ticks.tick().await;
            let now: Vec<ObjectRef<K>> = store
                .state()
                .iter()
                .filter(|o| super::hash_of(&o.meta().uid) % u64::from(slots) == slot)
                .filter(|o| due(o))
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect();
            Some((
                futures::stream::iter(now),
                (ticks, (slot + 1) % u64::from(slots)),
            ))
        }
    })
    .flatten()
}

/// Yields on each SIGHUP: every object is reconciled at once, as when its
/// resync interval elapses, external systems included (what was checked
/// recently is checked again). For a platform engineer who changed
/// something outside the cluster, and for the scale benchmark.
fn resync_signal(ctx: Arc<Context>) -> impl futures::Stream<Item = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(hangup) = signal(SignalKind::hangup()) {
            return futures::stream::unfold((hangup, ctx), |(mut hangup, ctx)| async move {
                hangup.recv().await?;
                tracing::info!("SIGHUP: reconciling every object now");
                ctx.checked
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
                Some(((), (hangup, ctx)))
            })
            .boxed();
        }
    }
    futures::stream::pending().boxed()
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs the operator until it is told to stop; `Err` says why it gave up
/// (it lost its Lease, or could not serve).
pub async fn run(
    client: Client,
    config: OperatorConfig,
    options: RunOptions,
) -> Result<(), String> {
    let health = Arc::new(http::Health::default());
    let bound = http::serve(options.http_address, Arc::clone(&health))
        .await
        .map_err(|e| format!("cannot serve on {}: {e}", options.http_address))?;
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    let Some(vault) = wait_for_vault(&config, &health).await else {
        return Ok(());
    };
    let sdk = aws_config(&config).await;
    let databases = databases(&config, &sdk, &vault);
    let file_systems = FsxFileSystems::new(&sdk, config.aws.call_limits());
    tokio::spawn(keep_vault_token_fresh(Arc::clone(&vault)));
    let (companies, writer) = reflector::store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        vault,
        databases,
        file_systems,
        allocation: super::Allocation::default(),
        health: Arc::clone(&health),
        audit: Audit::new(client.clone(), &options.identity),
        failures: std::sync::Mutex::default(),
        warned: std::sync::Mutex::default(),
        pruned: std::sync::Mutex::default(),
        cache: Arc::default(),
        companies,
        checked: std::sync::Mutex::default(),
        databases_written: std::sync::Mutex::default(),
        membership: std::sync::Arc::default(),
    });
    health.ready.store(true, Ordering::Relaxed);
    tokio::spawn(sample_backend_counters(Arc::clone(&ctx)));
    if options.leader_election {
        lead(client, ctx, writer, &options).await
    } else {
        health.metrics.set_leader(true);
        controllers(client, ctx, writer).await;
        Ok(())
    }
}

/// Connects to Vault, retrying with backoff (not ready meanwhile, saying
/// why): nearly every step needs it, so controllers that can only fail do
/// not start. `None`: told to stop first.
async fn wait_for_vault(
    config: &OperatorConfig,
    health: &http::Health,
) -> Option<Arc<VaultClientBackend>> {
    if let Ok(mut waiting) = health.waiting_for.lock() {
        *waiting = "connecting to Vault".into();
    }
    let mut attempt = 0u32;
    loop {
        match connect_vault(config).await {
            Ok(vault) => return Some(vault),
            Err(e) => {
                attempt += 1;
                let delay = super::retry_delay(super::RetryClass::Transient, attempt);
                tracing::error!(error = %e, retry_in = ?delay, "cannot reach or log in to Vault; not ready until it can");
                if let Ok(mut waiting) = health.waiting_for.lock() {
                    *waiting = format!("Vault: {e}");
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop_signal() => return None,
                }
            }
        }
    }
}

/// Sets up leader election; a brief API error at start (an apiserver
/// restarting, a 5xx) is retried, one that lasts names the rights to check.
async fn lease_manager(
    client: Client,
    namespace: &str,
    options: &RunOptions,
) -> Result<LeaseManager, String> {
    let mut attempt = 0;
    loop {
        let built = LeaseManagerBuilder::new(client.clone(), &options.lease_name)
            .with_namespace(namespace)
            .with_identity(&options.identity)
            .with_duration(options.lease_seconds)
            .with_grace((options.lease_seconds / 3).max(1))
            .with_field_manager("enclave-leader-election")
            .build()
            .await;
        match built {
            Ok(manager) => return Ok(manager),
            Err(e) if attempt < LEASE_SETUP_RETRIES => {
                attempt += 1;
                let delay = Duration::from_secs(1 << attempt);
                tracing::warn!(error = %e, attempt, retry_in = ?delay, "cannot set up leader election yet");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                return Err(format!(
                    "cannot set up leader election: {e}; check that the operator's Role allows create, get and patch on Lease {namespace}/{}",
                    options.lease_name
                ));
            }
        }
    }
}

/// Runs the controllers while this replica holds the Lease.
async fn lead(
    client: Client,
    ctx: Arc<Context>,
    companies: reflector::store::Writer<Company>,
    options: &RunOptions,
) -> Result<(), String> {
    let lease_namespace = ctx.config.operator_namespace.clone();
    let manager = lease_manager(client.clone(), &lease_namespace, options).await?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(identity = %options.identity, lease = %format!("{lease_namespace}/{}", options.lease_name), "waiting to lead");
    let acquired = tokio::select! {
        acquired = leading.wait_for(|l| *l) => Some(acquired.is_ok()),
        () = stop_signal() => None,
    };
    match acquired {
        Some(true) => {}
        Some(false) => {
            return Err("the leader election task ended before this replica could lead".into());
        }
        None => {
            drop(leading);
            let _ = lease_task.await;
            return Ok(());
        }
    }
    tracing::info!(identity = %options.identity, "leading: starting the controllers");
    let health = Arc::clone(&ctx.health);
    health.metrics.set_leader(true);
    let outcome = tokio::select! {
        () = controllers(client, ctx, companies) => Ok(()),
        _ = leading.wait_for(|l| !*l) => {
            health.metrics.set_leader(false);
            // Stop at once: another replica may act from now on.
            Err("lost the leader Lease; exiting so that only one replica acts".to_owned())
        }
    };
    // Closing the channel makes the task release the Lease, so a standby
    // takes over without waiting for it to expire.
    drop(leading);
    let _ = lease_task.await;
    outcome
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use serde_json::json;

    use super::{Passed, workspace_changes};
    use crate::crd::Developer;

    /// The workspace of Developer `name`.
    fn set(name: &str, generation: i64, ready: i32, deleting: bool) -> StatefulSet {
        let mut set = json!({"metadata": {"name": format!("ws-{name}"), "namespace": "company-acme",
                "generation": generation,
                "ownerReferences": [{"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
                    "name": name, "uid": "u", "controller": true}]},
            "status": {"replicas": 1, "readyReplicas": ready}});
        if deleting {
            set["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z");
        }
        serde_json::from_value(set).expect("a StatefulSet")
    }

    #[tokio::test]
    async fn a_workspace_wakes_its_developer_for_news_and_for_its_end() {
        use Passed::{Applied, Deleted, Relisted, Relisting};
        let seen = || {
            vec![
                Applied(set("a", 1, 0, false)), // created: not news
                Applied(set("a", 1, 1, false)), // its pod ready
                Applied(set("a", 1, 1, false)), // another status counter
                Applied(set("b", 1, 0, false)), // created
                Applied(set("a", 2, 1, false)), // its spec changed
                Applied(set("a", 3, 1, true)),  // being deleted
                Applied(set("a", 3, 0, true)),  // its pod gone
                Deleted(set("a", 3, 0, true)),  // gone, though nothing else changed
                Applied(set("a", 1, 0, false)), // re-created
                Applied(set("c", 1, 1, false)), // ready
                Applied(set("c", 1, 0, false)), // its pod no longer ready
                Relisting,                      // the watch lost its place
                Applied(set("b", 1, 0, false)), // unchanged
                Applied(set("c", 1, 0, false)), // unchanged
                Relisted,                       // "a" went meanwhile
            ]
        };
        let passed: Vec<(String, Option<i64>, i32)> =
            workspace_changes(futures::stream::iter(seen()))
                .map(|s| {
                    let s = s.expect("no watch error");
                    let ready = s.status.and_then(|st| st.ready_replicas).unwrap_or(0);
                    // The Developer it wakes (as `owns_stream` maps it).
                    let developer = s
                        .metadata
                        .owner_references
                        .unwrap_or_default()
                        .into_iter()
                        .find(|o| o.kind == "Developer" && o.api_version == "enclave.dev/v1alpha1")
                        .map(|o| o.name)
                        .unwrap_or_default();
                    assert_eq!(s.metadata.namespace.as_deref(), Some("company-acme"));
                    assert_eq!(s.metadata.name, Some(format!("ws-{developer}")));
                    (developer, s.metadata.generation, ready)
                })
                .collect()
                .await;
        let expected = [
            ("a", Some(1), 1),
            ("a", Some(2), 1),
            ("a", Some(3), 1),
            ("a", Some(3), 0),
            ("a", Some(3), 0),
            ("c", Some(1), 1),
            ("c", Some(1), 0),
            ("a", None, 0),
        ]
        .map(|(n, g, r)| (n.to_owned(), g, r));
        assert_eq!(passed, expected);
        // What the Developer controller's `owns_stream` makes of them.
        let woken: Vec<String> = kube::runtime::controller::trigger_owners::<Developer, _>(
            workspace_changes(futures::stream::iter(seen())),
            (),
            (),
        )
        .map(|request| request.expect("no watch error").obj_ref.name)
        .collect()
        .await;
        assert_eq!(woken, ["a", "a", "a", "a", "a", "c", "c", "a"]);
    }

    /// Developer `name` with `uid`, at `generation`.
    fn developer(name: &str, uid: &str, generation: i64) -> Developer {
        serde_json::from_value(
            json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
            "metadata": {"name": name, "namespace": "company-acme", "uid": uid,
                "generation": generation},
            "spec": {"subject": name}}),
        )
        .expect("a Developer")
    }

    #[tokio::test]
    async fn only_changes_pass_and_a_new_object_of_the_same_name_is_news() {
        use kube::runtime::predicates;
        let seen = [
            developer("a", "u1", 1), // first sight
            developer("a", "u1", 1), // a status patch
            developer("b", "u2", 1), // another object
            developer("a", "u1", 2), // its spec changed
            developer("a", "u1", 2), // again nothing new
            developer("a", "u3", 2), // deleted and re-created: a new uid
        ];
        let passed: Vec<(String, String, i64)> =
            super::changed(futures::stream::iter(seen.map(Ok)), predicates::generation)
                .map(|d| {
                    let d = d.expect("no watch error");
                    let m = d.metadata;
                    (m.name.unwrap(), m.uid.unwrap(), m.generation.unwrap())
                })
                .collect()
                .await;
        let expected = [
            ("a", "u1", 1),
            ("b", "u2", 1),
            ("a", "u1", 2),
            ("a", "u3", 2),
        ]
        .map(|(n, u, g)| (n.to_owned(), u.to_owned(), g));
        assert_eq!(passed, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn the_periodic_resync_brings_every_object_once_per_interval_spread_over_it() {
        use std::time::Duration;

        use kube::runtime::{reflector, watcher::Event};
        let (store, mut writer) = reflector::store::<Developer>();
        writer.apply_watcher_event(&Event::Init);
        for i in 0..300 {
            writer.apply_watcher_event(&Event::InitApply(developer(
                &format!("d{i}"),
                &format!("uid-{i}"),
                1,
            )));
        }
        writer.apply_watcher_event(&Event::InitDone);
        for (every, slots) in [(Duration::from_mins(10), 60), (Duration::from_secs(5), 50)] {
            resyncs_once_per_interval(store.clone(), every, slots).await;
        }
    }

    /// Three intervals of [`super::periodic_resync`] of the 300 `store` holds.
    async fn resyncs_once_per_interval(
        store: kube::runtime::reflector::Store<Developer>,
        every: std::time::Duration,
        slots: u32,
    ) {
        use std::collections::HashMap;
        // One object is not due (in error backoff, say): it never comes.
        let mut resync = std::pin::pin!(super::periodic_resync(store, every, |d: &Developer| {
            d.metadata.name.as_deref() != Some("d7")
        }));
        let start = tokio::time::Instant::now();
        let mut seen: HashMap<String, Vec<std::time::Duration>> = HashMap::new();
        let mut first_slice = 0;
        // Three intervals less half a slice: the first passes in silence
        // (the start itself reconciles everything), then two passes.
        let end = start + 3 * every - every / (2 * slots);
        while let Ok(Some(object)) = tokio::time::timeout_at(end, resync.next()).await {
            let at = start.elapsed();
            assert!(at >= every, "{} came {at:?} after the start", object.name);
            if at <= every + every / slots {
                first_slice += 1;
            }
            seen.entry(object.name).or_default().push(at);
        }
        assert_eq!(seen.len(), 299, "every object but the one not due comes");
        assert!(!seen.contains_key("d7"));
        for (name, times) in &seen {
            assert_eq!(times.len(), 2, "{name} comes once per interval: {times:?}");
            assert_eq!(
                times[1].checked_sub(times[0]),
                Some(every),
                "{name}: {times:?}"
            );
        }
        // Spread: the first slice brings no more than a few times its share.
        assert!(
            first_slice > 0 && first_slice < 4 * 300 / slots,
            "{first_slice} objects in the first of {slots} slices of {every:?}"
        );
    }
}
