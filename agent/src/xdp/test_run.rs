//! BPF_PROG_TEST_RUN: runs the loaded program on a frame without a NIC.
//! aya 0.14 has no wrapper for it, so this is the raw syscall.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Result of one test run.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// The XDP action returned (XDP_DROP = 1, XDP_PASS = 2, XDP_TX = 3).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Mean run time per repetition, as the kernel measured it.
    pub ns_per_run: u32,
}

/// Runs the XDP program `prog` on `frame`, `repeat` times (at least once).
pub fn run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<TestRun> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: attr points at valid buffers that outlive the call; size is the struct's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun {
        action: attr.retval,
        frame: out,
        ns_per_run: attr.duration,
    })
}
