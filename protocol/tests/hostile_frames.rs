//! Small frames built to hurt the receiver: CBOR headers that announce huge arrays, maps and byte
//! strings, and deep nesting. Each must fail fast, allocate little, and keep the stack bounded.
//!
//! A counting global allocator (per thread, so the test harness's other threads do not count)
//! measures the peak memory that a decode takes.

use cohort_protocol::codec::{LEN_PREFIX, from_cbor};
use cohort_protocol::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

// --- A per-thread peak-memory meter ----------------------------------------------------------

struct CountingAlloc;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: the allocator runs during thread teardown too, after TLS is gone.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as alloc-then-free: a moving realloc briefly holds both blocks.
            track(new_size as isize);
            track(-(layout.size() as isize));
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result and the peak of the bytes it held live at once.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    let r = f();
    (r, PEAK.with(|p| p.get()).max(0) as usize)
}

// --- Hand-written CBOR -----------------------------------------------------------------------

/// A CBOR head: major type and argument, in the shortest form.
fn head(major: u8, n: u64) -> Vec<u8> {
    let m = major << 5;
    match n {
        0..=23 => vec![m | n as u8],
        24..=0xff => vec![m | 24, n as u8],
        0x100..=0xffff => [vec![m | 25], (n as u16).to_be_bytes().to_vec()].concat(),
        0x1_0000..=0xffff_ffff => [vec![m | 26], (n as u32).to_be_bytes().to_vec()].concat(),
        _ => [vec![m | 27], n.to_be_bytes().to_vec()].concat(),
    }
}

fn text(s: &str) -> Vec<u8> {
    [head(3, s.len() as u64), s.as_bytes().to_vec()].concat()
}

fn uint(n: u64) -> Vec<u8> {
    head(0, n)
}

/// A map with text keys. `values` are already-encoded CBOR items (or item prefixes).
fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = head(5, entries.len() as u64);
    for (k, v) in entries {
        out.extend(text(k));
        out.extend_from_slice(v);
    }
    out
}

/// The frame payload (version and body) for a hand-written body.
fn payload(body: &[u8]) -> Vec<u8> {
    [PROTOCOL_VERSION.to_be_bytes().to_vec(), body.to_vec()].concat()
}

/// A `ClientMessage::Hello` whose capabilities are given as raw CBOR.
fn hello_with_capabilities(capabilities: Vec<u8>) -> Vec<u8> {
    map(&[(
        "Hello",
        map(&[
            ("protocol_version", uint(1)),
            ("software", text("evil/1")),
            ("capabilities", capabilities),
        ]),
    )])
}

fn assert_malformed<T: std::fmt::Debug>(r: Result<T, CodecError>, what: &str) -> String {
    match r {
        Err(CodecError::Malformed(text)) => text,
        other => panic!("{what}: expected Malformed, got {other:?}"),
    }
}

// Budgets. serde preallocates at most 1 MiB for a sequence whatever its header announces
// (`size_hint::cautious`); everything else a refused frame costs is a few small buffers.
const SMALL: usize = 64 * 1024;
const CAUTIOUS_CAP: usize = 1024 * 1024 + SMALL;

// --- Huge announcements ----------------------------------------------------------------------

#[test]
fn a_byte_string_announcing_gigabytes_fails_without_allocating_them() {
    for announced in [
        head(2, u32::MAX as u64),
        head(2, u64::MAX),
        head(2, 1 << 40),
    ] {
        let body = map(&[(
            "MaskedInput",
            map(&[("round_id", uint(1)), ("vector", announced.clone())]),
        )]);
        let p = payload(&body);
        assert!(p.len() < 64);
        let (r, peak) = peak_during(|| decode_payload::<ClientMessage>(&p));
        assert_malformed(r, "huge byte string");
        assert!(
            peak < SMALL,
            "peak {peak} bytes for a {}-byte frame",
            p.len()
        );
    }
}

#[test]
fn a_text_string_announcing_gigabytes_fails_without_allocating_them() {
    let body = map(&[(
        "Error",
        map(&[
            ("code", text("Internal")),
            ("message", head(3, u32::MAX as u64)),
        ]),
    )]);
    let p = payload(&body);
    let (r, peak) = peak_during(|| decode_payload::<ClientMessage>(&p));
    assert_malformed(r, "huge text string");
    assert!(peak < SMALL, "peak {peak}");
}

