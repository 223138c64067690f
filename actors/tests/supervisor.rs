//! Supervision semantics, proven with scripted workers on paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actord_actors::observe::{ActorKind, Registry, Status};
use actord_actors::record::{Acker, Batch, Envelope, Item, Origin, SourceRecord, Topic};
use actord_actors::testkit::{
    eventually, RecordingSink, SinkControl, SinkMode, StartDelay, TestMsg, TestWorkers,
};
use actord_actors::writer::{RetryPolicy, Writer, WriterArgs, WriterMsg};
use actord_actors::{
    ActorPath, Backoff, ChildSpec, Restart, Strategy, Supervisor, SupervisorArgs, SupervisorMsg,
    SupervisorSpec, Supervisors,
};
use ractor::{call, Actor, ActorRef, ActorStatus};
use tokio::task::JoinHandle;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn spec(strategy: Strategy) -> SupervisorSpec {
    SupervisorSpec {
        strategy,
        max_restarts: 10,
        within: Duration::from_secs(60),
        backoff: Backoff {
            initial: ms(100),
            max: ms(400),
            factor: 2.0,
        },
        stuck_check: ms(500),
        concurrent_stop: false,
    }
}

struct Tree {
    sup: ActorRef<SupervisorMsg>,
    handle: Option<JoinHandle<()>>,
    registry: Registry,
    workers: TestWorkers,
}

impl Tree {
    /// Spawns the supervisor at `/t` and waits until every child runs.
    async fn start(
        spec: SupervisorSpec,
        build: impl FnOnce(&TestWorkers) -> Vec<ChildSpec>,
    ) -> Tree {
        let tree = Tree::spawn(spec, build).await;
        let started = call!(tree.sup, SupervisorMsg::Children).unwrap();
        for id in started {
            tree.wait_status(&format!("/t/{id}"), Status::Running).await;
        }
        tree.workers.clear_events();
        tree
    }

