//! The control-plane harness itself: it cleans up after a failing test.

use std::path::PathBuf;

use pytier_tests::ControlPlane;

#[test]
fn control_plane_is_torn_down_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel::<(Vec<u32>, PathBuf)>();
    let failing_test = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let plane = ControlPlane::start().await.unwrap();
            tx.send((plane.pids(), plane.data_dir().to_path_buf())).unwrap();
            panic!("a failing test");
        })
    });
    assert!(failing_test.join().is_err(), "the thread was meant to panic");

    let (pids, dir) = rx.recv().unwrap();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        // Reaped children no longer exist: kill(pid, 0) fails with ESRCH.
        let alive = unsafe { libc::kill(pid as i32, 0) } == 0;
        assert!(!alive, "process {pid} survived the failed test");
    }
    assert!(!dir.exists(), "{} survived the failed test", dir.display());
}
