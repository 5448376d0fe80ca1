//! The task owning one backplane link: serves subscribe/unsubscribe/publish commands in
//! order, notices a lost connection, reconnects with backoff and resubscribes every
//! channel that still has local subscribers.
//!
//! States: *connecting* → *connected* (after the link is open **and** every wanted
//! channel is subscribed again) → *lost* → backoff → *connecting* ... While not
//! connected, publications fail at once and subscribe/unsubscribe only update the set of
//! wanted channels (subscribe succeeds: the channel is subscribed when the link is back).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socketcluster_rs_server::broker::BrokerError;
use tokio::sync::{mpsc, oneshot};

use crate::command::{Control, HistoryPublish, HistoryRead, Outgoing, Publish};
use crate::history::scripts;
use crate::link::{Connector, Link, ScriptCall, Signals, is_connection_error};
use crate::options::RedisBrokerOptions;
use crate::shared::{NodeStatus, Shared};
use socketcluster_rs_backplane::jitter;

enum Exit {
    Shutdown,
    Lost(String),
}

pub(crate) struct ConnectionTask<C: Connector> {
    pub(crate) connector: C,
    pub(crate) shared: Arc<Shared>,
    pub(crate) status: Arc<NodeStatus>,
    pub(crate) options: RedisBrokerOptions,
    pub(crate) control: mpsc::UnboundedReceiver<Control>,
    pub(crate) publish: mpsc::Receiver<Outgoing>,
    /// Redis channels that have local subscribers.
    pub(crate) wanted: HashSet<String>,
    /// Told the outcome of the first connection attempt.
    pub(crate) first: Option<oneshot::Sender<Result<(), String>>>,
}