#[test]
fn an_array_announcing_billions_of_elements_preallocates_at_most_a_mebibyte() {
    // Vec<ByteBuf>: 24 bytes an element, the worst element type of the server messages.
    let body = map(&[(
        "Unmask",
        map(&[
            ("round_id", uint(1)),
            ("dropped", head(4, 0)),
            ("survivors", head(4, 0)),
            (
                "signatures",
                [head(4, u32::MAX as u64), head(2, 0)].concat(),
            ),
        ]),
    )]);
    let p = payload(&body);
    let (r, peak) = peak_during(|| decode_payload::<ServerMessage>(&p));
    assert_malformed(r, "huge array of byte strings");
    assert!(peak < CAUTIOUS_CAP, "peak {peak}");

    // Vec<String> and Vec<CipherSuite> in a client's first message, before any login.
    for field in ["backends", "secagg_suites"] {
        let mut caps = vec![
            ("max_frame_len", uint(0)),
            ("secagg_suites", head(4, 0)),
            ("backends", head(4, 0)),
        ];
        for entry in &mut caps {
            if entry.0 == field {
                entry.1 = head(4, u64::MAX);
            }
        }
        let p = payload(&hello_with_capabilities(map(&caps)));
        let (r, peak) = peak_during(|| decode_payload::<ClientMessage>(&p));
        assert_malformed(r, field);
        assert!(peak < CAUTIOUS_CAP, "{field}: peak {peak}");
    }
}

#[test]
fn a_map_announcing_billions_of_entries_fails_fast() {
    let p = payload(&hello_with_capabilities(head(5, u32::MAX as u64)));
    let (r, peak) = peak_during(|| decode_payload::<ClientMessage>(&p));
    assert_malformed(r, "huge map");
    assert!(peak < SMALL, "peak {peak}");
}

#[test]
fn internally_tagged_enums_buffer_cautiously_too() {
    // `OptimizerSpec` is `#[serde(tag = "kind")]`: serde buffers the whole value into its
    // `Content` tree before it can see the tag, so an array there goes through another path.
    // A field before the tag is buffered; so is a whole map, entry by entry.
    for body in [
        map(&[
            ("momentum", [head(4, u32::MAX as u64), uint(0)].concat()),
            ("kind", text("sgd")),
        ]),
        [head(5, u32::MAX as u64), text("kind"), text("sgd")].concat(),
    ] {
        let (r, peak) = peak_during(|| from_cbor::<OptimizerSpec>(&body));
        assert_malformed(r, "huge content");
        assert!(peak < CAUTIOUS_CAP, "peak {peak}");
    }
}

#[test]
fn indefinite_length_strings_cost_no_more_than_their_bytes() {
    // 10,000 one-byte chunks of an indefinite byte string, then no break: serde_cbor
    // concatenates chunks into a scratch buffer, bounded by the input.
    let mut vector = vec![0x5f];
    for _ in 0..10_000 {
        vector.extend([0x41, 0xaa]);
    }
    let body = map(&[(
        "MaskedInput",
        map(&[("round_id", uint(1)), ("vector", vector)]),
    )]);
    let p = payload(&body);
    let (r, peak) = peak_during(|| decode_payload::<ClientMessage>(&p));
    assert_malformed(r, "unterminated indefinite byte string");
    assert!(peak < SMALL, "peak {peak}");
}

/// Legitimately structured but hostile frames used to amplify: a frame full of empty strings
/// became a `Vec<String>` of 24 bytes per 1-byte element (issue 14: 64 such `Hello`s of 64 KiB
/// cost 900 MB). Lists are now bounded while decoding (`cohort_protocol::limits::de`), so the
/// frame is refused as soon as its list passes the bound, before the list grows.
#[test]
fn a_frame_of_empty_strings_is_refused_at_its_bound() {
    let n: u64 = 1 << 20;
    let mut backends = head(4, n);
    backends.extend(std::iter::repeat_n(0x60u8, n as usize));
    let caps = map(&[
        ("max_frame_len", uint(0)),
        ("secagg_suites", head(4, 0)),
        ("backends", backends),
    ]);
    let p = payload(&hello_with_capabilities(caps));
    let (r, peak) = peak_during(|| decode_payload::<ClientMessage>(&p));
    assert_malformed(r, "exceeds the limit");
    assert!(peak < SMALL, "peak {peak}");
    // The same list written without a length (indefinite): refused at the bound too.
    let mut backends = vec![0x9f];
    backends.extend(std::iter::repeat_n(0x60u8, n as usize));
    backends.push(0xff);
    let caps = map(&[
        ("max_frame_len", uint(0)),
        ("secagg_suites", head(4, 0)),
        ("backends", backends),
    ]);
    let p = payload(&hello_with_capabilities(caps));
    let (r, peak) = peak_during(|| decode_payload::<ClientMessage>(&p));
    assert_malformed(r, "exceeds the limit");
    assert!(peak < SMALL, "peak {peak}");
}

