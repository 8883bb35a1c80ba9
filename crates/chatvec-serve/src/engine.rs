//! One engine thread per model: requests arrive over a bounded queue, join the decode loop of a
//! [`SequenceBatch`] between steps, and get their events back over a channel of their own.
//!
//! A request whose receiver is gone (the client closed its stream) or whose cancel flag is set
//! (a stop string matched) leaves the batch before the next step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use chatvec_gen::{GenError, StopReason};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::batch::{SeqEvent, SeqId, SeqRequest, SequenceBatch, TokenLogprob};

/// What one sequence hears from the engine.
#[derive(Debug, Clone)]
pub enum Update {
    /// Log-probabilities of the prompt tokens (entry 0 has none: NaN).
    Prompt(Vec<TokenLogprob>),
    /// One generated token (a final stop id included).
    Token(TokenLogprob),
    /// The sequence ended.
    Finished {
        /// Why.
        reason: StopReason,
        /// Tokens in its prompt.
        prompt_tokens: usize,
        /// Tokens generated.
        new_tokens: usize,
    },
    /// The engine could not run it (a message for the client).
    Failed(String),
}

/// A sequence's stream of updates, tagged with the index of the choice it answers.
pub type Updates = UnboundedReceiver<(usize, Update)>;

/// A request waiting for, or in, the batch.
struct Job {
    request: SeqRequest,
    choice: usize,
    events: UnboundedSender<(usize, Update)>,
    cancel: Arc<AtomicBool>,
}

impl Job {
    fn send(&self, update: Update) {
        let _ = self.events.send((self.choice, update));
    }

    fn abandoned(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full (answer 429).
    QueueFull,
    /// The engine thread has stopped.
    Stopped,
}

/// The sending side of an engine; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    queue: SyncSender<Job>,
}

/// The sequences of one request: their updates, and a flag per choice that cancels it.
pub struct Submission {
    /// Updates of every choice, tagged with the choice index.
    pub updates: Updates,
    /// Set `cancel[i]` to end choice `i` at the next step.
    pub cancel: Vec<Arc<AtomicBool>>,
}

impl EngineHandle {
    /// Starts the engine thread for `batch`; at most `max_seqs` sequences run at once and
    /// `queue` more may wait.
    pub fn start<B: SequenceBatch>(name: &str, batch: B, max_seqs: usize, queue: usize) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(queue);
        std::thread::Builder::new().name(format!("engine {name}")).spawn(move || run(batch, rx, max_seqs.max(1)))?;
        Ok(EngineHandle { queue: tx })
    }

    /// Queues one sequence per request in `requests` (the choices of one API request); all or
    /// none are queued.
    pub fn submit(&self, requests: Vec<SeqRequest>) -> Result<Submission, SubmitError> {
        let (events, updates) = unbounded_channel();
        let cancel: Vec<_> = requests.iter().map(|_| Arc::new(AtomicBool::new(false))).collect();
        for ((choice, request), flag) in requests.into_iter().enumerate().zip(&cancel) {
            let job = Job { request, choice, events: events.clone(), cancel: flag.clone() };
            if let Err(e) = self.queue.try_send(job) {
                // Sequences already queued see their flags and leave.
                cancel.iter().for_each(|c| c.store(true, Ordering::Relaxed));
                return Err(match e {
                    TrySendError::Full(_) => SubmitError::QueueFull,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                });
            }
        }
        Ok(Submission { updates, cancel })
    }
}

/// The decode loop: admit waiting jobs, drop abandoned ones, step, route events.
fn run<B: SequenceBatch>(mut batch: B, queue: Receiver<Job>, max_seqs: usize) {
    let mut live: HashMap<SeqId, Job> = HashMap::new();
    loop {
        if live.is_empty() {
            match queue.recv() {
                Ok(job) => admit(&mut batch, &mut live, job),
                Err(_) => return,
            }
        }
        while live.len() < max_seqs {
            match queue.try_recv() {
                Ok(job) => admit(&mut batch, &mut live, job),
                Err(_) => break,
            }
        }
        live.retain(|id, job| {
            let keep = !job.abandoned();
            if !keep {
                batch.cancel(*id);
            }
            keep
        });
        if live.is_empty() {
            continue;
        }
        match batch.step() {
            Ok(events) => route(events, &mut live),
            Err(e) => fail_all(&mut batch, &mut live, &e),
        }
    }
}

