//! `ChangeFeed`: delivers each change the store announces to the actors that hold copies
//! of stored data (the key cache, the router; a quota actor subscribes the same way). The
//! store announces after a write committed and answers the admin only once every
//! subscriber applied it, so the instance that made a change already serves by it. Other
//! instances' changes come from the store's PostgreSQL listener, announced the same way.

use actix::prelude::*;
use futures_util::future::join_all;

use super::ASK_TIMEOUT;
pub use crate::domain::change::Change;

/// A subscriber could not bring its copy up to date (or did not answer in time).
#[derive(Debug, thiserror::Error)]
#[error("{subscriber} did not apply the change: {cause}")]
pub struct NotApplied {
    pub subscriber: &'static str,
    pub cause: String,
}

/// To a subscriber: `0` committed. Answer once your copy reflects it (within
/// `ASK_TIMEOUT`); a change that does not touch your copy answers `Ok` at once.
#[derive(Message, Clone, Debug)]
#[rtype(result = "Result<(), NotApplied>")]
pub struct Changed(pub Change);

/// From whoever holds a copy of stored data, at startup: deliver every change from now on.
/// Subscribe before loading the copy, so no change falls between the load and the feed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// Names the subscriber in errors and logs.
    pub name: &'static str,
    pub recipient: Recipient<Changed>,
}

/// From the store after a write (and from its change listener for another instance's
/// write): deliver `0` to every subscriber. Answers once all applied it, or with the
/// first that did not.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), NotApplied>")]
pub struct Announce(pub Change);

struct Subscriber {
    name: &'static str,
    recipient: Recipient<Changed>,
}

#[derive(Default)]
pub struct ChangeFeed {
    subscribers: Vec<Subscriber>,
}

impl Actor for ChangeFeed {
    type Context = Context<Self>;
}

impl Handler<Subscribe> for ChangeFeed {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        self.subscribers.push(Subscriber {
            name: msg.name,
            recipient: msg.recipient,
        });
    }
}

impl Handler<Announce> for ChangeFeed {
    type Result = ResponseFuture<Result<(), NotApplied>>;

    /// Subscribers apply a change side by side; announcements do not wait for each other
    /// (each subscriber orders what it applies, e.g. the router's newest reload wins).
    fn handle(&mut self, msg: Announce, _: &mut Self::Context) -> Self::Result {
        self.subscribers.retain(|s| s.recipient.connected());
        let deliveries: Vec<_> = self
            .subscribers
            .iter()
            .map(|s| {
                let (name, sent) = (s.name, s.recipient.send(Changed(msg.0.clone())));
                async move {
                    match sent.timeout(ASK_TIMEOUT).await {
                        Ok(applied) => applied,
                        // A subscriber that stopped holds no copy.
                        Err(MailboxError::Closed) => Ok(()),
                        Err(e) => Err(NotApplied {
                            subscriber: name,
                            cause: e.to_string(),
                        }),
                    }
                }
            })
            .collect();
        Box::pin(async move { join_all(deliveries).await.into_iter().collect() })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// Records what it applied; `fails` answers every change with an error.
    struct Copy {
        seen: Arc<Mutex<Vec<Change>>>,
        fails: bool,
    }

    impl Actor for Copy {
        type Context = Context<Self>;
    }

    impl Handler<Changed> for Copy {
        type Result = ResponseActFuture<Self, Result<(), NotApplied>>;

        /// Applies after a pause: the announcement must wait for it.
        fn handle(&mut self, msg: Changed, _: &mut Self::Context) -> Self::Result {
            let seen = self.seen.clone();
            let fails = self.fails;
            Box::pin(
                tokio::time::sleep(Duration::from_millis(20))
                    .into_actor(self)
                    .map(move |_, _, _| {
                        if fails {
                            return Err(NotApplied {
                                subscriber: "copy",
                                cause: "broken".into(),
                            });
                        }
                        seen.lock()
                            .map_err(|_| NotApplied {
                                subscriber: "copy",
                                cause: "poisoned".into(),
                            })?
                            .push(msg.0);
                        Ok(())
                    }),
            )
        }
    }

    fn copy(fails: bool) -> (Addr<Copy>, Arc<Mutex<Vec<Change>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = Copy {
            seen: seen.clone(),
            fails,
        }
        .start();
        (addr, seen)
    }

    #[actix::test]
    async fn an_announcement_answers_once_every_subscriber_applied_it() {
        let feed = ChangeFeed::default().start();
        let (first, first_seen) = copy(false);
        let (second, second_seen) = copy(false);
        for (name, addr) in [("first", first), ("second", second)] {
            let recipient = addr.recipient();
            feed.send(Subscribe { name, recipient }).await.unwrap();
        }
        feed.send(Announce(Change::Keys)).await.unwrap().unwrap();
        assert_eq!(*first_seen.lock().unwrap(), [Change::Keys]);
        assert_eq!(*second_seen.lock().unwrap(), [Change::Keys]);
    }

    #[actix::test]
    async fn a_subscriber_that_fails_is_named_and_the_others_still_apply() {
        let feed = ChangeFeed::default().start();
        let (good, seen) = copy(false);
        let (bad, _) = copy(true);
        let recipient = bad.recipient();
        feed.send(Subscribe {
            name: "bad",
            recipient,
        })
        .await
        .unwrap();
        let recipient = good.recipient();
        feed.send(Subscribe {
            name: "good",
            recipient,
        })
        .await
        .unwrap();
        let error = feed.send(Announce(Change::All)).await.unwrap().unwrap_err();
        assert_eq!(error.subscriber, "copy");
        assert_eq!(*seen.lock().unwrap(), [Change::All]);
    }

    /// Stops the actor it is sent to.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Stop;

    impl Handler<Stop> for Copy {
        type Result = ();

        fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
            ctx.stop();
        }
    }

    #[actix::test]
    async fn a_stopped_subscriber_holds_no_copy_and_does_not_fail_announcements() {
        let feed = ChangeFeed::default().start();
        let (gone, seen) = copy(false);
        let recipient = gone.clone().recipient();
        feed.send(Subscribe {
            name: "gone",
            recipient,
        })
        .await
        .unwrap();
        gone.send(Stop).await.unwrap();
        feed.send(Announce(Change::Fallbacks))
            .await
            .unwrap()
            .unwrap();
        assert!(seen.lock().unwrap().is_empty());
    }
}