impl<C: Connector> ConnectionTask<C> {
    pub(crate) async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut ever_connected = false;
        loop {
            let signals = Arc::new(Signals::default());
            match self.open(&signals).await {
                Ok(mut link) => {
                    if ever_connected {
                        self.shared.counters.reconnected();
                        tracing::info!(
                            node = %self.status.address,
                            channels = self.wanted.len(),
                            "redis backplane reconnected and resubscribed"
                        );
                    }
                    ever_connected = true;
                    self.set_connected(true, None);
                    if let Some(first) = self.first.take() {
                        let _ = first.send(Ok(()));
                    }
                    let exit = self.serve(&mut link, &signals).await;
                    self.set_connected(false, None);
                    let subscribed = self.status.channels.swap(0, Ordering::Relaxed);
                    self.shared.counters.channels_removed(subscribed);
                    match exit {
                        Exit::Shutdown => return,
                        Exit::Lost(e) => {
                            tracing::warn!(
                                node = %self.status.address,
                                error = %e,
                                "redis backplane connection lost; serving local traffic only until it is back"
                            );
                            self.status.last_error.set(Some(e));
                            self.shared.refresh_state();
                        }
                    }
                }
                Err(e) => {
                    if let Some(first) = self.first.take() {
                        let _ = first.send(Err(e));
                        return;
                    }
                    if attempt == 0 {
                        tracing::warn!(node = %self.status.address, error = %e, "redis backplane reconnect failed; retrying");
                    } else {
                        tracing::debug!(node = %self.status.address, error = %e, attempt, "redis backplane reconnect failed");
                    }
                    self.status.last_error.set(Some(e));
                    let delay = jitter(self.options.backoff(attempt));
                    attempt = attempt.saturating_add(1);
                    if self.wait_offline(delay).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
            // Lost: a short pause before the first reconnect attempt.
            let delay = jitter(self.options.backoff(0));
            attempt = 1;
            if self.wait_offline(delay).await.is_err() {
                return;
            }
        }
    }

    fn set_connected(&self, up: bool, error: Option<String>) {
        let was = self.status.connected.swap(up, Ordering::AcqRel);
        if was != up {
            self.shared.counters.connection_up(up);
        }
        if up {
            self.status.last_error.set(error);
        }
        self.shared.refresh_state();
    }

    /// Connect and subscribe every wanted channel.
    async fn open(&mut self, signals: &Arc<Signals>) -> Result<C::Link, String> {
        let mut link = self
            .connector
            .connect(self.shared.clone(), signals.clone())
            .await
            .map_err(|e| e.to_string())?;
        if !self.wanted.is_empty() {
            let channels: Vec<&str> = self.wanted.iter().map(String::as_str).collect();
            link.subscribe(&channels)
                .await
                .map_err(|e| format!("resubscribing {} channels: {e}", channels.len()))?;
        }
        self.status
            .channels
            .store(self.wanted.len(), Ordering::Relaxed);
        self.shared.counters.channels_added(self.wanted.len());
        Ok(link)
    }

    async fn serve(&mut self, link: &mut C::Link, signals: &Signals) -> Exit {
        let period = self
            .options
            .link
            .ping_interval
            .max(Duration::from_millis(10));
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                biased;
                _ = signals.lost.notified() => Err("connection closed".to_owned()),
                control = self.control.recv() => match control {
                    None => return Exit::Shutdown,
                    Some(c) => self.on_control(link, c).await,
                },
                first = self.publish.recv() => match first {
                    None => return Exit::Shutdown,
                    Some(p) => self.on_publish(link, p).await,
                },
                _ = signals.probe.notified() => link.ping().await.map_err(|e| e.to_string()),
                _ = ping.tick() => link.ping().await.map_err(|e| e.to_string()),
            };
            if let Err(e) = result {
                return Exit::Lost(e);
            }
        }
    }

    async fn on_control(&mut self, link: &mut C::Link, control: Control) -> Result<(), String> {
        match control {
            Control::Subscribe(channel, done) => {
                if self.wanted.contains(&channel) {
                    done.send(Ok(()));
                    return Ok(());
                }
                match link.subscribe(&[&channel]).await {
                    Ok(()) => {
                        self.wanted.insert(channel);
                        self.status.channels.fetch_add(1, Ordering::Relaxed);
                        self.shared.counters.channels_added(1);
                        done.send(Ok(()));
                        Ok(())
                    }
                    Err(e) if is_connection_error(&e) => {
                        // Subscribed as soon as the link is back.
                        self.wanted.insert(channel);
                        done.send(Ok(()));
                        Err(e.to_string())
                    }
                    Err(e) => {
                        done.send(Err(BrokerError(format!("redis SUBSCRIBE failed: {e}"))));
                        Ok(())
                    }
                }
            }
            Control::Read(read) => self.on_read(link, read).await,
            Control::Unsubscribe(channel, done) => {
                done.send(Ok(()));
                if !self.wanted.remove(&channel) {
                    return Ok(());
                }
                self.status.channels.fetch_sub(1, Ordering::Relaxed);
                self.shared.counters.channels_removed(1);
                match link.unsubscribe(&channel).await {
                    Ok(()) => Ok(()),
                    Err(e) if is_connection_error(&e) => Err(e.to_string()),
                    Err(e) => {
                        tracing::warn!(node = %self.status.address, error = %e, "redis UNSUBSCRIBE failed");
                        Ok(())
                    }
                }
            }
        }
    }

    /// Write what waits in the publish queue, in order: runs of plain publications in one
    /// pipeline each, publications with history one script call each.
    async fn on_publish(&mut self, link: &mut C::Link, first: Outgoing) -> Result<(), String> {
        let mut batch = vec![first];
        while batch.len() < self.options.max_pipeline {
            match self.publish.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // Consecutive items of one kind go out together; the kinds alternate in order.
        let mut plain = Vec::new();
        let mut history = Vec::new();
        for item in batch {
            match item {
                Outgoing::Plain(p) => {
                    self.publish_history(link, std::mem::take(&mut history))
                        .await?;
                    plain.push(p);
                }
                Outgoing::History(h) => {
                    self.publish_plain(link, std::mem::take(&mut plain)).await?;
                    history.push(h);
                }
            }
        }
        self.publish_history(link, history).await?;
        self.publish_plain(link, plain).await
    }

    async fn publish_plain(
        &mut self,
        link: &mut C::Link,
        batch: Vec<Publish>,
    ) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        match link.publish(&batch).await {
            Ok(()) => {
                for p in batch {
                    self.shared.counters.published(p.queued.elapsed());
                    p.done.send(Ok(()));
                }
                Ok(())
            }
            Err(e) => {
                let message = format!(
                    "redis backplane publish to {} failed: {e}",
                    self.status.address
                );
                for p in batch {
                    self.shared.counters.publish_failed();
                    p.done.send(Err(BrokerError(message.clone())));
                }
                if is_connection_error(&e) {
                    Err(e.to_string())
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn publish_history(
        &mut self,
        link: &mut C::Link,
        batch: Vec<HistoryPublish>,
    ) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let calls: Vec<ScriptCall<'_>> = batch
            .iter()
            .map(|h| ScriptCall {
                keys: [h.stream_key.as_str(), h.meta_key.as_str()],
                args: &h.args,
            })
            .collect();
        let replies = link.eval_many(&scripts().publish, &calls).await;
        drop(calls);
        match replies {
            Ok(replies) => {
                for (h, reply) in batch.into_iter().zip(replies) {
                    match reply {
                        Ok(v) => {
                            self.shared.counters.published(h.queued.elapsed());
                            let _ = h.done.send(Ok(v));
                        }
                        Err(e) => {
                            self.shared.counters.publish_failed();
                            let _ = h.done.send(Err(self.publish_error(&e)));
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                let error = self.publish_error(&e);
                for h in batch {
                    self.shared.counters.publish_failed();
                    let _ = h.done.send(Err(error.clone()));
                }
                if is_connection_error(&e) {
                    Err(e.to_string())
                } else {
                    Ok(())
                }
            }
        }
    }

    fn publish_error(&self, e: &redis::RedisError) -> BrokerError {
        BrokerError(format!(
            "redis backplane publish to {} failed: {e}",
            self.status.address
        ))
    }

    async fn on_read(&mut self, link: &mut C::Link, r: HistoryRead) -> Result<(), String> {
        let keys = [r.stream_key.as_str(), r.meta_key.as_str()];
        match link.eval(&scripts().read, &keys, &r.args).await {
            Ok(v) => {
                let _ = r.done.send(Ok(v));
                Ok(())
            }
            Err(e) => {
                let _ = r.done.send(Err(BrokerError(format!(
                    "redis history read from {} failed: {e}",
                    self.status.address
                ))));
                if is_connection_error(&e) {
                    Err(e.to_string())
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Wait `delay` while disconnected: publications fail, subscriptions are recorded.
    /// `Err` when the broker was dropped.
    async fn wait_offline(&mut self, delay: Duration) -> Result<(), ()> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    None => return Err(()),
                    Some(Control::Subscribe(channel, done)) => {
                        self.wanted.insert(channel);
                        done.send(Ok(()));
                    }
                    Some(Control::Unsubscribe(channel, done)) => {
                        self.wanted.remove(&channel);
                        done.send(Ok(()));
                    }
                    Some(Control::Read(r)) => {
                        let _ = r.done.send(Err(unavailable(&self.status)));
                    }
                },
                p = self.publish.recv() => match p {
                    None => return Err(()),
                    Some(p) => {
                        self.shared.counters.publish_failed();
                        match p {
                            Outgoing::Plain(p) => p.done.send(Err(unavailable(&self.status))),
                            Outgoing::History(h) => {
                                let _ = h.done.send(Err(unavailable(&self.status)));
                            }
                        }
                    }
                },
                _ = &mut sleep => return Ok(()),
            }
        }
    }
}

/// The error of a publication while a node is down.
pub(crate) fn unavailable(status: &NodeStatus) -> BrokerError {
    let reason = status
        .last_error
        .get()
        .unwrap_or_else(|| "not connected".to_owned());
    BrokerError(format!(
        "redis backplane {} unavailable ({reason}); the publication reached local subscribers only",
        status.address
    ))
}
