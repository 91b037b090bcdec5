//! A peer that announces a huge frame must cost the reader no allocation of that size.
//!
//! This test binary counts allocations with a global allocator: the largest single allocation
//! made while the reader handles the prefix must be far below the announced length.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cohort_net::FramedStream;
use cohort_protocol::{ClientMessage, CodecError};

struct Counting;

static TRACKING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACKING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if TRACKING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[tokio::test]
async fn oversized_frame_is_refused_without_allocating() {
    let (client_conn, server_conn, _client) = support::pair().await;
    let max = 64 * 1024 * 1024;
    let mut c = FramedStream::open(&client_conn, max).await.unwrap();
    // Announce 4 GiB - 1 and send nothing more: a reader that allocated or waited for the body
    // would hang or blow up.
    c.send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut s = FramedStream::accept(&server_conn, max).await.unwrap();

    TRACKING.store(true, Ordering::SeqCst);
    let res = tokio::time::timeout(std::time::Duration::from_secs(5), s.recv::<ClientMessage>())
        .await
        .expect("the reader must refuse at once, not wait for the body");
    TRACKING.store(false, Ordering::SeqCst);

    match res {
        Err(cohort_net::NetError::Codec(CodecError::FrameTooLarge { len, max: m })) => {
            assert_eq!(len, u32::MAX as usize);
            assert_eq!(m, max);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    let largest = LARGEST.load(Ordering::SeqCst);
    assert!(
        largest < 1024 * 1024,
        "largest allocation while reading was {largest} bytes"
    );
}
