//! Incremental map writes: order, atomicity per service, restart recovery.

use super::fixtures::*;
use crate::Backend as _;
use crate::ebpf::EbpfBackend;
use crate::ebpf::kernel::FakeKernel;
use crate::ebpf::layout::*;
use crate::ebpf::plan::{MapState, render};
use crate::ebpf::sync::{RawMaps, Snapshot, sync_ops};
use crate::settings::Settings;
use switchyard_api::Mode;

fn state(lists: &[(u32, &[(u32, &str)])]) -> MapState {
    let services = lists
        .iter()
        .map(|(id, bs)| {
            let backends = bs
                .iter()
                .map(|(bid, addr)| endpoint(*bid, addr, 80, "node-a"))
                .collect();
            service(*id, &format!("10.96.0.{id}"), 80, backends)
        })
        .collect();
    MapState::clone(&render(&linked(services), &Settings::defaults(Mode::Ebpf)).maps)
}

/// What a program sees for each frontend: its backend list.
fn views(raw: &RawMaps) -> Vec<(FrontendKey, Option<Vec<BackendEntry>>)> {
    raw.frontends
        .iter()
        .map(|(k, fe)| (*k, raw.resolve(fe.svc_id, LIST_INTERNAL)))
        .collect()
}

#[test]
fn a_reader_never_sees_a_half_written_backend_list() {
    let steps = [
        state(&[
            (
                1,
                &[(10, "10.244.1.1"), (11, "10.244.1.2"), (12, "10.244.1.3")],
            ),
            (2, &[(20, "10.244.2.1")]),
        ]),
        state(&[
            (1, &[(11, "10.244.1.2"), (13, "10.244.1.4")]),
            (2, &[(20, "10.244.2.1"), (21, "10.244.2.2")]),
        ]),
        state(&[(
            1,
            &[
                (14, "10.244.1.5"),
                (15, "10.244.1.6"),
                (16, "10.244.1.7"),
                (17, "10.244.1.8"),
            ],
        )]),
        state(&[(3, &[(30, "10.244.3.1")])]),
    ];
    let mut raw = RawMaps::default();
    let mut snap = Snapshot::default();
    for new in &steps {
        let before: Vec<_> = views(&raw);
        let (ops, revisions) = sync_ops(&snap, new);
        for op in &ops {
            raw.apply(op);
            for (key, seen) in views(&raw) {
                let old = before
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone());
                let want_new = new.frontends.get(&key).map(|fe| {
                    new.lists[&(fe.svc_id, LIST_INTERNAL)]
                        .backends
                        .iter()
                        .map(|id| new.backends[id])
                        .collect::<Vec<_>>()
                });
                assert!(
                    seen.is_some(),
                    "frontend {key} resolves to a broken list after {op:?}"
                );
                assert!(
                    seen == old.flatten() || seen == want_new,
                    "frontend {key} sees a mixed list {seen:?} after {op:?}"
                );
            }
        }
        assert_eq!(*raw.snapshot().state, *new);
        assert!(raw.snapshot().stale_slots.is_empty());
        snap = Snapshot {
            state: std::sync::Arc::new(new.clone()),
            revisions,
            stale_slots: Vec::new(),
        };
    }
}

#[test]
fn one_endpoint_change_rewrites_only_that_service() {
    let mut backend_a = EbpfBackend::new(FakeKernel::default());
    let svcs = |extra: bool| {
        let mut v: Vec<_> = (1..=50)
            .map(|i| {
                service(
                    i,
                    &format!("10.96.1.{i}"),
                    80,
                    vec![endpoint(1000 + i, &format!("10.244.9.{i}"), 80, "node-a")],
                )
            })
            .collect();
        if extra {
            v[7].endpoints
                .push(endpoint(5000, "10.244.10.1", 80, "node-b"));
        }
        v
    };
    let s = Settings::defaults(Mode::Ebpf);
    let first = backend_a.apply(&render(&linked(svcs(false)), &s)).unwrap();
    assert!(first.full);
    let again = backend_a.apply(&render(&linked(svcs(false)), &s)).unwrap();
    assert_eq!((again.written, again.full), (0, false));
    let ops_before = backend_a.kernel().ops.len();
    let changed = backend_a.apply(&render(&linked(svcs(true)), &s)).unwrap();
    // new backend, 2 slots of the new revision, slot 0, 1 old slot deleted
    assert_eq!(changed.written, 5);
    assert!(
        backend_a.kernel().ops[ops_before..]
            .iter()
            .all(|op| match op {
                crate::ebpf::sync::MapOp::PutSlot(k, _)
                | crate::ebpf::sync::MapOp::DeleteSlot(k) => k.svc_id == 8,
                crate::ebpf::sync::MapOp::PutBackend(id, _) => *id == 5000,
                _ => false,
            })
    );
    assert_eq!(
        backend_a.kernel().loads,
        1,
        "map updates never reload the programs"
    );
}

#[test]
fn restarted_agent_adopts_the_maps_and_removes_what_it_no_longer_wants() {
    let s = Settings::defaults(Mode::Ebpf);
    let old = linked(vec![
        service(
            1,
            "10.96.0.1",
            80,
            vec![endpoint(10, "10.244.1.1", 80, "node-a")],
        ),
        service(
            2,
            "10.96.0.2",
            80,
            vec![endpoint(20, "10.244.1.2", 80, "node-a")],
        ),
    ]);
    let mut first = EbpfBackend::new(FakeKernel::default());
    first.apply(&render(&old, &s)).unwrap();
    let mut kernel = FakeKernel::default();
    kernel.raw = first.kernel().raw.clone();
    // a slot of a revision nobody points at, as a crash mid-apply leaves behind
    kernel.raw.apply(&crate::ebpf::sync::MapOp::PutSlot(
        SvcKey {
            svc_id: 1,
            slot: 1,
            list: LIST_INTERNAL,
            rev: 9,
        },
        SvcSlot {
            backend_id: 10,
            ..SvcSlot::default()
        },
    ));
    let mut restarted = EbpfBackend::new(kernel);
    let new = linked(vec![service(
        1,
        "10.96.0.1",
        80,
        vec![endpoint(10, "10.244.1.1", 80, "node-a")],
    )]);
    let stats = restarted.apply(&render(&new, &s)).unwrap();
    assert!(stats.full);
    let snap = restarted.kernel().raw.snapshot();
    assert_eq!(snap.state, render(&new, &s).maps);
    assert!(snap.stale_slots.is_empty());
    // service 1 untouched; service 2's frontend, slot 0, slot 1, backend; the stale slot
    assert_eq!(stats.written, 5);
}
