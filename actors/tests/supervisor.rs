//! Supervision semantics, proven with scripted workers on paused time.

use std::time::Duration;

use actord_actors::observe::{ActorKind, Registry, Status};
use actord_actors::testkit::{eventually, TestMsg, TestWorkers};
use actord_actors::{
    ActorPath, Backoff, ChildSpec, Restart, Strategy, Supervisor, SupervisorArgs, SupervisorMsg,
    SupervisorSpec,
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
