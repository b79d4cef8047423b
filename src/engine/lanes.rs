//! The scheduler's record of running lanes: which endpoints have one, and what happened
//! to each endpoint since its lane last claimed. It does no I/O; the engine holds it
//! under a lock and acts on what it answers.

use std::collections::HashMap;

#[derive(Default)]
pub(super) struct Lanes {
    running: HashMap<String, Lane>,
    /// How many scheduler passes have asked the store which endpoints are due.
    looks: u64,
}

struct Lane {
    /// Whether deliveries were stored for the endpoint after the lane's last claim.
    stored_since_claim: bool,
    /// [`Lanes::looks`] when the lane last claimed.
    looks_at_claim: u64,
}

/// What the scheduler must do once a lane has ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AfterLane {
    /// Ask the store which endpoints are due, and when the next will be.
    Look,
    /// Start the endpoint again: deliveries were stored after the lane's last claim.
    Restart,
    /// Nothing: the lane left nothing due that the scheduler does not know of.
    Nothing,
}

impl Lanes {
    /// Notes that a scheduler pass asks the store which endpoints are due; it skips
    /// the endpoints whose lanes are running.
    pub(super) fn looking(&mut self) {
        self.looks += 1;
    }

    /// Records a lane for the endpoint; false when one is running already.
    pub(super) fn start(&mut self, endpoint_id: &str) -> bool {
        if self.running.contains_key(endpoint_id) {
            return false;
        }
        let lane = Lane {
            stored_since_claim: false,
            looks_at_claim: self.looks,
        };
        self.running.insert(endpoint_id.to_string(), lane);
        true
    }

    /// Notes deliveries stored for these endpoints; returns those with no lane.
    pub(super) fn stored(&mut self, endpoint_ids: &[String]) -> Vec<String> {
        let mut idle = Vec::new();
        for id in endpoint_ids {
            match self.running.get_mut(id) {
                Some(lane) => lane.stored_since_claim = true,
                None => idle.push(id.clone()),
            }
        }
        idle
    }

    /// Notes that the endpoint's lane claims now: the claim sees everything stored and
    /// everything due so far.
    pub(super) fn claiming(&mut self, endpoint_id: &str) {
        if let Some(lane) = self.running.get_mut(endpoint_id) {
            lane.stored_since_claim = false;
            lane.looks_at_claim = self.looks;
        }
    }

    /// Takes the endpoint's lane off the record. `left_work` says whether the lane
    /// ended with work perhaps left or retries scheduled, and `most` how many lanes
    /// may run at once.
    pub(super) fn end(&mut self, endpoint_id: &str, left_work: bool, most: usize) -> AfterLane {
        // A full set of lanes may have kept due endpoints waiting for a place.
        let full = self.running.len() >= most;
        let Some(lane) = self.running.remove(endpoint_id) else {
            return AfterLane::Look;
        };
        // A look since the last claim skipped the endpoint, which was busy then.
        let skipped = lane.looks_at_claim != self.looks;
        if left_work || full || skipped {
            AfterLane::Look
        } else if lane.stored_since_claim {
            AfterLane::Restart
        } else {
            AfterLane::Nothing
        }
    }

    pub(super) fn len(&self) -> usize {
        self.running.len()
    }

    pub(super) fn endpoint_ids(&self) -> impl Iterator<Item = &String> {
        self.running.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_lane_that_drained_quietly_needs_nothing() {
        let mut lanes = Lanes::default();
        assert!(lanes.start("ep_a"));
        assert!(!lanes.start("ep_a"), "one lane per endpoint");
        lanes.claiming("ep_a");
        assert_eq!(lanes.end("ep_a", false, 10), AfterLane::Nothing);
        assert_eq!(lanes.len(), 0);
    }

    #[test]
    fn deliveries_stored_after_the_last_claim_restart_the_endpoint() {
        let mut lanes = Lanes::default();
        lanes.start("ep_a");
        // Stored before the claim: the claim sees them.
        assert_eq!(lanes.stored(&ids(&["ep_a", "ep_b"])), ids(&["ep_b"]));
        lanes.claiming("ep_a");
        assert_eq!(lanes.end("ep_a", false, 10), AfterLane::Nothing);

        lanes.start("ep_a");
        lanes.claiming("ep_a");
        // Stored after the last claim: only a new lane would see them.
        assert!(lanes.stored(&ids(&["ep_a"])).is_empty());
        assert_eq!(lanes.end("ep_a", false, 10), AfterLane::Restart);
    }

    #[test]
    fn a_lane_asks_for_a_look_when_it_left_work_freed_a_place_or_was_skipped() {
        let mut lanes = Lanes::default();
        lanes.start("ep_a");
        assert_eq!(lanes.end("ep_a", true, 10), AfterLane::Look);

        lanes.start("ep_a");
        lanes.start("ep_b");
        assert_eq!(lanes.end("ep_a", false, 2), AfterLane::Look, "was full");
        assert_eq!(lanes.end("ep_b", false, 2), AfterLane::Nothing);

        // A look before the lane's last claim: the claim saw what it would have.
        lanes.start("ep_a");
        lanes.looking();
        lanes.claiming("ep_a");
        assert_eq!(lanes.end("ep_a", false, 10), AfterLane::Nothing);

        lanes.start("ep_a");
        lanes.claiming("ep_a");
        // A look began after the claim, while the endpoint was busy.
        lanes.looking();
        assert_eq!(lanes.end("ep_a", false, 10), AfterLane::Look);
    }
}
