//! BEP 12 tier order and per-tracker status.
//!
//! Kept apart from the network: `announce` takes the per-URL announce as a closure, so the order
//! and promotion rules are tested without sockets.

use std::collections::HashMap;
use std::future::Future;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::Rng;

use super::{AnnounceResponse, TrackerError};

/// The outcome of a tracker's most recent announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackerResult {
    /// Not announced to yet.
    Never,
    /// It answered, with this many peers.
    Ok {
        /// Peers in the reply.
        peers: usize,
    },
    /// It failed; the error's message.
    Error(String),
}

/// One tracker as a UI shows it.
#[derive(Clone, Debug)]
pub struct TrackerStatus {
    /// Announce URL.
    pub url: String,
    /// Its BEP 12 tier (0 is tried first).
    pub tier: usize,
    /// How its last announce went.
    pub last_result: TrackerResult,
    /// When its last announce finished (`None`: never).
    pub last_announce: Option<Instant>,
}

#[derive(Clone, Debug)]
pub(crate) struct Tiers {
    tiers: Vec<Vec<String>>,
    status: HashMap<String, (TrackerResult, Option<Instant>)>,
}

impl Tiers {
    /// BEP 12: "the URLs within each tier are processed in a randomly chosen order", shuffled once
    /// here. Blank URLs, empty tiers and repeated URLs are dropped.
    pub(crate) fn new(tiers: Vec<Vec<String>>, rng: &mut impl Rng) -> Self {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for tier in tiers {
            let mut tier: Vec<String> = tier
                .into_iter()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty() && seen.insert(u.clone()))
                .collect();
            if !tier.is_empty() {
                tier.shuffle(rng);
                out.push(tier);
            }
        }
        let status = seen
            .into_iter()
            .map(|u| (u, (TrackerResult::Never, None)))
            .collect();
        Tiers { tiers: out, status }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// Try tier by tier, tracker by tracker; the first to answer moves to the front of its tier.
    pub(crate) async fn announce<F, Fut>(
        &mut self,
        mut announce_one: F,
    ) -> Result<(String, AnnounceResponse), TrackerError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<AnnounceResponse, TrackerError>>,
    {
        let mut last_error = TrackerError::NoTrackers;
        for t in 0..self.tiers.len() {
            for i in 0..self.tiers[t].len() {
                let url = self.tiers[t][i].clone();
                let result = announce_one(url.clone()).await;
                let outcome = match &result {
                    Ok(r) => TrackerResult::Ok {
                        peers: r.peers.len(),
                    },
                    Err(e) => TrackerResult::Error(e.to_string()),
                };
                self.status
                    .insert(url.clone(), (outcome, Some(Instant::now())));
                match result {
                    Ok(response) => {
                        let tier = &mut self.tiers[t];
                        let winner = tier.remove(i);
                        tier.insert(0, winner);
                        return Ok((url, response));
                    }
                    Err(e) => last_error = e,
                }
            }
        }
        Err(last_error)
    }

    pub(crate) fn status(&self) -> Vec<TrackerStatus> {
        let mut out = Vec::new();
        for (tier, urls) in self.tiers.iter().enumerate() {
            for url in urls {
                let (last_result, last_announce) = self
                    .status
                    .get(url)
                    .cloned()
                    .unwrap_or((TrackerResult::Never, None));
                out.push(TrackerStatus {
                    url: url.clone(),
                    tier,
                    last_result,
                    last_announce,
                });
            }
        }
        out
    }

    #[cfg(test)]
    fn order(&self) -> Vec<Vec<&str>> {
        self.tiers
            .iter()
            .map(|t| t.iter().map(String::as_str).collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rand::SeedableRng;

    use super::*;

    fn tiers(spec: &[&[&str]]) -> Tiers {
        let spec = spec
            .iter()
            .map(|t| t.iter().map(|u| u.to_string()).collect())
            .collect();
        Tiers::new(spec, &mut rand::rngs::StdRng::seed_from_u64(7))
    }

    /// Announce where URLs containing "ok" answer with one peer and the rest fail; records calls.
    async fn run(
        t: &mut Tiers,
    ) -> (
        Result<(String, AnnounceResponse), TrackerError>,
        Vec<String>,
    ) {
        let calls = Mutex::new(Vec::new());
        let result = t
            .announce(|url| {
                calls.lock().unwrap().push(url.clone());
                let ok = url.contains("ok");
                async move {
                    if ok {
                        Ok(AnnounceResponse {
                            peers: vec!["1.2.3.4:5".parse().unwrap()],
                            ..Default::default()
                        })
                    } else {
                        Err(TrackerError::Failure(format!("{url} down")))
                    }
                }
            })
            .await;
        (result, calls.into_inner().unwrap())
    }

    #[test]
    fn construction_shuffles_within_tiers_only() {
        let t = tiers(&[&["a", " ", "b", "c", "d", "e"], &[], &["f", "a"], &["g"]]);
        let order = t.order();
        assert_eq!(order.len(), 3);
        let mut first = order[0].clone();
        first.sort();
        assert_eq!(first, ["a", "b", "c", "d", "e"]);
        assert_eq!(order[1], ["f"]);
        assert_eq!(order[2], ["g"]);
        // Some seed must move something, or this is not a shuffle.
        let moved = (0..20u64).any(|s| {
            let spec = vec![vec![
                "a".into(),
                "b".into(),
                "c".into(),
                "d".into(),
                "e".into(),
            ]];
            Tiers::new(spec, &mut rand::rngs::StdRng::seed_from_u64(s)).order()[0]
                != ["a", "b", "c", "d", "e"]
        });
        assert!(moved);
        assert!(tiers(&[&[], &[""]]).is_empty());
    }

    #[tokio::test]
    async fn tries_in_order_and_promotes_the_one_that_answers() {
        let mut t = tiers(&[&["x1"], &["y1", "y2-ok", "y3"], &["z-ok"]]);
        t.tiers[1] = vec!["y1".into(), "y2-ok".into(), "y3".into()];
        let (result, calls) = run(&mut t).await;
        assert_eq!(result.unwrap().0, "y2-ok");
        assert_eq!(calls, ["x1", "y1", "y2-ok"]);
        assert_eq!(
            t.order(),
            vec![vec!["x1"], vec!["y2-ok", "y1", "y3"], vec!["z-ok"]]
        );

        let (_, calls) = run(&mut t).await;
        assert_eq!(calls, ["x1", "y2-ok"]);

        let status = t.status();
        assert_eq!(
            status.iter().map(|s| s.url.as_str()).collect::<Vec<_>>(),
            ["x1", "y2-ok", "y1", "y3", "z-ok"]
        );
        assert_eq!(
            status[0].last_result,
            TrackerResult::Error("tracker refused: x1 down".into())
        );
        assert_eq!(status[1].last_result, TrackerResult::Ok { peers: 1 });
        assert_eq!(status[1].tier, 1);
        assert!(status[1].last_announce.is_some());
        assert_eq!(status[3].last_result, TrackerResult::Never);
        assert!(status[3].last_announce.is_none());
    }

    #[tokio::test]
    async fn all_failing_returns_the_last_error() {
        let mut t = tiers(&[&["a"], &["b"]]);
        let (result, calls) = run(&mut t).await;
        assert_eq!(calls, ["a", "b"]);
        assert!(matches!(result, Err(TrackerError::Failure(m)) if m == "b down"));
        let (result, _) = run(&mut tiers(&[])).await;
        assert!(matches!(result, Err(TrackerError::NoTrackers)));
    }
}
