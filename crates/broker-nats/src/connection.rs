//! The task owning the NATS client's command order: subscribe, unsubscribe and publish
//! are executed strictly in the order the server called the broker, and their outcome is
//! confirmed by a round trip through the NATS server.
//!
//! Confirmation: NATS core has no publish acknowledgement, and async-nats' `flush` only
//! flushes the socket. So the task publishes a sequence number to a private inbox subject
//! it is subscribed to, and waits for it to come back: the server processes a
//! connection's messages in order, so everything written before (SUBs, PUBs) has been
//! processed by then. One round trip confirms a whole batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::StreamExt;
use socketcluster_rs_server::broker::BrokerError;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::command::{Control, Publish};
use crate::options::NatsBrokerOptions;
use crate::shared::Shared;
use crate::subject::channel_subject;

/// Round trips through a private inbox.
pub(crate) struct Confirmer {
    inbox: String,
    seen: watch::Receiver<u64>,
    next: u64,
    reader: AbortHandle,
}

impl Confirmer {
    pub(crate) async fn new(client: &async_nats::Client) -> Result<Confirmer, String> {
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| e.to_string())?;
        let (tx, rx) = watch::channel(0u64);
        let reader = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Ok(b) = <[u8; 8]>::try_from(&m.payload[..]) {
                    let seq = u64::from_be_bytes(b);
                    tx.send_if_modified(|s| {
                        let newer = seq > *s;
                        if newer {
                            *s = seq;
                        }
                        newer
                    });
                }
            }
        });
        Ok(Confirmer {
            inbox,
            seen: rx,
            next: 0,
            reader: reader.abort_handle(),
        })
    }

    pub(crate) async fn confirm(
        &mut self,
        client: &async_nats::Client,
        shared: &Shared,
        timeout: std::time::Duration,
    ) -> Result<(), String> {
        if !*shared.link.borrow() {
            return Err("not connected".to_owned());
        }
        self.next += 1;
        let seq = self.next;
        client
            .publish(
                self.inbox.clone(),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut seen = self.seen.clone();
        let mut link = shared.link.subscribe();
        tokio::select! {
            r = seen.wait_for(|s| *s >= seq) => r.map(|_| ()).map_err(|_| "client closed".to_owned()),
            _ = link.wait_for(|up| !*up) => Err("connection lost".to_owned()),
            _ = tokio::time::sleep(timeout) => Err(format!("no confirmation from the NATS server within {timeout:?}")),
        }
    }
}

impl Drop for Confirmer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub(crate) struct ConnectionTask {
    pub(crate) client: async_nats::Client,
    pub(crate) shared: Arc<Shared>,
    pub(crate) options: NatsBrokerOptions,
    pub(crate) control: mpsc::UnboundedReceiver<Control>,
    pub(crate) publish: mpsc::Receiver<Publish>,
    pub(crate) confirmer: Confirmer,
    /// channel -> task reading its subscription.
    pub(crate) subs: HashMap<String, AbortHandle>,
}

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        for (_, h) in self.subs.drain() {
            h.abort();
        }
        let n = self.shared.channels.swap(0, Ordering::Relaxed);
        self.shared.counters.channels_removed(n);
    }
}

impl ConnectionTask {
    pub(crate) async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                c = self.control.recv() => match c {
                    None => return,
                    Some(c) => self.on_control(c).await,
                },
                p = self.publish.recv() => match p {
                    None => return,
                    Some(p) => self.on_publish(p).await,
                },
            }
        }
    }

    async fn confirm(&mut self) -> Result<(), String> {
        self.confirmer
            .confirm(&self.client, &self.shared, self.options.publish_timeout)
            .await
    }

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Confirm(done) => {
                let r = self.confirm().await.map_err(BrokerError);
                done.send(r);
            }
            Control::Subscribe(channel, done) => {
                if self.subs.contains_key(&channel) {
                    done.send(Ok(()));
                    return;
                }
                let subject = channel_subject(&self.shared.prefix, &channel);
                let mut sub = match self.client.subscribe(subject).await {
                    Ok(s) => s,
                    Err(e) => {
                        done.send(Err(BrokerError(format!("NATS subscribe failed: {e}"))));
                        return;
                    }
                };
                let shared = self.shared.clone();
                let name = channel.clone();
                let reader = tokio::spawn(async move {
                    while let Some(m) = sub.next().await {
                        shared.on_message(&name, &m.payload);
                    }
                });
                self.subs.insert(channel, reader.abort_handle());
                self.shared.channels.fetch_add(1, Ordering::Relaxed);
                self.shared.counters.channels_added(1);
                // When connected, wait until the server has the SUB, so that a publication
                // made anywhere after this returns reaches us. When not connected, async-nats
                // sends it on reconnect (and the state turns `Connected` only after that).
                if self.shared.is_connected()
                    && let Err(e) = self.confirm().await
                {
                    tracing::debug!(error = %e, "NATS subscription not confirmed; it is re-sent on reconnect");
                }
                done.send(Ok(()));
            }
            Control::Unsubscribe(channel, done) => {
                if let Some(reader) = self.subs.remove(&channel) {
                    // Dropping the subscriber sends UNSUB.
                    reader.abort();
                    self.shared.channels.fetch_sub(1, Ordering::Relaxed);
                    self.shared.counters.channels_removed(1);
                }
                done.send(Ok(()));
            }
        }
    }

    async fn on_publish(&mut self, first: Publish) {
        let mut batch = vec![first];
        while batch.len() < self.options.max_batch {
            match self.publish.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let result = if !self.shared.is_connected() {
            Err(unavailable(&self.shared).0)
        } else {
            let timeout = self.options.publish_timeout;
            tokio::time::timeout(timeout, self.write_and_confirm(&batch))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "NATS backplane publish not confirmed within {timeout:?}"
                    ))
                })
        };
        match result {
            Ok(()) => {
                for p in batch {
                    self.shared.counters.published(p.queued.elapsed());
                    p.done.send(Ok(()));
                }
            }
            Err(e) => {
                for p in batch {
                    self.shared.counters.publish_failed();
                    p.done.send(Err(BrokerError(e.clone())));
                }
            }
        }
    }

    async fn write_and_confirm(&mut self, batch: &[Publish]) -> Result<(), String> {
        for p in batch {
            self.client
                .publish(p.subject.clone(), p.payload.clone())
                .await
                .map_err(|e| format!("NATS publish failed: {e}"))?;
        }
        self.confirm()
            .await
            .map_err(|e| format!("NATS backplane publish not confirmed: {e}"))
    }
}

/// The error of a publication while disconnected.
pub(crate) fn unavailable(shared: &Shared) -> BrokerError {
    let reason = shared
        .last_error
        .get()
        .unwrap_or_else(|| "not connected".to_owned());
    BrokerError(format!(
        "NATS backplane {} unavailable ({reason}); the publication reached local subscribers only",
        shared.address
    ))
}