// --- Deep nesting ----------------------------------------------------------------------------

/// Runs `f` on a thread with a 1 MiB stack, half of what tokio gives its workers, so a decoder
/// that recursed with the input's depth would overflow here first.
fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .expect("decoding on a 1 MiB stack must not overflow")
}

fn nested(opener: &[u8], depth: usize, leaf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(opener.len() * depth + leaf.len());
    for _ in 0..depth {
        out.extend_from_slice(opener);
    }
    out.extend_from_slice(leaf);
    out
}

#[test]
fn deep_nesting_hits_the_recursion_limit_not_the_stack() {
    const DEPTH: usize = 100_000;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // An unknown field of a struct: skipped with `IgnoredAny`, which still recurses.
        (
            "arrays in an ignored field",
            hello_with_capabilities(map(&[
                ("max_frame_len", uint(0)),
                ("secagg_suites", head(4, 0)),
                ("backends", head(4, 0)),
                ("zzz", nested(&[0x81], DEPTH, &[0x00])),
            ])),
        ),
        (
            "maps in an ignored field",
            hello_with_capabilities(map(&[("zzz", nested(&[0xa1, 0x00], DEPTH, &[0x00]))])),
        ),
        (
            "indefinite arrays in an ignored field",
            hello_with_capabilities(map(&[("zzz", nested(&[0x9f], DEPTH, &[0x00]))])),
        ),
        (
            "tags in an ignored field",
            hello_with_capabilities(map(&[("zzz", nested(&[0xc6], DEPTH, &[0x00]))])),
        ),
        (
            "tags around the message",
            nested(&[0xd8, 0x20], DEPTH, &[0x00]),
        ),
    ];
    for (what, body) in cases {
        let p = payload(&body);
        let text = on_small_stack(move || match decode_payload::<ClientMessage>(&p) {
            Err(CodecError::Malformed(text)) => text,
            other => panic!("{what}: expected Malformed, got {:?}", other.map(|_| ())),
        });
        assert!(text.contains("recursion limit"), "{what}: {text}");
    }

    // The `Content` buffer of an internally tagged enum: a field seen before the tag is
    // buffered as a tree, recursively.
    let body = map(&[
        ("momentum", nested(&[0x81], DEPTH, &[0x00])),
        ("kind", text("sgd")),
    ]);
    let text = on_small_stack(move || match from_cbor::<OptimizerSpec>(&body) {
        Err(CodecError::Malformed(text)) => text,
        other => panic!("content: expected Malformed, got {other:?}"),
    });
    assert!(text.contains("recursion limit"), "content: {text}");
}

#[test]
fn legitimate_nesting_is_far_below_the_limit() {
    // The deepest message is a task plan; it decodes with room to spare on the small stack.
    let msg = ServerMessage::CheckIn(CheckInResponse::Accepted {
        plan: TaskPlan {
            task: TaskId("t".into()),
            model: ModelSpec {
                input_shape: vec![1, 28, 28],
                layers: vec![LayerSpec::Linear { out: 8 }, LayerSpec::Relu],
                num_classes: 10,
            },
            training: TrainingParams {
                epochs: 1,
                batch_size: 1,
                learning_rate: 0.5,
                optimizer: OptimizerSpec::Sgd { momentum: 0.0 },
                proximal_mu: 0.0,
            },
            privacy: None,
            input: None,
        },
        log: Vec::new(),
    });
    let f = encode_frame(&msg, DEFAULT_MAX_FRAME_LEN).unwrap();
    let back = on_small_stack(move || decode_payload::<ServerMessage>(&f[LEN_PREFIX..]).unwrap());
    assert_eq!(back, msg);
}