    /// Spawns the supervisor at `/t` without waiting for its children.
    async fn spawn(
        spec: SupervisorSpec,
        build: impl FnOnce(&TestWorkers) -> Vec<ChildSpec>,
    ) -> Tree {
        let registry = Registry::new();
        let workers = TestWorkers::new();
        let children = build(&workers);
        let probe = registry.probe(&ActorPath::parse("/t").unwrap(), ActorKind::Supervisor);
        let (sup, handle) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                spec,
                children,
                probe,
                supervisors: Supervisors::default(),
            },
        )
        .await
        .expect("spawn supervisor");
        Tree {
            sup,
            handle: Some(handle),
            registry,
            workers,
        }
    }

    fn status(&self, path: &str) -> Option<Status> {
        self.registry
            .get(&ActorPath::parse(path).unwrap())
            .map(|p| p.status())
    }

    /// The message of the last error recorded for `path`.
    fn last_error(&self, path: &str) -> String {
        self.registry
            .get(&ActorPath::parse(path).unwrap())
            .and_then(|p| p.last_error())
            .map(|e| e.message)
            .unwrap_or_else(|| panic!("no error recorded for {path}"))
    }

    fn restarts(&self, path: &str) -> u64 {
        self.registry
            .get(&ActorPath::parse(path).unwrap())
            .map(|p| p.restarts())
            .unwrap_or(0)
    }

    async fn wait_status(&self, path: &str, status: Status) {
        assert!(
            eventually(Duration::from_secs(60), || self.status(path)
                == Some(status))
            .await,
            "{path} never became {status:?}, is {:?}",
            self.status(path)
        );
    }

    async fn wait_restarts(&self, path: &str, n: u64) {
        assert!(
            eventually(Duration::from_secs(60), || self.restarts(path) >= n).await,
            "{path} restarted {} times, expected {n}",
            self.restarts(path)
        );
    }

    fn send(&self, path: &str, msg: TestMsg) {
        self.workers
            .get(path)
            .send_message(msg)
            .expect("worker alive");
    }

    async fn settle(&self) {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn abc(w: &TestWorkers) -> Vec<ChildSpec> {
    vec![w.spec("a"), w.spec("b"), w.spec("c")]
}

#[tokio::test(start_paused = true)]
async fn one_for_one_restarts_only_the_failed_child() {
    let t = Tree::start(spec(Strategy::OneForOne), abc).await;
    t.send("/t/b", TestMsg::Fail("boom".into()));
    t.wait_restarts("/t/b", 1).await;
    t.wait_status("/t/b", Status::Running).await;
    t.settle().await;
    assert_eq!(t.workers.events(), vec!["start /t/b"]);
    assert_eq!((t.restarts("/t/a"), t.restarts("/t/c")), (0, 0));
    assert_eq!(t.last_error("/t/b"), "boom");
}

#[tokio::test(start_paused = true)]
async fn one_for_all_restarts_every_child_in_order() {
    let t = Tree::start(spec(Strategy::OneForAll), abc).await;
    t.send("/t/b", TestMsg::Fail("boom".into()));
    for p in ["/t/a", "/t/b", "/t/c"] {
        t.wait_restarts(p, 1).await;
        t.wait_status(p, Status::Running).await;
    }
    t.settle().await;
    assert_eq!(
        t.workers.events(),
        vec![
            "stop /t/c",
            "stop /t/a",
            "start /t/a",
            "start /t/b",
            "start /t/c"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_the_failed_child_and_those_after_it() {
    let t = Tree::start(spec(Strategy::RestForOne), abc).await;
    t.send("/t/b", TestMsg::Fail("boom".into()));
    t.wait_restarts("/t/c", 1).await;
    t.wait_status("/t/c", Status::Running).await;
    t.settle().await;
    assert_eq!(
        t.workers.events(),
        vec!["stop /t/c", "start /t/b", "start /t/c"]
    );
    assert_eq!(t.restarts("/t/a"), 0);
    assert_eq!(t.restarts("/t/b"), 1);
}

#[tokio::test(start_paused = true)]
async fn exhausted_budget_stops_children_in_reverse_order_and_fails_upward() {
    let mut s = spec(Strategy::OneForOne);
    s.max_restarts = 2;
    s.within = Duration::from_secs(10);
    let mut t = Tree::start(s, abc).await;
    for n in 1..=2 {
        t.send("/t/a", TestMsg::Fail(format!("boom {n}")));
        t.wait_restarts("/t/a", n).await;
        t.wait_status("/t/a", Status::Running).await;
    }
    t.workers.clear_events();
    t.send("/t/a", TestMsg::Fail("boom 3".into()));
    let handle = t.handle.take().unwrap();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("supervisor ends")
        .unwrap();
    assert_eq!(t.sup.get_status(), ActorStatus::Stopped);
    // a was already dead; the rest stop last-started first.
    assert_eq!(t.workers.events(), vec!["stop /t/c", "stop /t/b"]);
    assert_eq!(t.restarts("/t/a"), 2);
}

#[tokio::test(start_paused = true)]
async fn budget_window_forgets_old_restarts() {
    let mut s = spec(Strategy::OneForOne);
    s.max_restarts = 1;
    s.within = Duration::from_secs(5);
    let t = Tree::start(s, abc).await;
    for n in 1..=3 {
        t.send("/t/a", TestMsg::Fail("boom".into()));
        t.wait_restarts("/t/a", n).await;
        t.wait_status("/t/a", Status::Running).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    assert_eq!(t.sup.get_status(), ActorStatus::Running);
}

#[tokio::test(start_paused = true)]
async fn a_failing_subtree_is_restarted_by_its_parent_alone() {
    let registry = Registry::new();
    let workers = TestWorkers::new();
    let mut inner = spec(Strategy::OneForOne);
    inner.max_restarts = 1;
    let children = vec![
        ChildSpec::supervisor("sub", inner, vec![workers.spec("x"), workers.spec("y")]),
        workers.spec("other"),
    ];
    let probe = registry.probe(&ActorPath::parse("/t").unwrap(), ActorKind::Supervisor);
    let (_root, _h) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec: spec(Strategy::OneForOne),
            children,
            probe,
            supervisors: Supervisors::default(),
        },
    )
    .await
    .unwrap();
    let running = |p: &str| {
        registry
            .get(&ActorPath::parse(p).unwrap())
            .map(|p| p.status())
            == Some(Status::Running)
    };
    assert!(
        eventually(Duration::from_secs(5), || running("/t/sub/x")
            && running("/t/sub/y"))
        .await
    );
    let restarts = |p: &str| {
        registry
            .get(&ActorPath::parse(p).unwrap())
            .unwrap()
            .restarts()
    };
    workers
        .get("/t/sub/x")
        .send_message(TestMsg::Fail("one".into()))
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || restarts("/t/sub/x") == 1
            && running("/t/sub/x"))
        .await
    );
    workers
        .get("/t/sub/x")
        .send_message(TestMsg::Fail("two".into()))
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || restarts("/t/sub") == 1).await);
    assert!(
        eventually(Duration::from_secs(5), || running("/t/sub")
            && running("/t/sub/x")
            && running("/t/sub/y"))
        .await
    );
    assert_eq!(restarts("/t/other"), 0);
    let err = registry
        .get(&ActorPath::parse("/t/sub").unwrap())
        .unwrap()
        .last_error()
        .unwrap();
    assert!(
        err.message.contains("restart budget exhausted"),
        "{}",
        err.message
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_and_caps() {
    let t = Tree::start(spec(Strategy::OneForOne), |w| vec![w.spec("a")]).await;
    let mut gaps = Vec::new();
    for n in 1..=5 {
        t.send("/t/a", TestMsg::Fail("boom".into()));
        let failed_at = tokio::time::Instant::now();
        t.wait_restarts("/t/a", n).await;
        t.wait_status("/t/a", Status::Running).await;
        gaps.push(failed_at.elapsed().as_millis());
    }
    // Observed through a 10 ms poll: each gap is the backoff plus at most one poll.
    let expected = [100, 200, 400, 400, 400];
    for (gap, want) in gaps.iter().zip(expected) {
        assert!(
            *gap >= want && *gap <= want + 20,
            "gaps {gaps:?}, expected about {expected:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_resets_after_a_healthy_window() {
    let mut s = spec(Strategy::OneForOne);
    s.within = Duration::from_secs(5);
    let t = Tree::start(s, |w| vec![w.spec("a")]).await;
    for n in 1..=3 {
        t.send("/t/a", TestMsg::Fail("boom".into()));
        t.wait_restarts("/t/a", n).await;
        t.wait_status("/t/a", Status::Running).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    t.send("/t/a", TestMsg::Fail("boom".into()));
    let failed_at = tokio::time::Instant::now();
    t.wait_restarts("/t/a", 4).await;
    assert!(failed_at.elapsed() < ms(150), "{:?}", failed_at.elapsed());
}

#[tokio::test(start_paused = true)]
async fn restart_types_decide_what_comes_back() {
    let t = Tree::start(spec(Strategy::OneForOne), |w| {
        vec![
            w.spec("perm"),
            w.spec("trans").restart(Restart::Transient),
            w.spec("trans2").restart(Restart::Transient),
            w.spec("temp").restart(Restart::Temporary),
        ]
    })
    .await;
    // A permanent child comes back even after a normal exit.
    t.send("/t/perm", TestMsg::Exit);
    t.wait_restarts("/t/perm", 1).await;
    t.wait_status("/t/perm", Status::Running).await;
    // A transient child comes back after a failure but not after a normal exit.
    t.send("/t/trans", TestMsg::Fail("boom".into()));
    t.wait_restarts("/t/trans", 1).await;
    t.send("/t/trans2", TestMsg::Exit);
    t.wait_status("/t/trans2", Status::Stopped).await;
    // A temporary child never comes back and is forgotten.
    t.send("/t/temp", TestMsg::Fail("boom".into()));
    assert!(eventually(Duration::from_secs(5), || t.status("/t/temp").is_none()).await);
    t.settle().await;
    assert_eq!(t.restarts("/t/trans2"), 0);
    assert_eq!(t.status("/t/trans2"), Some(Status::Stopped));
    let ids = call!(t.sup, SupervisorMsg::Children).unwrap();
    assert_eq!(ids, vec!["perm", "trans", "trans2"]);
}

#[tokio::test(start_paused = true)]
async fn stopping_the_supervisor_stops_children_in_reverse_order() {
    let t = Tree::start(spec(Strategy::OneForOne), abc).await;
    t.sup.stop_and_wait(None, None).await.unwrap();
    assert_eq!(
        t.workers.events(),
        vec!["stop /t/c", "stop /t/b", "stop /t/a"]
    );
    assert_eq!(t.status("/t/a"), Some(Status::Stopped));
}

#[tokio::test(start_paused = true)]
async fn a_child_past_its_shutdown_timeout_is_killed() {
    let t = Tree::start(spec(Strategy::OneForOne), |w| {
        vec![
            w.spec("a"),
            w.spec_with_stop_delay("slow", Duration::from_secs(3600))
                .shutdown(Duration::from_secs(2)),
        ]
    })
    .await;
    let began = tokio::time::Instant::now();
    t.sup.stop_and_wait(None, None).await.unwrap();
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
    // The slow child never finished its graceful stop; the next one still stopped in order.
    assert_eq!(t.workers.events(), vec!["stop /t/a"]);
}

#[tokio::test(start_paused = true)]
async fn a_worker_holding_work_without_progress_is_restarted() {
    let t = Tree::start(spec(Strategy::OneForOne), |w| {
        vec![
            w.spec("stuck").stuck_after(Some(Duration::from_secs(5))),
            w.spec("busy").stuck_after(Some(Duration::from_secs(5))),
            w.spec("idle").stuck_after(Some(Duration::from_secs(5))),
        ]
    })
    .await;
    t.send("/t/stuck", TestMsg::Hold(1));
    t.send("/t/stuck", TestMsg::Hang);
    t.send("/t/busy", TestMsg::Hold(1));
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        t.send("/t/busy", TestMsg::Progress(1));
    }
    assert_eq!(t.restarts("/t/stuck"), 1);
    assert_eq!(t.restarts("/t/busy"), 0);
    assert_eq!(t.restarts("/t/idle"), 0);
    let err = t.last_error("/t/stuck");
    assert!(err.starts_with("stuck"), "{err}");
    // The new incarnation starts with nothing held.
    t.wait_status("/t/stuck", Status::Running).await;
    assert_eq!(
        t.registry
            .get(&ActorPath::parse("/t/stuck").unwrap())
            .unwrap()
            .pending(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn children_are_added_and_removed_at_run_time() {
    let t = Tree::start(spec(Strategy::OneForOne), |w| vec![w.spec("a")]).await;
    for id in ["w1", "w2"] {
        call!(t.sup, SupervisorMsg::AddChild, t.workers.spec(id))
            .unwrap()
            .unwrap();
    }
    t.wait_status("/t/w2", Status::Running).await;
    let dup = call!(t.sup, SupervisorMsg::AddChild, t.workers.spec("w1")).unwrap();
    assert!(dup.is_err());
    call!(t.sup, SupervisorMsg::RemoveChild, "w1".to_owned())
        .unwrap()
        .unwrap();
    assert_eq!(t.status("/t/w1"), None);
    assert_eq!(
        call!(t.sup, SupervisorMsg::Children).unwrap(),
        vec!["a", "w2"]
    );
    // A removed child is not restarted; a dynamic one is supervised like any other.
    t.send("/t/w2", TestMsg::Fail("boom".into()));
    t.wait_restarts("/t/w2", 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_replaced_child_restarts_alone_in_its_place() {
    // Under one_for_all a failure of b would restart a and c too; a replacement does not.
    let t = Tree::start(spec(Strategy::OneForAll), abc).await;
    call!(t.sup, SupervisorMsg::ReplaceChild, t.workers.spec("b"))
        .unwrap()
        .unwrap();
    t.wait_status("/t/b", Status::Running).await;
    assert_eq!(t.restarts("/t/b"), 1);
    assert_eq!(t.restarts("/t/a"), 0);
    assert_eq!(t.restarts("/t/c"), 0);
    t.settle().await;
    assert_eq!(t.workers.events(), vec!["stop /t/b", "start /t/b"]);
    assert_eq!(
        call!(t.sup, SupervisorMsg::Children).unwrap(),
        vec!["a", "b", "c"]
    );
    let unknown = call!(t.sup, SupervisorMsg::ReplaceChild, t.workers.spec("z")).unwrap();
    assert!(unknown.is_err());
    // A child an operator stopped takes the new spec and stays stopped.
    call!(t.sup, SupervisorMsg::StopChild, "c".to_owned())
        .unwrap()
        .unwrap();
    call!(t.sup, SupervisorMsg::ReplaceChild, t.workers.spec("c"))
        .unwrap()
        .unwrap();
    t.settle().await;
    assert_eq!(t.status("/t/c"), Some(Status::Stopped));
}

#[tokio::test(start_paused = true)]
async fn operator_stop_start_restart_and_fault_injection() {
    let t = Tree::start(spec(Strategy::OneForOne), abc).await;
    call!(t.sup, SupervisorMsg::StopChild, "b".to_owned())
        .unwrap()
        .unwrap();
    assert_eq!(t.status("/t/b"), Some(Status::Stopped));
    t.settle().await;
    assert_eq!(t.status("/t/b"), Some(Status::Stopped));
    call!(t.sup, SupervisorMsg::StartChild, "b".to_owned())
        .unwrap()
        .unwrap();
    assert_eq!(t.status("/t/b"), Some(Status::Running));
    call!(t.sup, SupervisorMsg::RestartChild, "c".to_owned())
        .unwrap()
        .unwrap();
    assert_eq!(t.restarts("/t/c"), 1);
    call!(t.sup, SupervisorMsg::FailChild, "a".to_owned())
        .unwrap()
        .unwrap();
    t.wait_restarts("/t/a", 1).await;
    let err = t.last_error("/t/a");
    assert!(err.contains("fault injected"), "{err}");
    let missing = call!(t.sup, SupervisorMsg::FailChild, "nope".to_owned()).unwrap();
    assert!(missing.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_misconfigured_child_stops_its_siblings_until_an_operator_starts_them() {
    let t = Tree::start(spec(Strategy::RestForOne), abc).await;
    let reason =
        actord_actors::error::misconfigured("column t.v has type integer, expected bigint");
    t.send(
        "/t/b",
        TestMsg::Fail(format!("cannot open the sink: {reason}")),
    );
    t.wait_status("/t/b", Status::Failed).await;
    t.settle().await;
    t.settle().await;
    // Not restarted, not charged, nothing left running, the supervisor itself up but unhealthy.
    assert_eq!(t.restarts("/t/b"), 0);
    assert_eq!(t.status("/t/b"), Some(Status::Failed));
    assert_eq!(t.status("/t/a"), Some(Status::Stopped));
    assert_eq!(t.status("/t/c"), Some(Status::Stopped));
    let top = t.registry.get(&ActorPath::parse("/t").unwrap()).unwrap();
    let why = top.unhealthy().unwrap_or_default();
    assert!(
        why.starts_with("/t/b is misconfigured") && why.contains("expected bigint"),
        "{why}"
    );
    assert_eq!(t.sup.get_status(), ActorStatus::Running);
    assert_eq!(t.workers.events(), vec!["stop /t/c", "stop /t/a"]);

    // The operator fixed the table and starts the children again.
    for id in ["a", "b", "c"] {
        call!(t.sup, SupervisorMsg::StartChild, id.to_owned())
            .unwrap()
            .unwrap();
    }
    for id in ["a", "b", "c"] {
        t.wait_status(&format!("/t/{id}"), Status::Running).await;
    }
    assert_eq!(top.unhealthy(), None);
}

#[tokio::test(start_paused = true)]
async fn a_child_that_cannot_start_is_retried_with_backoff() {
    let t = Tree::spawn(spec(Strategy::OneForOne), |w| {
        w.fail_next_starts("a", 2);
        vec![w.spec("a"), w.spec("b")]
    })
    .await;
    t.wait_status("/t/a", Status::Running).await;
    assert_eq!(t.restarts("/t/a"), 2);
    let err = t.last_error("/t/a");
    assert!(err.contains("refused to start"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_operator_restart_takes_the_strategy_group_along() {
    let t = Tree::start(spec(Strategy::RestForOne), abc).await;
    call!(t.sup, SupervisorMsg::RestartChild, "b".to_owned())
        .unwrap()
        .unwrap();
    assert_eq!(
        t.workers.events(),
        vec!["stop /t/c", "stop /t/b", "start /t/b", "start /t/c"]
    );
    assert_eq!(
        (t.restarts("/t/a"), t.restarts("/t/b"), t.restarts("/t/c")),
        (0, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_temporary_child_that_cannot_start_does_not_hide_the_next_one() {
    let t = Tree::spawn(spec(Strategy::OneForOne), |w| {
        w.fail_next_starts("tmp", 1);
        vec![w.spec("tmp").restart(Restart::Temporary), w.spec("next")]
    })
    .await;
    t.wait_status("/t/next", Status::Running).await;
    assert_eq!(call!(t.sup, SupervisorMsg::Children).unwrap(), vec!["next"]);
}

#[tokio::test(start_paused = true)]
async fn a_temporary_sibling_is_stopped_with_its_group_and_not_restarted() {
    let t = Tree::start(spec(Strategy::OneForAll), |w| {
        vec![
            w.spec("a"),
            w.spec("tmp").restart(Restart::Temporary),
            w.spec("c"),
        ]
    })
    .await;
    t.send("/t/a", TestMsg::Fail("boom".into()));
    t.wait_restarts("/t/c", 1).await;
    t.wait_status("/t/c", Status::Running).await;
    t.settle().await;
    assert_eq!(
        call!(t.sup, SupervisorMsg::Children).unwrap(),
        vec!["a", "c"]
    );
    assert_eq!(t.status("/t/tmp"), None);
    assert!(t.workers.events().contains(&"stop /t/tmp".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_while_a_child_keeps_failing_to_start() {
    let t = Tree::start(spec(Strategy::OneForOne), |w| vec![w.spec("a")]).await;
    // Long healthy, then it dies and cannot start three times: 100, 200, 400, 400 ms (capped);
    // without growth it would be 4 × 100 ms.
    tokio::time::sleep(Duration::from_secs(120)).await;
    t.workers.fail_next_starts("a", 3);
    let began = tokio::time::Instant::now();
    t.send("/t/a", TestMsg::Fail("boom".into()));
    t.wait_restarts("/t/a", 4).await;
    t.wait_status("/t/a", Status::Running).await;
    let took = began.elapsed().as_millis();
    assert!(
        (1100..1200).contains(&took),
        "{took} ms, expected 100 + 200 + 400 + 400"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_start_times_out_without_freezing_the_supervisor() {
    let t = Tree::spawn(spec(Strategy::OneForOne), |w| {
        w.delay_next_starts("hung", 2, StartDelay::Hang);
        vec![
            w.spec("busy").stuck_after(Some(Duration::from_secs(5))),
            w.spec("hung"),
        ]
    })
    .await;
    t.wait_status("/t/busy", Status::Running).await;
    // Operator calls are served while the start hangs.
    let ids = tokio::time::timeout(Duration::from_secs(1), async {
        call!(t.sup, SupervisorMsg::Children)
    })
    .await
    .expect("the supervisor answers while a start hangs")
    .unwrap();
    assert_eq!(ids, vec!["busy", "hung"]);
    assert_eq!(t.status("/t/hung"), Some(Status::Starting));
    // So are stuck checks, and the restart of a stuck sibling.
    t.send("/t/busy", TestMsg::Hold(1));
    t.send("/t/busy", TestMsg::Hang);
    let began = tokio::time::Instant::now();
    t.wait_restarts("/t/busy", 1).await;
    t.wait_status("/t/busy", Status::Running).await;
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(t.status("/t/hung"), Some(Status::Starting));
    // Each hung start fails at the default start timeout (60 s) and is retried with backoff.
    assert!(
        eventually(Duration::from_secs(200), || t.status("/t/hung")
            == Some(Status::Running))
        .await
    );
    assert_eq!(t.restarts("/t/hung"), 2);
    let err = t.last_error("/t/hung");
    assert!(err.contains("start timed out"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn starts_that_keep_timing_out_exhaust_the_budget() {
    let mut s = spec(Strategy::OneForOne);
    s.max_restarts = 2;
    let mut t = Tree::spawn(s, |w| {
        w.delay_next_starts("hung", 1_000, StartDelay::Hang);
        vec![w.spec("ok"), w.spec("hung")]
    })
    .await;
    // A start timeout longer than `within` keeps the window below the budget: the failures in
    // a row are what exhaust it.
    let handle = t.handle.take().unwrap();
    tokio::time::timeout(Duration::from_secs(600), handle)
        .await
        .expect("the supervisor fails upward")
        .unwrap();
    assert_eq!(t.status("/t/ok"), Some(Status::Stopped));
    assert_eq!(t.restarts("/t/hung"), 2);
}

#[tokio::test(start_paused = true)]
async fn stuck_restarts_in_a_row_exhaust_the_budget_even_beyond_the_window() {
    let mut s = spec(Strategy::OneForOne);
    s.max_restarts = 2;
    s.within = Duration::from_secs(10);
    let mut t = Tree::start(s, |w| {
        vec![
            w.spec("a"),
            w.spec("stuck").stuck_after(Some(Duration::from_secs(30))),
        ]
    })
    .await;
    let handle = t.handle.take().unwrap();
    let watch = tokio::spawn(handle);
    // Every incarnation takes work and never advances; stuck kills come 30 s apart, three
    // times the window, so only counting them in a row can end the loop.
    for n in 0..5 {
        if watch.is_finished() {
            break;
        }
        t.wait_status("/t/stuck", Status::Running).await;
        t.send("/t/stuck", TestMsg::Hold(1));
        t.send("/t/stuck", TestMsg::Hang);
        let waited = eventually(Duration::from_secs(60), || {
            t.restarts("/t/stuck") > n || watch.is_finished()
        })
        .await;
        assert!(waited, "no stuck restart {n}");
    }
    tokio::time::timeout(Duration::from_secs(60), watch)
        .await
        .expect("the stuck loop ends in a failure")
        .unwrap()
        .unwrap();
    assert_eq!(t.sup.get_status(), ActorStatus::Stopped);
    let err = t.last_error("/t/stuck");
    assert!(err.starts_with("stuck"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_task_that_outlives_its_incarnation_cannot_touch_the_next_one() {
    let t = Tree::start(spec(Strategy::OneForOne), |w| {
        vec![w.spec("a").stuck_after(Some(Duration::from_secs(5)))]
    })
    .await;
    t.send(
        "/t/a",
        TestMsg::HoldLater {
            units: 1,
            after: Duration::from_secs(3),
        },
    );
    t.send("/t/a", TestMsg::Fail("boom".into()));
    t.wait_restarts("/t/a", 1).await;
    t.wait_status("/t/a", Status::Running).await;
    // The old incarnation's task takes work at 3 s: on the new incarnation's probe it would
    // look stuck 5 s later.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let probe = t.registry.get(&ActorPath::parse("/t/a").unwrap()).unwrap();
    assert_eq!(probe.pending(), 0);
    assert_eq!(t.restarts("/t/a"), 1);
}

#[tokio::test(start_paused = true)]
async fn actors_that_died_with_their_supervisor_are_marked_stopped() {
    let registry = Registry::new();
    let workers = TestWorkers::new();
    let mut outer = spec(Strategy::OneForOne);
    outer.backoff.initial = Duration::from_secs(30);
    outer.backoff.max = Duration::from_secs(30);
    let children = vec![ChildSpec::supervisor(
        "sub",
        spec(Strategy::OneForOne),
        vec![workers.spec("x"), workers.spec("y")],
    )];
    let probe = registry.probe(&ActorPath::parse("/t").unwrap(), ActorKind::Supervisor);
    let (root, _h) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec: outer,
            children,
            probe,
            supervisors: Supervisors::default(),
        },
    )
    .await
    .unwrap();
    let status = |p: &str| {
        registry
            .get(&ActorPath::parse(p).unwrap())
            .map(|p| p.status())
    };
    assert!(
        eventually(Duration::from_secs(5), || status("/t/sub/y")
            == Some(Status::Running))
        .await
    );
    // Killed, the nested supervisor runs no post_stop; its children die with it.
    call!(root, SupervisorMsg::FailChild, "sub".to_owned())
        .unwrap()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || status("/t/sub")
            == Some(Status::Failed))
        .await
    );
    assert_eq!(status("/t/sub/x"), Some(Status::Stopped));
    assert_eq!(status("/t/sub/y"), Some(Status::Stopped));
    assert!(
        eventually(Duration::from_secs(60), || status("/t/sub/x")
            == Some(Status::Running))
        .await
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_restart_leaves_a_transient_child_that_finished_alone() {
    let mut s = spec(Strategy::OneForOne);
    s.backoff.initial = Duration::from_secs(5);
    s.backoff.max = Duration::from_secs(5);
    let t = Tree::start(s, |w| vec![w.spec("t").restart(Restart::Transient)]).await;
    t.send("/t/t", TestMsg::Fail("boom".into()));
    t.wait_status("/t/t", Status::Failed).await;
    // An operator restarts it before its scheduled restart is due; then it finishes its work.
    call!(t.sup, SupervisorMsg::RestartChild, "t".to_owned())
        .unwrap()
        .unwrap();
    t.send("/t/t", TestMsg::Exit);
    t.wait_status("/t/t", Status::Stopped).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(t.status("/t/t"), Some(Status::Stopped));
    assert_eq!(t.restarts("/t/t"), 1);
    assert_eq!(t.workers.alive("/t/t"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_long_write_that_reports_progress_is_not_stuck() {
    let registry = Registry::new();
    let sink = SinkControl::new(|_: &i64| false);
    sink.set_mode(SinkMode::Trickle {
        steps: 20,
        step: Duration::from_secs(1),
    });
    let slot: Arc<Mutex<Option<ActorRef<WriterMsg<i64>>>>> = Arc::default();
    let (factory, out) = (sink.factory(), slot.clone());
    let writer = ChildSpec::worker("writer", move |ctx| {
        let args = WriterArgs {
            probe: ctx.probe,
            sink: factory.clone(),
            dlq: None,
            retry: RetryPolicy::default(),
            fence: actord_actors::Fence::new(),
        };
        let out = out.clone();
        async move {
            let (actor, _) = Actor::spawn_linked(
                None,
                Writer::<i64, RecordingSink<i64>>::default(),
                args,
                ctx.supervisor,
            )
            .await?;
            *out.lock().unwrap() = Some(actor.clone());
            Ok(actor.get_cell())
        }
    })
    .stuck_after(Some(Duration::from_secs(5)));
    let probe = registry.probe(&ActorPath::parse("/t").unwrap(), ActorKind::Supervisor);
    let (_sup, _h) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            spec: spec(Strategy::OneForOne),
            children: vec![writer],
            probe,
            supervisors: Supervisors::default(),
        },
    )
    .await
    .unwrap();
    assert!(eventually(Duration::from_secs(5), || slot.lock().unwrap().is_some()).await);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let sink_acks = acked.clone();
    let acker = Acker::new(move |o: Vec<Origin>| sink_acks.lock().unwrap().extend(o));
    let items = (0..10)
        .map(|n| {
            let source = SourceRecord {
                origin: Origin {
                    topic: Topic::intern("t"),
                    partition: 0,
                    offset: n,
                    epoch: 1,
                },
                key: None,
                payload: None,
                timestamp_ms: None,
                headers: Vec::new(),
            };
            Item::Good(Envelope {
                record: n,
                bytes: 1,
                source,
                acker: acker.clone(),
            })
        })
        .collect();
    let writer = slot.lock().unwrap().clone().unwrap();
    writer
        .cast(WriterMsg::Write(Batch {
            id: 1,
            items,
            bytes: 10,
            queued: Default::default(),
        }))
        .unwrap();
    // The write takes 20 s, four times `stuck_after`, moving all along.
    assert!(
        eventually(Duration::from_secs(60), || acked.lock().unwrap().len()
            == 10)
        .await
    );
    let w = registry
        .get(&ActorPath::parse("/t/writer").unwrap())
        .unwrap();
    assert_eq!(w.restarts(), 0);
    assert_eq!(sink.written().len(), 10);
    assert_eq!(sink.attempts(), 1);
}

/// A worker blocked in synchronous code cannot be killed until it returns: the supervisor
/// reports it and does not start a second incarnation beside it. Real time: the block holds a
/// runtime thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_blocked_worker_is_not_replaced_while_it_still_runs() {
    let mut s = spec(Strategy::OneForOne);
    s.backoff = Backoff {
        initial: ms(100),
        max: Duration::from_secs(2),
        factor: 2.0,
    };
    let t = Tree::start(s, |w| {
        vec![w.spec("a"), w.spec("b").shutdown(Duration::from_secs(1))]
    })
    .await;
    t.send("/t/b", TestMsg::Block(Duration::from_secs(7)));
    tokio::time::sleep(ms(200)).await;
    let began = std::time::Instant::now();
    let sup = t.sup.clone();
    let restart =
        tokio::spawn(
            async move { call!(sup, SupervisorMsg::RestartChild, "b".to_owned()).unwrap() },
        );
    let mut most = 0;
    while began.elapsed() < Duration::from_secs(12) {
        most = most.max(t.workers.alive("/t/b"));
        tokio::time::sleep(ms(20)).await;
    }
    assert_eq!(most, 1, "two incarnations of /t/b ran at once");
    assert_eq!(t.status("/t/b"), Some(Status::Running));
    assert!(
        restart.await.unwrap().is_err(),
        "the first start is refused"
    );
    let err = t.last_error("/t/b");
    assert!(err.contains("synchronous code"), "{err}");
    assert_eq!(t.status("/t/a"), Some(Status::Running));
}
