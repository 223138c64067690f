//! `OrderProducer`: every 3–5 s, one order drawn from the Redis caches (a buyer among the top
//! users by purchase propensity, a scenario by weight, a product the scenario admits),
//! published to the `orders` topic. With an empty cache it publishes nothing and counts the
//! skip; a Redis outage is retried at the next tick.

use std::time::Duration;

use actord_actors::Probe;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use redis::aio::MultiplexedConnection;
use tracing::{debug, warn};

use super::cache;
use super::generator::{between, publish};
use super::names;
use super::propensity::{self, CachedProduct, CachedUser, Rng, Scenario};
use super::synth;
use crate::sources::kafka::producer::PublisherMsg;
use crate::sources::redis::RedisConnection;

pub struct OrderProducer;

pub struct OrderProducerArgs {
    pub probe: Probe,
    pub publisher: ActorRef<PublisherMsg>,
    pub redis: RedisConnection,
    pub users_key: String,
    pub products_key: String,
    pub orders_topic: String,
    pub interval: (Duration, Duration),
    pub top_users: usize,
    pub scenarios: Vec<Scenario>,
}

pub enum OrderProducerMsg {
    Order,
}

pub struct OrderProducerState {
    args: OrderProducerArgs,
    rng: Rng,
    conn: Option<MultiplexedConnection>,
}

impl OrderProducerState {
    async fn caches(&mut self) -> Result<(Vec<CachedUser>, Vec<CachedProduct>), String> {
        let a = &self.args;
        if self.conn.is_none() {
            self.conn = Some(a.redis.connect(Duration::from_secs(5)).await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let read = async {
            let users = cache::read::<CachedUser>(conn, &a.users_key).await?;
            let products = cache::read::<CachedProduct>(conn, &a.products_key).await?;
            Ok::<_, redis::RedisError>((users, products))
        };
        match read.await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.conn = None;
                Err(crate::sources::redis::describe(&a.redis.addr(), &e))
            }
        }
    }
}

impl Actor for OrderProducer {
    type Msg = OrderProducerMsg;
    type State = OrderProducerState;
    type Arguments = OrderProducerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        metrics::counter!(names::COMMERCE_ORDERS_SKIPPED_TOTAL).increment(0);
        let mut rng = Rng::from_clock();
        myself.send_after(between(&mut rng, args.interval), || OrderProducerMsg::Order);
        Ok(OrderProducerState {
            args,
            rng,
            conn: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let OrderProducerMsg::Order = message;
        if state.args.probe.is_paused() {
            // Paused: no orders (the cache is not refreshed either).
            myself.send_after(super::generator::PAUSED_RECHECK, || OrderProducerMsg::Order);
            return Ok(());
        }
        match state.caches().await {
            Ok((users, products)) => {
                let now = chrono::Utc::now();
                let a = &state.args;
                match propensity::pick(
                    &mut state.rng,
                    &users,
                    &products,
                    &a.scenarios,
                    now,
                    a.top_users,
                ) {
                    Some(pick) => {
                        let order = synth::order(&mut state.rng, &pick, now);
                        publish(
                            &a.publisher,
                            &a.orders_topic,
                            &order.user_id,
                            &order,
                            "order",
                        )?;
                        a.probe.progress(1, 0);
                    }
                    None => {
                        debug!(
                            pipeline = "commerce",
                            users = users.len(),
                            products = products.len(),
                            "cache empty, no order this time"
                        );
                        metrics::counter!(names::COMMERCE_ORDERS_SKIPPED_TOTAL).increment(1);
                    }
                }
            }
            Err(e) => {
                warn!(pipeline = "commerce", error = %e, "order producer cannot read the cache");
                state.args.probe.set_error(e);
            }
        }
        let next = between(&mut state.rng, state.args.interval);
        myself.send_after(next, || OrderProducerMsg::Order);
        Ok(())
    }
}
