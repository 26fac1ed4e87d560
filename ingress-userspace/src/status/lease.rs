//! Leader election with a `coordination.k8s.io` Lease: one replica writes status.
use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, Client, api::PostParams};

/// How long a lease holds without renewal, and how often it is renewed.
const LEASE_DURATION: Duration = Duration::from_secs(15);

pub(super) const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Leader election on one Lease, as client-go does it: take the lease when
/// it is free or expired, renew it while holding it; the API server's
/// optimistic concurrency (resourceVersion) decides races.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    leader: bool,
    /// When this replica last renewed the lease it holds.
    renewed: Option<std::time::Instant>,
    /// The lease's resourceVersion as last seen, and when (local clock):
    /// a lease expires when it has not changed for its duration as seen
    /// here, whatever the holder's clock says (client-go does the same).
    observed: Option<(String, std::time::Instant)>,
    /// The last error logged (each is logged once until it changes).
    failing: Option<String>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            leader: false,
            renewed: None,
            observed: None,
            failing: None,
        }
    }

    /// Whether this replica may still act as leader: it renewed the lease
    /// recently enough that nobody else can have taken it.
    pub fn still_leading(&self) -> bool {
        self.leader
            && self
                .renewed
                .is_some_and(|t| t.elapsed() + RENEW_EVERY < LEASE_DURATION)
    }

    /// One round: returns whether this replica leads now.
    pub async fn tick(&mut self) -> bool {
        let was = self.leader;
        self.leader = match self.try_lead().await {
            Ok(leading) => {
                self.failing = None;
                leading
            }
            Err(e) => {
                let text = e.to_string();
                if self.failing.as_ref() != Some(&text) {
                    let hint = match &e {
                        kube::Error::Api(s) if s.code == 403 => {
                            ": the ServiceAccount needs get, create and update on leases in this namespace (see deploy/base/rbac.yaml)"
                        }
                        _ => "",
                    };
                    tracing::warn!(lease = %self.name, error = %text, "leader election failed{hint}; not writing Ingress status, retrying");
                    self.failing = Some(text);
                }
                false
            }
        };
        if self.leader != was {
            tracing::info!(lease = %self.name, identity = %self.identity, leader = self.leader, "leadership changed");
        }
        self.leader
    }

    /// Gives the lease up if this replica holds it (on SIGTERM), as
    /// client-go's ReleaseOnCancel: no holder and a one-second duration, so
    /// another replica takes it at its next round instead of after the
    /// lease's duration.
    pub async fn release(&mut self) {
        if !self.leader {
            return;
        }
        self.leader = false;
        let released = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(false);
            };
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now());
            lease.spec = Some(spec);
            // resourceVersion kept: if someone else wrote meanwhile, theirs stands.
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        };
        match released.await {
            Ok(true) => {
                tracing::info!(lease = %self.name, identity = %self.identity, "lease released")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "releasing the lease failed; it runs out on its own")
            }
        }
    }

    async fn try_lead(&mut self) -> Result<bool, kube::Error> {
        let led = self.try_lead_once().await?;
        if led {
            self.renewed = Some(std::time::Instant::now());
        }
        Ok(led)
    }

    async fn try_lead_once(&mut self) -> Result<bool, kube::Error> {
        let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: acquired.or_else(|| Some(now())),
            renew_time: Some(now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let held = lease.spec.clone().unwrap_or_default();
        let mine = held.holder_identity.as_deref() == Some(self.identity.as_str());
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(v, _)| *v != version) {
            self.observed = Some((version, std::time::Instant::now()));
        }
        let duration = held
            .lease_duration_seconds
            .map_or(LEASE_DURATION, |s| Duration::from_secs(s.max(1) as u64));
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() > duration);
        let free = held.holder_identity.as_deref().is_none_or(str::is_empty);
        if !mine && !expired && !free {
            return Ok(false);
        }
        let transitions = held.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            held.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(spec(transitions, acquired));
        // resourceVersion is kept: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