fn admit<B: SequenceBatch>(batch: &mut B, live: &mut HashMap<SeqId, Job>, job: Job) {
    if job.abandoned() {
        return;
    }
    match batch.insert(job.request.clone()) {
        Ok(id) => {
            live.insert(id, job);
        }
        Err(e) => job.send(Update::Failed(e.to_string())),
    }
}

fn route(events: Vec<SeqEvent>, live: &mut HashMap<SeqId, Job>) {
    for event in events {
        match event {
            SeqEvent::Prompt { id, logprobs } => {
                if let Some(job) = live.get(&id) {
                    job.send(Update::Prompt(logprobs));
                }
            }
            SeqEvent::Token { id, logprob, .. } => {
                if let Some(job) = live.get(&id) {
                    job.send(Update::Token(logprob));
                }
            }
            SeqEvent::Finished { id, reason, prompt_tokens, new_tokens } => {
                if let Some(job) = live.remove(&id) {
                    job.send(Update::Finished { reason, prompt_tokens, new_tokens });
                }
            }
        }
    }
}

fn fail_all<B: SequenceBatch>(batch: &mut B, live: &mut HashMap<SeqId, Job>, error: &GenError) {
    for (id, job) in live.drain() {
        batch.cancel(id);
        job.send(Update::Failed(error.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use chatvec_gen::{SamplingParams, StopSet};

    use super::*;

    /// A batch that emits one token per live sequence per step and never finishes on its own;
    /// it records what was inserted and cancelled.
    #[derive(Default, Clone)]
    struct Endless {
        log: Arc<Mutex<(Vec<SeqId>, Vec<SeqId>)>>,
        next: u64,
        live: Vec<SeqId>,
    }

    impl SequenceBatch for Endless {
        fn insert(&mut self, _: SeqRequest) -> Result<SeqId, GenError> {
            let id = SeqId(self.next);
            self.next += 1;
            self.live.push(id);
            self.log.lock().unwrap().0.push(id);
            Ok(id)
        }
        fn cancel(&mut self, id: SeqId) {
            self.live.retain(|l| *l != id);
            self.log.lock().unwrap().1.push(id);
        }
        fn step(&mut self) -> Result<Vec<SeqEvent>, GenError> {
            std::thread::sleep(Duration::from_millis(1));
            let token = TokenLogprob { token: 7, logprob: -0.5, top: Vec::new() };
            Ok(self.live.iter().map(|&id| SeqEvent::Token { id, token: 7, logprob: token.clone() }).collect())
        }
    }

    fn request() -> SeqRequest {
        SeqRequest::new(vec![1], 1000, SamplingParams::default(), StopSet::new())
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_dropped_receiver_or_a_set_flag_cancels_the_sequence() {
        let batch = Endless::default();
        let log = batch.log.clone();
        let engine = EngineHandle::start("test", batch, 4, 4).unwrap();
        let mut first = engine.submit(vec![request()]).unwrap();
        let second = engine.submit(vec![request(), request()]).unwrap();
        assert!(matches!(first.updates.blocking_recv(), Some((0, Update::Token(_)))));
        drop(first);
        wait_until("the dropped request's cancel", || log.lock().unwrap().1 == vec![SeqId(0)]);
        second.cancel[1].store(true, Ordering::Relaxed);
        wait_until("the flagged choice's cancel", || log.lock().unwrap().1 == vec![SeqId(0), SeqId(2)]);
        assert_eq!(log.lock().unwrap().0.len(), 3);
    }

    #[test]
    fn past_the_queue_and_the_batch_submissions_are_refused() {
        let engine = EngineHandle::start("test", Endless::default(), 1, 2).unwrap();
        let refused = (0..20).map(|_| engine.submit(vec![request()])).filter(|s| s.is_err()).count();
        // Two wait, and one runs once the engine has taken it from the queue.
        assert!((17..=18).contains(&refused), "{refused} refused");
        assert_eq!(engine.submit(vec![request(); 4]).err(), Some(SubmitError::QueueFull));
    }
}
