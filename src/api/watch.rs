//! `Studies.Watch`: a viewer's subscription to study events, replayed from the log from any sequence
//! number and then followed live (the hub guarantees no gap and no duplicate at the seam). The stream is
//! one hub subscription turned into wire messages; a viewer that reads too slowly gets a `Missed`
//! instead of slowing anyone down.

use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tonic::{Request, Response, Status};

use crate::{
    proto::v1::{self as pb, studies_server::Studies},
    results::hub::{Hub, WatchFilter, Watched},
    security::{audit::Subject, Caller},
    shutdown::Shutdown,
};

/// Wire messages buffered per Watch stream (the hub's buffer is the one that matters).
const OUT_BUFFER: usize = 16;

/// The `radstream.v1.Studies` service.
#[derive(Debug, Clone)]
pub struct StudiesService {
    hub: Hub,
    shutdown: Shutdown,
}

impl StudiesService {
    pub fn new(hub: Hub, shutdown: Shutdown) -> Self {
        Self { hub, shutdown }
    }
}

/// The wire form of one subscription item.
pub fn watch_event(item: Watched) -> pb::WatchEvent {
    use pb::watch_event::Kind;
    let kind = match item {
        Watched::Event(e) => Kind::Event((*e).clone()),
        Watched::Missed { count, first, last } => Kind::Missed(pb::Missed {
            count,
            first_sequence: first,
            last_sequence: last,
        }),
        Watched::CaughtUp(sequence) => Kind::CaughtUp(pb::CaughtUp { sequence }),
    };
    pb::WatchEvent { kind: Some(kind) }
}

#[tonic::async_trait]
impl Studies for StudiesService {
    type WatchStream = BoxStream<'static, Result<pb::WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        if request.from_sequence == Some(0) {
            return Err(Status::invalid_argument(
                "from_sequence starts at 1 (the first event of the log); leave it unset to follow \
                 live events only",
            ));
        }
        if let Some(caller) = caller {
            caller.audit("watch", Subject::Studies(&request.study_instance_uids));
        }
        let mut subscription = self
            .hub
            .subscribe(WatchFilter::from_request(&request), request.from_sequence);
        let replay_only = request.replay_only;
        let shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(OUT_BUFFER);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = subscription.next() => next,
                    () = shutdown.draining() => {
                        let _ = tx.send(Err(Status::unavailable(
                            "server shutting down: watch again (from the last sequence seen + 1) on \
                             another instance",
                        ))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                };
                let item = match next {
                    Some(Ok(item)) => item,
                    Some(Err(e)) => {
                        tracing::error!("watch: the event log could not be read: {e}");
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "the event log could not be read: {e}"
                            ))))
                            .await;
                        return;
                    }
                    None => return,
                };
                let caught_up = matches!(item, Watched::CaughtUp(_));
                if tx.send(Ok(watch_event(item))).await.is_err() {
                    return;
                }
                if caught_up && replay_only {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|x| x))))
    }
}
